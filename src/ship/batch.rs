//! Batches of record lines for one insert (pure: bytes in, bytes out).
//!
//! A batch holds complete lines of one stats file from the checkpoint's offset on, as the
//! file has them, each ending in `\n`, up to `batch_rows` rows or `batch_bytes` bytes (a
//! single longer line goes alone). A line without a `request_id` (written before records
//! had one) gets `"request_id":"legacy-<inode>-<offset>"`: the file's inode and the line's
//! byte offset, the same every time the line is read, so a re-sent legacy row replaces
//! itself in the table like any other. Blank lines are skipped.

use std::ops::Range;

/// When a batch is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rows at most.
    pub rows: usize,
    /// Bytes at most (unless one line is longer).
    pub bytes: usize,
}

/// Lines ready to insert, and where in their file they end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    body: Vec<u8>,
    /// End of each line in `body` (after its `\n`).
    ends: Vec<usize>,
    /// File offset just past the last line taken (blank lines included).
    pub file_end: u64,
}

/// How the record line spells a request id.
const ID_KEY: &[u8] = b"\"request_id\":";

impl Batch {
    /// An empty batch starting at `offset` of its file.
    pub fn at(offset: u64) -> Batch {
        Batch {
            file_end: offset,
            ..Batch::default()
        }
    }

    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.ends.len()
    }

    /// Bytes in the batch.
    pub fn bytes(&self) -> usize {
        self.body.len()
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Whether the batch can take no more lines.
    pub fn is_full(&self, limits: Limits) -> bool {
        self.rows() >= limits.rows || self.bytes() >= limits.bytes
    }

    /// Offer `line` (without its `\n`; `len_in_file` counts the bytes it takes in the file,
    /// the `\n` included) of the file with inode `ino`. `false`: the batch is full and the
    /// line was not taken.
    pub fn offer(&mut self, line: &[u8], len_in_file: u64, ino: u64, limits: Limits) -> bool {
        if self.is_full(limits) || (!self.is_empty() && self.bytes() + line.len() + 1 > limits.bytes) {
            return false;
        }
        let at = self.file_end;
        self.file_end += len_in_file;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return true;
        }
        with_request_id(line, ino, at, &mut self.body);
        self.ends.push(self.body.len());
        true
    }

    /// The lines `rows` (indexes) as one insert body.
    pub fn body(&self, rows: Range<usize>) -> &[u8] {
        let start = if rows.start == 0 {
            0
        } else {
            self.ends[rows.start - 1]
        };
        let end = if rows.end == 0 { 0 } else { self.ends[rows.end - 1] };
        &self.body[start..end]
    }
}

/// Append `line` and `\n` to `out`, with a legacy request id added when it has none.
pub fn with_request_id(line: &[u8], ino: u64, offset: u64, out: &mut Vec<u8>) {
    // The writer puts `request_id` last: look in the line's tail first, then everywhere.
    let tail = &line[line.len().saturating_sub(64)..];
    let has_id = memchr::memmem::find(tail, ID_KEY).is_some() || memchr::memmem::find(line, ID_KEY).is_some();
    match line.iter().rposition(|b| *b == b'}') {
        Some(close) if !has_id => {
            let body = &line[..close];
            out.extend_from_slice(body);
            let empty = body.iter().rev().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
            if !empty {
                out.push(b',');
            }
            out.extend_from_slice(format!("\"request_id\":\"legacy-{ino}-{offset}\"").as_bytes());
            out.extend_from_slice(&line[close..]);
        }
        // Not an object (the server will refuse it), or an id already: as it is.
        _ => out.extend_from_slice(line),
    }
    out.push(b'\n');
}

/// The halves a refused insert of `rows` is retried as, to find the refused line(s).
pub fn halves(rows: Range<usize>) -> [Range<usize>; 2] {
    let mid = rows.start + (rows.end - rows.start) / 2;
    [rows.start..mid, mid..rows.end]
}

/// The record timestamp at the start of a line (`{"timestamp":"<RFC 3339>"`), in seconds
/// since the Unix epoch.
pub fn line_time(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"timestamp\":\"")?;
    let end = memchr::memchr(b'"', rest)?;
    let text = std::str::from_utf8(&rest[..end]).ok()?;
    let t = humantime::parse_rfc3339_weak(text).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits { rows: 3, bytes: 100 };

    fn fill(lines: &[&str], limits: Limits) -> (Batch, usize) {
        let mut b = Batch::at(1000);
        let mut taken = 0;
        for l in lines {
            if !b.offer(l.as_bytes(), l.len() as u64 + 1, 9, limits) {
                break;
            }
            taken += 1;
        }
        (b, taken)
    }

    #[test]
    fn batches_stop_at_rows_or_bytes_and_track_the_file_offset() {
        let line = r#"{"a":1,"request_id":"x"}"#; // 24 bytes
        let (b, taken) = fill(&[line; 5], L);
        assert_eq!((taken, b.rows(), b.file_end), (3, 3, 1000 + 75));
        assert_eq!(b.body(0..3), format!("{line}\n{line}\n{line}\n").as_bytes());
        assert_eq!(b.body(1..2), format!("{line}\n").as_bytes());
        let (b, taken) = fill(&[line; 5], Limits { rows: 10, bytes: 60 });
        assert_eq!((taken, b.bytes()), (2, 50));
        // A line longer than the byte limit goes alone.
        let long = format!(r#"{{"a":"{}","request_id":"x"}}"#, "z".repeat(200));
        let (b, taken) = fill(&[&long, line], L);
        assert_eq!((taken, b.rows()), (1, 1));
        assert!(b.is_full(L));
        // Blank lines and a CR are taken but not sent.
        let (b, taken) = fill(&["", "  ", &format!("{line}\r")], L);
        assert_eq!((taken, b.rows(), b.file_end), (3, 1, 1000 + 1 + 3 + 26));
        assert_eq!(b.body(0..1), format!("{line}\n").as_bytes());
        assert!(Batch::at(5).is_empty());
    }

    #[test]
    fn a_line_without_request_id_gets_a_deterministic_legacy_id() {
        let mut out = Vec::new();
        with_request_id(br#"{"timestamp":"t","status":200}"#, 42, 7, &mut out);
        assert_eq!(
            out,
            br#"{"timestamp":"t","status":200,"request_id":"legacy-42-7"}"#
                .to_vec()
                .into_iter()
                .chain(*b"\n")
                .collect::<Vec<_>>()
        );
        let mut again = Vec::new();
        with_request_id(br#"{"timestamp":"t","status":200}"#, 42, 7, &mut again);
        assert_eq!(out, again);
        for (line, want) in [
            (
                &br#"{"a":1,"request_id":"r"}"#[..],
                &br#"{"a":1,"request_id":"r"}"#[..],
            ),
            (b"{}", br#"{"request_id":"legacy-42-7"}"#),
            (b"{ } ", br#"{ "request_id":"legacy-42-7"} "#),
            (b"not json", b"not json"),
        ] {
            let mut out = Vec::new();
            with_request_id(line, 42, 7, &mut out);
            assert_eq!(
                out.strip_suffix(b"\n").unwrap(),
                want,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn halves_cover_the_rows_once() {
        assert_eq!(halves(0..5), [0..2, 2..5]);
        assert_eq!(halves(3..5), [3..4, 4..5]);
        assert_eq!(halves(3..4), [3..3, 3..4]);
    }

    #[test]
    fn the_age_of_a_line_comes_from_its_timestamp() {
        assert_eq!(
            line_time(br#"{"timestamp":"1970-01-01T00:01:40.123Z","x":1}"#),
            Some(100)
        );
        assert_eq!(line_time(br#"{"x":1}"#), None);
        assert_eq!(line_time(br#"{"timestamp":"soon"}"#), None);
    }
}
