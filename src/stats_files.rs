//! The stats files as a sequence of records on disk: which files there are (the live file
//! and its rotated siblings, oldest first), when a rotated one was rotated, and their
//! complete lines. Shared by the readers of the files (the spend rebuild at start, the
//! ClickHouse shipper); writing and rotating them is `stats.rs`'s, naming them in reports
//! `report/files.rs`'s.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The stats files, rotated oldest first, then the live file. No directory or no file yet
/// (a first start: the writer creates them) is an empty list.
pub fn list(live: &Path) -> std::io::Result<Vec<PathBuf>> {
    let dir = match live.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    match crate::report::stats_file_list(live) {
        Ok(files) => Ok(files),
        Err(_) if !live.exists() => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// When `file` (named `<live>.YYYYMMDDTHHMMSS.mmmZ[.N]`, see `stats::rotated_name`) was
/// rotated, in seconds since the Unix epoch; `None` for the live file or another name.
pub fn rotated_at(live: &Path, file: &Path) -> Option<u64> {
    let live = live.file_name()?.to_str()?;
    let name = file.file_name()?.to_str()?;
    let stamp = name.strip_prefix(live)?.strip_prefix('.')?.get(..15)?;
    let (date, time) = stamp.split_once('T')?;
    let text = format!(
        "{}-{}-{}T{}:{}:{}Z",
        date.get(..4)?,
        date.get(4..6)?,
        date.get(6..8)?,
        time.get(..2)?,
        time.get(2..4)?,
        time.get(4..6)?
    );
    let t = humantime::parse_rfc3339(&text).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs())
}

/// Read `r` to its end in reads of `chunk` bytes and call `each` with every complete line
/// (without its `\n`). An unfinished last line stays in `carry` (a writer may be appending
/// it; the next call goes on with it) unless `last` says no more will come, then it is a
/// line too. Returns the bytes read.
pub fn for_each_line(
    r: &mut impl Read,
    chunk: usize,
    carry: &mut Vec<u8>,
    last: bool,
    mut each: impl FnMut(&[u8]),
) -> std::io::Result<u64> {
    let mut buf = Vec::with_capacity(chunk);
    let mut total = 0;
    loop {
        buf.clear();
        let n = r.by_ref().take(chunk as u64).read_to_end(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', &buf) {
            if carry.is_empty() {
                each(&buf[start..end]);
            } else {
                carry.extend_from_slice(&buf[start..end]);
                let whole = std::mem::take(carry);
                each(&whole);
            }
            start = end + 1;
        }
        carry.extend_from_slice(&buf[start..]);
    }
    if last && !carry.is_empty() {
        let whole = std::mem::take(carry);
        each(&whole);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_anywhere_come_out_whole_and_a_half_line_waits() {
        let text = b"one\ntwo\n\nthree";
        for chunk in 1..=text.len() {
            let mut seen = Vec::new();
            let mut carry = Vec::new();
            let n = for_each_line(&mut &text[..], chunk, &mut carry, false, |l| {
                seen.push(l.to_vec())
            })
            .unwrap();
            assert_eq!(n, text.len() as u64);
            assert_eq!(seen, [&b"one"[..], b"two", b""], "chunk {chunk}");
            assert_eq!(carry, b"three");
            for_each_line(&mut &b""[..], chunk, &mut carry, true, |l| seen.push(l.to_vec())).unwrap();
            assert_eq!(seen.last().unwrap(), b"three");
        }
    }

    #[test]
    fn rotation_stamps_read_as_unix_seconds() {
        let live = Path::new("/d/stats.jsonl");
        let at = |n: &str| rotated_at(live, &live.with_file_name(n));
        assert_eq!(at("stats.jsonl.19700102T000001.000Z"), Some(86_401));
        assert_eq!(at("stats.jsonl.20261202T110000.500Z.3"), Some(1_796_209_200));
        assert_eq!(at("stats.jsonl"), None);
        assert_eq!(at("stats.jsonl.shipped"), None);
        assert_eq!(at("stats.jsonl.2026120T110000.500Z"), None);
    }
}
