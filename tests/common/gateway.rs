//! The `lmgate` process side of the harness: [`Launch`], the one way tests start the
//! binary (or a script that starts it), and [`Gateway`], a running instance with its own
//! temp config, allow-list, stats directory and log, killed on drop.

use super::{default_allowlist, free_port, Mock, DEADLINE, KEY_A, KEY_B, KEY_C};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const LMGATE: &str = env!("CARGO_BIN_EXE_lmgate");

/// How to start `lmgate`: every test that runs the binary goes through this builder. The
/// child inherits no `LMGATE_*` variable and no `RUST_LOG` from the shell that runs
/// `cargo test` (either would change the config or the output under test); it gets only
/// what the test sets.
pub struct Launch {
    cmd: Command,
    stdin: Option<Vec<u8>>,
    deadline: Duration,
}

impl Launch {
    /// The binary itself.
    pub fn lmgate() -> Launch {
        Launch::hermetic(Command::new(LMGATE))
    }

    /// `bash <script>`, for the scripts that start the binary themselves (pass them
    /// `--bin` [`LMGATE`]); the binary they start sees the same clean environment.
    pub fn script(path: &Path) -> Launch {
        let mut cmd = Command::new("bash");
        cmd.arg(path);
        Launch::hermetic(cmd)
    }

    fn hermetic(mut cmd: Command) -> Launch {
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("LMGATE_") {
                cmd.env_remove(k);
            }
        }
        cmd.env_remove("RUST_LOG").stdin(Stdio::null());
        Launch {
            cmd,
            stdin: None,
            deadline: DEADLINE,
        }
    }

    /// One more argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Launch {
        self.cmd.arg(arg);
        self
    }

    /// More arguments.
    pub fn args(mut self, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Launch {
        self.cmd.args(args);
        self
    }

    /// `--config <path>`.
    pub fn config(self, path: &Path) -> Launch {
        self.arg("--config").arg(path)
    }

    /// Set one environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Launch {
        self.cmd.env(key, value);
        self
    }

    /// Set environment variables.
    pub fn envs<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Launch {
        self.cmd.envs(vars);
        self
    }

    /// Run in `dir`.
    pub fn dir(mut self, dir: &Path) -> Launch {
        self.cmd.current_dir(dir);
        self
    }

    /// Append stdout and stderr to the file at `path` (for [`Launch::spawn`]).
    pub fn log_to(mut self, path: &Path) -> Launch {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        self.cmd
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        self
    }

    /// Start with this soft open-file limit (as a container runtime might).
    pub fn soft_nofile(mut self, soft: u64) -> Launch {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            self.cmd.pre_exec(move || {
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
        self
    }

    /// Feed `input` on stdin (for [`Launch::run`]); without it stdin is empty.
    pub fn stdin(mut self, input: &str) -> Launch {
        self.stdin = Some(input.as_bytes().to_vec());
        self
    }

    /// How long [`Launch::run`] waits before it kills the child and fails (default
    /// [`DEADLINE`]).
    pub fn deadline(mut self, deadline: Duration) -> Launch {
        self.deadline = deadline;
        self
    }

    /// Start it and leave it running.
    pub fn spawn(mut self) -> Child {
        self.cmd.spawn().expect("start the command")
    }

    /// Run it to completion and collect its output; panics (after killing it) if it is
    /// still running at the deadline.
    pub fn run(mut self) -> Output {
        let input = self.stdin.take();
        if input.is_some() {
            self.cmd.stdin(Stdio::piped());
        }
        let mut child = self
            .cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the command");
        if let Some(bytes) = input {
            // Dropped at the end of the statement: the child reads EOF after `bytes`.
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(&bytes)
                .unwrap();
        }
        let pid = child.id();
        // A thread drains stdout and stderr while it waits, so a chatty child never
        // blocks on a full pipe.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait_with_output()));
        match rx.recv_timeout(self.deadline) {
            Ok(out) => out.expect("wait for lmgate"),
            Err(_) => {
                signal_pid(pid, libc::SIGKILL);
                panic!("{:?} did not exit within {:?}", self.cmd, self.deadline);
            }
        }
    }
}

/// Run the binary with `--config <config>` to completion (for start-up failures):
/// (status, stderr followed by stdout).
pub fn run_binary(config: &Path, env: &[(&str, &str)]) -> (ExitStatus, String) {
    let out = Launch::lmgate().config(config).envs(env.iter().copied()).run();
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (out.status, text)
}

/// Send signal `sig` (`libc::SIGTERM`, ...) to process `pid`; panics if it cannot be sent.
pub fn send_signal(pid: u32, sig: libc::c_int) {
    assert!(
        signal_pid(pid, sig),
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// `kill(2)`: whether the signal was sent.
fn signal_pid(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Kills a process that is not our child (one a script started) on drop.
pub struct PidGuard(pub Option<u32>);

impl Drop for PidGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            signal_pid(pid, libc::SIGKILL);
        }
    }
}

/// Kills a child process on drop.
pub struct ChildGuard(pub Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running `lmgate` child process; killed on drop.
pub struct Gateway {
    pub child: Option<Child>,
    pub port: u16,
    /// The `/metrics` listener's port (the generated config names a free one).
    pub metrics_port: u16,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub allowlist_path: PathBuf,
    pub stats_path: PathBuf,
    pub log_path: PathBuf,
}

/// What to start the gateway with.
pub struct GatewayOpts {
    /// Extra YAML merged over the generated config (providers, timeouts, ...).
    pub yaml: String,
    /// Allow-list CSV contents.
    pub allowlist: String,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Start the binary with this soft open-file limit (as a container runtime might).
    pub soft_nofile: Option<u64>,
    /// The port the gateway is expected on (a free one when `None`); the generated config
    /// names it, unless `yaml` or `env` set another.
    pub port: Option<u16>,
}

impl Default for GatewayOpts {
    fn default() -> Self {
        GatewayOpts {
            yaml: String::new(),
            allowlist: default_allowlist(),
            env: Vec::new(),
            args: Vec::new(),
            soft_nofile: None,
            port: None,
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

    /// A gateway whose five default providers all point at `mock`, with `extra_yaml`
    /// (more top-level sections) after them.
    pub fn for_mock(mock: &Mock, extra_yaml: &str) -> Gateway {
        Gateway::start(GatewayOpts {
            yaml: format!("{}{extra_yaml}", all_providers_at(mock.port)),
            ..Default::default()
        })
    }

    /// Like `start` without waiting (for tests of start-up failures).
    pub fn spawn(opts: GatewayOpts) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let port = opts.port.unwrap_or_else(free_port);
        let metrics_port = free_port();
        let allowlist_path = dir.path().join("allowlist.csv");
        let stats_path = dir.path().join("stats").join("stats.jsonl");
        let config_path = dir.path().join("lmgate.yaml");
        let log_path = dir.path().join("lmgate.log");
        std::fs::write(&allowlist_path, &opts.allowlist).unwrap();
        let base = format!(
            "server:\n  host: 127.0.0.1\n  port: {port}\n  threads: 2\n  drain_timeout_seconds: 10\n  upgrade_sock: {}\n  pid_file: {}\nauth:\n  allowlist_path: {}\n  poll_interval_seconds: 1\nstats:\n  output_path: {}\n  flush_interval_seconds: 1\nmetrics:\n  listen: 127.0.0.1:{metrics_port}\n",
            dir.path().join("upgrade.sock").display(),
            dir.path().join("lmgate.pid").display(),
            allowlist_path.display(),
            stats_path.display(),
        );
        std::fs::write(&config_path, merge_yaml(&base, &opts.yaml)).unwrap();
        let mut gw = Gateway {
            child: None,
            port,
            metrics_port,
            dir,
            config_path,
            allowlist_path,
            stats_path,
            log_path,
        };
        let mut launch = gw
            .launch()
            .args(&opts.args)
            .envs(opts.env.iter().map(|(k, v)| (k, v)));
        if let Some(soft) = opts.soft_nofile {
            launch = launch.soft_nofile(soft);
        }
        gw.child = Some(launch.spawn());
        gw
    }

    /// The command that starts this gateway's binary: its config, its directory, its log
    /// (appended to), at trace level. Add arguments (`--upgrade`) before spawning.
    pub fn launch(&self) -> Launch {
        Launch::lmgate()
            .config(&self.config_path)
            .dir(self.dir.path())
            .log_to(&self.log_path)
            // The whole suite runs at trace level so the key-hygiene check in `Drop` sees
            // everything Pingora can print (headers, request lines, raw upstream writes).
            .env("RUST_LOG", "trace")
    }

    /// Poll `/healthz` until it answers 200 (or the child dies, or the deadline passes).
    pub fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                // Serving, and SIGTERM no longer has its default action (the handlers
                // are installed just after the services start).
                if buf.starts_with(b"HTTP/1.1 200") && self.log().contains("signal handlers installed") {
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

    /// `127.0.0.1:<port>` of the `/metrics` listener.
    pub fn metrics_addr(&self) -> String {
        format!("127.0.0.1:{}", self.metrics_port)
    }

    /// `127.0.0.1:<port>` of the client listener.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Everything the gateway wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Wait (without blocking the runtime) until the log holds every one of `needles`.
    pub async fn wait_log(&self, needles: &[&str]) {
        super::wait_until(
            &format!("{needles:?} never logged"),
            || {
                let log = self.log();
                needles.iter().all(|n| log.contains(n))
            },
            || self.log(),
        )
        .await;
    }

    /// Send `sig` (`libc::SIGTERM`, ...) to the gateway.
    pub fn signal(&self, sig: libc::c_int) {
        send_signal(self.child.as_ref().unwrap().id(), sig);
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

/// A mock that answers every request with [`chat_json`](super::chat_json), and a gateway
/// in front of it.
pub async fn chat_gateway() -> (Mock, Gateway) {
    let mock = Mock::chat().await;
    let gw = Gateway::for_mock(&mock, "");
    (mock, gw)
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Every gateway in the suite runs at trace level (see `launch`): whatever the
        // test did, no full key may appear in its log or its stats files.
        if !std::thread::panicking() {
            assert_no_keys_leaked(&self.log_path, self.stats_path.parent().unwrap());
        }
    }
}

/// A directory for runs of the binary outside [`Gateway`]: `allow.csv` in it holds the
/// default allow-list.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
    pub allowlist: PathBuf,
}

impl ConfigDir {
    /// A fresh temp directory with the allow-list in it.
    pub fn new() -> ConfigDir {
        let dir = tempfile::tempdir().unwrap();
        let allowlist = dir.path().join("allow.csv");
        std::fs::write(&allowlist, default_allowlist()).unwrap();
        ConfigDir { dir, allowlist }
    }

    /// `path` inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The one-line `auth:` section that points at the allow-list, and a `metrics:`
    /// section on a free port (the default 9464 would collide between parallel tests).
    pub fn auth_yaml(&self) -> String {
        format!(
            "auth: {{allowlist_path: {}}}\nmetrics: {{listen: 127.0.0.1:{}}}\n",
            self.allowlist.display(),
            free_port()
        )
    }

    /// Write `lmgate.yaml`: `yaml`, the `auth:` and `metrics:` sections; returns its path.
    pub fn config(&self, yaml: &str) -> PathBuf {
        self.write("lmgate.yaml", &format!("{yaml}{}", self.auth_yaml()))
    }

    /// Write `yaml` to the file `name` in the directory; returns its path.
    pub fn write(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, yaml).unwrap();
        path
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
        for key in [KEY_A, KEY_B, KEY_C].iter().chain(super::SCANNED_SECRETS) {
            assert!(
                super::find(&bytes, key.as_bytes()).is_none(),
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
        // The shipper's checkpoint (`.shipped`, its `.tmp`) and refused lines (`.rejected`)
        // sit beside the stats files but are not records.
        let not_records = [".lock", ".shipped", ".tmp", ".rejected"];
        if !name.contains(".jsonl") || not_records.iter().any(|s| name.ends_with(s)) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        // The writer may be appending while this reads: a tail without its newline is a
        // record still being written, and the next read sees it whole.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        for line in complete.lines().filter(|l| !l.is_empty()) {
            out.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSONL line {line:?}: {e}")));
        }
    }
    out
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
