//! `lmgate report`: usage totals from the stats file and its rotated siblings.
//!
//! The pure parts, each unit-tested here: [`parse_time`] (RFC 3339 or a UTC date),
//! [`parse_record`] (one JSONL line), [`TimeRange`], [`Report`] (grouping and sums),
//! [`DailyTokens`] and [`render_chart`] (the SVG, into a `String`), [`order_stats_files`]
//! (which names are rotated siblings, oldest first), [`scan`] (lines of any `BufRead`), and
//! the three renderers. [`run`] and [`run_with`] (with [`stats_files`]) are the only parts
//! that touch files and the terminal.
//!
//! Memory grows with the number of groups (and days × series for the chart), never with the
//! number of records: files are streamed, each line into one reused buffer of at most
//! [`MAX_LINE_BYTES`].
//!
//! The record format is `crate::record::UsageRecord`; fields this module does not read
//! (`endpoint`, `status`, `masked_key`, ...) are ignored, so adding a field to the record
//! never breaks a report.

use crate::allowlist::load_allowlist;
use crate::config::Config;
use crate::usage::UsageStatus;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Longest line read as a record; a longer one is skipped as malformed without being held
/// in memory. Records are a few hundred bytes.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Malformed lines reported one by one on stderr; beyond this only the total is printed.
pub const MAX_MALFORMED_SHOWN: u64 = 10;
/// Most series drawn in a chart; the rest are summed into one `(other)` series.
pub const MAX_CHART_SERIES: usize = 10;
/// Shown for a group value the record leaves null (no key, no provider, no model).
pub const NONE_LABEL: &str = "(none)";
/// Owner of an `lmgate_id` that the allow-list does not name (or could not be read).
pub const UNKNOWN_OWNER: &str = "(unknown)";
/// The chart series that sums the smallest ones beyond [`MAX_CHART_SERIES`].
pub const OTHER_LABEL: &str = "(other)";

const MS_PER_DAY: i64 = 86_400_000;
const STATS_READ_BUFFER_BYTES: usize = 64 * 1024;
/// Chart size in pixels (plot, then the legend to its right).
const CHART_SIZE: (u32, u32) = (1024, 480);
const LEGEND_WIDTH: u32 = 320;
/// Longest series name drawn in full in the legend.
const LEGEND_LABEL_CHARS: usize = 48;

// ---------------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------------

/// Arguments of `lmgate report`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Times are UTC. --since is inclusive and --until exclusive, so \
`--since 2026-11-01 --until 2026-12-01` is November. Exit 0 on success, 1 on error \
(unreadable file, bad config); malformed lines are skipped and reported on stderr.")]
pub struct ReportArgs {
    /// Stats file to read (its rotated siblings too); default: `stats.output_path` from the config.
    #[arg(long, value_name = "FILE")]
    pub stats: Option<PathBuf>,

    /// Allow-list CSV mapping `lmgate_id` to owner (for `--by owner`); default:
    /// `auth.allowlist_path` from the config.
    #[arg(long, value_name = "FILE")]
    pub allowlist: Option<PathBuf>,

    /// Only records at or after TIME: RFC 3339 (`2026-11-21T08:00:00Z`, offsets allowed) or a
    /// date (`2026-11-21`, midnight UTC).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<i64>,

    /// Only records before TIME (exclusive); same forms as --since.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<i64>,

    /// Group by one or more of key, owner, provider, model, day (comma-separated, in order).
    #[arg(
        long = "by",
        visible_alias = "group-by",
        value_name = "DIM[,DIM...]",
        value_enum,
        value_delimiter = ',',
        default_value = "key"
    )]
    pub by: Vec<Dimension>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// Also draw input + output tokens per day, stacked by --chart-by, into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub chart: Option<PathBuf>,

    /// What the chart's stacks are.
    #[arg(long, value_enum, default_value_t = ChartBy::Key, value_name = "WHAT")]
    pub chart_by: ChartBy,
}

/// A grouping dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Dimension {
    /// The record's `lmgate_id` (the allow-list id, never the key).
    #[value(alias = "lmgate_id", alias = "key_id")]
    Key,
    /// The allow-list owner of the `lmgate_id`.
    Owner,
    /// Provider name.
    Provider,
    /// Model.
    Model,
    /// UTC date of the record's `timestamp`.
    Day,
}

impl Dimension {
    /// Column name in every output format.
    pub fn column(self) -> &'static str {
        match self {
            Dimension::Key => "lmgate_id",
            Dimension::Owner => "owner",
            Dimension::Provider => "provider",
            Dimension::Model => "model",
            Dimension::Day => "day",
        }
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a total row.
    Table,
    /// CSV with a header row; a null group value is an empty field.
    Csv,
    /// One JSON document: groups, total, filters.
    Json,
}

/// What the chart stacks per day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChartBy {
    /// `lmgate_id`.
    Key,
    /// Model.
    Model,
}

impl ChartBy {
    fn column(self) -> &'static str {
        match self {
            ChartBy::Key => "lmgate_id",
            ChartBy::Model => "model",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Time: RFC 3339 in, Unix milliseconds out (pure; no time zone database needed, all UTC)
// ---------------------------------------------------------------------------------------------

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12); // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
}

/// `YYYY-MM-DD` -> day number.
fn parse_date(b: &[u8]) -> Option<i64> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (digits(&b[..4])?, digits(&b[5..7])?, digits(&b[8..])?);
    let month_days = [
        31,
        if is_leap(y.into()) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d == 0 || d > month_days[m as usize - 1] {
        return None;
    }
    Some(days_from_civil(y.into(), m, d))
}

/// An RFC 3339 date-time (`2026-11-21T08:00:00Z`, `...00.123456Z`, `...00+02:00`; `t`, `z`
/// and a space separator too) as Unix milliseconds. Sub-millisecond digits are dropped.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let days = parse_date(&b[..10])?;
    let (h, m, sec) = (digits(&b[11..13])?, digits(&b[14..16])?, digits(&b[17..19])?);
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut ms = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                ms = ms * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..3 {
            ms *= 10;
        }
    }
    let offset_min = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (digits(&b[i + 1..i + 3])?, digits(&b[i + 4..i + 6])?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = i64::from(oh * 60 + om);
            if *sign == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    let secs = i64::from(h * 3600 + m * 60 + sec) - offset_min * 60;
    Some(days * MS_PER_DAY + secs * 1000 + ms)
}

/// A `--since`/`--until` value: RFC 3339 or a plain date (its midnight UTC), as Unix ms.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let parsed = if s.len() == 10 {
        parse_date(s.as_bytes()).map(|d| d * MS_PER_DAY)
    } else {
        parse_rfc3339_ms(s)
    };
    parsed.ok_or_else(|| "expected an RFC 3339 time (2026-11-21T08:00:00Z) or a date (2026-11-21)".into())
}

/// `2026-11-21` for a Unix-ms instant.
pub fn format_day(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    format!("{y:04}-{m:02}-{d:02}")
}

/// `2026-11-21T08:00:00.000Z` for a Unix-ms instant (the record's own format).
pub fn format_time(ms: i64) -> String {
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (h, m, s, milli) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    format!("{}T{h:02}:{m:02}:{s:02}.{milli:03}Z", format_day(ms))
}

/// `[since, until)` in Unix ms; either end open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    /// Inclusive start.
    pub since: Option<i64>,
    /// Exclusive end.
    pub until: Option<i64>,
}

impl TimeRange {
    /// Whether an instant is in the range.
    pub fn contains(&self, ms: i64) -> bool {
        self.since.is_none_or(|s| ms >= s) && self.until.is_none_or(|u| ms < u)
    }
}

// ---------------------------------------------------------------------------------------------
// One record
// ---------------------------------------------------------------------------------------------

/// Usage statuses in column order; names come from [`UsageStatus::as_str`].
pub const STATUSES: [UsageStatus; 5] = [
    UsageStatus::Exact,
    UsageStatus::Absent,
    UsageStatus::OverLimit,
    UsageStatus::Truncated,
    UsageStatus::Unparsed,
];

/// Token sums in column order: (record field / CSV and JSON column, table header).
pub const TOKEN_COLUMNS: [(&str, &str); 5] = [
    ("input_tokens", "input"),
    ("output_tokens", "output"),
    ("cache_read_input_tokens", "cache_read"),
    ("cache_creation_input_tokens", "cache_write"),
    ("reasoning_tokens", "reasoning"),
];

/// The fields of a usage record that a report reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// `timestamp` as Unix ms.
    pub at_ms: i64,
    /// `lmgate_id`.
    pub lmgate_id: Option<Cow<'a, str>>,
    /// `provider`.
    pub provider: Option<Cow<'a, str>>,
    /// `model`.
    pub model: Option<Cow<'a, str>>,
    /// Token counts in [`TOKEN_COLUMNS`] order; `None` = null in the record.
    pub tokens: [Option<u64>; 5],
    /// `error_type` is not null.
    pub error: bool,
    /// Index of `usage_status` in [`STATUSES`].
    pub status: usize,
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
}

/// Why a line was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
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
pub fn parse_record(line: &[u8]) -> Result<Record<'_>, LineError> {
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
    })
}

// ---------------------------------------------------------------------------------------------
// Aggregation
// ---------------------------------------------------------------------------------------------

/// Counters of one group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Records.
    pub requests: u64,
    /// Records whose `error_type` is not null.
    pub errors: u64,
    /// Token sums in [`TOKEN_COLUMNS`] order (null counts add nothing).
    pub tokens: [u64; 5],
    /// Records per usage status, in [`STATUSES`] order.
    pub statuses: [u64; 5],
}

impl Totals {
    fn add(&mut self, r: &Record<'_>) {
        self.requests += 1;
        self.errors += u64::from(r.error);
        for (sum, t) in self.tokens.iter_mut().zip(r.tokens) {
            *sum = sum.saturating_add(t.unwrap_or(0));
        }
        self.statuses[r.status] += 1;
    }

    /// Every counter in column order (requests, errors, tokens, statuses).
    pub fn values(&self) -> impl Iterator<Item = u64> + '_ {
        [self.requests, self.errors]
            .into_iter()
            .chain(self.tokens)
            .chain(self.statuses)
    }
}

/// Counter column names for CSV and JSON, in [`Totals::values`] order.
pub fn counter_columns() -> Vec<&'static str> {
    let mut c = vec!["requests", "errors"];
    c.extend(TOKEN_COLUMNS.iter().map(|(name, _)| *name));
    c.extend(STATUSES.iter().map(|s| s.as_str()));
    c
}

/// Counter headers for the table (shorter token names), in [`Totals::values`] order.
pub fn counter_headers() -> Vec<&'static str> {
    let mut c = vec!["requests", "errors"];
    c.extend(TOKEN_COLUMNS.iter().map(|(_, short)| *short));
    c.extend(STATUSES.iter().map(|s| s.as_str()));
    c
}

/// `lmgate_id` -> owner. `None`: the allow-list could not be read (every owner unknown).
#[derive(Debug, Clone, Default)]
pub struct Owners(Option<HashMap<String, String>>);

impl Owners {
    /// From an allow-list. Rows sharing an id with different owners show them all, sorted
    /// and joined with `/`, so the result does not depend on row order.
    pub fn from_allowlist(list: &crate::allowlist::AllowList) -> Owners {
        let mut by_id: HashMap<&str, BTreeSet<&str>> = HashMap::new();
        for e in list.entries() {
            by_id.entry(&e.id).or_default().insert(&e.owner);
        }
        Owners(Some(
            by_id
                .into_iter()
                .map(|(id, owners)| (id.to_owned(), owners.into_iter().collect::<Vec<_>>().join("/")))
                .collect(),
        ))
    }

    /// Every owner is [`UNKNOWN_OWNER`].
    pub fn unknown() -> Owners {
        Owners(None)
    }

    fn owner_of(&self, id: &str) -> &str {
        self.0
            .as_ref()
            .and_then(|m| m.get(id))
            .map_or(UNKNOWN_OWNER, String::as_str)
    }
}

/// A group's values, one per dimension; `None` = null in the record.
pub type GroupKey = Vec<Option<String>>;

/// Usage grouped by the chosen dimensions. Memory: one entry per distinct group.
#[derive(Debug, Clone)]
pub struct Report {
    dims: Vec<Dimension>,
    owners: Owners,
    groups: HashMap<GroupKey, Totals>,
    total: Totals,
}

impl Report {
    /// An empty report grouped by `dims` (duplicates ignored).
    pub fn new(dims: &[Dimension], owners: Owners) -> Report {
        let mut unique = Vec::new();
        for d in dims {
            if !unique.contains(d) {
                unique.push(*d);
            }
        }
        Report {
            dims: unique,
            owners,
            groups: HashMap::new(),
            total: Totals::default(),
        }
    }

    /// The dimensions, in column order.
    pub fn dims(&self) -> &[Dimension] {
        &self.dims
    }

    fn value(&self, dim: Dimension, r: &Record<'_>) -> Option<String> {
        match dim {
            Dimension::Key => r.lmgate_id.as_deref().map(str::to_owned),
            Dimension::Owner => r
                .lmgate_id
                .as_deref()
                .map(|id| self.owners.owner_of(id).to_owned()),
            Dimension::Provider => r.provider.as_deref().map(str::to_owned),
            Dimension::Model => r.model.as_deref().map(str::to_owned),
            Dimension::Day => Some(format_day(r.at_ms)),
        }
    }

    /// Count one record.
    pub fn add(&mut self, r: &Record<'_>) {
        let key: GroupKey = self.dims.iter().map(|d| self.value(*d, r)).collect();
        self.groups.entry(key).or_default().add(r);
        self.total.add(r);
    }

    /// Groups sorted by their values (a null value first).
    pub fn rows(&self) -> Vec<(&GroupKey, &Totals)> {
        let mut rows: Vec<_> = self.groups.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        rows
    }

    /// All records in range.
    pub fn total(&self) -> &Totals {
        &self.total
    }
}

/// Input + output tokens per (UTC day, series) for the chart. Memory: days × series.
#[derive(Debug, Clone)]
pub struct DailyTokens {
    by: ChartBy,
    cells: BTreeMap<(i64, Option<String>), u64>,
}

impl DailyTokens {
    /// Empty, stacked by `by`.
    pub fn new(by: ChartBy) -> DailyTokens {
        DailyTokens {
            by,
            cells: BTreeMap::new(),
        }
    }

    /// Count one record (a record without token counts adds nothing).
    pub fn add(&mut self, r: &Record<'_>) {
        let tokens = r.tokens[0].unwrap_or(0).saturating_add(r.tokens[1].unwrap_or(0));
        if tokens == 0 {
            return;
        }
        let series = match self.by {
            ChartBy::Key => r.lmgate_id.as_deref(),
            ChartBy::Model => r.model.as_deref(),
        };
        let cell = self
            .cells
            .entry((r.at_ms.div_euclid(MS_PER_DAY), series.map(str::to_owned)))
            .or_default();
        *cell = cell.saturating_add(tokens);
    }

    /// (first day, one value per day up to the last day, series largest first): days with
    /// no tokens are zeros, series beyond [`MAX_CHART_SERIES`] are summed into `(other)`.
    pub fn series(&self) -> (i64, Vec<(String, Vec<u64>)>) {
        let (Some(first), Some(last)) = (
            self.cells.keys().map(|k| k.0).min(),
            self.cells.keys().map(|k| k.0).max(),
        ) else {
            return (0, Vec::new());
        };
        let days = (last - first + 1) as usize;
        let mut by_name: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for ((day, name), tokens) in &self.cells {
            let v = by_name
                .entry(name.as_deref().unwrap_or(NONE_LABEL))
                .or_insert_with(|| vec![0; days]);
            v[(day - first) as usize] += tokens;
        }
        let mut all: Vec<(String, Vec<u64>)> = by_name.into_iter().map(|(n, v)| (n.to_owned(), v)).collect();
        // Largest total first; the name breaks ties so the order is stable.
        all.sort_by(|a, b| {
            let (ta, tb) = (a.1.iter().sum::<u64>(), b.1.iter().sum::<u64>());
            tb.cmp(&ta).then_with(|| a.0.cmp(&b.0))
        });
        if all.len() > MAX_CHART_SERIES {
            let rest = all.split_off(MAX_CHART_SERIES - 1);
            let mut other = vec![0; days];
            for (_, v) in rest {
                for (o, x) in other.iter_mut().zip(v) {
                    *o += x;
                }
            }
            all.push((OTHER_LABEL.to_owned(), other));
        }
        (first, all)
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering (pure: values in, text out)
// ---------------------------------------------------------------------------------------------

/// A group value for the table: `(none)` for null; control characters (a newline in a
/// model name) would break the columns, so they show as `?`.
fn text_value(v: &Option<String>) -> String {
    match v {
        None => NONE_LABEL.to_owned(),
        Some(s) => s.chars().map(|c| if c.is_control() { '?' } else { c }).collect(),
    }
}

/// Aligned columns: group values left-aligned, counters right-aligned, a `total` row.
pub fn render_table(report: &Report) -> String {
    let dims = report.dims().len();
    let mut header: Vec<String> = report.dims().iter().map(|d| d.column().to_owned()).collect();
    header.extend(counter_headers().into_iter().map(str::to_owned));
    let mut rows: Vec<Vec<String>> = vec![header];
    for (key, totals) in report.rows() {
        let mut row: Vec<String> = key.iter().map(text_value).collect();
        row.extend(totals.values().map(|n| n.to_string()));
        rows.push(row);
    }
    let mut total: Vec<String> = vec![String::new(); dims];
    total[0] = "total".into();
    total.extend(report.total().values().map(|n| n.to_string()));
    rows.push(total);

    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let pad = widths[c] - cell.chars().count();
            if c < dims {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            } else {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// CSV with a header row, one row per group, no total row; a null group value is empty.
pub fn render_csv(report: &Report) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<&str> = report.dims().iter().map(|d| d.column()).collect();
    header.extend(counter_columns());
    // Writing to a Vec cannot fail.
    w.write_record(&header).expect("csv into memory");
    for (key, totals) in report.rows() {
        let mut row: Vec<String> = key.iter().map(|v| v.clone().unwrap_or_default()).collect();
        row.extend(totals.values().map(|n| n.to_string()));
        w.write_record(&row).expect("csv into memory");
    }
    let bytes = w.into_inner().expect("csv into memory");
    String::from_utf8(bytes).expect("csv of UTF-8 strings is UTF-8")
}

fn json_counters(out: &mut String, t: &Totals) {
    for (name, n) in counter_columns().into_iter().zip(t.values()) {
        let _ = write!(out, ", \"{name}\": {n}");
    }
}

/// One JSON document with the filters, the groups (one object a line), the total, and
/// the number of malformed lines skipped. A null group value is `null`.
pub fn render_json(report: &Report, range: TimeRange, malformed: u64) -> String {
    let js = |v: &Option<String>| serde_json::to_string(v).expect("strings serialize");
    let time = |t: Option<i64>| js(&t.map(format_time));
    let dims: Vec<String> = report
        .dims()
        .iter()
        .map(|d| js(&Some(d.column().to_owned())))
        .collect();
    let mut out = String::from("{\n");
    let _ = writeln!(out, "  \"group_by\": [{}],", dims.join(", "));
    let _ = writeln!(out, "  \"since\": {},", time(range.since));
    let _ = writeln!(out, "  \"until\": {},", time(range.until));
    let _ = writeln!(out, "  \"malformed_lines\": {malformed},");
    out.push_str("  \"groups\": [");
    let rows = report.rows();
    for (i, &(key, totals)) in rows.iter().enumerate() {
        out.push_str(if i == 0 { "\n    {" } else { ",\n    {" });
        let fields: Vec<String> = report
            .dims()
            .iter()
            .zip(key)
            .map(|(d, v)| format!("\"{}\": {}", d.column(), js(v)))
            .collect();
        out.push_str(&fields.join(", "));
        json_counters(&mut out, totals);
        out.push('}');
    }
    out.push_str(if rows.is_empty() { "],\n" } else { "\n  ],\n" });
    let mut total = String::new();
    json_counters(&mut total, report.total());
    let _ = writeln!(out, "  \"total\": {{{}}}", &total[2..]);
    out.push_str("}\n");
    out
}

/// Text safe in an SVG document: XML 1.0 forbids most control characters even escaped.
/// Long names are shortened with `…`.
fn svg_label(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if clean.chars().count() > LEGEND_LABEL_CHARS {
        let mut short: String = clean.chars().take(LEGEND_LABEL_CHARS - 1).collect();
        short.push('…');
        short
    } else {
        clean
    }
}

fn human_tokens(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.1}G", n / 1e9),
        n if n >= 1e6 => format!("{:.1}M", n / 1e6),
        n if n >= 1e3 => format!("{:.1}k", n / 1e3),
        n => format!("{n:.0}"),
    }
}

/// The chart as an SVG document: one bar per day, stacked by series, and a legend with one
/// colour swatch and one `<text>` label per series.
///
/// Plotters is built without its `ttf` feature: the SVG backend writes each label as an SVG
/// `<text>` element that the viewer renders with its own fonts, and text sizes for layout
/// are plotters' estimate (`style/font/naive.rs`), so labels always appear, placed a little
/// approximately. Nothing is rasterized.
pub fn render_chart(data: &DailyTokens, title: &str) -> Result<String, String> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    let (first_day, series) = data.series();
    let days = series.first().map_or(1, |s| s.1.len());
    let mut stacked = vec![0u64; days];
    for (_, v) in &series {
        for (s, x) in stacked.iter_mut().zip(v) {
            *s += x;
        }
    }
    // At least 10 so an empty chart gets whole-number ticks.
    let y_max = (stacked.iter().copied().max().unwrap_or(0).max(10) as f64) * 1.1;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (plot, legend) = root.split_horizontally(CHART_SIZE.0 - LEGEND_WIDTH);
        let mut chart = ChartBuilder::on(&plot)
            .caption(svg_label_line(title), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.5f64..(days as f64 - 0.5), 0f64..y_max)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_labels(0) // days are labelled below, one per bar, not at "nice" numbers
            .y_labels(8)
            .y_label_formatter(&|y| human_tokens(*y))
            .y_desc("tokens (input + output)")
            .x_desc("day (UTC)")
            .draw()
            .map_err(|e| e.to_string())?;

        let mut base = vec![0u64; days];
        for (i, (_, values)) in series.iter().enumerate() {
            let color = series_color(i, series.len(), &series[i].0);
            let bars: Vec<_> = values
                .iter()
                .enumerate()
                .filter(|(_, v)| **v > 0)
                .map(|(d, v)| {
                    let x = d as f64;
                    let (lo, hi) = (base[d] as f64, (base[d] + v) as f64);
                    Rectangle::new([(x - 0.35, lo), (x + 0.35, hi)], color.filled())
                })
                .collect();
            chart.draw_series(bars).map_err(|e| e.to_string())?;
            for (b, v) in base.iter_mut().zip(values) {
                *b += v;
            }
        }

        // Day labels under the bars; at most ~12 of them so they never overlap.
        let step = days.div_ceil(12).max(1);
        let days_with_labels = if series.is_empty() { 0 } else { days };
        let label_style = ("sans-serif", 14)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        for d in (0..days_with_labels).step_by(step) {
            let (x, y) = chart.backend_coord(&(d as f64, 0.0));
            let day = format_day((first_day + d as i64) * MS_PER_DAY);
            root.draw(&Text::new(day, (x, y + 6), label_style.clone()))
                .map_err(|e| e.to_string())?;
        }

        let title_style = ("sans-serif", 16).into_font().color(&BLACK);
        let text_style = ("sans-serif", 14).into_font().color(&BLACK);
        legend
            .draw(&Text::new(data.by.column(), (10, 40), title_style))
            .map_err(|e| e.to_string())?;
        if series.is_empty() {
            legend
                .draw(&Text::new("no tokens in range", (10, 66), text_style.clone()))
                .map_err(|e| e.to_string())?;
        }
        for (i, (name, _)) in series.iter().enumerate() {
            let y = 66 + 22 * i as i32;
            let color = series_color(i, series.len(), name);
            legend
                .draw(&Rectangle::new([(10, y), (24, y + 14)], color.filled()))
                .map_err(|e| e.to_string())?;
            legend
                .draw(&Text::new(svg_label(name), (32, y + 1), text_style.clone()))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// A one-line caption safe in SVG.
fn svg_label_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn series_color(i: usize, n: usize, name: &str) -> plotters::style::RGBAColor {
    use plotters::style::{Color, Palette, Palette99, RGBColor};
    if name == OTHER_LABEL && i + 1 == n {
        return RGBColor(160, 160, 160).to_rgba();
    }
    Palette99::pick(i).to_rgba()
}

// ---------------------------------------------------------------------------------------------
// Files and streaming
// ---------------------------------------------------------------------------------------------

/// The rotation suffix of `name` as a sortable (stamp, n), when `name` is `live` plus
/// `.YYYYMMDDTHHMMSS.mmmZ` and an optional `.N` (see `stats::rotated_name`).
fn rotation_key<'a>(live: &str, name: &'a str) -> Option<(&'a str, u64)> {
    let rest = name.strip_prefix(live)?.strip_prefix('.')?;
    let (stamp, n) = match rest.get(20..) {
        Some("") => (rest, 0),
        Some(tail) => (&rest[..20], digits(tail.strip_prefix('.')?.as_bytes())? as u64),
        None => return None,
    };
    let b = stamp.as_bytes();
    let shape = b.iter().enumerate().all(|(i, c)| match i {
        8 => *c == b'T',
        15 => *c == b'.',
        19 => *c == b'Z',
        _ => c.is_ascii_digit(),
    });
    shape.then_some((stamp, n))
}

/// Which of the names in a directory are the stats file `live`'s rotated siblings, oldest
/// first (their names sort by rotation time, then by the `.N` taken-name counter). The live
/// file itself, the `.lock` sidecar and anything else are left out.
pub fn order_stats_files<'a>(live: &str, names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut rotated: Vec<((&str, u64), &str)> = names
        .into_iter()
        .filter_map(|n| rotation_key(live, n).map(|k| (k, n)))
        .collect();
    rotated.sort();
    rotated.into_iter().map(|(_, n)| n).collect()
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
pub fn scan<R: BufRead>(
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

/// What stops a report (exit 1). Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The config could not be loaded (needed for the stats path).
    #[error("config error: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// A stats file or directory could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The chart could not be drawn or written.
    #[error("cannot write chart {}: {reason}", .path.display())]
    Chart {
        /// The SVG path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The report could not be written to stdout.
    #[error("cannot write the report: {0}")]
    Output(std::io::Error),
    /// `--since` is not before `--until`.
    #[error("--since ({since}) must be before --until ({until})")]
    EmptyRange {
        /// `--since`, formatted.
        since: String,
        /// `--until`, formatted.
        until: String,
    },
}

/// The stats files to read, oldest first: rotated siblings by name, then the live file.
pub fn stats_files(live: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let read_err = |path: &Path, source| ReportError::Read {
        path: path.to_owned(),
        source,
    };
    let name = live
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| read_err(live, std::io::ErrorKind::InvalidInput.into()))?;
    let dir = match live.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let entries = std::fs::read_dir(dir).map_err(|e| match e.kind() {
        // No such directory: say which stats file is missing.
        std::io::ErrorKind::NotFound => read_err(live, e),
        _ => read_err(dir, e),
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| read_err(dir, e))?;
        if let Ok(n) = entry.file_name().into_string() {
            names.push(n);
        }
    }
    let mut files: Vec<PathBuf> = order_stats_files(name, names.iter().map(String::as_str))
        .into_iter()
        .map(|n| live.with_file_name(n))
        .collect();
    match std::fs::metadata(live) {
        Ok(_) => files.push(live.to_owned()),
        // Between a rotation and the next write there may be no live file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !files.is_empty() => {}
        Err(e) => return Err(read_err(live, e)),
    }
    Ok(files)
}

/// The config, read only when a path must come from it, and at most once.
struct LazyConfig<'a> {
    path: &'a Path,
    loaded: Option<Result<Config, crate::config::ConfigError>>,
}

impl LazyConfig<'_> {
    fn get(&mut self) -> Result<&Config, crate::config::ConfigError> {
        let path = self.path;
        self.loaded
            .get_or_insert_with(|| Config::load(path, std::env::vars()))
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// Run the report; returns the process exit code (0 done, 1 failed).
pub fn run(args: &ReportArgs, config: &Path) -> ExitCode {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    match run_with(args, config, &mut stdout.lock(), &mut stderr.lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lmgate report: {e}");
            ExitCode::FAILURE
        }
    }
}

/// [`run`] with its output streams given.
pub fn run_with(
    args: &ReportArgs,
    config_path: &Path,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<(), ReportError> {
    let range = TimeRange {
        since: args.since,
        until: args.until,
    };
    if let (Some(s), Some(u)) = (range.since, range.until) {
        if s >= u {
            return Err(ReportError::EmptyRange {
                since: format_time(s),
                until: format_time(u),
            });
        }
    }
    let mut config = LazyConfig {
        path: config_path,
        loaded: None,
    };
    let stats_path = match &args.stats {
        Some(p) => p.clone(),
        None => config.get()?.stats.output_path.clone(),
    };

    let mut report = Report::new(&args.by, Owners::unknown());
    if report.dims().contains(&Dimension::Owner) {
        let path = match &args.allowlist {
            Some(p) => Ok(p.clone()),
            None => config.get().map(|c| c.auth.allowlist_path.clone()),
        };
        let owners = match path {
            Ok(p) => match load_allowlist(&p) {
                Ok(list) => Owners::from_allowlist(&list),
                Err(e) => {
                    let _ = writeln!(
                        err,
                        "lmgate report: warning: allow-list {} unusable, owners shown as {UNKNOWN_OWNER}: {e}",
                        p.display()
                    );
                    Owners::unknown()
                }
            },
            Err(e) => {
                let _ = writeln!(
                    err,
                    "lmgate report: warning: no allow-list (config error: {e}), owners shown as {UNKNOWN_OWNER}"
                );
                Owners::unknown()
            }
        };
        report = Report::new(&args.by, owners);
    }
    let mut chart = args.chart.as_ref().map(|_| DailyTokens::new(args.chart_by));

    let mut malformed = 0u64;
    for file in stats_files(&stats_path)? {
        let read_err = |source| ReportError::Read {
            path: file.clone(),
            source,
        };
        let f = std::fs::File::open(&file).map_err(read_err)?;
        let reader = std::io::BufReader::with_capacity(STATS_READ_BUFFER_BYTES, f);
        scan(
            reader,
            range,
            |r| {
                report.add(r);
                if let Some(c) = chart.as_mut() {
                    c.add(r);
                }
            },
            |line, e| {
                malformed += 1;
                if malformed <= MAX_MALFORMED_SHOWN {
                    let _ = writeln!(
                        err,
                        "lmgate report: {}:{line}: skipped malformed line: {e}",
                        file.display()
                    );
                }
            },
        )
        .map_err(read_err)?;
    }
    if malformed > MAX_MALFORMED_SHOWN {
        let _ = writeln!(err, "lmgate report: {malformed} malformed lines skipped in all");
    }

    // The chart first: when it cannot be written, the run fails before printing anything.
    if let (Some(path), Some(data)) = (&args.chart, &chart) {
        let chart_err = |reason: String| ReportError::Chart {
            path: path.clone(),
            reason,
        };
        let mut title = format!("Tokens per day by {}", args.chart_by.column());
        if let Some(s) = range.since {
            let _ = write!(title, ", from {}", format_time(s));
        }
        if let Some(u) = range.until {
            let _ = write!(title, ", until {}", format_time(u));
        }
        let svg = render_chart(data, &title).map_err(chart_err)?;
        std::fs::write(path, svg).map_err(|e| chart_err(e.to_string()))?;
    }
    let text = match args.format {
        Format::Table => render_table(&report),
        Format::Csv => render_csv(&report),
        Format::Json => render_json(&report, range, malformed),
    };
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // `lmgate report | head` closing the pipe early is not a failure.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(ReportError::Output(e));
        }
    }

    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const LINE: &str = r#"{"timestamp":"2026-11-21T08:00:00.250Z","lmgate_id":"team-a","provider":"openai","endpoint":"/openai/v1/chat/completions","model":"gpt-4o-mini","status":200,"input_tokens":10,"output_tokens":20,"cache_read_input_tokens":null,"cache_creation_input_tokens":3,"reasoning_tokens":null,"masked_key":"abcdef","error_type":null,"usage_status":"exact","stream":false,"duration_ms":42}"#;

    fn line(
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
            "usage_status": status, "stream": false, "duration_ms": 1
        })
        .to_string()
    }

    fn report_of(
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

    #[test]
    fn times_parse_as_rfc3339_with_fractions_offsets_and_plain_dates() {
        let ms = |s: &str| parse_time(s).unwrap();
        assert_eq!(ms("1970-01-01"), 0);
        assert_eq!(ms("1970-01-01T00:00:00Z"), 0);
        assert_eq!(
            ms("2026-11-21T08:00:00.250Z"),
            ms("2026-11-21") + 8 * 3_600_000 + 250
        );
        assert_eq!(ms("2026-11-21T10:00:00+02:00"), ms("2026-11-21T08:00:00Z"));
        assert_eq!(ms("2026-11-21T05:30:00-02:30"), ms("2026-11-21T08:00:00Z"));
        assert_eq!(ms("2026-11-21t08:00:00.1z"), ms("2026-11-21T08:00:00.100Z"));
        assert_eq!(
            ms("2026-11-21 08:00:00.123456789Z"),
            ms("2026-11-21T08:00:00.123Z")
        );
        assert_eq!(ms("1969-12-31T23:59:59.999Z"), -1);
        // Cross-check against humantime (the writer's own formatter) across years and leap days.
        for s in [
            "2000-02-29T12:34:56.789Z",
            "2024-02-29T00:00:00Z",
            "2026-12-31T23:59:59.999Z",
            "2100-03-01T00:00:00Z",
            "1999-01-01T00:00:00.5Z",
        ] {
            let t = humantime::parse_rfc3339(s).unwrap();
            let want = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
            assert_eq!(ms(s), want, "{s}");
            assert_eq!(format_time(want), humantime::format_rfc3339_millis(t).to_string());
        }
    }

    #[test]
    fn bad_times_are_rejected_without_panicking() {
        for s in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-02-29",
            "2026-11-31",
            "2026-11-21T24:00:00Z",
            "2026-11-21T08:00:00",
            "2026-11-21T08:00:00.Z",
            "2026-11-21T08:00Z",
            "2026-11-21T08:00:00+0200",
            "2026-11-21T08:00:00+02:00x",
            "２０２６-11-21",
            "2026-11-21T08:00:00ZZ",
            "+026-11-21",
        ] {
            assert!(parse_time(s).is_err(), "{s:?}");
        }
        let valid = "2026-11-21T08:00:00.123+02:00";
        for cut in 0..valid.len() {
            let _ = parse_rfc3339_ms(&valid[..cut]);
        }
    }

    #[test]
    fn days_round_trip_across_four_centuries() {
        for day in (-800_000i64..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
            if (0..=9999).contains(&y) {
                assert_eq!(parse_date(format_day(day * MS_PER_DAY).as_bytes()), Some(day));
            }
        }
        assert_eq!(format_day(-1), "1969-12-31");
    }

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
    fn the_time_range_is_half_open() {
        let r = TimeRange {
            since: Some(10),
            until: Some(20),
        };
        assert!(!r.contains(9) && r.contains(10) && r.contains(19) && !r.contains(20));
        assert!(TimeRange::default().contains(i64::MIN));
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

    #[test]
    fn groups_sum_tokens_count_errors_and_statuses_and_nulls_count_as_requests() {
        let lines = [
            line(Some("a"), "m1", "2026-11-20T10:00:00Z", Some(5), "exact", false),
            line(Some("a"), "m1", "2026-11-21T10:00:00Z", None, "absent", true),
            line(
                Some("a"),
                "m2",
                "2026-11-21T11:00:00Z",
                Some(7),
                "truncated",
                true,
            ),
            line(Some("b"), "m1", "2026-11-21T12:00:00Z", None, "over_limit", false),
            line(None, "m1", "2026-11-21T13:00:00Z", None, "unparsed", false),
        ];
        let (rep, bad) = report_of(
            &lines,
            &[Dimension::Key, Dimension::Key],
            Owners::unknown(),
            TimeRange::default(),
        );
        assert!(bad.is_empty());
        assert_eq!(rep.dims(), &[Dimension::Key], "duplicates dropped");
        let rows = rep.rows();
        let keys: Vec<_> = rows.iter().map(|(k, _)| k[0].as_deref()).collect();
        assert_eq!(keys, [None, Some("a"), Some("b")]);
        assert_eq!(
            *rows[1].1,
            Totals {
                requests: 3,
                errors: 2,
                tokens: [12, 24, 0, 0, 2],
                statuses: [1, 1, 0, 1, 0],
            }
        );
        assert_eq!(rows[2].1.requests, 1);
        assert_eq!(rows[2].1.tokens, [0; 5]);
        assert_eq!(rep.total().requests, 5);
        assert_eq!(rep.total().statuses, [1, 1, 1, 1, 1]);

        let (rep, _) = report_of(
            &lines,
            &[Dimension::Day, Dimension::Model],
            Owners::unknown(),
            TimeRange::default(),
        );
        let keys: Vec<_> = rep
            .rows()
            .iter()
            .map(|(k, t)| (k[0].clone().unwrap(), k[1].clone().unwrap(), t.requests))
            .collect();
        assert_eq!(
            keys,
            [
                ("2026-11-20".into(), "m1".into(), 1),
                ("2026-11-21".into(), "m1".into(), 3),
                ("2026-11-21".into(), "m2".into(), 1)
            ]
        );
    }

    #[test]
    fn owners_come_from_the_allow_list_and_unknown_ids_say_so() {
        let list = crate::allowlist::parse_allowlist(b"id,api_key,owner,added\na,k1,alice,d\na,k2,alice,d\nb,sha256:0000000000000000000000000000000000000000000000000000000000000000,bob,d\nc,k3,zed,d\nc,k4,carol,d\n").unwrap();
        assert_eq!(list.entries().count(), 5);
        let owners = Owners::from_allowlist(&list);
        let lines = [
            line(Some("a"), "m", "2026-11-20T10:00:00Z", Some(1), "exact", false),
            line(Some("b"), "m", "2026-11-20T10:00:00Z", Some(1), "exact", false),
            line(Some("c"), "m", "2026-11-20T10:00:00Z", Some(1), "exact", false),
            line(Some("gone"), "m", "2026-11-20T10:00:00Z", Some(1), "exact", false),
            line(None, "m", "2026-11-20T10:00:00Z", Some(1), "exact", false),
        ];
        let (rep, _) = report_of(&lines, &[Dimension::Owner], owners, TimeRange::default());
        let names: Vec<_> = rep.rows().iter().map(|(k, _)| k[0].clone()).collect();
        let s = |x: &str| Some(x.to_owned());
        assert_eq!(
            names,
            [None, s(UNKNOWN_OWNER), s("alice"), s("bob"), s("carol/zed")]
        );
        let (rep, _) = report_of(
            &lines,
            &[Dimension::Owner],
            Owners::unknown(),
            TimeRange::default(),
        );
        assert_eq!(rep.rows().len(), 2, "no allow-list: null and unknown");
    }

    #[test]
    fn rotated_siblings_sort_chronologically_and_the_lock_file_is_not_data() {
        let names = [
            "stats.jsonl",
            "stats.jsonl.lock",
            "stats.jsonl.20261123T101530.123Z.10",
            "stats.jsonl.20261123T101530.123Z.2",
            "stats.jsonl.20261123T101530.123Z",
            "stats.jsonl.20261122T000000.000Z",
            "stats.jsonl.20261123T101530.123Z.1",
            "stats.jsonl.20261123T101530.123Z.x",
            "stats.jsonl.2026112T101530.123Z",
            "stats.jsonl.20261123T101530.123Z.gz",
            "other.jsonl.20261122T000000.000Z",
            "stats.jsonlx.20261122T000000.000Z",
            "allowlist.csv",
        ];
        assert_eq!(
            order_stats_files("stats.jsonl", names),
            [
                "stats.jsonl.20261122T000000.000Z",
                "stats.jsonl.20261123T101530.123Z",
                "stats.jsonl.20261123T101530.123Z.1",
                "stats.jsonl.20261123T101530.123Z.2",
                "stats.jsonl.20261123T101530.123Z.10",
            ]
        );
    }

    #[test]
    fn stats_files_lists_rotated_then_live_and_names_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("stats.jsonl");
        let err = stats_files(&live).unwrap_err();
        assert!(err.to_string().contains("stats.jsonl"), "{err}");
        let missing_dir = dir.path().join("nope").join("stats.jsonl");
        assert!(stats_files(&missing_dir)
            .unwrap_err()
            .to_string()
            .contains("nope/stats.jsonl"));
        let rotated = dir.path().join("stats.jsonl.20261122T000000.000Z");
        std::fs::write(&rotated, "").unwrap();
        std::fs::write(dir.path().join("stats.jsonl.lock"), "").unwrap();
        assert_eq!(
            stats_files(&live).unwrap(),
            std::slice::from_ref(&rotated),
            "no live file right after a rotation"
        );
        std::fs::write(&live, "").unwrap();
        assert_eq!(stats_files(&live).unwrap(), [rotated, live]);
    }

    #[test]
    fn table_csv_and_json_carry_the_same_numbers() {
        let lines = [
            line(Some("a"), "m1", "2026-11-20T10:00:00Z", Some(5), "exact", false),
            line(
                Some("a,\"q\""),
                "m1",
                "2026-11-21T10:00:00Z",
                None,
                "absent",
                true,
            ),
            line(None, "m1", "2026-11-21T13:00:00Z", Some(1), "exact", false),
        ];
        let (rep, _) = report_of(
            &lines,
            &[Dimension::Key, Dimension::Day],
            Owners::unknown(),
            TimeRange::default(),
        );
        assert_eq!(
            render_table(&rep),
            "\
lmgate_id  day         requests  errors  input  output  cache_read  cache_write  reasoning  exact  absent  over_limit  truncated  unparsed
(none)     2026-11-21         1       0      1       2           0            0          1      1       0           0          0         0
a          2026-11-20         1       0      5      10           0            0          1      1       0           0          0         0
a,\"q\"      2026-11-21         1       1      0       0           0            0          0      0       1           0          0         0
total                         3       1      6      12           0            0          2      2       1           0          0         0
"
        );
        assert_eq!(
            render_csv(&rep),
            "\
lmgate_id,day,requests,errors,input_tokens,output_tokens,cache_read_input_tokens,cache_creation_input_tokens,reasoning_tokens,exact,absent,over_limit,truncated,unparsed
,2026-11-21,1,0,1,2,0,0,1,1,0,0,0,0
a,2026-11-20,1,0,5,10,0,0,1,1,0,0,0,0
\"a,\"\"q\"\"\",2026-11-21,1,1,0,0,0,0,0,0,1,0,0,0
"
        );
        let range = TimeRange {
            since: Some(0),
            until: None,
        };
        let v: serde_json::Value = serde_json::from_str(&render_json(&rep, range, 4)).unwrap();
        assert_eq!(v["group_by"], serde_json::json!(["lmgate_id", "day"]));
        assert_eq!(v["since"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["until"], serde_json::Value::Null);
        assert_eq!(v["malformed_lines"], 4);
        assert_eq!(v["groups"][0]["lmgate_id"], serde_json::Value::Null);
        assert_eq!(v["groups"][2]["lmgate_id"], "a,\"q\"");
        assert_eq!(v["groups"][1]["output_tokens"], 10);
        assert_eq!(v["total"]["requests"], 3);
        assert_eq!(v["total"]["absent"], 1);
        // Nothing in range is still a document.
        let (empty, _) = report_of(&[], &[Dimension::Key], Owners::unknown(), TimeRange::default());
        let v: serde_json::Value =
            serde_json::from_str(&render_json(&empty, TimeRange::default(), 0)).unwrap();
        assert_eq!(v["groups"], serde_json::json!([]));
        assert_eq!(v["total"]["requests"], 0);
        let table = render_table(&empty);
        let last = table.lines().last().unwrap();
        assert!(last.starts_with("total ") && last.split_whitespace().skip(1).all(|n| n == "0"));
        assert_eq!(table.lines().count(), 2, "header and total");
    }

    #[test]
    fn chart_series_fill_empty_days_and_fold_the_smallest_into_other() {
        let mut lines = Vec::new();
        for i in 0..12u64 {
            let id = format!("k{i:02}");
            lines.push(line(
                Some(&id),
                "m",
                "2026-11-20T10:00:00Z",
                Some(100 - i),
                "exact",
                false,
            ));
        }
        lines.push(line(
            Some("k00"),
            "m",
            "2026-11-23T10:00:00Z",
            Some(1),
            "exact",
            false,
        ));
        lines.push(line(
            Some("k00"),
            "m",
            "2026-11-23T10:00:00Z",
            None,
            "absent",
            true,
        ));
        let mut d = DailyTokens::new(ChartBy::Key);
        scan(
            Cursor::new(lines.join("\n")),
            TimeRange::default(),
            |r| d.add(r),
            |_, _| panic!(),
        )
        .unwrap();
        let (first, series) = d.series();
        assert_eq!(format_day(first * MS_PER_DAY), "2026-11-20");
        assert_eq!(series.len(), MAX_CHART_SERIES);
        assert_eq!(series[0], ("k00".into(), vec![300, 0, 0, 3]));
        assert_eq!(series[MAX_CHART_SERIES - 1].0, OTHER_LABEL);
        assert_eq!(series[MAX_CHART_SERIES - 1].1, vec![(91 + 90 + 89) * 3, 0, 0, 0]);
    }

    /// Control characters are not allowed in XML 1.0, escaped or not.
    #[test]
    fn chart_labels_are_xml_safe_and_one_per_series() {
        let lines = [
            line(
                Some("a<&>\u{1}"),
                "m",
                "2026-11-20T10:00:00Z",
                Some(5),
                "exact",
                false,
            ),
            line(Some("b"), "m", "2026-11-21T10:00:00Z", Some(5), "exact", false),
            line(
                Some(&"x".repeat(80)),
                "m",
                "2026-11-21T10:00:00Z",
                Some(1),
                "exact",
                false,
            ),
        ];
        let mut d = DailyTokens::new(ChartBy::Key);
        scan(
            Cursor::new(lines.join("\n")),
            TimeRange::default(),
            |r| d.add(r),
            |_, _| panic!(),
        )
        .unwrap();
        let svg = render_chart(&d, "t\u{7}itle").unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(!svg
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r')));
        assert!(svg.contains("a&lt;&amp;&gt;?\n"), "escaped and cleaned");
        assert!(svg.contains(&format!("{}…\n", "x".repeat(LEGEND_LABEL_CHARS - 1))));
        assert!(svg.contains(">\nb\n</text>") || svg.contains("b\n</text>"));
        // An empty chart is still a document.
        let empty = render_chart(&DailyTokens::new(ChartBy::Model), "empty").unwrap();
        assert!(empty.contains("no tokens in range"));
    }
}
