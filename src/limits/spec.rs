//! The `limits` allow-list column: what a key (and its owner) may spend. Pure.
//!
//! Space-separated `name=value` items, any order, each name at most once:
//!
//! | item | meaning |
//! |---|---|
//! | `rpm=N` | requests per minute |
//! | `tpm=N`, `input_tpm=N`, `output_tpm=N` | tokens per minute: input + output, input, output |
//! | `tokens_per_day=N`, `tokens_per_month=N` | input + output tokens per UTC day / calendar month |
//! | `usd_per_day=D`, `usd_per_month=D` | dollars per UTC day / calendar month (`5`, `0.25`, at most 6 decimals) |
//! | `owner.<any of the above>` | the same limit on all keys of the row's owner together |
//! | `unpriced=allow` | serve models without a price under a dollar budget (default: refuse) |
//!
//! Minutes, days and months are UTC calendar periods derived from the clock, so a period
//! ends by itself: nothing is reset.

use std::fmt;

/// One limit kind; the index of its counter in a meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Requests per minute.
    Rpm = 0,
    /// Input tokens per minute.
    InputTpm = 1,
    /// Output tokens per minute.
    OutputTpm = 2,
    /// Input + output tokens per minute.
    Tpm = 3,
    /// Tokens per UTC day.
    TokensPerDay = 4,
    /// Micro-dollars per UTC day.
    UsdPerDay = 5,
    /// Tokens per UTC calendar month.
    TokensPerMonth = 6,
    /// Micro-dollars per UTC calendar month.
    UsdPerMonth = 7,
}

/// Every kind, in counter order.
pub const KINDS: [Kind; 8] = [
    Kind::Rpm,
    Kind::InputTpm,
    Kind::OutputTpm,
    Kind::Tpm,
    Kind::TokensPerDay,
    Kind::UsdPerDay,
    Kind::TokensPerMonth,
    Kind::UsdPerMonth,
];

/// How long a kind's period is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// A UTC minute.
    Minute,
    /// A UTC day.
    Day,
    /// A UTC calendar month.
    Month,
}

impl Kind {
    /// The column spelling.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Rpm => "rpm",
            Kind::InputTpm => "input_tpm",
            Kind::OutputTpm => "output_tpm",
            Kind::Tpm => "tpm",
            Kind::TokensPerDay => "tokens_per_day",
            Kind::UsdPerDay => "usd_per_day",
            Kind::TokensPerMonth => "tokens_per_month",
            Kind::UsdPerMonth => "usd_per_month",
        }
    }

    /// Its period.
    pub fn period(self) -> Period {
        match self {
            Kind::Rpm | Kind::InputTpm | Kind::OutputTpm | Kind::Tpm => Period::Minute,
            Kind::TokensPerDay | Kind::UsdPerDay => Period::Day,
            Kind::TokensPerMonth | Kind::UsdPerMonth => Period::Month,
        }
    }

    /// A rate limit (retried after `Retry-After`) rather than a budget (not retried).
    pub fn is_rate(self) -> bool {
        self.period() == Period::Minute
    }

    /// Counted in micro-dollars.
    pub fn is_money(self) -> bool {
        matches!(self, Kind::UsdPerDay | Kind::UsdPerMonth)
    }

    /// What the limit counts, in words.
    pub fn what(self) -> &'static str {
        match self {
            Kind::Rpm => "requests per minute",
            Kind::InputTpm => "input tokens per minute",
            Kind::OutputTpm => "output tokens per minute",
            Kind::Tpm => "tokens per minute",
            Kind::TokensPerDay => "daily token budget",
            Kind::UsdPerDay => "daily budget",
            Kind::TokensPerMonth => "monthly token budget",
            Kind::UsdPerMonth => "monthly budget",
        }
    }

    fn parse(name: &str) -> Option<Kind> {
        KINDS.into_iter().find(|k| k.name() == name)
    }
}

/// One set of limits (a key's, or an owner's); `None`: not limited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitSet(pub [Option<u64>; 8]);

impl LimitSet {
    /// The limit of `kind`.
    #[inline]
    pub fn get(&self, kind: Kind) -> Option<u64> {
        self.0[kind as usize]
    }

    /// Nothing limited.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    /// A dollar limit is set.
    pub fn has_money(&self) -> bool {
        self.get(Kind::UsdPerDay).is_some() || self.get(Kind::UsdPerMonth).is_some()
    }

    /// A token limit (per minute, day or month) is set.
    pub fn has_tokens(&self) -> bool {
        KINDS
            .iter()
            .any(|&k| !k.is_money() && k != Kind::Rpm && self.get(k).is_some())
    }
}

/// The parsed `limits` column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// The key's own limits.
    pub key: LimitSet,
    /// Limits shared by every key of the owner (the same on each of the owner's rows).
    pub owner: LimitSet,
    /// Serve a model without a price under a dollar budget (uncharged).
    pub allow_unpriced: bool,
}

impl Limits {
    /// Anything under a dollar limit.
    pub fn has_money(&self) -> bool {
        self.key.has_money() || self.owner.has_money()
    }

    /// Anything under a token or dollar limit: the request body is read for the estimate.
    pub fn needs_estimate(&self) -> bool {
        self.has_money() || self.key.has_tokens() || self.owner.has_tokens()
    }
}

/// Micro-dollars as dollars: `5000000` -> `$5.00`, `1234567` -> `$1.234567`.
pub struct Dollars(pub u64);

impl fmt::Display for Dollars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 1_000_000, self.0 % 1_000_000);
        if frac % 10_000 == 0 {
            write!(f, "${whole}.{:02}", frac / 10_000)
        } else {
            let digits = format!("{frac:06}");
            write!(f, "${whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

/// Parse dollars (`5`, `0.25`, `12.000001`) into micro-dollars, exactly.
pub fn parse_dollars(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "`{}` is not an amount of dollars (such as 5 or 0.25)",
            s.escape_debug()
        )
    };
    let s2 = s.strip_prefix('$').unwrap_or(s);
    let (whole, frac) = match s2.split_once('.') {
        Some((_, "")) => return Err(bad()),
        Some(parts) => parts,
        None => (s2, ""),
    };
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    if frac.len() > 6 {
        return Err(format!(
            "`{}` has more than 6 decimals (a micro-dollar)",
            s.escape_debug()
        ));
    }
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    let frac: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<u64>().map_err(|_| bad())? * 10u64.pow(6 - frac.len() as u32)
    };
    whole
        .checked_mul(1_000_000)
        .and_then(|w| w.checked_add(frac))
        .filter(|&m| m <= super::meter::MAX_VALUE)
        .ok_or_else(|| format!("`{}` is too large", s.escape_debug()))
}

/// Parse the `limits` column; empty is no limits.
pub fn parse_limits(field: &str) -> Result<Limits, String> {
    let mut out = Limits::default();
    let mut seen: Vec<&str> = Vec::new();
    for item in field.split_ascii_whitespace() {
        let Some((name, value)) = item.split_once('=') else {
            return Err(format!("`{}` is not `name=value`", item.escape_debug()));
        };
        if seen.contains(&name) {
            return Err(format!("`{}` is given twice", name.escape_debug()));
        }
        seen.push(name);
        if name == "unpriced" {
            out.allow_unpriced = match value {
                "allow" => true,
                "refuse" => false,
                _ => {
                    return Err(format!(
                        "`unpriced={}`: use `allow` or `refuse`",
                        value.escape_debug()
                    ))
                }
            };
            continue;
        }
        let (set, bare) = match name.strip_prefix("owner.") {
            Some(rest) => (&mut out.owner, rest),
            None => (&mut out.key, name),
        };
        let Some(kind) = Kind::parse(bare) else {
            return Err(format!(
                "unknown limit `{}` (rpm, tpm, input_tpm, output_tpm, tokens_per_day, tokens_per_month, \
                 usd_per_day, usd_per_month, each also as owner.<name>; unpriced=allow)",
                name.escape_debug()
            ));
        };
        let n = if kind.is_money() {
            parse_dollars(value).map_err(|r| format!("`{name}`: {r}"))?
        } else {
            Some(value)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|&n| n <= super::meter::MAX_VALUE)
                .ok_or_else(|| format!("`{name}`: `{}` is not a whole number", value.escape_debug()))?
        };
        if n == 0 {
            // A limit of 0 would refuse every request as "over the limit by itself".
            return Err(format!(
                "`{name}`: 0 would refuse everything; remove the key's row (or its providers) to block it"
            ));
        }
        set.0[kind as usize] = Some(n);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_parse_in_any_order_with_owner_limits() {
        let l = parse_limits(" usd_per_day=5 rpm=60  owner.usd_per_month=100.5 tpm=1000 unpriced=allow ")
            .unwrap();
        assert_eq!(l.key.get(Kind::Rpm), Some(60));
        assert_eq!(l.key.get(Kind::Tpm), Some(1000));
        assert_eq!(l.key.get(Kind::UsdPerDay), Some(5_000_000));
        assert_eq!(l.owner.get(Kind::UsdPerMonth), Some(100_500_000));
        assert_eq!(l.owner.get(Kind::Rpm), None);
        assert!(l.allow_unpriced && l.has_money() && l.needs_estimate());
        assert_eq!(parse_limits("").unwrap(), Limits::default());
        let rpm_only = parse_limits("rpm=1").unwrap();
        assert!(!rpm_only.needs_estimate());
        assert!(parse_limits("owner.tokens_per_day=5").unwrap().needs_estimate());
    }

    #[test]
    fn bad_items_are_named() {
        for (field, want) in [
            ("rpm", "not `name=value`"),
            ("rpm=1 rpm=2", "`rpm` is given twice"),
            ("rpn=1", "unknown limit `rpn`"),
            ("rpm=-1", "`rpm`: `-1` is not a whole number"),
            ("rpm=1.5", "`rpm`: `1.5` is not a whole number"),
            ("usd_per_day=1.0000001", "more than 6 decimals"),
            ("usd_per_day=abc", "not an amount of dollars"),
            ("usd_per_day=.5", "not an amount of dollars"),
            ("unpriced=yes", "use `allow` or `refuse`"),
            ("owner.foo=1", "unknown limit `owner.foo`"),
            ("tpm=99999999999999999999", "not a whole number"),
            ("rpm=+5", "`rpm`: `+5` is not a whole number"),
            ("usd_per_day=5.", "not an amount of dollars"),
            ("rpm=0", "0 would refuse everything"),
            ("usd_per_day=0.000000", "0 would refuse everything"),
        ] {
            let err = parse_limits(field).unwrap_err();
            assert!(err.contains(want), "{field}: {err}");
        }
    }

    #[test]
    fn dollars_are_exact_micro_dollars() {
        assert_eq!(parse_dollars("5"), Ok(5_000_000));
        assert_eq!(parse_dollars("$0.25"), Ok(250_000));
        assert_eq!(parse_dollars("12.000001"), Ok(12_000_001));
        assert_eq!(parse_dollars("0.1"), Ok(100_000));
        assert_eq!(Dollars(5_000_000).to_string(), "$5.00");
        assert_eq!(Dollars(1_234_567).to_string(), "$1.234567");
        assert_eq!(Dollars(250_000).to_string(), "$0.25");
        assert_eq!(Dollars(10).to_string(), "$0.00001");
    }
}
