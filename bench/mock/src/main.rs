//! Helpers for `bench/run.sh`, kept out of the LMGate workspace (own `[workspace]` table).
//!
//! - `slow-server PORT INTERVAL_MS EVENTS`: a mock upstream whose every response is an
//!   OpenAI chat stream (chunked `text/event-stream`): one event at once, then one every
//!   INTERVAL_MS, EVENTS in all, then the usage chunk and `[DONE]`. It holds thousands of
//!   streams open for the memory test.
//! - `load URL CONNS SECONDS [HEADER]...`: CONNS keep-alive connections, each sending
//!   GET after GET for SECONDS; prints requests/s and time to first byte / to last byte
//!   percentiles. Used for the SSE stream comparison.
//! - `hold URL N SECONDS READY_FILE [HEADER]...`: opens N concurrent streams, writes
//!   READY_FILE once every stream has its first bytes, holds them until SECONDS have passed
//!   since start (or the streams end), then closes them.
//!
//! Loopback only: every URL must be `http://127.0.0.1:PORT/path`. Every loop is bounded by
//! a deadline. Runs on one thread (`taskset` it next to the load generator).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upper bound on any single run, whatever the arguments say.
const MAX_RUN: Duration = Duration::from_secs(3600);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let res = match args.first().map(String::as_str) {
        Some("slow-server") if args.len() == 4 => rt.block_on(slow_server(&args[1..])),
        Some("load") if args.len() >= 4 => rt.block_on(load(&args[1..])),
        Some("hold") if args.len() >= 5 => rt.block_on(hold(&args[1..])),
        _ => {
            eprintln!(
                "usage: lmgate-bench-tool slow-server PORT INTERVAL_MS EVENTS\n\
                 \x20      lmgate-bench-tool load URL CONNS SECONDS [HEADER]...\n\
                 \x20      lmgate-bench-tool hold URL N SECONDS READY_FILE [HEADER]..."
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = res {
        eprintln!("lmgate-bench-tool: {e}");
        std::process::exit(1);
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

fn num<T: std::str::FromStr>(s: &str, what: &str) -> io::Result<T> {
    s.parse().map_err(|_| bad(format!("{what}: not a number: {s}")))
}

// ------------------------------------------------------------------------------------------
// Mock upstream
// ------------------------------------------------------------------------------------------

const ROLE_EVENT: &str = r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}"#;
const TEXT_EVENT: &str = r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"content":" token"},"logprobs":null,"finish_reason":null}],"usage":null}"#;
const USAGE_EVENT: &str = r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29}}"#;

fn chunk(out: &mut Vec<u8>, event: &str) {
    let payload = format!("{event}\n\n");
    out.extend_from_slice(format!("{:x}\r\n", payload.len()).as_bytes());
    out.extend_from_slice(payload.as_bytes());
    out.extend_from_slice(b"\r\n");
}

async fn slow_server(args: &[String]) -> io::Result<()> {
    let port: u16 = num(&args[0], "PORT")?;
    let interval = Duration::from_millis(num(&args[1], "INTERVAL_MS")?);
    let events: u32 = num(&args[2], "EVENTS")?;
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let deadline = Instant::now() + MAX_RUN;
    loop {
        let (sock, _) = match tokio::time::timeout_at(deadline.into(), listener.accept()).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        tokio::spawn(async move {
            let _ = serve_slow(sock, interval, events).await;
        });
    }
}

async fn serve_slow(mut sock: TcpStream, interval: Duration, events: u32) -> io::Result<()> {
    let _ = sock.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    loop {
        // Read one request head (these requests carry no body).
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 * 1024 {
                return Err(bad("request head too large"));
            }
            let mut tmp = [0u8; 4096];
            let n = sock.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        };
        buf.drain(..head_end);
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n\
              cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        chunk(&mut out, ROLE_EVENT);
        sock.write_all(&out).await?;
        for _ in 0..events {
            tokio::time::sleep(interval).await;
            out.clear();
            chunk(&mut out, TEXT_EVENT);
            sock.write_all(&out).await?;
        }
        out.clear();
        chunk(&mut out, USAGE_EVENT);
        chunk(&mut out, "data: [DONE]");
        out.extend_from_slice(b"0\r\n\r\n");
        sock.write_all(&out).await?;
    }
}

// ------------------------------------------------------------------------------------------
// HTTP/1.1 client
// ------------------------------------------------------------------------------------------

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

struct Target {
    port: u16,
    request: Vec<u8>,
}

fn target(url: &str, headers: &[String]) -> io::Result<Target> {
    let rest = url
        .strip_prefix("http://127.0.0.1:")
        .ok_or_else(|| bad("URL must start with http://127.0.0.1: (loopback only)"))?;
    let (port, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let port: u16 = num(port, "URL port")?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\naccept: */*\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    Ok(Target {
        port,
        request: req.into_bytes(),
    })
}

struct Conn {
    sock: TcpStream,
    buf: Vec<u8>,
}

struct Timing {
    status: u16,
    first_byte: Duration,
    last_byte: Duration,
}

impl Conn {
    async fn open(port: u16) -> io::Result<Conn> {
        let sock = TcpStream::connect(("127.0.0.1", port)).await?;
        sock.set_nodelay(true)?;
        Ok(Conn {
            sock,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Read more bytes; an early EOF is an error.
    async fn fill(&mut self) -> io::Result<()> {
        let mut tmp = [0u8; 16 * 1024];
        let n = self.sock.read(&mut tmp).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    /// Send one request and read its whole response. `on_first` runs at the first bytes.
    async fn exchange(&mut self, request: &[u8], mut on_first: impl FnMut()) -> io::Result<Timing> {
        let t0 = Instant::now();
        self.sock.write_all(request).await?;
        if self.buf.is_empty() {
            self.fill().await?;
        }
        let first_byte = t0.elapsed();
        on_first();
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut content_length = None;
        let mut chunked = false;
        for line in head.split("\r\n") {
            if let Some(v) = line.strip_prefix("content-length:") {
                content_length = v.trim().parse::<usize>().ok();
            } else if let Some(v) = line.strip_prefix("transfer-encoding:") {
                chunked = v.contains("chunked");
            }
        }
        self.buf.drain(..head_end);
        if chunked {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    self.fill().await?;
                };
                let size_txt = String::from_utf8_lossy(&self.buf[..line_end]);
                let size = usize::from_str_radix(size_txt.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| bad("bad chunk size"))?;
                let need = line_end + 2 + size + 2;
                while self.buf.len() < need {
                    self.fill().await?;
                }
                self.buf.drain(..need);
                if size == 0 {
                    break;
                }
            }
        } else {
            let n = content_length.ok_or_else(|| bad("response without length"))?;
            while self.buf.len() < n {
                self.fill().await?;
            }
            self.buf.drain(..n);
        }
        Ok(Timing {
            status,
            first_byte,
            last_byte: t0.elapsed(),
        })
    }
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0 // µs -> ms
}

async fn load(args: &[String]) -> io::Result<()> {
    let conns: usize = num(&args[1], "CONNS")?;
    let secs: f64 = num(&args[2], "SECONDS")?;
    let t = Arc::new(target(&args[0], &args[3..])?);
    let run = Duration::from_secs_f64(secs).min(MAX_RUN);
    let start = Instant::now();
    let deadline = start + run;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let t = Arc::clone(&t);
        tasks.push(tokio::spawn(async move {
            let mut first = Vec::new();
            let mut last = Vec::new();
            let (mut errors, mut non2xx) = (0u64, 0u64);
            let mut conn: Option<Conn> = None;
            while Instant::now() < deadline {
                if conn.is_none() {
                    match tokio::time::timeout_at(deadline.into(), Conn::open(t.port)).await {
                        Ok(Ok(c)) => conn = Some(c),
                        Ok(Err(_)) => {
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                        Err(_) => break,
                    }
                }
                let c = conn.as_mut().expect("just opened");
                match tokio::time::timeout_at(deadline.into(), c.exchange(&t.request, || {})).await {
                    Ok(Ok(tm)) => {
                        if !(200..300).contains(&tm.status) {
                            non2xx += 1;
                        }
                        first.push(tm.first_byte.as_micros().min(u32::MAX as u128) as u32);
                        last.push(tm.last_byte.as_micros().min(u32::MAX as u128) as u32);
                    }
                    Ok(Err(_)) => {
                        errors += 1;
                        conn = None;
                    }
                    Err(_) => break, // deadline: an unfinished response is not counted
                }
            }
            (first, last, errors, non2xx)
        }));
    }
    let (mut first, mut last, mut errors, mut non2xx) = (Vec::new(), Vec::new(), 0, 0);
    for task in tasks {
        let (f, l, e, n) = task.await.map_err(|e| bad(e.to_string()))?;
        first.extend(f);
        last.extend(l);
        errors += e;
        non2xx += n;
    }
    let elapsed = start.elapsed().as_secs_f64();
    first.sort_unstable();
    last.sort_unstable();
    println!(
        "requests={} errors={} non2xx={} rps={:.1} ttfb_p50_ms={:.3} ttfb_p99_ms={:.3} total_p50_ms={:.3} total_p99_ms={:.3}",
        first.len(),
        errors,
        non2xx,
        first.len() as f64 / elapsed,
        pct(&first, 0.50),
        pct(&first, 0.99),
        pct(&last, 0.50),
        pct(&last, 0.99),
    );
    Ok(())
}

async fn hold(args: &[String]) -> io::Result<()> {
    let n: usize = num(&args[1], "N")?;
    let secs: f64 = num(&args[2], "SECONDS")?;
    let ready_file = args[3].clone();
    let t = Arc::new(target(&args[0], &args[4..])?);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs).min(MAX_RUN);
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        // Pace the connects so the listen backlog never overflows.
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (t, ready, failed) = (Arc::clone(&t), Arc::clone(&ready), Arc::clone(&failed));
        tasks.push(tokio::spawn(async move {
            let attempt = async {
                let mut c = Conn::open(t.port).await?;
                c.exchange(&t.request, || {
                    ready.fetch_add(1, Ordering::Relaxed);
                })
                .await
            };
            match tokio::time::timeout_at(deadline.into(), attempt).await {
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(_)) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Wait for every stream to have its first bytes (or a failure), bounded.
    let wait_until = (start + Duration::from_secs(120)).min(deadline);
    while ready.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let msg = format!(
        "ready={} failed={} after_ms={}\n",
        ready.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        start.elapsed().as_millis()
    );
    std::fs::write(&ready_file, &msg)?;
    print!("{msg}");
    for task in tasks {
        let _ = task.await;
    }
    println!(
        "done failed={} elapsed_ms={}",
        failed.load(Ordering::Relaxed),
        start.elapsed().as_millis()
    );
    Ok(())
}
