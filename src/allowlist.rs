//! The key allow-list: a pure CSV parser ([`parse_allowlist`]), the lock-free holder the
//! proxy reads ([`SharedAllowList`]), and the hot-reload [`AllowListReloader`] service.
//!
//! CSV columns: `id,api_key,owner,added` (header row, any column order, all four non-empty),
//! and the optional `mode,providers,models,limits` (empty = pass-through, all providers, all
//! models, no limits; scopes are parsed by `scope.rs`, limits by `limits/spec.rs`). The
//! `owner.*` limits are the owner's: every row of one owner that states them must state
//! the same ones, and they apply to all of that owner's keys. A four-column file loads as it always
//! did. A reload that fails keeps the last good list. Keys never appear in errors or logs.

use crate::limits::spec::{self as limit_spec, LimitSet, Limits};
use crate::limits::{Meters, Registry};
use crate::scope::{self, Scope};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use log::{info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Who a key belongs to and what it may do.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// The allow-list `id` (goes into usage records).
    pub id: Arc<str>,
    /// Owner, for reports.
    pub owner: String,
    /// The `added` column, as written.
    pub added: String,
    /// Forwarded as presented, or replaced by the provider's credential.
    pub mode: KeyMode,
    /// Providers and models the key may use.
    pub scope: Scope,
    /// Rate limits and budgets (the key's and its owner's).
    pub limits: Limits,
    /// The meters those limits charge: attached by [`AllowList::attach_meters`] in the
    /// server (none for a key without limits, and none in `check` or `keys`).
    pub meters: Option<Meters>,
}

/// How a key reaches the provider (the `mode` column).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyMode {
    /// The caller's key is the provider's key: forwarded as presented, never given a
    /// credential (the default, and every key of a four-column allow-list).
    #[default]
    PassThrough,
    /// A key LMGate issued (`lmg_...`): never forwarded; the gateway adds the provider's
    /// credential instead.
    Gateway,
}

impl KeyMode {
    /// The `mode` column spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyMode::PassThrough => "passthrough",
            KeyMode::Gateway => "gateway",
        }
    }

    /// Parse the `mode` column; empty is pass-through.
    pub fn parse(field: &str) -> Result<KeyMode, String> {
        match field.trim() {
            "" => Ok(KeyMode::PassThrough),
            m if m.eq_ignore_ascii_case("passthrough") => Ok(KeyMode::PassThrough),
            m if m.eq_ignore_ascii_case("gateway") => Ok(KeyMode::Gateway),
            m => Err(format!(
                "`{}` is not `passthrough` (or empty) or `gateway`",
                m.escape_debug()
            )),
        }
    }
}

/// The prefix of a hashed allow-list key: `sha256:<64 hex digits>`.
pub const HASH_PREFIX: &str = "sha256:";

type Digest = [u8; 32];

/// SHA-256 of a key.
pub fn digest(key: &str) -> Digest {
    use sha2::Digest as _;
    sha2::Sha256::digest(key.as_bytes()).into()
}

/// The allow-list form of a key that keeps the live key off disk.
pub fn hashed_form(key: &str) -> String {
    let mut s = String::with_capacity(HASH_PREFIX.len() + 64);
    s.push_str(HASH_PREFIX);
    for b in digest(key) {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn parse_hex_digest(hex: &str) -> Option<Digest> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Equality that looks at every byte whatever the first difference.
#[inline]
fn ct_eq(a: &Digest, b: &Digest) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A parsed allow-list: plaintext keys and `sha256:` keys, each O(1).
#[derive(Debug, Default)]
pub struct AllowList {
    plain: HashMap<Box<str>, Arc<KeyEntry>>,
    /// Hashed keys bucketed by the first 8 digest bytes; the full digest is then compared in
    /// constant time, so timing never tells how much of a digest matched.
    hashed: HashMap<u64, Vec<(Digest, Arc<KeyEntry>)>>,
    /// Every key's digest (plaintext ones hashed at load): duplicates and diffs.
    all: std::collections::HashSet<Digest>,
    /// Presented keys already matched to a `sha256:` entry, so a key seen again skips the
    /// digest (~90 ns). Only a key that matched an entry goes in, so an unknown key never
    /// grows it, and it lives and dies with this snapshot: a reload starts empty, so a
    /// removed key is not remembered. Copy-on-write, capped at [`VERIFIED_CAP`] keys.
    verified: ArcSwap<HashMap<Box<str>, Arc<KeyEntry>>>,
}

/// Most presented keys remembered per allow-list snapshot. Keys past it are still accepted,
/// each lookup hashing the key as before; the cap bounds both memory and the cost of the
/// copy-on-write insert.
pub const VERIFIED_CAP: usize = 1024;

fn bucket(d: &Digest) -> u64 {
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

impl AllowList {
    /// The entry for a presented key.
    #[inline]
    pub fn lookup(&self, key: &str) -> Option<Arc<KeyEntry>> {
        if key.is_empty() {
            return None;
        }
        if let Some(e) = self.plain.get(key) {
            return Some(Arc::clone(e));
        }
        if self.hashed.is_empty() {
            return None;
        }
        if let Some(e) = self.verified.load().get(key) {
            return Some(Arc::clone(e));
        }
        let entry = Arc::clone(self.lookup_hashed(key)?);
        self.remember(key, &entry);
        Some(entry)
    }

    /// A `sha256:` entry by digest, compared in constant time.
    fn lookup_hashed(&self, key: &str) -> Option<&Arc<KeyEntry>> {
        let d = digest(key);
        let mut found = None;
        for (cand, entry) in self.hashed.get(&bucket(&d))? {
            if ct_eq(cand, &d) {
                found = Some(entry);
            }
        }
        found
    }

    /// Add a key that matched a `sha256:` entry to `verified`. Once it is full nothing is
    /// copied or stored: keys past the cap cost their digest and nothing more.
    #[cold]
    fn remember(&self, key: &str, entry: &Arc<KeyEntry>) {
        if self.verified.load().len() >= VERIFIED_CAP {
            return;
        }
        self.verified.rcu(|map| {
            if map.len() >= VERIFIED_CAP || map.contains_key(key) {
                return Arc::clone(map);
            }
            let mut map = HashMap::clone(map);
            map.insert(key.into(), Arc::clone(entry));
            Arc::new(map)
        });
    }

    /// Presented keys remembered after matching a `sha256:` entry.
    #[cfg(test)]
    fn verified_len(&self) -> usize {
        self.verified.load().len()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// No keys at all.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Every entry, one per allow-list row, in no particular order. For reports
    /// (`id` -> `owner`); never on the hot path.
    pub fn entries(&self) -> impl Iterator<Item = &KeyEntry> {
        let plain = self.plain.values().map(|e| &**e);
        let hashed = self.hashed.values().flatten().map(|(_, e)| &**e);
        plain.chain(hashed)
    }

    /// Change every entry of a list that is being built (no entry shared yet).
    fn for_each_entry_mut(&mut self, mut f: impl FnMut(&mut KeyEntry)) {
        let plain = self.plain.values_mut();
        let hashed = self.hashed.values_mut().flatten().map(|(_, e)| e);
        for e in plain.chain(hashed) {
            f(Arc::get_mut(e).expect("an unpublished list's entries are not shared"));
        }
    }

    /// Give each key with limits its meters from `registry` (the same meters its id and
    /// owner had before a reload). Call before the list is published.
    pub fn attach_meters(&mut self, registry: &Registry) {
        self.for_each_entry_mut(|e| e.meters = registry.meters_for(&e.id, &e.owner, &e.limits));
    }

    /// The meters of every metered key id (for the rebuild at start).
    pub fn meters_by_id(&self) -> HashMap<String, Meters> {
        self.entries()
            .filter_map(|e| Some((e.id.to_string(), e.meters.clone()?)))
            .collect()
    }

    /// (added, removed) key counts going from `self` to `new`.
    pub fn diff(&self, new: &AllowList) -> (usize, usize) {
        let added = new.all.difference(&self.all).count();
        let removed = self.all.difference(&new.all).count();
        (added, removed)
    }
}

/// Why an allow-list was rejected. Never carries a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowListError {
    /// Could not read the file.
    #[error("cannot read: {0}")]
    Io(String),
    /// The header row is missing a column.
    #[error("header row must name the columns id,api_key,owner,added (missing `{0}`)")]
    Header(&'static str),
    /// The header row names a column that looks like a misspelt optional one.
    #[error("header row: unknown column `{0}` (the optional columns are mode, providers, models, limits)")]
    UnknownColumn(String),
    /// A data row is malformed.
    #[error("line {line}: {reason}")]
    Row {
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        reason: String,
    },
}

/// The required columns.
pub const COLUMNS: [&str; 4] = ["id", "api_key", "owner", "added"];
/// The optional columns, in the order `lmgate keys new` writes them.
pub const OPTIONAL_COLUMNS: [&str; 4] = ["mode", "providers", "models", "limits"];

/// A header name that is not a column but looks like a misspelt optional one (`model`,
/// `provider`, `scopes`): refused, or a scope the operator meant would silently not apply.
/// Other unknown columns (`note`) are ignored, as they always were.
fn looks_like_optional_column(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    !OPTIONAL_COLUMNS.contains(&n.as_str())
        && ["mode", "provider", "model", "scope", "limit"]
            .iter()
            .any(|p| n.starts_with(p))
}

/// Parse allow-list CSV bytes. Tolerates a UTF-8 BOM, blank lines and spaces around fields.
pub fn parse_allowlist(bytes: &[u8]) -> Result<AllowList, AllowListError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(bytes);
    let header = rdr
        .headers()
        .map_err(|e| AllowListError::Row {
            line: 1,
            reason: csv_reason(&e),
        })?
        .clone();
    let mut idx = [0usize; 4];
    for (i, col) in COLUMNS.iter().enumerate() {
        idx[i] = header
            .iter()
            .position(|h| h.eq_ignore_ascii_case(col))
            .ok_or(AllowListError::Header(col))?;
    }
    if let Some(odd) = header.iter().find(|h| looks_like_optional_column(h)) {
        return Err(AllowListError::UnknownColumn(odd.escape_debug().to_string()));
    }
    let opt_idx = OPTIONAL_COLUMNS.map(|col| header.iter().position(|h| h.eq_ignore_ascii_case(col)));
    let mut list = AllowList::default();
    let mut first_line: HashMap<Digest, u64> = HashMap::new();
    // Each owner's `owner.*` limits and the line that first stated them.
    let mut owner_limits: HashMap<String, (LimitSet, u64)> = HashMap::new();
    let mut record = csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                return Err(AllowListError::Row {
                    line: e.position().map_or(0, |p| p.line()),
                    reason: csv_reason(&e),
                })
            }
        }
        let line = record.position().map_or(0, |p| p.line());
        if record.len() == 1 && record.get(0) == Some("") {
            continue; // a line of spaces
        }
        if record.len() != header.len() {
            return Err(AllowListError::Row {
                line,
                reason: format!("expected {} fields, found {}", header.len(), record.len()),
            });
        }
        let field = |i: usize| record.get(idx[i]).unwrap_or("");
        for (i, col) in COLUMNS.iter().enumerate() {
            if field(i).is_empty() {
                return Err(AllowListError::Row {
                    line,
                    reason: format!("`{col}` is empty"),
                });
            }
        }
        let optional = |i: usize| opt_idx[i].and_then(|j| record.get(j)).unwrap_or("");
        let column_error = |i: usize, reason: String| AllowListError::Row {
            line,
            reason: format!("`{}`: {reason}", OPTIONAL_COLUMNS[i]),
        };
        let mode = KeyMode::parse(optional(0)).map_err(|r| column_error(0, r))?;
        let scope = Scope {
            providers: scope::parse_providers(optional(1)).map_err(|r| column_error(1, r))?,
            models: scope::parse_models(optional(2)).map_err(|r| column_error(2, r))?,
        };
        let limits = limit_spec::parse_limits(optional(3)).map_err(|r| column_error(3, r))?;
        if !limits.owner.is_empty() {
            match owner_limits.get(field(2)) {
                Some((set, first)) if *set != limits.owner => {
                    return Err(column_error(
                        3,
                        format!(
                            "owner `{}`: its owner.* limits differ from line {first}",
                            field(2).escape_debug()
                        ),
                    ))
                }
                Some(_) => {}
                None => {
                    owner_limits.insert(field(2).to_owned(), (limits.owner, line));
                }
            }
        }
        let key = field(1);
        let entry = Arc::new(KeyEntry {
            id: field(0).into(),
            owner: field(2).to_owned(),
            added: field(3).to_owned(),
            mode,
            scope,
            limits,
            meters: None,
        });
        let d = match key.strip_prefix(HASH_PREFIX) {
            Some(hex) => {
                let d = parse_hex_digest(&hex.to_ascii_lowercase()).ok_or_else(|| AllowListError::Row {
                    line,
                    reason: "a `sha256:` key needs exactly 64 hex digits".into(),
                })?;
                list.hashed
                    .entry(bucket(&d))
                    .or_default()
                    .push((d, Arc::clone(&entry)));
                d
            }
            None => {
                list.plain.insert(key.into(), Arc::clone(&entry));
                digest(key)
            }
        };
        if let Some(prev) = first_line.get(&d) {
            return Err(AllowListError::Row {
                line,
                reason: format!("duplicate api_key (first on line {prev})"),
            });
        }
        first_line.insert(d, line);
        list.all.insert(d);
    }
    if !owner_limits.is_empty() {
        // An owner's limits bind all of its keys, also rows that do not repeat them.
        list.for_each_entry_mut(|e| {
            if let Some((set, _)) = owner_limits.get(&e.owner) {
                e.limits.owner = *set;
            }
        });
    }
    Ok(list)
}

/// A csv error in words that cannot contain field contents.
fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".into(),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("expected {expected_len} fields, found {len}")
        }
        csv::ErrorKind::Io(e) => format!("read error: {e}"),
        _ => "malformed CSV".into(),
    }
}

/// Read and parse an allow-list file.
pub fn load_allowlist(path: &Path) -> Result<AllowList, AllowListError> {
    let bytes = std::fs::read(path).map_err(|e| AllowListError::Io(e.to_string()))?;
    parse_allowlist(&bytes)
}

/// What the proxy reads on every request: one atomic load, no lock.
pub type SharedAllowList = Arc<ArcSwap<AllowList>>;

/// File identity for change detection: an in-place append changes size and mtime, an
/// atomic rename changes the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

pub(crate) fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let m = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    })
}

/// What the last (re)load did; read by `/metrics`.
#[derive(Debug, Default)]
pub struct ReloadStatus {
    /// Keys in the list in use.
    pub keys: AtomicU64,
    /// When the list in use was loaded (Unix milliseconds).
    pub loaded_at_ms: AtomicU64,
    /// The last reload attempt succeeded (1) or was rejected (0).
    pub last_ok: AtomicU64,
    /// Successful reloads since start.
    pub reloads_ok: AtomicU64,
    /// Rejected reloads since start.
    pub reloads_rejected: AtomicU64,
}

impl ReloadStatus {
    /// Status after the initial load of `keys` keys.
    pub fn loaded(keys: usize) -> Self {
        let s = ReloadStatus::default();
        s.record_ok(keys);
        s.reloads_ok.store(0, Ordering::Relaxed);
        s
    }

    fn record_ok(&self, keys: usize) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.keys.store(keys as u64, Ordering::Relaxed);
        self.loaded_at_ms.store(now, Ordering::Relaxed);
        self.last_ok.store(1, Ordering::Relaxed);
        self.reloads_ok.fetch_add(1, Ordering::Relaxed);
    }

    fn record_rejected(&self) {
        self.last_ok.store(0, Ordering::Relaxed);
        self.reloads_rejected.fetch_add(1, Ordering::Relaxed);
    }
}

/// Polls the allow-list file and swaps in each good new version.
pub struct AllowListReloader {
    path: PathBuf,
    interval: Duration,
    list: SharedAllowList,
    status: Arc<ReloadStatus>,
    meters: Arc<Registry>,
}

impl AllowListReloader {
    /// A reloader for `list`, which was loaded from `path` at start.
    pub fn new(
        path: PathBuf,
        interval: Duration,
        list: SharedAllowList,
        status: Arc<ReloadStatus>,
        meters: Arc<Registry>,
    ) -> Self {
        AllowListReloader {
            path,
            interval,
            list,
            status,
            meters,
        }
    }
}

#[async_trait]
impl BackgroundService for AllowListReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // The list in memory was loaded from what the file was at start.
        let mut seen = fingerprint(&self.path);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
            let now = fingerprint(&self.path);
            if now == seen {
                continue;
            }
            seen = now;
            let current = self.list.load();
            match load_allowlist(&self.path) {
                Ok(mut new) => {
                    new.attach_meters(&self.meters);
                    let (added, removed) = current.diff(&new);
                    info!(
                        "allowlist reloaded from {}: {} keys (+{added} -{removed})",
                        self.path.display(),
                        new.len()
                    );
                    self.status.record_ok(new.len());
                    self.list.store(Arc::new(new));
                }
                Err(e) => {
                    self.status.record_rejected();
                    warn!(
                        "allowlist reload of {} rejected, keeping {} keys: {e}",
                        self.path.display(),
                        current.len()
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_bom_spaces_blank_lines_and_any_column_order() {
        let csv = "\u{feff}id, api_key ,owner,added\n\n 1 , sk-test-0001 , alice , 2026-01-01\n\n2,sk-test-0002,bob,2026-01-02\n";
        let l = parse_allowlist(csv.as_bytes()).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(
            l.lookup("sk-test-0001").map(|e| (e.id.clone(), e.owner.clone())),
            Some(("1".into(), "alice".into()))
        );
        assert!(l.lookup("sk-test-0003").is_none());
        assert!(l.lookup("").is_none());
        let csv = "owner,added,api_key,id\nbob,2026,k2,7\n";
        assert_eq!(
            parse_allowlist(csv.as_bytes())
                .unwrap()
                .lookup("k2")
                .unwrap()
                .id
                .as_ref(),
            "7"
        );
    }

    #[test]
    fn rejects_bad_files_without_naming_keys() {
        let bad = |csv: &str| parse_allowlist(csv.as_bytes()).unwrap_err();
        assert_eq!(bad("id,key,owner,added\n"), AllowListError::Header("api_key"));
        let e = bad("id,api_key,owner,added\n1,sk-secret-1,alice\n");
        assert_eq!(
            e,
            AllowListError::Row {
                line: 2,
                reason: "expected 4 fields, found 3".into()
            }
        );
        let e = bad("id,api_key,owner,added\n1,sk-secret-1,,2026\n");
        assert_eq!(
            e,
            AllowListError::Row {
                line: 2,
                reason: "`owner` is empty".into()
            }
        );
        let e = bad("id,api_key,owner,added\n1,sk-secret-1,a,2026\n2,sk-secret-1,b,2026\n");
        assert_eq!(e.to_string(), "line 3: duplicate api_key (first on line 2)");
        assert!(!e.to_string().contains("secret"));
        let e = parse_allowlist(b"id,api_key,owner,added\n1,sk-\xff,a,b\n").unwrap_err();
        assert!(!e.to_string().contains("sk-"), "{e}");
        assert!(matches!(bad(""), AllowListError::Header("id")));
    }

    #[test]
    fn header_only_is_an_empty_list_and_diff_counts() {
        let empty = parse_allowlist(b"id,api_key,owner,added\n").unwrap();
        assert!(empty.is_empty());
        let one = parse_allowlist(b"id,api_key,owner,added\n1,a,o,d\n").unwrap();
        let two = parse_allowlist(b"id,api_key,owner,added\n2,b,o,d\n3,c,o,d\n").unwrap();
        assert_eq!(one.diff(&two), (2, 1));
        assert_eq!(empty.diff(&one), (1, 0));
    }

    #[test]
    fn hashed_and_plain_keys_mix_and_duplicates_across_forms_are_caught() {
        let hashed = hashed_form("sk-live-secret-1");
        assert!(hashed.starts_with("sha256:") && hashed.len() == 71);
        let csv = format!("id,api_key,owner,added\n1,{hashed},a,d\n2,sk-plain-2,b,d\n");
        let l = parse_allowlist(csv.as_bytes()).unwrap();
        assert_eq!(l.lookup("sk-live-secret-1").unwrap().id.as_ref(), "1");
        assert_eq!(l.lookup("sk-plain-2").unwrap().id.as_ref(), "2");
        assert!(l.lookup("sk-live-secret-2").is_none());
        assert!(l.lookup(&hashed).is_none(), "the hash itself is not a key");
        let upper = format!(
            "id,api_key,owner,added\n1,sha256:{},a,d\n",
            hashed[7..].to_uppercase()
        );
        assert!(parse_allowlist(upper.as_bytes())
            .unwrap()
            .lookup("sk-live-secret-1")
            .is_some());
        let dup = format!("id,api_key,owner,added\n1,{hashed},a,d\n2,sk-live-secret-1,b,d\n");
        assert_eq!(
            parse_allowlist(dup.as_bytes()).unwrap_err().to_string(),
            "line 3: duplicate api_key (first on line 2)"
        );
        let bad = "id,api_key,owner,added\n1,sha256:abc,a,d\n";
        assert!(parse_allowlist(bad.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("64 hex"));
        assert!(ct_eq(&digest("a"), &digest("a")) && !ct_eq(&digest("a"), &digest("b")));
    }

    #[test]
    fn matched_hashed_keys_are_remembered_per_snapshot_and_capped() {
        let mut csv = String::from("id,api_key,owner,added\n0,sk-plain,o,d\n");
        for i in 1..=VERIFIED_CAP + 10 {
            csv.push_str(&format!("{i},{},o,d\n", hashed_form(&format!("sk-h-{i}"))));
        }
        let l = parse_allowlist(csv.as_bytes()).unwrap();
        assert_eq!(l.verified_len(), 0);
        // Plaintext keys and unknown keys are never remembered, however often presented.
        for _ in 0..3 {
            assert_eq!(l.lookup("sk-plain").unwrap().id.as_ref(), "0");
            assert!(l.lookup("sk-h-unknown").is_none());
        }
        assert_eq!(l.verified_len(), 0);
        // A matched key is remembered once and then answered from memory, same entry.
        let first = l.lookup("sk-h-7").unwrap();
        assert_eq!((&*first.id, l.verified_len()), ("7", 1));
        let again = l.lookup("sk-h-7").unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(l.verified_len(), 1);
        // Past the cap keys still match, they are just not remembered.
        for i in 1..=VERIFIED_CAP + 10 {
            assert_eq!(l.lookup(&format!("sk-h-{i}")).unwrap().id.as_ref(), i.to_string());
        }
        assert_eq!(l.verified_len(), VERIFIED_CAP);
        // ... and once full, a key past the cap copies nothing.
        let full = l.verified.load_full();
        assert_eq!(l.lookup("sk-h-1034").unwrap().id.as_ref(), "1034");
        assert!(Arc::ptr_eq(&full, &l.verified.load_full()));
        // A reload is a new snapshot: nothing carried over, so a removed key cannot linger.
        let reloaded = parse_allowlist(b"id,api_key,owner,added\n0,sk-plain,o,d\n").unwrap();
        assert_eq!(reloaded.verified_len(), 0);
        assert!(reloaded.lookup("sk-h-7").is_none());
    }

    #[test]
    fn the_seed_four_column_file_loads_as_pass_through_without_scopes() {
        let seed = include_bytes!("../data/allowlist.csv");
        let l = parse_allowlist(seed).unwrap();
        assert_eq!(l.len(), 2);
        let e = l.lookup("sk-lmgate-demo-0000000000000001").unwrap();
        assert_eq!(
            (&*e.id, e.owner.as_str(), e.added.as_str()),
            ("demo-1", "demo-team", "2026-11-23")
        );
        assert_eq!(e.mode, KeyMode::PassThrough);
        assert!(e.scope.is_unrestricted());
    }

    #[test]
    fn optional_columns_give_mode_and_scopes() {
        let hashed = hashed_form("lmg_secret");
        let csv = format!(
            "id,api_key,owner,added,mode,providers,models\n\
             a,{hashed},o,d,gateway,openai anthropic,gpt-4o* claude-*\n\
             b,sk-b,o,d,,,\n\
             c,sk-c,o,d,passthrough,,o1\n\
             d,sk-d,o,d,Gateway,google,\n"
        );
        let l = parse_allowlist(csv.as_bytes()).unwrap();
        let a = l.lookup("lmg_secret").unwrap();
        assert_eq!(a.mode, KeyMode::Gateway);
        assert_eq!(
            a.scope.check_provider("gemini"),
            Some(scope::Denial::Provider("gemini"))
        );
        assert_eq!(a.scope.check_provider("anthropic"), None);
        assert_eq!(a.scope.check_model(Some("gpt-4o-mini")), None);
        let b = l.lookup("sk-b").unwrap();
        assert_eq!(b.mode, KeyMode::PassThrough);
        assert!(b.scope.is_unrestricted());
        let c = l.lookup("sk-c").unwrap();
        assert_eq!(
            (c.mode, c.scope.providers.is_none()),
            (KeyMode::PassThrough, true)
        );
        assert_eq!(c.scope.check_model(Some("o1")), None);
        assert_eq!(l.lookup("sk-d").unwrap().mode, KeyMode::Gateway);
        // Five or six columns, any order: the missing ones are empty.
        let l = parse_allowlist(b"mode,id,api_key,owner,added\ngateway,a,k,o,d\n").unwrap();
        assert_eq!(l.lookup("k").unwrap().mode, KeyMode::Gateway);
        let l = parse_allowlist(b"id,api_key,owner,added,mode,providers\na,k,o,d,,bedrock\n").unwrap();
        assert_eq!(
            l.lookup("k").unwrap().scope.check_provider("openai"),
            Some(scope::Denial::Provider("openai"))
        );
    }

    #[test]
    fn bad_optional_columns_name_line_column_and_reason() {
        let bad = |csv: &str| parse_allowlist(csv.as_bytes()).unwrap_err().to_string();
        let h = "id,api_key,owner,added,mode,providers,models\n";
        assert_eq!(
            bad(&format!("{h}a,sk-secret,o,d,gatway,,\n")),
            "line 2: `mode`: `gatway` is not `passthrough` (or empty) or `gateway`"
        );
        assert_eq!(
            bad(&format!("{h}a,k1,o,d,,,\nb,sk-secret,o,d,,OpenAI,\n")),
            "line 3: `providers`: `OpenAI` is not a provider name (lowercase letters, digits, `_` and `-`)"
        );
        let e = bad(&format!("{h}a,sk-secret,o,d,,,gpt\u{1}x\n"));
        assert!(e.starts_with("line 2: `models`: ") && e.contains("\\u{1}"), "{e}");
        assert!(!e.contains("sk-secret"));
        assert_eq!(
            bad(&format!("{h}a,sk-secret,o,d,,\n")),
            "line 2: expected 7 fields, found 6",
            "rows must match the header"
        );
        assert_eq!(
            bad("id,api_key,owner,added,model\na,k,o,d,x\n"),
            "header row: unknown column `model` (the optional columns are mode, providers, models, limits)"
        );
        assert!(bad("id,api_key,owner,added,Providers_allowed\n").contains("`Providers_allowed`"));
        // An unrelated extra column is ignored, as before.
        let l = parse_allowlist(b"id,api_key,owner,added,note\na,k,o,d,hello\n").unwrap();
        assert!(l.lookup("k").unwrap().scope.is_unrestricted());
    }

    #[test]
    fn garbage_never_panics() {
        for bytes in [
            &b"\x00\x01\x02"[..],
            b"\"unterminated",
            b",,,,\n,,,,",
            b"id,api_key,owner,added\n\"a\"b,c,d,e\n",
        ] {
            let _ = parse_allowlist(bytes);
        }
    }
}
