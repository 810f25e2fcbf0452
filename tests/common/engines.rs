//! The shared engines the fleet tests need, started for real on loopback: Redis
//! (`redis-server`), ClickHouse (`clickhouse-server`) and HAProxy (`haproxy`), each from
//! Debian's packages, each on an ephemeral port with its files in a temp directory, each
//! stopped when its guard drops.
//!
//! A missing engine fails the test that needs it, naming the package: `scripts/dev test`
//! (the README's test command) and `.ci/run` install them first, so a skip here would only
//! hide a broken setup.

use super::{free_port, DEADLINE};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Find an engine's binary on PATH or in Debian's `sbin` directories, or panic naming the
/// package that provides it.
pub fn engine_binary(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from));
    for dir in dirs {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} not found: this test needs a real {package} (Debian package `{package}`); \
         `scripts/dev test` installs it with apt-get where it can, or run \
         `apt-get update && apt-get install -y {package}`"
    );
}

/// A running engine process, killed (and waited for) on drop.
pub struct Engine {
    child: Option<Child>,
    /// The loopback port it serves (Redis, ClickHouse HTTP, HAProxy frontend).
    pub port: u16,
    /// Its directory (data, logs, config).
    pub dir: tempfile::TempDir,
    /// How to start it again on the same port and directory ([`Engine::restart`]).
    command: Vec<String>,
    log: PathBuf,
}

impl Engine {
    fn spawn(command: Vec<String>, port: u16, dir: tempfile::TempDir, log: PathBuf) -> Engine {
        let mut e = Engine {
            child: None,
            port,
            dir,
            command,
            log,
        };
        e.start();
        e
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.command[0]));
        self.child = Some(child);
    }

    /// The engine's own output so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stop it now (SIGKILL for HAProxy and Redis is not needed: SIGTERM, then wait).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let start = Instant::now();
            loop {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if start.elapsed() > DEADLINE {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Start it again with the same port, files and settings, and wait until it answers.
    pub fn restart(&mut self, ready: impl Fn(&Engine) -> bool) {
        self.stop();
        self.start();
        self.wait(ready);
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn wait(&mut self, ready: impl Fn(&Engine) -> bool) {
        let start = Instant::now();
        // ClickHouse 18.16 takes a few seconds to start on a loaded machine.
        while !ready(self) {
            assert!(
                self.running(),
                "{} exited at start:\n{}",
                self.command[0],
                self.log()
            );
            assert!(
                start.elapsed() < DEADLINE * 3,
                "{} not ready on port {}:\n{}",
                self.command[0],
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One raw request/answer on a fresh TCP connection (used for readiness checks).
fn exchange(addr: &str, request: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(request).ok()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.ends_with(b"\r\n") && !request.starts_with(b"GET") && !request.starts_with(b"POST") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Some(out)
}

/// Redis: `redis-server` with no persistence unless `appendonly` (then an append-only file
/// in its directory, so a restart keeps the data, as the fleet compose file runs it).
pub fn redis(appendonly: bool) -> Engine {
    redis_with(appendonly, None)
}

/// [`redis`], requiring `password` (`requirepass`) when given.
pub fn redis_with(appendonly: bool, password: Option<&str>) -> Engine {
    let bin = engine_binary("redis-server", "redis-server");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("redis.log");
    let mut cmd: Vec<String> = vec![bin.display().to_string()];
    for (k, v) in [
        ("--port", port.to_string()),
        ("--bind", "127.0.0.1".into()),
        ("--dir", dir.path().display().to_string()),
        ("--save", String::new()),
        ("--appendonly", if appendonly { "yes" } else { "no" }.into()),
        ("--daemonize", "no".into()),
        ("--protected-mode", "no".into()),
    ] {
        cmd.push(k.into());
        cmd.push(v);
    }
    if let Some(p) = password {
        cmd.extend(["--requirepass".to_string(), p.to_string()]);
    }
    let mut e = Engine::spawn(cmd, port, dir, log);
    e.wait(redis_ready);
    e
}

/// Whether Redis answers PING (with a password, it answers that one is needed).
pub fn redis_ready(e: &Engine) -> bool {
    exchange(&e.addr(), b"PING\r\n").is_some_and(|a| a.starts_with(b"+PONG") || a.starts_with(b"-NOAUTH"))
}

/// A Redis command (inline protocol, no spaces inside arguments); the raw reply.
pub fn redis_cmd(e: &Engine, cmd: &str) -> String {
    let a = exchange(&e.addr(), format!("{cmd}\r\n").as_bytes()).unwrap_or_default();
    String::from_utf8_lossy(&a).into_owned()
}

/// ClickHouse: `clickhouse-server` (Debian's 18.16 here) with its data in a temp directory,
/// HTTP on an ephemeral loopback port and every other port on another free one.
pub fn clickhouse() -> Engine {
    let bin = engine_binary("clickhouse-server", "clickhouse-server");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = dir.path().display().to_string();
    let log = dir.path().join("clickhouse.out");
    // The packaged config listens on loopback; everything it writes goes under `dir`.
    let config = ["/etc/clickhouse-server/config.xml"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or_else(|| {
            panic!("clickhouse-server is installed but /etc/clickhouse-server/config.xml is missing")
        });
    let cmd: Vec<String> = vec![
        bin.display().to_string(),
        format!("--config-file={config}"),
        "--".into(),
        format!("--path={d}/data/"),
        format!("--tmp_path={d}/tmp/"),
        format!("--user_files_path={d}/user_files/"),
        format!("--format_schema_path={d}/format_schemas/"),
        format!("--http_port={port}"),
        format!("--tcp_port={}", free_port()),
        format!("--interserver_http_port={}", free_port()),
        format!("--logger.log={d}/server.log"),
        format!("--logger.errorlog={d}/server.err.log"),
        "--logger.console=0".into(),
        "--listen_host=127.0.0.1".into(),
    ];
    let mut e = Engine::spawn(cmd, port, dir, log);
    e.wait(clickhouse_ready);
    e
}

/// Whether ClickHouse answers `/ping`.
pub fn clickhouse_ready(e: &Engine) -> bool {
    let req = format!(
        "GET /ping HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        e.addr()
    );
    exchange(&e.addr(), req.as_bytes())
        .is_some_and(|a| a.starts_with(b"HTTP/1.1 200") && a.ends_with(b"Ok.\n"))
}

/// Run one query over ClickHouse's HTTP interface; the body of a 200 answer, or panic
/// with the server's error text.
pub fn clickhouse_query(e: &Engine, sql: &str) -> String {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{sql}",
        e.addr(),
        sql.len()
    );
    let a = exchange(&e.addr(), req.as_bytes()).expect("ClickHouse answers");
    let text = String::from_utf8_lossy(&a).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "ClickHouse refused {sql:?}:\n{text}"
    );
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    }
}

/// Create LMGate's database and table from `contrib/clickhouse/schema.sql` (the file the
/// README tells operators to run), one statement at a time.
pub fn clickhouse_schema(e: &Engine) {
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/clickhouse/schema.sql"
    ))
    .unwrap();
    let text: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    for stmt in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        clickhouse_query(e, stmt);
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// HAProxy in front of `backends` (`host:port` each), round robin, HTTP mode with
/// keep-alive on both sides, health-checked on `/healthz`.
pub fn haproxy(backends: &[String]) -> Engine {
    let bin = engine_binary("haproxy", "haproxy");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("haproxy.cfg");
    let mut text = format!(
        "global\n  maxconn 4096\n\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  \
         timeout server 60s\n  option http-keep-alive\n  retries 0\n\n\
         frontend fleet\n  bind 127.0.0.1:{port}\n  default_backend gateways\n\n\
         backend gateways\n  balance roundrobin\n  option httpchk GET /healthz\n  \
         default-server inter 200ms fall 2 rise 1\n"
    );
    for (i, b) in backends.iter().enumerate() {
        text.push_str(&format!("  server gw{i} {b} check\n"));
    }
    std::fs::write(&cfg, text).unwrap();
    let log = dir.path().join("haproxy.log");
    let cmd = vec![
        bin.display().to_string(),
        "-db".into(),
        "-f".into(),
        cfg.display().to_string(),
    ];
    let mut e = Engine::spawn(cmd, port, dir, log);
    e.wait(|e| TcpStream::connect(e.addr()).is_ok());
    e
}
