//! Validation: the merged file model (file + environment) in, the validated [`Config`] out.
//!
//! Defaults are applied here, each limit is checked once, and every failure is a
//! [`ConfigError`] naming where the value came from (the file, or the variable that
//! overrode it), the dotted key and the reason. Provider entries are merged onto the
//! built-in table from `providers.rs`; URL and prefix rules are that module's.

use super::file::{
    ClickHouseFile, CredentialFile, FileConfig, FleetFile, GoogleFile, ProviderFile, RetentionFile,
};
use super::model::{
    AuthConfig, AwsSpec, ClickHouseConfig, Config, CredentialSpec, FleetConfig, GoogleSpec, LimitsConfig,
    MetricsConfig, MetricsListen, PricesConfig, Retention, SecretSource, ServerConfig, StatsConfig,
    TlsListener, UpstreamConfig,
};
use super::{defaults, ConfigError};
use crate::providers::{self, ApiFormat, ProviderConfig, UpstreamUrl};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where each key's value came from: the file, or an environment variable.
pub(super) struct Origins<'a> {
    /// The config file.
    pub file: &'a Path,
    /// Dotted key -> the variable that set it.
    pub env: HashMap<String, String>,
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

/// Check `f` and apply defaults. `ignored_env` is left empty for the caller to fill.
pub(super) fn validate(f: FileConfig, o: &Origins) -> Result<Config, ConfigError> {
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
    let max_buffered_body_bytes = match f.server.max_buffered_body_bytes {
        None => defaults::MAX_BUFFERED_BODY_BYTES,
        Some(n) if n < 1024 => return Err(o.err("server.max_buffered_body_bytes", "must be at least 1024")),
        Some(n) => n,
    };
    let server = ServerConfig {
        tls,
        max_buffered_body_bytes,
        host,
        port: f.server.port.unwrap_or(defaults::PORT),
        threads,
        drain_timeout: secs(
            f.server.drain_timeout_seconds,
            defaults::DRAIN_TIMEOUT,
            "server.drain_timeout_seconds",
            o,
        )?,
        // Zero is valid: no delay.
        shutdown_delay: f
            .server
            .shutdown_delay_seconds
            .map_or(defaults::SHUTDOWN_DELAY, Duration::from_secs),
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
        retention: validate_retention(f.stats.retention, o)?,
    };
    let clickhouse = match f.clickhouse {
        None => None,
        Some(c) => Some(validate_clickhouse(c, &stats.output_path, o)?),
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
            None => MetricsListen::Separate(server.addr_with_port(defaults::METRICS_PORT)),
            Some(l) if l.trim().is_empty() => {
                MetricsListen::Separate(server.addr_with_port(defaults::METRICS_PORT))
            }
            Some(l) if l.trim() == defaults::METRICS_ON_MAIN_PORT => MetricsListen::MainPort,
            Some(l) => match l.parse::<std::net::SocketAddr>() {
                Ok(_) => MetricsListen::Separate(l),
                Err(_) => {
                    return Err(o.err(
                        "metrics.listen",
                        format!("`{l}` is not an IP:port address (or `main` for the main port)"),
                    ))
                }
            },
        },
        per_key_labels: f.metrics.per_key_labels.unwrap_or(false),
    };
    let providers = validate_providers(f.providers, o)?;
    let opt_path = |v: Option<String>, key: &str| match v {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Err(o.err(key, "must not be empty")),
        Some(s) => Ok(Some(PathBuf::from(s))),
    };
    let prices = PricesConfig {
        path: opt_path(f.prices.path, "prices.path")?,
        override_path: opt_path(f.prices.override_path, "prices.override_path")?,
        poll_interval: secs(
            f.prices.poll_interval_seconds,
            defaults::PRICES_POLL_INTERVAL,
            "prices.poll_interval_seconds",
            o,
        )?,
    };
    let limits = LimitsConfig {
        default_output_tokens: match f.limits.default_output_tokens {
            None => defaults::DEFAULT_OUTPUT_TOKENS,
            Some(0) => return Err(o.err("limits.default_output_tokens", "must be at least 1")),
            Some(n) => n,
        },
        bytes_per_input_token: match f.limits.bytes_per_input_token {
            None => defaults::BYTES_PER_INPUT_TOKEN,
            Some(n @ 1..=64) => n,
            Some(_) => return Err(o.err("limits.bytes_per_input_token", "must be from 1 to 64")),
        },
    };
    let fleet = validate_fleet(f.fleet, o)?;
    Ok(Config {
        file: o.file.to_path_buf(),
        server,
        auth,
        stats,
        log_level,
        upstream,
        metrics,
        providers,
        prices,
        limits,
        fleet,
        clickhouse,
        ignored_env: Vec::new(),
    })
}

/// `fleet:` is off unless `redis_url` is set; then `instances` is required (the fallback
/// share and the stated overshoot depend on it).
fn validate_fleet(f: FleetFile, o: &Origins) -> Result<Option<FleetConfig>, ConfigError> {
    let Some(url) = f.redis_url.filter(|u| !u.trim().is_empty()) else {
        let set = f.instances.is_some() || f.redis_password.is_some() || f.lease_percent.is_some();
        return if set {
            Err(o.err("fleet.redis_url", "missing: the other fleet keys need it"))
        } else {
            Ok(None)
        };
    };
    let url = url.trim().to_owned();
    if !(url.starts_with("redis://") || url.starts_with("redis+unix://") || url.starts_with("unix://")) {
        return Err(o.err("fleet.redis_url", "must start with redis:// (or redis+unix://)"));
    }
    if url_has_password(&url) {
        return Err(o.err(
            "fleet.redis_url",
            "holds a password: set fleet.redis_password to env:VARIABLE or file:/path instead",
        ));
    }
    let password = match f.redis_password {
        None => None,
        Some(raw) => Some(parse_secret_source(&raw).map_err(|e| o.err("fleet.redis_password", e))?),
    };
    let instances = match f.instances {
        None => return Err(o.err("fleet.instances", "missing: how many instances share the limits")),
        Some(n @ 1..=1000) => n,
        Some(_) => return Err(o.err("fleet.instances", "must be from 1 to 1000")),
    };
    let lease_percent = match f.lease_percent {
        None => defaults::LEASE_PERCENT,
        Some(n @ 1..=100) => n,
        Some(_) => return Err(o.err("fleet.lease_percent", "must be from 1 to 100")),
    };
    let lease_seconds = match f.lease_seconds {
        None => defaults::LEASE_SECONDS,
        Some(n @ 2..=3600) => n,
        Some(_) => return Err(o.err("fleet.lease_seconds", "must be from 2 to 3600")),
    };
    let sync_ms = match f.sync_interval_ms {
        None => defaults::SYNC_INTERVAL_MS,
        Some(n) if (10..=lease_seconds * 1000 / 4).contains(&n) => n,
        Some(_) => {
            return Err(o.err(
                "fleet.sync_interval_ms",
                format!(
                    "must be from 10 to a quarter of fleet.lease_seconds ({} ms)",
                    lease_seconds * 250
                ),
            ))
        }
    };
    let wait_ms = match f.lease_wait_ms {
        None => defaults::LEASE_WAIT_MS,
        Some(n @ 0..=10_000) => n,
        Some(_) => return Err(o.err("fleet.lease_wait_ms", "must be at most 10000")),
    };
    let key_prefix = match f.key_prefix {
        None => defaults::FLEET_KEY_PREFIX.to_owned(),
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_graphic()) => p,
        Some(_) => {
            return Err(o.err(
                "fleet.key_prefix",
                "must be non-empty printable ASCII without spaces",
            ))
        }
    };
    Ok(Some(FleetConfig {
        redis_url: url,
        password,
        instances,
        lease_percent,
        lease_ttl: Duration::from_secs(lease_seconds),
        sync_interval: Duration::from_millis(sync_ms),
        lease_wait: Duration::from_millis(wait_ms),
        fail_open: f.fail_open.unwrap_or(false),
        key_prefix,
    }))
}

/// Whether a Redis URL carries a password (`redis://user:pass@host` or `redis://:pass@host`).
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// `stats.retention`: each limit at least 1 when set (0 would delete every rotated file).
fn validate_retention(r: RetentionFile, o: &Origins) -> Result<Retention, ConfigError> {
    if r.keep_files == Some(0) {
        return Err(o.err(
            "stats.retention.keep_files",
            "must be at least 1 (leave it out to keep all)",
        ));
    }
    if r.keep_days == Some(0) {
        return Err(o.err(
            "stats.retention.keep_days",
            "must be at least 1 (leave it out to keep all)",
        ));
    }
    Ok(Retention {
        keep_files: r.keep_files,
        keep_days: r.keep_days,
    })
}

/// A ClickHouse identifier as it may appear unquoted in the insert query.
fn is_identifier(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `clickhouse:`: the URL is required; names are identifiers; sizes and waits positive.
fn validate_clickhouse(
    c: ClickHouseFile,
    stats: &Path,
    o: &Origins,
) -> Result<ClickHouseConfig, ConfigError> {
    let url = match c.url.as_deref().map(str::trim) {
        None | Some("") => return Err(o.err("clickhouse.url", "missing: set http://host:port")),
        Some(u) => clickhouse_url(u).map_err(|r| o.err("clickhouse.url", r))?,
    };
    let name = |v: Option<String>, default: &str, key: &str| match v.map(|s| s.trim().to_owned()) {
        None => Ok(default.to_owned()),
        Some(s) if is_identifier(&s) => Ok(s),
        Some(_) => Err(o.err(
            key,
            "must be a name of letters, digits and `_` (not starting with a digit)",
        )),
    };
    let secret = |v: Option<String>, key: &str| match v {
        None => Ok(None),
        Some(raw) => parse_secret_source(&raw).map(Some).map_err(|r| o.err(key, r)),
    };
    let positive = |v: Option<usize>, default: usize, key: &str| match v {
        None => Ok(default),
        Some(0) => Err(o.err(key, "must be at least 1")),
        Some(n) => Ok(n),
    };
    let mut checkpoint = stats.as_os_str().to_owned();
    checkpoint.push(defaults::CHECKPOINT_SUFFIX);
    Ok(ClickHouseConfig {
        url,
        database: name(c.database, defaults::CLICKHOUSE_DATABASE, "clickhouse.database")?,
        table: name(c.table, defaults::CLICKHOUSE_TABLE, "clickhouse.table")?,
        user: secret(c.user, "clickhouse.user")?,
        password: secret(c.password, "clickhouse.password")?,
        batch_rows: positive(c.batch_rows, defaults::BATCH_ROWS, "clickhouse.batch_rows")?,
        batch_bytes: match c.batch_bytes {
            None => defaults::BATCH_BYTES,
            Some(n) if n < 4096 => return Err(o.err("clickhouse.batch_bytes", "must be at least 4096")),
            Some(n) => n,
        },
        batch_wait: secs(
            c.batch_seconds,
            defaults::BATCH_WAIT,
            "clickhouse.batch_seconds",
            o,
        )?,
        checkpoint_path: non_empty_path(
            c.checkpoint_path,
            &checkpoint.to_string_lossy(),
            "clickhouse.checkpoint_path",
            o,
        )?,
        timeout: secs(
            c.timeout_seconds,
            defaults::CLICKHOUSE_TIMEOUT,
            "clickhouse.timeout_seconds",
            o,
        )?,
    })
}

/// `http(s)://host[:port][/]`, returned without the trailing `/`.
fn clickhouse_url(u: &str) -> Result<String, String> {
    let uri: ::http::Uri = u.parse().map_err(|_| format!("`{u}` is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("`{u}` is not http:// or https://"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{u}` has no host"));
    }
    if uri.query().is_some() || !matches!(uri.path(), "" | "/") {
        return Err(format!("`{u}` has a path or query: give only http://host:port"));
    }
    Ok(u.trim_end_matches('/').to_owned())
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
                    credential: None,
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
        if p.credential.is_some() {
            entry.credential = p.credential;
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
        let format = p.format.unwrap_or(ApiFormat::OpenAi);
        let credential = match p.credential {
            None => None,
            Some(c) => Some(validate_credential(
                c,
                format,
                &upstream,
                &format!("{key}.credential"),
                o,
            )?),
        };
        out.push(ProviderConfig {
            format,
            name,
            prefix,
            upstream,
            credential,
        });
    }
    if out.is_empty() {
        return Err(o.err("providers", "every provider is disabled: nothing to route"));
    }
    Ok(out)
}

/// Check a provider's `credential:` section. Only its shape: whether the variable is set
/// and the file readable is checked when the gateway starts (`credentials.rs`), so that
/// `lmgate report` and `healthcheck` work in a shell that does not hold the secrets.
/// No reason here ever repeats a value that could be a secret.
fn validate_credential(
    c: CredentialFile,
    format: ApiFormat,
    upstream: &UpstreamUrl,
    key: &str,
    o: &Origins,
) -> Result<CredentialSpec, ConfigError> {
    let set = [c.api_key.is_some(), c.google.is_some(), c.aws.is_some()];
    if set.iter().filter(|s| **s).count() != 1 {
        return Err(o.err(key, "set exactly one of api_key, google, aws"));
    }
    if let Some(raw) = c.api_key {
        let k = format!("{key}.api_key");
        return parse_secret_source(&raw)
            .map(CredentialSpec::ApiKey)
            .map_err(|reason| o.err(&k, reason));
    }
    if let Some(g) = c.google {
        return validate_google(g, &format!("{key}.google"), o).map(CredentialSpec::Google);
    }
    let a = c.aws.unwrap_or_default();
    let k = format!("{key}.aws");
    if format != ApiFormat::Bedrock {
        return Err(o.err(
            &k,
            "aws credentials sign Bedrock requests; this provider's format is not bedrock",
        ));
    }
    let plain = |v: Option<String>, name: &str, ok: fn(&str) -> bool, what: &str| match v
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
    {
        None => Ok(None),
        Some(s) if ok(&s) => Ok(Some(s)),
        Some(_) => Err(o.err(&format!("{k}.{name}"), what)),
    };
    let spec = AwsSpec {
        region: plain(
            a.region,
            "region",
            |s| {
                s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            },
            "must be a region name such as us-east-1",
        )?,
        assume_role_arn: plain(
            a.assume_role_arn,
            "assume_role_arn",
            |s| s.starts_with("arn:") && !s.contains(char::is_whitespace),
            "must be a role ARN (arn:aws:iam::<account>:role/<name>)",
        )?,
        profile: plain(
            a.profile,
            "profile",
            |s| !s.contains(char::is_whitespace),
            "must be a profile name",
        )?,
    };
    if crate::credentials::aws::signing_region(spec.region.as_deref(), &upstream.host).is_none() {
        return Err(o.err(
            &format!("{k}.region"),
            "missing: the upstream host names no region (bedrock-runtime.<region>.amazonaws.com)",
        ));
    }
    Ok(CredentialSpec::Aws(spec))
}

/// `credential.google`: a service-account key file or ADC, and the URLs that go with each.
fn validate_google(g: GoogleFile, k: &str, o: &Origins) -> Result<GoogleSpec, ConfigError> {
    let url = |v: Option<String>, name: &str| -> Result<Option<String>, ConfigError> {
        match v {
            None => Ok(None),
            Some(u) => match UpstreamUrl::parse(&u) {
                Ok(_) => Ok(Some(u.trim().to_owned())),
                Err(r) => Err(o.err(&format!("{k}.{name}"), r)),
            },
        }
    };
    match (g.service_account, g.adc.unwrap_or(false)) {
        (Some(_), true) => Err(o.err(k, "set service_account or adc: true, not both")),
        (None, false) => Err(o.err(k, "set service_account: <key file> or adc: true")),
        (Some(path), false) => {
            if path.trim().is_empty() {
                return Err(o.err(&format!("{k}.service_account"), "must not be empty"));
            }
            if g.metadata_url.is_some() {
                return Err(o.err(&format!("{k}.metadata_url"), "goes with adc: true only"));
            }
            Ok(GoogleSpec::ServiceAccount {
                path: PathBuf::from(path.trim()),
                token_url: url(g.token_url, "token_url")?,
            })
        }
        (None, true) => {
            if g.token_url.is_some() {
                return Err(o.err(&format!("{k}.token_url"), "goes with service_account only"));
            }
            Ok(GoogleSpec::Adc {
                metadata_url: url(g.metadata_url, "metadata_url")?,
            })
        }
    }
}

/// `env:VARIABLE` or `file:/path`. Anything else is refused without repeating it: it may
/// be a key pasted into the config.
fn parse_secret_source(raw: &str) -> Result<SecretSource, String> {
    let raw = raw.trim();
    if let Some(var) = raw.strip_prefix("env:") {
        let var = var.trim();
        if var.is_empty() || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err("`env:` needs a variable name (letters, digits, `_`)".into());
        }
        return Ok(SecretSource::Env(var.to_owned()));
    }
    if let Some(path) = raw.strip_prefix("file:") {
        let path = path.trim();
        if path.is_empty() {
            return Err("`file:` needs a path".into());
        }
        return Ok(SecretSource::File(PathBuf::from(path)));
    }
    Err("must be `env:VARIABLE` or `file:/path` (a key itself does not belong in the config)".into())
}

#[cfg(test)]
mod tests {
    use crate::config::tests::load;
    use crate::config::{MetricsListen, SecretSource};
    use std::time::Duration;

    #[test]
    fn fleet_is_off_by_default_and_validated_when_on() {
        assert_eq!(load("", &[]).unwrap().fleet, None);
        let c = load(
            "fleet: {redis_url: 'redis://127.0.0.1:6379/0', instances: 3, redis_password: 'env:RP'}\n",
            &[],
        )
        .unwrap()
        .fleet
        .unwrap();
        assert_eq!(c.instances, 3);
        assert_eq!(c.password, Some(SecretSource::Env("RP".into())));
        assert_eq!((c.lease_percent, c.lease_ttl), (5, Duration::from_secs(10)));
        assert_eq!(
            (c.sync_interval, c.lease_wait),
            (Duration::from_millis(250), Duration::from_millis(200))
        );
        assert!(!c.fail_open);
        let bad = [
            ("fleet: {instances: 3}", "fleet.redis_url", "missing"),
            (
                "fleet: {redis_url: 'http://x', instances: 3}",
                "fleet.redis_url",
                "redis://",
            ),
            (
                "fleet: {redis_url: 'redis://:hunter2@x:6379', instances: 3}",
                "fleet.redis_url",
                "redis_password",
            ),
            ("fleet: {redis_url: 'redis://x'}", "fleet.instances", "missing"),
            (
                "fleet: {redis_url: 'redis://x', instances: 0}",
                "fleet.instances",
                "1 to 1000",
            ),
            (
                "fleet: {redis_url: 'redis://x', instances: 2, lease_percent: 0}",
                "fleet.lease_percent",
                "1 to 100",
            ),
            (
                "fleet: {redis_url: 'redis://x', instances: 2, sync_interval_ms: 5000}",
                "fleet.sync_interval_ms",
                "quarter",
            ),
            (
                "fleet: {redis_url: 'redis://x', instances: 2, redis_password: hunter2}",
                "fleet.redis_password",
                "env:",
            ),
        ];
        for (yaml, key, reason) in bad {
            let e = load(yaml, &[]).unwrap_err();
            assert_eq!(e.key, key, "{yaml}");
            assert!(e.reason.contains(reason), "{yaml}: {e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn metrics_get_their_own_port_unless_the_main_port_is_asked_for() {
        let separate = |a: &str| MetricsListen::Separate(a.into());
        let cases = [
            ("", separate("0.0.0.0:9464")),
            ("server: {host: 127.0.0.1}\n", separate("127.0.0.1:9464")),
            ("server: {host: '::1'}\n", separate("[::1]:9464")),
            ("metrics: {listen: ''}\n", separate("0.0.0.0:9464")),
            ("metrics: {listen: 127.0.0.1:9100}\n", separate("127.0.0.1:9100")),
            ("metrics: {listen: main}\n", MetricsListen::MainPort),
        ];
        for (yaml, want) in cases {
            assert_eq!(load(yaml, &[]).map(|c| c.metrics.listen), Ok(want), "{yaml}");
        }
        let e = load("metrics: {listen: nine}\n", &[]).unwrap_err();
        assert_eq!(e.key, "metrics.listen");
        assert!(e.reason.contains("`main`"), "{e}");
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
        let e = load("server: {max_buffered_body_bytes: 10}\n", &[]).unwrap_err();
        assert_eq!(e.key, "server.max_buffered_body_bytes");
        let c = load("", &[("LMGATE_SERVER__MAX_BUFFERED_BODY_BYTES", "4096")]).unwrap();
        assert_eq!(c.server.max_buffered_body_bytes, 4096);
        assert_eq!(
            load("", &[]).unwrap().server.max_buffered_body_bytes,
            crate::config::defaults::MAX_BUFFERED_BODY_BYTES
        );
        let e = load("server: [1, 2\n", &[]).unwrap_err();
        assert_eq!(e.origin, "test.yaml");
        assert_eq!(
            e.to_string().split(": ").take(2).collect::<Vec<_>>(),
            ["test.yaml", e.key.as_str()]
        );
    }

    #[test]
    fn credentials_become_typed_specs() {
        use crate::config::{AwsSpec, CredentialSpec, GoogleSpec, SecretSource};
        let yaml = r#"
providers:
  openai: {credential: {api_key: "env:OPENAI_KEY"}}
  anthropic: {credential: {api_key: " file:/run/secrets/anthropic "}}
  google: {credential: {google: {service_account: /sa.json, token_url: "http://127.0.0.1:9/token"}}}
  gemini: {credential: {google: {adc: true}}}
  bedrock: {credential: {aws: {region: us-west-2, assume_role_arn: "arn:aws:iam::1:role/r"}}}
"#;
        let c = load(yaml, &[]).unwrap();
        let cred = |n: &str| {
            c.providers
                .iter()
                .find(|p| p.name == n)
                .unwrap()
                .credential
                .clone()
        };
        assert_eq!(
            cred("openai"),
            Some(CredentialSpec::ApiKey(SecretSource::Env("OPENAI_KEY".into())))
        );
        assert_eq!(
            cred("anthropic"),
            Some(CredentialSpec::ApiKey(SecretSource::File(
                "/run/secrets/anthropic".into()
            )))
        );
        assert_eq!(
            cred("google"),
            Some(CredentialSpec::Google(GoogleSpec::ServiceAccount {
                path: "/sa.json".into(),
                token_url: Some("http://127.0.0.1:9/token".into())
            }))
        );
        assert_eq!(
            cred("gemini"),
            Some(CredentialSpec::Google(GoogleSpec::Adc { metadata_url: None }))
        );
        assert_eq!(
            cred("bedrock"),
            Some(CredentialSpec::Aws(AwsSpec {
                region: Some("us-west-2".into()),
                assume_role_arn: Some("arn:aws:iam::1:role/r".into()),
                profile: None
            }))
        );
        let c = load("providers: {bedrock: {credential: {aws: {}}}}\n", &[]).unwrap();
        let b = c.providers.iter().find(|p| p.name == "bedrock").unwrap();
        assert_eq!(b.credential, Some(CredentialSpec::Aws(AwsSpec::default())));
        assert!(c
            .providers
            .iter()
            .filter(|p| p.name != "bedrock")
            .all(|p| p.credential.is_none()));
    }

    #[test]
    fn credential_env_override_sets_the_source() {
        let c = load(
            "",
            &[(
                "LMGATE_PROVIDERS__OPENAI__CREDENTIAL__API_KEY",
                "env:MY_OPENAI_KEY",
            )],
        )
        .unwrap();
        let openai = c.providers.iter().find(|p| p.name == "openai").unwrap();
        assert_eq!(
            openai.credential,
            Some(crate::config::CredentialSpec::ApiKey(
                crate::config::SecretSource::Env("MY_OPENAI_KEY".into())
            ))
        );
    }

    #[test]
    fn bad_credentials_name_the_key_and_never_repeat_a_pasted_key() {
        let secret = "sk-live-pasted-into-the-config";
        let cases = [
            (
                format!("providers: {{openai: {{credential: {{api_key: {secret}}}}}}}\n"),
                "providers.openai.credential.api_key",
            ),
            (
                "providers: {openai: {credential: {api_key: 'env:'}}}\n".into(),
                "providers.openai.credential.api_key",
            ),
            (
                "providers: {openai: {credential: {api_key: 'env:A B'}}}\n".into(),
                "providers.openai.credential.api_key",
            ),
            (
                "providers: {openai: {credential: {api_key: 'file:'}}}\n".into(),
                "providers.openai.credential.api_key",
            ),
            (
                "providers: {openai: {credential: {}}}\n".into(),
                "providers.openai.credential",
            ),
            (
                "providers: {openai: {credential: {api_key: 'env:A', aws: {}}}}\n".into(),
                "providers.openai.credential",
            ),
            (
                "providers: {openai: {credential: {aws: {}}}}\n".into(),
                "providers.openai.credential.aws",
            ),
            (
                "providers: {google: {credential: {google: {}}}}\n".into(),
                "providers.google.credential.google",
            ),
            (
                "providers: {google: {credential: {google: {adc: true, service_account: /a}}}}\n".into(),
                "providers.google.credential.google",
            ),
            (
                "providers: {google: {credential: {google: {adc: true, token_url: 'http://x'}}}}\n".into(),
                "providers.google.credential.google.token_url",
            ),
            (
                "providers: {google: {credential: {google: {service_account: /a, token_url: 'ftp://x'}}}}\n"
                    .into(),
                "providers.google.credential.google.token_url",
            ),
            (
                "providers: {google: {credential: {google: {adc: true, metadata_url: 'nope'}}}}\n".into(),
                "providers.google.credential.google.metadata_url",
            ),
            (
                "providers: {bedrock: {credential: {aws: {region: 'US EAST'}}}}\n".into(),
                "providers.bedrock.credential.aws.region",
            ),
            (
                "providers: {bedrock: {credential: {aws: {assume_role_arn: role}}}}\n".into(),
                "providers.bedrock.credential.aws.assume_role_arn",
            ),
        ];
        for (yaml, key) in cases {
            let e = load(&yaml, &[]).unwrap_err();
            assert_eq!(e.key, key, "{yaml}: {e}");
            assert_eq!(e.origin, "test.yaml");
            assert!(!e.to_string().contains(secret), "{e}");
        }
    }

    #[test]
    fn clickhouse_section_gets_defaults_and_the_checkpoint_beside_the_stats_file() {
        use crate::config::{ClickHouseConfig, SecretSource};
        use std::time::Duration;
        assert_eq!(load("", &[]).unwrap().clickhouse, None);
        assert_eq!(load("clickhouse: ~\n", &[]).unwrap().clickhouse, None);
        let c = load(
            "stats: {output_path: /d/s.jsonl}\nclickhouse: {url: 'http://ch:8123/', password: 'env:CH_PW'}\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            c.clickhouse,
            Some(ClickHouseConfig {
                url: "http://ch:8123".into(),
                database: "lmgate".into(),
                table: "usage".into(),
                user: None,
                password: Some(SecretSource::Env("CH_PW".into())),
                batch_rows: 10_000,
                batch_bytes: 4 * 1024 * 1024,
                batch_wait: Duration::from_secs(2),
                checkpoint_path: "/d/s.jsonl.shipped".into(),
                timeout: Duration::from_secs(30),
            })
        );
        let c = load(
            "clickhouse: {url: 'http://a:1', database: db, table: t_2, user: 'file:/u', batch_rows: 5, batch_bytes: 8192, batch_seconds: 1, checkpoint_path: /c, timeout_seconds: 3}\n",
            &[("LMGATE_CLICKHOUSE__BATCH_ROWS", "7")],
        )
        .unwrap()
        .clickhouse
        .unwrap();
        assert_eq!(
            (c.database.as_str(), c.table.as_str(), c.batch_rows),
            ("db", "t_2", 7)
        );
        assert_eq!(c.user, Some(SecretSource::File("/u".into())));
        assert_eq!(c.checkpoint_path, std::path::PathBuf::from("/c"));
        let c = load("", &[("LMGATE_CLICKHOUSE__URL", "http://x:9")]).unwrap();
        assert_eq!(c.clickhouse.unwrap().url, "http://x:9");
    }

    #[test]
    fn bad_clickhouse_and_retention_values_name_the_key_and_never_repeat_a_password() {
        let secret = "hunter2-pasted-password";
        let cases = [
            ("clickhouse: {}\n".to_string(), "clickhouse.url"),
            ("clickhouse: {url: 'ftp://a'}\n".into(), "clickhouse.url"),
            (
                "clickhouse: {url: 'http://a:1/db?x=1'}\n".into(),
                "clickhouse.url",
            ),
            (
                "clickhouse: {url: 'http://a', database: 'x y'}\n".into(),
                "clickhouse.database",
            ),
            (
                "clickhouse: {url: 'http://a', table: '1t'}\n".into(),
                "clickhouse.table",
            ),
            (
                format!("clickhouse: {{url: 'http://a', password: {secret}}}\n"),
                "clickhouse.password",
            ),
            (
                "clickhouse: {url: 'http://a', user: 'env:'}\n".into(),
                "clickhouse.user",
            ),
            (
                "clickhouse: {url: 'http://a', batch_rows: 0}\n".into(),
                "clickhouse.batch_rows",
            ),
            (
                "clickhouse: {url: 'http://a', batch_bytes: 10}\n".into(),
                "clickhouse.batch_bytes",
            ),
            (
                "clickhouse: {url: 'http://a', batch_seconds: 0}\n".into(),
                "clickhouse.batch_seconds",
            ),
            (
                "clickhouse: {url: 'http://a', timeout_seconds: 0}\n".into(),
                "clickhouse.timeout_seconds",
            ),
            (
                "clickhouse: {url: 'http://a', checkpoint_path: ''}\n".into(),
                "clickhouse.checkpoint_path",
            ),
            (
                "clickhouse: {url: 'http://a', batch: 1}\n".into(),
                "clickhouse.batch",
            ),
            (
                "stats: {retention: {keep_files: 0}}\n".into(),
                "stats.retention.keep_files",
            ),
            (
                "stats: {retention: {keep_days: 0}}\n".into(),
                "stats.retention.keep_days",
            ),
            ("stats: {retention: {keep: 1}}\n".into(), "stats.retention.keep"),
        ];
        for (yaml, key) in cases {
            let e = load(&yaml, &[]).unwrap_err();
            assert_eq!(e.key, key, "{yaml}: {e}");
            assert!(!e.to_string().contains(secret), "{e}");
        }
    }

    #[test]
    fn retention_keeps_everything_unless_set() {
        use crate::config::Retention;
        assert_eq!(load("", &[]).unwrap().stats.retention, Retention::default());
        assert!(!Retention::default().is_limited());
        let r = load(
            "stats: {retention: {keep_files: 3}}\n",
            &[("LMGATE_STATS__RETENTION__KEEP_DAYS", "7")],
        )
        .unwrap()
        .stats
        .retention;
        assert_eq!((r.keep_files, r.keep_days), (Some(3), Some(7)));
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
}
