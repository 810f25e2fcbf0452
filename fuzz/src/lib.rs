//! Input layouts shared by the fuzz targets in `fuzz_targets/`.
//!
//! The stream targets read their input as a small header followed by the body, so that
//! the fuzzer chooses the chunk boundaries and the per-event cap along with the bytes:
//!
//! ```text
//! [flags: u8] [cut: u16 LE] * n [body ...]
//! flags bits 0-2: n, the number of cut points (0..=7)
//!       bits 3-5: index into CAPS
//!       bits 6-7: the target's own (see each target)
//! ```
//!
//! Each cut is taken modulo `body.len() + 1`; cuts are sorted and may repeat, so a chunk
//! may be empty. `fuzz/make-seeds.py` writes seeds in this layout.

use std::sync::OnceLock;

/// Per-event caps a stream target chooses from. 1024 is the smallest
/// `stats.capture_limit_bytes` the config accepts and 2 MiB the default; the smaller ones
/// reach the over-limit paths with short inputs.
pub const CAPS: [usize; 8] = [1, 16, 64, 256, 1024, 4096, 65_536, 2 * 1024 * 1024];

/// Most cut points one input can ask for.
pub const MAX_CUTS: usize = 7;

/// A stream target's input, decoded.
#[derive(Debug)]
pub struct Split<'a> {
    /// The cap for one event / element / message.
    pub cap: usize,
    /// Bits 6-7 of the flags byte, shifted down (0..=3).
    pub extra: u8,
    /// The bytes to feed.
    pub body: &'a [u8],
    cuts: [usize; MAX_CUTS],
    n: usize,
}

impl<'a> Split<'a> {
    /// Decode the header; `None` when the input is too short to hold it.
    pub fn parse(data: &'a [u8]) -> Option<Split<'a>> {
        let (&flags, rest) = data.split_first()?;
        let n = usize::from(flags & 7);
        let cap = CAPS[usize::from((flags >> 3) & 7)];
        if rest.len() < 2 * n {
            return None;
        }
        let (cut_bytes, body) = rest.split_at(2 * n);
        let mut cuts = [0usize; MAX_CUTS];
        for (slot, c) in cuts.iter_mut().zip(cut_bytes.chunks_exact(2)) {
            *slot = usize::from(u16::from_le_bytes([c[0], c[1]])) % (body.len() + 1);
        }
        cuts[..n].sort_unstable();
        Some(Split {
            cap,
            extra: flags >> 6,
            body,
            cuts,
            n,
        })
    }

    /// The cut points, ascending.
    pub fn cuts(&self) -> &[usize] {
        &self.cuts[..self.n]
    }

    /// `body` cut at the chosen points, in order (`n + 1` chunks, maybe empty ones).
    pub fn chunks(&self) -> Vec<&'a [u8]> {
        chunks_of(self.body, self.cuts())
    }
}

/// `body` cut at ascending `cuts` (each at most `body.len()`).
pub fn chunks_of<'b>(body: &'b [u8], cuts: &[usize]) -> Vec<&'b [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for &c in cuts {
        out.push(&body[from..c]);
        from = c;
    }
    out.push(&body[from..]);
    out
}

/// `LMGATE_FUZZ_DEBUG=1`: targets print what they decoded (for `cargo fuzz run T file`).
pub fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("LMGATE_FUZZ_DEBUG").is_some_and(|v| v != "0"))
}

/// Rewrite the prelude and message CRCs of every whole AWS event-stream frame in `body`,
/// front to back, so that mutated headers and payloads reach the decoder behind the CRC
/// checks. Stops at the first frame whose length does not fit.
pub fn fix_eventstream_crcs(body: &mut [u8]) {
    let mut off = 0;
    while body.len() - off >= 12 {
        let b = &mut body[off..];
        let prelude = crc32fast::hash(&b[..8]);
        b[8..12].copy_from_slice(&prelude.to_be_bytes());
        let total = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if total < 16 || total > b.len() {
            return;
        }
        let crc = crc32fast::hash(&b[..total - 4]);
        b[total - 4..total].copy_from_slice(&crc.to_be_bytes());
        off += total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_chunks() {
        let mut data = vec![2 | (4 << 3) | (1 << 6)];
        data.extend_from_slice(&5u16.to_le_bytes());
        data.extend_from_slice(&2u16.to_le_bytes());
        data.extend_from_slice(b"abcdefg");
        let s = Split::parse(&data).unwrap();
        assert_eq!((s.cap, s.extra, s.body), (1024, 1, &b"abcdefg"[..]));
        assert_eq!(s.chunks(), [&b"ab"[..], b"cde", b"fg"]);
        assert!(Split::parse(&[3, 0]).is_none());
        assert_eq!(Split::parse(&[0]).unwrap().chunks(), [&b""[..]]);
    }
}
