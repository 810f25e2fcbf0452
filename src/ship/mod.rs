//! The stats files as an outbox: a background service that ships every record line to
//! ClickHouse and retires rotated files under `stats.retention`. It only reads the files
//! the stats writer appends to, on its own runtime thread: a request never waits on it.
//!
//! - [`batch`]: complete lines from the checkpoint on, by rows, bytes or wait (pure).
//! - [`checkpoint`]: per file (device, inode, name) the offset shipped; saved atomically
//!   after every successful insert.
//! - [`clickhouse`]: the HTTP insert and the sorting of its answers.
//! - [`retention`]: which rotated files to delete (pure).
//! - [`schema`]: the table's schema file and the comparison `lmgate check` makes.
//!
//! One shipper at a time: the one holding an exclusive `flock` on `<checkpoint>.lock`.
//! During a graceful upgrade the old process keeps it while it drains (and ships what both
//! processes write); the new one tries every tick, gets it when the old one exits, and
//! re-reads the checkpoint before shipping. A crash releases the lock too. A crash between
//! an insert and its checkpoint re-sends that batch, which the table's
//! ReplacingMergeTree removes (reads use FINAL).
//!
//! Failures: an unreachable server, a timeout or an error answer retries the same batch
//! with backoff (100 ms doubling to 30 s), with one warning per outage and one info line on
//! recovery; nothing is skipped. Rows the server refuses as data are found by bisecting
//! the batch; each refused line is appended to `<stats>.rejected`, counted and logged, and
//! the rest is shipped.

mod batch;
mod checkpoint;
pub mod clickhouse;
mod retention;
pub mod schema;

use crate::config::{Config, Retention};
use crate::credentials::EnvLookup;
use crate::lifecycle::ExitHook;
use async_trait::async_trait;
use batch::{Batch, Limits};
use checkpoint::{Checkpoint, FileId};
use clickhouse::{ClickHouse, Failure};
use log::{error, info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// How often the shipper looks at the files.
const POLL: Duration = Duration::from_millis(200);
/// How often retention alone (no shipping) looks at the files.
const RETENTION_POLL: Duration = Duration::from_secs(5);
/// First retry delay after a failed insert; doubled per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// An idle shipper checks the server this often (for `lmgate_ship_up`).
const PING_EVERY: Duration = Duration::from_secs(10);
/// Most time the final shipping at exit takes.
const FINAL_BUDGET: Duration = Duration::from_secs(10);
/// Read size when building a batch.
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// A line longer than this without a newline is shipped alone as it is (a broken file).
const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// Shipper state for the metrics (read at scrape time).
#[derive(Debug, Default)]
pub struct ShipCounters {
    /// Bytes written to the stats files and not yet shipped.
    pub lag_bytes: AtomicU64,
    /// Age in seconds of the oldest unshipped record (0 when none).
    pub lag_seconds: AtomicU64,
    /// Rows inserted.
    pub rows: AtomicU64,
    /// Inserts that succeeded.
    pub batches: AtomicU64,
    /// Failed inserts (each retry counts).
    pub errors: AtomicU64,
    /// Lines the server refused (written to the rejected file).
    pub rejected: AtomicU64,
    /// 1 while the server answers, 0 while it does not.
    pub up: AtomicU64,
}

type FinishRequest = oneshot::Sender<()>;

/// The service: ships (when `clickhouse:` is set) and applies the retention policy.
pub struct Outbox {
    runner: Mutex<Option<(Runner, mpsc::Receiver<FinishRequest>)>>,
    counters: Arc<ShipCounters>,
}

/// Asks the outbox for a last shipping attempt at exit; an [`ExitHook`] that runs after
/// the stats writer's final flush.
pub struct OutboxFinisher {
    tx: mpsc::Sender<FinishRequest>,
}

#[async_trait]
impl ExitHook for OutboxFinisher {
    async fn before_exit(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(ack).await.is_ok() {
            let _ = tokio::time::timeout(FINAL_BUDGET + Duration::from_secs(5), done).await;
        }
    }
}

/// The outbox for `cfg`, or `None` when there is nothing to do (no `clickhouse:`, no
/// retention limit). Reads the ClickHouse user and password now; the error names the key.
pub fn outbox(cfg: &Config, env: EnvLookup) -> Result<Option<(Outbox, OutboxFinisher)>, String> {
    let ship = match &cfg.clickhouse {
        None => None,
        Some(c) => {
            let mut lock = c.checkpoint_path.as_os_str().to_owned();
            lock.push(".lock");
            let mut rejected = cfg.stats.output_path.as_os_str().to_owned();
            rejected.push(".rejected");
            Some(Ship {
                ch: ClickHouse::new(c, env)?,
                limits: Limits {
                    rows: c.batch_rows,
                    bytes: c.batch_bytes,
                },
                wait: c.batch_wait,
                checkpoint_path: c.checkpoint_path.clone(),
                lock_path: PathBuf::from(lock),
                rejected_path: PathBuf::from(rejected),
                lock: None,
                lock_error_logged: false,
                cp: Checkpoint::default(),
                pending: None,
                waiting_since: None,
                failing: None,
                next_try: Instant::now(),
                backoff: MIN_BACKOFF,
                last_contact: None,
                oldest: None,
                counted: None,
            })
        }
    };
    if ship.is_none() && !cfg.stats.retention.is_limited() {
        return Ok(None);
    }
    let counters = Arc::new(ShipCounters::default());
    let live = cfg.stats.output_path.clone();
    let runner = Runner {
        live_name: live
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        live,
        retention: cfg.stats.retention.clone(),
        ship,
        counters: Arc::clone(&counters),
    };
    let (tx, rx) = mpsc::channel(1);
    Ok(Some((
        Outbox {
            runner: Mutex::new(Some((runner, rx))),
            counters,
        },
        OutboxFinisher { tx },
    )))
}

impl Outbox {
    /// The counters the metrics read.
    pub fn counters(&self) -> &Arc<ShipCounters> {
        &self.counters
    }
}

#[async_trait]
impl BackgroundService for Outbox {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // As the stats writer: shutdown is not the cue (records keep coming while requests
        // drain); the last shipping is asked for by `lifecycle::Drain` after the final flush.
        let Some((mut runner, mut finish)) = self.runner.lock().unwrap_or_else(|p| p.into_inner()).take()
        else {
            return;
        };
        let period = if runner.ship.is_some() {
            POLL
        } else {
            RETENTION_POLL
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => runner.tick(false).await,
                Some(ack) = finish.recv() => {
                    runner.finish().await;
                    let _ = ack.send(());
                }
            }
        }
    }
}

/// A stats file as listed now.
struct Listed {
    path: PathBuf,
    name: String,
    dev: u64,
    ino: u64,
    size: u64,
    rotated_at: Option<u64>,
}

impl Listed {
    fn id(&self) -> FileId<'_> {
        FileId {
            dev: self.dev,
            ino: self.ino,
            name: &self.name,
        }
    }
}

/// The batch being sent (and retried until it is in).
struct Pending {
    dev: u64,
    ino: u64,
    name: String,
    batch: Batch,
}

/// Shipping state.
struct Ship {
    ch: ClickHouse,
    limits: Limits,
    wait: Duration,
    checkpoint_path: PathBuf,
    lock_path: PathBuf,
    rejected_path: PathBuf,
    /// The lock file, held while this process is the shipper.
    lock: Option<File>,
    lock_error_logged: bool,
    cp: Checkpoint,
    pending: Option<Pending>,
    /// Since when unshipped lines have been waiting for a batch.
    waiting_since: Option<Instant>,
    /// Failed attempts of the current outage.
    failing: Option<u64>,
    next_try: Instant,
    backoff: Duration,
    last_contact: Option<Instant>,
    /// The oldest unshipped line's time, for (dev, ino, offset).
    oldest: Option<((u64, u64, u64), Option<u64>)>,
    /// Lines counted in the waiting tail: for (dev, ino, offset), up to which byte, how
    /// many; each tick counts only what was appended since.
    counted: Option<((u64, u64, u64), u64, usize)>,
}

struct Runner {
    live: PathBuf,
    live_name: String,
    retention: Retention,
    ship: Option<Ship>,
    counters: Arc<ShipCounters>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Runner {
    /// The stats files with their identities; files gone since the directory was read are
    /// left out.
    fn listing(&self) -> Vec<Listed> {
        let files = match crate::stats_files::list(&self.live) {
            Ok(f) => f,
            Err(e) => {
                warn!("stats files of {} cannot be listed: {e}", self.live.display());
                return Vec::new();
            }
        };
        files
            .into_iter()
            .filter_map(|path| {
                let m = std::fs::metadata(&path).ok()?;
                Some(Listed {
                    name: path.file_name()?.to_string_lossy().into_owned(),
                    rotated_at: crate::stats_files::rotated_at(&self.live, &path),
                    dev: m.dev(),
                    ino: m.ino(),
                    size: m.size(),
                    path,
                })
            })
            .collect()
    }

    async fn tick(&mut self, finishing: bool) {
        let files = self.listing();
        let Some(ship) = self.ship.as_mut() else {
            self.retire(&files, |_| true);
            return;
        };
        // Only the lock holder ships and deletes.
        if !ship.hold_lock() {
            return;
        }
        ship.cp
            .retain(&files.iter().map(Listed::id).collect::<Vec<_>>(), &self.live_name);
        ship.step(&files, &self.live_name, &self.counters, finishing)
            .await;
        let shipped: Vec<bool> = files
            .iter()
            .map(|f| ship.offset(f, &self.live_name) >= f.size)
            .collect();
        if self.retire(&files, |i| shipped[i]) {
            // Forget the deleted files now: their inodes may be reused.
            let files = self.listing();
            let ship = self.ship.as_mut().expect("shipping");
            ship.cp
                .retain(&files.iter().map(Listed::id).collect::<Vec<_>>(), &self.live_name);
            ship.save();
        }
    }

    /// Apply the retention policy to the rotated files of `files`; `shipped(i)` says
    /// whether `files[i]` is shipped. `true` when a file was deleted.
    fn retire(&self, files: &[Listed], shipped: impl Fn(usize) -> bool) -> bool {
        if !self.retention.is_limited() {
            return false;
        }
        let rotated: Vec<(usize, retention::Rotated)> = files
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                Some((
                    i,
                    retention::Rotated {
                        rotated_at: f.rotated_at?,
                        shipped: shipped(i),
                    },
                ))
            })
            .collect();
        let decisions: Vec<retention::Rotated> = rotated.iter().map(|(_, r)| r.clone()).collect();
        let mut deleted = false;
        for k in retention::decide(&decisions, &self.retention, now_secs()) {
            let f = &files[rotated[k].0];
            match std::fs::remove_file(&f.path) {
                Ok(()) => {
                    deleted = true;
                    info!("stats retention: deleted {} ({} bytes)", f.path.display(), f.size)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!("stats retention: cannot delete {}: {e}", f.path.display()),
            }
        }
        deleted
    }

    /// The last shipping at exit: whatever is written, within [`FINAL_BUDGET`].
    async fn finish(&mut self) {
        if self.ship.is_none() {
            return;
        }
        let deadline = Instant::now() + FINAL_BUDGET;
        loop {
            self.tick(true).await;
            let ship = self.ship.as_ref().expect("shipping");
            let lag = self.counters.lag_bytes.load(Ordering::Relaxed);
            if ship.lock.is_none() || lag == 0 {
                break;
            }
            if Instant::now() >= deadline {
                warn!(
                    "clickhouse: {lag} bytes of usage records not shipped at exit; the next start ships them"
                );
                break;
            }
            tokio::time::sleep(
                ship.next_try
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(10)),
            )
            .await;
        }
    }
}

impl Ship {
    /// Hold the shipper lock, taking it when the process that had it is gone; on taking
    /// it, read the checkpoint that process left. `false`: another process ships.
    fn hold_lock(&mut self) -> bool {
        if self.lock.is_some() {
            return true;
        }
        if let Some(dir) = self.lock_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
        {
            Ok(f) => f,
            Err(e) => {
                if !self.lock_error_logged {
                    error!("clickhouse shipper cannot open {}: {e}", self.lock_path.display());
                    self.lock_error_logged = true;
                }
                return false;
            }
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return false,
            Err(std::fs::TryLockError::Error(e)) => {
                warn!("clickhouse shipper cannot lock {}: {e}", self.lock_path.display());
                return false;
            }
        }
        self.cp = match checkpoint::load(&self.checkpoint_path) {
            Ok(None) => Checkpoint::default(),
            Ok(Some(Ok(cp))) => cp,
            Ok(Some(Err(reason))) => {
                warn!(
                    "clickhouse checkpoint {} unreadable ({reason}): shipping every stats file from its start (re-sent rows are deduplicated)",
                    self.checkpoint_path.display()
                );
                Checkpoint::default()
            }
            Err(e) => {
                warn!(
                    "clickhouse checkpoint {} cannot be read: {e}",
                    self.checkpoint_path.display()
                );
                return false;
            }
        };
        self.pending = None;
        self.failing = None;
        self.lock = Some(file);
        info!(
            "clickhouse shipping to {} from checkpoint {} ({} files known)",
            self.ch.url(),
            self.checkpoint_path.display(),
            self.cp.entries.len()
        );
        true
    }

    /// How far `f` is shipped (a file shorter than its checkpoint was replaced: 0).
    fn offset(&self, f: &Listed, live: &str) -> u64 {
        let o = self.cp.offset(f.id(), live);
        if o > f.size {
            0
        } else {
            o
        }
    }

    fn save(&self) {
        if let Err(e) = checkpoint::save(&self.checkpoint_path, &self.cp) {
            error!(
                "clickhouse checkpoint {} not saved (shipped rows will be re-sent): {e}",
                self.checkpoint_path.display()
            );
        }
    }

    async fn step(&mut self, files: &[Listed], live: &str, counters: &ShipCounters, finishing: bool) {
        let lag: u64 = files.iter().map(|f| f.size - self.offset(f, live)).sum();
        counters.lag_bytes.store(lag, Ordering::Relaxed);
        let next = files.iter().position(|f| self.offset(f, live) < f.size);
        counters
            .lag_seconds
            .store(self.oldest_age(next.map(|i| &files[i]), live), Ordering::Relaxed);
        let now = Instant::now();
        if now < self.next_try {
            return;
        }
        if self.pending.is_none() {
            let Some(i) = next else {
                self.waiting_since = None;
                if self.last_contact.is_none_or(|t| t.elapsed() >= PING_EVERY) {
                    let r = self
                        .ch
                        .query("SELECT 1")
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                    self.outcome(r, counters, 0);
                }
                return;
            };
            let f = &files[i];
            let since = *self.waiting_since.get_or_insert(now);
            let rotated = i + 1 < files.len() || f.name != live;
            let unshipped = f.size - self.offset(f, live);
            let due = finishing
                || rotated
                || unshipped >= self.limits.bytes as u64
                || now.duration_since(since) >= self.wait
                || self.lines_waiting(f, live) >= self.limits.rows;
            if !due {
                return;
            }
            match self.read_batch(f, live, rotated) {
                Ok(Some(p)) => self.pending = Some(p),
                Ok(None) => return,
                Err(e) => {
                    warn!("clickhouse shipper cannot read {}: {e}", f.path.display());
                    return;
                }
            }
        }
        let Some(p) = self.pending.take() else {
            return;
        };
        let result = if p.batch.is_empty() {
            Ok(Vec::new())
        } else {
            self.send(&p.batch).await
        };
        match result {
            Ok(rejected) => {
                if !rejected.is_empty() {
                    self.reject(&p, &rejected, counters);
                }
                let rows = (p.batch.rows() - rejected.len()) as u64;
                self.cp.set(
                    FileId {
                        dev: p.dev,
                        ino: p.ino,
                        name: &p.name,
                    },
                    live,
                    p.batch.file_end,
                );
                self.save();
                if !p.batch.is_empty() {
                    counters.rows.fetch_add(rows, Ordering::Relaxed);
                    self.outcome(Ok(()), counters, lag);
                }
                self.waiting_since = None;
            }
            Err(e) => {
                self.outcome(Err(e), counters, lag);
                self.pending = Some(p);
            }
        }
    }

    /// Count a call's outcome: metrics, the outage's warning and recovery, the backoff.
    fn outcome(&mut self, r: Result<(), String>, counters: &ShipCounters, lag: u64) {
        self.last_contact = Some(Instant::now());
        match r {
            Ok(()) => {
                if lag > 0 {
                    counters.batches.fetch_add(1, Ordering::Relaxed);
                }
                counters.up.store(1, Ordering::Relaxed);
                if let Some(n) = self.failing.take() {
                    info!(
                        "clickhouse {} reachable again after {n} failed attempts, shipping resumed",
                        self.ch.url()
                    );
                }
                self.backoff = MIN_BACKOFF;
            }
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                counters.up.store(0, Ordering::Relaxed);
                let n = self.failing.get_or_insert(0);
                if *n == 0 {
                    warn!(
                        "clickhouse {} not reachable or failing, {lag} bytes of usage records wait and are retried: {e}",
                        self.ch.url()
                    );
                }
                *n += 1;
                self.next_try = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Insert the batch; rows the server refuses as data are found by halving and
    /// returned (index, server message). `Err`: the server is down (the whole batch is
    /// retried later; halves already in are re-sent, which the table deduplicates).
    async fn send(&self, b: &Batch) -> Result<Vec<(usize, String)>, String> {
        let mut stack = Vec::with_capacity(32);
        stack.push(0..b.rows());
        let mut rejected = Vec::new();
        while let Some(rows) = stack.pop() {
            if rows.is_empty() {
                continue;
            }
            match self.ch.insert(b.body(rows.clone())).await {
                Ok(()) => {}
                Err(Failure::Refused(m)) if rows.len() == 1 => rejected.push((rows.start, m)),
                Err(Failure::Refused(_)) => {
                    let [first, second] = batch::halves(rows);
                    stack.push(second);
                    stack.push(first);
                }
                Err(Failure::Down(m)) => return Err(m),
            }
        }
        Ok(rejected)
    }

    /// Append the refused lines to the rejected file (kept for an operator to fix and
    /// re-insert), count and log them.
    fn reject(&self, p: &Pending, rejected: &[(usize, String)], counters: &ShipCounters) {
        counters
            .rejected
            .fetch_add(rejected.len() as u64, Ordering::Relaxed);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.rejected_path)?;
            for (i, _) in rejected {
                f.write_all(p.batch.body(*i..*i + 1))?;
            }
            f.sync_data()
        };
        if let Err(e) = write() {
            error!(
                "clickhouse refused {} lines and they could not be kept in {}: {e}",
                rejected.len(),
                self.rejected_path.display()
            );
        }
        for (_, m) in rejected {
            warn!(
                "clickhouse refused a usage record line of {}, kept in {}: {m}",
                p.name,
                self.rejected_path.display()
            );
        }
    }

    /// The next batch of `f` from its checkpoint; `None` when no complete line is there
    /// yet (the writer is mid-line).
    /// Complete lines waiting in `f` past the checkpoint (up to a batch's rows): only
    /// the bytes appended since the last tick are read.
    fn lines_waiting(&mut self, f: &Listed, live: &str) -> usize {
        let from = self.offset(f, live);
        let id = (f.dev, f.ino, from);
        let (upto, lines) = match self.counted {
            Some((k, upto, n)) if k == id && upto <= f.size => (upto, n),
            _ => (from, 0),
        };
        let lines = lines + count_lines(f, upto, self.limits.rows.saturating_sub(lines));
        self.counted = Some((id, f.size, lines));
        lines
    }

    fn read_batch(&self, f: &Listed, live: &str, rotated: bool) -> std::io::Result<Option<Pending>> {
        let from = self.offset(f, live);
        let mut file = File::open(&f.path)?;
        let m = file.metadata()?;
        if (m.dev(), m.ino()) != (f.dev, f.ino) {
            return Ok(None); // rotated since the listing: next tick
        }
        let mut budget = self.limits.bytes;
        loop {
            file.seek(SeekFrom::Start(from))?;
            let mut b = Batch::at(from);
            let mut full = false;
            let mut carry = Vec::new();
            let last = rotated && from + budget as u64 >= m.size();
            crate::stats_files::for_each_line(
                &mut (&mut file).take(budget as u64),
                READ_CHUNK_BYTES,
                &mut carry,
                last,
                |line| {
                    if !full && !b.offer(line, line.len() as u64 + 1, f.ino, self.limits) {
                        full = true;
                    }
                },
            )?;
            // A rotated file's last line without its newline.
            b.file_end = b.file_end.min(m.size());
            if b.file_end > from {
                return Ok(Some(Pending {
                    dev: f.dev,
                    ino: f.ino,
                    name: f.name.clone(),
                    batch: b,
                }));
            }
            // No complete line within the budget: a line longer than a batch.
            if carry.len() < budget || budget >= MAX_LINE_BYTES {
                return Ok(None);
            }
            budget = MAX_LINE_BYTES;
        }
    }

    /// Seconds since the oldest unshipped record was written (0 when all is shipped).
    fn oldest_age(&mut self, next: Option<&Listed>, live: &str) -> u64 {
        let Some(f) = next else {
            return 0;
        };
        let key = (f.dev, f.ino, self.offset(f, live));
        let t = match self.oldest {
            Some((k, t)) if k == key => t,
            _ => {
                let t = first_line_time(&f.path, key.2);
                self.oldest = Some((key, t));
                t
            }
        };
        // A line without a readable time: at least the time since it was seen.
        t.map_or(0, |t| now_secs().saturating_sub(t))
    }
}

/// The time of the line at `offset` of `path`.
fn first_line_time(path: &Path, offset: u64) -> Option<u64> {
    let mut f = File::open(path).ok()?;
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut head = vec![0u8; 64];
    let n = f.read(&mut head).ok()?;
    batch::line_time(&head[..n])
}

/// Complete lines in `f` between `from` and its listed size, counting up to `cap`.
fn count_lines(f: &Listed, from: u64, cap: usize) -> usize {
    let Ok(mut file) = File::open(&f.path) else {
        return 0;
    };
    if from >= f.size || file.seek(SeekFrom::Start(from)).is_err() {
        return 0;
    }
    let mut file = file.take(f.size - from);
    let mut n = 0;
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    while n < cap {
        match file.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += memchr::memchr_iter(b'\n', &buf[..k]).count(),
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_up_to_the_listed_size_and_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.jsonl");
        std::fs::write(&path, "a\nb\nc\nd\n").unwrap();
        let listed = |size| Listed {
            path: path.clone(),
            name: "stats.jsonl".into(),
            dev: 1,
            ino: 2,
            size,
            rotated_at: None,
        };
        // Lines appended after the listing are not counted (the next tick counts them once).
        assert_eq!(count_lines(&listed(4), 0, 100), 2);
        assert_eq!(count_lines(&listed(8), 4, 100), 2);
        assert_eq!(count_lines(&listed(8), 0, 3), 4);
        assert_eq!(count_lines(&listed(8), 8, 100), 0);
    }

    fn runner(dir: &Path) -> Runner {
        let yaml = format!(
            "stats: {{output_path: {}}}\nclickhouse: {{url: 'http://127.0.0.1:9'}}\n",
            dir.join("stats.jsonl").display()
        );
        let cfg = Config::from_yaml_str(&yaml, Path::new("test.yaml"), Vec::new()).unwrap();
        let (outbox, _) = outbox(&cfg, &|_| None).unwrap().unwrap();
        let (r, _) = outbox.runner.lock().unwrap().take().unwrap();
        r
    }

    /// The old and the new process of an upgrade: only one ships; the next takes over when
    /// the first is gone, from the checkpoint the first left.
    #[test]
    fn one_shipper_at_a_time_and_the_next_goes_on_from_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = runner(dir.path());
        let mut new = runner(dir.path());
        let a = old.ship.as_mut().unwrap();
        assert!(a.hold_lock());
        let file = FileId {
            dev: 1,
            ino: 2,
            name: "stats.jsonl",
        };
        a.cp.set(file, "stats.jsonl", 42);
        a.save();
        let b = new.ship.as_mut().unwrap();
        assert!(!b.hold_lock(), "the old process still ships");
        assert!(!b.hold_lock());
        drop(old); // the old process exits: its lock goes with it
        assert!(b.hold_lock());
        assert_eq!(b.cp.offset(file, "stats.jsonl"), 42);
    }

    #[test]
    fn nothing_to_do_without_clickhouse_or_retention() {
        let cfg = Config::from_yaml_str("", Path::new("test.yaml"), Vec::new()).unwrap();
        assert!(outbox(&cfg, &|_| None).unwrap().is_none());
        let cfg = Config::from_yaml_str(
            "stats: {retention: {keep_days: 3}}\n",
            Path::new("test.yaml"),
            Vec::new(),
        )
        .unwrap();
        let (o, _) = outbox(&cfg, &|_| None).unwrap().unwrap();
        assert!(o.runner.lock().unwrap().as_ref().unwrap().0.ship.is_none());
        // A password that cannot be read is a start-up error naming the key, not the value.
        let cfg = Config::from_yaml_str(
            "clickhouse: {url: 'http://a:1', password: 'env:CH_PW'}\n",
            Path::new("test.yaml"),
            Vec::new(),
        )
        .unwrap();
        let e = outbox(&cfg, &|_| None).err().unwrap();
        assert!(e.starts_with("clickhouse.password (env:CH_PW)"), "{e}");
    }
}
