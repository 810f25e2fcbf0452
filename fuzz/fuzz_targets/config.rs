//! `Config::from_yaml_str` with fuzzer-chosen YAML and a few `LMGATE_*` variables.
//!
//! Input: `YAML [\0 ENV]`. ENV is up to 4 lines (split on `\n` or `\0`) of `NAME=VALUE`;
//! `LMGATE_` is put in front of a NAME that lacks it. Both parts are read as UTF-8 with
//! invalid bytes replaced.
//!
//! Checked: an error prints as `origin: key: reason` and its origin is the file or one of
//! the variables passed; an accepted config satisfies the validation rules (at least one
//! provider, distinct prefixes of the form `/x`, limits at their minimums).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lmgate::{Config, ENV_PREFIX};
use std::path::Path;
use std::time::Duration;

const FILE: &str = "fuzz.yaml";
const MAX_VARS: usize = 4;

fn env_of(raw: &[u8]) -> Vec<(String, String)> {
    raw.split(|&b| b == b'\n' || b == 0)
        .filter(|line| !line.is_empty())
        .take(MAX_VARS)
        .map(|line| {
            let line = String::from_utf8_lossy(line);
            let (name, value) = line.split_once('=').unwrap_or((&line, ""));
            let name = if name.starts_with(ENV_PREFIX) {
                name.to_owned()
            } else {
                format!("{ENV_PREFIX}{name}")
            };
            (name, value.to_owned())
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let (yaml, env) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], env_of(&data[i + 1..])),
        None => (data, Vec::new()),
    };
    let yaml = String::from_utf8_lossy(yaml);
    match Config::from_yaml_str(&yaml, Path::new(FILE), env.clone()) {
        Err(e) => {
            if lmgate_fuzz::debug() {
                eprintln!("rejected: {e}");
            }
            assert_eq!(e.to_string(), format!("{}: {}: {}", e.origin, e.key, e.reason));
            let from_var = e
                .origin
                .strip_prefix("environment variable ")
                .is_some_and(|v| env.iter().any(|(name, _)| name == v));
            assert!(e.origin == FILE || from_var, "origin {:?}", e.origin);
            assert!(!e.key.is_empty(), "empty key in {e}");
        }
        Ok(c) => {
            if lmgate_fuzz::debug() {
                eprintln!("accepted: {} providers", c.providers.len());
            }
            assert_eq!(c.file, Path::new(FILE));
            assert!(!c.providers.is_empty());
            for (i, p) in c.providers.iter().enumerate() {
                assert!(p.prefix.starts_with('/') && p.prefix.len() > 1, "{p:?}");
                assert!(!p.prefix.ends_with('/'), "{p:?}");
                assert!(!p.upstream.host.is_empty(), "{p:?}");
                assert!(
                    c.providers[..i]
                        .iter()
                        .all(|q| q.prefix != p.prefix && q.name != p.name),
                    "duplicate {p:?}"
                );
            }
            assert!(c.server.threads >= 1);
            assert!(c.stats.capture_limit_bytes >= 1024);
            assert!(c.stats.channel_capacity >= 1);
            assert!(c.stats.rotate_bytes >= 4096);
            for d in [
                c.server.drain_timeout,
                c.auth.poll_interval,
                c.stats.flush_interval,
                c.upstream.connect_timeout,
                c.upstream.read_timeout,
                c.upstream.write_timeout,
                c.upstream.idle_timeout,
                c.upstream.dns_refresh,
            ] {
                assert!(d >= Duration::from_secs(1));
            }
            assert!(!c.server.host.trim().is_empty());
        }
    }
});
