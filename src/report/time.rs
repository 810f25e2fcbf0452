//! Times in `lmgate report`: RFC 3339 in, Unix milliseconds out, and back to text. All UTC,
//! so no time zone database. The RFC 3339 grammar and the calendar are chrono's; this module
//! only fixes which inputs are taken and how days and instants print.

use chrono::{DateTime, Datelike, NaiveDate, Utc};

/// Milliseconds in a UTC day (Unix time has no leap seconds).
pub(super) const MS_PER_DAY: i64 = 86_400_000;

/// An RFC 3339 date-time (`2026-11-21T08:00:00Z`, `...00.123456Z`, `...00+02:00`; `t`, `z`
/// and a space separator too) as Unix milliseconds. Sub-millisecond digits are dropped; a
/// leap second (`:60`) counts as the first second of the next minute.
pub(super) fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    // chrono also reads U+2212 MINUS SIGN before an offset (ISO 8601 allows it). RFC 3339
    // and the records are ASCII, and every other character chrono takes is ASCII too.
    if !s.is_ascii() {
        return None;
    }
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
}

/// A `--since`/`--until` value: RFC 3339 or a plain date (its midnight UTC), as Unix ms.
pub(super) fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let parsed = if s.len() == 10 {
        // The same parser checks the date: `YYYY-MM-DD`, four-digit year, a real day.
        parse_rfc3339_ms(&format!("{s}T00:00:00Z"))
    } else {
        parse_rfc3339_ms(s)
    };
    parsed.ok_or_else(|| "expected an RFC 3339 time (2026-11-21T08:00:00Z) or a date (2026-11-21)".into())
}

/// The instant of a Unix-ms time. Report times come from RFC 3339 with four-digit years, a
/// day at most from chrono's range of ±262,000 years.
fn utc(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms)
        .expect("report times have four-digit years, well inside chrono's range")
}

/// `2026-11-21`. Not chrono's `%Y`: that signs a year outside 0..=9999 (`+10000`), which an
/// offset can reach from a four-digit year; reports print it unsigned (`10000-01-01`).
fn day_text(d: NaiveDate) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
}

/// `2026-11-21` for a Unix-ms instant.
pub(super) fn format_day(ms: i64) -> String {
    day_text(utc(ms).date_naive())
}

/// `2026-11-21T08:00:00.000Z` for a Unix-ms instant (the record's own format).
pub(super) fn format_time(ms: i64) -> String {
    let t = utc(ms);
    format!("{}T{}Z", day_text(t.date_naive()), t.format("%H:%M:%S%.3f"))
}

/// `[since, until)` in Unix ms; either end open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct TimeRange {
    /// Inclusive start.
    pub(super) since: Option<i64>,
    /// Exclusive end.
    pub(super) until: Option<i64>,
}

impl TimeRange {
    /// Whether an instant is in the range.
    pub(super) fn contains(&self, ms: i64) -> bool {
        self.since.is_none_or(|s| ms >= s) && self.until.is_none_or(|u| ms < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn only_rfc3339_offsets_are_read_not_a_unicode_minus_or_a_day_long_one() {
        assert!(parse_time("2026-11-21T08:00:00\u{2212}02:00").is_err());
        assert!(parse_time("2026-11-21T08:00:00+24:00").is_err());
        assert!(parse_time("2026-11-21T08:00:00-23:60").is_err());
        assert_eq!(
            parse_time("2026-11-21T08:00:00+23:59"),
            parse_time("2026-11-20T08:01:00Z")
        );
    }

    #[test]
    fn a_leap_second_and_fraction_digits_past_nanoseconds_still_parse() {
        let ms = |s: &str| parse_time(s).unwrap();
        assert_eq!(ms("2016-12-31T23:59:60.5Z"), ms("2017-01-01T00:00:00.500Z"));
        assert_eq!(
            ms("2026-11-21T08:00:00.123456789012Z"),
            ms("2026-11-21T08:00:00.123Z")
        );
    }

    #[test]
    fn days_print_zero_padded_and_unsigned_beyond_four_digit_years() {
        assert_eq!(format_day(-1), "1969-12-31");
        assert_eq!(format_time(-1), "1969-12-31T23:59:59.999Z");
        let first = parse_time("0000-01-01T00:00:00+01:00").unwrap();
        assert_eq!(format_time(first), "-001-12-31T23:00:00.000Z");
        let last = parse_time("9999-12-31T23:00:00-02:00").unwrap();
        assert_eq!(format_time(last), "10000-01-01T01:00:00.000Z");
        assert_eq!(format_day(last), "10000-01-01");
        assert_eq!(
            format_day(parse_time("2026-11-21").unwrap() + MS_PER_DAY - 1),
            "2026-11-21"
        );
    }

    #[test]
    fn the_time_range_is_half_open_and_open_ends_take_everything() {
        let r = TimeRange {
            since: Some(10),
            until: Some(20),
        };
        assert!(!r.contains(9) && r.contains(10) && r.contains(19) && !r.contains(20));
        assert!(TimeRange::default().contains(i64::MIN));
    }
}
