//! Configuration: the YAML file types (serde, `deny_unknown_fields`), `LMGATE_*` environment
//! overrides, and the one validated [`Config`] the rest of the program reads.
//!
//! Loading happens once, in `main`, before anything listens. Every failure is a
//! [`ConfigError`] naming where the bad value came from (the file, or the environment
//! variable that overrode it), the key path, and the reason. Routing itself lives in
//! `providers.rs`; this module only turns text into checked values.

use crate::providers::{self, ApiFormat, ProviderConfig, UpstreamUrl};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of every environment variable that overrides a config key.
pub const ENV_PREFIX: &str = "LMGATE_";

/// A configuration problem: where (file or variable), which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {key}: {reason}")]
pub struct ConfigError {
    /// The config file path, or `environment variable LMGATE_...`.
    pub origin: String,
    /// Dotted key path, e.g. `server.port`; `-` when the whole file is at fault.
    pub key: String,
    /// What is wrong, in words.
    pub reason: String,
}

impl ConfigError {
    fn new(origin: impl Into<String>, key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            origin: origin.into(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// File types: what the YAML may say. Every field is optional so that an empty file, or one
// that sets a single key, is valid; defaults are applied in `validate`.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    server: ServerFile,
    #[serde(default)]
    auth: AuthFile,
    #[serde(default)]
    stats: StatsFile,
    #[serde(default)]
    logging: LoggingFile,
    #[serde(default)]
    upstream: UpstreamFile,
    #[serde(default)]
    metrics: MetricsFile,
    #[serde(default)]
    providers: BTreeMap<String, ProviderFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    #[serde(default, deserialize_with = "de_opt_string")]
    host: Option<String>,
    port: Option<u16>,
    threads: Option<usize>,
    drain_timeout_seconds: Option<u64>,
    #[serde(default, deserialize_with = "de_opt_string")]
    upgrade_sock: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    pid_file: Option<String>,
    tls_port: Option<u16>,
    #[serde(default, deserialize_with = "de_opt_string")]
    tls_cert_path: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    tls_key_path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default, deserialize_with = "de_opt_string")]
    allowlist_path: Option<String>,
    poll_interval_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsFile {
    #[serde(default, deserialize_with = "de_opt_string")]
    output_path: Option<String>,
    flush_interval_seconds: Option<u64>,
    capture_limit_bytes: Option<usize>,
    channel_capacity: Option<usize>,
    rotate_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoggingFile {
    #[serde(default, deserialize_with = "de_opt_string")]
    level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsFile {
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "de_opt_string")]
    listen: Option<String>,
    per_key_labels: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamFile {
    connect_timeout_seconds: Option<u64>,
    read_timeout_seconds: Option<u64>,
    write_timeout_seconds: Option<u64>,
    idle_timeout_seconds: Option<u64>,
    dns_refresh_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderFile {
    #[serde(default, deserialize_with = "de_opt_string")]
    upstream: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    prefix: Option<String>,
    format: Option<ApiFormat>,
    enabled: Option<bool>,
}

/// Accepts a string, or a number or bool written where a string is meant, so that
/// `LMGATE_SERVER__HOST=127` or `prefix: /2024` behave like text.
fn de_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(V)
        }
    }
    d.deserialize_any(V)
}

// ---------------------------------------------------------------------------------------------
// The validated configuration.
// ---------------------------------------------------------------------------------------------

/// Defaults, one place each. Timeouts suit LLM calls that think for minutes before the
/// first byte.
pub mod defaults {
    use std::time::Duration;
    /// Listen host.
    pub const HOST: &str = "0.0.0.0";
    /// Listen port.
    pub const PORT: u16 = 8080;
    /// In-flight requests get this long to finish on SIGTERM or upgrade.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    /// Pingora's graceful-upgrade socket.
    pub const UPGRADE_SOCK: &str = "/tmp/lmgate_upgrade.sock";
    /// Pid file (written by Pingora when daemonized).
    pub const PID_FILE: &str = "/tmp/lmgate.pid";
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
    /// Upstream DNS refresh period.
    pub const DNS_REFRESH: Duration = Duration::from_secs(60);
}

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
    /// Graceful-upgrade socket path.
    pub upgrade_sock: PathBuf,
    /// Pid file path.
    pub pid_file: PathBuf,
    /// An HTTPS listener next to the plain one (for clients that send keys only over TLS).
    pub tls: Option<TlsListener>,
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
    /// A separate listen address (`127.0.0.1:9090`); `None`: `/metrics` on the main port.
    pub listen: Option<String>,
    /// Add per-key (`lmgate_id`) series. Off by default: cardinality.
    pub per_key_labels: bool,
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
}

/// Where each key's value came from: the file, or an environment variable.
struct Origins<'a> {
    file: &'a Path,
    env: HashMap<String, String>,
}

impl Origins<'_> {
    fn of(&self, key: &str) -> String {
        match self.env.get(key) {
            Some(var) => format!("environment variable {var}"),
            None => self.file.display().to_string(),
        }
    }
    fn err(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::new(self.of(key), key, reason)
    }
}

impl Config {
    /// Read the YAML file, apply `LMGATE_*` overrides from `env`, validate. Called once, in
    /// main; tests pass their own `env` instead of touching the process environment.
    pub fn load(file: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let origin = file.display().to_string();
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError::new(&origin, "-", format!("cannot read file: {e}")))?;
        Self::from_yaml_str(&text, file, env)
    }

    /// [`Config::load`] on text already read; `file` is only used in messages.
    pub fn from_yaml_str(
        text: &str,
        file: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let origin = file.display().to_string();
        // First the file alone, so its errors keep their line and column.
        let file_cfg: FileConfig = if text.trim().is_empty() {
            FileConfig::default()
        } else {
            let de = serde_yaml::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| path_error(&origin, e))?
        };
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.len() > ENV_PREFIX.len())
            .collect();
        if overrides.is_empty() {
            let origins = Origins {
                file,
                env: HashMap::new(),
            };
            return validate(file_cfg, file, &origins);
        }
        overrides.sort();
        let mut tree: serde_yaml::Value = if text.trim().is_empty() {
            serde_yaml::Value::Mapping(Default::default())
        } else {
            serde_yaml::from_str(text).map_err(|e| ConfigError::new(&origin, "-", e.to_string()))?
        };
        if tree.is_null() {
            tree = serde_yaml::Value::Mapping(Default::default());
        }
        let mut env_keys = HashMap::new();
        let mut cfg = file_cfg;
        // One variable at a time, so a failure names the variable that caused it.
        for (var, value) in overrides {
            let var_origin = format!("environment variable {var}");
            let path: Vec<String> = var[ENV_PREFIX.len()..]
                .split("__")
                .map(|s| s.to_ascii_lowercase())
                .collect();
            let key = path.join(".");
            if path.iter().any(|s| s.is_empty()) {
                return Err(ConfigError::new(var_origin, key, "empty key segment"));
            }
            set_path(&mut tree, &path, env_value(&value))
                .map_err(|reason| ConfigError::new(&var_origin, &key, reason))?;
            cfg = serde_path_to_error::deserialize(tree.clone()).map_err(|e| path_error(&var_origin, e))?;
            env_keys.insert(key, var);
        }
        let origins = Origins { file, env: env_keys };
        validate(cfg, file, &origins)
    }
}

fn path_error(origin: &str, e: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
    let key = e.path().to_string();
    // The document itself (`.`), or a key that is an empty string (`"": 1` at the top,
    // found by the config fuzz target): name no key rather than print an empty one.
    let key = if key == "." || key.is_empty() {
        "-".to_owned()
    } else {
        key
    };
    ConfigError::new(origin, key, e.inner().to_string())
}

/// An environment value is read as a YAML scalar (so `9000` is a number and `true` a bool);
/// anything that is not a plain scalar stays a string.
fn env_value(raw: &str) -> serde_yaml::Value {
    match serde_yaml::from_str::<serde_yaml::Value>(raw) {
        Ok(v @ (serde_yaml::Value::Number(_) | serde_yaml::Value::Bool(_))) => v,
        _ => serde_yaml::Value::String(raw.to_owned()),
    }
}

fn set_path(tree: &mut serde_yaml::Value, path: &[String], value: serde_yaml::Value) -> Result<(), String> {
    let mut node = tree;
    for (i, seg) in path.iter().enumerate() {
        if node.is_null() {
            *node = serde_yaml::Value::Mapping(Default::default());
        }
        let map = node
            .as_mapping_mut()
            .ok_or_else(|| format!("`{}` is not a section", path[..i].join(".")))?;
        let k = serde_yaml::Value::String(seg.clone());
        if i + 1 == path.len() {
            map.insert(k, value);
            return Ok(());
        }
        node = map
            .entry(k)
            .or_insert(serde_yaml::Value::Mapping(Default::default()));
    }
    Ok(())
}

fn secs(v: Option<u64>, default: Duration, key: &str, o: &Origins) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(0) => Err(o.err(key, "must be at least 1 second")),
        Some(n) => Ok(Duration::from_secs(n)),
    }
}

fn non_empty_path(v: Option<String>, default: &str, key: &str, o: &Origins) -> Result<PathBuf, ConfigError> {
    match v {
        None => Ok(PathBuf::from(default)),
        Some(s) if s.trim().is_empty() => Err(o.err(key, "must not be empty")),
        Some(s) => Ok(PathBuf::from(s)),
    }
}

fn validate(f: FileConfig, file: &Path, o: &Origins) -> Result<Config, ConfigError> {
    let host = match f.server.host {
        None => defaults::HOST.to_owned(),
        Some(h) if h.trim().is_empty() || h.contains(char::is_whitespace) => {
            return Err(o.err("server.host", "must be a host name or IP address"))
        }
        Some(h) => h,
    };
    let threads = match f.server.threads {
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Some(0) => return Err(o.err("server.threads", "must be at least 1")),
        Some(n) => n,
    };
    let tls = match (f.server.tls_port, f.server.tls_cert_path, f.server.tls_key_path) {
        (None, None, None) => None,
        (Some(port), Some(cert), Some(key)) => {
            for (k, p) in [("server.tls_cert_path", &cert), ("server.tls_key_path", &key)] {
                if let Err(e) = std::fs::File::open(p) {
                    return Err(o.err(k, format!("cannot read `{p}`: {e}")));
                }
            }
            Some(TlsListener {
                port,
                cert_path: cert.into(),
                key_path: key.into(),
            })
        }
        _ => {
            return Err(o.err(
                "server.tls_port",
                "tls_port, tls_cert_path and tls_key_path go together: set all three or none",
            ))
        }
    };
    let server = ServerConfig {
        tls,
        host,
        port: f.server.port.unwrap_or(defaults::PORT),
        threads,
        drain_timeout: secs(
            f.server.drain_timeout_seconds,
            defaults::DRAIN_TIMEOUT,
            "server.drain_timeout_seconds",
            o,
        )?,
        upgrade_sock: non_empty_path(
            f.server.upgrade_sock,
            defaults::UPGRADE_SOCK,
            "server.upgrade_sock",
            o,
        )?,
        pid_file: non_empty_path(f.server.pid_file, defaults::PID_FILE, "server.pid_file", o)?,
    };
    let auth = AuthConfig {
        allowlist_path: non_empty_path(
            f.auth.allowlist_path,
            defaults::ALLOWLIST_PATH,
            "auth.allowlist_path",
            o,
        )?,
        poll_interval: secs(
            f.auth.poll_interval_seconds,
            defaults::POLL_INTERVAL,
            "auth.poll_interval_seconds",
            o,
        )?,
    };
    let capture_limit_bytes = match f.stats.capture_limit_bytes {
        None => defaults::CAPTURE_LIMIT_BYTES,
        Some(n) if n < 1024 => return Err(o.err("stats.capture_limit_bytes", "must be at least 1024")),
        Some(n) => n,
    };
    let channel_capacity = match f.stats.channel_capacity {
        None => defaults::CHANNEL_CAPACITY,
        Some(0) => return Err(o.err("stats.channel_capacity", "must be at least 1")),
        Some(n) => n,
    };
    let rotate_bytes = match f.stats.rotate_bytes {
        None => defaults::ROTATE_BYTES,
        Some(n) if n < 4096 => return Err(o.err("stats.rotate_bytes", "must be at least 4096")),
        Some(n) => n,
    };
    let stats = StatsConfig {
        output_path: non_empty_path(f.stats.output_path, defaults::STATS_PATH, "stats.output_path", o)?,
        flush_interval: secs(
            f.stats.flush_interval_seconds,
            defaults::FLUSH_INTERVAL,
            "stats.flush_interval_seconds",
            o,
        )?,
        capture_limit_bytes,
        channel_capacity,
        rotate_bytes,
    };
    let level = f.logging.level.unwrap_or_else(|| defaults::LOG_LEVEL.to_owned());
    let log_level: log::LevelFilter = level.parse().map_err(|_| {
        o.err(
            "logging.level",
            format!("`{level}` is not one of off, error, warn, info, debug, trace"),
        )
    })?;
    let u = f.upstream;
    let upstream = UpstreamConfig {
        connect_timeout: secs(
            u.connect_timeout_seconds,
            defaults::CONNECT_TIMEOUT,
            "upstream.connect_timeout_seconds",
            o,
        )?,
        read_timeout: secs(
            u.read_timeout_seconds,
            defaults::READ_TIMEOUT,
            "upstream.read_timeout_seconds",
            o,
        )?,
        write_timeout: secs(
            u.write_timeout_seconds,
            defaults::WRITE_TIMEOUT,
            "upstream.write_timeout_seconds",
            o,
        )?,
        idle_timeout: secs(
            u.idle_timeout_seconds,
            defaults::IDLE_TIMEOUT,
            "upstream.idle_timeout_seconds",
            o,
        )?,
        dns_refresh: secs(
            u.dns_refresh_seconds,
            defaults::DNS_REFRESH,
            "upstream.dns_refresh_seconds",
            o,
        )?,
    };
    let metrics = MetricsConfig {
        enabled: f.metrics.enabled.unwrap_or(true),
        listen: match f.metrics.listen {
            None => None,
            Some(l) if l.trim().is_empty() => None,
            Some(l) => match l.parse::<std::net::SocketAddr>() {
                Ok(_) => Some(l),
                Err(_) => return Err(o.err("metrics.listen", format!("`{l}` is not an IP:port address"))),
            },
        },
        per_key_labels: f.metrics.per_key_labels.unwrap_or(false),
    };
    let providers = validate_providers(f.providers, o)?;
    Ok(Config {
        file: file.to_path_buf(),
        server,
        auth,
        stats,
        log_level,
        upstream,
        metrics,
        providers,
    })
}

fn validate_providers(
    file: BTreeMap<String, ProviderFile>,
    o: &Origins,
) -> Result<Vec<ProviderConfig>, ConfigError> {
    let mut merged: BTreeMap<String, ProviderFile> = providers::DEFAULT_PROVIDERS
        .iter()
        .map(|d| {
            (
                d.name.to_owned(),
                ProviderFile {
                    upstream: Some(d.upstream.to_owned()),
                    prefix: None,
                    format: Some(d.format),
                    enabled: Some(true),
                },
            )
        })
        .collect();
    for (name, p) in file {
        let key = format!("providers.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        {
            return Err(o.err(&key, "provider names are lowercase letters, digits, `_` and `-`"));
        }
        let entry = merged.entry(name).or_default();
        if p.upstream.is_some() {
            entry.upstream = p.upstream;
        }
        if p.prefix.is_some() {
            entry.prefix = p.prefix;
        }
        if p.format.is_some() {
            entry.format = p.format;
        }
        if p.enabled.is_some() {
            entry.enabled = p.enabled;
        }
    }
    let mut out: Vec<ProviderConfig> = Vec::new();
    for (name, p) in merged {
        if p.enabled == Some(false) {
            continue;
        }
        let key = format!("providers.{name}");
        let up_key = format!("{key}.upstream");
        let raw = p
            .upstream
            .ok_or_else(|| o.err(&up_key, "missing: every provider needs an upstream URL"))?;
        let upstream = UpstreamUrl::parse(&raw).map_err(|reason| o.err(&up_key, reason))?;
        let prefix_key = format!("{key}.prefix");
        let prefix = match p.prefix {
            None => format!("/{name}"),
            Some(p) => providers::normalize_prefix(&p).map_err(|r| o.err(&prefix_key, r))?,
        };
        if let Some(other) = out.iter().find(|q| q.prefix == prefix) {
            return Err(o.err(
                &prefix_key,
                format!("prefix `{prefix}` is already used by provider `{}`", other.name),
            ));
        }
        out.push(ProviderConfig {
            format: p.format.unwrap_or(ApiFormat::OpenAi),
            name,
            prefix,
            upstream,
        });
    }
    if out.is_empty() {
        return Err(o.err("providers", "every provider is disabled: nothing to route"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_yaml_str(
            yaml,
            Path::new("test.yaml"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn empty_file_gives_defaults_and_five_providers() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.server.host, "0.0.0.0");
        assert_eq!(c.server.port, 8080);
        assert!(c.server.threads >= 1);
        assert_eq!(c.auth.allowlist_path, PathBuf::from("data/allowlist.csv"));
        assert_eq!(c.auth.poll_interval, Duration::from_secs(30));
        assert_eq!(c.stats.output_path, PathBuf::from("data/stats.jsonl"));
        assert_eq!(c.stats.flush_interval, Duration::from_secs(10));
        assert_eq!(c.log_level, log::LevelFilter::Info);
        let names: Vec<_> = c.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["anthropic", "bedrock", "gemini", "google", "openai"]);
        let openai = c.providers.iter().find(|p| p.name == "openai").unwrap();
        assert_eq!(openai.prefix, "/openai");
        assert_eq!(openai.upstream.host, "api.openai.com");
        assert!(openai.upstream.tls);
        assert_eq!(openai.upstream.port, 443);
    }

    #[test]
    fn an_empty_top_level_key_is_reported_without_an_empty_key_name() {
        // Found by the config fuzz target: an anchored, tagged empty key.
        for yaml in ["\"\": 1\n", "&server: !port: 8080}\n"] {
            let e = load(yaml, &[]).unwrap_err();
            assert_eq!(e.key, "-", "{e}");
            assert_eq!(e.to_string(), "test.yaml: -: unknown field ``, expected one of `server`, `auth`, `stats`, `logging`, `upstream`, `metrics`, `providers`");
        }
    }

    #[test]
    fn whole_struct_from_a_full_file() {
        let yaml = r#"
server: {host: 127.0.0.1, port: 9000, threads: 3, drain_timeout_seconds: 5, upgrade_sock: /tmp/u.sock, pid_file: /tmp/p.pid}
auth: {allowlist_path: a.csv, poll_interval_seconds: 2}
stats: {output_path: s.jsonl, flush_interval_seconds: 1, capture_limit_bytes: 4096, channel_capacity: 10, rotate_bytes: 8192}
logging: {level: debug}
upstream: {connect_timeout_seconds: 1, read_timeout_seconds: 2, write_timeout_seconds: 3, idle_timeout_seconds: 4, dns_refresh_seconds: 5}
metrics: {enabled: false, listen: "127.0.0.1:9090", per_key_labels: true}
providers:
  openai: {enabled: false}
  anthropic: {enabled: false}
  google: {enabled: false}
  gemini: {enabled: false}
  bedrock: {enabled: false}
  local: {upstream: "http://127.0.0.1:8000/v1/", prefix: /local/, format: anthropic}
"#;
        let c = load(yaml, &[]).unwrap();
        let expected = Config {
            file: PathBuf::from("test.yaml"),
            server: ServerConfig {
                host: "127.0.0.1".into(),
                port: 9000,
                threads: 3,
                drain_timeout: Duration::from_secs(5),
                upgrade_sock: "/tmp/u.sock".into(),
                pid_file: "/tmp/p.pid".into(),
                tls: None,
            },
            auth: AuthConfig {
                allowlist_path: "a.csv".into(),
                poll_interval: Duration::from_secs(2),
            },
            stats: StatsConfig {
                output_path: "s.jsonl".into(),
                flush_interval: Duration::from_secs(1),
                capture_limit_bytes: 4096,
                channel_capacity: 10,
                rotate_bytes: 8192,
            },
            log_level: log::LevelFilter::Debug,
            upstream: UpstreamConfig {
                connect_timeout: Duration::from_secs(1),
                read_timeout: Duration::from_secs(2),
                write_timeout: Duration::from_secs(3),
                idle_timeout: Duration::from_secs(4),
                dns_refresh: Duration::from_secs(5),
            },
            metrics: MetricsConfig {
                enabled: false,
                listen: Some("127.0.0.1:9090".into()),
                per_key_labels: true,
            },
            providers: vec![ProviderConfig {
                name: "local".into(),
                prefix: "/local".into(),
                upstream: UpstreamUrl::parse("http://127.0.0.1:8000/v1").unwrap(),
                format: ApiFormat::Anthropic,
            }],
        };
        assert_eq!(c, expected);
        assert_eq!(c.providers[0].upstream.base_path, "/v1");
    }

    #[test]
    fn env_overrides_coerce_to_the_key_type() {
        let c = load(
            "server: {port: 8080}\n",
            &[
                ("LMGATE_SERVER__PORT", "9000"),
                ("LMGATE_PROVIDERS__OPENAI__UPSTREAM", "http://127.0.0.1:9001"),
                ("LMGATE_AUTH__ALLOWLIST_PATH", "123"),
                ("LMGATE_PROVIDERS__LOCAL__UPSTREAM", "http://127.0.0.1:8000"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.port, 9000);
        assert_eq!(c.auth.allowlist_path, PathBuf::from("123"));
        let openai = c.providers.iter().find(|p| p.name == "openai").unwrap();
        assert_eq!(openai.upstream.host, "127.0.0.1");
        assert_eq!(openai.upstream.port, 9001);
        assert!(!openai.upstream.tls);
        assert!(c
            .providers
            .iter()
            .any(|p| p.name == "local" && p.prefix == "/local"));
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let e = load("", &[("LMGATE_SERVER__PORT", "eighty")]).unwrap_err();
        assert_eq!(e.origin, "environment variable LMGATE_SERVER__PORT");
        assert_eq!(e.key, "server.port");
        assert!(e.reason.contains("invalid type"), "{e}");
        let e = load("", &[("LMGATE_SERVER__PORT", "70000")]).unwrap_err();
        assert_eq!(e.key, "server.port");
        let e = load("", &[("LMGATE_SERVER__PROT", "1")]).unwrap_err();
        assert_eq!(e.origin, "environment variable LMGATE_SERVER__PROT");
        assert!(e.reason.contains("unknown field `prot`"), "{e}");
        let e = load("", &[("LMGATE_PROVIDERS__OPENAI__UPSTREAM", "ftp://x")]).unwrap_err();
        assert_eq!(
            e.origin,
            "environment variable LMGATE_PROVIDERS__OPENAI__UPSTREAM"
        );
        assert_eq!(e.key, "providers.openai.upstream");
    }

    #[test]
    fn bad_file_values_name_file_key_and_reason() {
        let e = load("server:\n  port: abc\n", &[]).unwrap_err();
        assert_eq!((e.origin.as_str(), e.key.as_str()), ("test.yaml", "server.port"));
        assert!(e.reason.contains("line 2"), "{e}");
        let e = load("server:\n  prot: 1\n", &[]).unwrap_err();
        assert_eq!(e.key, "server.prot");
        assert!(e.reason.contains("unknown field `prot`"), "{e}");
        let e = load("providers:\n  x: {upstream: 'not a url'}\n", &[]).unwrap_err();
        assert_eq!(e.key, "providers.x.upstream");
        let e = load("providers:\n  x: {prefix: /y}\n", &[]).unwrap_err();
        assert_eq!(e.key, "providers.x.upstream");
        assert!(e.reason.contains("missing"));
        let e = load("providers:\n  x: {upstream: 'http://a', prefix: /openai}\n", &[]).unwrap_err();
        assert_eq!(e.key, "providers.x.prefix");
        let e = load("logging: {level: loud}\n", &[]).unwrap_err();
        assert_eq!(e.key, "logging.level");
        let e = load("auth: {poll_interval_seconds: 0}\n", &[]).unwrap_err();
        assert_eq!(e.key, "auth.poll_interval_seconds");
        let e = load("server: [1, 2\n", &[]).unwrap_err();
        assert_eq!(e.origin, "test.yaml");
        assert_eq!(
            e.to_string().split(": ").take(2).collect::<Vec<_>>(),
            ["test.yaml", e.key.as_str()]
        );
    }

    #[test]
    fn tls_listener_needs_all_three_keys_and_readable_files() {
        let e = load("server: {tls_port: 8443}\n", &[]).unwrap_err();
        assert_eq!(e.key, "server.tls_port");
        let e = load(
            "server: {tls_port: 8443, tls_cert_path: /nonexistent.pem, tls_key_path: /nonexistent.key}\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.key, "server.tls_cert_path");
        assert!(e.reason.contains("/nonexistent.pem"));
        let c = load(
            "server: {tls_port: 8443, tls_cert_path: Cargo.toml, tls_key_path: Cargo.toml}\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.server.tls.unwrap().port, 8443);
    }

    #[test]
    fn unreadable_file_is_an_error_naming_it() {
        let e = Config::load(Path::new("/nonexistent/lmgate.yaml"), Vec::new()).unwrap_err();
        assert_eq!(e.origin, "/nonexistent/lmgate.yaml");
        assert!(e.reason.contains("cannot read"));
    }
}
