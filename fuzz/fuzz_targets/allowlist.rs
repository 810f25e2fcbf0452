//! `parse_allowlist` on arbitrary bytes.
//!
//! Checked:
//! - a rejection never carries field contents: every message, with its runs of digits
//!   read as `0`, must be one of the known shapes below, so nothing from the file but a
//!   number can reach it. When a message is not, the target re-reads the input's fields
//!   (the `api_key` column included) and reports a field of 4 bytes or more found in it
//!   as a leak. (A field found in a well-shaped message is only the message's own
//!   wording or digits, so that scan is only needed then; skipping it keeps this target
//!   at one CSV reader per input.)
//! - an accepted list holds one key per data row, and every plaintext `api_key` of the
//!   input looks up to its row.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lmgate::{parse_allowlist, HASH_PREFIX};
use std::sync::OnceLock;

const COLUMNS: [&str; 4] = ["id", "api_key", "owner", "added"];

/// Every rejection message `parse_allowlist` can produce, with each run of digits as `0`.
fn shapes() -> &'static [String] {
    static SHAPES: OnceLock<Vec<String>> = OnceLock::new();
    SHAPES.get_or_init(all_shapes)
}

fn all_shapes() -> Vec<String> {
    let mut v = vec![
        "line 0: not valid UTF-0".to_owned(),
        "line 0: expected 0 fields, found 0".to_owned(),
        "line 0: malformed CSV".to_owned(),
        "line 0: a `sha0:` key needs exactly 0 hex digits".to_owned(),
        "line 0: duplicate api_key (first on line 0)".to_owned(),
    ];
    for col in COLUMNS {
        v.push(format!(
            "header row must name the columns id,api_key,owner,added (missing `{col}`)"
        ));
        v.push(format!("line 0: `{col}` is empty"));
    }
    v
}

/// Each maximal run of ASCII digits becomes one `0`.
fn digits_as_zero(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut in_run = false;
    for &c in b {
        if c.is_ascii_digit() {
            if !in_run {
                out.push(b'0');
            }
            in_run = true;
        } else {
            out.push(c);
            in_run = false;
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// The reader `parse_allowlist` uses, on bytes (so invalid UTF-8 is still seen).
fn reader(bytes: &[u8]) -> csv::Reader<&[u8]> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(bytes)
}

fuzz_target!(|data: &[u8]| {
    match parse_allowlist(data) {
        Err(e) => {
            let msg = e.to_string();
            if lmgate_fuzz::debug() {
                eprintln!("rejected: {msg}");
            }
            let shapes = shapes();
            let m = digits_as_zero(msg.as_bytes());
            if shapes.iter().any(|s| s.as_bytes() == m) {
                return;
            }
            let mut rdr = reader(data);
            let mut rec = csv::ByteRecord::new();
            while let Ok(true) = rdr.read_byte_record(&mut rec) {
                for field in rec.iter().filter(|f| f.len() >= 4) {
                    if contains(msg.as_bytes(), field) {
                        let f = digits_as_zero(field);
                        assert!(
                            shapes.iter().any(|s| contains(s.as_bytes(), &f)),
                            "field contents leaked into the error: {msg:?}"
                        );
                    }
                }
            }
            panic!("unexpected error message: {msg:?}");
        }
        Ok(list) => {
            let mut rdr = reader(data);
            let mut rec = csv::StringRecord::new();
            let mut header = csv::StringRecord::new();
            assert!(rdr.read_record(&mut header).expect("accepted, so valid"));
            let idx = header
                .iter()
                .position(|h| h.eq_ignore_ascii_case("api_key"))
                .expect("accepted, so it has an api_key column");
            let mut rows = 0;
            while rdr.read_record(&mut rec).expect("accepted, so valid") {
                if rec.len() != header.len() {
                    continue; // a blank line
                }
                rows += 1;
                let key = &rec[idx];
                if !key.starts_with(HASH_PREFIX) {
                    assert!(list.lookup(key).is_some(), "row {rows}: key not found");
                }
            }
            assert_eq!(list.len(), rows, "one key per data row");
            assert_eq!(list.diff(&list), (0, 0));
            if lmgate_fuzz::debug() {
                eprintln!("accepted: {rows} keys");
            }
        }
    }
});
