//! Spend control: per-key (and per-owner) rate limits and budgets, charged from exact
//! counts.
//!
//! - [`spec`]: the allow-list's `limits` column (pure).
//! - [`meter`]: lock-free counters per key and owner; reserve before forwarding, settle
//!   to the exact counts after (pure apart from the atomics).
//! - [`estimate`]: what a request will likely use, from its body (pure).
//! - [`rebuild`]: the current periods' spend, read back from the usage records at start.
//! - [`lease`] and [`fleet`]: the same limits held by N instances together, through
//!   leases borrowed from Redis by a background service.
//!
//! This file: [`Meters`] (which meters a key charges), the [`Registry`] that keeps them
//! across allow-list reloads, and the answers a limit gives (the provider-shaped refusal,
//! the `x-ratelimit-*` headers).

pub mod estimate;
pub mod fleet;
pub mod lease;
pub mod meter;
pub mod rebuild;
pub mod spec;

use crate::outcome::ErrorKind;
use crate::provider_error::{ErrorClass, ProviderError};
use meter::{Meter, Periods, Refusal, Scope};
use spec::{Dollars, Kind, Limits};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The meters one key charges: its id's, and its owner's when the owner has limits.
#[derive(Debug, Clone)]
pub struct Meters {
    /// Shared by every row with this key's `id`.
    pub key: Arc<Meter>,
    /// Shared by every key of the owner.
    pub owner: Option<Arc<Meter>>,
}

/// Every meter by key id and by owner. Locked only when an allow-list is (re)loaded, never
/// per request; meters outlive reloads, so a reload never refills a budget.
#[derive(Debug, Default)]
pub struct Registry {
    keys: Mutex<HashMap<String, Arc<Meter>>>,
    owners: Mutex<HashMap<String, Arc<Meter>>>,
    /// Meters hold fleet leases (limits shared through Redis).
    leased: bool,
    /// Wakes the fleet service when a leased meter overruns.
    wake: Arc<tokio::sync::Notify>,
}

impl Registry {
    /// A registry whose meters hold fleet leases when `leased`.
    pub fn new(leased: bool) -> Registry {
        Registry {
            leased,
            ..Registry::default()
        }
    }

    /// The meters for a key `id` of `owner` with `limits`; `None` when it has none.
    pub fn meters_for(&self, id: &str, owner: &str, limits: &Limits) -> Option<Meters> {
        if limits.key.is_empty() && limits.owner.is_empty() {
            return None;
        }
        let get = |map: &Mutex<HashMap<String, Arc<Meter>>>, name: &str, side: &str, set: &spec::LimitSet| {
            let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
            let meter = map.entry(name.to_owned()).or_insert_with(|| {
                let lease = self.leased.then(|| {
                    Box::new(lease::Lease::new(
                        format!("{side}:{name}"),
                        Arc::clone(&self.wake),
                    ))
                });
                Arc::new(Meter(Default::default(), lease))
            });
            if let Some(lease) = &meter.1 {
                lease.set_limits(set);
            }
            Arc::clone(meter)
        };
        Some(Meters {
            key: get(&self.keys, id, "k", &limits.key),
            owner: (!limits.owner.is_empty()).then(|| get(&self.owners, owner, "o", &limits.owner)),
        })
    }

    /// What the fleet service waits on besides its timer.
    pub fn wake(&self) -> &Arc<tokio::sync::Notify> {
        &self.wake
    }

    /// Every meter that holds a lease (for the fleet service; locks the maps briefly).
    pub fn leased_meters(&self) -> Vec<Arc<Meter>> {
        let mut out = Vec::new();
        for map in [&self.keys, &self.owners] {
            let map = map.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(map.values().filter(|m| m.1.is_some()).cloned());
        }
        out
    }
}

/// Who a refusal names: `key team-a` or `owner alice (all keys)`.
fn subject(scope: Scope, id: &str, owner: &str) -> String {
    match scope {
        Scope::Key => format!("key {id}"),
        Scope::Owner => format!("owner {owner} (all keys)"),
    }
}

fn amount(kind: Kind, n: u64) -> String {
    if kind.is_money() {
        Dollars(n).to_string()
    } else {
        n.to_string()
    }
}

/// When a budget's period ends, in RFC 3339.
fn reset_at(periods: &Periods, r: &Refusal) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(periods.now + r.retry_after);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A refusal in the caller's provider's shape: a rate limit is a 429 with `Retry-After`
/// (the SDKs wait and retry), a spent budget an error they do not retry, naming the budget.
pub fn refusal_error(r: &Refusal, id: &str, owner: &str, periods: &Periods) -> ProviderError {
    let who = subject(r.scope, id, owner);
    let (limit, used, asked) = (
        amount(r.kind, r.limit),
        amount(r.kind, r.used),
        amount(r.kind, r.asked),
    );
    let unit = if r.kind.is_rate() {
        format!(" {}", r.kind.what())
    } else {
        String::new()
    };
    if r.asked > r.limit {
        let message = format!(
            "{who}: this request alone may use up to {asked} against the {} limit of {limit}{unit}; \
             lower max_tokens (or the input)",
            r.kind.name()
        );
        return ProviderError::new(ErrorClass::InvalidRequest, kind_of(r.kind), message);
    }
    if r.kind.is_rate() {
        let message = format!(
            "rate limit reached for {who}: {limit}{unit} ({used} used, this request needs {asked}); \
             retry in {}s",
            r.retry_after
        );
        ProviderError::new(ErrorClass::RateLimit, ErrorKind::RateLimited, message).retry_after(r.retry_after)
    } else {
        let message = format!(
            "budget exhausted for {who}: {} of {limit} ({used} used, this request needs up to {asked}); \
             resets at {}",
            r.kind.what(),
            reset_at(periods, r)
        );
        ProviderError::new(ErrorClass::Quota, ErrorKind::BudgetExceeded, message)
    }
}

fn kind_of(kind: Kind) -> ErrorKind {
    if kind.is_rate() {
        ErrorKind::RateLimited
    } else {
        ErrorKind::BudgetExceeded
    }
}

/// The refusal of a model without a price under a dollar budget.
pub fn unpriced_error(id: &str, provider: &str, model: Option<&str>) -> ProviderError {
    let message = match model {
        Some(m) => format!(
            "key {id} has a dollar budget and model `{m}` on {provider} has no price; \
             add it to the price override file, or set unpriced=allow on the key"
        ),
        None => format!(
            "key {id} has a dollar budget and the request names no model to price; \
             name the model, or set unpriced=allow on the key"
        ),
    };
    ProviderError::new(ErrorClass::InvalidRequest, ErrorKind::UnpricedModel, message)
}

/// A budget refused by this instance's lease after the wait for a larger one: in a fleet
/// whose Redis is unreachable (`fleet.fail_open` off), the budget cannot be checked. A rate
/// limit refused the same way is an ordinary rate limit (the per-instance share).
pub fn lease_error(r: &Refusal, id: &str, owner: &str, periods: &Periods) -> ProviderError {
    if r.kind.is_rate() {
        return refusal_error(r, id, owner, periods);
    }
    let message = format!(
        "the {} of {} cannot be checked now: the fleet's shared limit store is unreachable; retry later",
        r.kind.what(),
        subject(r.scope, id, owner)
    );
    ProviderError::new(ErrorClass::Unavailable, ErrorKind::LimitsUnavailable, message).retry_after(1)
}

/// `x-ratelimit-*` headers as OpenAI sends them, for the key's per-minute request and
/// token limits (the tighter of key and owner), counted after this request's reservation.
pub fn ratelimit_headers(limits: &Limits, meters: &Meters, periods: &Periods) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let reset = format!("{}s", periods.seconds_left(spec::Period::Minute));
    let remaining = |kind: Kind| -> Option<(u64, u64)> {
        let key = limits
            .key
            .get(kind)
            .map(|l| (l, l.saturating_sub(meters.key.used(kind, periods))));
        let owner = match (&meters.owner, limits.owner.get(kind)) {
            (Some(m), Some(l)) => Some((l, l.saturating_sub(m.used(kind, periods)))),
            _ => None,
        };
        match (key, owner) {
            (Some(a), Some(b)) => Some(if b.1 < a.1 { b } else { a }),
            (a, b) => a.or(b),
        }
    };
    if let Some((limit, left)) = remaining(Kind::Rpm) {
        out.push(("x-ratelimit-limit-requests", limit.to_string()));
        out.push(("x-ratelimit-remaining-requests", left.to_string()));
        out.push(("x-ratelimit-reset-requests", reset.clone()));
    }
    if let Some((limit, left)) = remaining(Kind::Tpm) {
        out.push(("x-ratelimit-limit-tokens", limit.to_string()));
        out.push(("x-ratelimit-remaining-tokens", left.to_string()));
        out.push(("x-ratelimit-reset-tokens", reset));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ApiFormat;
    use meter::Amounts;
    use spec::parse_limits;

    const NOW: u64 = 1_796_209_200; // 2026-12-02T11:00:00Z

    #[test]
    fn rate_limits_are_retried_and_budgets_are_not() {
        let p = Periods::at(NOW + 37);
        let rate = Refusal {
            kind: Kind::Rpm,
            scope: Scope::Key,
            limit: 60,
            used: 60,
            asked: 1,
            retry_after: 23,
            lease_short: false,
        };
        let e = refusal_error(&rate, "team-a", "alice", &p);
        assert_eq!(
            (e.class, e.kind, e.retry_after),
            (ErrorClass::RateLimit, ErrorKind::RateLimited, Some(23))
        );
        assert_eq!(
            e.message,
            "rate limit reached for key team-a: 60 requests per minute (60 used, this request needs 1); retry in 23s"
        );
        let r = e.render(ApiFormat::OpenAi);
        assert_eq!(r.status, 429);
        assert!(r.headers.contains(&("retry-after", "23".into())));
        assert!(r.body.contains(r#""code":"rate_limit_exceeded""#));

        let budget = Refusal {
            kind: Kind::UsdPerDay,
            scope: Scope::Owner,
            limit: 5_000_000,
            used: 4_990_000,
            asked: 20_000,
            retry_after: 13 * 3600,
            lease_short: false,
        };
        let e = refusal_error(&budget, "team-a", "alice", &Periods::at(NOW));
        assert_eq!(
            (e.class, e.kind, e.retry_after),
            (ErrorClass::Quota, ErrorKind::BudgetExceeded, None)
        );
        assert_eq!(
            e.message,
            "budget exhausted for owner alice (all keys): daily budget of $5.00 ($4.99 used, this request \
             needs up to $0.02); resets at 2026-12-03T00:00:00Z"
        );
        let r = e.render(ApiFormat::Anthropic);
        assert!(r.headers.contains(&("x-should-retry", "false".into())));
        assert!(!r.headers.iter().any(|(n, _)| *n == "retry-after"));

        let alone = Refusal {
            kind: Kind::Tpm,
            scope: Scope::Key,
            limit: 1000,
            used: 0,
            asked: 4096,
            retry_after: 5,
            lease_short: false,
        };
        let e = refusal_error(&alone, "k", "o", &p);
        assert_eq!(
            (e.class, e.kind),
            (ErrorClass::InvalidRequest, ErrorKind::RateLimited)
        );
        assert!(e
            .message
            .contains("this request alone may use up to 4096 against the tpm limit of 1000"));
    }

    #[test]
    fn headers_show_the_tighter_of_key_and_owner() {
        let reg = Registry::default();
        let limits = parse_limits("rpm=10 tpm=1000 owner.rpm=5").unwrap();
        let m = reg.meters_for("k1", "alice", &limits).unwrap();
        let p = Periods::at(NOW + 15);
        m.key.add(
            p,
            Amounts {
                requests: 3,
                input: 100,
                output: 50,
                micros: 0,
            },
        );
        m.owner.as_ref().unwrap().add(
            p,
            Amounts {
                requests: 4,
                ..Amounts::default()
            },
        );
        let h = ratelimit_headers(&limits, &m, &p);
        assert_eq!(
            h,
            vec![
                ("x-ratelimit-limit-requests", "5".to_string()),
                ("x-ratelimit-remaining-requests", "1".to_string()),
                ("x-ratelimit-reset-requests", "45s".to_string()),
                ("x-ratelimit-limit-tokens", "1000".to_string()),
                ("x-ratelimit-remaining-tokens", "850".to_string()),
                ("x-ratelimit-reset-tokens", "45s".to_string()),
            ]
        );
        // The same id gets the same meter back (a reload keeps the spend); no limits, none.
        assert!(Arc::ptr_eq(
            &reg.meters_for("k1", "bob", &limits).unwrap().key,
            &m.key
        ));
        assert!(reg.meters_for("k2", "alice", &Limits::default()).is_none());
    }

    #[test]
    fn unpriced_refusal_names_the_model() {
        let e = unpriced_error("team-a", "openai", Some("gpt-9"));
        assert_eq!(
            (e.class, e.kind),
            (ErrorClass::InvalidRequest, ErrorKind::UnpricedModel)
        );
        assert!(e.message.contains("model `gpt-9` on openai has no price"));
    }
}
