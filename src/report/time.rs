//! Times in `lmgate report`: RFC 3339 in, Unix milliseconds out, and back to text. All UTC,
//! so no time zone database.

/// Milliseconds in a UTC day (Unix time has no leap seconds).
pub(super) const MS_PER_DAY: i64 = 86_400_000;

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
pub(super) fn parse_rfc3339_ms(s: &str) -> Option<i64> {
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
pub(super) fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let parsed = if s.len() == 10 {
        parse_date(s.as_bytes()).map(|d| d * MS_PER_DAY)
    } else {
        parse_rfc3339_ms(s)
    };
    parsed.ok_or_else(|| "expected an RFC 3339 time (2026-11-21T08:00:00Z) or a date (2026-11-21)".into())
}

/// `2026-11-21` for a Unix-ms instant.
pub(super) fn format_day(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    format!("{y:04}-{m:02}-{d:02}")
}

/// `2026-11-21T08:00:00.000Z` for a Unix-ms instant (the record's own format).
pub(super) fn format_time(ms: i64) -> String {
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
    fn the_time_range_is_half_open_and_open_ends_take_everything() {
        let r = TimeRange {
            since: Some(10),
            until: Some(20),
        };
        assert!(!r.contains(9) && r.contains(10) && r.contains(19) && !r.contains(20));
        assert!(TimeRange::default().contains(i64::MIN));
    }
}
