//! `SseUsageParser`: chunks at fuzzer-chosen points, then `finish`. Invariant: the same
//! bytes fed whole or split give the same usage and flags.
//!
//! Input: the `Split` layout (`fuzz/src/lib.rs`); flags bits 6-7 unused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lmgate::usage::sse::SseUsageParser;
use lmgate::usage::Usage;
use lmgate_fuzz::Split;

/// usage, over_limit, malformed, events
type Seen = (Usage, bool, bool, u64);

fn run(cap: usize, chunks: &[&[u8]]) -> Seen {
    let mut p = SseUsageParser::new(cap);
    for c in chunks {
        p.feed(c);
    }
    let usage = p.finish();
    // The Collector may ask again: a second `finish` changes nothing.
    assert_eq!(p.finish(), usage, "finish is not idempotent");
    (usage, p.over_limit, p.malformed, p.events)
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
