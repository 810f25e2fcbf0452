//! The usage record: one JSON object per line in the stats file. Its field names are a file
//! format (operators bill from it): rename one only in a commit that says so and updates the
//! README.

use crate::cost::CostStatus;
use crate::request_id::RequestId;
use crate::usage::{Usage, UsageStatus};
use serde::Serialize;
use std::sync::Arc;
use std::time::SystemTime;

/// One request's usage record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRecord {
    /// Request start; written as RFC 3339 UTC with milliseconds. Kept as a `SystemTime` so
    /// the formatting happens in the writer, not on the proxy thread.
    #[serde(serialize_with = "serialize_timestamp")]
    pub timestamp: SystemTime,
    /// Allow-list `id` of the key; null without a valid key.
    pub lmgate_id: Option<Arc<str>>,
    /// Provider name; null for an unknown prefix.
    pub provider: Option<Arc<str>>,
    /// Path as the client sent it, prefix included, query excluded.
    pub endpoint: String,
    /// From the response body, else the URL, else null.
    pub model: Option<String>,
    /// Status sent to the client (499: the client left before any response).
    pub status: u16,
    /// Input tokens.
    pub input_tokens: Option<u64>,
    /// Output tokens.
    pub output_tokens: Option<u64>,
    /// Input tokens read from cache.
    pub cache_read_input_tokens: Option<u64>,
    /// Input tokens written to cache.
    pub cache_creation_input_tokens: Option<u64>,
    /// Reasoning tokens.
    pub reasoning_tokens: Option<u64>,
    /// Last characters of the presented key; null when none was presented.
    pub masked_key: Option<String>,
    /// Null unless something failed (see the README for the values).
    pub error_type: Option<&'static str>,
    /// How far the token counts can be trusted.
    pub usage_status: UsageStatus,
    /// The response was streamed (SSE, JSON array, event-stream).
    pub stream: bool,
    /// Request start to the end of the response (or of the attempt), milliseconds.
    pub duration_ms: u64,
    /// What the request cost (and, for a limited key, what it was charged), in
    /// micro-dollars; null when unpriced or without token counts.
    pub cost_micros: Option<u64>,
    /// How far `cost_micros` can be trusted.
    pub cost_status: CostStatus,
    /// The request's id (also sent to the client as `x-lmgate-request-id`).
    pub request_id: RequestId,
}

/// Everything a record is made from; built in the `logging` hook.
pub struct RecordParts<'a> {
    /// Request start.
    pub started_at: SystemTime,
    /// Allow-list id (shared with the allow-list, not copied).
    pub lmgate_id: Option<Arc<str>>,
    /// Provider name (shared with the route, not copied).
    pub provider: Option<Arc<str>>,
    /// Request path.
    pub endpoint: &'a str,
    /// Usage read from the response.
    pub usage: Usage,
    /// Model from the URL when the body named none.
    pub url_model: Option<String>,
    /// Status to the client.
    pub status: u16,
    /// Masked key.
    pub masked_key: Option<String>,
    /// Failure kind.
    pub error_type: Option<&'static str>,
    /// Usage status.
    pub usage_status: UsageStatus,
    /// Streamed.
    pub stream: bool,
    /// Duration.
    pub duration_ms: u64,
    /// Cost in micro-dollars.
    pub cost_micros: Option<u64>,
    /// Cost status.
    pub cost_status: CostStatus,
    /// Request id.
    pub request_id: RequestId,
}

impl UsageRecord {
    /// Assemble a record.
    pub fn build(p: RecordParts<'_>) -> UsageRecord {
        let u = p.usage;
        UsageRecord {
            timestamp: p.started_at,
            lmgate_id: p.lmgate_id,
            provider: p.provider,
            endpoint: p.endpoint.to_owned(),
            model: u.model.or(p.url_model),
            status: p.status,
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_read_input_tokens: u.cache_read_input_tokens,
            cache_creation_input_tokens: u.cache_creation_input_tokens,
            reasoning_tokens: u.reasoning_tokens,
            masked_key: p.masked_key,
            error_type: p.error_type,
            usage_status: p.usage_status,
            stream: p.stream,
            duration_ms: p.duration_ms,
            cost_micros: p.cost_micros,
            cost_status: p.cost_status,
            request_id: p.request_id,
        }
    }

    /// Append the record as one JSON line: the same bytes as `serde_json::to_writer` of
    /// the derived `Serialize` (a unit test holds them equal), written directly, since
    /// this runs once per request and serde's string escaping went byte by byte.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        // RFC 3339 digits and punctuation: nothing to escape.
        out.extend_from_slice(&rfc3339_millis(self.timestamp));
        out.extend_from_slice(b"\",\"lmgate_id\":");
        opt_str(out, self.lmgate_id.as_deref());
        out.extend_from_slice(b",\"provider\":");
        opt_str(out, self.provider.as_deref());
        out.extend_from_slice(b",\"endpoint\":");
        json_str(out, &self.endpoint);
        out.extend_from_slice(b",\"model\":");
        opt_str(out, self.model.as_deref());
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
        for (name, v) in [
            (&b",\"input_tokens\":"[..], self.input_tokens),
            (b",\"output_tokens\":", self.output_tokens),
            (b",\"cache_read_input_tokens\":", self.cache_read_input_tokens),
            (
                b",\"cache_creation_input_tokens\":",
                self.cache_creation_input_tokens,
            ),
            (b",\"reasoning_tokens\":", self.reasoning_tokens),
        ] {
            out.extend_from_slice(name);
            match v {
                Some(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.extend_from_slice(b",\"masked_key\":");
        opt_str(out, self.masked_key.as_deref());
        out.extend_from_slice(b",\"error_type\":");
        opt_str(out, self.error_type);
        out.extend_from_slice(b",\"usage_status\":\"");
        out.extend_from_slice(self.usage_status.as_str().as_bytes());
        out.extend_from_slice(if self.stream {
            b"\",\"stream\":true,\"duration_ms\":"
        } else {
            b"\",\"stream\":false,\"duration_ms\":"
        });
        out.extend_from_slice(itoa::Buffer::new().format(self.duration_ms).as_bytes());
        out.extend_from_slice(b",\"cost_micros\":");
        match self.cost_micros {
            Some(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"cost_status\":\"");
        out.extend_from_slice(self.cost_status.as_str().as_bytes());
        out.extend_from_slice(b"\",\"request_id\":\"");
        out.extend_from_slice(self.request_id.as_str().as_bytes());
        out.extend_from_slice(b"\"}\n");
    }
}

fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string: copied as is when nothing in it needs escaping (the usual case), else
/// escaped by serde_json.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Serializing a string into a Vec cannot fail.
        serde_json::to_writer(&mut *out, s).expect("a string serializes");
    }
}

/// Whether JSON needs any of these bytes escaped: `"`, `\\` or a control character.
/// Eight bytes at a time (the byte-by-byte test was a third of a record line's cost).
#[inline]
fn needs_escape(b: &[u8]) -> bool {
    use crate::usage::json::{quote_or_backslash_bits, HIGH, ONES};
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        // A byte below 0x20 (its high bit clear, and below 0x20 once 0x20 is taken away),
        // or a `"` or `\\`. False positives are impossible for the lowest flagged byte and
        // harmless above it: only whether any byte matched counts, and a high bit set in
        // `w` masks out the control test for that byte.
        let control = w.wrapping_sub(ONES * 0x20) & !w;
        if (quote_or_backslash_bits(w) | control) & HIGH != 0 {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&c| c < 0x20 || c == b'"' || c == b'\\')
}

/// `2026-11-22T10:15:30.123Z`.
pub fn format_timestamp(t: SystemTime) -> String {
    String::from_utf8_lossy(&rfc3339_millis(t)).into_owned()
}

/// `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC), the same bytes as
/// `humantime::format_rfc3339_millis` for any time from 1970 to 9999 (a unit test holds
/// them equal); written digit by digit, since `fmt` machinery was half of a record line's
/// cost. A clock before 1970 is written as 1970-01-01T00:00:00.000Z and one after 9999
/// as 9999-12-31T23:59:59.999Z, where humantime would panic.
pub fn rfc3339_millis(t: SystemTime) -> [u8; 24] {
    /// 9999-12-31T23:59:59.999Z in Unix milliseconds.
    const MAX_MS: u64 = 253_402_300_799_999;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u128::from(MAX_MS)) as u64);
    let (days, ms_of_day) = (ms / 86_400_000, ms % 86_400_000);
    let (y, m, d) = civil_from_days(days);
    let secs = ms_of_day / 1000;
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for k in (at..at + width).rev() {
            b[k] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y);
    put(5, 2, m);
    put(8, 2, d);
    put(11, 2, secs / 3600);
    put(14, 2, secs / 60 % 60);
    put(17, 2, secs % 60);
    put(20, 3, ms_of_day % 1000);
    b
}

/// (year, month, day) of a day number counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

fn serialize_timestamp<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(std::str::from_utf8(&rfc3339_millis(*t)).expect("ASCII digits"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// `write_line` is byte for byte what serde writes for the derived `Serialize`.
    #[test]
    fn the_hand_written_line_is_what_serde_writes() {
        let odd = "q\"b\\s\u{1}\n\u{7f}é😀";
        for (i, text) in [None, Some("plain"), Some(odd)].into_iter().enumerate() {
            for stream in [false, true] {
                let r = UsageRecord {
                    timestamp: UNIX_EPOCH + Duration::from_millis(1_795_000_530_123 + i as u64),
                    lmgate_id: text.map(Arc::from),
                    provider: text.map(|t| format!("p{t}").into()),
                    endpoint: format!("/openai/v1/{}", text.unwrap_or("")),
                    model: text.map(|t| format!("m{t}")),
                    status: [200, 499, 502][i],
                    input_tokens: text.map(|_| u64::MAX),
                    output_tokens: Some(i as u64),
                    cache_read_input_tokens: None,
                    cache_creation_input_tokens: text.map(|_| 0),
                    reasoning_tokens: Some(1_000_000),
                    masked_key: text.map(|t| t.chars().rev().collect()),
                    error_type: text.map(|_| "upstream_http"),
                    usage_status: [UsageStatus::Exact, UsageStatus::OverLimit, UsageStatus::Unparsed][i],
                    stream,
                    duration_ms: u64::MAX - i as u64,
                    cost_micros: [None, Some(0), Some(u64::MAX)][i],
                    cost_status: [CostStatus::NoUsage, CostStatus::Exact, CostStatus::Partial][i],
                    request_id: crate::request_id::next(0x0123_abcd),
                };
                let mut ours = Vec::new();
                r.write_line(&mut ours);
                let mut serde = serde_json::to_vec(&r).unwrap();
                serde.push(b'\n');
                assert_eq!(
                    String::from_utf8(ours).unwrap(),
                    String::from_utf8(serde).unwrap()
                );
            }
        }
    }

    /// The word-at-a-time test finds exactly what the byte test finds: every byte value at
    /// every position of every length up to 24, among neighbours that are near misses.
    #[test]
    fn needs_escape_is_the_byte_test() {
        let byte_test = |b: &[u8]| b.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
        for fill in [b'a', 0x20, 0x21, 0x7f, 0x80, 0xff, b'"' + 1, b'\\' - 1, 0xa0] {
            for len in 0..24usize {
                let base = vec![fill; len];
                assert_eq!(needs_escape(&base), byte_test(&base), "fill {fill} len {len}");
                for at in 0..len {
                    for c in 0..=255u8 {
                        let mut d = base.clone();
                        d[at] = c;
                        assert_eq!(
                            needs_escape(&d),
                            byte_test(&d),
                            "fill {fill} len {len} at {at} byte {c}"
                        );
                    }
                }
            }
        }
    }

    /// The hand-written timestamp is humantime's, day by day over four centuries (leap
    /// years, the 100- and 400-year rules) and at every millisecond edge of a day.
    #[test]
    fn the_timestamp_is_what_humantime_writes() {
        let check = |t: SystemTime| {
            assert_eq!(
                String::from_utf8(rfc3339_millis(t).to_vec()).unwrap(),
                humantime::format_rfc3339_millis(t).to_string(),
                "{t:?}"
            );
        };
        let mut ms: u64 = 0;
        while ms < 13_000_000_000_000 {
            // 1970 to ~2381, one probe a day, each at a different time of day.
            for t in [
                ms,
                ms + 86_399_999,
                ms + (ms / 86_400_000 * 7_919_117) % 86_400_000,
            ] {
                check(UNIX_EPOCH + Duration::from_millis(t));
            }
            ms += 86_400_000;
        }
        for t in [0, 951_782_400_000, 4_107_542_400_000, 253_402_300_799_999] {
            // 1970, 2000-02-29, 2100-03-01, the last millisecond of 9999.
            check(UNIX_EPOCH + Duration::from_millis(t));
        }
        check(UNIX_EPOCH + Duration::from_nanos(1_795_000_530_123_999_999));
        assert_eq!(
            &rfc3339_millis(UNIX_EPOCH - Duration::from_secs(5)),
            b"1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn a_record_is_one_json_line_with_every_field() {
        let r = UsageRecord::build(RecordParts {
            started_at: UNIX_EPOCH + Duration::from_millis(1_795_000_530_123),
            lmgate_id: Some("team-a".into()),
            provider: Some("anthropic".into()),
            endpoint: "/anthropic/v1/messages",
            usage: Usage {
                model: None,
                input_tokens: Some(10),
                output_tokens: Some(20),
                cache_read_input_tokens: None,
                cache_creation_input_tokens: Some(3),
                reasoning_tokens: None,
            },
            url_model: Some("from-url".into()),
            status: 200,
            masked_key: Some("abcdef".into()),
            error_type: None,
            usage_status: UsageStatus::Exact,
            stream: true,
            duration_ms: 42,
            cost_micros: Some(1234),
            cost_status: CostStatus::Exact,
            request_id: crate::request_id::next(0xfeed_f00d),
        });
        let mut line = Vec::new();
        r.write_line(&mut line);
        let text = String::from_utf8(line).unwrap();
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "timestamp": "2026-11-18T11:15:30.123Z",
                "lmgate_id": "team-a", "provider": "anthropic", "endpoint": "/anthropic/v1/messages",
                "model": "from-url", "status": 200, "input_tokens": 10, "output_tokens": 20,
                "cache_read_input_tokens": null, "cache_creation_input_tokens": 3, "reasoning_tokens": null,
                "masked_key": "abcdef", "error_type": null, "usage_status": "exact", "stream": true,
                "duration_ms": 42, "cost_micros": 1234, "cost_status": "exact",
                "request_id": r.request_id.as_str()
            })
        );
    }
}
