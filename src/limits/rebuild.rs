//! The current periods' spend, rebuilt at start from the usage records on disk (the live
//! stats file and its rotated siblings), so a restart or an upgrade does not refill a
//! budget or a per-minute limit.
//!
//! Only records of this calendar month (UTC) matter: a rotated file whose rotation stamp
//! is older is skipped unread, and in the rest each line's timestamp is compared as text
//! before the line is parsed. A record adds what the live path charged: one request
//! (unless the gateway refused it before forwarding), its tokens, its `cost_micros`.

use super::meter::{Amounts, Periods};
use super::Meters;
use crate::cost::Billable;
use crate::providers::ApiFormat;
use crate::usage::Usage;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The record fields the rebuild reads.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    timestamp: &'a str,
    #[serde(borrow)]
    lmgate_id: Option<&'a str>,
    #[serde(borrow)]
    provider: Option<&'a str>,
    #[serde(borrow)]
    error_type: Option<&'a str>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
    #[serde(default)]
    cost_micros: Option<u64>,
}

/// Refusals made before forwarding: they reserved nothing (or gave it back).
const NOT_CHARGED: [&str; 11] = [
    "forbidden",
    "no_route",
    "bad_request",
    "scope_denied",
    "rate_limited",
    "budget_exceeded",
    "unpriced_model",
    "no_credential",
    "credential_unavailable",
    "internal",
    "client_disconnected",
];

/// What a rebuild read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RebuildStats {
    /// Files read (those skipped by their rotation stamp are not counted).
    pub files: usize,
    /// Bytes read.
    pub bytes: u64,
    /// Lines of this month parsed.
    pub parsed: u64,
    /// Records that charged a metered key.
    pub charged: u64,
    /// Lines that could not be read (left out, as `lmgate report` does).
    pub malformed: u64,
}

/// `2026-12-01T00:00:00` for the month of `periods`: records at or after it count.
fn month_start_text(periods: &Periods) -> String {
    let (y, m) = (1970 + periods.month / 12, periods.month % 12 + 1);
    format!("{y:04}-{m:02}-01T00:00:00")
}

/// Whether a rotated file (named `<live>.YYYYMMDDTHHMMSS.mmmZ[.N]`) was rotated before
/// `month_start` (`YYYY-MM-01T00:00:00`): then every record in it is older.
fn rotated_before(live: &Path, file: &Path, month_start: &str) -> bool {
    let (Some(live), Some(name)) = (
        live.file_name().and_then(|n| n.to_str()),
        file.file_name().and_then(|n| n.to_str()),
    ) else {
        return false;
    };
    let Some(stamp) = name
        .strip_prefix(live)
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.get(..8))
    else {
        return false;
    };
    let month = format!("{}{}", &month_start[..4], &month_start[5..7]);
    stamp.as_bytes()[..6] < *month.as_bytes()
}

/// Add the spend of every record of the current month in `live`'s files to the meters of
/// the key ids in `meters`. `format_of` names each provider's wire format (how its counts
/// are split into [`Billable`] kinds).
pub fn rebuild(
    live: &Path,
    meters: &HashMap<String, Meters>,
    format_of: &dyn Fn(&str) -> Option<ApiFormat>,
    now: SystemTime,
) -> std::io::Result<RebuildStats> {
    let periods = Periods::at(now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    let month_start = month_start_text(&periods);
    let mut stats = RebuildStats::default();
    let dir = match live.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if meters.is_empty() || !dir.is_dir() {
        // Nothing metered, or no records yet (the writer creates the directory).
        return Ok(stats);
    }
    let files: Vec<PathBuf> = crate::report::stats_file_list(live)?;
    for file in files {
        if rotated_before(live, &file, &month_start) {
            continue;
        }
        let mut f = match std::fs::File::open(&file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        stats.files += 1;
        let mut buf = Vec::with_capacity(CHUNK_BYTES);
        let mut carry = Vec::new();
        loop {
            buf.clear();
            let n = f.by_ref().take(CHUNK_BYTES as u64).read_to_end(&mut buf)?;
            if n == 0 {
                break;
            }
            stats.bytes += n as u64;
            let mut start = 0;
            for end in memchr::memchr_iter(b'\n', &buf) {
                if carry.is_empty() {
                    line(
                        &buf[start..end],
                        &month_start,
                        meters,
                        format_of,
                        &periods,
                        &mut stats,
                    );
                } else {
                    carry.extend_from_slice(&buf[start..end]);
                    line(&carry, &month_start, meters, format_of, &periods, &mut stats);
                    carry.clear();
                }
                start = end + 1;
            }
            carry.extend_from_slice(&buf[start..]);
        }
        if !carry.is_empty() {
            line(&carry, &month_start, meters, format_of, &periods, &mut stats);
        }
    }
    Ok(stats)
}

const CHUNK_BYTES: usize = 4 * 1024 * 1024;
const PREFIX: &[u8] = b"{\"timestamp\":\"";

fn line(
    bytes: &[u8],
    month_start: &str,
    meters: &HashMap<String, Meters>,
    format_of: &dyn Fn(&str) -> Option<ApiFormat>,
    now: &Periods,
    stats: &mut RebuildStats,
) {
    // Older than this month: skip without parsing (the writer puts the timestamp first).
    if let Some(ts) = bytes
        .strip_prefix(PREFIX)
        .and_then(|r| r.get(..month_start.len()))
    {
        if ts < month_start.as_bytes() {
            return;
        }
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let Ok(rec) = serde_json::from_slice::<Line>(bytes) else {
        stats.malformed += 1;
        return;
    };
    stats.parsed += 1;
    let Some(m) = rec.lmgate_id.and_then(|id| meters.get(id)) else {
        return;
    };
    let Ok(t) = humantime::parse_rfc3339(rec.timestamp) else {
        stats.malformed += 1;
        return;
    };
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
    if rec.error_type.is_some_and(|e| NOT_CHARGED.contains(&e)) {
        return;
    }
    let usage = Usage {
        model: None,
        input_tokens: rec.input_tokens,
        output_tokens: rec.output_tokens,
        cache_read_input_tokens: rec.cache_read_input_tokens,
        cache_creation_input_tokens: rec.cache_creation_input_tokens,
        reasoning_tokens: rec.reasoning_tokens,
    };
    let billable = rec
        .provider
        .and_then(format_of)
        .and_then(|f| Billable::from_usage(f, &usage))
        .unwrap_or_default();
    let amounts = Amounts {
        requests: 1,
        input: billable.input_total(),
        output: billable.output_total(),
        micros: rec.cost_micros.unwrap_or(0),
    };
    let at = Periods::at(secs);
    m.key.add_current(&at, now, amounts);
    if let Some(o) = &m.owner {
        o.add_current(&at, now, amounts);
    }
    stats.charged += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::meter::Meter;
    use crate::limits::spec::Kind;
    use std::sync::Arc;

    const NOW: u64 = 1_796_209_200; // 2026-12-02T11:00:00Z

    fn rec(ts: &str, id: &str, input: u64, output: u64, cost: u64, error: &str) -> String {
        format!(
            r#"{{"timestamp":"{ts}","lmgate_id":"{id}","provider":"anthropic","endpoint":"/x","model":"m","status":200,"input_tokens":{input},"output_tokens":{output},"cache_read_input_tokens":5,"cache_creation_input_tokens":null,"reasoning_tokens":null,"masked_key":"x","error_type":{error},"usage_status":"exact","stream":false,"duration_ms":1,"cost_micros":{cost},"cost_status":"exact"}}"#
        )
    }

    #[test]
    fn this_months_records_refill_the_meters_and_nothing_older() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("stats.jsonl");
        // Rotated in November: skipped unread (its record would otherwise count).
        std::fs::write(
            dir.path().join("stats.jsonl.20261130T235959.000Z"),
            rec("2026-12-01T00:00:01.000Z", "a", 1000, 1000, 1000, "null") + "\n",
        )
        .unwrap();
        let lines = [
            rec("2026-11-30T23:59:59.999Z", "a", 7, 7, 7, "null"),
            rec("2026-12-01T08:00:00.000Z", "a", 10, 20, 300, "null"),
            rec("2026-12-02T10:59:59.000Z", "a", 1, 2, 40, "null"),
            rec("2026-12-02T11:00:00.500Z", "a", 3, 4, 5, "null"),
            rec("2026-12-02T11:00:00.600Z", "a", 0, 0, 0, "\"rate_limited\""),
            rec("2026-12-02T11:00:00.700Z", "b", 9, 9, 9, "null"),
            "not json".to_string(),
            rec("2026-12-02T11:00:00.800Z", "a", 100, 0, 1, "\"upstream_http\""),
        ];
        std::fs::write(&live, lines.join("\n")).unwrap();
        let m = Meters {
            key: Arc::new(Meter::default()),
            owner: Some(Arc::new(Meter::default())),
        };
        let meters = HashMap::from([("a".to_string(), m.clone())]);
        let now = UNIX_EPOCH + Duration::from_secs(NOW + 30);
        let stats = rebuild(
            &live,
            &meters,
            &|p| (p == "anthropic").then_some(ApiFormat::Anthropic),
            now,
        )
        .unwrap();
        assert_eq!(
            (stats.files, stats.parsed, stats.charged, stats.malformed),
            (1, 6, 4, 1)
        );
        let p = Periods::at(NOW + 30);
        for meter in [&m.key, m.owner.as_ref().unwrap()] {
            // Month: three records of December plus the upstream error (1 request, its
            // tokens: 100 + 5 cache read); input counts the cache reads (5 each).
            assert_eq!(meter.used(Kind::UsdPerMonth, &p), 300 + 40 + 5 + 1);
            assert_eq!(meter.used(Kind::TokensPerMonth, &p), 35 + 8 + 12 + 105);
            assert_eq!(meter.used(Kind::UsdPerDay, &p), 40 + 5 + 1);
            // This minute: the two records at 11:00.
            assert_eq!(meter.used(Kind::Rpm, &p), 2);
            assert_eq!(meter.used(Kind::InputTpm, &p), 8 + 105);
            assert_eq!(meter.used(Kind::OutputTpm, &p), 4);
        }
    }
}
