//! Give freed heap memory back to the OS once load has dropped.
//!
//! glibc's allocator keeps what a burst of streams freed: measured here, RSS stayed at
//! 622 MB after 9,900 held streams closed. Nothing leaked, but to an operator (and to a
//! container memory limit) that is growth. `malloc_trim(0)` returns every whole free page
//! of every arena. It walks the heap under the arena locks, so it runs only when the
//! number of requests in flight has fallen to half of its peak since the last trim (and
//! that peak was large enough to matter), at most once per check interval, never on a
//! steady load.

use crate::lifecycle::InFlight;
use async_trait::async_trait;
use log::debug;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the in-flight count is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// A peak below this many concurrent requests is not worth a trim.
const MIN_PEAK: usize = 256;

/// The trim decision, kept pure for tests: `peak` is the highest in-flight count seen
/// since the last trim.
#[derive(Debug, Default)]
pub struct TrimPolicy {
    peak: usize,
}

impl TrimPolicy {
    /// Note the current in-flight count; `true` when now is the time to trim.
    pub fn observe(&mut self, in_flight: usize) -> bool {
        self.peak = self.peak.max(in_flight);
        if self.peak >= MIN_PEAK && in_flight <= self.peak / 2 {
            self.peak = in_flight;
            return true;
        }
        false
    }
}

/// Background service: samples the in-flight count and trims after a drop.
pub struct HeapTrimmer {
    in_flight: Arc<InFlight>,
}

impl HeapTrimmer {
    /// A trimmer watching `in_flight`.
    pub fn new(in_flight: Arc<InFlight>) -> Self {
        HeapTrimmer { in_flight }
    }
}

/// Return free heap pages to the OS. A no-op where the allocator is not glibc's.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
    {
        // SAFETY: malloc_trim only inspects and releases the allocator's free memory.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc"))))]
    {
        false
    }
}

#[async_trait]
impl BackgroundService for HeapTrimmer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut policy = TrimPolicy::default();
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = self.in_flight.count();
            if policy.observe(now) {
                let t = Instant::now();
                let released = trim();
                debug!(
                    "heap trim at {now} requests in flight: released={released} in {:?}",
                    t.elapsed()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_after_a_burst_has_halved_and_never_on_steady_load() {
        let mut p = TrimPolicy::default();
        // Steady small load: never.
        assert!((0..100).all(|_| !p.observe(50)));
        // A burst to 10,000, still high: not yet.
        assert!(!p.observe(10_000));
        assert!(!p.observe(6_000));
        // Down to half the peak: trim, once.
        assert!(p.observe(5_000));
        assert!(!p.observe(5_000));
        // Falling further: again only at half of the new reference.
        assert!(!p.observe(3_000));
        assert!(p.observe(2_000));
        assert!(p.observe(0), "a drop from 2,000 to idle is still worth one trim");
        assert!(!p.observe(0));
    }
}
