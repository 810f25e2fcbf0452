//! Fleet leases: how N instances share one set of limits through Redis without Redis on
//! the request path.
//!
//! Each instance borrows allowance for a counter (a key's or an owner's rpm, tokens per
//! day, ...) in chunks of `fleet.lease_percent` of the limit, admits requests against what
//! it holds ([`Lease::granted`], checked by `meter::admit` with the same lock-free counters
//! as a single instance), reports its exact use, and gives back what it does not use. One
//! server-side script ([`SCRIPT`]) does each exchange atomically on Redis's own clock.
//!
//! **The record in Redis**: one hash per counter and period (`<prefix>:<k|o>:<name>:<kind>:
//! <period number>`), one field per instance: `granted:used:expires_ms:seq`. The script
//! counts every other instance at `max(granted, used)` while its lease is live and at
//! `used` once it has expired, grants the caller at most `limit - others` (never less than
//! what it already used) and stores the caller's absolute figures.
//!
//! **Idempotent.** A report carries absolute figures (this instance's whole use of the
//! period, the settled requests' exact counts plus reservations in flight), never a
//! delta, and a sequence number: a retried or replayed report changes nothing, a late one
//! (lower sequence) is ignored. Every request id's charge is counted once, because it is
//! part of exactly one instance's absolute figure.
//!
//! **Overshoot.** Grants are carved out of the limit, so while every request uses no more
//! than it reserved (`max_tokens` sent, an input estimate at or above the real count) the
//! fleet never passes a limit, Redis reachable. A request that uses more than it reserved
//! pushes the fleet over by that much, as with one instance, and the other instances can
//! still admit up to the unused leases they hold at that moment: the overshoot is at most
//! the overruns of the requests involved plus (N - 1) x chunk of reservations. Settlements
//! above the reservation are reported at once (not at the next interval), so the others
//! see them within a Redis round trip. The other way, up to (N - 1) x chunk can sit unused
//! in other instances' leases when one is refused (returned after a few idle intervals, or,
//! for a dead instance, when its lease expires after `fleet.lease_seconds`). While Redis is
//! unreachable an instance serves from the lease it holds until it expires, then falls back
//! ([`fallback_ceiling`]): rate limits at ceil(limit / N) per instance, budgets refused
//! unless `fleet.fail_open` (then also ceil(limit / N) per instance). So the overshoot in
//! an outage is at most what the fleet had used in that period before it, plus N - 1
//! units of rounding.
//!
//! This file is the state and the decisions (pure); `fleet.rs` is the service that talks
//! to Redis.

use super::meter::{Counter, Periods};
use super::spec::{Kind, LimitSet, KINDS};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The lease state of one meter (a key id's or an owner's), read by admission.
#[derive(Debug)]
pub struct Lease {
    /// `k:<id>` or `o:<owner>`: the meter's name in Redis keys.
    pub name: Box<str>,
    granted: [Counter; 8],
    others: [Counter; 8],
    /// Limit + 1 per kind (0 = none), from the allow-list's latest load.
    limits: [AtomicU64; 8],
    /// Admission used this meter since the service last looked.
    active: AtomicBool,
    /// A request settled above its reservation since the service last looked.
    overrun: AtomicBool,
    /// Wakes the fleet service (shared by every lease of the process).
    wake: Arc<Notify>,
}

impl Lease {
    /// An empty lease for the meter called `name`, whose overruns wake `wake`.
    pub fn new(name: String, wake: Arc<Notify>) -> Lease {
        Lease {
            name: name.into_boxed_str(),
            granted: Default::default(),
            others: Default::default(),
            limits: Default::default(),
            active: AtomicBool::new(false),
            overrun: AtomicBool::new(false),
            wake,
        }
    }

    /// A request used more than it reserved: report this meter now (settlement only,
    /// and only then; wakes the service).
    pub fn overrun(&self) {
        if !self.overrun.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Whether a request overran since the last call (and clear the flag).
    pub fn take_overrun(&self) -> bool {
        self.overrun.swap(false, Ordering::AcqRel)
    }

    /// What this instance may use of counter `i` in period `tag` (0 when it holds no lease
    /// for that period).
    #[inline]
    pub fn granted(&self, i: usize, tag: u64) -> u64 {
        self.granted[i].get(tag)
    }

    /// What the other instances hold or used of counter `i` in period `tag`, as of the last
    /// exchange with Redis.
    #[inline]
    pub fn others(&self, i: usize, tag: u64) -> u64 {
        self.others[i].get(tag)
    }

    /// Note that admission used this meter (one load on the hot path; a store only when
    /// the flag was clear).
    #[inline]
    pub fn touch(&self) {
        if !self.active.load(Ordering::Relaxed) {
            self.active.store(true, Ordering::Relaxed);
        }
    }

    /// Whether admission used the meter since the last call (and clear the flag).
    pub fn take_active(&self) -> bool {
        self.active.swap(false, Ordering::Relaxed)
    }

    /// The limits of the meter's latest allow-list entry.
    pub fn set_limits(&self, set: &LimitSet) {
        for (i, kind) in KINDS.into_iter().enumerate() {
            self.limits[i].store(
                set.get(kind).map_or(0, |l| l.saturating_add(1)),
                Ordering::Relaxed,
            );
        }
    }

    /// The limit of counter `i`, if any.
    pub fn limit(&self, i: usize) -> Option<u64> {
        match self.limits[i].load(Ordering::Relaxed) {
            0 => None,
            n => Some(n - 1),
        }
    }

    /// Install a grant (and the others' figure) for period `tag`.
    pub fn install(&self, i: usize, tag: u64, granted: u64, others: u64) {
        self.granted[i].set(tag, granted);
        self.others[i].set(tag, others);
    }
}

/// One exchange's size: `percent` of the limit, at least one unit.
pub fn chunk(limit: u64, percent: u64) -> u64 {
    (u128::from(limit) * u128::from(percent) / 100).max(1) as u64
}

/// The period number (minutes, days or months since 1970) a kind counts in at `p`: the
/// Redis key's suffix (the meter's tag is this modulo 2^20).
pub fn period_number(kind: Kind, p: &Periods) -> u64 {
    p.tag(kind.period())
}

/// The Redis key of a counter: `<prefix>:<k|o>:<name>:<kind>:<period number>`.
pub fn redis_key(prefix: &str, lease: &str, kind: Kind, period: u64) -> String {
    format!("{prefix}:{lease}:{}:{period}", kind.name())
}

/// What the service remembers of one counter between ticks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slot {
    /// The period number of the last exchange.
    pub period: u64,
    /// `used` as last reported.
    pub reported: u64,
    /// When the last exchange succeeded.
    pub synced_at: Option<Instant>,
    /// When the lease held stops being ours (on our clock, earlier than Redis's expiry).
    pub valid_until: Option<Instant>,
    /// Since when admission has not used the meter.
    pub idle_since: Option<Instant>,
    /// Sequence number of the last report sent.
    pub seq: u64,
}

/// A counter as the service sees it at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// This instance's use of the current period (settled + reserved).
    pub used: u64,
    /// What it holds for the current period.
    pub granted: u64,
    /// The limit's chunk.
    pub chunk: u64,
    /// Used by admission since the last tick.
    pub active: bool,
    /// Asked for by a waiting request (0 = none).
    pub demand: u64,
}

/// The timing of exchanges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Report and renew period.
    pub interval: Duration,
    /// Ticks without use after which a lease is given back.
    pub idle_ticks: u32,
}

/// Whether to exchange with Redis for this counter now, and the grant to ask for (the
/// absolute allowance this instance wants for the period).
pub fn plan(v: &View, slot: &Slot, now: Instant, t: &Timing, period: u64) -> Option<u64> {
    let new_period = slot.period != period;
    if v.demand > 0 {
        return Some(v.used.saturating_add(v.demand).saturating_add(v.chunk));
    }
    // Low water: less than half a chunk left while in use (a new period starts at none).
    if v.active && v.granted.saturating_sub(v.used).saturating_mul(2) < v.chunk {
        return Some(v.used.saturating_add(v.chunk));
    }
    if new_period && v.used == 0 && v.granted == 0 {
        return None;
    }
    let due = slot.synced_at.is_none_or(|s| now >= s + t.interval);
    if !due {
        return None;
    }
    let idle_long = slot
        .idle_since
        .is_some_and(|s| now >= s + t.interval * t.idle_ticks);
    if !v.active && idle_long && v.granted > v.used {
        return Some(v.used);
    }
    let expiring = slot.valid_until.is_some_and(|u| now + t.interval * 2 >= u);
    if v.active || v.used != slot.reported || (expiring && v.granted > v.used) {
        return Some(v.granted.max(v.used));
    }
    None
}

/// What an instance may use of a limit while Redis is unreachable and its lease has
/// expired: rate limits ceil(limit / N); budgets nothing beyond what it used, unless
/// `fail_open` (then ceil(limit / N) as well).
pub fn fallback_ceiling(kind: Kind, limit: u64, instances: u64, fail_open: bool, used: u64) -> u64 {
    if kind.is_rate() || fail_open {
        limit.div_ceil(instances.max(1))
    } else {
        used
    }
}

/// The exchange, atomic on the server, for any number of counters at once. KEYS: the
/// counters' hashes. ARGV: instance, lease ms, then per key: used, want, limit, key
/// lifetime ms, sequence. Returns `{granted, others}` per key, in order.
pub const SCRIPT: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me = ARGV[1]
local lease = tonumber(ARGV[2])
local out = {}
for k = 1, #KEYS do
  local a = 2 + (k - 1) * 5
  local used = tonumber(ARGV[a + 1])
  local want = tonumber(ARGV[a + 2])
  local limit = tonumber(ARGV[a + 3])
  local seq = tonumber(ARGV[a + 5])
  local others = 0
  local mine = nil
  local all = redis.call('HGETALL', KEYS[k])
  for i = 1, #all, 2 do
    local g, u, exp, s = string.match(all[i + 1], '^(%d+):(%d+):(%d+):(%d+)$')
    if g then
      g = tonumber(g); u = tonumber(u); exp = tonumber(exp)
      if all[i] == me then
        mine = {g, tonumber(s)}
      elseif exp > now then
        others = others + math.max(g, u)
      else
        others = others + u
      end
    end
  end
  local grant
  if mine and mine[2] >= seq then
    grant = mine[1]
  else
    grant = math.min(want, limit - others)
    if grant < used then grant = used end
    if grant < 0 then grant = 0 end
    redis.call('HSET', KEYS[k], me, string.format('%d:%d:%d:%d', grant, used, now + lease, seq))
    redis.call('PEXPIRE', KEYS[k], tonumber(ARGV[a + 4]))
  end
  out[#out + 1] = grant
  out[#out + 1] = others
end
return out
"#;

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        interval: Duration::from_millis(100),
        idle_ticks: 4,
    };

    fn view(used: u64, granted: u64, active: bool) -> View {
        View {
            used,
            granted,
            chunk: 10,
            active,
            demand: 0,
        }
    }

    #[test]
    fn chunks_are_a_share_of_the_limit_and_at_least_one() {
        assert_eq!(chunk(1000, 5), 50);
        assert_eq!(chunk(10, 5), 1);
        assert_eq!(chunk(u64::MAX >> 20, 100), u64::MAX >> 20);
    }

    #[test]
    fn a_waiting_request_asks_for_its_amount_and_a_chunk() {
        let now = Instant::now();
        let slot = Slot {
            period: 7,
            synced_at: Some(now),
            ..Slot::default()
        };
        let v = View {
            demand: 25,
            ..view(40, 45, true)
        };
        assert_eq!(plan(&v, &slot, now, &T, 7), Some(75));
    }

    #[test]
    fn low_water_refills_while_in_use_and_not_when_idle() {
        let now = Instant::now();
        let slot = Slot {
            period: 7,
            reported: 41,
            synced_at: Some(now),
            valid_until: Some(now + Duration::from_secs(10)),
            ..Slot::default()
        };
        assert_eq!(plan(&view(41, 45, true), &slot, now, &T, 7), Some(51));
        assert_eq!(plan(&view(41, 45, false), &slot, now, &T, 7), None);
        // Plenty left and reported recently: nothing to do.
        assert_eq!(plan(&view(30, 45, true), &slot, now, &T, 7), None);
        // A new period starts with no grant: the first use asks for a chunk.
        assert_eq!(plan(&view(1, 0, true), &slot, now, &T, 8), Some(11));
        assert_eq!(plan(&view(0, 0, false), &slot, now, &T, 8), None);
    }

    #[test]
    fn reports_renewals_and_returns_follow_the_interval() {
        let t0 = Instant::now();
        let slot = Slot {
            period: 7,
            reported: 20,
            synced_at: Some(t0),
            valid_until: Some(t0 + Duration::from_secs(10)),
            idle_since: Some(t0),
            seq: 3,
        };
        let later = t0 + Duration::from_millis(150);
        // Settlements changed `used` since the last report: report, keep the grant.
        assert_eq!(plan(&view(25, 45, false), &slot, t0, &T, 7), None, "not due yet");
        assert_eq!(plan(&view(25, 45, false), &slot, later, &T, 7), Some(45));
        // In use: renew at each interval.
        assert_eq!(plan(&view(20, 45, true), &slot, later, &T, 7), Some(45));
        // Idle and unchanged: nothing until the idle time passes, then give back.
        assert_eq!(plan(&view(20, 45, false), &slot, later, &T, 7), None);
        let idle = t0 + Duration::from_millis(450);
        assert_eq!(plan(&view(20, 45, false), &slot, idle, &T, 7), Some(20));
        // A lease about to expire is renewed even when nothing changed.
        let expiring = Slot {
            valid_until: Some(later + Duration::from_millis(150)),
            idle_since: None,
            ..slot.clone()
        };
        assert_eq!(plan(&view(20, 45, false), &expiring, later, &T, 7), Some(45));
        // Nothing held beyond use: nothing to return.
        assert_eq!(plan(&view(20, 20, false), &slot, idle, &T, 7), None);
    }

    #[test]
    fn fallback_splits_rate_limits_and_refuses_budgets_unless_fail_open() {
        assert_eq!(fallback_ceiling(Kind::Rpm, 100, 3, false, 50), 34);
        assert_eq!(fallback_ceiling(Kind::Tpm, 2, 3, false, 0), 1);
        assert_eq!(fallback_ceiling(Kind::UsdPerDay, 100, 3, false, 12), 12);
        assert_eq!(fallback_ceiling(Kind::UsdPerDay, 100, 3, true, 12), 34);
        assert_eq!(fallback_ceiling(Kind::TokensPerMonth, 100, 1, false, 0), 0);
    }

    #[test]
    fn keys_name_prefix_meter_kind_and_period() {
        assert_eq!(
            redis_key("lmgate", "k:team-a", Kind::Rpm, 29_936_987),
            "lmgate:k:team-a:rpm:29936987"
        );
        let p = Periods::at(1_796_209_200);
        assert_eq!(period_number(Kind::UsdPerMonth, &p), p.month);
        assert_eq!(period_number(Kind::TokensPerDay, &p), p.day);
    }

    #[test]
    fn a_lease_reads_nothing_for_another_period_and_keeps_limits() {
        let wake = Arc::new(Notify::new());
        let l = Lease::new("k:a".into(), Arc::clone(&wake));
        l.overrun();
        l.overrun();
        assert!(l.take_overrun() && !l.take_overrun());
        l.install(0, 5, 30, 12);
        assert_eq!((l.granted(0, 5), l.others(0, 5)), (30, 12));
        assert_eq!((l.granted(0, 6), l.others(0, 6)), (0, 0));
        let mut set = LimitSet::default();
        set.0[Kind::Rpm as usize] = Some(0);
        set.0[Kind::UsdPerDay as usize] = Some(500);
        l.set_limits(&set);
        assert_eq!(l.limit(Kind::Rpm as usize), Some(0));
        assert_eq!(l.limit(Kind::UsdPerDay as usize), Some(500));
        assert_eq!(l.limit(Kind::Tpm as usize), None);
        assert!(!l.take_active());
        l.touch();
        assert!(l.take_active() && !l.take_active());
    }
}
