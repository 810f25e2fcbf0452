//! Process lifecycle: which signals stop the gateway, the phase the request path reads
//! (stopping, draining), how in-flight requests are counted, and the drain that lets
//! requests and keep-alive clients finish before the process exits.
//!
//! Pingora's own graceful stop sleeps a fixed `grace_period_seconds` (default 300 s) and
//! then drops every task, and it closes every idle keep-alive connection the moment its
//! listeners stop, racing clients that are sending their next request right then. LMGate
//! instead:
//!
//! 1. On SIGTERM or SIGINT, marks the phase [stopping](Phase::stopping) (`/healthz` answers
//!    503) and keeps serving normally for `server.shutdown_delay_seconds`, so balancers
//!    stop sending before the listeners close; then lets Pingora broadcast the shutdown.
//!    On SIGQUIT (upgrade) Pingora hands the listening sockets to the new process, both
//!    accept for 5 s, then it broadcasts.
//! 2. At the broadcast the listeners stop accepting and [`Drain`] marks the phase
//!    [draining](Phase::draining): every response from then on closes its connection
//!    (`Connection: close`), so each keep-alive client's next request is answered and the
//!    one after goes to a new connection. Idle keep-alive connections stay open meanwhile
//!    (see `connections`).
//! 3. The drain waits, bounded by `server.drain_timeout_seconds`, until every client
//!    connection has closed, or until no request is in flight and none has started or
//!    ended for [`IDLE_GRACE`]: then it lets Pingora close the connections that stayed
//!    idle. At the deadline, requests still in flight are cut (their client sockets shut
//!    down) so that they end through Pingora's error path and are recorded as truncated.
//! 4. It runs the exit hooks (the stats writer flushes and syncs), checks that no request
//!    started meanwhile (else drains and flushes again), and exits 0.
//!
//! Pingora's grace period is kept only as a backstop, a little longer than the drain.
//!
//! Why a settle time ([`DRAIN_SETTLE`]) even when no connection is left: a connection is
//! counted once its task runs, and a request once Pingora has read its head (`new_ctx`).
//! A connection accepted just before the listener stopped may not have run yet, and a
//! request whose bytes arrived just as the idle connections were released is still read
//! (Pingora reads before it checks for shutdown). Both are read without waiting on the
//! network, so a short quiet period covers them.

use crate::connections::{cut_client_connections, ClientConnections};
use async_trait::async_trait;
use log::{error, info, warn};
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
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

/// Where the process is in its stop, as the request path sees it: one relaxed atomic load
/// per question, no lock.
#[derive(Debug, Default)]
pub struct Phase(AtomicU8);

const STOPPING: u8 = 1;
const DRAINING: u8 = 2;

impl Phase {
    /// A stop (SIGTERM or SIGINT) was asked for: `/healthz` answers 503 from then on,
    /// through the shutdown delay and the drain. An upgrade does not set it: the service
    /// stays healthy, in the new process.
    pub fn stopping(&self) -> bool {
        self.0.load(Ordering::Relaxed) & STOPPING != 0
    }

    /// The listeners have stopped accepting (after an upgrade's hand-over, or after a
    /// stop's delay): each response closes its connection.
    pub fn draining(&self) -> bool {
        self.0.load(Ordering::Relaxed) & DRAINING != 0
    }

    /// The `/healthz` answer in this phase: status and body.
    pub fn health(&self) -> (u16, &'static str) {
        if self.stopping() {
            (503, "stopping")
        } else {
            (200, "ok")
        }
    }

    fn mark(&self, bit: u8) {
        self.0.fetch_or(bit, Ordering::Relaxed);
    }
}

/// Decides when requests have been quiet: none in flight, and none started, for some time
/// in a row. Pure: the caller supplies the clock and the counters.
#[derive(Debug)]
struct Quiescence {
    started: u64,
    quiet_since: Option<Instant>,
}

impl Quiescence {
    fn new(started: u64) -> Self {
        Quiescence {
            started,
            quiet_since: None,
        }
    }

    /// One look at the counters: how long they have been quiet (zero while busy; the
    /// quiet time starts at the first quiet look).
    fn observe(&mut self, now: Instant, in_flight: usize, started: u64) -> Duration {
        if in_flight > 0 || started != self.started {
            // Busy now, or a request came and went since the last look: quiet (if at all)
            // only from this look on.
            self.started = started;
            self.quiet_since = (in_flight == 0).then_some(now);
            return Duration::ZERO;
        }
        let since = *self.quiet_since.get_or_insert(now);
        now.saturating_duration_since(since)
    }
}

/// Where a drain is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Idle keep-alive connections are kept open for their next request.
    Open,
    /// Pingora was let close the idle connections, at this instant.
    Released(Instant),
    /// The deadline passed with requests in flight; their connections were cut then.
    Cut(Instant),
}

/// One look at the process during a drain.
#[derive(Debug, Clone, Copy)]
struct Look {
    now: Instant,
    /// Client connections open (idle ones included).
    connections: usize,
    /// Requests in flight.
    in_flight: usize,
    /// How long no request has been in flight and none has started (see [`Quiescence`]).
    quiet_for: Duration,
}

/// What the drain does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Look again shortly.
    Wait,
    /// Let Pingora close the idle keep-alive connections.
    ReleaseIdle,
    /// Shut down the client connections of the requests still in flight.
    Cut,
    /// Run the exit hooks.
    Finish,
}

/// The drain's decisions, pure: the caller supplies the clock and the counters.
#[derive(Debug, Clone, Copy)]
struct DrainPlan {
    /// Quiet time before finishing (see the module comment).
    settle: Duration,
    /// How long every connection must have been idle before idle ones are closed.
    grace: Duration,
    /// `server.drain_timeout_seconds` after the broadcast.
    deadline: Instant,
    /// How long cut requests get to end (and log) before the hooks run anyway.
    cut_wait: Duration,
}

impl DrainPlan {
    fn step(&self, stage: Stage, look: &Look) -> Step {
        let idle = look.in_flight == 0;
        let settled = idle && look.quiet_for >= self.settle;
        let late = look.now >= self.deadline;
        let since = |at: Instant| look.now.saturating_duration_since(at);
        match stage {
            Stage::Open | Stage::Released(_) if late && !idle => Step::Cut,
            // Every client has gone (each keep-alive one after a `Connection: close`).
            Stage::Open if settled && look.connections == 0 => Step::Finish,
            // Whatever connection is still open has been idle for the whole grace.
            Stage::Open if idle && (look.quiet_for >= self.grace || late) => Step::ReleaseIdle,
            Stage::Released(at) if settled && since(at) >= self.settle => Step::Finish,
            Stage::Cut(at) if idle || since(at) >= self.cut_wait => Step::Finish,
            _ => Step::Wait,
        }
    }
}

/// SIGQUIT: graceful upgrade. SIGTERM and SIGINT: graceful stop, after the shutdown delay.
/// (Pingora treats SIGINT as a fast shutdown that drops in-flight requests and unflushed
/// records; an operator's Ctrl-C should lose nothing either.)
pub struct Signals {
    phase: Arc<Phase>,
    delay: Duration,
}

impl Signals {
    /// Signals that mark `phase` stopping and wait `shutdown_delay` before the drain.
    pub fn new(phase: Arc<Phase>, shutdown_delay: Duration) -> Self {
        Signals {
            phase,
            delay: shutdown_delay,
        }
    }
}

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
        // Until now SIGTERM had its default action (Pingora polls this only once its
        // services run): the harness waits for this line before it signals.
        info!("signal handlers installed");
        let stop = tokio::select! {
            _ = quit.recv() => {
                info!("SIGQUIT received: graceful upgrade, handing listeners over");
                return ShutdownSignal::GracefulUpgrade;
            }
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        self.phase.mark(STOPPING);
        if self.delay.is_zero() {
            info!("{stop} received: draining");
            return ShutdownSignal::GracefulTerminate;
        }
        info!(
            "{stop} received: /healthz answers 503, serving on for {:?} before draining \
             (another SIGTERM or SIGINT drains now)",
            self.delay
        );
        // A SIGQUIT meanwhile is ignored: the process is stopping, not upgrading.
        tokio::select! {
            _ = tokio::time::sleep(self.delay) => info!("shutdown delay over: draining"),
            _ = term.recv() => info!("SIGTERM received again: draining now"),
            _ = int.recv() => info!("SIGINT received again: draining now"),
        }
        ShutdownSignal::GracefulTerminate
    }
}

/// Something that must complete before the process exits (the stats writer's flush).
#[async_trait]
pub trait ExitHook: Send + Sync {
    /// Finish; called after in-flight requests are done. Called again if a request
    /// started while it ran (and has finished since).
    async fn before_exit(&self);
}

/// What a [`Drain`] is built from.
pub struct DrainParts {
    /// The request count the proxy keeps.
    pub in_flight: Arc<InFlight>,
    /// The proxy service's client connections.
    pub connections: Arc<ClientConnections>,
    /// The phase the proxy reads.
    pub phase: Arc<Phase>,
    /// Ports of the gateway's listeners (their connections are cut at the deadline).
    pub listen_ports: Vec<u16>,
    /// `server.drain_timeout_seconds`.
    pub timeout: Duration,
    /// Run before exit, in order.
    pub hooks: Vec<Arc<dyn ExitHook>>,
}

/// After shutdown starts: waits for in-flight requests and keep-alive clients, runs the
/// exit hooks, exits 0.
pub struct Drain {
    in_flight: Arc<InFlight>,
    connections: Arc<ClientConnections>,
    phase: Arc<Phase>,
    ports: Vec<u16>,
    timeout: Duration,
    settle: Duration,
    grace: Duration,
    hooks: Vec<Arc<dyn ExitHook>>,
}

impl Drain {
    /// A drain bounded by `parts.timeout`.
    pub fn new(parts: DrainParts) -> Self {
        Drain {
            in_flight: parts.in_flight,
            connections: parts.connections,
            phase: parts.phase,
            ports: parts.listen_ports,
            timeout: parts.timeout,
            settle: DRAIN_SETTLE,
            grace: IDLE_GRACE,
            hooks: parts.hooks,
        }
    }

    /// Wait for quiet, run the hooks, and repeat while requests started during the hooks
    /// (bounded by the drain timeout). Returns how many times the hooks ran.
    async fn drain(&self) -> usize {
        self.phase.mark(DRAINING);
        let begun = Instant::now();
        let plan = DrainPlan {
            settle: self.settle,
            grace: self.grace.min(self.timeout),
            deadline: begun + self.timeout,
            cut_wait: CUT_WAIT,
        };
        let (conns, n) = (self.connections.open(), self.in_flight.count());
        if conns > 0 || n > 0 {
            info!(
                "draining {n} in-flight requests on {conns} client connections (at most {:?})",
                self.timeout
            );
        }
        let mut stage = Stage::Open;
        let mut rounds = 0;
        loop {
            self.wait(&plan, &mut stage).await;
            let before = self.in_flight.started();
            for hook in &self.hooks {
                hook.before_exit().await;
            }
            rounds += 1;
            let late = self.in_flight.started() - before;
            if late == 0 || Instant::now() >= plan.deadline {
                break;
            }
            info!("{late} requests started during the final flush: draining them too");
        }
        info!("shutdown complete after {:?}", begun.elapsed());
        rounds
    }

    /// Look at the counters every [`DRAIN_POLL`] and act on the plan until it says finish.
    async fn wait(&self, plan: &DrainPlan, stage: &mut Stage) {
        let mut quiet = Quiescence::new(self.in_flight.started());
        loop {
            let now = Instant::now();
            let in_flight = self.in_flight.count();
            let look = Look {
                now,
                connections: self.connections.open(),
                in_flight,
                quiet_for: quiet.observe(now, in_flight, self.in_flight.started()),
            };
            match plan.step(*stage, &look) {
                Step::Wait => tokio::time::sleep(DRAIN_POLL).await,
                Step::ReleaseIdle => {
                    if look.connections > 0 {
                        info!("closing {} idle keep-alive connections", look.connections);
                    }
                    self.connections.release_idle();
                    *stage = Stage::Released(now);
                }
                Step::Cut => {
                    self.connections.release_idle();
                    let cut = cut_client_connections(&self.ports);
                    warn!(
                        "drain timeout reached with {in_flight} requests in flight: \
                         {cut} client connections cut, their records say truncated"
                    );
                    *stage = Stage::Cut(now);
                }
                Step::Finish => {
                    if matches!(stage, Stage::Cut(_)) && in_flight > 0 {
                        error!("{in_flight} requests still in flight after the cut: no record for them");
                    }
                    return;
                }
            }
        }
    }
}

/// How often the drain looks at the counters.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// How long the counts must stay quiet before the exit hooks run (see the module comment).
/// Also how long an idle gateway with no client connection takes to exit.
pub const DRAIN_SETTLE: Duration = Duration::from_millis(50);
/// How long every open client connection must have been idle (no request in flight, none
/// started) before the drain lets Pingora close the idle keep-alive ones. A client that
/// sends within it is answered (with `Connection: close`); one idle longer may see its
/// connection close (capped by `server.drain_timeout_seconds`).
pub const IDLE_GRACE: Duration = Duration::from_secs(2);
/// How long requests cut at the drain deadline get to end and write their records.
const CUT_WAIT: Duration = Duration::from_secs(1);

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

    #[test]
    fn health_is_503_once_a_stop_is_asked_for_and_draining_is_separate() {
        let p = Phase::default();
        assert_eq!(p.health(), (200, "ok"));
        assert!(!p.draining());
        p.mark(DRAINING); // an upgrade's drain: still healthy
        assert_eq!(p.health(), (200, "ok"));
        assert!(p.draining());
        p.mark(STOPPING);
        assert_eq!(p.health(), (503, "stopping"));
        assert!(p.draining() && p.stopping());
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn quiet_time_starts_at_the_first_quiet_look() {
        let t0 = Instant::now();
        let mut q = Quiescence::new(0);
        assert_eq!(q.observe(ms(t0, 0), 0, 0), Duration::ZERO);
        assert_eq!(q.observe(ms(t0, 49), 0, 0), Duration::from_millis(49));
        assert_eq!(q.observe(ms(t0, 50), 0, 0), Duration::from_millis(50));
    }

    #[test]
    fn a_request_that_came_and_went_between_two_looks_restarts_the_quiet_time() {
        let t0 = Instant::now();
        let mut q = Quiescence::new(7);
        assert_eq!(q.observe(ms(t0, 0), 0, 7), Duration::ZERO);
        // Count back at zero, but one more request started: not quiet.
        assert_eq!(q.observe(ms(t0, 40), 0, 8), Duration::ZERO);
        assert_eq!(q.observe(ms(t0, 80), 0, 8), Duration::from_millis(40));
        // A request in flight is never quiet, and its end starts the quiet time.
        assert_eq!(q.observe(ms(t0, 200), 1, 9), Duration::ZERO);
        assert_eq!(q.observe(ms(t0, 300), 0, 9), Duration::ZERO);
        assert_eq!(q.observe(ms(t0, 350), 0, 9), Duration::from_millis(50));
    }

    const SETTLE: Duration = Duration::from_millis(50);
    const GRACE: Duration = Duration::from_secs(2);

    fn plan(t0: Instant) -> DrainPlan {
        DrainPlan {
            settle: SETTLE,
            grace: GRACE,
            deadline: t0 + Duration::from_secs(30),
            cut_wait: Duration::from_secs(1),
        }
    }

    fn look(now: Instant, connections: usize, in_flight: usize, quiet_ms: u64) -> Look {
        Look {
            now,
            connections,
            in_flight,
            quiet_for: Duration::from_millis(quiet_ms),
        }
    }

    #[test]
    fn once_every_client_has_gone_the_drain_finishes_after_the_settle_time() {
        let t0 = Instant::now();
        let p = plan(t0);
        assert_eq!(p.step(Stage::Open, &look(ms(t0, 5), 0, 0, 5)), Step::Wait);
        assert_eq!(p.step(Stage::Open, &look(ms(t0, 50), 0, 0, 50)), Step::Finish);
    }

    #[test]
    fn idle_connections_are_kept_open_until_nothing_has_happened_for_the_grace() {
        let t0 = Instant::now();
        let p = plan(t0);
        // Three idle keep-alive connections: they may still send their next request.
        assert_eq!(p.step(Stage::Open, &look(ms(t0, 100), 3, 0, 100)), Step::Wait);
        assert_eq!(p.step(Stage::Open, &look(ms(t0, 1999), 3, 0, 1999)), Step::Wait);
        assert_eq!(
            p.step(Stage::Open, &look(ms(t0, 2000), 3, 0, 2000)),
            Step::ReleaseIdle
        );
        // Then finish once settled after the release (a request read at the release
        // instant has started by then, and resets the quiet time).
        let released = Stage::Released(ms(t0, 2000));
        assert_eq!(p.step(released, &look(ms(t0, 2010), 1, 0, 2010)), Step::Wait);
        assert_eq!(p.step(released, &look(ms(t0, 2020), 1, 1, 0)), Step::Wait);
        assert_eq!(p.step(released, &look(ms(t0, 2100), 0, 0, 40)), Step::Wait);
        assert_eq!(p.step(released, &look(ms(t0, 2110), 0, 0, 50)), Step::Finish);
    }

    #[test]
    fn a_stream_in_flight_keeps_idle_connections_open_and_finishes_on_its_own() {
        let t0 = Instant::now();
        let p = plan(t0);
        // A long stream and two idle connections: nothing is closed while it runs.
        assert_eq!(p.step(Stage::Open, &look(ms(t0, 20_000), 3, 1, 0)), Step::Wait);
        // The stream has ended: the idle connections get their grace from then on.
        assert_eq!(p.step(Stage::Open, &look(ms(t0, 21_000), 2, 0, 1000)), Step::Wait);
        assert_eq!(
            p.step(Stage::Open, &look(ms(t0, 22_000), 2, 0, 2000)),
            Step::ReleaseIdle
        );
    }

    #[test]
    fn at_the_deadline_requests_in_flight_are_cut_and_idle_connections_released() {
        let t0 = Instant::now();
        let p = plan(t0);
        assert_eq!(p.step(Stage::Open, &look(ms(t0, 30_000), 2, 1, 0)), Step::Cut);
        let released = Stage::Released(ms(t0, 29_000));
        assert_eq!(p.step(released, &look(ms(t0, 30_000), 2, 1, 0)), Step::Cut);
        // Nothing in flight at the deadline: no cut, the idle ones are released at once.
        assert_eq!(
            p.step(Stage::Open, &look(ms(t0, 30_000), 2, 0, 100)),
            Step::ReleaseIdle
        );
        // After the cut: finish when the cut requests have ended, or after the wait.
        let cut = Stage::Cut(ms(t0, 30_000));
        assert_eq!(p.step(cut, &look(ms(t0, 30_010), 1, 1, 0)), Step::Wait);
        assert_eq!(p.step(cut, &look(ms(t0, 30_020), 0, 0, 0)), Step::Finish);
        assert_eq!(p.step(cut, &look(ms(t0, 31_000), 1, 1, 0)), Step::Finish);
    }

    /// Starts a request the first time it runs, as if a keep-alive request had been read
    /// while the stats writer flushed.
    struct LateRequest {
        in_flight: Arc<InFlight>,
        calls: AtomicUsize,
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

    fn drain_over(in_flight: &Arc<InFlight>, hooks: Vec<Arc<dyn ExitHook>>) -> Drain {
        let mut drain = Drain::new(DrainParts {
            in_flight: Arc::clone(in_flight),
            connections: Arc::new(ClientConnections::default()),
            phase: Arc::new(Phase::default()),
            listen_ports: vec![],
            timeout: Duration::from_secs(20),
            hooks,
        });
        drain.settle = Duration::ZERO;
        drain
    }

    #[tokio::test]
    async fn hooks_run_again_when_a_request_started_during_them() {
        let in_flight = Arc::new(InFlight::default());
        let hook = Arc::new(LateRequest {
            in_flight: Arc::clone(&in_flight),
            calls: Default::default(),
        });
        let drain = drain_over(&in_flight, vec![Arc::clone(&hook) as Arc<dyn ExitHook>]);
        assert_eq!(drain.drain().await, 2);
        assert_eq!(hook.calls.load(Ordering::SeqCst), 2);
        assert_eq!(in_flight.count(), 0);
        assert!(drain.phase.draining(), "the drain marks the phase for the proxy");
    }
}
