//! The fleet service: keeps each leased meter's allowance topped up from Redis, reports
//! this instance's use, gives back what it does not use, and falls back when Redis is
//! unreachable (see `lease.rs` for the protocol and the bounds).
//!
//! Requests never talk to Redis. Admission reads the lease the service installed; only a
//! request refused for want of lease (the fleet has room, this instance's share is used
//! up) asks the service for more through [`FleetHandle::top_up`] and waits, at most
//! `fleet.lease_wait_ms`, for the next exchange. At steady state an exchange carries many
//! requests: the Redis commands per request are the number of active counters times the
//! exchanges per second, divided by the requests per second.

use super::lease::{self, Slot, Timing, View};
use super::meter::{Meter, Periods};
use super::spec::KINDS;
use super::Registry;
use crate::config::{FleetConfig, SecretSource};
use async_trait::async_trait;
use log::{info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::IntoConnectionInfo;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Mutex};

/// How many requests may wait for a top-up at once; more are refused at once.
const WAITING_MAX: usize = 4096;
/// Counters exchanged by one script call (the calls of a tick share one round trip).
const OPS_PER_CALL: usize = 128;
/// Ticks without use before a lease is given back.
const IDLE_TICKS: u32 = 8;

/// Counters of the service, for `/metrics`.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// The last exchange with Redis succeeded.
    pub redis_up: AtomicBool,
    /// The last exchange with Redis failed.
    pub redis_down: AtomicBool,
    /// Redis commands sent (one per counter exchanged).
    pub commands: AtomicU64,
    /// Exchanges that failed (unreachable, timeout, error reply).
    pub errors: AtomicU64,
    /// Counters switched to the fallback share after their lease expired with Redis down.
    pub fallbacks: AtomicU64,
    /// Requests that waited for a top-up, and of those the ones the wait did not admit.
    pub waits: AtomicU64,
    /// Waits that ended without an exchange (timeout, queue full).
    pub wait_timeouts: AtomicU64,
}

struct TopUp {
    meter: Arc<Meter>,
    kind: usize,
    amount: u64,
    done: oneshot::Sender<()>,
}

enum Msg {
    TopUp(TopUp),
    /// Give back every lease now (before exit).
    Release(oneshot::Sender<()>),
}

/// What the proxy holds: asks the service for more allowance.
#[derive(Clone)]
pub struct FleetHandle {
    tx: mpsc::Sender<Msg>,
    wait: Duration,
    stats: Arc<FleetStats>,
}

impl FleetHandle {
    /// Ask for `amount` more of counter `kind` of `meter` and wait for the exchange (at
    /// most `fleet.lease_wait_ms`). Afterwards admission is tried again; whether it passes
    /// is up to the new lease.
    pub async fn top_up(&self, meter: &Arc<Meter>, kind: usize, amount: u64) {
        self.stats.waits.fetch_add(1, Ordering::Relaxed);
        let (done, wait) = oneshot::channel();
        let msg = Msg::TopUp(TopUp {
            meter: Arc::clone(meter),
            kind,
            amount,
            done,
        });
        if self.tx.try_send(msg).is_err() || tokio::time::timeout(self.wait, wait).await.is_err() {
            self.stats.wait_timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Give back every unused lease (bounded by the lease wait plus a second).
    pub async fn release(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Release(done)).await.is_ok() {
            let _ = tokio::time::timeout(self.wait + Duration::from_secs(1), wait).await;
        }
    }

    /// Whether the last exchange with Redis failed (false before the first one).
    pub fn redis_down(&self) -> bool {
        self.stats.redis_down.load(Ordering::Relaxed)
    }

    /// The service's counters.
    pub fn stats(&self) -> &Arc<FleetStats> {
        &self.stats
    }
}

/// The background service (one per process).
pub struct FleetService {
    cfg: FleetConfig,
    instance: String,
    registry: Arc<Registry>,
    stats: Arc<FleetStats>,
    rx: Mutex<mpsc::Receiver<Msg>>,
    client: redis::Client,
    /// The lease script and its SHA1 (computed once: hashing it per exchange cost more
    /// than the exchange).
    script: redis::Script,
}

/// The service and the handle the proxy uses. `instance` names this process in Redis
/// (the request-id prefix); the password is read here, at start.
pub fn fleet(
    cfg: &FleetConfig,
    instance: u32,
    registry: Arc<Registry>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(FleetService, FleetHandle), String> {
    let client = client(cfg, env)?;
    let (tx, rx) = mpsc::channel(WAITING_MAX);
    let stats = Arc::new(FleetStats::default());
    let handle = FleetHandle {
        tx,
        wait: cfg.lease_wait,
        stats: Arc::clone(&stats),
    };
    let service = FleetService {
        cfg: cfg.clone(),
        instance: format!("{instance:08x}"),
        registry,
        stats,
        rx: Mutex::new(rx),
        client,
        script: redis::Script::new(lease::SCRIPT),
    };
    Ok((service, handle))
}

/// `lmgate check`: reach Redis with the configured URL and password, and load the lease
/// script (Redis or Valkey with scripting). The answer never holds the password.
pub fn probe(cfg: &FleetConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
    let mut con = client(cfg, env)?
        .get_connection_with_timeout(Duration::from_secs(3))
        .map_err(|e| format!("cannot reach Redis: {e}"))?;
    let _ = con.set_read_timeout(Some(Duration::from_secs(3)));
    let hash: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(lease::SCRIPT)
        .query(&mut con)
        .map_err(|e| format!("Redis refused the lease script: {e}"))?;
    if hash != redis::Script::new(lease::SCRIPT).get_hash() {
        return Err(format!("Redis answered SCRIPT LOAD with {hash:?}"));
    }
    Ok(())
}

/// The Redis client for `cfg`, with the password read from its source.
fn client(cfg: &FleetConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<redis::Client, String> {
    let mut info = cfg
        .redis_url
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("fleet.redis_url: {e}"))?;
    if let Some(source) = &cfg.password {
        let settings = info
            .redis_settings()
            .clone()
            .set_password(read_password(source, env)?);
        info = info.set_redis_settings(settings);
    }
    redis::Client::open(info).map_err(|e| format!("fleet.redis_url: {e}"))
}

/// The Redis password from its source (the credentials' reader: trimmed, never empty,
/// bounded), errors naming the key and never the value.
fn read_password(source: &SecretSource, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    crate::credentials::read_secret(source, env)
        .map(|s| s.expose().to_owned())
        .map_err(|e| format!("fleet.redis_password: {e}"))
}

/// One counter exchange to make this tick.
struct Op {
    meter: Arc<Meter>,
    kind: usize,
    tag: u64,
    used: u64,
    want: u64,
    limit: u64,
    key: String,
    key_ttl_ms: u64,
    seq: u64,
}

/// The service's memory of each counter: by meter address and kind.
type Slots = HashMap<(usize, usize), Slot>;

impl FleetService {
    fn timing(&self) -> Timing {
        Timing {
            interval: self.cfg.sync_interval,
            idle_ticks: IDLE_TICKS,
        }
    }

    /// The exchanges this tick needs: planned for every limited counter of every leased
    /// meter, with the demands of waiting requests added.
    fn plan(&self, slots: &mut Slots, demands: &HashMap<(usize, usize), u64>, release: bool) -> Vec<Op> {
        let now = Instant::now();
        let periods = Periods::now();
        let timing = self.timing();
        let mut ops = Vec::new();
        for meter in self.registry.leased_meters() {
            let Some(lease) = meter.1.as_deref() else { continue };
            let active = lease.take_active();
            let overrun = lease.take_overrun();
            for (i, kind) in KINDS.into_iter().enumerate() {
                let Some(limit) = lease.limit(i) else { continue };
                let tag = periods.tag(kind.period());
                let period = lease::period_number(kind, &periods);
                let id = (Arc::as_ptr(&meter) as usize, i);
                let slot = slots.entry(id).or_default();
                if overrun {
                    slot.synced_at = None;
                }
                if active {
                    slot.idle_since = None;
                } else if slot.idle_since.is_none() {
                    slot.idle_since = Some(now);
                }
                let view = View {
                    used: meter.0[i].get(tag),
                    granted: lease.granted(i, tag),
                    chunk: lease::chunk(limit, self.cfg.lease_percent),
                    active: active && !release,
                    demand: demands.get(&id).copied().unwrap_or(0),
                };
                let want = if release {
                    (view.granted > view.used || view.used != slot.reported).then_some(view.used)
                } else {
                    lease::plan(&view, slot, now, &timing, period)
                };
                let Some(want) = want else { continue };
                slot.seq += 1;
                let key_ttl = periods.seconds_left(kind.period()) + self.cfg.lease_ttl.as_secs() + 60;
                ops.push(Op {
                    meter: Arc::clone(&meter),
                    kind: i,
                    tag,
                    used: view.used,
                    want: want.min(limit),
                    limit,
                    key: lease::redis_key(&self.cfg.key_prefix, &lease.name, kind, period),
                    key_ttl_ms: key_ttl * 1000,
                    seq: slot.seq,
                });
                slot.period = period;
            }
        }
        ops
    }

    /// Send every exchange in one pipeline; install the grants. `Err` when Redis failed.
    async fn exchange(
        &self,
        con: &mut ConnectionManager,
        ops: &[Op],
        slots: &mut Slots,
    ) -> Result<(), String> {
        let sent = Instant::now();
        // One script call exchanges up to OPS_PER_CALL counters; all calls in one round trip.
        let mut pipe = redis::pipe();
        for part in ops.chunks(OPS_PER_CALL) {
            let cmd = pipe.cmd("EVALSHA").arg(self.script.get_hash()).arg(part.len());
            for op in part {
                cmd.arg(&op.key);
            }
            cmd.arg(&self.instance).arg(self.cfg.lease_ttl.as_millis() as u64);
            for op in part {
                cmd.arg(op.used)
                    .arg(op.want)
                    .arg(op.limit)
                    .arg(op.key_ttl_ms)
                    .arg(op.seq);
            }
        }
        let calls = ops.len().div_ceil(OPS_PER_CALL) as u64;
        self.stats.commands.fetch_add(calls, Ordering::Relaxed);
        let replies: Vec<Vec<u64>> = match pipe.query_async(con).await {
            Ok(r) => r,
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // A restarted Redis has forgotten the script: load it, send again.
                let _: String = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(lease::SCRIPT)
                    .query_async(con)
                    .await
                    .map_err(|e| e.to_string())?;
                self.stats.commands.fetch_add(calls + 1, Ordering::Relaxed);
                pipe.query_async(con).await.map_err(|e| e.to_string())?
            }
            Err(e) => return Err(e.to_string()),
        };
        let replies: Vec<(u64, u64)> = replies
            .iter()
            .flat_map(|r| r.chunks_exact(2).map(|p| (p[0], p[1])))
            .collect();
        if replies.len() != ops.len() {
            return Err(format!(
                "{} answers to {} lease exchanges",
                replies.len(),
                ops.len()
            ));
        }
        // Our lease ends a little before Redis's: never both ours and counted as expired.
        let valid = sent + self.cfg.lease_ttl.saturating_sub(self.cfg.sync_interval);
        for (op, (granted, others)) in ops.iter().zip(replies) {
            if let Some(lease) = op.meter.1.as_deref() {
                lease.install(op.kind, op.tag, granted, others);
            }
            if let Some(slot) = slots.get_mut(&(Arc::as_ptr(&op.meter) as usize, op.kind)) {
                slot.reported = op.used;
                slot.synced_at = Some(sent);
                slot.valid_until = Some(valid);
            }
        }
        Ok(())
    }

    /// Redis is unreachable: each counter whose lease has expired gets the fallback share.
    fn fall_back(&self, slots: &mut Slots) {
        let now = Instant::now();
        let periods = Periods::now();
        for meter in self.registry.leased_meters() {
            let Some(lease) = meter.1.as_deref() else { continue };
            for (i, kind) in KINDS.into_iter().enumerate() {
                let Some(limit) = lease.limit(i) else { continue };
                let tag = periods.tag(kind.period());
                let slot = slots.entry((Arc::as_ptr(&meter) as usize, i)).or_default();
                let period = lease::period_number(kind, &periods);
                let held = slot.period == period && slot.valid_until.is_some_and(|u| now < u);
                if held {
                    continue;
                }
                let used = meter.0[i].get(tag);
                let ceiling =
                    lease::fallback_ceiling(kind, limit, self.cfg.instances, self.cfg.fail_open, used);
                if lease.granted(i, tag) != ceiling {
                    self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                    lease.install(i, tag, ceiling, 0);
                }
                slot.period = period;
                slot.valid_until = None;
            }
        }
    }
}

/// Before exit (after the drain): report the final figures and give back every lease, so
/// the other instances need not wait for them to expire.
#[async_trait]
impl crate::lifecycle::ExitHook for FleetHandle {
    async fn before_exit(&self) {
        self.release().await;
    }
}

#[async_trait]
impl BackgroundService for FleetService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        info!(
            "fleet: limits shared through Redis at {} by {} instances (lease {} % of a limit, {} s)",
            self.cfg.redis_url,
            self.cfg.instances,
            self.cfg.lease_percent,
            self.cfg.lease_ttl.as_secs()
        );
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let mut con = match ConnectionManager::new_lazy_with_config(self.client.clone(), config) {
            Ok(c) => c,
            Err(e) => {
                warn!("fleet: cannot set up the Redis client: {e}; limits use the per-instance fallback");
                return;
            }
        };
        let mut rx = self.rx.lock().await;
        let mut slots = Slots::new();
        let mut down_since: Option<Instant> = None;
        let mut stopping = false;
        loop {
            let mut demands: HashMap<(usize, usize), u64> = HashMap::new();
            let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
            let mut release = false;
            let first = tokio::select! {
                m = rx.recv() => m,
                _ = self.registry.wake().notified() => {
                    // Overruns: report soon, but let the ones of the next few milliseconds
                    // share the exchange (at high rates every request may overrun).
                    tokio::time::sleep(self.cfg.sync_interval / 10).await;
                    None
                }
                _ = tokio::time::sleep(self.cfg.sync_interval / 2) => None,
                _ = shutdown.changed(), if !stopping => { stopping = true; None }
            };
            let mut take = |m: Msg| match m {
                Msg::TopUp(t) => {
                    *demands
                        .entry((Arc::as_ptr(&t.meter) as usize, t.kind))
                        .or_default() += t.amount;
                    waiting.push(t.done);
                }
                Msg::Release(done) => {
                    release = true;
                    waiting.push(done);
                }
            };
            if let Some(m) = first {
                take(m);
            }
            while let Ok(m) = rx.try_recv() {
                take(m);
            }
            let ops = self.plan(&mut slots, &demands, release);
            // While Redis is down and nothing needs an exchange, probe it, so the fleet
            // recovers without waiting for a request; then every counter reports again
            // (a Redis that restarted empty gets this instance's figures back).
            let probe = down_since.is_some() && ops.is_empty();
            if probe {
                self.stats.commands.fetch_add(1, Ordering::Relaxed);
                let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut con).await;
                if pong.is_ok() {
                    for slot in slots.values_mut() {
                        slot.synced_at = None;
                        slot.reported = u64::MAX;
                    }
                }
            }
            let ops = if probe {
                self.plan(&mut slots, &demands, release)
            } else {
                ops
            };
            if !ops.is_empty() {
                match self.exchange(&mut con, &ops, &mut slots).await {
                    Ok(()) => {
                        if let Some(since) = down_since.take() {
                            info!(
                                "fleet: Redis reachable again after {:.1} s; leases resumed",
                                since.elapsed().as_secs_f64()
                            );
                        }
                        self.stats.redis_up.store(true, Ordering::Relaxed);
                        self.stats.redis_down.store(false, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        self.stats.redis_up.store(false, Ordering::Relaxed);
                        self.stats.redis_down.store(true, Ordering::Relaxed);
                        if down_since.is_none() {
                            down_since = Some(Instant::now());
                            warn!(
                                "fleet: Redis at {} unreachable ({e}); serving from the leases held, then \
                                 rate limits at limit / {} per instance and budgets {}",
                                self.cfg.redis_url,
                                self.cfg.instances,
                                if self.cfg.fail_open {
                                    "at limit / N (fail_open)"
                                } else {
                                    "refused"
                                }
                            );
                        }
                    }
                }
            }
            if down_since.is_some() {
                self.fall_back(&mut slots);
            }
            for w in waiting {
                let _ = w.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_read_from_its_source_and_never_echoed() {
        let env = |v: &str| (v == "RP").then(|| "  s3cret\n".to_string());
        assert_eq!(
            read_password(&SecretSource::Env("RP".into()), &env).unwrap(),
            "s3cret"
        );
        let e = read_password(&SecretSource::Env("NOPE".into()), &env).unwrap_err();
        assert!(e.contains("NOPE") && !e.contains("s3cret"), "{e}");
        let empty = |_: &str| Some(" ".to_string());
        assert!(read_password(&SecretSource::Env("RP".into()), &empty)
            .unwrap_err()
            .contains("empty"));
    }
}
