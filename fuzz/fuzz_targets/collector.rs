//! `Collector`: the body kind and `Content-Encoding` chosen by the input, chunks at
//! fuzzer-chosen points, the body ending normally or not.
//!
//! Input: `[select: u8]` then the `Split` layout (`fuzz/src/lib.rs`).
//! select bits 0-3: index into `ENCODINGS`; bits 4-6: index into `KINDS` (mod 5);
//! bit 7: the body ends normally (`finish`), else it is cut off (`Truncated`).
//!
//! Checked: `outcome` is repeatable; its status agrees with the counts (`Exact` has
//! tokens, `OverLimit`/`Unparsed` have none, a cut-off body is `Truncated`); and for an
//! identity encoding, the same bytes fed whole or split give the same outcome. A
//! compressed body is not held to that: the decoder's per-chunk output bound
//! (`decode::MAX_OUT_PER_CHUNK`, the decompression-bomb guard) depends on the chunking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lmgate::usage::decode::Encoding;
use lmgate::usage::{BodyKind, Collector, Usage, UsageStatus};
use lmgate_fuzz::Split;

const ENCODINGS: [Option<&str>; 16] = [
    None,
    Some("gzip"),
    Some("deflate"),
    Some("br"),
    Some("zstd"),
    Some("x-gzip"),
    Some("identity"),
    Some(""),
    Some(" GZIP "),
    Some("identity, br"),
    Some("zstd, identity"),
    Some("gzip, br"),
    Some("compress"),
    Some("deflate, deflate"),
    Some("Br"),
    Some("x-compress"),
];

const KINDS: [BodyKind; 5] = [
    BodyKind::Json,
    BodyKind::Sse,
    BodyKind::JsonArray,
    BodyKind::EventStream,
    BodyKind::Other,
];

fn run(kind: BodyKind, enc: Option<&str>, cap: usize, chunks: &[&[u8]], end: bool) -> (Usage, UsageStatus) {
    let mut c = Collector::new(kind, enc, cap);
    assert_eq!(c.kind(), kind);
    for ch in chunks {
        c.feed(ch);
    }
    if end {
        c.finish();
    }
    let out = c.outcome();
    assert_eq!(c.outcome(), out, "outcome is not repeatable");
    let (usage, status) = &out;
    match status {
        UsageStatus::Exact => assert!(usage.has_tokens(), "exact without tokens"),
        UsageStatus::OverLimit | UsageStatus::Unparsed => {
            assert!(
                usage.input_tokens.is_none()
                    && usage.output_tokens.is_none()
                    && usage.cache_read_input_tokens.is_none()
                    && usage.cache_creation_input_tokens.is_none()
                    && usage.reasoning_tokens.is_none(),
                "{status:?} keeps token counts"
            )
        }
        UsageStatus::Absent => assert!(!usage.has_tokens(), "absent with tokens"),
        UsageStatus::Truncated => {}
    }
    assert_eq!(*status == UsageStatus::Truncated, !end, "truncation");
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&select, rest)) = data.split_first() else {
        return;
    };
    let Some(input) = Split::parse(rest) else {
        return;
    };
    let enc = ENCODINGS[usize::from(select & 0x0f)];
    let kind = KINDS[usize::from((select >> 4) & 7) % KINDS.len()];
    let end = select & 0x80 != 0;
    let split = run(kind, enc, input.cap, &input.chunks(), end);
    if lmgate_fuzz::debug() {
        eprintln!(
            "{kind:?} {enc:?} cap {} end {end} cuts {:?}: {split:?}",
            input.cap,
            input.cuts()
        );
    }
    let identity = enc.is_none_or(|e| Encoding::from_header(e) == Ok(None));
    if identity {
        let whole = run(kind, enc, input.cap, &[input.body], end);
        assert_eq!(split, whole, "cap {} cuts {:?}", input.cap, input.cuts());
    }
});
