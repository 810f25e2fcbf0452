//! Which files hold the stats: the live file `stats.output_path` and its rotated siblings
//! (`stats::rotated_name`), oldest first. [`order_stats_files`] is the pure part (names in,
//! names out); [`stats_files`] lists the directory. Reading the files is left to the caller.

use super::ReportError;
use std::path::{Path, PathBuf};

/// The rotation suffix of `name` as a sortable (stamp, n), when `name` is `live` plus
/// `.YYYYMMDDTHHMMSS.mmmZ` and an optional `.N` (see `stats::rotated_name`).
fn rotation_key<'a>(live: &str, name: &'a str) -> Option<(&'a str, u64)> {
    let rest = name.strip_prefix(live)?.strip_prefix('.')?;
    let (stamp, n) = match rest.get(20..) {
        Some("") => (rest, 0),
        Some(tail) => (&rest[..20], taken_name_counter(tail.strip_prefix('.')?)?),
        None => return None,
    };
    let b = stamp.as_bytes();
    let shape = b.iter().enumerate().all(|(i, c)| match i {
        8 => *c == b'T',
        15 => *c == b'.',
        19 => *c == b'Z',
        _ => c.is_ascii_digit(),
    });
    shape.then_some((stamp, n))
}

/// The `N` of a `.N` suffix: ASCII digits only (no sign, not empty). A number too large
/// for `u64` sorts last.
fn taken_name_counter(n: &str) -> Option<u64> {
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(n.parse().unwrap_or(u64::MAX))
}

/// Which of the names in a directory are the stats file `live`'s rotated siblings, oldest
/// first (their names sort by rotation time, then by the `.N` taken-name counter). The live
/// file itself, the `.lock` sidecar and anything else are left out.
pub(super) fn order_stats_files<'a>(live: &str, names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut rotated: Vec<((&str, u64), &str)> = names
        .into_iter()
        .filter_map(|n| rotation_key(live, n).map(|k| (k, n)))
        .collect();
    rotated.sort();
    rotated.into_iter().map(|(_, n)| n).collect()
}

/// The stats files to read, oldest first: rotated siblings by name, then the live file.
pub(super) fn stats_files(live: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let read_err = |path: &Path, source| ReportError::Read {
        path: path.to_owned(),
        source,
    };
    let name = live
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| read_err(live, std::io::ErrorKind::InvalidInput.into()))?;
    let dir = match live.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let entries = std::fs::read_dir(dir).map_err(|e| match e.kind() {
        // No such directory: say which stats file is missing.
        std::io::ErrorKind::NotFound => read_err(live, e),
        _ => read_err(dir, e),
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| read_err(dir, e))?;
        if let Ok(n) = entry.file_name().into_string() {
            names.push(n);
        }
    }
    let mut files: Vec<PathBuf> = order_stats_files(name, names.iter().map(String::as_str))
        .into_iter()
        .map(|n| live.with_file_name(n))
        .collect();
    match std::fs::metadata(live) {
        Ok(_) => files.push(live.to_owned()),
        // Between a rotation and the next write there may be no live file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !files.is_empty() => {}
        Err(e) => return Err(read_err(live, e)),
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_siblings_sort_chronologically_and_the_lock_file_is_not_data() {
        let names = [
            "stats.jsonl",
            "stats.jsonl.lock",
            "stats.jsonl.20261123T101530.123Z.10",
            "stats.jsonl.20261123T101530.123Z.2",
            "stats.jsonl.20261123T101530.123Z",
            "stats.jsonl.20261122T000000.000Z",
            "stats.jsonl.20261123T101530.123Z.1",
            "stats.jsonl.20261123T101530.123Z.x",
            "stats.jsonl.2026112T101530.123Z",
            "stats.jsonl.20261123T101530.123Z.gz",
            "other.jsonl.20261122T000000.000Z",
            "stats.jsonlx.20261122T000000.000Z",
            "allowlist.csv",
        ];
        assert_eq!(
            order_stats_files("stats.jsonl", names),
            [
                "stats.jsonl.20261122T000000.000Z",
                "stats.jsonl.20261123T101530.123Z",
                "stats.jsonl.20261123T101530.123Z.1",
                "stats.jsonl.20261123T101530.123Z.2",
                "stats.jsonl.20261123T101530.123Z.10",
            ]
        );
    }

    #[test]
    fn a_taken_name_counter_is_digits_only_and_a_huge_one_sorts_last() {
        let names = [
            "s.20261123T101530.123Z.99999999999999999999999",
            "s.20261123T101530.123Z.4294967296",
            "s.20261123T101530.123Z.+1",
            "s.20261123T101530.123Z.",
            "s.20261123T101530.123Z.7",
        ];
        assert_eq!(
            order_stats_files("s", names),
            [
                "s.20261123T101530.123Z.7",
                "s.20261123T101530.123Z.4294967296",
                "s.20261123T101530.123Z.99999999999999999999999",
            ]
        );
    }

    #[test]
    fn stats_files_lists_rotated_then_live_and_names_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("stats.jsonl");
        let err = stats_files(&live).unwrap_err();
        assert!(err.to_string().contains("stats.jsonl"), "{err}");
        let missing_dir = dir.path().join("nope").join("stats.jsonl");
        assert!(stats_files(&missing_dir)
            .unwrap_err()
            .to_string()
            .contains("nope/stats.jsonl"));
        let rotated = dir.path().join("stats.jsonl.20261122T000000.000Z");
        std::fs::write(&rotated, "").unwrap();
        std::fs::write(dir.path().join("stats.jsonl.lock"), "").unwrap();
        assert_eq!(
            stats_files(&live).unwrap(),
            std::slice::from_ref(&rotated),
            "no live file right after a rotation"
        );
        std::fs::write(&live, "").unwrap();
        assert_eq!(stats_files(&live).unwrap(), [rotated, live]);
    }
}
