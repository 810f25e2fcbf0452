//! Reading the stats file: one JSONL line into a [`Record`] ([`parse_record`]), and the
//! lines of any `BufRead` into records within a time range ([`scan`]). Opening the files is
//! left to the caller.
//!
//! Memory does not grow with the input: each line goes into one reused buffer of at most
//! [`MAX_LINE_BYTES`]. The record format is `crate::record::UsageRecord`; fields a report
//! does not read (`endpoint`, `status`, `masked_key`, ...) are ignored, so adding a field to
//! the record never breaks a report.

use super::time::{parse_rfc3339_ms, TimeRange};
use crate::usage::UsageStatus;
use serde::Deserialize;
use std::borrow::Cow;
use std::io::BufRead;

/// Longest line read as a record; a longer one is skipped as malformed without being held
/// in memory. Records are a few hundred bytes.
pub(super) const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Usage statuses in column order; names come from [`UsageStatus::as_str`].
pub(super) const STATUSES: [UsageStatus; 5] = [
    UsageStatus::Exact,
    UsageStatus::Absent,
    UsageStatus::OverLimit,
    UsageStatus::Truncated,
    UsageStatus::Unparsed,
];

/// Token sums in column order: (record field / CSV and JSON column, table header).
pub(super) const TOKEN_COLUMNS: [(&str, &str); 5] = [
    ("input_tokens", "input"),
    ("output_tokens", "output"),
    ("cache_read_input_tokens", "cache_read"),
    ("cache_creation_input_tokens", "cache_write"),
    ("reasoning_tokens", "reasoning"),
];

/// The fields of a usage record that a report reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record<'a> {
    /// `timestamp` as Unix ms.
    pub(super) at_ms: i64,
    /// `lmgate_id`.
    pub(super) lmgate_id: Option<Cow<'a, str>>,
    /// `provider`.
    pub(super) provider: Option<Cow<'a, str>>,
    /// `model`.
    pub(super) model: Option<Cow<'a, str>>,
    /// Token counts in [`TOKEN_COLUMNS`] order; `None` = null in the record.
    pub(super) tokens: [Option<u64>; 5],
    /// `error_type` is not null.
    pub(super) error: bool,
    /// Index of `usage_status` in [`STATUSES`].
    pub(super) status: usize,
    /// `cost_micros` (null, or absent in records written before costs: `None`).
    pub(super) cost_micros: Option<u64>,
    /// `cost_status` is `unpriced`.
    pub(super) unpriced: bool,
}

/// The wire shape; unknown fields are ignored so new record fields never break reports.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
    #[serde(borrow, default)]
    lmgate_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    provider: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    reasoning_tokens: Option<u64>,
    #[serde(default)]
    error_type: Option<serde::de::IgnoredAny>,
    #[serde(borrow)]
    usage_status: Cow<'a, str>,
    #[serde(default)]
    cost_micros: Option<u64>,
    #[serde(borrow, default)]
    cost_status: Option<Cow<'a, str>>,
}

/// Why a line was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum LineError {
    /// Not JSON, or not a usage record (a field missing or of the wrong type).
    #[error("not a usage record: {0}")]
    NotRecord(String),
    /// `timestamp` is not RFC 3339.
    #[error("bad timestamp")]
    Timestamp,
    /// `usage_status` is not one LMGate writes.
    #[error("unknown usage_status")]
    Status,
    /// Longer than [`MAX_LINE_BYTES`].
    #[error("line longer than {MAX_LINE_BYTES} bytes")]
    TooLong,
}

/// Parse one JSONL line (without its newline).
pub(super) fn parse_record(line: &[u8]) -> Result<Record<'_>, LineError> {
    let w: Wire<'_> = serde_json::from_slice(line).map_err(|e| LineError::NotRecord(e.to_string()))?;
    let at_ms = parse_rfc3339_ms(&w.timestamp).ok_or(LineError::Timestamp)?;
    let status = STATUSES
        .iter()
        .position(|s| s.as_str() == w.usage_status)
        .ok_or(LineError::Status)?;
    Ok(Record {
        at_ms,
        lmgate_id: w.lmgate_id,
        provider: w.provider,
        model: w.model,
        tokens: [
            w.input_tokens,
            w.output_tokens,
            w.cache_read_input_tokens,
            w.cache_creation_input_tokens,
            w.reasoning_tokens,
        ],
        error: w.error_type.is_some(),
        status,
        cost_micros: w.cost_micros,
        unpriced: w.cost_status.as_deref() == Some(crate::cost::CostStatus::Unpriced.as_str()),
    })
}

/// Read one line into `buf` (its `\n` and a `\r` before it removed), keeping at most `cap`
/// bytes: `Ok(None)` at the end, `Ok(Some(false))` for a longer line (skipped to its end).
fn read_line_capped<R: BufRead>(r: &mut R, buf: &mut Vec<u8>, cap: usize) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut seen = false;
    let mut fits = true;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        seen = true;
        let newline = memchr::memchr(b'\n', chunk);
        let part = &chunk[..newline.unwrap_or(chunk.len())];
        if fits && buf.len() + part.len() <= cap {
            buf.extend_from_slice(part);
        } else {
            fits = false;
            buf.clear();
        }
        let used = newline.map_or(chunk.len(), |i| i + 1);
        r.consume(used);
        if newline.is_some() {
            break;
        }
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(seen.then_some(fits))
}

/// Every record of `input` within `range` goes to `on_record`; each malformed line to
/// `on_bad` with its 1-based line number. Blank lines are skipped silently. Only an I/O
/// error stops the scan.
pub(super) fn scan<R: BufRead>(
    mut input: R,
    range: TimeRange,
    mut on_record: impl FnMut(&Record<'_>),
    mut on_bad: impl FnMut(u64, LineError),
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    while let Some(fits) = read_line_capped(&mut input, &mut buf, MAX_LINE_BYTES)? {
        line_no += 1;
        if !fits {
            on_bad(line_no, LineError::TooLong);
            continue;
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_record(&buf) {
            Ok(r) if range.contains(r.at_ms) => on_record(&r),
            Ok(_) => {}
            Err(e) => on_bad(line_no, e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::aggregate::Owners;
    use crate::report::args::Dimension;
    use crate::report::test_support::{line, report_of};
    use crate::report::time::parse_time;
    use std::io::Cursor;

    const LINE: &str = r#"{"timestamp":"2026-11-21T08:00:00.250Z","lmgate_id":"team-a","provider":"openai","endpoint":"/openai/v1/chat/completions","model":"gpt-4o-mini","status":200,"input_tokens":10,"output_tokens":20,"cache_read_input_tokens":null,"cache_creation_input_tokens":3,"reasoning_tokens":null,"masked_key":"abcdef","error_type":null,"usage_status":"exact","stream":false,"duration_ms":42}"#;

    #[test]
    fn a_record_line_yields_the_fields_a_report_needs() {
        let r = parse_record(LINE.as_bytes()).unwrap();
        assert_eq!(r.at_ms, parse_time("2026-11-21T08:00:00.250Z").unwrap());
        assert_eq!(r.lmgate_id.as_deref(), Some("team-a"));
        assert_eq!(r.provider.as_deref(), Some("openai"));
        assert_eq!(r.model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(r.tokens, [Some(10), Some(20), None, Some(3), None]);
        assert!(!r.error);
        assert_eq!(STATUSES[r.status], UsageStatus::Exact);
        // Escaped strings and unknown (future) fields are fine; missing token fields are null.
        let r = parse_record(br#"{"timestamp":"2026-11-21T08:00:00Z","lmgate_id":"t\u00e9am","usage_status":"truncated","error_type":"x","new_field":[1]}"#).unwrap();
        assert_eq!(r.lmgate_id.as_deref(), Some("téam"));
        assert_eq!(r.tokens, [None; 5]);
        assert!(r.error);
        // Every status the writer can produce is read back.
        for s in STATUSES {
            let l = format!(
                r#"{{"timestamp":"2026-11-21T08:00:00Z","usage_status":"{}"}}"#,
                s.as_str()
            );
            assert_eq!(STATUSES[parse_record(l.as_bytes()).unwrap().status], s);
        }
    }

    #[test]
    fn malformed_lines_are_errors_never_panics() {
        assert!(matches!(parse_record(b"garbage"), Err(LineError::NotRecord(_))));
        assert!(matches!(parse_record(b"{}"), Err(LineError::NotRecord(_))));
        assert!(matches!(parse_record(b"\xff\xfe{"), Err(LineError::NotRecord(_))));
        let bad_time = LINE.replace("2026-11-21T08:00:00.250Z", "21/11/2026");
        assert_eq!(parse_record(bad_time.as_bytes()), Err(LineError::Timestamp));
        let bad_status = LINE.replace("\"exact\"", "\"pretty_sure\"");
        assert_eq!(parse_record(bad_status.as_bytes()), Err(LineError::Status));
        let negative = LINE.replace("\"input_tokens\":10", "\"input_tokens\":-10");
        assert!(matches!(
            parse_record(negative.as_bytes()),
            Err(LineError::NotRecord(_))
        ));
        for cut in 0..LINE.len() {
            assert!(parse_record(&LINE.as_bytes()[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn scan_skips_blank_and_malformed_lines_and_caps_line_length() {
        let long = format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_LINE_BYTES));
        let text = format!("{LINE}\r\n\n   \nnot json\n{long}\n{LINE}");
        let mut seen = 0;
        let mut bad = Vec::new();
        // A tiny read buffer: lines cross buffer boundaries everywhere.
        let reader = std::io::BufReader::with_capacity(7, Cursor::new(text));
        scan(
            reader,
            TimeRange::default(),
            |_| seen += 1,
            |n, e| bad.push((n, e)),
        )
        .unwrap();
        assert_eq!(seen, 2, "the last line counts without a newline, CRLF is fine");
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].0, 4);
        assert_eq!(bad[1], (5, LineError::TooLong));
    }

    #[test]
    fn scan_keeps_the_records_of_a_half_open_range() {
        let lines = [
            line(
                Some("a"),
                "m",
                "2026-11-20T23:59:59.999Z",
                Some(1),
                "exact",
                false,
            ),
            line(
                Some("a"),
                "m",
                "2026-11-21T00:00:00.000Z",
                Some(10),
                "exact",
                false,
            ),
            line(
                Some("a"),
                "m",
                "2026-11-21T23:59:59.999Z",
                Some(100),
                "exact",
                false,
            ),
            line(
                Some("a"),
                "m",
                "2026-11-22T00:00:00.000Z",
                Some(1000),
                "exact",
                false,
            ),
        ];
        let range = TimeRange {
            since: parse_time("2026-11-21").ok(),
            until: parse_time("2026-11-22").ok(),
        };
        let (rep, _) = report_of(&lines, &[Dimension::Key], Owners::unknown(), range);
        assert_eq!(rep.total().requests, 2);
        assert_eq!(rep.total().tokens[0], 110);
    }
}
