//! Helpers the unit tests of `report/` share: a usage record line, and the report or the
//! chart data of a few lines.

use super::aggregate::{DailyTokens, Owners, Report};
use super::args::{ChartBy, Dimension};
use super::read::{scan, LineError};
use super::time::TimeRange;
use std::io::Cursor;

/// One JSONL usage record as the stats writer prints it; output tokens are twice `input`,
/// and the cost is $1.25 per input token (none without tokens).
pub(super) fn line(
    id: Option<&str>,
    model: &str,
    ts: &str,
    input: Option<u64>,
    status: &str,
    error: bool,
) -> String {
    serde_json::json!({
        "timestamp": ts, "lmgate_id": id, "provider": "openai", "endpoint": "/openai/x",
        "model": model, "status": 200, "input_tokens": input, "output_tokens": input.map(|n| n * 2),
        "cache_read_input_tokens": null, "cache_creation_input_tokens": null,
        "reasoning_tokens": input.map(|_| 1), "masked_key": null,
        "error_type": if error { Some("upstream_timeout") } else { None },
        "usage_status": status, "stream": false, "duration_ms": 1,
        "cost_micros": input.map(|n| n * 1_250_000),
        "cost_status": if input.is_some() { "exact" } else { "no_usage" }
    })
    .to_string()
}

/// The report of `lines` and the malformed ones (line number, why).
pub(super) fn report_of(
    lines: &[String],
    dims: &[Dimension],
    owners: Owners,
    range: TimeRange,
) -> (Report, Vec<(u64, LineError)>) {
    let mut report = Report::new(dims, owners);
    let mut bad = Vec::new();
    let text = lines.join("\n");
    scan(
        Cursor::new(text),
        range,
        |r| report.add(r),
        |n, e| bad.push((n, e)),
    )
    .unwrap();
    (report, bad)
}

/// The report of `lines`, none of which may be malformed, with no allow-list and no range.
pub(super) fn report_by(lines: &[String], dims: &[Dimension]) -> Report {
    let (report, bad) = report_of(lines, dims, Owners::unknown(), TimeRange::default());
    assert!(bad.is_empty(), "malformed lines: {bad:?}");
    report
}

/// The chart data of `lines`, none of which may be malformed.
pub(super) fn daily_of(lines: &[String], by: ChartBy) -> DailyTokens {
    let mut d = DailyTokens::new(by);
    scan(
        Cursor::new(lines.join("\n")),
        TimeRange::default(),
        |r| d.add(r),
        |n, e| panic!("line {n}: {e}"),
    )
    .unwrap();
    d
}
