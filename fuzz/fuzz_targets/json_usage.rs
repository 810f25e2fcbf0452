//! `parse_json_usage` and `merge_json_usage`.
//!
//! Input: one JSON document, or two separated by a NUL byte (`A \0 B`; raw NUL cannot
//! occur in valid JSON). Checked:
//! - `parse_json_usage(A)` is `Parsed(u)` exactly when merging A into an empty `Usage`
//!   succeeds, and then gives `u`;
//! - merging B after A gives, field by field, B's value when B has one, else A's (later
//!   non-null values win); a malformed B leaves the usage untouched;
//! - the fast path agrees with the full serde parse (`parse_json_usage_serde`) on every
//!   document serde accepts (it may read some that serde rejects: see `usage::json`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lmgate::usage::json::{merge_json_usage, parse_json_usage, parse_json_usage_serde, JsonOutcome};
use lmgate::usage::Usage;

fn parse(doc: &[u8]) -> Option<Usage> {
    let outcome = parse_json_usage(doc);
    if let JsonOutcome::Parsed(u) = parse_json_usage_serde(doc) {
        assert_eq!(outcome, JsonOutcome::Parsed(u), "fast path and serde disagree");
    }
    let mut merged = Usage::default();
    let ok = merge_json_usage(&mut merged, doc);
    match outcome {
        JsonOutcome::Parsed(u) => {
            assert!(ok, "parse accepted what merge rejected");
            assert_eq!(u, merged, "parse and merge disagree");
            Some(u)
        }
        JsonOutcome::Malformed => {
            assert!(!ok, "merge accepted what parse rejected");
            assert_eq!(merged, Usage::default(), "a rejected document changed the usage");
            None
        }
    }
}

fn later_wins(a: &Usage, b: &Usage) -> Usage {
    Usage {
        model: b.model.clone().or_else(|| a.model.clone()),
        input_tokens: b.input_tokens.or(a.input_tokens),
        output_tokens: b.output_tokens.or(a.output_tokens),
        cache_read_input_tokens: b.cache_read_input_tokens.or(a.cache_read_input_tokens),
        cache_creation_input_tokens: b.cache_creation_input_tokens.or(a.cache_creation_input_tokens),
        reasoning_tokens: b.reasoning_tokens.or(a.reasoning_tokens),
    }
}

fuzz_target!(|data: &[u8]| {
    let (a, b) = match memchr_nul(data) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let ua = parse(a);
    if lmgate_fuzz::debug() {
        eprintln!("A: {ua:?}");
    }
    let Some(b) = b else { return };
    let ub = parse(b);
    let mut merged = ua.clone().unwrap_or_default();
    let ok = merge_json_usage(&mut merged, b);
    assert_eq!(ok, ub.is_some());
    let expected = match &ub {
        Some(ub) => later_wins(&ua.unwrap_or_default(), ub),
        None => ua.unwrap_or_default(),
    };
    assert_eq!(merged, expected, "merge of B after A");
});

fn memchr_nul(data: &[u8]) -> Option<usize> {
    data.iter().position(|&b| b == 0)
}
