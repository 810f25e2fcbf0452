//! Process lifecycle: which signals stop the gateway, how in-flight requests are counted,
//! and the drain that lets them finish before the process exits.
//!
//! Pingora's own graceful stop sleeps a fixed `grace_period_seconds` (default 300 s) and
//! then drops every task. LMGate instead waits exactly as long as needed: when Pingora
//! broadcasts shutdown (listeners stop accepting), [`Drain`] waits until no request is in
//! flight (bounded by `server.drain_timeout_seconds`), runs the exit hooks (the stats writer
//! flushes and syncs), and exits 0. An idle gateway exits at once. Pingora's grace period
//! is kept only as a backstop, a little longer than the drain timeout.

use async_trait::async_trait;
use log::{info, warn};
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// Requests between `new_ctx` and the drop of their context.
#[derive(Debug, Default)]
pub struct InFlight(AtomicUsize);

impl InFlight {
    /// Count one request for as long as the guard lives.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(Arc::clone(self))
    }

    /// Requests in flight now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Decrements the in-flight count when dropped (with the request context).
#[derive(Debug)]
pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
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
    /// Finish; called once, after in-flight requests are done.
    async fn before_exit(&self);
}

/// Waits for in-flight requests after shutdown starts, runs the exit hooks, exits 0.
pub struct Drain {
    in_flight: Arc<InFlight>,
    timeout: Duration,
    hooks: Vec<Arc<dyn ExitHook>>,
}

impl Drain {
    /// A drain over `in_flight`, bounded by `timeout`.
    pub fn new(in_flight: Arc<InFlight>, timeout: Duration, hooks: Vec<Arc<dyn ExitHook>>) -> Self {
        Drain {
            in_flight,
            timeout,
            hooks,
        }
    }
}

/// How often the drain looks at the in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(10);

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut n = self.in_flight.count();
        if n > 0 {
            info!("draining {n} in-flight requests (at most {:?})", self.timeout);
        }
        while n > 0 && Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
            n = self.in_flight.count();
        }
        if n > 0 {
            warn!("drain timeout reached with {n} requests still in flight; they are cut");
        }
        for hook in &self.hooks {
            hook.before_exit().await;
        }
        info!("shutdown complete after {:?}", started.elapsed());
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
    }
}
