//! The file model: what the YAML may say, as serde types with `deny_unknown_fields`.
//!
//! Every field is an `Option` rather than a value with a serde default fn: `key: ~` means
//! "use the default", validation needs to know what was set (the TLS keys go together, a
//! provider entry overrides only the fields it names), and each default lives once, in
//! [`super::defaults`], applied by `validate.rs`. An empty file, or one that sets a single
//! key, is valid.

use super::ConfigError;
use crate::providers::ApiFormat;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// The top-level sections, as spelt in the file (the field names of [`FileConfig`]).
/// An `LMGATE_*` variable whose first segment is none of these is not a config key.
pub(super) const SECTIONS: &[&str] = &[
    "server",
    "auth",
    "stats",
    "logging",
    "upstream",
    "metrics",
    "providers",
    "prices",
    "limits",
    "fleet",
    "clickhouse",
];

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub auth: AuthFile,
    #[serde(default)]
    pub stats: StatsFile,
    #[serde(default)]
    pub logging: LoggingFile,
    #[serde(default)]
    pub upstream: UpstreamFile,
    #[serde(default)]
    pub metrics: MetricsFile,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderFile>,
    #[serde(default)]
    pub prices: PricesFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub fleet: FleetFile,
    /// Absent (or `~`) = no shipping.
    pub clickhouse: Option<ClickHouseFile>,
}

/// `fleet:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FleetFile {
    #[serde(default, deserialize_with = "de_opt_string")]
    pub redis_url: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    pub redis_password: Option<String>,
    pub instances: Option<u64>,
    pub lease_percent: Option<u64>,
    pub lease_seconds: Option<u64>,
    pub sync_interval_ms: Option<u64>,
    pub lease_wait_ms: Option<u64>,
    pub fail_open: Option<bool>,
    #[serde(default, deserialize_with = "de_opt_string")]
    pub key_prefix: Option<String>,
}

/// `clickhouse:`, where the usage records are shipped.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClickHouseFile {
    #[serde(default, deserialize_with = "de_opt_string")]
    pub url: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    pub database: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    pub table: Option<String>,
    /// `env:VARIABLE` or `file:/path`.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub user: Option<String>,
    /// `env:VARIABLE` or `file:/path`.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub password: Option<String>,
    pub batch_rows: Option<usize>,
    pub batch_bytes: Option<usize>,
    pub batch_seconds: Option<u64>,
    #[serde(default, deserialize_with = "de_opt_string")]
    pub checkpoint_path: Option<String>,
    pub timeout_seconds: Option<u64>,
}

/// `stats.retention:`, which rotated files are kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetentionFile {
    pub keep_files: Option<usize>,
    pub keep_days: Option<u64>,
}

/// `prices:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PricesFile {
    #[serde(default, deserialize_with = "de_opt_string")]
    pub path: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    pub override_path: Option<String>,
    pub poll_interval_seconds: Option<u64>,
}

/// `limits:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsFile {
    pub default_output_tokens: Option<u64>,
    pub bytes_per_input_token: Option<u64>,
}

/// `server:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServerFile {
    #[serde(default, deserialize_with = "de_opt_string")]
    pub host: Option<String>,
    pub port: Option<u16>,
    pub threads: Option<usize>,
    pub drain_timeout_seconds: Option<u64>,
    pub shutdown_delay_seconds: Option<u64>,
    #[serde(default, deserialize_with = "de_opt_string")]
    pub upgrade_sock: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    pub pid_file: Option<String>,
    pub tls_port: Option<u16>,
    #[serde(default, deserialize_with = "de_opt_string")]
    pub tls_cert_path: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    pub tls_key_path: Option<String>,
    pub max_buffered_body_bytes: Option<usize>,
}

/// `auth:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthFile {
    #[serde(default, deserialize_with = "de_opt_string")]
    pub allowlist_path: Option<String>,
    pub poll_interval_seconds: Option<u64>,
}

/// `stats:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatsFile {
    #[serde(default, deserialize_with = "de_opt_string")]
    pub output_path: Option<String>,
    pub flush_interval_seconds: Option<u64>,
    pub capture_limit_bytes: Option<usize>,
    pub channel_capacity: Option<usize>,
    pub rotate_bytes: Option<u64>,
    #[serde(default)]
    pub retention: RetentionFile,
}

/// `logging:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoggingFile {
    #[serde(default, deserialize_with = "de_opt_string")]
    pub level: Option<String>,
}

/// `metrics:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MetricsFile {
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "de_opt_string")]
    pub listen: Option<String>,
    pub per_key_labels: Option<bool>,
}

/// `upstream:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamFile {
    pub connect_timeout_seconds: Option<u64>,
    pub read_timeout_seconds: Option<u64>,
    pub write_timeout_seconds: Option<u64>,
    pub idle_timeout_seconds: Option<u64>,
    pub dns_refresh_seconds: Option<u64>,
}

/// `providers.<name>:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProviderFile {
    #[serde(default, deserialize_with = "de_opt_string")]
    pub upstream: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    pub prefix: Option<String>,
    pub format: Option<ApiFormat>,
    pub enabled: Option<bool>,
    pub credential: Option<CredentialFile>,
}

/// `providers.<name>.credential:`, the provider credential injected for gateway keys.
/// Exactly one of the three is set; `validate.rs` checks that. Each names where the secret
/// is (a variable, a file, a service account), never the secret itself.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CredentialFile {
    /// `env:VARIABLE` or `file:/path`.
    #[serde(default, deserialize_with = "de_opt_string")]
    pub api_key: Option<String>,
    pub google: Option<GoogleFile>,
    /// `aws: {}` and `aws: ~` both mean the default chain with no options.
    #[serde(default, deserialize_with = "de_present")]
    pub aws: Option<AwsFile>,
}

/// `credential.google:`: a service-account file or Application Default Credentials.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GoogleFile {
    #[serde(default, deserialize_with = "de_opt_string")]
    pub service_account: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    pub token_url: Option<String>,
    pub adc: Option<bool>,
    #[serde(default, deserialize_with = "de_opt_string")]
    pub metadata_url: Option<String>,
}

/// `credential.aws:`: the AWS default credential chain, optionally narrowed.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AwsFile {
    #[serde(default, deserialize_with = "de_opt_string")]
    pub region: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    pub assume_role_arn: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    pub profile: Option<String>,
}

/// A key that is present is `Some`, even when its value is null (`aws: ~`).
fn de_present<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<Option<T>, D::Error> {
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

/// Parse the file's text alone, so that its errors keep their line and column. `origin`
/// names the file in errors.
pub(super) fn parse(text: &str, origin: &str) -> Result<FileConfig, ConfigError> {
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| ConfigError::at_path(origin, e))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_exactly_the_top_level_fields() {
        for s in SECTIONS {
            let r = serde_yaml::from_str::<FileConfig>(&format!("{s}: {{}}\n"));
            assert!(r.is_ok(), "{s}: {r:?}");
        }
        let e = serde_yaml::from_str::<FileConfig>("nope: 1\n")
            .unwrap_err()
            .to_string();
        let listed: Vec<String> = SECTIONS.iter().map(|s| format!("`{s}`")).collect();
        assert!(
            e.contains(&format!("expected one of {}", listed.join(", "))),
            "{e}"
        );
    }

    #[test]
    fn strings_accept_numbers_and_bools_and_null_is_absent() {
        let f: FileConfig =
            serde_yaml::from_str("server: {host: 127, pid_file: true, upgrade_sock: ~}\n").unwrap();
        assert_eq!(f.server.host.as_deref(), Some("127"));
        assert_eq!(f.server.pid_file.as_deref(), Some("true"));
        assert_eq!(f.server.upgrade_sock, None);
    }

    #[test]
    fn credential_keys_parse_and_a_null_aws_section_means_defaults() {
        let f: FileConfig = serde_yaml::from_str(
            "providers:\n  a: {credential: {api_key: env:K}}\n  b: {credential: {aws: ~}}\n  c: {credential: {google: {adc: true}}}\n",
        )
        .unwrap();
        let cred = |n: &str| f.providers[n].credential.clone().unwrap();
        assert_eq!(cred("a").api_key.as_deref(), Some("env:K"));
        assert!(cred("b").aws.is_some() && cred("b").api_key.is_none());
        assert_eq!(cred("c").google.unwrap().adc, Some(true));
        assert!(serde_yaml::from_str::<FileConfig>("providers: {a: {credential: {apikey: x}}}\n").is_err());
    }

    #[test]
    fn empty_text_is_the_empty_file() {
        let f = parse("  \n", "test.yaml").unwrap();
        assert!(f.providers.is_empty() && f.server.port.is_none());
    }
}
