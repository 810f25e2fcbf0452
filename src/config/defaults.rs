//! Defaults, one place each, applied by `validate.rs` to every key the file and the
//! environment leave unset. Timeouts suit LLM calls that think for minutes before the
//! first byte.

use std::time::Duration;

/// Listen host.
pub const HOST: &str = "0.0.0.0";
/// Listen port.
pub const PORT: u16 = 8080;
/// In-flight requests get this long to finish on SIGTERM or upgrade.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// No serving on after SIGTERM: the listeners close at once (the behaviour before the key).
pub const SHUTDOWN_DELAY: Duration = Duration::ZERO;
/// Pingora's graceful-upgrade socket.
pub const UPGRADE_SOCK: &str = "/tmp/lmgate_upgrade.sock";
/// Pid file (written by Pingora when daemonized).
pub const PID_FILE: &str = "/tmp/lmgate.pid";
/// Largest request body the gateway reads whole before forwarding it (only requests that
/// need it: a model scope on OpenAI/Anthropic formats, SigV4 signing). Images and
/// documents in a request make 20 MiB reachable.
pub const MAX_BUFFERED_BODY_BYTES: usize = 20 * 1024 * 1024;
/// Allow-list CSV.
pub const ALLOWLIST_PATH: &str = "data/allowlist.csv";
/// Allow-list poll period.
pub const POLL_INTERVAL: Duration = Duration::from_secs(30);
/// Usage records file.
pub const STATS_PATH: &str = "data/stats.jsonl";
/// Stats buffer flush period.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(10);
/// Largest non-streamed body (or single stream event) captured for usage.
pub const CAPTURE_LIMIT_BYTES: usize = 2 * 1024 * 1024;
/// Records queued between the proxy and the stats writer.
pub const CHANNEL_CAPACITY: usize = 65_536;
/// Stats file rotation size.
pub const ROTATE_BYTES: u64 = 100 * 1024 * 1024;
/// Log level.
pub const LOG_LEVEL: &str = "info";
/// TCP + TLS connect budget.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence while reading the upstream answer (reasoning models think long).
pub const READ_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest stall while sending the request body upstream.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an idle upstream connection stays pooled.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Port of the separate `/metrics` listener (on `server.host`). 9464 is the port
/// Prometheus exporters take by convention (OpenTelemetry's): clear of the client ports
/// 8080/8443 and of Prometheus's own 9090 and node_exporter's 9100 on the same host.
pub const METRICS_PORT: u16 = 9464;
/// `metrics.listen` value that serves `/metrics` on the main port.
pub const METRICS_ON_MAIN_PORT: &str = "main";
/// Upstream DNS refresh period.
pub const DNS_REFRESH: Duration = Duration::from_secs(60);
/// Price files poll period.
pub const PRICES_POLL_INTERVAL: Duration = Duration::from_secs(30);
/// Output tokens a limited request reserves when it names no cap: enough for most
/// answers, and what the reservation's bound assumes when a request leaves it open.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 4096;
/// Request body bytes per estimated input token (English text is about 4 characters per
/// token, and the JSON around it adds more bytes than tokens).
pub const BYTES_PER_INPUT_TOKEN: u64 = 4;

/// Share of a limit one instance borrows from Redis at a time (`fleet.lease_percent`).
pub const LEASE_PERCENT: u64 = 5;
/// How long a lease holds without renewal; a dead instance's unused share returns after it.
pub const LEASE_SECONDS: u64 = 10;
/// How often active leases are reported and renewed.
pub const SYNC_INTERVAL_MS: u64 = 250;
/// How long a request may wait for a lease top-up before it is refused.
pub const LEASE_WAIT_MS: u64 = 200;
/// Prefix of LMGate's Redis keys.
pub const FLEET_KEY_PREFIX: &str = "lmgate";
/// ClickHouse database of the usage table.
pub const CLICKHOUSE_DATABASE: &str = "lmgate";
/// ClickHouse usage table.
pub const CLICKHOUSE_TABLE: &str = "usage";
/// Rows per insert at most.
pub const BATCH_ROWS: usize = 10_000;
/// Bytes per insert at most (a single longer line goes alone).
pub const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// A partial batch is sent once its first line has waited this long.
pub const BATCH_WAIT: Duration = Duration::from_secs(2);
/// Checkpoint file: the stats file's name plus this.
pub const CHECKPOINT_SUFFIX: &str = ".shipped";
/// One insert (connect, send, answer) at most this long.
pub const CLICKHOUSE_TIMEOUT: Duration = Duration::from_secs(30);
