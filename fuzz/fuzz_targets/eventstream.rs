//! `EventStreamParser` (Bedrock `application/vnd.amazon.eventstream`): chunks at
//! fuzzer-chosen points. Invariant: the same bytes fed whole or split give the same
//! usage, flags and message count.
//!
//! Input: the `Split` layout (`fuzz/src/lib.rs`). Flags bit 6 set: the target first
//! rewrites the CRCs of every whole frame, so that mutated headers and payloads get past
//! the CRC checks into header and JSON parsing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lmgate::usage::eventstream::EventStreamParser;
use lmgate::usage::{ReadStatus, Usage, UsageReader};
use lmgate_fuzz::{chunks_of, fix_eventstream_crcs, Split};

/// usage, malformed and over_limit, messages, exception
type Seen = (Usage, ReadStatus, u64, bool);

fn run(cap: usize, chunks: &[&[u8]]) -> Seen {
    let mut p = EventStreamParser::new(cap);
    for c in chunks {
        p.feed(c);
    }
    (p.usage().clone(), p.status(), p.messages(), p.exception())
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Split::parse(data) else {
        return;
    };
    let mut body = input.body.to_vec();
    if input.extra & 1 == 1 {
        fix_eventstream_crcs(&mut body);
    }
    let whole = run(input.cap, &[&body]);
    let split = run(input.cap, &chunks_of(&body, input.cuts()));
    if lmgate_fuzz::debug() {
        eprintln!("cap {} cuts {:?}: {whole:?}", input.cap, input.cuts());
    }
    assert_eq!(split, whole, "cap {} cuts {:?}", input.cap, input.cuts());
});
