//! Process lifecycle: which signals stop the gateway, how in-flight requests are counted,
//! and the drain that lets them finish before the process exits.
//!
//! Pingora's own graceful stop sleeps a fixed `grace_period_seconds` (default 300 s) and
//! then drops every task. LMGate instead waits exactly as long as needed: when Pingora
//! broadcasts shutdown (listeners stop accepting), [`Drain`] waits until no request is in
//! flight and none has started for [`DRAIN_SETTLE`] (bounded by
//! `server.drain_timeout_seconds`), runs the exit hooks (the stats writer flushes and
//! syncs), checks that no request started meanwhile (else drains and flushes again), and
//! exits 0. An idle gateway exits after the settle time. Pingora's grace period is kept
//! only as a backstop, a little longer than the drain timeout.
//!
//! Why a settle time: a request is counted from `new_ctx`, which Pingora calls only once
//! the request head has been read. After the shutdown broadcast Pingora still reads a
//! request whose bytes have already arrived: on a connection it accepted just before it
//! stopped listening (the connection task may not have run yet), or the next request on a
//! keep-alive connection whose previous request just ended (the count touches zero between
//! the two). Both are read without waiting on the network, so a short quiet period covers
//! them; exiting at the first zero would cut them off with no answer and no record.

use async_trait::async_trait;
use log::{info, warn};
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// Requests between `new_ctx` and the drop of their context, and how many ever started.
#[derive(Debug, Default)]
pub struct InFlight {
    now: AtomicUsize,
    started: AtomicU64,
}

impl InFlight {
    /// Count one request for as long as the guard lives.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.now.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(Arc::clone(self))
    }

    /// Requests in flight now.
    pub fn count(&self) -> usize {
        self.now.load(Ordering::Relaxed)
    }

    /// Requests started since the process began (a request that starts and ends between
    /// two looks at [`count`](Self::count) still shows here).
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }
}

/// Decrements the in-flight count when dropped (with the request context).
#[derive(Debug)]
pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Decides when a drain may end: no request in flight, and none started, for `settle` in a
/// row. Pure: the caller supplies the clock and the counters.
#[derive(Debug)]
struct Quiescence {
    settle: Duration,
    started: u64,
    quiet_since: Option<Instant>,
}

impl Quiescence {
    fn new(settle: Duration, started: u64) -> Self {
        Quiescence {
            settle,
            started,
            quiet_since: None,
        }
    }

    /// One look at the counters; true once they have been quiet for the settle time.
    fn observe(&mut self, now: Instant, in_flight: usize, started: u64) -> bool {
        if in_flight > 0 || started != self.started {
            // Busy now, or a request came and went since the last look: quiet (if at all)
            // only from this look on.
            self.started = started;
            self.quiet_since = (in_flight == 0).then_some(now);
            return false;
        }
        let since = *self.quiet_since.get_or_insert(now);
        now.saturating_duration_since(since) >= self.settle
    }
}

/// SIGQUIT: graceful upgrade. SIGTERM and SIGINT: graceful stop. (Pingora treats SIGINT as
/// a fast shutdown that drops in-flight requests and unflushed records; an operator's
/// Ctrl-C should lose nothing either.)
pub struct Signals;

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            // Without signal handlers the process could never stop cleanly.
            panic!("cannot install signal handlers");
        };
        tokio::select! {
            _ = quit.recv() => {
                info!("SIGQUIT received: graceful upgrade, handing listeners over");
                ShutdownSignal::GracefulUpgrade
            }
            _ = term.recv() => {
                info!("SIGTERM received: draining");
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => {
                info!("SIGINT received: draining");
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}

/// Something that must complete before the process exits (the stats writer's flush).
#[async_trait]
pub trait ExitHook: Send + Sync {
    /// Finish; called after in-flight requests are done. Called again if a request
    /// started while it ran (and has finished since).
    async fn before_exit(&self);
}

/// Waits for in-flight requests after shutdown starts, runs the exit hooks, exits 0.
pub struct Drain {
    in_flight: Arc<InFlight>,
    timeout: Duration,
    settle: Duration,
    hooks: Vec<Arc<dyn ExitHook>>,
}

impl Drain {
    /// A drain over `in_flight`, bounded by `timeout`.
    pub fn new(in_flight: Arc<InFlight>, timeout: Duration, hooks: Vec<Arc<dyn ExitHook>>) -> Self {
        Drain {
            in_flight,
            timeout,
            settle: DRAIN_SETTLE,
            hooks,
        }
    }

    /// Wait for quiet, run the hooks, and repeat while requests started during the hooks
    /// (bounded by the drain timeout). Returns how many times the hooks ran.
    async fn drain(&self) -> usize {
        let begun = Instant::now();
        let deadline = begun + self.timeout;
        let n = self.in_flight.count();
        if n > 0 {
            info!("draining {n} in-flight requests (at most {:?})", self.timeout);
        }
        let mut rounds = 0;
        loop {
            let mut quiet = Quiescence::new(self.settle, self.in_flight.started());
            loop {
                let now = Instant::now();
                if quiet.observe(now, self.in_flight.count(), self.in_flight.started()) {
                    break;
                }
                if now >= deadline {
                    let n = self.in_flight.count();
                    if n > 0 {
                        warn!("drain timeout reached with {n} requests still in flight; they are cut");
                    }
                    break;
                }
                tokio::time::sleep(DRAIN_POLL).await;
            }
            let before = self.in_flight.started();
            for hook in &self.hooks {
                hook.before_exit().await;
            }
            rounds += 1;
            let late = self.in_flight.started() - before;
            if late == 0 || Instant::now() >= deadline {
                break;
            }
            info!("{late} requests started during the final flush: draining them too");
        }
        info!("shutdown complete after {:?}", begun.elapsed());
        rounds
    }
}

/// How often the drain looks at the in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// How long the count must stay at zero, with no request started, before the exit hooks
/// run (see the module comment). Also how long an idle gateway takes to exit.
pub const DRAIN_SETTLE: Duration = Duration::from_millis(50);

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        self.drain().await;
        log::logger().flush();
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_in_flight_requests() {
        let f = Arc::new(InFlight::default());
        let a = f.enter();
        let b = f.enter();
        assert_eq!(f.count(), 2);
        drop(a);
        assert_eq!(f.count(), 1);
        drop(b);
        assert_eq!(f.count(), 0);
        assert_eq!(f.started(), 2);
    }

    const SETTLE: Duration = Duration::from_millis(50);

    #[test]
    fn quiet_means_zero_in_flight_and_none_started_for_the_settle_time() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut q = Quiescence::new(SETTLE, 0);
        assert!(
            !q.observe(ms(0), 0, 0),
            "the settle time starts at the first quiet look"
        );
        assert!(!q.observe(ms(49), 0, 0));
        assert!(q.observe(ms(50), 0, 0));
    }

    #[test]
    fn a_request_that_came_and_went_between_two_looks_restarts_the_settle_time() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut q = Quiescence::new(SETTLE, 7);
        assert!(!q.observe(ms(0), 0, 7));
        // Count back at zero, but one more request started: not quiet.
        assert!(!q.observe(ms(40), 0, 8));
        assert!(!q.observe(ms(80), 0, 8), "only 40 ms quiet");
        assert!(q.observe(ms(90), 0, 8));
        // A request in flight is never quiet.
        assert!(!q.observe(ms(200), 1, 9));
        assert!(!q.observe(ms(300), 0, 9));
        assert!(q.observe(ms(350), 0, 9));
    }

    /// Starts a request the first time it runs, as if a keep-alive request had been read
    /// while the stats writer flushed.
    struct LateRequest {
        in_flight: Arc<InFlight>,
        calls: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl ExitHook for LateRequest {
        async fn before_exit(&self) {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                let guard = self.in_flight.enter();
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    drop(guard);
                });
            }
        }
    }

    #[tokio::test]
    async fn hooks_run_again_when_a_request_started_during_them() {
        let in_flight = Arc::new(InFlight::default());
        let hook = Arc::new(LateRequest {
            in_flight: Arc::clone(&in_flight),
            calls: Default::default(),
        });
        let mut drain = Drain::new(
            Arc::clone(&in_flight),
            Duration::from_secs(20),
            vec![Arc::clone(&hook) as Arc<dyn ExitHook>],
        );
        drain.settle = Duration::ZERO;
        assert_eq!(drain.drain().await, 2);
        assert_eq!(hook.calls.load(Ordering::SeqCst), 2);
        assert_eq!(in_flight.count(), 0);
    }
}
