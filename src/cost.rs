//! What a request cost, in integer micro-dollars. Pure: token counts, the wire format
//! (which says what each provider's counts include) and a [`Price`] in, a cost out.
//!
//! The providers count differently, so counts are first split into disjoint kinds
//! ([`Billable`]):
//! - OpenAI: `input_tokens` includes the cached ones, `output_tokens` the reasoning ones;
//! - Anthropic and Bedrock: input, cache reads and cache writes are separate counts;
//! - Gemini API and Vertex AI: `promptTokenCount` includes the cached ones, and the
//!   thinking tokens (`thoughtsTokenCount`) are not in `candidatesTokenCount`.
//!
//! Each kind is priced at its own rate (a missing cache rate is the input rate, a missing
//! reasoning rate the output rate); the sum of `tokens × micro-dollars per million` is
//! divided by a million once, rounded half up. No floating point.

use crate::prices::Price;
use crate::providers::ApiFormat;
use crate::usage::{Usage, UsageStatus};
use serde::Serialize;

/// Token counts split so that no token is in two fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Billable {
    /// Input tokens not read from or written to a cache.
    pub input: u64,
    /// Input tokens read from a cache.
    pub cache_read: u64,
    /// Input tokens written to a cache.
    pub cache_write: u64,
    /// Output tokens that are not reasoning tokens.
    pub output: u64,
    /// Reasoning (thinking) tokens.
    pub reasoning: u64,
}

impl Billable {
    /// Split a response's counts; `None` when it has no token counts at all.
    pub fn from_usage(format: ApiFormat, u: &Usage) -> Option<Billable> {
        if !u.has_tokens() {
            return None;
        }
        let input = u.input_tokens.unwrap_or(0);
        let output = u.output_tokens.unwrap_or(0);
        let cache_read = u.cache_read_input_tokens.unwrap_or(0);
        let cache_write = u.cache_creation_input_tokens.unwrap_or(0);
        let reasoning = u.reasoning_tokens.unwrap_or(0);
        Some(match format {
            ApiFormat::OpenAi => {
                let cache_read = cache_read.min(input);
                let reasoning = reasoning.min(output);
                Billable {
                    input: input - cache_read,
                    cache_read,
                    cache_write: 0,
                    output: output - reasoning,
                    reasoning,
                }
            }
            ApiFormat::Gemini => {
                let cache_read = cache_read.min(input);
                Billable {
                    input: input - cache_read,
                    cache_read,
                    cache_write: 0,
                    output,
                    reasoning,
                }
            }
            ApiFormat::Anthropic | ApiFormat::Bedrock => Billable {
                input,
                cache_read,
                cache_write,
                output,
                reasoning: 0,
            },
        })
    }

    /// Every input token (cached or not).
    pub fn input_total(&self) -> u64 {
        self.input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_write)
    }

    /// Every output token (reasoning included).
    pub fn output_total(&self) -> u64 {
        self.output.saturating_add(self.reasoning)
    }

    /// Micro-dollars at `price`, rounded half up to a whole micro-dollar.
    pub fn cost_micros(&self, price: &Price) -> u64 {
        let terms = [
            (self.input, price.input),
            (self.cache_read, price.cache_read.unwrap_or(price.input)),
            (self.cache_write, price.cache_write.unwrap_or(price.input)),
            (self.output, price.output),
            (self.reasoning, price.reasoning.unwrap_or(price.output)),
        ];
        let sum: u128 = terms
            .iter()
            .map(|&(tokens, rate)| tokens as u128 * rate as u128)
            .sum();
        u64::try_from((sum + 500_000) / 1_000_000).unwrap_or(u64::MAX)
    }
}

/// How far a record's `cost_micros` can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CostStatus {
    /// From the response's exact counts at the model's price.
    Exact,
    /// Counts that are not exact (a stream cut short, a stream without usage, a body too
    /// large or unreadable) for an answered request: the cost of what was read, or, for a
    /// limited key, its reservation where that is more (what it was charged).
    Partial,
    /// The response carried counts but the model has no price: no cost.
    Unpriced,
    /// No token counts: no cost.
    NoUsage,
}

impl CostStatus {
    /// The record spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CostStatus::Exact => "exact",
            CostStatus::Partial => "partial",
            CostStatus::Unpriced => "unpriced",
            CostStatus::NoUsage => "no_usage",
        }
    }

    /// Parse the record spelling.
    pub fn parse(s: &str) -> Option<CostStatus> {
        Some(match s {
            "exact" => CostStatus::Exact,
            "partial" => CostStatus::Partial,
            "unpriced" => CostStatus::Unpriced,
            "no_usage" => CostStatus::NoUsage,
            _ => return None,
        })
    }
}

/// Whether the provider may bill work whose counts a request did not read: it was
/// `forwarded` and the provider answered no error, yet the counts are not exact (a cut or
/// unreadable answer, a stream without usage, or no answer at all because the client left
/// or the upstream timed out). A complete non-stream answer without usage (a model list)
/// and a body-less answer (`HEAD`, 204) are not.
pub fn counts_may_be_missing(
    forwarded: bool,
    upstream_status: Option<u16>,
    stream: bool,
    body_bytes: u64,
    status: UsageStatus,
) -> bool {
    if !forwarded {
        return false;
    }
    let Some(code) = upstream_status else {
        return true;
    };
    if !(200..300).contains(&code) {
        return false;
    }
    match status {
        UsageStatus::Exact => false,
        UsageStatus::Absent => stream,
        UsageStatus::Truncated => stream || body_bytes > 0,
        UsageStatus::OverLimit | UsageStatus::Unparsed => true,
    }
}

/// What a finished request cost and what it is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    /// The record's `cost_micros`.
    pub cost_micros: Option<u64>,
    /// The record's `cost_status`.
    pub status: CostStatus,
    /// Input tokens charged (every input token, cached ones included).
    pub input: u64,
    /// Output tokens charged (reasoning included).
    pub output: u64,
}

/// The reservation a limited request holds: `(input tokens, output tokens, micro-dollars)`.
pub type Reserved = (u64, u64, u64);

/// Settle one request: its counts priced at `price`. A limited request (`reserved`) whose
/// counts may be missing for work the provider bills (`unread`: forwarded, and no provider
/// error, but no exact counts: a cut or unreadable answer, a stream without usage, a client
/// or timeout that ended it before the answer) is charged at least its reservation, an
/// upper bound of what it can have used; otherwise what it read (usually nothing).
pub fn charge(
    format: ApiFormat,
    usage: &Usage,
    usage_status: UsageStatus,
    price: Option<&Price>,
    reserved: Option<Reserved>,
    unread: bool,
) -> Charge {
    let exact = usage_status == UsageStatus::Exact;
    let mut c = match Billable::from_usage(format, usage) {
        Some(b) => Charge {
            cost_micros: price.map(|p| b.cost_micros(p)),
            status: match (price, exact) {
                (None, _) => CostStatus::Unpriced,
                (Some(_), true) => CostStatus::Exact,
                (Some(_), false) => CostStatus::Partial,
            },
            input: b.input_total(),
            output: b.output_total(),
        },
        None => Charge {
            cost_micros: None,
            status: CostStatus::NoUsage,
            input: 0,
            output: 0,
        },
    };
    if let (Some((input, output, micros)), true, false) = (reserved, unread, exact) {
        c.input = c.input.max(input);
        c.output = c.output.max(output);
        if price.is_some() {
            c.cost_micros = Some(c.cost_micros.unwrap_or(0).max(micros));
            c.status = CostStatus::Partial;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(i: u64, o: u64, cr: Option<u64>, cw: Option<u64>, r: Option<u64>) -> Usage {
        Usage {
            model: None,
            input_tokens: Some(i),
            output_tokens: Some(o),
            cache_read_input_tokens: cr,
            cache_creation_input_tokens: cw,
            reasoning_tokens: r,
        }
    }

    const PRICE: Price = Price {
        input: 2_500_000,
        output: 10_000_000,
        cache_read: Some(1_250_000),
        cache_write: Some(3_750_000),
        reasoning: None,
    };

    #[test]
    fn each_provider_counts_are_split_without_double_counting() {
        let u = usage(1000, 500, Some(400), Some(100), Some(200));
        let b = |f| Billable::from_usage(f, &u).unwrap();
        assert_eq!(
            b(ApiFormat::OpenAi),
            Billable {
                input: 600,
                cache_read: 400,
                cache_write: 0,
                output: 300,
                reasoning: 200
            }
        );
        assert_eq!(
            b(ApiFormat::Gemini),
            Billable {
                input: 600,
                cache_read: 400,
                cache_write: 0,
                output: 500,
                reasoning: 200
            }
        );
        let disjoint = Billable {
            input: 1000,
            cache_read: 400,
            cache_write: 100,
            output: 500,
            reasoning: 0,
        };
        assert_eq!(b(ApiFormat::Anthropic), disjoint);
        assert_eq!(b(ApiFormat::Bedrock), disjoint);
        assert_eq!(b(ApiFormat::Gemini).output_total(), 700);
        assert_eq!(b(ApiFormat::OpenAi).input_total(), 1000);
        assert_eq!(Billable::from_usage(ApiFormat::OpenAi, &Usage::default()), None);
        // Counts that disagree (cached > prompt) never underflow.
        let odd = usage(10, 5, Some(50), None, Some(9));
        assert_eq!(
            Billable::from_usage(ApiFormat::OpenAi, &odd).unwrap(),
            Billable {
                input: 0,
                cache_read: 10,
                cache_write: 0,
                output: 0,
                reasoning: 5
            }
        );
    }

    #[test]
    fn cost_is_integer_micro_dollars_rounded_half_up() {
        // 600 × 2.5 + 400 × 1.25 + 300 × 10 + 200 × 10 (reasoning at the output rate)
        // = 1500 + 500 + 3000 + 2000 = 7000 micro-dollars.
        let b =
            Billable::from_usage(ApiFormat::OpenAi, &usage(1000, 500, Some(400), None, Some(200))).unwrap();
        assert_eq!(b.cost_micros(&PRICE), 7000);
        // 1 token at $0.15/M is 0.15 micro-dollars: 0; 3 tokens 0.45: 0; 4 tokens 0.6: 1.
        let cheap = Price {
            input: 150_000,
            output: 0,
            cache_read: None,
            cache_write: None,
            reasoning: None,
        };
        let n = |t| {
            Billable {
                input: t,
                ..Billable::default()
            }
            .cost_micros(&cheap)
        };
        assert_eq!((n(1), n(3), n(4), n(10)), (0, 0, 1, 2));
        // Exactly half rounds up: 5 tokens at 0.1 micro-dollars each = 0.5.
        let tenth = Price {
            input: 100_000,
            ..cheap
        };
        assert_eq!(
            Billable {
                input: 5,
                ..Billable::default()
            }
            .cost_micros(&tenth),
            1
        );
        // A missing cache rate is the input rate; a separate reasoning rate is used.
        let plain = Price {
            cache_read: None,
            cache_write: None,
            reasoning: Some(20_000_000),
            ..PRICE
        };
        let b = Billable {
            input: 0,
            cache_read: 1_000_000,
            cache_write: 1_000_000,
            output: 0,
            reasoning: 1,
        };
        assert_eq!(b.cost_micros(&plain), 2 * 2_500_000 + 20);
        // Huge counts saturate instead of wrapping.
        let huge = Billable {
            input: u64::MAX,
            output: u64::MAX,
            ..Billable::default()
        };
        assert_eq!(
            huge.cost_micros(&Price {
                input: 1_000_000_000_000,
                ..PRICE
            }),
            u64::MAX
        );
    }

    #[test]
    fn limited_answers_without_exact_counts_are_charged_their_reservation() {
        let u = usage(100, 50, None, None, None);
        let exact = charge(
            ApiFormat::Anthropic,
            &u,
            UsageStatus::Exact,
            Some(&PRICE),
            Some((400, 1000, 99_999)),
            true,
        );
        assert_eq!(
            exact,
            Charge {
                cost_micros: Some(750),
                status: CostStatus::Exact,
                input: 100,
                output: 50
            }
        );
        // A cut stream: the counts read so far, raised to the reservation.
        let cut = charge(
            ApiFormat::Anthropic,
            &u,
            UsageStatus::Truncated,
            Some(&PRICE),
            Some((400, 1000, 20_000)),
            true,
        );
        assert_eq!(
            cut,
            Charge {
                cost_micros: Some(20_000),
                status: CostStatus::Partial,
                input: 400,
                output: 1000
            }
        );
        // The same without limits: what was read.
        let free = charge(
            ApiFormat::Anthropic,
            &u,
            UsageStatus::Truncated,
            Some(&PRICE),
            None,
            true,
        );
        assert_eq!(
            free,
            Charge {
                cost_micros: Some(750),
                status: CostStatus::Partial,
                input: 100,
                output: 50
            }
        );
        // No usage at all (an OpenAI stream without include_usage).
        let none = Usage::default();
        let limited = charge(
            ApiFormat::OpenAi,
            &none,
            UsageStatus::Absent,
            Some(&PRICE),
            Some((10, 20, 300)),
            true,
        );
        assert_eq!(
            limited,
            Charge {
                cost_micros: Some(300),
                status: CostStatus::Partial,
                input: 10,
                output: 20
            }
        );
        let free = charge(
            ApiFormat::OpenAi,
            &none,
            UsageStatus::Absent,
            Some(&PRICE),
            None,
            true,
        );
        assert_eq!(
            free,
            Charge {
                cost_micros: None,
                status: CostStatus::NoUsage,
                input: 0,
                output: 0
            }
        );
        // Not answered (an upstream error, a client gone before the answer): nothing.
        let failed = charge(
            ApiFormat::OpenAi,
            &none,
            UsageStatus::Absent,
            Some(&PRICE),
            Some((10, 20, 300)),
            false,
        );
        assert_eq!(
            failed,
            Charge {
                cost_micros: None,
                status: CostStatus::NoUsage,
                input: 0,
                output: 0
            }
        );
        // Unpriced: never $0, and an allowed unpriced model is charged tokens only.
        let unpriced = charge(
            ApiFormat::OpenAi,
            &u,
            UsageStatus::Absent,
            None,
            Some((10, 20, 0)),
            true,
        );
        assert_eq!(
            unpriced,
            Charge {
                cost_micros: None,
                status: CostStatus::Unpriced,
                input: 100,
                output: 50
            }
        );
    }

    #[test]
    fn counts_are_missing_only_for_work_the_provider_may_bill() {
        use UsageStatus::*;
        let m = counts_may_be_missing;
        // Never forwarded (refused, no connection): nothing to bill.
        assert!(!m(false, None, false, 0, Absent));
        // Forwarded, no answer yet (client left, upstream timed out): may be billed.
        assert!(m(true, None, false, 0, Absent));
        // A provider error is not billed.
        assert!(!m(true, Some(429), true, 100, Truncated));
        // Exact counts are never missing.
        assert!(!m(true, Some(200), true, 100, Exact));
        // A complete JSON answer without usage (a model list) is not a generation; a
        // stream without usage is.
        assert!(!m(true, Some(200), false, 500, Absent));
        assert!(m(true, Some(200), true, 500, Absent));
        // Cut: a stream always, a JSON body once bytes came; a body-less answer never.
        assert!(m(true, Some(200), true, 0, Truncated));
        assert!(m(true, Some(200), false, 10, Truncated));
        assert!(!m(true, Some(204), false, 0, Truncated));
        assert!(m(true, Some(200), false, 10, OverLimit));
        assert!(m(true, Some(200), false, 10, Unparsed));
    }

    #[test]
    fn status_spellings_round_trip() {
        for s in [
            CostStatus::Exact,
            CostStatus::Partial,
            CostStatus::Unpriced,
            CostStatus::NoUsage,
        ] {
            assert_eq!(CostStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
