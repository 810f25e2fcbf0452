//! Static API keys: `env:VARIABLE`, read once at start, and `file:/path`, read at start and
//! again whenever the file changes (a mounted Kubernetes or Docker secret rotated in
//! place or by an atomic rename). A bad read keeps the last good key; nothing here ever
//! prints a key.

use super::{Credential, CredentialSlot, EnvLookup, Secret};
use crate::allowlist::{fingerprint, Fingerprint};
use crate::config::SecretSource;
use crate::providers::ApiFormat;
use log::{info, warn};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Largest key file read (a key is a line; a bigger file is a mistake).
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Read a secret and, for a file, the fingerprint it was read at. Surrounding whitespace
/// (a file's final newline) is dropped; an empty secret is an error.
pub(super) fn read(source: &SecretSource, env: EnvLookup) -> Result<(Secret, Option<Fingerprint>), String> {
    match source {
        SecretSource::Env(var) => match env(var) {
            None => Err(format!("environment variable {var} is not set")),
            Some(v) if v.trim().is_empty() => Err(format!("environment variable {var} is empty")),
            Some(v) => Ok((Secret::new(v.trim()), None)),
        },
        SecretSource::File(path) => {
            let seen = fingerprint(path);
            read_file(path).map(|s| (s, seen))
        }
    }
}

fn read_file(path: &Path) -> Result<Secret, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(format!("{shown} is larger than {MAX_KEY_FILE_BYTES} bytes"));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| format!("{shown} is not UTF-8 text"))?;
    match text.trim() {
        "" => Err(format!("{shown} is empty")),
        key => Ok(Secret::new(key)),
    }
}

/// Poll `path` every `interval`; when its identity (inode, size, mtime) changes, read it and
/// swap the new key in. `seen` is the identity the key in use was read at. A refresh
/// request (an upstream 401) checks at once.
pub(super) async fn watch_file(
    slot: Arc<CredentialSlot>,
    path: PathBuf,
    format: ApiFormat,
    interval: Duration,
    mut seen: Option<Fingerprint>,
) {
    let provider = slot.provider().to_owned();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = slot.refresh_requested() => {}
        }
        let now = fingerprint(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let key = read_file(&path).and_then(|s| {
            Credential::header(format, false, &s, None).ok_or_else(|| "not a valid header value".to_owned())
        });
        match key {
            Ok(c) => {
                slot.store(c);
                slot.status.record_ok(None);
                info!("credential {provider}: key file {} reloaded", path.display());
            }
            Err(reason) => {
                slot.status.record_failed();
                warn!("credential {provider}: key file reload rejected, keeping the last good key: {reason}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CredentialSpec;
    use std::time::SystemTime;

    #[test]
    fn env_and_file_secrets_are_trimmed_and_must_not_be_empty() {
        let env = |k: &str| match k {
            "A" => Some("  key-a \n".to_string()),
            "E" => Some(String::new()),
            _ => None,
        };
        let (s, seen) = read(&SecretSource::Env("A".into()), &env).unwrap();
        assert_eq!((s.expose(), seen), ("key-a", None));
        assert_eq!(
            read(&SecretSource::Env("E".into()), &env).unwrap_err(),
            "environment variable E is empty"
        );
        assert_eq!(
            read(&SecretSource::Env("Z".into()), &env).unwrap_err(),
            "environment variable Z is not set"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, "\n").unwrap();
        assert!(read(&SecretSource::File(f.clone()), &env)
            .unwrap_err()
            .ends_with("is empty"));
        std::fs::write(&f, "file-key\n").unwrap();
        let (s, seen) = read(&SecretSource::File(f), &env).unwrap();
        assert_eq!(s.expose(), "file-key");
        assert!(seen.is_some());
    }

    #[tokio::test]
    async fn a_rotated_file_is_picked_up_and_a_bad_one_keeps_the_last_good_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, "key-1\n").unwrap();
        let slot = Arc::new(CredentialSlot::new(
            "anthropic",
            CredentialSpec::ApiKey(SecretSource::File(f.clone())),
        ));
        let (s, seen) = read(&SecretSource::File(f.clone()), &|_| None).unwrap();
        slot.store(Credential::header(ApiFormat::Anthropic, false, &s, None).unwrap());
        let task = tokio::spawn(watch_file(
            Arc::clone(&slot),
            f.clone(),
            ApiFormat::Anthropic,
            Duration::from_millis(10),
            seen,
        ));
        let value = || {
            slot.current(SystemTime::now)
                .unwrap()
                .value()
                .to_str()
                .unwrap()
                .to_owned()
        };
        // Atomic rename, as Kubernetes does for a mounted secret.
        let tmp = dir.path().join("k.new");
        std::fs::write(&tmp, "key-2\n").unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while value() != "key-2" {
            assert!(std::time::Instant::now() < deadline, "rotation not seen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(slot.status.ok.load(std::sync::atomic::Ordering::Relaxed), 1);
        std::fs::write(&f, "").unwrap();
        while slot.status.failed.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            assert!(std::time::Instant::now() < deadline, "bad file not seen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(value(), "key-2", "the last good key stays");
        task.abort();
    }
}
