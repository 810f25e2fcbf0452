//! The stats writer: usage records go from the `logging` hook over a bounded channel to a
//! background service that appends them as JSON lines.
//!
//! - The hook never waits: [`StatsSink::submit`] is a `try_send`; a full channel drops the
//!   record and counts it (with a rate-limited error log).
//! - The writer buffers and appends every `flush_interval` or when the buffer passes
//!   [`FLUSH_BYTES`], in whole lines with `O_APPEND`, under an advisory lock on a sidecar
//!   `.lock` file, so two processes (old and new during a graceful upgrade) never
//!   interleave lines or rotate the same file twice.
//! - Rotation at `rotate_bytes`: the file is renamed with a UTC timestamp suffix
//!   (`stats.jsonl.20261123T101530.123Z`, plus `.1`, `.2`... if taken).
//! - A failing disk keeps records in a bounded backlog and retries; what does not fit is
//!   dropped and counted. A partial write keeps only the unwritten remainder, so no line is
//!   written twice.
//! - At exit ([`StatsFinisher`], run by `lifecycle::Drain` after in-flight requests end),
//!   the channel is drained, everything is written and the file is synced.

use crate::config::StatsConfig;
use crate::lifecycle::ExitHook;
use crate::record::UsageRecord;
use async_trait::async_trait;
use log::{error, info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Buffered bytes that trigger a write before the flush interval.
pub const FLUSH_BYTES: usize = 256 * 1024;
/// Most bytes kept while the disk is failing; beyond it new records are dropped.
pub const MAX_BACKLOG_BYTES: usize = 64 * 1024 * 1024;
/// How often the writer takes what the proxy queued. At 50,000 records/s this is 1,250
/// records a tick, far below the default channel capacity.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Retry period while the disk is failing.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// How long the final flush keeps retrying a failing disk.
const FINAL_FLUSH_BUDGET: Duration = Duration::from_secs(5);
/// At most one "dropped" error log per this many seconds.
const DROP_LOG_EVERY_SECS: u64 = 10;

/// Counters shared by the proxy and the writer (exposed as metrics later).
#[derive(Debug, Default)]
pub struct StatsCounters {
    /// Records written to disk.
    pub written: AtomicU64,
    /// Records dropped (channel full, backlog full, writer gone).
    pub dropped: AtomicU64,
    /// Records waiting in the writer's buffer.
    pub backlog: AtomicU64,
    /// Failed write attempts.
    pub write_errors: AtomicU64,
}

/// The proxy's end of the channel.
pub struct StatsSink {
    tx: mpsc::Sender<UsageRecord>,
    counters: Arc<StatsCounters>,
    last_drop_log: AtomicU64,
}

impl StatsSink {
    /// Hand a record to the writer without waiting. A full channel drops it (counted).
    pub fn submit(&self, record: UsageRecord) {
        if self.tx.try_send(record).is_err() {
            let n = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let last = self.last_drop_log.load(Ordering::Relaxed);
            if now >= last + DROP_LOG_EVERY_SECS
                && self
                    .last_drop_log
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                error!("stats channel full: usage record dropped ({n} dropped so far)");
            }
        }
    }

    /// The shared counters.
    pub fn counters(&self) -> &Arc<StatsCounters> {
        &self.counters
    }
}

type FinishRequest = oneshot::Sender<()>;

/// The writer service.
pub struct StatsWriter {
    rx: Mutex<Option<(mpsc::Receiver<UsageRecord>, mpsc::Receiver<FinishRequest>)>>,
    target: Mutex<FileTarget>,
    flush_interval: Duration,
    counters: Arc<StatsCounters>,
}

/// Asks the writer for its final flush; an [`ExitHook`].
pub struct StatsFinisher {
    tx: mpsc::Sender<FinishRequest>,
}

#[async_trait]
impl ExitHook for StatsFinisher {
    async fn before_exit(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(ack).await.is_ok() {
            let _ = tokio::time::timeout(FINAL_FLUSH_BUDGET + Duration::from_secs(5), done).await;
        }
    }
}

/// Build the three ends: sink (proxy), writer (service), finisher (exit hook).
pub fn stats_channel(cfg: &StatsConfig) -> (StatsSink, StatsWriter, StatsFinisher) {
    let (tx, rx) = mpsc::channel(cfg.channel_capacity);
    let (ftx, frx) = mpsc::channel(1);
    let counters = Arc::new(StatsCounters::default());
    (
        StatsSink {
            tx,
            counters: Arc::clone(&counters),
            last_drop_log: AtomicU64::new(0),
        },
        StatsWriter {
            rx: Mutex::new(Some((rx, frx))),
            target: Mutex::new(FileTarget::new(cfg.output_path.clone(), cfg.rotate_bytes)),
            flush_interval: cfg.flush_interval,
            counters,
        },
        StatsFinisher { tx: ftx },
    )
}

/// Serialized records not yet on disk.
#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    records: u64,
    /// Byte offsets where each buffered record ends (to count what a partial write covered).
    ends: Vec<usize>,
}

impl Buffer {
    fn push(&mut self, r: &UsageRecord) {
        r.write_line(&mut self.bytes);
        self.records += 1;
        self.ends.push(self.bytes.len());
    }
    /// Forget the first `n` bytes (written); returns how many whole records that completed.
    fn consume(&mut self, n: usize) -> u64 {
        self.bytes.drain(..n);
        let done = self.ends.iter().take_while(|&&e| e <= n).count();
        self.ends.drain(..done);
        for e in &mut self.ends {
            *e -= n;
        }
        self.records -= done as u64;
        done as u64
    }
}

impl StatsWriter {
    fn write_out(&self, buf: &mut Buffer) -> bool {
        if buf.bytes.is_empty() {
            return true;
        }
        let mut target = self.target.lock().unwrap_or_else(|p| p.into_inner());
        let (written, err) = target.append(&buf.bytes);
        let done = buf.consume(written);
        self.counters.written.fetch_add(done, Ordering::Relaxed);
        self.counters.backlog.store(buf.records, Ordering::Relaxed);
        match err {
            None => true,
            Some(e) => {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                if target.failing_since.is_none() {
                    target.failing_since = Some(Instant::now());
                    error!(
                        "stats file {} unwritable, keeping {} records in memory and retrying: {e}",
                        target.path.display(),
                        buf.records
                    );
                }
                false
            }
        }
    }

    fn accept(&self, buf: &mut Buffer, r: UsageRecord) {
        if buf.bytes.len() >= MAX_BACKLOG_BYTES {
            let n = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                error!("stats backlog full ({MAX_BACKLOG_BYTES} bytes): usage record dropped ({n} so far)");
            }
            return;
        }
        buf.push(&r);
        self.counters.backlog.store(buf.records, Ordering::Relaxed);
    }

    fn final_flush(&self, buf: &mut Buffer) {
        let deadline = Instant::now() + FINAL_FLUSH_BUDGET;
        while !self.write_out(buf) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if !buf.bytes.is_empty() {
            self.counters.dropped.fetch_add(buf.records, Ordering::Relaxed);
            error!(
                "stats: {} usage records could not be written before exit",
                buf.records
            );
        }
        let target = self.target.lock().unwrap_or_else(|p| p.into_inner());
        target.sync();
        info!(
            "stats flushed: {} records written, {} dropped",
            self.counters.written.load(Ordering::Relaxed),
            self.counters.dropped.load(Ordering::Relaxed)
        );
    }
}

#[async_trait]
impl BackgroundService for StatsWriter {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // Shutdown is not our cue: records keep coming while requests drain. The final
        // flush is requested by `lifecycle::Drain` through `StatsFinisher`.
        let Some((mut rx, mut finish)) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let mut buf = Buffer::default();
        let mut tick = tokio::time::interval(self.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(RETRY_INTERVAL);
        // The writer polls the channel on a short tick instead of awaiting `recv()`: a
        // waiting receiver would be woken by every `try_send`, a cross-thread wake-up (two
        // context switches) per request on the proxy's core. Polling never registers a
        // waker, so the proxy only pushes.
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = poll.tick() => loop {
                    match rx.try_recv() {
                        Ok(r) => {
                            self.accept(&mut buf, r);
                            if buf.bytes.len() >= FLUSH_BYTES && self.target_healthy() {
                                self.write_out(&mut buf);
                            }
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            self.final_flush(&mut buf);
                            return;
                        }
                    }
                },
                _ = tick.tick() => { self.write_out(&mut buf); }
                _ = retry.tick(), if !buf.bytes.is_empty() && !self.target_healthy() => {
                    if self.write_out(&mut buf) {
                        let mut t = self.target.lock().unwrap_or_else(|p| p.into_inner());
                        if t.failing_since.take().is_some() {
                            warn!("stats file {} writable again, backlog written", t.path.display());
                        }
                    }
                }
                Some(ack) = finish.recv() => {
                    while let Ok(r) = rx.try_recv() {
                        self.accept(&mut buf, r);
                    }
                    self.final_flush(&mut buf);
                    let _ = ack.send(());
                }
            }
        }
    }
}

impl StatsWriter {
    fn target_healthy(&self) -> bool {
        self.target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failing_since
            .is_none()
    }
}

/// The stats file, its lock file, and rotation.
struct FileTarget {
    path: PathBuf,
    lock_path: PathBuf,
    rotate_bytes: u64,
    file: Option<(File, u64)>,
    failing_since: Option<Instant>,
}

impl FileTarget {
    fn new(path: PathBuf, rotate_bytes: u64) -> Self {
        let mut lock_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        lock_name.push(".lock");
        FileTarget {
            lock_path: path.with_file_name(lock_name),
            path,
            rotate_bytes,
            file: None,
            failing_since: None,
        }
    }

    /// Append `data` (whole lines). Returns bytes written and the error that stopped it.
    fn append(&mut self, data: &[u8]) -> (usize, Option<std::io::Error>) {
        match self.append_locked(data) {
            Ok(n) => (n, None),
            Err((n, e)) => (n, Some(e)),
        }
    }

    fn append_locked(&mut self, data: &[u8]) -> Result<usize, (usize, std::io::Error)> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| (0, e))?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| (0, e))?;
        lock.lock().map_err(|e| (0, e))?;
        // Whoever rotated last, the path is the truth: reopen when it changed under us.
        let on_disk = std::fs::metadata(&self.path).ok();
        let ours = self.file.as_ref().map(|(_, ino)| *ino);
        if on_disk.as_ref().map(|m| m.ino()) != ours {
            self.file = None;
        }
        if let Some(m) = &on_disk {
            if m.size() > 0 && m.size() + data.len() as u64 > self.rotate_bytes {
                let to = rotated_name(&self.path);
                std::fs::rename(&self.path, &to).map_err(|e| (0, e))?;
                info!("stats file rotated to {}", to.display());
                self.file = None;
            }
        }
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| (0, e))?;
            let ino = f.metadata().map_err(|e| (0, e))?.ino();
            self.file = Some((f, ino));
        }
        let (f, _) = self.file.as_mut().expect("opened above");
        let mut written = 0;
        while written < data.len() {
            match f.write(&data[written..]) {
                Ok(0) => return Err((written, std::io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // The handle may be stale (file removed): reopen next time.
                    self.file = None;
                    return Err((written, e));
                }
            }
        }
        drop(lock); // unlocks
        Ok(written)
    }

    fn sync(&self) {
        if let Some((f, _)) = &self.file {
            let _ = f.sync_data();
        }
    }
}

/// `stats.jsonl` -> `stats.jsonl.20261123T101530.123Z`, with `.1`, `.2`... when taken.
fn rotated_name(path: &Path) -> PathBuf {
    let stamp: String = crate::record::format_timestamp(SystemTime::now())
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let base = format!(
        "{}.{stamp}",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    );
    let mut candidate = path.with_file_name(&base);
    let mut n = 1;
    while candidate.exists() {
        candidate = path.with_file_name(format!("{base}.{n}"));
        n += 1;
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> UsageRecord {
        crate::record::UsageRecord::build(crate::record::RecordParts {
            started_at: SystemTime::now(),
            lmgate_id: Some("t".into()),
            provider: Some("openai".into()),
            endpoint: &format!("/openai/{i}"),
            usage: Default::default(),
            url_model: None,
            status: 200,
            masked_key: None,
            error_type: None,
            usage_status: crate::usage::UsageStatus::Absent,
            stream: false,
            duration_ms: i,
            cost_micros: None,
            cost_status: crate::cost::CostStatus::NoUsage,
            request_id: crate::request_id::next(1),
        })
    }

    fn lines_in(dir: &Path) -> Vec<String> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.to_string_lossy().ends_with(".lock"))
            .collect();
        files.sort();
        files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn rotation_keeps_every_line_once_with_unique_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("stats.jsonl");
        let mut t = FileTarget::new(path.clone(), 4096);
        let mut sent = 0;
        for batch in 0..40 {
            let mut b = Buffer::default();
            for _ in 0..5 {
                b.push(&rec(sent));
                sent += 1;
            }
            let (n, e) = t.append(&b.bytes);
            assert!(e.is_none(), "batch {batch}: {e:?}");
            assert_eq!(n, b.bytes.len());
        }
        let lines = lines_in(path.parent().unwrap());
        assert_eq!(lines.len() as u64, sent);
        let mut ends: Vec<u64> = lines
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["duration_ms"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        ends.sort();
        assert_eq!(ends, (0..sent).collect::<Vec<_>>());
        let files = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert!(files > 3, "rotated several times");
        for f in std::fs::read_dir(path.parent().unwrap()).unwrap() {
            let p = f.unwrap().path();
            if !p.to_string_lossy().ends_with(".lock") {
                assert!(std::fs::metadata(&p).unwrap().len() <= 4096, "{p:?}");
            }
        }
    }

    #[test]
    fn a_removed_directory_is_recreated_and_the_buffer_accounting_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d").join("stats.jsonl");
        let mut t = FileTarget::new(path.clone(), 1 << 20);
        assert!(t.append(b"{\"a\":1}\n").1.is_none());
        std::fs::remove_dir_all(dir.path().join("d")).unwrap();
        assert!(t.append(b"{\"a\":2}\n").1.is_none());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":2}\n");

        let mut b = Buffer::default();
        b.push(&rec(1));
        b.push(&rec(2));
        let first = b.ends[0];
        assert_eq!(b.consume(first - 1), 0);
        assert_eq!(b.consume(1), 1);
        assert_eq!(b.records, 1);
        let rest = b.bytes.len();
        assert_eq!(b.consume(rest), 1);
        assert!(b.bytes.is_empty() && b.ends.is_empty());
    }

    #[test]
    fn an_unwritable_path_reports_an_error_not_a_panic() {
        let mut t = FileTarget::new(PathBuf::from("/dev/full/stats.jsonl"), 1 << 20);
        let (n, e) = t.append(b"x\n");
        assert_eq!(n, 0);
        assert!(e.is_some());
    }
}
