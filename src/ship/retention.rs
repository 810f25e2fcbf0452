//! Retention of rotated stats files: which to delete ([`decide`], pure) under
//! `stats.retention`. Rotated files beyond `keep_files` (the newest are kept) or rotated
//! more than `keep_days` ago are deleted, oldest first, but never one the shipper has not
//! finished while ClickHouse shipping is on: it waits until it is shipped. The live file
//! is never a candidate.

use crate::config::Retention;

/// A rotated file as the decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// When it was rotated (seconds since the Unix epoch), from its name.
    pub rotated_at: u64,
    /// Whether every line of it is shipped (always true when shipping is off).
    pub shipped: bool,
}

/// Indexes of the files to delete. `files` are the rotated files, oldest first.
pub fn decide(files: &[Rotated], policy: &Retention, now: u64) -> Vec<usize> {
    let beyond_count = policy
        .keep_files
        .map_or(0, |keep| files.len().saturating_sub(keep));
    files
        .iter()
        .enumerate()
        .filter(|(i, f)| {
            let too_old = policy
                .keep_days
                .is_some_and(|days| now.saturating_sub(f.rotated_at) > days * 86_400);
            (*i < beyond_count || too_old) && f.shipped
        })
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn files(ages_days: &[u64], shipped: &[bool], now: u64) -> Vec<Rotated> {
        ages_days
            .iter()
            .zip(shipped)
            .map(|(a, s)| Rotated {
                rotated_at: now - a * DAY,
                shipped: *s,
            })
            .collect()
    }

    #[test]
    fn keep_all_unless_a_limit_is_set() {
        let now = 100 * DAY;
        let f = files(&[50, 40, 1], &[true; 3], now);
        assert!(decide(&f, &Retention::default(), now).is_empty());
    }

    #[test]
    fn the_oldest_go_beyond_keep_files_and_after_keep_days() {
        let now = 100 * DAY;
        let f = files(&[50, 40, 30, 1], &[true; 4], now);
        let count = Retention {
            keep_files: Some(2),
            keep_days: None,
        };
        assert_eq!(decide(&f, &count, now), [0, 1]);
        let days = Retention {
            keep_files: None,
            keep_days: Some(35),
        };
        assert_eq!(decide(&f, &days, now), [0, 1]);
        let both = Retention {
            keep_files: Some(3),
            keep_days: Some(45),
        };
        assert_eq!(decide(&f, &both, now), [0]);
        // Exactly keep_days old is kept.
        let edge = files(&[35], &[true], now);
        assert!(decide(&edge, &days, now).is_empty());
    }

    #[test]
    fn an_unshipped_file_is_kept_until_it_is_shipped() {
        let now = 100 * DAY;
        let policy = Retention {
            keep_files: Some(1),
            keep_days: Some(10),
        };
        let f = files(&[50, 40, 1], &[false, true, false], now);
        assert_eq!(decide(&f, &policy, now), [1]);
        let f = files(&[50, 40, 1], &[true, true, false], now);
        assert_eq!(decide(&f, &policy, now), [0, 1]);
    }
}
