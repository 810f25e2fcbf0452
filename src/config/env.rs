//! The environment layer: `LMGATE_*` variables that override file keys.
//!
//! `LMGATE_` + the key path in upper case, `__` between levels
//! (`LMGATE_STATS__OUTPUT_PATH` -> `stats.output_path`). A variable whose first segment names
//! a config section is an override, and a bad one (unknown key, wrong type) is an error
//! naming it. Any other `LMGATE_*` variable (`LMGATE_HOME`, `LMGATE_BIN`) belongs to
//! something else in the user's shell or image: it is not read, only listed by name so the
//! caller can say it was ignored. Its value is never looked at: it might be a secret.

use super::file::{FileConfig, SECTIONS};
use super::ConfigError;
use std::collections::HashMap;

/// Prefix of every environment variable that overrides a config key.
pub const ENV_PREFIX: &str = "LMGATE_";

/// Why an `LMGATE_*` variable was not applied; `lmgate check` and the start-up warning
/// both print it after the variable's name.
pub const IGNORED_ENV_REASON: &str = "its first segment names no config section";

/// The `LMGATE_*` part of an environment, split into overrides and ignored names.
pub(super) struct EnvOverrides {
    /// `(variable, value)` for config keys, sorted by variable name.
    overrides: Vec<(String, String)>,
    /// Names of `LMGATE_*` variables that are not config keys, sorted.
    pub ignored: Vec<String>,
}

impl EnvOverrides {
    /// Keep the `LMGATE_*` variables of `env` and sort them into overrides and ignored names.
    pub fn from_env(env: impl IntoIterator<Item = (String, String)>) -> EnvOverrides {
        let mut overrides = Vec::new();
        let mut ignored = Vec::new();
        for (var, value) in env {
            let Some(rest) = var.strip_prefix(ENV_PREFIX).filter(|r| !r.is_empty()) else {
                continue;
            };
            let section = rest.split("__").next().unwrap_or_default();
            if SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(section)) {
                overrides.push((var, value));
            } else {
                ignored.push(var);
            }
        }
        overrides.sort();
        ignored.sort();
        EnvOverrides { overrides, ignored }
    }

    /// Apply the overrides on top of the file (`text`, already parsed as `parsed`). Returns
    /// the merged file model and, for each overridden dotted key, the variable that set it.
    pub fn apply(
        &self,
        text: &str,
        parsed: FileConfig,
        origin: &str,
    ) -> Result<(FileConfig, HashMap<String, String>), ConfigError> {
        let mut env_keys = HashMap::new();
        if self.overrides.is_empty() {
            return Ok((parsed, env_keys));
        }
        let mut tree: serde_yaml::Value = if text.trim().is_empty() {
            serde_yaml::Value::Mapping(Default::default())
        } else {
            serde_yaml::from_str(text).map_err(|e| ConfigError::new(origin, "-", e.to_string()))?
        };
        if tree.is_null() {
            tree = serde_yaml::Value::Mapping(Default::default());
        }
        let mut cfg = parsed;
        // One variable at a time, so a failure names the variable that caused it.
        for (var, value) in &self.overrides {
            let var_origin = format!("environment variable {var}");
            let path: Vec<String> = var[ENV_PREFIX.len()..]
                .split("__")
                .map(|s| s.to_ascii_lowercase())
                .collect();
            let key = path.join(".");
            if path.iter().any(|s| s.is_empty()) {
                return Err(ConfigError::new(var_origin, key, "empty key segment"));
            }
            set_path(&mut tree, &path, env_value(value))
                .map_err(|reason| ConfigError::new(&var_origin, &key, reason))?;
            cfg = serde_path_to_error::deserialize(tree.clone())
                .map_err(|e| ConfigError::at_path(&var_origin, e))?;
            env_keys.insert(key, var.clone());
        }
        Ok((cfg, env_keys))
    }
}

/// An environment value is read as a YAML scalar (so `9000` is a number and `true` a bool);
/// anything that is not a plain scalar stays a string.
fn env_value(raw: &str) -> serde_yaml::Value {
    match serde_yaml::from_str::<serde_yaml::Value>(raw) {
        Ok(v @ (serde_yaml::Value::Number(_) | serde_yaml::Value::Bool(_))) => v,
        _ => serde_yaml::Value::String(raw.to_owned()),
    }
}

/// Set `path` in `tree` to `value`, creating sections on the way; a scalar in the way is
/// an error in words.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::load;

    fn split(vars: &[(&str, &str)]) -> EnvOverrides {
        EnvOverrides::from_env(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn variables_split_by_their_first_segment() {
        let e = split(&[
            ("PATH", "/bin"),
            ("LMGATE_", "x"),
            ("LMGATE_SERVER__PORT", "1"),
            ("LMGATE_home", "/x"),
            ("LMGATE_BIN", "/x"),
            ("LMGATE_FOO__BAR", "x"),
            ("LMGATE_Providers__OPENAI__UPSTREAM", "http://a"),
            ("LMGATE_SERVERS__PORT", "1"),
        ]);
        let names: Vec<&str> = e.overrides.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["LMGATE_Providers__OPENAI__UPSTREAM", "LMGATE_SERVER__PORT"]
        );
        assert_eq!(
            e.ignored,
            [
                "LMGATE_BIN",
                "LMGATE_FOO__BAR",
                "LMGATE_SERVERS__PORT",
                "LMGATE_home"
            ]
        );
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
        assert_eq!(c.auth.allowlist_path, std::path::PathBuf::from("123"));
        let openai = c.providers.iter().find(|p| p.name == "openai").unwrap();
        assert_eq!(openai.upstream.host, "127.0.0.1");
        assert_eq!(openai.upstream.port, 9001);
        assert!(!openai.upstream.tls);
        assert!(c
            .providers
            .iter()
            .any(|p| p.name == "local" && p.prefix == "/local"));
        assert!(c.ignored_env.is_empty());
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let e = load("", &[("LMGATE_SERVER__PORT", "eighty")]).unwrap_err();
        assert_eq!(e.origin, "environment variable LMGATE_SERVER__PORT");
        assert_eq!(e.key, "server.port");
        assert!(e.reason.contains("invalid type"), "{e}");
        let e = load("", &[("LMGATE_SERVER__PORT", "70000")]).unwrap_err();
        assert_eq!(e.key, "server.port");
        let e = load("", &[("LMGATE_PROVIDERS__OPENAI__UPSTREAM", "ftp://x")]).unwrap_err();
        assert_eq!(
            e.origin,
            "environment variable LMGATE_PROVIDERS__OPENAI__UPSTREAM"
        );
        assert_eq!(e.key, "providers.openai.upstream");
    }

    #[test]
    fn misspelt_key_under_a_known_section_still_fails() {
        for (var, key, field) in [
            ("LMGATE_SERVER__PROT", "server.prot", "prot"),
            ("LMGATE_SERVER__PORTT", "server.portt", "portt"),
            ("LMGATE_STATS__OUTPUT", "stats.output", "output"),
        ] {
            let e = load("", &[(var, "1"), ("LMGATE_HOME", "/x")]).unwrap_err();
            assert_eq!(e.origin, format!("environment variable {var}"));
            assert_eq!(e.key, key);
            assert!(e.reason.contains(&format!("unknown field `{field}`")), "{e}");
        }
    }

    #[test]
    fn unknown_first_segment_is_ignored_and_listed_by_name() {
        let secret = "sk-live-do-not-print";
        let c = load(
            "server: {port: 9000}\n",
            &[
                ("LMGATE_HOME", "/opt/lmgate"),
                ("LMGATE_BIN", secret),
                ("LMGATE_FOO__BAR", "x"),
                ("LMGATE_SERVER__THREADS", "2"),
            ],
        )
        .unwrap();
        assert_eq!(c.ignored_env, ["LMGATE_BIN", "LMGATE_FOO__BAR", "LMGATE_HOME"]);
        assert_eq!((c.server.port, c.server.threads), (9000, 2));
        assert!(
            !format!("{c:?}").contains(secret),
            "values of ignored variables are not kept"
        );
    }

    #[test]
    fn known_section_with_a_bad_leaf_fails() {
        // The section itself, a key below a scalar, an unknown provider field.
        let e = load("", &[("LMGATE_SERVER", "1")]).unwrap_err();
        assert_eq!(
            (e.origin.as_str(), e.key.as_str()),
            ("environment variable LMGATE_SERVER", "server")
        );
        // With no file value the path is created, and the string key gets a map.
        let e = load("", &[("LMGATE_LOGGING__LEVEL__X", "1")]).unwrap_err();
        assert_eq!(
            (e.origin.as_str(), e.key.as_str()),
            ("environment variable LMGATE_LOGGING__LEVEL__X", "logging.level")
        );
        let e = load("logging: {level: info}\n", &[("LMGATE_LOGGING__LEVEL__X", "1")]).unwrap_err();
        assert_eq!(e.reason, "`logging.level` is not a section");
        let e = load("", &[("LMGATE_PROVIDERS__OPENAI__UPSTREEM", "http://a")]).unwrap_err();
        assert_eq!(e.key, "providers.openai.upstreem");
        assert!(e.reason.contains("unknown field `upstreem`"), "{e}");
        let e = load("", &[("LMGATE_METRICS____ENABLED", "true")]).unwrap_err();
        assert_eq!(e.reason, "empty key segment");
    }

    #[test]
    fn values_are_yaml_scalars_or_strings() {
        assert_eq!(env_value("9000"), serde_yaml::Value::from(9000));
        assert_eq!(env_value("true"), serde_yaml::Value::from(true));
        assert_eq!(env_value("a: b"), serde_yaml::Value::from("a: b"));
        assert_eq!(env_value("[1]"), serde_yaml::Value::from("[1]"));
    }

    #[test]
    fn set_path_creates_sections_and_refuses_to_descend_into_a_scalar() {
        let mut tree = serde_yaml::from_str("logging: {level: info}\n").unwrap();
        let p = |s: &str| s.split('.').map(str::to_owned).collect::<Vec<_>>();
        set_path(&mut tree, &p("server.port"), 1.into()).unwrap();
        assert_eq!(tree["server"]["port"], serde_yaml::Value::from(1));
        let e = set_path(&mut tree, &p("logging.level.x"), 1.into()).unwrap_err();
        assert_eq!(e, "`logging.level` is not a section");
    }
}
