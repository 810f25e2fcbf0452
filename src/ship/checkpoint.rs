//! How far the shipper got: per stats file, its identity (device and inode, and the name
//! it was last seen under) and the byte offset just past the last shipped line. A text
//! file written atomically (temporary file, fsync, rename, fsync of the directory) after
//! every successful insert, so a restart, an upgrade or a crash goes on from there.
//!
//! ```text
//! lmgate-ship-checkpoint 1
//! <dev> <ino> <offset> <name>
//! ```
//!
//! A file is found again by its inode, which survives the rename of a rotation; the name
//! guards against a reused inode: an entry matches when the names agree, or when the entry
//! was the live file (which a rotation renames).

use std::io::Write;
use std::path::Path;

const HEADER: &str = "lmgate-ship-checkpoint 1";

/// One stats file's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file.
    pub ino: u64,
    /// Bytes of the file shipped (always at a line end).
    pub offset: u64,
    /// Its file name when last shipped from.
    pub name: String,
}

/// Every stats file's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// One entry per file.
    pub entries: Vec<Entry>,
}

/// A stats file as listed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId<'a> {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// File name.
    pub name: &'a str,
}

impl Checkpoint {
    /// The text form.
    pub fn encode(&self) -> String {
        let mut out = format!("{HEADER}\n");
        for e in &self.entries {
            out.push_str(&format!("{} {} {} {}\n", e.dev, e.ino, e.offset, e.name));
        }
        out
    }

    /// Parse the text form; the reason names the line.
    pub fn parse(text: &str) -> Result<Checkpoint, String> {
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(format!("first line is not `{HEADER}`"));
        }
        let mut entries = Vec::new();
        for (i, line) in lines.enumerate() {
            let bad = || format!("line {}: not `<dev> <ino> <offset> <name>`", i + 2);
            let mut parts = line.splitn(4, ' ');
            let mut num = || parts.next().and_then(|p| p.parse::<u64>().ok()).ok_or_else(bad);
            let (dev, ino, offset) = (num()?, num()?, num()?);
            let name = parts.next().filter(|n| !n.is_empty()).ok_or_else(bad)?;
            entries.push(Entry {
                dev,
                ino,
                offset,
                name: name.to_owned(),
            });
        }
        Ok(Checkpoint { entries })
    }

    /// How far `file` was shipped (0 when it is new). `live` is the live file's name.
    pub fn offset(&self, file: FileId, live: &str) -> u64 {
        self.find(file, live).map_or(0, |i| self.entries[i].offset)
    }

    fn find(&self, file: FileId, live: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.dev == file.dev && e.ino == file.ino && (e.name == file.name || e.name == live))
    }

    /// Record that `file` is shipped up to `offset`.
    pub fn set(&mut self, file: FileId, live: &str, offset: u64) {
        let entry = Entry {
            dev: file.dev,
            ino: file.ino,
            offset,
            name: file.name.to_owned(),
        };
        match self.find(file, live) {
            Some(i) => self.entries[i] = entry,
            None => self.entries.push(entry),
        }
    }

    /// Forget the files that are gone (their inodes may be reused), keeping the entries of
    /// `present` under their current names.
    pub fn retain(&mut self, present: &[FileId], live: &str) {
        let mut kept = Vec::new();
        for f in present {
            if let Some(i) = self.find(*f, live) {
                let mut e = self.entries.swap_remove(i);
                e.name = f.name.to_owned();
                kept.push(e);
            }
        }
        self.entries = kept;
    }
}

/// Read the checkpoint at `path`; `Ok(None)` when there is none yet.
pub fn load(path: &Path) -> std::io::Result<Option<Result<Checkpoint, String>>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(Checkpoint::parse(&text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replace the checkpoint at `path` atomically and durably.
pub fn save(path: &Path, cp: &Checkpoint) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(cp.encode().as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64, name: &str) -> FileId<'_> {
        FileId { dev: 7, ino, name }
    }

    #[test]
    fn encoding_round_trips_and_bad_text_names_the_line() {
        let mut cp = Checkpoint::default();
        cp.set(id(1, "stats.jsonl.20261202T000000.000Z"), "stats.jsonl", 100);
        cp.set(id(2, "stats.jsonl"), "stats.jsonl", 5);
        let text = cp.encode();
        assert_eq!(
            text,
            "lmgate-ship-checkpoint 1\n7 1 100 stats.jsonl.20261202T000000.000Z\n7 2 5 stats.jsonl\n"
        );
        assert_eq!(Checkpoint::parse(&text), Ok(cp));
        assert_eq!(
            Checkpoint::parse("lmgate-ship-checkpoint 1\n"),
            Ok(Checkpoint::default())
        );
        assert!(Checkpoint::parse("").is_err());
        let e = Checkpoint::parse("lmgate-ship-checkpoint 1\n1 2 x name\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        assert!(Checkpoint::parse("lmgate-ship-checkpoint 1\n1 2 3\n").is_err());
        // A name with spaces is the rest of the line.
        let cp = Checkpoint::parse("lmgate-ship-checkpoint 1\n1 2 3 my stats\n").unwrap();
        assert_eq!(cp.entries[0].name, "my stats");
    }

    #[test]
    fn a_rotated_file_keeps_its_offset_and_a_reused_inode_starts_over() {
        let live = "stats.jsonl";
        let rotated = "stats.jsonl.20261202T000000.000Z";
        let mut cp = Checkpoint::default();
        cp.set(id(1, live), live, 40);
        // Renamed by a rotation: same inode, found again.
        assert_eq!(cp.offset(id(1, rotated), live), 40);
        cp.retain(&[id(1, rotated), id(2, live)], live);
        assert_eq!(cp.entries[0].name, rotated);
        assert_eq!(cp.offset(id(2, live), live), 0, "a new live file starts at 0");
        // The rotated file deleted, its inode reused by a new live file: not the same file.
        cp.retain(&[id(2, live)], live);
        assert!(cp.entries.is_empty());
        cp.set(id(1, rotated), live, 40);
        assert_eq!(cp.offset(id(1, live), live), 0);
        assert_eq!(cp.offset(id(1, "stats.jsonl.20261203T000000.000Z"), live), 0);
    }

    #[test]
    fn saving_replaces_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.jsonl.shipped");
        assert_eq!(load(&path).unwrap(), None);
        let mut cp = Checkpoint::default();
        cp.set(id(3, "stats.jsonl"), "stats.jsonl", 9);
        save(&path, &cp).unwrap();
        cp.set(id(3, "stats.jsonl"), "stats.jsonl", 19);
        save(&path, &cp).unwrap();
        assert_eq!(load(&path).unwrap(), Some(Ok(cp)));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}
