//! Configuration: text in, one validated [`Config`] out, in three layers (as river's
//! `config/`: file, environment and internal model kept apart):
//!
//! - `file.rs`: the file model, serde types with `deny_unknown_fields`; what the YAML may say.
//! - `env.rs`: `LMGATE_*` overrides on top of the file; variables that name no config
//!   section are ignored and listed by name ([`Config::ignored_env`]).
//! - `validate.rs`: file model -> validated model; defaults applied, limits checked.
//! - [`model`]: the validated [`Config`] and its parts, the only types the rest of the
//!   program reads.
//! - [`defaults`]: every default value, once.
//!
//! Loading happens once, in `main`, before anything listens. Every failure is a
//! [`ConfigError`] naming where the bad value came from (the file, or the environment
//! variable that overrode it), the key path, and the reason. Providers, upstream URLs and
//! routing are `providers.rs`; this module only turns text into checked values.

pub mod defaults;
mod env;
mod file;
mod model;
mod validate;

pub use env::{ENV_PREFIX, IGNORED_ENV_REASON};
#[cfg(test)]
pub use model::AwsSpec;
pub use model::{
    ClickHouseConfig, Config, CredentialSpec, FleetConfig, GoogleSpec, LimitsConfig, MetricsListen,
    Retention, SecretSource, StatsConfig, UpstreamConfig,
};

use std::path::Path;

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
    pub(crate) fn new(origin: impl Into<String>, key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            origin: origin.into(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// A serde error at a key path (from the file, or from the tree after an override).
    fn at_path<E: std::fmt::Display>(origin: &str, e: serde_path_to_error::Error<E>) -> Self {
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
        let parsed = file::parse(text, &origin)?;
        let overrides = env::EnvOverrides::from_env(env);
        let (merged, env_keys) = overrides.apply(text, parsed, &origin)?;
        let origins = validate::Origins { file, env: env_keys };
        let mut config = validate::validate(merged, &origins)?;
        config.ignored_env = overrides.ignored;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::model::{AuthConfig, MetricsConfig, PricesConfig, ServerConfig};
    use super::*;
    use crate::providers::{ApiFormat, ProviderConfig, UpstreamUrl};
    use std::path::PathBuf;
    use std::time::Duration;

    /// `Config::from_yaml_str` on `yaml` as `test.yaml` with `env`; shared by the layers' tests.
    pub(super) fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_yaml_str(
            yaml,
            Path::new("test.yaml"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn a_shutdown_delay_of_zero_is_valid_and_the_environment_sets_one() {
        let c = load("server: {shutdown_delay_seconds: 0}\n", &[]).unwrap();
        assert_eq!(c.server.shutdown_delay, Duration::ZERO);
        let c = load("", &[("LMGATE_SERVER__SHUTDOWN_DELAY_SECONDS", "15")]).unwrap();
        assert_eq!(c.server.shutdown_delay, Duration::from_secs(15));
        let e = load("server: {shutdown_delay_seconds: -1}\n", &[]).unwrap_err();
        assert_eq!(e.key, "server.shutdown_delay_seconds", "{e}");
    }

    #[test]
    fn empty_file_gives_defaults_and_five_providers() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.server.host, "0.0.0.0");
        assert_eq!(c.server.port, 8080);
        assert!(c.server.threads >= 1);
        assert_eq!(c.server.shutdown_delay, Duration::ZERO);
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
        assert!(c.ignored_env.is_empty());
    }

    #[test]
    fn an_empty_top_level_key_is_reported_without_an_empty_key_name() {
        // Found by the config fuzz target: an anchored, tagged empty key.
        for yaml in ["\"\": 1\n", "&server: !port: 8080}\n"] {
            let e = load(yaml, &[]).unwrap_err();
            assert_eq!(e.key, "-", "{e}");
            assert_eq!(e.to_string(), "test.yaml: -: unknown field ``, expected one of `server`, `auth`, `stats`, `logging`, `upstream`, `metrics`, `providers`, `prices`, `limits`, `fleet`, `clickhouse`");
        }
    }

    #[test]
    fn whole_struct_from_a_full_file() {
        let yaml = r#"
server: {host: 127.0.0.1, port: 9000, threads: 3, drain_timeout_seconds: 5, shutdown_delay_seconds: 7, upgrade_sock: /tmp/u.sock, pid_file: /tmp/p.pid, max_buffered_body_bytes: 65536}
auth: {allowlist_path: a.csv, poll_interval_seconds: 2}
stats: {output_path: s.jsonl, flush_interval_seconds: 1, capture_limit_bytes: 4096, channel_capacity: 10, rotate_bytes: 8192, retention: {keep_files: 5, keep_days: 9}}
clickhouse: {url: 'http://127.0.0.1:8123', user: 'env:CH_USER', password: 'file:/run/ch', batch_rows: 100, batch_bytes: 65536, batch_seconds: 3, timeout_seconds: 4}
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
        let c = load(yaml, &[("LMGATE_HOME", "/x")]).unwrap();
        let expected = Config {
            file: PathBuf::from("test.yaml"),
            server: ServerConfig {
                host: "127.0.0.1".into(),
                port: 9000,
                threads: 3,
                drain_timeout: Duration::from_secs(5),
                shutdown_delay: Duration::from_secs(7),
                upgrade_sock: "/tmp/u.sock".into(),
                pid_file: "/tmp/p.pid".into(),
                tls: None,
                max_buffered_body_bytes: 65536,
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
                retention: super::Retention {
                    keep_files: Some(5),
                    keep_days: Some(9),
                },
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
                listen: MetricsListen::Separate("127.0.0.1:9090".into()),
                per_key_labels: true,
            },
            prices: PricesConfig {
                path: None,
                override_path: None,
                poll_interval: Duration::from_secs(30),
            },
            limits: LimitsConfig {
                default_output_tokens: 4096,
                bytes_per_input_token: 4,
            },
            fleet: None,
            clickhouse: Some(super::ClickHouseConfig {
                url: "http://127.0.0.1:8123".into(),
                database: "lmgate".into(),
                table: "usage".into(),
                user: Some(SecretSource::Env("CH_USER".into())),
                password: Some(SecretSource::File("/run/ch".into())),
                batch_rows: 100,
                batch_bytes: 65536,
                batch_wait: Duration::from_secs(3),
                checkpoint_path: "s.jsonl.shipped".into(),
                timeout: Duration::from_secs(4),
            }),
            providers: vec![ProviderConfig {
                name: "local".into(),
                prefix: "/local".into(),
                upstream: UpstreamUrl::parse("http://127.0.0.1:8000/v1").unwrap(),
                format: ApiFormat::Anthropic,
                credential: None,
            }],
            ignored_env: vec!["LMGATE_HOME".into()],
        };
        assert_eq!(c, expected);
        assert_eq!(c.providers[0].upstream.base_path, "/v1");
    }

    #[test]
    fn unreadable_file_is_an_error_naming_it() {
        let e = Config::load(Path::new("/nonexistent/lmgate.yaml"), Vec::new()).unwrap_err();
        assert_eq!(e.origin, "/nonexistent/lmgate.yaml");
        assert!(e.reason.contains("cannot read"));
    }
}
