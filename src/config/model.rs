//! The validated model: the one [`Config`] the rest of the program reads. Every value here
//! has passed `validate.rs`; nothing in it is a serde type, so the file's spelling can
//! change without touching the code that uses it.

use crate::providers::ProviderConfig;
use std::path::PathBuf;
use std::time::Duration;

/// Listening and process settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Listen host (IP literal or name).
    pub host: String,
    /// Listen port.
    pub port: u16,
    /// Proxy worker threads.
    pub threads: usize,
    /// Bound on waiting for in-flight requests at shutdown.
    pub drain_timeout: Duration,
    /// How long SIGTERM/SIGINT keep serving (with `/healthz` answering 503) before the
    /// listeners close; zero closes them at once.
    pub shutdown_delay: Duration,
    /// Graceful-upgrade socket path.
    pub upgrade_sock: PathBuf,
    /// Pid file path.
    pub pid_file: PathBuf,
    /// An HTTPS listener next to the plain one (for clients that send keys only over TLS).
    pub tls: Option<TlsListener>,
    /// Largest request body read whole before forwarding (model scopes on body-model
    /// formats, signing); larger ones get 413.
    pub max_buffered_body_bytes: usize,
}

/// `server.tls_port` + certificate and key (PEM).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsListener {
    /// Port on `server.host`.
    pub port: u16,
    /// Certificate chain, PEM.
    pub cert_path: PathBuf,
    /// Private key, PEM.
    pub key_path: PathBuf,
}

impl ServerConfig {
    /// `host:port`, with IPv6 hosts bracketed.
    pub fn listen_addr(&self) -> String {
        self.addr_with_port(self.port)
    }

    /// `host:port` for another port on the same host.
    pub fn addr_with_port(&self, port: u16) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, port)
        } else {
            format!("{}:{}", self.host, port)
        }
    }
}

/// Allow-list settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    /// CSV path.
    pub allowlist_path: PathBuf,
    /// Poll period for hot reload.
    pub poll_interval: Duration,
}

/// Usage record file settings.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsConfig {
    /// JSONL path.
    pub output_path: PathBuf,
    /// Flush period.
    pub flush_interval: Duration,
    /// Capture cap for bodies and single stream events.
    pub capture_limit_bytes: usize,
    /// Bounded channel capacity (records).
    pub channel_capacity: usize,
    /// Rotate when the file reaches this size.
    pub rotate_bytes: u64,
    /// Which rotated files are kept.
    pub retention: Retention,
}

/// `stats.retention`: rotated files beyond `keep_files` (newest kept) or older than
/// `keep_days` (by their rotation stamp) are deleted; `None` = no such limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// Rotated files kept at most.
    pub keep_files: Option<usize>,
    /// Days a rotated file is kept at most.
    pub keep_days: Option<u64>,
}

impl Retention {
    /// Whether any limit is set (otherwise every file is kept, as before the setting).
    pub fn is_limited(&self) -> bool {
        self.keep_files.is_some() || self.keep_days.is_some()
    }
}

/// `clickhouse:`: where and how the usage records are shipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickHouseConfig {
    /// `http://host:port` (a path is not allowed: the query goes in the URL).
    pub url: String,
    /// Database of the table.
    pub database: String,
    /// The usage table.
    pub table: String,
    /// Where the user name is read from (`X-ClickHouse-User`); `None`: the server default.
    pub user: Option<SecretSource>,
    /// Where the password is read from (`X-ClickHouse-Key`).
    pub password: Option<SecretSource>,
    /// Rows per insert at most.
    pub batch_rows: usize,
    /// Bytes per insert at most.
    pub batch_bytes: usize,
    /// A partial batch is sent after this wait.
    pub batch_wait: Duration,
    /// The shipper's checkpoint file.
    pub checkpoint_path: PathBuf,
    /// One insert at most this long.
    pub timeout: Duration,
}

/// Upstream connection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Connect (TCP + TLS) timeout.
    pub connect_timeout: Duration,
    /// Idle read timeout.
    pub read_timeout: Duration,
    /// Idle write timeout.
    pub write_timeout: Duration,
    /// Pooled idle connection lifetime.
    pub idle_timeout: Duration,
    /// DNS refresh period.
    pub dns_refresh: Duration,
}

/// Prometheus metrics settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// Serve metrics at all.
    pub enabled: bool,
    /// Where `/metrics` is served.
    pub listen: MetricsListen,
    /// Add per-key (`lmgate_id`) series. Off by default: cardinality.
    pub per_key_labels: bool,
}

/// Where `GET /metrics` is answered.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricsListen {
    /// A listener of its own (`host:port`), the default: the client port does not serve
    /// traffic and token counts to every caller, and the operator publishes the metrics
    /// port only to the scraper.
    Separate(String),
    /// On the main (client-facing) port too, as before; opt-in with `metrics.listen: main`.
    MainPort,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    /// Listening and process.
    pub server: ServerConfig,
    /// Allow-list.
    pub auth: AuthConfig,
    /// Usage records.
    pub stats: StatsConfig,
    /// Log level (`RUST_LOG` wins when set).
    pub log_level: log::LevelFilter,
    /// Upstream connections.
    pub upstream: UpstreamConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// Enabled providers, in name order.
    pub providers: Vec<ProviderConfig>,
    /// Where prices come from.
    pub prices: PricesConfig,
    /// How limited requests are estimated.
    pub limits: LimitsConfig,
    /// Limits shared by a fleet of instances through Redis; `None` = this instance alone.
    pub fleet: Option<FleetConfig>,
    /// Usage records shipped to ClickHouse; `None`: not shipped.
    pub clickhouse: Option<ClickHouseConfig>,
    /// Names (never values) of the `LMGATE_*` variables that were not applied because their
    /// first segment names no config section, sorted. `main` logs a warning for each, after
    /// logging starts; `lmgate check` prints them.
    pub ignored_env: Vec<String>,
}

/// Where a secret is read from. The secret itself is never part of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `env:VARIABLE`: read once at start.
    Env(String),
    /// `file:/path`: read at start and again whenever the file changes (mounted secrets).
    File(PathBuf),
}

impl std::fmt::Display for SecretSource {
    /// The spelling of the config file (`env:NAME`, `file:/path`): where, never what.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Env(var) => write!(f, "env:{var}"),
            SecretSource::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// How LMGate obtains a Google OAuth access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoogleSpec {
    /// A service-account JSON key file: a signed JWT exchanged at the token endpoint.
    ServiceAccount {
        /// The key file.
        path: PathBuf,
        /// The token endpoint; `None` = the file's own `token_uri`.
        token_url: Option<String>,
    },
    /// Application Default Credentials from the metadata server (GCE, GKE, Cloud Run).
    Adc {
        /// The metadata server's base URL; `None` = `GCE_METADATA_HOST` or
        /// `http://metadata.google.internal`.
        metadata_url: Option<String>,
    },
}

/// The AWS identity that signs Bedrock requests: the default credential chain (environment,
/// shared profile, web identity, ECS, EC2 instance role), optionally narrowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsSpec {
    /// Signing region; `None` = parsed from the upstream host.
    pub region: Option<String>,
    /// A role assumed with the chain's credentials.
    pub assume_role_arn: Option<String>,
    /// A shared-config profile instead of the default one.
    pub profile: Option<String>,
}

/// `providers.<name>.credential`: the provider credential LMGate uses for gateway keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSpec {
    /// A static API key, sent in the provider format's own header.
    ApiKey(SecretSource),
    /// A Google OAuth access token, sent as `Authorization: Bearer`.
    Google(GoogleSpec),
    /// AWS SigV4 signing of Bedrock requests.
    Aws(AwsSpec),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(host: &str) -> ServerConfig {
        ServerConfig {
            host: host.into(),
            port: 8080,
            threads: 1,
            drain_timeout: Duration::from_secs(1),
            shutdown_delay: Duration::ZERO,
            upgrade_sock: "/tmp/u.sock".into(),
            pid_file: "/tmp/p.pid".into(),
            tls: None,
            max_buffered_body_bytes: 1024,
        }
    }

    #[test]
    fn listen_addr_brackets_ipv6_hosts_only() {
        assert_eq!(server("0.0.0.0").listen_addr(), "0.0.0.0:8080");
        assert_eq!(server("localhost").addr_with_port(8443), "localhost:8443");
        assert_eq!(server("::1").listen_addr(), "[::1]:8080");
        assert_eq!(server("[::1]").listen_addr(), "[::1]:8080");
    }
}

/// `prices:`: the snapshot (built in unless `path` is set) and the override file.
#[derive(Debug, Clone, PartialEq)]
pub struct PricesConfig {
    /// A snapshot file instead of the one compiled in.
    pub path: Option<PathBuf>,
    /// The operator's price file; its rows win.
    pub override_path: Option<PathBuf>,
    /// How often both files are checked for changes.
    pub poll_interval: Duration,
}

/// `limits:`: the estimate a limited request reserves before it is forwarded.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Output tokens reserved when the request names no cap (`max_tokens` and the like).
    pub default_output_tokens: u64,
    /// Request body bytes per estimated input token.
    pub bytes_per_input_token: u64,
}

/// `fleet:`: limits held for N instances together, through leases from Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// `redis://host:port/db` (no password in it: see `password`).
    pub redis_url: String,
    /// Where the Redis password is read from, if any.
    pub password: Option<SecretSource>,
    /// How many instances share the limits: the per-instance fallback is limit / N.
    pub instances: u64,
    /// Percent of a limit borrowed per lease (at least one unit).
    pub lease_percent: u64,
    /// Lease lifetime on the server's clock.
    pub lease_ttl: Duration,
    /// Report and renew period.
    pub sync_interval: Duration,
    /// Longest wait of a request for more allowance.
    pub lease_wait: Duration,
    /// Budgets keep serving (limit / N per instance) while Redis is unreachable.
    pub fail_open: bool,
    /// Prefix of every key LMGate writes.
    pub key_prefix: String,
}
