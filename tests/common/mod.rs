//! Test harness: start the real `lmgate` binary on an ephemeral loopback port with a temp
//! config, a mock upstream that speaks HTTP/1.1 (JSON, SSE, chunked, binary frames), and a
//! small raw HTTP/1.1 client so tests see the exact bytes on the wire.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Deadline for anything that could hang; only fails a hung test, never measures.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Demo keys used by the tests' allow-lists (fakes).
pub const KEY_A: &str = "sk-test-0001-aaaaaaaaaaaaAAAAAA";
pub const KEY_B: &str = "sk-test-0002-bbbbbbbbbbbbBBBBBB";
pub const KEY_C: &str = "sk-test-0003-ccccccccccccCCCCCC";

/// An allow-list with KEY_A (id `team-a`) and KEY_B (id `team-b`).
pub fn default_allowlist() -> String {
    format!("id,api_key,owner,added\nteam-a,{KEY_A},alice,2026-01-01\nteam-b,{KEY_B},bob,2026-01-02\n")
}

/// A free loopback port (bound and released; the gateway binds it right after).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `lmgate` child process; killed on drop.
pub struct Gateway {
    pub child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub allowlist_path: PathBuf,
    pub stats_path: PathBuf,
    pub log_path: PathBuf,
}

/// What to start the gateway with.
pub struct GatewayOpts {
    /// Extra YAML appended to the generated config (providers, timeouts, ...).
    pub yaml: String,
    /// Allow-list CSV contents.
    pub allowlist: String,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Start the binary with this soft open-file limit (as a container runtime might).
    pub soft_nofile: Option<u64>,
}

impl Default for GatewayOpts {
    fn default() -> Self {
        GatewayOpts {
            yaml: String::new(),
            allowlist: default_allowlist(),
            env: Vec::new(),
            args: Vec::new(),
            soft_nofile: None,
        }
    }
}

/// YAML for a provider pointing at a mock.
pub fn provider_yaml(name: &str, port: u16, format: &str) -> String {
    format!("  {name}:\n    upstream: http://127.0.0.1:{port}\n    format: {format}\n")
}

/// Providers section: all five defaults pointed at `port`.
pub fn all_providers_at(port: u16) -> String {
    let mut s = String::from("providers:\n");
    for (name, format) in [
        ("openai", "openai"),
        ("anthropic", "anthropic"),
        ("google", "gemini"),
        ("gemini", "gemini"),
        ("bedrock", "bedrock"),
    ] {
        s.push_str(&provider_yaml(name, port, format));
    }
    s
}

impl Gateway {
    /// Write config + allow-list into a temp dir and start the binary; waits until
    /// `/healthz` answers.
    pub fn start(opts: GatewayOpts) -> Gateway {
        let g = Self::spawn(opts);
        g.wait_ready();
        g
    }

    /// Like `start` without waiting (for tests of start-up failures).
    pub fn spawn(opts: GatewayOpts) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let allowlist_path = dir.path().join("allowlist.csv");
        let stats_path = dir.path().join("stats").join("stats.jsonl");
        let config_path = dir.path().join("lmgate.yaml");
        let log_path = dir.path().join("lmgate.log");
        std::fs::write(&allowlist_path, &opts.allowlist).unwrap();
        let base = format!(
            "server:\n  host: 127.0.0.1\n  port: {port}\n  threads: 2\n  drain_timeout_seconds: 10\n  upgrade_sock: {}\n  pid_file: {}\nauth:\n  allowlist_path: {}\n  poll_interval_seconds: 1\nstats:\n  output_path: {}\n  flush_interval_seconds: 1\n",
            dir.path().join("upgrade.sock").display(),
            dir.path().join("lmgate.pid").display(),
            allowlist_path.display(),
            stats_path.display(),
        );
        let yaml = merge_yaml(&base, &opts.yaml);
        std::fs::write(&config_path, yaml).unwrap();
        let mut cmd = binary_command(&config_path, &log_path, &opts.env, &opts.args, dir.path());
        if let Some(soft) = opts.soft_nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    lim.rlim_cur = soft as libc::rlim_t;
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().unwrap();
        Gateway {
            child: Some(child),
            port,
            dir,
            config_path,
            allowlist_path,
            stats_path,
            log_path,
        }
    }

    /// Poll `/healthz` until it answers 200 (or the child dies, or the deadline passes).
    pub fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::Read;
                s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                if buf.starts_with(b"HTTP/1.1 200") {
                    return;
                }
            }
            assert!(
                start.elapsed() < DEADLINE,
                "gateway not ready; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Everything the gateway wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Send a signal to the gateway.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Wait for the process to exit; panics past the deadline.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "gateway did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every JSON record in the stats file and its rotated siblings.
    pub fn records(&self) -> Vec<serde_json::Value> {
        read_records(self.stats_path.parent().unwrap())
    }

    /// Wait until at least `n` records are on disk, and return them.
    pub fn wait_records(&self, n: usize) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let r = self.records();
            if r.len() >= n {
                return r;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "expected {n} records, found {}: {r:?}\nlog:\n{}",
                r.len(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Every gateway in the suite runs at trace level (see `spawn_binary`): whatever the
        // test did, no full key may appear in its log or its stats files.
        if !std::thread::panicking() {
            assert_no_keys_leaked(&self.log_path, self.stats_path.parent().unwrap());
        }
    }
}

/// Panics when any test key appears in the log file or any file of the stats directory.
pub fn assert_no_keys_leaked(log: &Path, stats_dir: &Path) {
    let mut texts = vec![(log.to_path_buf(), std::fs::read(log).unwrap_or_default())];
    if let Ok(rd) = std::fs::read_dir(stats_dir) {
        for e in rd.flatten() {
            texts.push((e.path(), std::fs::read(e.path()).unwrap_or_default()));
        }
    }
    for (path, bytes) in texts {
        for key in [KEY_A, KEY_B, KEY_C] {
            assert!(
                find(&bytes, key.as_bytes()).is_none(),
                "a full key leaked into {}",
                path.display()
            );
        }
    }
}

/// Parse every `*.jsonl*` file in `dir`, in name order.
pub fn read_records(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => return Vec::new(),
    };
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if !name.contains(".jsonl") || name.ends_with(".lock") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            out.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSONL line {line:?}: {e}")));
        }
    }
    out
}

/// Start the binary with a config file; stdout and stderr go to `log_path`.
pub fn spawn_binary(
    config: &Path,
    log_path: &Path,
    env: &[(String, String)],
    args: &[String],
    cwd: &Path,
) -> Child {
    binary_command(config, log_path, env, args, cwd).spawn().unwrap()
}

/// The command `spawn_binary` runs, for callers that adjust it first.
pub fn binary_command(
    config: &Path,
    log_path: &Path,
    env: &[(String, String)],
    args: &[String],
    cwd: &Path,
) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lmgate"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .current_dir(cwd)
        // The whole suite runs at trace level so the key-hygiene check in `Drop` sees
        // everything Pingora can print (headers, request lines, raw upstream writes).
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log));
    for (k, _) in std::env::vars() {
        if k.starts_with("LMGATE_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Run the binary to completion (for start-up failures): (status, output).
pub fn run_binary(config: &Path, env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lmgate"));
    cmd.arg("--config").arg(config).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("lmgate did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (out.status, text)
}

/// Merge two YAML documents key by key (the second wins), so tests can add sections.
pub fn merge_yaml(base: &str, extra: &str) -> String {
    fn merge(a: &mut serde_yaml::Value, b: serde_yaml::Value) {
        match (a, b) {
            (serde_yaml::Value::Mapping(a), serde_yaml::Value::Mapping(b)) => {
                for (k, v) in b {
                    match a.get_mut(&k) {
                        Some(existing) => merge(existing, v),
                        None => {
                            a.insert(k, v);
                        }
                    }
                }
            }
            (a, b) => *a = b,
        }
    }
    let mut a: serde_yaml::Value = serde_yaml::from_str(base).unwrap();
    if !extra.trim().is_empty() {
        let b: serde_yaml::Value = serde_yaml::from_str(extra).unwrap();
        merge(&mut a, b);
    }
    serde_yaml::to_string(&a).unwrap()
}

// ------------------------------------------------------------------------------------------
// Mock upstream
// ------------------------------------------------------------------------------------------

/// A request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One piece of a mock answer.
pub enum Part {
    /// Raw bytes written as they are.
    Bytes(Vec<u8>),
    /// Wait until the test calls `gate.notify_one()`.
    Wait(Arc<Notify>),
    /// Close the connection now (abrupt end).
    Close,
}

/// The mock's answer: a status line + headers are written first, then the parts in order.
/// With `chunked`, each `Bytes` part is sent as one HTTP chunk and a final `0` chunk ends it.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub chunked: bool,
    pub parts: Vec<Part>,
    /// Do not answer at all (never send headers).
    pub hang: bool,
}

impl Reply {
    /// A complete JSON answer with Content-Length.
    pub fn json(status: u16, body: &str) -> Reply {
        Reply::full(status, "application/json", body.as_bytes().to_vec())
    }
    /// A complete answer with Content-Length.
    pub fn full(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: vec![
                ("content-type".into(), content_type.into()),
                ("content-length".into(), body.len().to_string()),
            ],
            chunked: false,
            parts: vec![Part::Bytes(body)],
            hang: false,
        }
    }
    /// A chunked stream of the given content type.
    pub fn stream(content_type: &str, parts: Vec<Part>) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), content_type.into())],
            chunked: true,
            parts,
            hang: false,
        }
    }
    /// SSE, one chunk per event string.
    pub fn sse(events: &[&str]) -> Reply {
        Reply::stream(
            "text/event-stream",
            events
                .iter()
                .map(|e| Part::Bytes(e.as_bytes().to_vec()))
                .collect(),
        )
    }
    /// Add a header.
    pub fn with_header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }
}

pub type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// A mock upstream on `127.0.0.1:0`.
pub struct Mock {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Answers abandoned because the gateway closed the connection while the mock was
    /// parked at a `Part::Wait` (the upstream request was cancelled).
    pub cancelled: Arc<std::sync::atomic::AtomicUsize>,
    /// Connections accepted (to see upstream connection reuse).
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    /// Start a mock whose answers come from `handler`.
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let reqs = Arc::clone(&requests);
        let cancelled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = Arc::clone(&cancelled);
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let conns = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            loop {
                let (sock, _) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    // A transient failure (EMFILE, an aborted handshake) must not stop
                    // the mock for the rest of the test.
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let handler = Arc::clone(&handler);
                let reqs = Arc::clone(&reqs);
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    let _ = serve_conn(sock, handler, reqs, c).await;
                });
            }
        });
        Mock {
            port,
            requests,
            cancelled,
            connections,
            task,
        }
    }

    /// Requests received so far.
    pub fn received(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve_conn(
    mut sock: TcpStream,
    handler: Handler,
    reqs: Arc<Mutex<Vec<Recorded>>>,
    cancelled: Arc<std::sync::atomic::AtomicUsize>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let Some(req) = read_request(&mut sock, &mut buf).await? else {
            return Ok(());
        };
        reqs.lock().unwrap().push(req.clone());
        let reply = handler(&req);
        if reply.hang {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return Ok(());
        }
        let mut head = format!("HTTP/1.1 {} X\r\n", reply.status);
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if reply.chunked {
            head.push_str("transfer-encoding: chunked\r\n");
        }
        head.push_str("\r\n");
        sock.write_all(head.as_bytes()).await?;
        for part in reply.parts {
            match part {
                Part::Bytes(b) if reply.chunked => {
                    if b.is_empty() {
                        continue;
                    }
                    sock.write_all(format!("{:x}\r\n", b.len()).as_bytes()).await?;
                    sock.write_all(&b).await?;
                    sock.write_all(b"\r\n").await?;
                }
                Part::Bytes(b) => sock.write_all(&b).await?,
                Part::Wait(n) => {
                    let mut probe = [0u8; 1];
                    tokio::select! {
                        _ = n.notified() => {}
                        r = sock.read(&mut probe) => {
                            if matches!(r, Ok(0) | Err(_)) {
                                cancelled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                return Ok(());
                            }
                        }
                    }
                }
                Part::Close => {
                    sock.flush().await?;
                    return Ok(());
                }
            }
            sock.flush().await?;
        }
        if reply.chunked {
            sock.write_all(b"0\r\n\r\n").await?;
        }
    }
}

/// Read one HTTP/1.1 request (Content-Length or chunked body). `None` at clean EOF.
async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<Recorded>> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        let mut tmp = [0u8; 8192];
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap_or("");
    let mut it = start.split(' ');
    let method = it.next().unwrap_or("").to_string();
    let target = it.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < len {
            let mut tmp = [0u8; 8192];
            let n = sock.read(&mut tmp).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        body = buf.drain(..len).collect();
    } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        body = read_chunked(sock, buf).await?;
    }
    Ok(Some(Recorded {
        method,
        target,
        headers,
        body,
    }))
}

async fn fill(sock: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut tmp = [0u8; 8192];
    let n = sock.read(&mut tmp).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&tmp[..n]);
    Ok(())
}

async fn read_chunked(sock: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            fill(sock, buf).await?;
        };
        let size_str = String::from_utf8_lossy(&buf[..line_end]).to_string();
        let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        buf.drain(..line_end + 2);
        if size == 0 {
            while find(buf, b"\r\n").is_none() {
                fill(sock, buf).await?;
            }
            let e = find(buf, b"\r\n").unwrap();
            buf.drain(..e + 2);
            return Ok(body);
        }
        while buf.len() < size + 2 {
            fill(sock, buf).await?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ------------------------------------------------------------------------------------------
// Raw HTTP/1.1 client
// ------------------------------------------------------------------------------------------

/// A response as received.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Body after de-chunking.
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// A keep-alive connection to the gateway.
pub struct Client {
    pub sock: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: &str) -> Client {
        Client {
            sock: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// Send a request: `headers` are written as given; a body gets a Content-Length.
    pub async fn send(&mut self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) {
        let mut req = format!("{method} {target} HTTP/1.1\r\nhost: gateway\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.sock.write_all(&bytes).await.unwrap();
    }

    /// Read a response head; returns (status, headers).
    pub async fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.fill().await.expect("connection closed before response head");
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (status, headers)
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 16384];
        let n = tokio::time::timeout(DEADLINE, self.sock.read(&mut tmp))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read deadline"))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Read the next chunk of a chunked body (`None` at the last chunk).
    pub async fn read_chunk(&mut self) -> Option<Vec<u8>> {
        let line_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                break i;
            }
            self.fill().await.ok()?;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&self.buf[..line_end]).trim(), 16).ok()?;
        self.buf.drain(..line_end + 2);
        while self.buf.len() < size + 2 {
            self.fill().await.ok()?;
        }
        let data = self.buf[..size].to_vec();
        self.buf.drain(..size + 2);
        (size > 0).then_some(data)
    }

    /// Read a whole response (Content-Length, chunked, or until close).
    pub async fn read_response(&mut self, method: &str) -> Response {
        let (status, headers) = self.read_head().await;
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v): &(String, String)| v.clone())
        };
        let mut body = Vec::new();
        if method == "HEAD" || status == 204 || status == 304 {
        } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < len {
                self.fill().await.expect("closed mid-body");
            }
            body = self.buf.drain(..len).collect();
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            while let Some(c) = self.read_chunk().await {
                body.extend_from_slice(&c);
            }
        } else {
            while self.fill().await.is_ok() {}
            body = std::mem::take(&mut self.buf);
        }
        Response {
            status,
            headers,
            body,
        }
    }

    /// Send and read one request.
    pub async fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.send(method, target, headers, body).await;
        self.read_response(method).await
    }
}

/// One request on a fresh connection.
pub async fn request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    Client::connect(addr)
        .await
        .request(method, target, headers, body)
        .await
}

/// Bearer auth header for a key.
pub fn bearer(key: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {key}"))
}

/// Simple map from records for assertions.
pub fn by_endpoint(records: &[serde_json::Value]) -> HashMap<String, serde_json::Value> {
    records
        .iter()
        .map(|r| (r["endpoint"].as_str().unwrap_or("").to_string(), r.clone()))
        .collect()
}
