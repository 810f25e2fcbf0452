//! `SseUsageParser`: chunks at fuzzer-chosen points, then `finish`. Invariant: the same
//! bytes fed whole or split give the same usage and flags.
//!
//! Input: the `Split` layout (`fuzz/src/lib.rs`); flags bits 6-7 unused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lmgate::usage::sse::SseUsageParser;
use lmgate::usage::{ReadStatus, Usage, UsageReader};
use lmgate_fuzz::Split;

/// usage, over_limit and malformed, events
type Seen = (Usage, ReadStatus, u64);

fn run(cap: usize, chunks: &[&[u8]]) -> Seen {
    let mut p = SseUsageParser::new(cap);
    for c in chunks {
        p.feed(c);
    }
    p.finish();
    let seen = (p.usage().clone(), p.status(), p.events());
    // A second `finish` changes nothing.
    p.finish();
    assert_eq!((p.usage().clone(), p.status(), p.events()), seen, "finish is not idempotent");
    seen
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Split::parse(data) else {
        return;
    };
    let whole = run(input.cap, &[input.body]);
    let split = run(input.cap, &input.chunks());
    if lmgate_fuzz::debug() {
        eprintln!("cap {} cuts {:?}: {whole:?}", input.cap, input.cuts());
    }
    assert_eq!(split, whole, "cap {} cuts {:?}", input.cap, input.cuts());
});
