//! Request ids: unique per request across processes, without a shared counter.
//!
//! `<instance>-<sequence>`: 8 hex digits drawn at start (this process) and 12 hex digits
//! counted per proxy thread (the thread's number in the top 12 bits, so threads never
//! share a cache line or collide). Each record carries its id, and the client gets it in
//! `x-lmgate-request-id`; the prefix also tells a process its own records from another
//! process's in a shared stats file (the spend catch-up after an upgrade).

use std::cell::Cell;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

/// The response header that carries the id.
pub const HEADER: &str = "x-lmgate-request-id";
/// `xxxxxxxx-yyyyyyyyyyyy`.
pub const LEN: usize = 21;

/// One request's id, as ASCII.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId([u8; LEN]);

impl RequestId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only hex digits and `-` are ever written.
        std::str::from_utf8(&self.0).expect("ASCII")
    }

    /// The process part (`xxxxxxxx`).
    pub fn instance(&self) -> &str {
        &self.as_str()[..8]
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(out: &mut [u8], mut n: u64) {
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// This process's instance prefix: 32 random bits (the kernel's generator; the clock and
/// pid when it cannot be read).
pub fn new_instance() -> u32 {
    let mut b = [0u8; 4];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u32::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ (u64::from(std::process::id()) << 20)) as u32
}

/// Numbers proxy threads as they make their first id.
static THREADS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// (thread number << 36, next count) for this thread.
    static SEQUENCE: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
}

/// The next id of this process (`instance`) on this thread.
pub fn next(instance: u32) -> RequestId {
    let seq = SEQUENCE.with(|c| {
        let (thread, n) = c
            .get()
            .unwrap_or_else(|| ((THREADS.fetch_add(1, Ordering::Relaxed) & 0xfff) << 36, 0));
        c.set(Some((thread, n + 1)));
        thread | (n & ((1 << 36) - 1))
    });
    let mut id = [b'-'; LEN];
    hex_into(&mut id[..8], u64::from(instance));
    hex_into(&mut id[9..], seq);
    RequestId(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_across_threads_and_carry_the_instance() {
        let ids: Vec<Vec<RequestId>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..1000).map(|_| next(0xdead_beef)).collect::<Vec<_>>()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for id in ids.iter().flatten() {
            assert_eq!(id.as_str().len(), LEN);
            assert_eq!(id.instance(), "deadbeef");
            assert_eq!(&id.as_str()[8..9], "-");
            assert!(id.as_str().bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
        }
        let unique: std::collections::HashSet<&str> = ids.iter().flatten().map(|i| i.as_str()).collect();
        assert_eq!(unique.len(), 4000);
        assert_eq!(
            serde_json::to_string(&ids[0][0]).unwrap(),
            format!("\"{}\"", ids[0][0].as_str())
        );
        assert_ne!(new_instance(), new_instance());
    }
}
