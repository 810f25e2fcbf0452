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
use std::fs::File;
use std::os::unix::fs::MetadataExt;
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
    #[serde(borrow, default)]
    request_id: Option<&'a str>,
}

/// Refusals made before admission: they reserved nothing (or gave it back). Every other
/// record of a metered key was charged (a client that left mid-stream included).
const NOT_CHARGED: [&str; 10] = [
    "forbidden",
    "no_route",
    "bad_request",
    "scope_denied",
    "rate_limited",
    "budget_exceeded",
    "unpriced_model",
    "no_credential",
    "credential_unavailable",
    "limits_unavailable",
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

/// Provider name -> wire format (how its counts split into [`Billable`] kinds).
pub type Formats = HashMap<String, ApiFormat>;

/// What the rebuild reads with: the meters, the formats, the current periods, and (for the
/// catch-up) the request-id prefix of this process's own records, which are skipped.
struct Reader<'a> {
    month_start: String,
    meters: &'a HashMap<String, Meters>,
    formats: &'a Formats,
    now: Periods,
    skip_instance: Option<&'a str>,
    stats: RebuildStats,
}

impl Reader<'_> {
    /// Read `f` to its end: every complete line is counted; an unfinished last line stays
    /// in `carry` (a writer may be appending it) unless `last` says the file is done.
    fn read(&mut self, f: &mut File, carry: &mut Vec<u8>, last: bool) -> std::io::Result<()> {
        // Big reads for the rebuild, small ones for the catch-up's few new lines.
        let chunk = if self.skip_instance.is_some() {
            CATCH_UP_CHUNK_BYTES
        } else {
            CHUNK_BYTES
        };
        self.stats.bytes += crate::stats_files::for_each_line(f, chunk, carry, last, |l| self.line(l))?;
        Ok(())
    }

    fn line(&mut self, bytes: &[u8]) {
        // Older than this month: skip without parsing (the writer puts the timestamp first).
        if let Some(ts) = bytes
            .strip_prefix(PREFIX)
            .and_then(|r| r.get(..self.month_start.len()))
        {
            if ts < self.month_start.as_bytes() {
                return;
            }
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        // The catch-up's own records (most of what it reads): skipped before parsing. The
        // writer puts `request_id` last, so the id is in the line's tail.
        if let Some(mine) = self.skip_instance {
            let tail = &bytes[bytes.len().saturating_sub(48)..];
            if memchr::memmem::find(tail, mine.as_bytes()).is_some() {
                return;
            }
        }
        let Ok(rec) = serde_json::from_slice::<Line>(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        self.stats.parsed += 1;
        if let (Some(mine), Some(id)) = (self.skip_instance, rec.request_id) {
            if id.starts_with(&mine[ID_FIELD.len()..]) {
                return;
            }
        }
        let Some(m) = rec.lmgate_id.and_then(|id| self.meters.get(id)) else {
            return;
        };
        let Ok(t) = humantime::parse_rfc3339(rec.timestamp) else {
            self.stats.malformed += 1;
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
            .and_then(|p| self.formats.get(p).copied())
            .and_then(|f| Billable::from_usage(f, &usage))
            .unwrap_or_default();
        let amounts = Amounts {
            requests: 1,
            input: billable.input_total(),
            output: billable.output_total(),
            micros: rec.cost_micros.unwrap_or(0),
        };
        let at = Periods::at(secs);
        m.key.add_current(&at, &self.now, amounts);
        if let Some(o) = &m.owner {
            o.add_current(&at, &self.now, amounts);
        }
        self.stats.charged += 1;
    }
}

/// The live stats file as the rebuild left it: open (so a rotation does not lose it), at
/// the offset read up to, with any unfinished last line. [`CatchUp`] reads on from there.
pub struct Tail {
    live: PathBuf,
    file: Option<File>,
    carry: Vec<u8>,
}

/// Add the spend of every record of the current month in `live`'s files to the meters of
/// the key ids in `meters`, and hand back the live file where the reading stopped.
pub fn rebuild(
    live: &Path,
    meters: &HashMap<String, Meters>,
    formats: &Formats,
    now: SystemTime,
) -> std::io::Result<(RebuildStats, Tail)> {
    let periods = Periods::at(now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    let mut r = Reader {
        month_start: month_start_text(&periods),
        meters,
        formats,
        now: periods,
        skip_instance: None,
        stats: RebuildStats::default(),
    };
    let mut tail = Tail {
        live: live.to_owned(),
        file: None,
        carry: Vec::new(),
    };
    if meters.is_empty() {
        return Ok((r.stats, tail));
    }
    // No directory or no file yet: no records (the writer creates them).
    let files = crate::stats_files::list(live)?;
    for file in files {
        if rotated_before(live, &file, &r.month_start) {
            continue;
        }
        let mut f = match File::open(&file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        r.stats.files += 1;
        let mut carry = Vec::new();
        let is_live = file == live;
        r.read(&mut f, &mut carry, !is_live)?;
        if is_live {
            tail.file = Some(f);
            tail.carry = carry;
        }
    }
    Ok((r.stats, tail))
}

/// How the record line spells the start of a request id (`skip_instance` is this followed
/// by the instance).
const ID_FIELD: &str = "\"request_id\":\"";
const CHUNK_BYTES: usize = 4 * 1024 * 1024;
const CATCH_UP_CHUNK_BYTES: usize = 64 * 1024;
const PREFIX: &[u8] = b"{\"timestamp\":\"";

/// After a graceful upgrade the old process still appends the records of its last
/// requests (those it served while this one rebuilt, and those in flight at the handover)
/// to the same stats file. For `window` (the drain timeout and a margin) this service reads
/// on from where the rebuild stopped, following a rotation, and adds every record that is
/// not this process's own (told by its request-id prefix; a record without one is from an
/// older version, so not ours either).
pub struct CatchUp {
    tail: std::sync::Mutex<Option<Tail>>,
    meters: HashMap<String, Meters>,
    formats: Formats,
    instance: String,
    window: Duration,
}

impl CatchUp {
    /// A catch-up from `tail` for records not of `instance`.
    pub fn new(
        tail: Tail,
        meters: HashMap<String, Meters>,
        formats: Formats,
        instance: u32,
        window: Duration,
    ) -> Self {
        CatchUp {
            tail: std::sync::Mutex::new(Some(tail)),
            meters,
            formats,
            instance: format!("{ID_FIELD}{instance:08x}"),
            window,
        }
    }

    /// Read what was appended since the last call; `Ok(n)`: records added.
    fn poll(&self, tail: &mut Tail) -> std::io::Result<u64> {
        let now = Periods::now();
        let mut r = Reader {
            month_start: month_start_text(&now),
            meters: &self.meters,
            formats: &self.formats,
            now,
            skip_instance: Some(&self.instance),
            stats: RebuildStats::default(),
        };
        if let Some(f) = tail.file.as_mut() {
            r.read(f, &mut tail.carry, false)?;
        }
        // No live file at the rebuild, or it was rotated since: the held file is read to
        // its end (above); go on with the file now at the live path, from its start.
        let held = match &tail.file {
            Some(f) => Some(f.metadata()?.ino()),
            None => None,
        };
        if let Ok(m) = std::fs::metadata(&tail.live) {
            if held != Some(m.ino()) {
                if !tail.carry.is_empty() {
                    let whole = std::mem::take(&mut tail.carry);
                    r.line(&whole);
                }
                let mut f = File::open(&tail.live)?;
                r.read(&mut f, &mut tail.carry, false)?;
                tail.file = Some(f);
            }
        }
        Ok(r.stats.charged)
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for CatchUp {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let Some(mut tail) = self.tail.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let end = tokio::time::Instant::now() + self.window;
        let mut added = 0;
        while tokio::time::Instant::now() < end {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(CATCH_UP_POLL) => {}
            }
            // Small reads of the file's new end, on this service's own runtime thread.
            match self.poll(&mut tail) {
                Ok(0) => {}
                Ok(n) => {
                    added += n;
                    log::info!("spend catch-up: {n} records of another process added ({added} so far)");
                }
                Err(e) => {
                    log::warn!("spend catch-up stopped reading {}: {e}", tail.live.display());
                    return;
                }
            }
        }
        log::info!("spend catch-up done: {added} records of another process added");
    }
}

/// How often the catch-up reads the file's new end.
const CATCH_UP_POLL: Duration = Duration::from_millis(250);

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

    fn anthropic() -> Formats {
        Formats::from([("anthropic".to_string(), ApiFormat::Anthropic)])
    }

    /// The old process of an upgrade appends after the rebuild (a half-written line
    /// included, then a rotation): the catch-up adds its records, never this process's own.
    #[test]
    fn the_catch_up_adds_what_another_process_appends_and_follows_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("stats.jsonl");
        let secs = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let ts = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_secs(secs)).to_string();
        let with_id = |cost: u64, id: &str| {
            let r = rec(&ts, "a", 1, 1, cost, "null");
            format!("{},\"request_id\":\"{id}\"}}\n", &r[..r.len() - 1])
        };
        let first = with_id(1, "00000001-000000000001");
        let (head, rest) = first.split_at(40);
        std::fs::write(&live, format!("{}{head}", with_id(10, "00000001-000000000000"))).unwrap();
        let m = Meters {
            key: Arc::new(Meter::default()),
            owner: None,
        };
        let meters = HashMap::from([("a".to_string(), m.clone())]);
        let (stats, tail) = rebuild(&live, &meters, &anthropic(), std::time::SystemTime::now()).unwrap();
        assert_eq!((stats.charged, stats.malformed), (1, 0), "the half line waits");
        let c = CatchUp::new(tail, meters, anthropic(), 0xabcd_ef01, Duration::from_secs(1));
        let mut tail = c.tail.lock().unwrap().take().unwrap();
        let append = |text: &str| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&live).unwrap();
            f.write_all(text.as_bytes()).unwrap();
        };
        // The rest of the half line, one of ours, one without an id (an older version).
        append(&format!(
            "{rest}{}{}\n",
            with_id(100, "abcdef01-000000000000"),
            rec(&ts, "a", 1, 1, 1000, "null")
        ));
        assert_eq!(c.poll(&mut tail).unwrap(), 2);
        // Rotated: the old file's new end is read, then the new file from its start.
        append(&with_id(10_000, "00000001-000000000002"));
        std::fs::rename(&live, dir.path().join("stats.jsonl.20261202T000000.000Z")).unwrap();
        std::fs::write(&live, with_id(100_000, "00000001-000000000003")).unwrap();
        assert_eq!(c.poll(&mut tail).unwrap(), 2);
        assert_eq!(c.poll(&mut tail).unwrap(), 0, "nothing read twice");
        let p = Periods::now();
        assert_eq!(
            m.key.used(Kind::UsdPerMonth, &p),
            10 + 1 + 1000 + 10_000 + 100_000
        );
    }

    #[test]
    fn no_records_yet_is_an_empty_history() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meters {
            key: Arc::new(Meter::default()),
            owner: None,
        };
        let meters = HashMap::from([("a".to_string(), m)]);
        let now = UNIX_EPOCH + Duration::from_secs(NOW);
        for live in [
            dir.path().join("stats.jsonl"),
            dir.path().join("missing/stats.jsonl"),
        ] {
            assert_eq!(
                rebuild(&live, &meters, &Formats::new(), now).unwrap().0,
                RebuildStats::default()
            );
        }
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
        std::fs::write(&live, lines.join("\n") + "\n").unwrap();
        let m = Meters {
            key: Arc::new(Meter::default()),
            owner: Some(Arc::new(Meter::default())),
        };
        let meters = HashMap::from([("a".to_string(), m.clone())]);
        let now = UNIX_EPOCH + Duration::from_secs(NOW + 30);
        let (stats, _) = rebuild(&live, &meters, &anthropic(), now).unwrap();
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
