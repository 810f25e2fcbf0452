//! `lmgate keys new|list`: issue a gateway key into the allow-list, and list who holds
//! which key and what it may do (never a key, never a hash).
//!
//! `keys new` prints the new key once and stores only its SHA-256 (`sha256:<hex>`), with
//! mode `gateway` and the scopes given, as one appended row. The file is replaced
//! atomically (temp file in the same directory, fsync, rename), so the running gateway's
//! reloader sees either the old file or the new one; the existing rows keep their bytes.
//! A file without the optional columns gets them: its header gains
//! `,mode,providers,models` (those missing) and each existing row the same number of
//! empty fields at its end, which reads exactly as before (pass-through, no scope).
//!
//! The row format and its parsing are `allowlist.rs`'s; the scope columns' syntax is
//! `scope.rs`'s. This module only edits the file and talks to the operator.

use crate::allowlist::{self, hashed_form, AllowList, AllowListError, KeyMode, COLUMNS, OPTIONAL_COLUMNS};
use crate::config::Config;
use crate::scope::{self, Pattern};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Every gateway key starts with this, so people and secret scanners recognise one.
pub const KEY_PREFIX: &str = "lmg_";

/// Random bytes in a key: 256 bits.
const KEY_RANDOM_BYTES: usize = 32;

/// Base62 digits for 32 bytes: 62^43 > 2^256.
const KEY_DIGITS: usize = 43;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Longest `--id`.
const MAX_ID_CHARS: usize = 64;

/// `lmgate keys ...`
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    /// The allow-list file to use instead of `auth.allowlist_path` from `--config`.
    #[arg(long, value_name = "FILE", global = true)]
    pub allowlist: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// `lmgate keys` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Issue a gateway key: print it once on stdout and append its SHA-256 to the
    /// allow-list (mode `gateway`). The key itself is stored nowhere.
    New(NewArgs),
    /// List ids, owners, modes, scopes and dates; never keys or hashes.
    List,
}

/// `lmgate keys new`.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The key's id (goes into usage records); must not be in the allow-list yet.
    #[arg(long)]
    pub id: String,
    /// Who holds the key (for reports).
    #[arg(long)]
    pub owner: String,
    /// Providers the key may call (space- or comma-separated); all when not given.
    #[arg(long, value_name = "NAME", num_args = 1.., value_delimiter = ',')]
    pub providers: Vec<String>,
    /// Model patterns the key may use (`*` any run, `?` one character); all when not given.
    #[arg(long, value_name = "PATTERN", num_args = 1.., value_delimiter = ',')]
    pub models: Vec<String>,
    /// Rate limits and budgets, as the `limits` column takes them
    /// (`"rpm=60 tpm=100000 usd_per_day=5 owner.usd_per_month=100"`); none when not given.
    #[arg(long, value_name = "LIMITS")]
    pub limits: Option<String>,
}

/// Why `keys new` or `keys list` failed. Never carries a key.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The config could not be loaded (and no `--allowlist` was given).
    #[error("config error: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// Reading, writing or renaming a file failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The allow-list on disk does not load; nothing is appended to a broken file.
    #[error("{}: {source} (fix the file first; nothing was changed)", .path.display())]
    AllowList {
        /// The file.
        path: PathBuf,
        /// Why it does not load.
        source: AllowListError,
    },
    /// An argument is not acceptable.
    #[error("{0}")]
    Argument(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeysError + '_ {
    move |source| KeysError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Run `lmgate keys ...`; `config` is `--config` (used when `--allowlist` is not given).
pub fn run(args: &KeysArgs, config: &Path) -> ExitCode {
    let result = match &args.command {
        KeysCommand::New(new) => issue(new, args.allowlist.as_deref(), config),
        KeysCommand::List => list(args.allowlist.as_deref(), config, &mut std::io::stdout()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lmgate keys: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The allow-list path, and the configured provider names when it came from the config.
fn resolve(allowlist: Option<&Path>, config: &Path) -> Result<(PathBuf, Option<Vec<String>>), KeysError> {
    if let Some(path) = allowlist {
        return Ok((path.to_owned(), None));
    }
    let cfg = Config::load(config, std::env::vars())?;
    let names = cfg.providers.iter().map(|p| p.name.clone()).collect();
    Ok((cfg.auth.allowlist_path, Some(names)))
}

/// `keys new`: check the arguments, make a key, append its row, print it once.
fn issue(args: &NewArgs, allowlist: Option<&Path>, config: &Path) -> Result<(), KeysError> {
    let (path, configured) = resolve(allowlist, config)?;
    let row = NewRow::check(args, configured.as_deref())?;
    let key = new_key().map_err(io_err(Path::new("/dev/urandom")))?;
    let created = append_to_file(&path, &row, &key)?;
    println!("{key}");
    eprintln!(
        "key for {} {} {} as its sha256 only: it is not stored anywhere, copy it now",
        row.id,
        if created {
            "written to new file"
        } else {
            "added to"
        },
        path.display()
    );
    Ok(())
}

/// `keys list`: one line per key, sorted by id.
fn list(allowlist: Option<&Path>, config: &Path, out: &mut dyn Write) -> Result<(), KeysError> {
    let (path, _) = resolve(allowlist, config)?;
    let list = allowlist::load_allowlist(&path).map_err(|source| KeysError::AllowList {
        path: path.clone(),
        source,
    })?;
    write_list(&list, out).map_err(io_err(Path::new("stdout")))
}

fn write_list(list: &AllowList, out: &mut dyn Write) -> std::io::Result<()> {
    let mut entries: Vec<_> = list.entries().collect();
    entries.sort_by(|a, b| (&a.id, &a.added).cmp(&(&b.id, &b.added)));
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            let providers = e.scope.providers.as_ref().map_or("*".to_owned(), |p| p.join(" "));
            let models = e.scope.models.as_ref().map_or("*".to_owned(), |m| {
                m.iter().map(Pattern::as_str).collect::<Vec<_>>().join(" ")
            });
            [
                e.id.to_string(),
                e.owner.clone(),
                e.mode.as_str().to_owned(),
                providers,
                models,
                e.added.clone(),
            ]
        })
        .collect();
    let header = ["ID", "OWNER", "MODE", "PROVIDERS", "MODELS", "ADDED"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.chars().count());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// The checked fields of the row `keys new` appends.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NewRow {
    id: String,
    owner: String,
    added: String,
    /// Space-separated, as the `providers` column holds them.
    providers: String,
    /// Space-separated, as the `models` column holds them.
    models: String,
    /// Space-separated `name=value` items, as the `limits` column holds them.
    limits: String,
}

impl NewRow {
    /// Check the arguments with the allow-list's own rules (and, when known, against the
    /// configured providers); `added` is today (UTC).
    fn check(args: &NewArgs, configured: Option<&[String]>) -> Result<NewRow, KeysError> {
        let bad = |m: String| KeysError::Argument(m);
        let id = args.id.trim();
        if id.is_empty()
            || id.chars().count() > MAX_ID_CHARS
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':'))
        {
            return Err(bad(format!(
                "--id `{}`: use 1 to {MAX_ID_CHARS} letters, digits and - _ . @ :",
                id.escape_debug()
            )));
        }
        let owner = args.owner.trim();
        if owner.is_empty() || owner.chars().any(char::is_control) {
            return Err(bad("--owner must be non-empty text on one line".into()));
        }
        let providers = args.providers.join(" ");
        let parsed = scope::parse_providers(&providers).map_err(|r| bad(format!("--providers: {r}")))?;
        if let (Some(names), Some(configured)) = (&parsed, configured) {
            if let Some(unknown) = names.iter().find(|n| !configured.iter().any(|c| **c == ***n)) {
                return Err(bad(format!(
                    "--providers: `{unknown}` is not a configured provider (configured: {})",
                    configured.join(", ")
                )));
            }
        }
        let models = args.models.join(" ");
        scope::parse_models(&models).map_err(|r| bad(format!("--models: {r}")))?;
        let limits = args.limits.as_deref().unwrap_or("");
        crate::limits::spec::parse_limits(limits).map_err(|r| bad(format!("--limits: {r}")))?;
        let today = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        Ok(NewRow {
            id: id.to_owned(),
            owner: owner.to_owned(),
            added: today[..10].to_owned(),
            providers: parsed.map_or(String::new(), |p| p.join(" ")),
            models: models.split_ascii_whitespace().collect::<Vec<_>>().join(" "),
            limits: limits.split_ascii_whitespace().collect::<Vec<_>>().join(" "),
        })
    }
}

/// A new key: [`KEY_PREFIX`] and 32 bytes from the kernel's CSPRNG in base62.
fn new_key() -> std::io::Result<String> {
    let mut bytes = [0u8; KEY_RANDOM_BYTES];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!("{KEY_PREFIX}{}", base62(&bytes)))
}

/// `bytes` as a big-endian number in [`KEY_DIGITS`] base62 digits (leading zeros kept, so
/// every key has the same length).
fn base62(bytes: &[u8; KEY_RANDOM_BYTES]) -> String {
    let mut n = *bytes;
    let mut digits = [0u8; KEY_DIGITS];
    for slot in digits.iter_mut().rev() {
        let mut rem = 0u32;
        for b in n.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 62) as u8;
            rem = cur % 62;
        }
        *slot = BASE62[rem as usize];
    }
    debug_assert!(n.iter().all(|&b| b == 0), "43 digits hold 256 bits");
    digits.iter().map(|&d| d as char).collect()
}

/// The allow-list bytes with the row for `key` appended (see the module comment). Refuses a
/// file that does not load, and an id already in it. Pure.
fn append_row(existing: &[u8], row: &NewRow, key: &str) -> Result<Vec<u8>, AppendError> {
    let (bom, body) = match existing.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) => (&existing[..3], rest),
        None => (&existing[..0], existing),
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        // A new (or empty) file: a full header and the row.
        let columns: Vec<&str> = COLUMNS.iter().chain(&OPTIONAL_COLUMNS).copied().collect();
        let mut out = bom.to_vec();
        out.extend_from_slice(columns.join(",").as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&csv_row(&columns, row, key, b"\n"));
        return Ok(out);
    }
    let list = allowlist::parse_allowlist(existing).map_err(AppendError::Invalid)?;
    if list.entries().any(|e| *e.id == *row.id) {
        return Err(AppendError::DuplicateId);
    }
    // Record spans: each record starts where csv says; its content ends at the last
    // non-blank byte before the next record (what follows is its line end and blank lines).
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(body);
    let mut starts = Vec::new();
    let mut records = Vec::new();
    let mut record = csv::StringRecord::new();
    while rdr
        .read_record(&mut record)
        .map_err(|_| AppendError::Unreadable)?
    {
        let start = record.position().map_or(0, |p| p.byte()) as usize;
        starts.push(start);
        records.push(record.clone());
    }
    let header = records.first().ok_or(AppendError::Unreadable)?;
    let mut columns: Vec<&str> = header.iter().collect();
    // `limits` joins a file only with a row that has limits: files written before it
    // existed keep their columns.
    let missing: Vec<&str> = OPTIONAL_COLUMNS
        .iter()
        .filter(|c| !header.iter().any(|h| h.eq_ignore_ascii_case(c)))
        .filter(|c| **c != "limits" || !row.limits.is_empty())
        .copied()
        .collect();
    columns.extend(&missing);
    let line_end: &[u8] = match body.iter().position(|&b| b == b'\n') {
        Some(i) if i > 0 && body[i - 1] == b'\r' => b"\r\n",
        _ => b"\n",
    };
    let mut out = bom.to_vec();
    let mut copied = 0;
    for (i, rec) in records.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(body.len());
        let span = &body[starts[i]..end];
        let content = span
            .iter()
            .rposition(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            .map_or(0, |p| p + 1);
        out.extend_from_slice(&body[copied..starts[i] + content]);
        let blank = rec.len() == 1 && rec.get(0) == Some("");
        if i == 0 {
            for col in &missing {
                out.push(b',');
                out.extend_from_slice(col.as_bytes());
            }
        } else if !blank {
            out.extend(std::iter::repeat_n(b',', missing.len()));
        }
        copied = starts[i] + content;
    }
    out.extend_from_slice(&body[copied..]);
    if !out.ends_with(b"\n") {
        out.extend_from_slice(line_end);
    }
    out.extend_from_slice(&csv_row(&columns, row, key, line_end));
    Ok(out)
}

/// One CSV row (quoted where needed) in `columns` order, ending with `line_end`.
fn csv_row(columns: &[&str], row: &NewRow, key: &str, line_end: &[u8]) -> Vec<u8> {
    let hashed = hashed_form(key);
    let fields: Vec<&str> = columns
        .iter()
        .map(|c| match c.to_ascii_lowercase().as_str() {
            "id" => row.id.as_str(),
            "api_key" => hashed.as_str(),
            "owner" => row.owner.as_str(),
            "added" => row.added.as_str(),
            "mode" => KeyMode::Gateway.as_str(),
            "providers" => row.providers.as_str(),
            "models" => row.models.as_str(),
            "limits" => row.limits.as_str(),
            _ => "",
        })
        .collect();
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    // Writing to a Vec cannot fail.
    let _ = w.write_record(&fields);
    let mut bytes = w.into_inner().unwrap_or_default();
    bytes.pop();
    bytes.extend_from_slice(line_end);
    bytes
}

/// Why [`append_row`] refused.
#[derive(Debug, PartialEq, Eq)]
enum AppendError {
    /// The file does not load.
    Invalid(AllowListError),
    /// The id is taken.
    DuplicateId,
    /// The CSV reader failed where the parser had not (cannot happen on a file that loads).
    Unreadable,
}

/// Append the row under an exclusive lock on the file and replace it atomically. Returns
/// whether the file was created.
fn append_to_file(path: &Path, row: &NewRow, key: &str) -> Result<bool, KeysError> {
    // Write next to the real file when the configured path is a symlink, so the rename
    // replaces the file and the link stays.
    let path = match fs::canonicalize(path) {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => path.to_owned(),
        Err(e) => return Err(io_err(path)(e)),
    };
    let locked = lock_current(&path)?;
    let (existing, mode) = match &locked {
        Some(f) => {
            let mut bytes = Vec::new();
            (&*f).read_to_end(&mut bytes).map_err(io_err(&path))?;
            let mode = f.metadata().map_err(io_err(&path))?.permissions().mode();
            (bytes, Some(mode))
        }
        None => (Vec::new(), None),
    };
    let bytes = append_row(&existing, row, key).map_err(|e| match e {
        AppendError::Invalid(source) => KeysError::AllowList {
            path: path.clone(),
            source,
        },
        AppendError::DuplicateId => KeysError::Argument(format!(
            "id `{}` is already in {}; pick another id",
            row.id,
            path.display()
        )),
        AppendError::Unreadable => KeysError::Argument(format!("{}: cannot read it as CSV", path.display())),
    })?;
    // Check the result as the gateway will read it before it replaces anything.
    let check = allowlist::parse_allowlist(&bytes).map_err(|source| KeysError::AllowList {
        path: path.clone(),
        source,
    })?;
    if check.lookup(key).map(|e| (e.id.to_string(), e.mode)) != Some((row.id.clone(), KeyMode::Gateway)) {
        return Err(KeysError::Argument(
            "the new row did not read back as written".into(),
        ));
    }
    replace_atomically(&path, &bytes, mode)?;
    drop(locked);
    Ok(mode.is_none())
}

/// Open and `flock` the allow-list, making sure the lock is on the file the path names now
/// (another `keys new` may have renamed a new file into place while we waited). `None`:
/// there is no file yet.
fn lock_current(path: &Path) -> Result<Option<File>, KeysError> {
    loop {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path)(e)),
        };
        use std::os::fd::AsRawFd;
        // SAFETY: flock(2) on a descriptor we own; no memory is shared.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(path)(std::io::Error::last_os_error()));
        }
        let held = f.metadata().map_err(io_err(path))?;
        match fs::metadata(path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => return Ok(Some(f)),
            _ => continue,
        }
    }
}

/// Write `bytes` to a temp file beside `path` (same permissions), fsync it, rename it over
/// `path`, fsync the directory.
fn replace_atomically(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<(), KeysError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map_or("allowlist".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        if let Some(mode) = mode {
            f.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> NewRow {
        NewRow {
            id: id.into(),
            owner: "alice".into(),
            added: "2026-05-01".into(),
            providers: "openai anthropic".into(),
            models: "gpt-4o*".into(),
            limits: String::new(),
        }
    }

    const KEY: &str = "lmg_0123456789abcdefghijABCDEFGHIJ0123456789x";

    fn append(existing: &str) -> String {
        String::from_utf8(append_row(existing.as_bytes(), &row("team-new"), KEY).unwrap()).unwrap()
    }

    #[test]
    fn keys_are_prefixed_base62_of_fixed_length_and_differ() {
        assert_eq!(base62(&[0; 32]), "0".repeat(43));
        assert_eq!(base62(&[0xff; 32]), "yhjskwdA6OZ1AL1YmHWZWm8LLG7HjnuCA2j5rOw8Xp1");
        let mut one = [0u8; 32];
        one[31] = 61;
        assert!(base62(&one).ends_with("0z"));
        one[31] = 62;
        assert!(base62(&one).ends_with("10"));
        let a = new_key().unwrap();
        let b = new_key().unwrap();
        assert_ne!(a, b);
        for k in [&a, &b] {
            assert!(
                k.starts_with(KEY_PREFIX) && k.len() == KEY_PREFIX.len() + KEY_DIGITS,
                "{k}"
            );
            assert!(k[4..].bytes().all(|c| c.is_ascii_alphanumeric()), "{k}");
        }
    }

    #[test]
    fn a_seven_column_file_gets_one_row_and_keeps_its_bytes() {
        let before = "id,api_key,owner,added,mode,providers,models\n a , sk-x ,o,d, ,,\n";
        let after = append(before);
        assert!(after.starts_with(before), "{after}");
        let new = &after[before.len()..];
        assert_eq!(
            new,
            format!(
                "team-new,{},alice,2026-05-01,gateway,openai anthropic,gpt-4o*\n",
                hashed_form(KEY)
            )
        );
        assert!(!after.contains(KEY), "only the hash is written");
    }

    #[test]
    fn a_four_column_file_gains_the_columns_and_empty_fields_and_reads_the_same() {
        let seed = include_str!("../data/allowlist.csv");
        let after = append(seed);
        let lines: Vec<&str> = after.lines().collect();
        assert_eq!(lines[0], "id,api_key,owner,added,mode,providers,models");
        for (old, new) in seed.lines().skip(1).zip(&lines[1..]) {
            assert_eq!(*new, format!("{old},,,"));
        }
        let l = allowlist::parse_allowlist(after.as_bytes()).unwrap();
        let demo = l.lookup("sk-lmgate-demo-0000000000000001").unwrap();
        assert!(demo.mode == KeyMode::PassThrough && demo.scope.is_unrestricted());
        let new = l.lookup(KEY).unwrap();
        assert_eq!((&*new.id, new.mode), ("team-new", KeyMode::Gateway));
        assert_eq!(
            new.scope.check_provider("gemini"),
            Some(scope::Denial::Provider("gemini"))
        );
    }

    #[test]
    fn odd_but_valid_files_keep_their_quirks() {
        // BOM, CRLF, blank lines, quoted fields with commas and newlines, an extra column,
        // spaces after the last field, no final newline, a column subset in another order.
        let before = "\u{feff}note,ID,api_key,owner,added,mode\r\n\"a, \"\"b\"\"\r\nc\",1,k1,o,d,\r\n\r\n  \r\nx,2,k2,\"o,2\",d,gateway   \r\n\r\ny,3,k3,o,d,";
        let after = append(before);
        let expected_head = "\u{feff}note,ID,api_key,owner,added,mode,providers,models\r\n\"a, \"\"b\"\"\r\nc\",1,k1,o,d,,,\r\n\r\n  \r\nx,2,k2,\"o,2\",d,gateway,,   \r\n\r\ny,3,k3,o,d,,,\r\n";
        assert_eq!(&after[..expected_head.len()], expected_head);
        assert_eq!(
            &after[expected_head.len()..],
            format!(
                ",team-new,{},alice,2026-05-01,gateway,openai anthropic,gpt-4o*\r\n",
                hashed_form(KEY)
            )
        );
        let l = allowlist::parse_allowlist(after.as_bytes()).unwrap();
        assert_eq!(l.lookup("k2").unwrap().owner, "o,2");
        assert_eq!(l.lookup("k2").unwrap().mode, KeyMode::Gateway);
        assert_eq!(l.len(), 4);
    }

    #[test]
    fn a_row_with_limits_adds_the_limits_column() {
        let before = "id,api_key,owner,added,mode,providers,models\na,sk-x,o,d,,,\n";
        let mut r = row("team-new");
        r.limits = "rpm=60 usd_per_day=5".into();
        let after = String::from_utf8(append_row(before.as_bytes(), &r, KEY).unwrap()).unwrap();
        assert!(after.starts_with("id,api_key,owner,added,mode,providers,models,limits\na,sk-x,o,d,,,,\n"));
        let l = allowlist::parse_allowlist(after.as_bytes()).unwrap();
        let new = l.lookup(KEY).unwrap();
        assert_eq!(new.limits.key.get(crate::limits::spec::Kind::Rpm), Some(60));
        assert!(l.lookup("sk-x").unwrap().limits.key.is_empty());
    }

    #[test]
    fn an_empty_or_new_file_gets_a_full_header() {
        for before in ["", "\n \n"] {
            let after = append(before);
            assert!(
                after.starts_with("id,api_key,owner,added,mode,providers,models,limits\nteam-new,sha256:")
            );
            assert_eq!(allowlist::parse_allowlist(after.as_bytes()).unwrap().len(), 1);
        }
    }

    #[test]
    fn a_taken_id_or_a_broken_file_is_refused() {
        let taken = "id,api_key,owner,added\nteam-new,k,o,d\n";
        assert_eq!(
            append_row(taken.as_bytes(), &row("team-new"), KEY),
            Err(AppendError::DuplicateId)
        );
        let broken = "id,api_key,owner,added\nx,k,o\n";
        assert!(matches!(
            append_row(broken.as_bytes(), &row("team-new"), KEY),
            Err(AppendError::Invalid(AllowListError::Row { line: 2, .. }))
        ));
    }

    fn args(id: &str, providers: &[&str], models: &[&str]) -> NewArgs {
        NewArgs {
            id: id.into(),
            owner: " Team A, ops ".into(),
            providers: providers.iter().map(|s| s.to_string()).collect(),
            models: models.iter().map(|s| s.to_string()).collect(),
            limits: None,
        }
    }

    #[test]
    fn arguments_are_checked_with_the_allow_list_rules() {
        let r = NewRow::check(
            &args("team-a", &["openai", "anthropic"], &["gpt-4o*", "o1"]),
            None,
        )
        .unwrap();
        assert_eq!(
            (r.owner.as_str(), r.providers.as_str(), r.models.as_str()),
            ("Team A, ops", "openai anthropic", "gpt-4o* o1")
        );
        assert_eq!(r.added.len(), 10);
        let err = |a: NewArgs, c: Option<&[String]>| NewRow::check(&a, c).unwrap_err().to_string();
        assert!(err(args("a b", &[], &[]), None).contains("--id"));
        assert!(err(args("a,b", &[], &[]), None).contains("--id"));
        assert!(err(args("", &[], &[]), None).contains("--id"));
        assert!(err(args("a", &["OpenAI"], &[]), None).contains("--providers"));
        assert!(err(args("a", &[], &["x\u{1}"]), None).contains("--models"));
        let configured = vec!["openai".to_string(), "google".to_string()];
        let e = err(args("a", &["gemini"], &[]), Some(&configured));
        assert!(
            e.contains("`gemini` is not a configured provider (configured: openai, google)"),
            "{e}"
        );
        assert!(NewRow::check(&args("a", &["google"], &[]), Some(&configured)).is_ok());
    }

    #[test]
    fn the_list_shows_ids_modes_and_scopes_but_no_keys() {
        let csv = format!(
            "id,api_key,owner,added,mode,providers,models\nb,{},bob,2026-02-02,gateway,openai,gpt-4o*\na,sk-plain-secret,alice,2026-01-01,,,\n",
            hashed_form("lmg_x")
        );
        let l = allowlist::parse_allowlist(csv.as_bytes()).unwrap();
        let mut out = Vec::new();
        write_list(&l, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("ID") && lines[0].ends_with("ADDED"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("a ") && lines[1].contains("passthrough") && lines[1].contains("2026-01-01")
        );
        assert!(lines[2].starts_with("b ") && lines[2].contains("gateway") && lines[2].contains("gpt-4o*"));
        assert!(!text.contains("sk-plain") && !text.contains("sha256"), "{text}");
    }

    #[test]
    fn the_file_is_replaced_with_its_permissions_and_a_second_append_sees_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allow.csv");
        fs::write(&path, "id,api_key,owner,added\na,k,o,d\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        // Held open, so its inode number cannot be reused by the new file.
        let old = File::open(&path).unwrap();
        let before = old.metadata().unwrap().ino();
        assert!(!append_to_file(&path, &row("n1"), "lmg_one").unwrap());
        assert!(!append_to_file(&path, &row("n2"), "lmg_two").unwrap());
        let meta = fs::metadata(&path).unwrap();
        assert_ne!(meta.ino(), before, "renamed into place");
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        let l = allowlist::load_allowlist(&path).unwrap();
        assert_eq!(
            (
                l.lookup("lmg_one").unwrap().id.as_ref(),
                l.lookup("lmg_two").unwrap().id.as_ref()
            ),
            ("n1", "n2")
        );
        assert!(
            matches!(append_to_file(&path, &row("n1"), "lmg_three"), Err(KeysError::Argument(m)) if m.contains("already"))
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temp file left: {names:?}");
        // A link to the file stays a link.
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        append_to_file(&link, &row("n3"), "lmg_four").unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert!(allowlist::load_allowlist(&link)
            .unwrap()
            .lookup("lmg_four")
            .is_some());
        // No file yet: created.
        let fresh = dir.path().join("fresh.csv");
        assert!(append_to_file(&fresh, &row("n1"), "lmg_five").unwrap());
    }
}
