//! `JsonArrayParser` (Gemini `streamGenerateContent` without SSE): chunks at fuzzer-chosen
//! points. Invariant: the same bytes fed whole or split give the same usage and flags.
//!
//! Input: the `Split` layout (`fuzz/src/lib.rs`); flags bits 6-7 unused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lmgate::usage::array::JsonArrayParser;
use lmgate::usage::{ReadStatus, Usage, UsageReader};
use lmgate_fuzz::Split;

/// usage; malformed, over_limit, open (no closing `]` yet)
type Seen = (Usage, ReadStatus);

fn run(cap: usize, chunks: &[&[u8]]) -> Seen {
    let mut p = JsonArrayParser::new(cap);
    for c in chunks {
        p.feed(c);
    }
    (p.usage().clone(), p.status())
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
