//! Zero-loss graceful upgrades and stops through the real binary.
//!
//! A steady load of JSON and SSE requests, each on its own path (`/openai/v1/chat/r<N>`, so
//! its usage record can be found), runs while the gateway is upgraded three times in a row
//! (a new process started with `--upgrade` takes the listening sockets, then SIGQUIT to the
//! old one) and then stopped with SIGTERM, as a container stop does. Afterwards:
//!
//! - every request sent during the upgrades was answered 200 with its full body;
//! - the stats file and its rotated siblings hold exactly one record per request, with the
//!   tokens the mock reported, and no line that is not whole JSON;
//! - under SIGTERM, every answered request has exactly one record, and a request that got no
//!   answer (refused, or reset before the gateway read it) has none;
//! - every answered request reached the upstream exactly once, and one that was not answered
//!   never did; when the gateway logs at trace level (the harness makes it), its log shows
//!   each request read at most once.
//!
//! It runs with two kinds of clients. Clients that never retry (like wrk, curl loops and
//! most health probes) send on their keep-alive connection without checking it, and must
//! see no failure at all: the stop has a shutdown delay, during which `/healthz` answers
//! 503 and the load goes on being answered, and the load stops before the delay ends (as a
//! balancer would), so every request is answered. Clients that behave like an HTTP/1.1
//! client pool check an idle connection before reusing it and retry a request sent on a
//! *reused* connection that closes before any response byte once on a fresh one (RFC 9112
//! §9.3.1); they are stopped without a delay, under the load. A retry whose first attempt
//! had in fact been read would show up twice in the upstream's requests, the gateway's log,
//! or the records.
//!
//! Smaller tests: a keep-alive connection's next request after the stop is answered with
//! `Connection: close` and an idle one is closed after the grace; a stream in flight
//! during an upgrade ends on the old process; one still running at the drain timeout is cut
//! and recorded as truncated. `scripts/upgrade.sh` runs in the foreground (`--pid`), as a
//! daemon (`-d`, the pid file, as the systemd unit in contrib/ uses it), and refuses.

mod common;

use common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// The whole test must finish well inside this; a hang fails it and the guards stop everything.
const TEST_BUDGET: Duration = Duration::from_secs(100);
/// A single request (connect, send, whole response) must finish inside this.
const REQUEST_DEADLINE: Duration = Duration::from_secs(15);
/// Concurrent clients: half keep connections alive, half open one per request.
const WORKERS: u64 = 8;
/// Output tokens the mock reports for every request (input tokens are the request number).
const OUTPUT_TOKENS: u64 = 7;
/// Graceful upgrades in a row.
const UPGRADES: usize = 3;
/// Request numbers of the SIGTERM phase start here, apart from the upgrade phase's.
const STOP_PHASE_BASE: u64 = 10_000_000;
/// A run of `scripts/upgrade.sh` must end inside this: above the script's own waits (about
/// a minute in all with the harness's 10 s drain), so the script fails first, saying why.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(90);

// ------------------------------------------------------------------------------------------
// What the mock answers and what the client must receive
// ------------------------------------------------------------------------------------------

/// The request number in an upstream target `/v1/chat/r<N>`.
fn request_number(target: &str) -> Option<u64> {
    target.rsplit_once("/r")?.1.parse().ok()
}

/// The parts of the answer to request `n`. Between parts the mock waits for the next tick of
/// a shared clock, so requests are really in flight (for up to a few tens of milliseconds)
/// when the gateway is told to stop.
fn answer_parts(n: u64, stream: bool) -> Vec<Vec<u8>> {
    if stream {
        chat_completion_stream(n, &["hel", "lo"], n, OUTPUT_TOKENS)
            .into_iter()
            .map(String::into_bytes)
            .collect()
    } else {
        let body = chat_completion(n, "hello", n, OUTPUT_TOKENS).into_bytes();
        let (a, b) = body.split_at(body.len() / 2);
        vec![a.to_vec(), b.to_vec()]
    }
}

/// The body the client must receive for request `n`, byte for byte.
fn expected_body(n: u64, stream: bool) -> Vec<u8> {
    answer_parts(n, stream).concat()
}

fn mock_reply(req: &Recorded, tick: &Arc<Notify>) -> Reply {
    let Some(n) = request_number(&req.target) else {
        return Reply::json(400, r#"{"error":"no request number"}"#);
    };
    let stream = req.body.windows(13).any(|w| w == b"\"stream\":true");
    let mut parts = Vec::new();
    for (i, p) in answer_parts(n, stream).into_iter().enumerate() {
        // Every fourth request is answered at once: the in-flight count keeps touching zero,
        // which is when a drain that ends too early would cut a request off.
        if i > 0 && n % 4 != 0 {
            parts.push(Part::Wait(Arc::clone(tick)));
        }
        parts.push(Part::Bytes(p));
    }
    if stream {
        Reply::stream("text/event-stream", parts)
    } else {
        Reply {
            status: 200,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("content-length".into(), expected_body(n, false).len().to_string()),
            ],
            chunked: false,
            parts,
            hang: false,
        }
    }
}

// ------------------------------------------------------------------------------------------
// Load client
// ------------------------------------------------------------------------------------------

/// How one request ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// 200 and exactly the expected body.
    Answered,
    /// The connection could not be made, or failed before the request was written:
    /// the gateway cannot have seen it.
    Refused,
    /// The request was written, then the connection closed or reset before any response
    /// byte (how, and whether it was the retry of a stale keep-alive attempt).
    NoResponse(String),
    /// Wrong status, a body that differs or is cut short, or no answer in time.
    Bad(String),
}

/// One request the load sent.
#[derive(Debug, Clone)]
struct Sent {
    n: u64,
    stream: bool,
    outcome: Outcome,
}

/// Why reading a response failed.
enum ReadError {
    /// Closed or reset before the first response byte.
    NothingReceived(String),
    /// Failed after part of the response.
    Cut(String),
}

/// A client connection with its read buffer.
struct Conn {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// What a connection pool does before reusing an idle connection: a closed one reads EOF.
    fn closed_by_peer(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.sock.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut tmp = [0u8; 16384];
        let n = self.sock.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    /// Read one response: (status, connection-close, body after de-chunking).
    async fn read_response(&mut self) -> Result<(u16, bool, Vec<u8>), ReadError> {
        let cut = |e: std::io::Error| ReadError::Cut(e.to_string());
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            let before = self.buf.len();
            if let Err(e) = self.fill().await {
                return Err(if before == 0 {
                    ReadError::NothingReceived(e.to_string())
                } else {
                    cut(e)
                });
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ReadError::Cut(format!("bad status line in {head:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let close = get("connection") == Some("close");
        let mut body = Vec::new();
        if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < len {
                self.fill().await.map_err(cut)?;
            }
            body = self.buf.drain(..len).collect();
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    self.fill().await.map_err(cut)?;
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| ReadError::Cut(format!("bad chunk size {size_text:?}")))?;
                self.buf.drain(..line_end + 2);
                if size == 0 {
                    while find(&self.buf, b"\r\n").is_none() {
                        self.fill().await.map_err(cut)?;
                    }
                    let end = find(&self.buf, b"\r\n").unwrap_or(0);
                    self.buf.drain(..end + 2);
                    break;
                }
                while self.buf.len() < size + 2 {
                    self.fill().await.map_err(cut)?;
                }
                body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
            }
        } else {
            return Err(ReadError::Cut(format!("no body framing in {head:?}")));
        }
        Ok((status, close, body))
    }
}

/// How the load's clients treat a keep-alive connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clients {
    /// Send on the connection as it is; never retry (wrk, curl loops, health probes).
    NeverRetry,
    /// An HTTP/1.1 client pool: check an idle connection before reusing it, and retry once
    /// on a fresh connection when a reused one closes before any response byte.
    RetryStale,
}

/// Running totals, shared by the workers so the test can wait for progress.
#[derive(Default)]
struct Progress {
    answered: AtomicU64,
    refused: AtomicU64,
    stale_retries: AtomicU64,
}

/// Send request `n`, reusing `conn` when the worker keeps connections alive.
async fn send_one(
    addr: &str,
    conn: &mut Option<Conn>,
    n: u64,
    stream: bool,
    keep_alive: bool,
    clients: Clients,
    progress: &Progress,
) -> Outcome {
    let retry = clients == Clients::RetryStale;
    let body = if stream {
        r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#
    } else {
        r#"{"model":"gpt-4o-mini","messages":[]}"#
    };
    let request = format!(
        "POST /openai/v1/chat/r{n} HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {KEY_A}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{body}",
        body.len(),
        if keep_alive { "" } else { "connection: close\r\n" },
    );
    for attempt in 0..2 {
        if retry && conn.as_ref().is_some_and(Conn::closed_by_peer) {
            *conn = None;
        }
        let reused = conn.is_some();
        if conn.is_none() {
            match TcpStream::connect(addr).await {
                Ok(sock) => {
                    *conn = Some(Conn {
                        sock,
                        buf: Vec::new(),
                    })
                }
                Err(_) => return Outcome::Refused,
            }
        }
        let Some(c) = conn.as_mut() else {
            return Outcome::Refused;
        };
        if let Err(e) = c.sock.write_all(request.as_bytes()).await {
            *conn = None;
            if retry && reused && attempt == 0 {
                progress.stale_retries.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if reused {
                // The gateway closed a keep-alive connection under a request being sent.
                return Outcome::NoResponse(format!("write failed on a reused connection: {e}"));
            }
            return Outcome::Refused;
        }
        return match c.read_response().await {
            Ok((status, close, got)) => {
                if close || !keep_alive {
                    *conn = None;
                }
                let want = expected_body(n, stream);
                if status != 200 {
                    Outcome::Bad(format!("status {status}: {}", String::from_utf8_lossy(&got)))
                } else if got != want {
                    Outcome::Bad(format!(
                        "body differs: got {} bytes, want {}",
                        got.len(),
                        want.len()
                    ))
                } else {
                    Outcome::Answered
                }
            }
            Err(ReadError::NothingReceived(e)) => {
                *conn = None;
                if retry && reused && attempt == 0 {
                    progress.stale_retries.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Outcome::NoResponse(format!(
                    "{e} on a {} connection",
                    if attempt > 0 {
                        "retry's fresh"
                    } else if reused {
                        "reused"
                    } else {
                        "fresh"
                    }
                ))
            }
            Err(ReadError::Cut(e)) => {
                *conn = None;
                Outcome::Bad(format!("response cut: {e}"))
            }
        };
    }
    Outcome::NoResponse("retried twice".into())
}

/// A running load: `WORKERS` tasks in closed loops until `stop`.
struct Load {
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
    workers: Vec<tokio::task::JoinHandle<Vec<Sent>>>,
}

impl Load {
    fn start(addr: String, first: u64, clients: Clients) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        let next = Arc::new(AtomicU64::new(first));
        let workers = (0..WORKERS)
            .map(|w| {
                let (addr, stop, progress, next) = (
                    addr.clone(),
                    Arc::clone(&stop),
                    Arc::clone(&progress),
                    Arc::clone(&next),
                );
                tokio::spawn(async move {
                    let keep_alive = w % 2 == 0;
                    let mut conn = None;
                    let mut sent = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let stream = n % 2 == 1;
                        let outcome = tokio::time::timeout(
                            REQUEST_DEADLINE,
                            send_one(&addr, &mut conn, n, stream, keep_alive, clients, &progress),
                        )
                        .await
                        .unwrap_or_else(|_| {
                            Outcome::Bad(format!("no complete answer in {REQUEST_DEADLINE:?}"))
                        });
                        match outcome {
                            Outcome::Answered => {
                                progress.answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Outcome::Refused => {
                                progress.refused.fetch_add(1, Ordering::Relaxed);
                                // Nothing listens: do not spin.
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            _ => conn = None,
                        }
                        sent.push(Sent { n, stream, outcome });
                    }
                    sent
                })
            })
            .collect();
        Load {
            stop,
            progress,
            workers,
        }
    }

    fn answered(&self) -> u64 {
        self.progress.answered.load(Ordering::Relaxed)
    }

    fn refused(&self) -> u64 {
        self.progress.refused.load(Ordering::Relaxed)
    }

    /// Stop the workers (each finishes its current request) and collect what they sent.
    async fn finish(self) -> (Vec<Sent>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for w in self.workers {
            all.extend(w.await.expect("load worker panicked"));
        }
        all.sort_by_key(|s| s.n);
        (all, self.progress.stale_retries.load(Ordering::Relaxed))
    }

    /// Wait until `more` further requests have been answered.
    async fn wait_answered(&self, more: u64, gw_log: &dyn Fn() -> String) {
        let target = self.answered() + more;
        wait_until(
            "load stalled",
            || self.answered() >= target,
            || format!("{} answered; log:\n{}", self.answered(), gw_log()),
        )
        .await;
    }
}

// ------------------------------------------------------------------------------------------
// Records
// ------------------------------------------------------------------------------------------

/// Every line of the stats file and its rotated siblings: parsed records and garbled lines.
struct OnDisk {
    records: Vec<serde_json::Value>,
    garbled: Vec<String>,
    files: usize,
}

fn read_stats_dir(dir: &Path) -> OnDisk {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|f| {
        let name = f.file_name().unwrap_or_default().to_string_lossy();
        name.contains(".jsonl") && !name.ends_with(".lock")
    });
    files.sort();
    let mut out = OnDisk {
        records: Vec::new(),
        garbled: Vec::new(),
        files: files.len(),
    };
    for f in &files {
        let text = std::fs::read(f).unwrap_or_default();
        if !text.is_empty() && !text.ends_with(b"\n") {
            out.garbled
                .push(format!("{}: last line has no newline", f.display()));
        }
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<serde_json::Value>(line) {
                Ok(v) if v.is_object() => out.records.push(v),
                _ => out.garbled.push(String::from_utf8_lossy(line).into_owned()),
            }
        }
    }
    out
}

/// Records per request number (only records of this test's `/openai/v1/chat/r<N>` paths).
fn records_by_number(records: &[serde_json::Value]) -> (HashMap<u64, Vec<&serde_json::Value>>, usize) {
    let mut by_n: HashMap<u64, Vec<&serde_json::Value>> = HashMap::new();
    let mut foreign = 0;
    for r in records {
        match r["endpoint"].as_str().and_then(request_number) {
            Some(n) => by_n.entry(n).or_default().push(r),
            None => foreign += 1,
        }
    }
    (by_n, foreign)
}

/// Wait until every answered request of `sent` has a record on disk (the live process
/// appends every `flush_interval_seconds`).
async fn wait_for_records(dir: &Path, sent: &[Sent], log: &dyn Fn() -> String) {
    let start = Instant::now();
    loop {
        let disk = read_stats_dir(dir);
        let (by_n, _) = records_by_number(&disk.records);
        let missing = sent
            .iter()
            .filter(|s| s.outcome == Outcome::Answered && !by_n.contains_key(&s.n))
            .count();
        if missing == 0 {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{missing} answered requests still have no record; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Figures of one phase, checked and printed.
#[derive(Default)]
struct Figures {
    sent: usize,
    answered: usize,
    refused: usize,
    no_response: usize,
    bad: usize,
    stale_retries: u64,
    records: usize,
    duplicates: usize,
    missing: usize,
    unexpected: usize,
    garbled: usize,
    files: usize,
}

/// How often each request number appears in `texts` (upstream targets or log lines).
fn count_numbers<'a>(texts: impl Iterator<Item = &'a str>, marker: &str) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for t in texts {
        if let Some((_, rest)) = t.split_once(marker) {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(n) = digits.parse() {
                *counts.entry(n).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// What else saw each request: the upstream, and (when the gateway logs at trace level, as
/// the test harness makes it) the gateway's own request reader.
struct Witnesses {
    upstream: HashMap<u64, usize>,
    read_by_gateway: Option<HashMap<u64, usize>>,
}

impl Witnesses {
    fn collect(mock: &Mock, log: &str) -> Witnesses {
        let received = mock.received();
        let upstream = count_numbers(received.iter().map(|r| r.target.as_str()), "/v1/chat/r");
        let read_by_gateway = log.contains("Request header:").then(|| {
            count_numbers(
                log.lines().filter(|l| l.contains("Request header:")),
                "uri: /openai/v1/chat/r",
            )
        });
        Witnesses {
            upstream,
            read_by_gateway,
        }
    }
}

/// Match `sent` against the records on disk. Every answered request must have exactly one
/// record with its status and tokens, and must have reached the upstream (and, when the log
/// shows it, the gateway's reader) exactly once: a stale keep-alive retry whose first
/// attempt the gateway had read would be a lost request hidden by the retry. A request the
/// gateway never answered must have no record and must not have reached the upstream.
fn check_records(
    phase: &str,
    sent: &[Sent],
    stale_retries: u64,
    disk: &OnDisk,
    seen: &Witnesses,
    range: std::ops::Range<u64>,
) -> Figures {
    let (by_n, _) = records_by_number(&disk.records);
    let mut f = Figures {
        sent: sent.len(),
        stale_retries,
        garbled: disk.garbled.len(),
        files: disk.files,
        ..Default::default()
    };
    let mut problems = Vec::new();
    let sent_numbers: std::collections::HashSet<u64> = sent.iter().map(|s| s.n).collect();
    for (n, recs) in &by_n {
        if range.contains(n) {
            f.records += recs.len();
            if !sent_numbers.contains(n) {
                f.unexpected += recs.len();
                problems.push(format!("record for r{n}, which was never sent"));
            }
        }
    }
    for s in sent {
        let recs = by_n.get(&s.n).map_or(&[][..], Vec::as_slice);
        let answered = s.outcome == Outcome::Answered;
        let upstream = seen.upstream.get(&s.n).copied().unwrap_or(0);
        if upstream != usize::from(answered) {
            problems.push(format!(
                "r{}: {:?} but the upstream saw it {upstream} times",
                s.n, s.outcome
            ));
        }
        if let Some(reads) = &seen.read_by_gateway {
            let read = reads.get(&s.n).copied().unwrap_or(0);
            if read > 1 || (answered && read != 1) {
                problems.push(format!(
                    "r{}: {:?} but the gateway read it {read} times",
                    s.n, s.outcome
                ));
            }
        }
        match &s.outcome {
            Outcome::Answered => {
                f.answered += 1;
                match recs.len() {
                    0 => {
                        f.missing += 1;
                        problems.push(format!("r{}: answered but no record", s.n));
                    }
                    1 => {
                        let r = recs[0];
                        let ok = r["status"] == 200
                            && r["input_tokens"] == s.n
                            && r["output_tokens"] == OUTPUT_TOKENS
                            && r["stream"] == s.stream
                            && r["usage_status"] == "exact"
                            && r["error_type"].is_null();
                        if !ok {
                            problems.push(format!("r{}: wrong record {r}", s.n));
                        }
                    }
                    k => {
                        f.duplicates += k - 1;
                        problems.push(format!("r{}: {k} records", s.n));
                    }
                }
            }
            other => {
                match other {
                    Outcome::Refused => f.refused += 1,
                    Outcome::NoResponse(how) => {
                        f.no_response += 1;
                        println!("{phase}: r{} got no response: {how}", s.n);
                    }
                    _ => f.bad += 1,
                }
                if let Outcome::Bad(why) = other {
                    problems.push(format!("r{}: {why}", s.n));
                }
                if !recs.is_empty() {
                    // The gateway handled it, yet the client got nothing: a request cut short.
                    problems.push(format!(
                        "r{}: {other:?} but {} record(s): {:?}",
                        s.n,
                        recs.len(),
                        recs
                    ));
                }
            }
        }
    }
    for g in disk.garbled.iter().take(5) {
        problems.push(format!("garbled stats line: {g:?}"));
    }
    println!(
        "{phase}: sent {} | answered {} | refused before sending {} | no response {} | bad {} | \
         stale keep-alive retries {} | records {} in {} files | duplicates {} | missing {} | \
         unexpected {} | garbled lines {}",
        f.sent,
        f.answered,
        f.refused,
        f.no_response,
        f.bad,
        f.stale_retries,
        f.records,
        f.files,
        f.duplicates,
        f.missing,
        f.unexpected,
        f.garbled
    );
    assert!(
        problems.is_empty() && f.garbled == 0,
        "{phase}: {} problems, first ones:\n{}",
        problems.len(),
        problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    f
}

// ------------------------------------------------------------------------------------------
// Processes
// ------------------------------------------------------------------------------------------

/// Wait (without blocking the runtime) for `child` to exit; panics past the deadline.
async fn wait_exit(child: &mut Child, what: &str, log: &dyn Fn() -> String) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        assert!(start.elapsed() < DEADLINE, "{what} did not exit; log:\n{}", log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The upgrade dance, as `scripts/upgrade.sh` does it: start the new binary with `--upgrade`
/// and the same config, wait until it listens on the upgrade socket, SIGQUIT the old one,
/// wait for the old one to exit. Returns the time from starting the new process to the old
/// one's exit.
async fn upgrade(gw: &mut Gateway) -> Duration {
    let sock = gw.dir.path().join("upgrade.sock");
    let log_path = gw.log_path.clone();
    let log = move || std::fs::read_to_string(&log_path).unwrap_or_default();
    let started = Instant::now();
    // The harness's `Gateway` guards only the process it started.
    let mut new = ChildGuard(Some(gw.launch().arg("--upgrade").spawn()));
    while !sock.exists() {
        let exited = new.0.as_mut().and_then(|c| c.try_wait().ok().flatten());
        assert!(
            exited.is_none(),
            "new process exited early ({exited:?}); log:\n{}",
            log()
        );
        assert!(
            started.elapsed() < DEADLINE,
            "new process never listened on the upgrade socket; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut old = gw.child.take().expect("a running gateway");
    send_signal(old.id(), libc::SIGQUIT);
    let status = wait_exit(&mut old, "old process", &log).await;
    let took = started.elapsed();
    assert!(
        status.success(),
        "old process exit status {status:?}; log:\n{}",
        log()
    );
    assert!(
        !sock.exists(),
        "the new process took the sockets and removed the upgrade socket"
    );
    gw.child = new.0.take();
    took
}

// ------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_upgrades_and_a_delayed_stop_lose_nothing_for_clients_that_never_retry() {
    tokio::time::timeout(TEST_BUDGET, upgrades_and_stop_under_load(Clients::NeverRetry))
        .await
        .expect("the test overran its time budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_upgrades_and_a_stop_under_load_lose_no_request_and_no_record_for_retrying_clients() {
    tokio::time::timeout(TEST_BUDGET, upgrades_and_stop_under_load(Clients::RetryStale))
        .await
        .expect("the test overran its time budget");
}

/// Longer than the test: the clients that never retry stop their load during the delay,
/// then a second SIGTERM ends it (no timing in the test).
const LONG_SHUTDOWN_DELAY_YAML: &str = "server:\n  shutdown_delay_seconds: 600\n";

async fn upgrades_and_stop_under_load(clients: Clients) {
    // The mock's clock: every tick releases the answers waiting between two parts.
    let tick = Arc::new(Notify::new());
    let clock = {
        let tick = Arc::clone(&tick);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(15)).await;
                tick.notify_waiters();
            }
        })
    };
    let _clock = AbortOnDrop(clock);
    let mock_tick = Arc::clone(&tick);
    let mock = Mock::start(move |r| mock_reply(r, &mock_tick)).await;
    let delay = if clients == Clients::NeverRetry {
        LONG_SHUTDOWN_DELAY_YAML
    } else {
        ""
    };
    let mut gw = Gateway::start(GatewayOpts {
        // Small files: the old and the new process rotate them while both are writing.
        yaml: merge_yaml(
            &format!("{}stats:\n  rotate_bytes: 65536\n", all_providers_at(mock.port)),
            delay,
        ),
        ..Default::default()
    });
    let stats_dir = gw.stats_path.parent().expect("stats dir").to_path_buf();
    let log_path = gw.log_path.clone();
    let log = move || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Phase 1: upgrades under load.
    let load = Load::start(gw.addr(), 0, clients);
    load.wait_answered(200, &log).await;
    let mut upgrade_times = Vec::new();
    for _ in 0..UPGRADES {
        upgrade_times.push(upgrade(&mut gw).await);
        // The new process carries the load before the next upgrade.
        load.wait_answered(200, &log).await;
    }
    let (sent, retries) = load.finish().await;
    wait_for_records(&stats_dir, &sent, &log).await;
    let seen = Witnesses::collect(&mock, &log());
    let upgrades = check_records(
        "upgrades",
        &sent,
        retries,
        &read_stats_dir(&stats_dir),
        &seen,
        0..STOP_PHASE_BASE,
    );
    assert_eq!(
        upgrades.answered, upgrades.sent,
        "during upgrades every request is answered"
    );
    println!("upgrade times (new process started -> old process exited): {upgrade_times:?}");

    // Phase 2: SIGTERM under the same load (a container stop).
    let load = Load::start(gw.addr(), STOP_PHASE_BASE, clients);
    load.wait_answered(200, &log).await;
    let mut last = gw.child.take().expect("a running gateway");
    let stop_started = Instant::now();
    send_signal(last.id(), libc::SIGTERM);
    let (sent, retries, stop_took) = match clients {
        Clients::NeverRetry => {
            // The delay: health checks fail, everything else is answered as before.
            gw.wait_log(&["SIGTERM received: /healthz answers 503"]).await;
            let health = request(&gw.addr(), "GET", "/healthz", &[], b"").await;
            assert_eq!((health.status, health.text().as_str()), (503, "stopping"));
            load.wait_answered(200, &log).await;
            assert!(
                last.try_wait().expect("try_wait").is_none(),
                "the gateway stopped during its shutdown delay"
            );
            // The balancer has stopped sending: end the load, then the delay.
            let (sent, retries) = load.finish().await;
            send_signal(last.id(), libc::SIGTERM);
            let took = exited_zero(&mut last, stop_started, &log).await;
            assert!(
                TcpStream::connect(gw.addr()).await.is_err(),
                "nothing listens after the stop"
            );
            (sent, retries, took)
        }
        Clients::RetryStale => {
            let took = exited_zero(&mut last, stop_started, &log).await;
            // Keep knocking until the closed port has refused a few requests.
            let refused_at_stop = load.refused();
            let start = Instant::now();
            while load.refused() < refused_at_stop + 20 {
                assert!(start.elapsed() < DEADLINE, "the closed port never refused");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let (sent, retries) = load.finish().await;
            (sent, retries, took)
        }
    };
    let seen = Witnesses::collect(&mock, &log());
    let stop = check_records(
        "sigterm",
        &sent,
        retries,
        &read_stats_dir(&stats_dir),
        &seen,
        STOP_PHASE_BASE..u64::MAX,
    );
    if clients == Clients::NeverRetry {
        assert_eq!(
            (stop.answered, stop.refused, stop.no_response),
            (stop.sent, 0, 0),
            "a stop with a shutdown delay answers every request sent before the balancer stopped"
        );
    } else {
        assert!(stop.answered > 0 && stop.refused > 0);
    }
    // Did the gateway ever read the unanswered ones? (The suite logs at trace level.)
    let log_text = log();
    for s in sent
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::NoResponse(_)))
    {
        let needle = format!("/r{},", s.n);
        let seen: Vec<&str> = log_text.lines().filter(|l| l.contains(&needle)).collect();
        println!("sigterm: r{} in the gateway log: {seen:?}", s.n);
    }
    println!("sigterm: exit {stop_took:?} after the signal");
    // Every process flushed at exit, and none dropped a record.
    let log = log();
    let flushes: Vec<&str> = log.lines().filter(|l| l.contains("stats flushed:")).collect();
    assert!(flushes.len() > UPGRADES, "every process flushed at exit:\n{log}");
    assert!(
        flushes.iter().all(|l| l.ends_with(", 0 dropped")) && !log.contains("usage record dropped"),
        "a usage record was dropped:\n{flushes:?}"
    );
}

/// Wait for the stopped gateway to exit 0; returns the time since `since`.
async fn exited_zero(last: &mut Child, since: Instant, log: &dyn Fn() -> String) -> Duration {
    let status = wait_exit(last, "gateway after SIGTERM", log).await;
    assert!(status.success(), "exit status {status:?}; log:\n{}", log());
    since.elapsed()
}

const CHAT_PATH: &str = "/openai/v1/chat/completions";

/// `POST` `body` to the chat path with KEY_A on `c`; the response.
async fn chat(c: &mut Client, body: &[u8]) -> Response {
    let auth = format!("Bearer {KEY_A}");
    c.request("POST", CHAT_PATH, &[("authorization", auth.as_str())], body)
        .await
}

/// Whether the gateway closes `c` (EOF or reset) with nothing more to read, before the
/// deadline.
async fn closed_by_gateway(c: &mut Client) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(DEADLINE, c.sock.read(&mut byte)).await {
        Ok(Ok(n)) => n == 0,
        Ok(Err(_)) => true,
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_stop_a_keep_alive_request_is_answered_with_close_and_idle_connections_close_after_the_grace()
{
    let mock = Mock::chat().await;
    let mut gw = Gateway::for_mock(&mock, "");
    let mut busy = Client::connect(&gw.addr()).await;
    let mut idle = Client::connect(&gw.addr()).await;
    for c in [&mut busy, &mut idle] {
        let r = chat(c, b"{}").await;
        assert_eq!((r.status, r.header("connection")), (200, Some("keep-alive")));
    }
    gw.signal(libc::SIGTERM);
    // The listener is closed and the drain has begun, with both connections still open.
    gw.wait_log(&["in-flight requests on 2 client connections"]).await;
    // A request on a kept-alive connection is answered, then that connection is closed.
    let r = chat(&mut busy, b"{}").await;
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert_eq!(r.body, chat_json().as_bytes());
    assert!(closed_by_gateway(&mut busy).await, "closed after its answer");
    // The connection that never sends again is closed after the grace, not kept.
    assert!(closed_by_gateway(&mut idle).await, "idle connection kept open");
    assert!(gw.wait_exit().success(), "log:\n{}", gw.log());
    let records = gw.records();
    assert_eq!(records.len(), 3, "{records:?}");
    assert!(records
        .iter()
        .all(|r| r["status"] == 200 && r["usage_status"] == "exact"));
    assert!(
        gw.log().contains("closing 1 idle keep-alive connections"),
        "{}",
        gw.log()
    );
}

/// A stream that sends its first event, then waits for the test's gate for the rest.
async fn paused_chat_stream() -> (Mock, Arc<Notify>, Vec<String>) {
    let events = chat_completion_stream(5, &["hel", "lo"], 11, OUTPUT_TOKENS);
    let after: Vec<&[u8]> = events[1..].iter().map(|e| e.as_bytes()).collect();
    let (mock, gate) = Mock::paused_stream(events[0].as_bytes(), &after).await;
    (mock, gate, events)
}

const STREAM_BODY: &[u8] =
    br#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true}}"#;

/// Start a streamed chat request on a new connection and read its head and `first` event.
async fn open_stream(gw: &Gateway, first: &str) -> Client {
    let mut c = Client::connect(&gw.addr()).await;
    let auth = format!("Bearer {KEY_A}");
    c.send(
        "POST",
        CHAT_PATH,
        &[("authorization", auth.as_str())],
        STREAM_BODY,
    )
    .await;
    assert_eq!(c.read_head().await.0, 200);
    assert_eq!(c.read_chunk().await.as_deref(), Some(first.as_bytes()));
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_in_flight_during_an_upgrade_ends_on_the_old_process_with_its_record() {
    let (mock, gate, events) = paused_chat_stream().await;
    let mut gw = Gateway::for_mock(&mock, "");
    let log_path = gw.log_path.clone();
    let log = move || std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut c = open_stream(&gw, &events[0]).await;

    // Upgrade: the new process takes the sockets, the old one stops accepting 5 s later
    // and drains, the stream still open.
    let sock = gw.dir.path().join("upgrade.sock");
    let mut new = ChildGuard(Some(gw.launch().arg("--upgrade").spawn()));
    wait_until(
        "the new process never listened on the upgrade socket",
        || sock.exists(),
        &log,
    )
    .await;
    let mut old = ChildGuard(gw.child.take());
    let old_child = old.0.as_mut().expect("the old process");
    send_signal(old_child.id(), libc::SIGQUIT);
    wait_until(
        "the old process never drained",
        || log().contains("draining 1 in-flight requests"),
        &log,
    )
    .await;
    let health = request(&gw.addr(), "GET", "/healthz", &[], b"").await;
    assert_eq!(health.status, 200, "the new process serves meanwhile");
    assert!(
        old_child.try_wait().expect("try_wait").is_none(),
        "the old process exited under its stream"
    );

    // The stream ends on the old process, whole, and the old process then exits.
    gate.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = c.read_chunk().await {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, events[1..].concat().as_bytes());
    let status = wait_exit(old_child, "old process", &log).await;
    assert!(status.success(), "{status:?}");
    gw.child = new.0.take();
    let records = gw.wait_records(1);
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(
        (
            &r["status"],
            &r["usage_status"],
            &r["stream"],
            &r["input_tokens"],
            &r["output_tokens"]
        ),
        (
            &200.into(),
            &"exact".into(),
            &true.into(),
            &11.into(),
            &OUTPUT_TOKENS.into()
        ),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_still_running_at_the_drain_timeout_is_cut_and_recorded_as_truncated() {
    let (mock, _gate, events) = paused_chat_stream().await; // the gate never opens
    let mut gw = Gateway::for_mock(&mock, "server:\n  drain_timeout_seconds: 1\n");
    let mut c = open_stream(&gw, &events[0]).await;
    gw.signal(libc::SIGTERM);
    // The gateway cuts the stream: the connection closes without the last chunk.
    assert!(closed_by_gateway(&mut c).await, "the stream was not cut");
    assert!(gw.wait_exit().success(), "log:\n{}", gw.log());
    let records = gw.records();
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(
        (&r["status"], &r["usage_status"], &r["stream"]),
        (&200.into(), &"truncated".into(), &true.into()),
        "{r}"
    );
    assert!(
        gw.log()
            .contains("drain timeout reached with 1 requests in flight"),
        "{}",
        gw.log()
    );
}

/// Aborts a background task on drop.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether `pid` is gone (or a zombie waiting for its parent).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// SIGTERM to `pid` (not our child), then wait until it is gone.
async fn stop_and_wait_gone(pid: u32, what: &str) {
    send_signal(pid, libc::SIGTERM);
    wait_until(&format!("{what} did not stop"), || process_gone(pid), String::new).await;
}

fn upgrade_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join("upgrade.sh")
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_script_hands_over_to_a_new_process() {
    let mock = Mock::start(|_| Reply::json(200, "{}")).await;
    let mut gw = Gateway::start(GatewayOpts {
        yaml: all_providers_at(mock.port),
        ..Default::default()
    });
    let old_pid = gw.child.as_ref().expect("running").id();
    let new_log = gw.dir.path().join("new.log");
    let script = upgrade_script();
    let config = gw.config_path.clone();
    let log_arg = new_log.clone();
    let run = tokio::task::spawn_blocking(move || {
        Launch::script(&script)
            .arg("--bin")
            .arg(LMGATE)
            .config(&config)
            .arg("--pid")
            .arg(old_pid.to_string())
            .arg("--log")
            .arg(&log_arg)
            .deadline(SCRIPT_DEADLINE)
            .run()
    });
    // The old process is our child: reap it as soon as it exits so the script sees it gone.
    let log_path = gw.log_path.clone();
    let log = move || std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut old = gw.child.take().expect("running");
    let old_status = wait_exit(&mut old, "old process", &log).await;
    let out = run.await.expect("script thread");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let new_pid: Option<u32> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("new pid "))
        .and_then(|p| p.trim().parse().ok());
    let _guard = PidGuard(new_pid);
    assert!(
        out.status.success(),
        "upgrade.sh failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\nold log:\n{}\nnew log:\n{}",
        out.status,
        log(),
        std::fs::read_to_string(&new_log).unwrap_or_default()
    );
    assert!(old_status.success(), "old process: {old_status:?}");
    let new_pid = new_pid.unwrap_or_else(|| panic!("no `new pid N` line in:\n{stdout}"));
    assert_ne!(new_pid, old_pid);
    // The new process serves on the same port.
    let resp = request(&gw.addr(), "GET", "/healthz", &[], b"").await;
    assert_eq!(resp.status, 200);
    // And stops cleanly.
    stop_and_wait_gone(new_pid, "new process").await;
}

/// The pid in `path`, once it is there and differs from `not`.
async fn wait_pid_file(path: &Path, not: Option<u32>, log: &dyn Fn() -> String) -> u32 {
    let mut found = None;
    wait_until(
        &format!("no new pid in {}", path.display()),
        || {
            found = read_pid(path).filter(|p| Some(*p) != not && !process_gone(*p));
            found.is_some()
        },
        || format!("log:\n{}", log()),
    )
    .await;
    found.expect("a pid once the wait is over")
}

/// The pid written in `path`, if there is one.
fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// What the systemd unit in contrib/ does on `systemctl reload`: the gateway runs as a
/// daemon (`-d`, Pingora writes the pid file) and the script upgrades it with `--daemon`,
/// reading the old pid from the pid file and leaving the new one in it.
#[tokio::test(flavor = "multi_thread")]
async fn upgrade_script_upgrades_a_daemon_through_its_pid_file() {
    let mock = Mock::start(|_| Reply::json(200, "{}")).await;
    let gw = Gateway::spawn(GatewayOpts {
        yaml: all_providers_at(mock.port),
        args: vec!["--daemon".to_owned()],
        ..Default::default()
    });
    let pid_file = gw.dir.path().join("lmgate.pid");
    let log_path = gw.log_path.clone();
    let log = move || std::fs::read_to_string(&log_path).unwrap_or_default();
    let old_pid = wait_pid_file(&pid_file, None, &log).await;
    let mut old_guard = PidGuard(Some(old_pid));
    gw.wait_ready();

    let script = upgrade_script();
    let config = gw.config_path.clone();
    let out = tokio::task::spawn_blocking(move || {
        Launch::script(&script)
            .args(["--daemon", "--bin", LMGATE])
            .config(&config)
            .deadline(SCRIPT_DEADLINE)
            .run()
    })
    .await
    .expect("script thread");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let new_pid = read_pid(&pid_file);
    let _new_guard = PidGuard(new_pid.filter(|p| *p != old_pid));
    assert!(
        out.status.success(),
        "upgrade.sh --daemon failed: {:?}\nstdout:\n{stdout}\nstderr:\n{}\nlog:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        log()
    );
    assert!(process_gone(old_pid), "the old daemon exited");
    old_guard.0 = None;
    let new_pid = new_pid.expect("a pid in the pid file");
    assert_ne!(new_pid, old_pid);
    assert!(stdout.contains(&format!("new pid {new_pid}")), "{stdout}");
    let resp = request(&gw.addr(), "GET", "/healthz", &[], b"").await;
    assert_eq!(resp.status, 200);
    stop_and_wait_gone(new_pid, "new daemon").await;
}

#[test]
fn upgrade_script_refuses_a_pid_that_is_not_running_and_a_bad_config() {
    let dir = ConfigDir::new();
    let config = dir.config(&format!("server: {{host: 127.0.0.1, port: {}}}\n", free_port()));
    let run = |config: &Path, pid: &str| {
        Launch::script(&upgrade_script())
            .args(["--bin", LMGATE, "--pid", pid])
            .config(config)
            .deadline(SCRIPT_DEADLINE)
            .run()
    };
    // A pid that cannot be running (above the kernel's pid_max limit).
    let out = run(&config, "99999999");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("99999999") && err.contains("not running"), "{err}");

    // A config that does not validate: the old process is never touched.
    let bad = dir.write("bad.yaml", "server: {port: eighty}\n");
    let mut bystander = ChildGuard(Some(
        Command::new("sleep").arg("30").spawn().expect("spawn sleep"),
    ));
    let pid = bystander.0.as_ref().map(Child::id).expect("spawned").to_string();
    let out = run(&bad, &pid);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.port"), "{err}");
    let still_running = bystander.0.as_mut().and_then(|c| c.try_wait().ok()).flatten();
    assert!(
        still_running.is_none(),
        "the old process was signalled: {still_running:?}"
    );
}
