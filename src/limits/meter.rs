//! Spend counters and the reserve/settle admission. Lock-free: one `AtomicU64` per
//! counter, each holding its period's tag and value, changed by compare-and-swap; no lock
//! is shared by requests, and two keys share nothing.
//!
//! **Admission.** Before a request is forwarded, [`admit`] adds its estimate (one
//! request, input tokens from the body, output tokens from `max_tokens` or the default,
//! their price) to every counter of the key (and of its owner), each add refused when it
//! would pass that counter's limit. A refused request takes back what it added. So the
//! reservations in flight never sum past a limit, however many requests race.
//!
//! **Settlement.** When the answer ends, [`Reservation::settle`] replaces the estimate
//! with the actual counts (a counter whose period ended since is left alone: the spend
//! belongs to the period it started in). The only way past a limit is a request that
//! used more than it reserved: the overshoot of a limit is at most the sum, over the
//! requests in flight, of (actual - reserved). With `max_tokens` sent and an input
//! estimate at or above the real count (`limits.bytes_per_input_token: 1` is one for
//! text), that is zero.

use super::lease::Lease;
use super::spec::{Kind, LimitSet, Period, KINDS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const VALUE_BITS: u32 = 44;
/// The largest count a counter holds (2^44 - 1: 17.5 million dollars in micro-dollars,
/// 17.5 trillion tokens); counts saturate there.
pub const MAX_VALUE: u64 = (1 << VALUE_BITS) - 1;
const TAG_MASK: u64 = (1 << (64 - VALUE_BITS)) - 1;

/// One counter: `tag << 44 | value`, where the tag is the period number (minutes, days or
/// months since 1970) modulo 2^20. A counter whose tag is not the current period's reads
/// as zero, so a new period starts from nothing without anyone resetting it.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

#[inline]
fn pack(tag: u64, value: u64) -> u64 {
    (tag & TAG_MASK) << VALUE_BITS | value.min(MAX_VALUE)
}

#[inline]
fn unpack(word: u64) -> (u64, u64) {
    (word >> VALUE_BITS, word & MAX_VALUE)
}

/// Whether tag `stored` names a later period than `mine` (tags wrap at 2^20; periods
/// differ by far less than half of that while a request is in flight).
#[inline]
fn is_later(stored: u64, mine: u64) -> bool {
    let d = stored.wrapping_sub(mine) & TAG_MASK;
    d != 0 && d <= TAG_MASK / 2
}

impl Counter {
    /// The value in period `tag`.
    #[inline]
    pub fn get(&self, tag: u64) -> u64 {
        let (t, v) = unpack(self.0.load(Ordering::Relaxed));
        if t == tag & TAG_MASK {
            v
        } else {
            0
        }
    }

    /// Add `amount` in period `tag` unless the result would pass `limit`. `Err(used)`.
    /// A request that read the clock just before a period ended and finds the counter
    /// already in the next period adds nothing (its period is over) and is not refused.
    #[inline]
    pub fn try_add(&self, tag: u64, amount: u64, limit: Option<u64>) -> Result<(), u64> {
        let mut word = self.0.load(Ordering::Relaxed);
        loop {
            let (t, v) = unpack(word);
            // (An empty counter has nothing to lose: any period may take it.)
            if v != 0 && is_later(t, tag & TAG_MASK) {
                return Ok(());
            }
            let used = if t == tag & TAG_MASK { v } else { 0 };
            let next = used.saturating_add(amount);
            if limit.is_some_and(|l| next > l) {
                return Err(used);
            }
            match self
                .0
                .compare_exchange_weak(word, pack(tag, next), Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(w) => word = w,
            }
        }
    }

    /// Add a signed `delta` in period `tag`; nothing when the counter is in another period
    /// (the one `tag` names has ended). Never below zero.
    #[inline]
    pub fn adjust(&self, tag: u64, delta: i64) {
        if delta == 0 {
            return;
        }
        let mut word = self.0.load(Ordering::Relaxed);
        loop {
            let (t, v) = unpack(word);
            if t != tag & TAG_MASK {
                return;
            }
            let next = if delta > 0 {
                v.saturating_add(delta as u64)
            } else {
                v.saturating_sub(delta.unsigned_abs())
            };
            match self
                .0
                .compare_exchange_weak(word, pack(tag, next), Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(w) => word = w,
            }
        }
    }

    /// Make the value in period `tag` exactly `value` (a lease grant replacing the last).
    #[inline]
    pub fn set(&self, tag: u64, value: u64) {
        self.0.store(pack(tag, value), Ordering::Release);
    }
}

/// The counters of one key or one owner, by [`Kind`]: this instance's spend (`.0`) and,
/// when limits are shared by a fleet, the lease that caps it (`.1`).
#[derive(Debug, Default)]
pub struct Meter(pub [Counter; 8], pub Option<Box<Lease>>);

/// Period numbers at one instant: minutes, days and calendar months since 1970 (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    /// Unix seconds.
    pub now: u64,
    /// Minutes since the epoch.
    pub minute: u64,
    /// Days since the epoch.
    pub day: u64,
    /// Calendar months since January 1970.
    pub month: u64,
}

/// `(year, month 1-12, day 1-31)` of a day number (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The day number of a date (Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Periods {
    /// The periods now.
    pub fn now() -> Periods {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Periods::at(secs)
    }

    /// The periods at Unix second `now`.
    pub fn at(now: u64) -> Periods {
        let day = now / 86_400;
        let (y, m, _) = civil_from_days(day as i64);
        Periods {
            now,
            minute: now / 60,
            day,
            month: ((y - 1970) * 12 + i64::from(m) - 1).max(0) as u64,
        }
    }

    /// The tag of `period`.
    #[inline]
    pub fn tag(&self, period: Period) -> u64 {
        match period {
            Period::Minute => self.minute,
            Period::Day => self.day,
            Period::Month => self.month,
        }
    }

    /// Seconds until `period` ends (at least 1).
    pub fn seconds_left(&self, period: Period) -> u64 {
        let end = match period {
            Period::Minute => (self.minute + 1) * 60,
            Period::Day => (self.day + 1) * 86_400,
            Period::Month => {
                let (y, m) = (1970 + (self.month / 12) as i64, (self.month % 12) as u32 + 1);
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(y, m, 1) as u64 * 86_400
            }
        };
        end.saturating_sub(self.now).max(1)
    }
}

/// What a request counts for: one request, its tokens, its micro-dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amounts {
    /// Requests (1).
    pub requests: u64,
    /// Input tokens.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Micro-dollars.
    pub micros: u64,
}

impl Amounts {
    /// The amount each counter takes, in [`Kind`] order.
    pub fn per_kind(&self) -> [u64; 8] {
        let total = self.input.saturating_add(self.output);
        [
            self.requests,
            self.input,
            self.output,
            total,
            total,
            self.micros,
            total,
            self.micros,
        ]
    }
}

/// Which meter a refusal came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The key's own.
    Key,
    /// The owner's, shared by the owner's keys.
    Owner,
}

/// A limit that refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Which limit.
    pub kind: Kind,
    /// Key or owner.
    pub scope: Scope,
    /// The limit.
    pub limit: u64,
    /// Used (and reserved) in this period before the request.
    pub used: u64,
    /// What the request asked for.
    pub asked: u64,
    /// Seconds until the period ends.
    pub retry_after: u64,
    /// Refused by this instance's lease, not by the limit: the fleet as last seen has room,
    /// so a larger lease may admit it.
    pub lease_short: bool,
}

/// A key's meters and limits for one request.
pub struct Metered<'a> {
    /// The key's meter and limits.
    pub key: (&'a Arc<Meter>, &'a LimitSet),
    /// The owner's, when the owner has limits.
    pub owner: Option<(&'a Arc<Meter>, &'a LimitSet)>,
}

/// An admitted request's hold on its meters, until [`settle`](Reservation::settle).
#[derive(Debug)]
pub struct Reservation {
    meters: [Option<Arc<Meter>>; 2],
    periods: Periods,
    reserved: Amounts,
}

/// Reserve `asked` on every counter of the key and the owner, or refuse with the first
/// limit it would pass (and take back what was added).
pub fn admit(m: &Metered<'_>, asked: Amounts, periods: Periods) -> Result<Reservation, Refusal> {
    let amounts = asked.per_kind();
    let sides = [
        Some((m.key.0, m.key.1, Scope::Key)),
        m.owner.map(|(a, l)| (a, l, Scope::Owner)),
    ];
    for (s, side) in sides.iter().enumerate() {
        let Some((meter, limits, scope)) = side else {
            continue;
        };
        for (i, kind) in KINDS.into_iter().enumerate() {
            let tag = periods.tag(kind.period());
            let limit = limits.get(kind);
            // In a fleet, this instance admits up to what its lease grants (never past the
            // limit: grants are carved out of it by Redis).
            let lease = meter.1.as_deref();
            let ceiling = match (limit, lease) {
                (Some(l), Some(lease)) => Some(l.min(lease.granted(i, tag))),
                _ => limit,
            };
            if let Err(used) = meter.0[i].try_add(tag, amounts[i], ceiling) {
                // A refused meter is in use too: the fleet service keeps exchanging it, so
                // a share that frees up elsewhere (a dead instance's lease expiring) is
                // seen within a sync interval, not never.
                if let Some(lease) = lease {
                    lease.touch();
                }
                // Take back this side's earlier counters, then the other side's.
                let back = |n: u64| -(n.min(MAX_VALUE) as i64);
                for (j, k) in KINDS.into_iter().enumerate().take(i) {
                    meter.0[j].adjust(periods.tag(k.period()), back(amounts[j]));
                }
                for (prev, _, _) in sides[..s].iter().flatten() {
                    for (j, k) in KINDS.into_iter().enumerate() {
                        prev.0[j].adjust(periods.tag(k.period()), back(amounts[j]));
                    }
                }
                let limit = limit.unwrap_or(0);
                let used = used.saturating_add(lease.map_or(0, |l| l.others(i, tag)));
                return Err(Refusal {
                    kind,
                    scope: *scope,
                    limit,
                    used,
                    asked: amounts[i],
                    retry_after: periods.seconds_left(kind.period()),
                    lease_short: lease.is_some() && used.saturating_add(amounts[i]) <= limit,
                });
            }
        }
        if let Some(lease) = meter.1.as_deref() {
            lease.touch();
        }
    }
    Ok(Reservation {
        meters: [Some(Arc::clone(m.key.0)), m.owner.map(|(a, _)| Arc::clone(a))],
        periods,
        reserved: asked,
    })
}

impl Reservation {
    /// What was reserved.
    pub fn reserved(&self) -> Amounts {
        self.reserved
    }

    /// Replace the reservation with what the request used.
    pub fn settle(self, actual: Amounts) {
        let (want, had) = (actual.per_kind(), self.reserved.per_kind());
        for meter in self.meters.iter().flatten() {
            let mut over = false;
            for (i, kind) in KINDS.into_iter().enumerate() {
                let delta = want[i] as i128 - had[i] as i128;
                over |= delta > 0;
                let delta = delta.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
                meter.0[i].adjust(self.periods.tag(kind.period()), delta);
            }
            // In a fleet, the other instances learn of a request that used more than it
            // reserved at once, not at the next periodic report.
            if let (true, Some(lease)) = (over, meter.1.as_deref()) {
                lease.overrun();
            }
        }
    }
}

impl Meter {
    /// Add spend without limits (tests).
    #[cfg(test)]
    pub fn add(&self, periods: Periods, amounts: Amounts) {
        self.add_current(&periods, &periods, amounts);
    }

    /// Add a past request's spend (made at `at`) to each counter whose period is still
    /// the current one (`now`): the rebuild at start.
    pub fn add_current(&self, at: &Periods, now: &Periods, amounts: Amounts) {
        for (i, (kind, n)) in KINDS.into_iter().zip(amounts.per_kind()).enumerate() {
            let tag = now.tag(kind.period());
            if at.tag(kind.period()) == tag {
                let _ = self.0[i].try_add(tag, n, None);
            }
        }
    }

    /// The value of `kind` in the current period: this instance's, plus (in a fleet) the
    /// other instances' as of the last lease sync.
    pub fn used(&self, kind: Kind, periods: &Periods) -> u64 {
        let tag = periods.tag(kind.period());
        let mine = self.0[kind as usize].get(tag);
        mine.saturating_add(self.1.as_deref().map_or(0, |l| l.others(kind as usize, tag)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(Kind, u64)]) -> LimitSet {
        let mut s = LimitSet::default();
        for &(k, v) in pairs {
            s.0[k as usize] = Some(v);
        }
        s
    }

    fn asked(input: u64, output: u64, micros: u64) -> Amounts {
        Amounts {
            requests: 1,
            input,
            output,
            micros,
        }
    }

    #[test]
    fn calendar_arithmetic_matches_chrono() {
        use chrono::{Datelike, TimeZone, Utc};
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            let t = Utc.timestamp_opt(days * 86_400, 0).unwrap();
            assert_eq!((y, m, d), (i64::from(t.year()), t.month(), t.day()), "day {days}");
            assert_eq!(days_from_civil(y, m, d), days);
        }
        // 2026-12-02T11:00:00Z: month 683 since 1970-01; 30 days left to 2027-01-01.
        let p = Periods::at(1_796_209_200);
        assert_eq!(p.month, 56 * 12 + 11);
        assert_eq!(p.seconds_left(Period::Month), 29 * 86_400 + 13 * 3600);
        assert_eq!(p.seconds_left(Period::Day), 13 * 3600);
        assert_eq!(Periods::at(1_796_209_259).seconds_left(Period::Minute), 1);
    }

    #[test]
    fn a_counter_starts_each_period_from_zero() {
        let c = Counter::default();
        assert_eq!(c.try_add(5, 7, Some(10)), Ok(()));
        assert_eq!(c.try_add(5, 4, Some(10)), Err(7));
        assert_eq!(c.get(5), 7);
        assert_eq!(c.get(6), 0);
        assert_eq!(c.try_add(6, 10, Some(10)), Ok(()));
        // A request that read the clock in period 5 finds the counter in period 6: it
        // neither overwrites period 6 nor is refused.
        assert_eq!(c.try_add(5, 1000, Some(10)), Ok(()));
        assert_eq!(c.get(6), 10);
        // Tags wrap: period 0 after 2^20 - 1 is later.
        let w = Counter::default();
        w.try_add(TAG_MASK, 3, None).unwrap();
        w.try_add(0, 4, None).unwrap();
        assert_eq!((w.get(0), w.get(TAG_MASK)), (4, 0));
        assert_eq!(w.try_add(TAG_MASK, 1, Some(1)), Ok(()));
        assert_eq!(w.get(0), 4);
        // A settlement for the ended period changes nothing.
        c.adjust(5, -7);
        assert_eq!(c.get(6), 10);
        c.adjust(6, -20);
        assert_eq!(c.get(6), 0);
        c.adjust(6, i64::MAX);
        assert_eq!(c.get(6), MAX_VALUE);
    }

    #[test]
    fn refusal_takes_back_everything_it_added() {
        let key = Arc::new(Meter::default());
        let owner = Arc::new(Meter::default());
        let (kl, ol) = (set(&[(Kind::Rpm, 10)]), set(&[(Kind::UsdPerDay, 100)]));
        let m = Metered {
            key: (&key, &kl),
            owner: Some((&owner, &ol)),
        };
        let p = Periods::at(1_796_209_200);
        let r = admit(&m, asked(5, 5, 60), p).unwrap();
        let refused = admit(&m, asked(5, 5, 60), p).unwrap_err();
        assert_eq!(
            refused,
            Refusal {
                kind: Kind::UsdPerDay,
                scope: Scope::Owner,
                limit: 100,
                used: 60,
                asked: 60,
                retry_after: 13 * 3600,
                lease_short: false,
            }
        );
        for (meter, want) in [
            (&key, [1, 5, 5, 10, 10, 60, 10, 60]),
            (&owner, [1, 5, 5, 10, 10, 60, 10, 60]),
        ] {
            let got: Vec<u64> = KINDS.iter().map(|&k| meter.used(k, &p)).collect();
            assert_eq!(got, want);
        }
        // Settled to less: room again.
        r.settle(asked(2, 1, 30));
        assert_eq!(key.used(Kind::Tpm, &p), 3);
        assert_eq!(owner.used(Kind::UsdPerDay, &p), 30);
        admit(&m, asked(5, 5, 60), p).unwrap().settle(asked(5, 5, 60));
        assert_eq!(owner.used(Kind::UsdPerDay, &p), 90);
    }

    /// Many threads racing for a budget with room for five: exactly five reservations.
    #[test]
    fn racing_reservations_never_pass_the_limit() {
        let key = Arc::new(Meter::default());
        let limits = set(&[(Kind::UsdPerMonth, 500)]);
        let p = Periods::at(1_796_209_200);
        let admitted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        let m = Metered {
                            key: (&key, &limits),
                            owner: None,
                        };
                        if let Ok(r) = admit(&m, asked(1, 1, 100), p) {
                            admitted.fetch_add(1, Ordering::Relaxed);
                            std::mem::forget(r);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 5);
        assert_eq!(key.used(Kind::UsdPerMonth, &p), 500);
    }
}
