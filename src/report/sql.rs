//! The SQL side of the ClickHouse source: the queries that group and sum the usage table in
//! the server, exactly as `aggregate` groups and sums record lines, and the reading of
//! their `TabSeparated` answers. Pure: text in, text or values out; sending a query is
//! `clickhouse.rs`'s.
//!
//! The queries keep to what ClickHouse 18.16 already had (`FINAL`, `ifNull`, `extract`,
//! `intDiv`, `toUInt32OrZero`), so they run there and on current releases alike.
//!
//! How each rule of `aggregate`/`read` is matched:
//! - A record is a row of `table FINAL`: `FINAL` drops the rows a re-sent batch doubled
//!   and that no merge has removed yet.
//! - A line whose `usage_status` is none LMGate writes, or whose `timestamp` is not
//!   RFC 3339, is malformed for the file source (it is skipped): `WHERE usage_status IN
//!   (...) AND match(timestamp, ...)` skips the same rows.
//! - The time range is half-open and compared in milliseconds: `time` has whole seconds,
//!   so the milliseconds are taken from the `timestamp` text (the first three digits after
//!   the `.`, as `read` drops the digits past them).
//! - A null token count or cost adds 0 (`ifNull`); `errors` counts a non-null
//!   `error_type`; `unpriced` counts `cost_status = 'unpriced'` (an absent status is `''`).
//! - A day is the UTC day of the record's second (`intDiv(unix seconds, 86400)`), printed
//!   in Rust as the file source prints it; the server's time zone plays no part.
//! - `owner` is grouped as `lmgate_id` by the server; the allow-list maps ids to owners and
//!   merges their groups in `Report::add_summed`.

use super::aggregate::Totals;
use super::args::{ChartBy, ChartMetric, Dimension};
use super::read::{STATUSES, TOKEN_COLUMNS};
use super::time::TimeRange;
use crate::cost::CostStatus;
use std::fmt::Write as _;

/// A ClickHouse string literal: `'...'` with `\` and `'` escaped and every control
/// character written as `\xHH`, so no input can end the literal or change the statement.
pub(super) fn quote_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A ClickHouse identifier (database or table name): `` `...` `` with `\` and `` ` ``
/// escaped and control characters as `\xHH`.
pub(super) fn quote_identifier(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('`');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '`' => out.push_str("\\`"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('`');
    out
}

/// `db`.`table` FINAL: every read collapses the rows a re-sent insert doubled.
fn from_final(database: &str, table: &str) -> String {
    format!("{}.{} FINAL", quote_identifier(database), quote_identifier(table))
}

/// The record's instant in Unix ms: `time`'s seconds plus the first three digits after
/// the `.` in `timestamp` (none: 0).
const AT_MS: &str = "(toInt64(toUInt32(time)) * 1000 + \
    toInt64(toUInt32OrZero(substring(concat(extract(timestamp, '[.]([0-9]+)'), '000'), 1, 3))))";

/// The record's UTC day, counted from 1970-01-01.
const DAY: &str = "intDiv(toUInt32(time), 86400)";

/// The shape of an RFC 3339 timestamp as `time::parse_rfc3339_ms` takes it (`T`, `t` or a
/// space; `Z`, `z` or `±HH:MM`). ClickHouse parses looser text (no offset: the server's
/// time zone), which the file source would skip as malformed.
const RFC3339_PATTERN: &str =
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$";

/// The conditions every query shares: a known usage status, an RFC 3339 timestamp, and
/// the time range.
fn where_clause(range: TimeRange) -> String {
    let statuses: Vec<String> = STATUSES.iter().map(|s| quote_string(s.as_str())).collect();
    let mut w = format!(
        "usage_status IN ({}) AND match(timestamp, {})",
        statuses.join(", "),
        quote_string(RFC3339_PATTERN)
    );
    // The exact test is on milliseconds; the whole-second one beside it is implied by it
    // and lets the server skip parts by the sorting key (`time`). `DateTime` holds
    // 1970..2106: outside, only the exact test is written.
    let in_datetime = |s: i64| (0..=i64::from(u32::MAX)).contains(&s);
    if let Some(since) = range.since {
        let s = since.div_euclid(1000);
        if in_datetime(s) {
            let _ = write!(w, " AND time >= toDateTime({s})");
        }
        let _ = write!(w, " AND {AT_MS} >= {since}");
    }
    if let Some(until) = range.until {
        let s = (until - 1).div_euclid(1000);
        if in_datetime(s) {
            let _ = write!(w, " AND time <= toDateTime({s})");
        }
        let _ = write!(w, " AND {AT_MS} < {until}");
    }
    w
}

/// The column a dimension is grouped by (`owner` by its `lmgate_id`).
fn dimension_column(d: Dimension) -> &'static str {
    match d {
        Dimension::Key | Dimension::Owner => "lmgate_id",
        Dimension::Provider => "provider",
        Dimension::Model => "model",
        Dimension::Day => DAY,
    }
}

/// The counters of a group in [`Totals::values`] order.
fn counter_columns() -> Vec<String> {
    let mut c = vec!["count()".to_owned(), "sum(isNotNull(error_type))".to_owned()];
    c.extend(
        TOKEN_COLUMNS
            .iter()
            .map(|(field, _)| format!("sum(ifNull({field}, 0))")),
    );
    c.push("sum(ifNull(cost_micros, 0))".to_owned());
    c.push(format!(
        "sum(cost_status = {})",
        quote_string(CostStatus::Unpriced.as_str())
    ));
    c.extend(
        STATUSES
            .iter()
            .map(|s| format!("sum(usage_status = {})", quote_string(s.as_str()))),
    );
    c
}

/// Number of counters a group row carries after its dimension values.
const COUNTERS: usize = 2 + TOKEN_COLUMNS.len() + 2 + STATUSES.len();

/// One row per group: its value per dimension (`dims` in order, the day as a day number),
/// then its counters. Order is left to the caller (`Report::rows` sorts).
pub(super) fn groups_query(database: &str, table: &str, dims: &[Dimension], range: TimeRange) -> String {
    let mut select: Vec<String> = dims
        .iter()
        .enumerate()
        .map(|(i, d)| format!("{} AS d{i}", dimension_column(*d)))
        .collect();
    select.extend(counter_columns());
    let group: Vec<String> = (0..dims.len()).map(|i| format!("d{i}")).collect();
    let mut q = format!(
        "SELECT {} FROM {} WHERE {}",
        select.join(", "),
        from_final(database, table),
        where_clause(range)
    );
    if !group.is_empty() {
        let _ = write!(q, " GROUP BY {}", group.join(", "));
    }
    q.push_str(" FORMAT TabSeparated");
    q
}

/// One row per (day, series) with a non-zero sum: the day number, the series value, the
/// sum of `metric`. A cell whose records all add 0 is left out, as `DailyTokens::add`
/// leaves it out.
pub(super) fn chart_query(
    database: &str,
    table: &str,
    by: ChartBy,
    metric: ChartMetric,
    range: TimeRange,
) -> String {
    let series = match by {
        ChartBy::Key => "lmgate_id",
        ChartBy::Model => "model",
    };
    let value = match metric {
        ChartMetric::Tokens => "ifNull(input_tokens, 0) + ifNull(output_tokens, 0)",
        ChartMetric::Cost => "ifNull(cost_micros, 0)",
    };
    format!(
        "SELECT {DAY} AS day, {series} AS series, sum({value}) AS v FROM {} WHERE {} \
         GROUP BY day, series HAVING v > 0 FORMAT TabSeparated",
        from_final(database, table),
        where_clause(range)
    )
}

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("row {row}: {reason}")]
pub(super) struct AnswerError {
    /// 1-based row of the answer.
    pub(super) row: usize,
    /// What was wrong.
    pub(super) reason: String,
}

/// The fields of one `TabSeparated` row (without its `\n`), unescaped; `\N` alone is null.
fn fields(line: &[u8]) -> Result<Vec<Option<String>>, String> {
    line.split(|b| *b == b'\t')
        .map(|f| {
            if f == b"\\N" {
                return Ok(None);
            }
            let mut out = Vec::with_capacity(f.len());
            let mut it = f.iter();
            while let Some(&b) = it.next() {
                if b != b'\\' {
                    out.push(b);
                    continue;
                }
                let Some(&e) = it.next() else {
                    return Err("a field ends in a lone backslash".to_owned());
                };
                out.push(match e {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'0' => 0,
                    other => other,
                });
            }
            String::from_utf8(out)
                .map(Some)
                .map_err(|_| "a value is not UTF-8".to_owned())
        })
        .collect()
}

/// The rows of a `TabSeparated` answer, each checked to have `width` fields.
fn rows(body: &[u8], width: usize) -> impl Iterator<Item = Result<Vec<Option<String>>, AnswerError>> + '_ {
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    body.split(|b| *b == b'\n')
        .filter(move |_| !body.is_empty())
        .enumerate()
        .map(move |(i, line)| {
            let err = |reason: String| AnswerError { row: i + 1, reason };
            let f = fields(line).map_err(err)?;
            if f.len() != width {
                return Err(err(format!("{} fields, expected {width}", f.len())));
            }
            Ok(f)
        })
}

fn number<T: std::str::FromStr>(v: &Option<String>, what: &str) -> Result<T, String> {
    v.as_deref()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{what} is not a number: {v:?}"))
}

/// A day number as the file source prints the day (`2026-11-21`).
fn day_text(v: &Option<String>) -> Result<String, String> {
    let day: i64 = number(v, "day")?;
    Ok(super::time::format_day(day * super::time::MS_PER_DAY))
}

/// A group's value per dimension, as the server groups them (`None`: null).
pub(super) type GroupValues = Vec<Option<String>>;

/// The rows of a [`groups_query`] answer: the group's values (the day as text) and its
/// counters.
pub(super) fn parse_groups(
    body: &[u8],
    dims: &[Dimension],
) -> Result<Vec<(GroupValues, Totals)>, AnswerError> {
    rows(body, dims.len() + COUNTERS)
        .enumerate()
        .map(|(i, row)| {
            let mut row = row?;
            let err = |reason: String| AnswerError { row: i + 1, reason };
            let counters = row.split_off(dims.len());
            let mut n = [0u64; COUNTERS];
            for (slot, v) in n.iter_mut().zip(&counters) {
                *slot = number(v, "a counter").map_err(err)?;
            }
            for (d, v) in dims.iter().zip(row.iter_mut()) {
                if *d == Dimension::Day {
                    *v = Some(day_text(v).map_err(err)?);
                }
            }
            let mut t = Totals {
                requests: n[0],
                errors: n[1],
                ..Totals::default()
            };
            t.tokens.copy_from_slice(&n[2..7]);
            t.cost_micros = n[7];
            t.unpriced = n[8];
            t.statuses.copy_from_slice(&n[9..]);
            Ok((row, t))
        })
        .collect()
}

/// The rows of a [`chart_query`] answer: (day number, series, sum).
pub(super) fn parse_chart(body: &[u8]) -> Result<Vec<(i64, Option<String>, u64)>, AnswerError> {
    rows(body, 3)
        .enumerate()
        .map(|(i, row)| {
            let mut row = row?;
            let err = |reason: String| AnswerError { row: i + 1, reason };
            let day = number(&row[0], "day").map_err(err)?;
            let sum = number(&row[2], "sum").map_err(err)?;
            Ok((day, row.swap_remove(1), sum))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_identifiers_are_quoted_so_nothing_escapes_them() {
        assert_eq!(quote_string("gpt-4o"), "'gpt-4o'");
        assert_eq!(quote_string(""), "''");
        assert_eq!(quote_string("a'); DROP TABLE x; --"), "'a\\'); DROP TABLE x; --'");
        assert_eq!(quote_string("back\\'slash"), "'back\\\\\\'slash'");
        assert_eq!(quote_string("nl\n\t\0\u{7f}é"), "'nl\\x0A\\x09\\x00\\x7Fé'");
        assert_eq!(quote_identifier("usage"), "`usage`");
        assert_eq!(quote_identifier("we`ird\\"), "`we\\`ird\\\\`");
        // Whatever the input, the literal ends only at its last character: every quote or
        // backslash inside is preceded by an escaping backslash.
        for s in ["'", "\\", "\\'", "''\\\\'", "`", "x\\`y"] {
            for (q, end) in [(quote_string(s), '\''), (quote_identifier(s), '`')] {
                let inner = &q[1..q.len() - 1];
                let mut escaped = false;
                for c in inner.chars() {
                    assert!(escaped || c != end, "{s:?} -> {q}");
                    escaped = !escaped && c == '\\';
                }
                assert!(!escaped, "{s:?} -> {q}: dangling backslash");
            }
        }
    }

    #[test]
    fn the_time_range_is_half_open_in_milliseconds_with_a_whole_second_prefilter() {
        let w = where_clause(TimeRange::default());
        assert_eq!(
            w,
            format!(
                "usage_status IN ('exact', 'absent', 'over_limit', 'truncated', 'unparsed') \
                 AND match(timestamp, '{RFC3339_PATTERN}')"
            )
        );
        let w = where_clause(TimeRange {
            since: Some(1_795_248_000_250),
            until: Some(1_795_334_400_000),
        });
        assert!(w.contains(" AND time >= toDateTime(1795248000) AND "), "{w}");
        assert!(w.contains(&format!(" AND {AT_MS} >= 1795248000250")), "{w}");
        // Until midnight (exclusive): the last second in range is 23:59:59.
        assert!(w.contains(" AND time <= toDateTime(1795334399) AND "), "{w}");
        assert!(w.ends_with(&format!(" AND {AT_MS} < 1795334400000")), "{w}");
        // Outside DateTime's range only the exact test is written.
        let w = where_clause(TimeRange {
            since: Some(-5),
            until: Some(0),
        });
        assert!(!w.contains("toDateTime"), "{w}");
        assert!(w.contains(">= -5") && w.contains("< 0"), "{w}");
    }

    #[test]
    fn queries_read_final_and_group_by_each_dimension_once_per_column() {
        let q = groups_query(
            "lmgate",
            "usage",
            &[Dimension::Owner, Dimension::Day],
            TimeRange::default(),
        );
        assert!(
            q.starts_with(&format!(
                "SELECT lmgate_id AS d0, {DAY} AS d1, count(), sum(isNotNull(error_type)), sum(ifNull(input_tokens, 0)), "
            )),
            "{q}"
        );
        assert!(
            q.contains(" FROM `lmgate`.`usage` FINAL WHERE usage_status IN ("),
            "{q}"
        );
        assert!(
            q.contains("sum(cost_status = 'unpriced'), sum(usage_status = 'exact'), "),
            "{q}"
        );
        assert!(q.ends_with(" GROUP BY d0, d1 FORMAT TabSeparated"), "{q}");
        assert_eq!(counter_columns().len(), COUNTERS);
        let q = chart_query(
            "db",
            "t`x",
            ChartBy::Model,
            ChartMetric::Cost,
            TimeRange::default(),
        );
        assert!(
            q.contains("model AS series, sum(ifNull(cost_micros, 0)) AS v FROM `db`.`t\\`x` FINAL"),
            "{q}"
        );
        assert!(
            q.ends_with("GROUP BY day, series HAVING v > 0 FORMAT TabSeparated"),
            "{q}"
        );
    }

    #[test]
    fn tab_separated_answers_unescape_and_keep_null_apart_from_text() {
        let f = fields(b"\\N\t\t\\\\N\ta\\tb\\nc\\\\d\\'e\\0").unwrap();
        let s = |x: &str| Some(x.to_owned());
        assert_eq!(f, [None, s(""), s("\\N"), s("a\tb\nc\\d'e\0")]);
        assert!(fields(b"x\\").is_err());
        assert!(fields(b"\xff").is_err());

        let dims = [Dimension::Key, Dimension::Day];
        let body = b"team-a\t20778\t3\t1\t10\t20\t0\t0\t2\t1500000\t1\t1\t1\t0\t1\t0\n\\N\t20779\t1\t1\t0\t0\t0\t0\t0\t0\t0\t0\t1\t0\t0\t0\n";
        let g = parse_groups(body, &dims).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].0, [s("team-a"), s("2026-11-21")]);
        assert_eq!(
            g[0].1,
            Totals {
                requests: 3,
                errors: 1,
                tokens: [10, 20, 0, 0, 2],
                cost_micros: 1_500_000,
                unpriced: 1,
                statuses: [1, 1, 0, 1, 0],
            }
        );
        assert_eq!(g[1].0, [None, s("2026-11-22")]);
        assert_eq!(parse_groups(b"", &dims).unwrap(), []);
        // No dimension: one row of counters only.
        assert_eq!(
            parse_groups(b"0\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\n", &[])
                .unwrap()
                .len(),
            1
        );
        let short = parse_groups(b"team-a\t20778\t3\n", &dims).unwrap_err();
        assert_eq!(short.row, 1);
        let bad = parse_groups(b"m\t20778\t1\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\tx\n", &dims);
        assert_eq!(bad.unwrap_err().row, 1);

        let c = parse_chart(b"20778\tgpt-4o\t30\n20779\t\\N\t5\n").unwrap();
        assert_eq!(c, [(20778, s("gpt-4o"), 30), (20779, None, 5)]);
        assert!(parse_chart(b"x\ty\tz\n").is_err());
    }

    #[test]
    fn garbage_answers_are_errors_never_panics() {
        let dims = [Dimension::Model];
        let body = b"m\t1\t0\t0\t0\t0\t0\t0\t0\t0\t1\t0\t0\t0\t0\n";
        assert!(parse_groups(body, &dims).is_ok());
        for cut in 0..body.len() {
            let _ = parse_groups(&body[..cut], &dims);
            let _ = parse_chart(&body[..cut]);
        }
        for junk in [&b"\t\t\t"[..], b"\n\n", b"\\", b"Code: 60, e.displayText()"] {
            assert!(parse_groups(junk, &dims).is_err(), "{junk:?}");
        }
    }
}
