//! A function's persistent key-value state, as the function sees it.
//!
//! The whole state of a function lives in memory ([`StateCache`]) and in the
//! `function_state` table of the registry database. Reads never touch SQLite.
//! Writes go to memory at once and are written to SQLite in one transaction
//! per flush (`functions.state_commit_interval_ms`, and on shutdown), never
//! one commit per event: that interval is the crash-loss window of state.
//!
//! An invocation is all-or-nothing for state: the cache keeps an undo log of
//! the current invocation, so a trap (after which the function's memory may
//! be half-updated) also takes back the state writes it made.
//!
//! Bounds (host-side, so one function cannot fill the disk): keys of at most
//! [`MAX_KEY_BYTES`], values of at most [`MAX_VALUE_BYTES`], at most
//! [`MAX_TOTAL_BYTES`] of keys and values together per function. A write
//! past the total gets `FULL`.

use std::collections::{HashMap, HashSet};

/// Longest key (ABI: keys ≤ 256 bytes).
pub const MAX_KEY_BYTES: usize = 256;
/// Longest value (ABI: values ≤ 64 KiB).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most bytes of keys and values one function may keep.
pub const MAX_TOTAL_BYTES: usize = 1024 * 1024;

/// Why a state write was refused; maps to an ABI error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("key longer than {MAX_KEY_BYTES} bytes or value longer than {MAX_VALUE_BYTES} bytes")]
    TooLong,
    #[error("the function's state would exceed {MAX_TOTAL_BYTES} bytes")]
    Full,
    #[error("no such key")]
    NotFound,
}

/// A function's state in memory, with what changed since the last flush.
#[derive(Debug, Default)]
pub struct StateCache {
    entries: HashMap<Vec<u8>, Vec<u8>>,
    total_bytes: usize,
    /// Keys changed since the last flush (their current value, or absence, is
    /// what the flush writes).
    dirty: HashSet<Vec<u8>>,
    /// Previous values of the keys the current invocation changed, oldest
    /// first; replayed backwards on rollback.
    undo: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl StateCache {
    /// A cache holding what was persisted.
    pub fn from_rows(rows: Vec<(Vec<u8>, Vec<u8>)>) -> StateCache {
        let mut cache = StateCache::default();
        for (k, v) in rows {
            cache.total_bytes += k.len() + v.len();
            cache.entries.insert(k, v);
        }
        cache
    }

    /// A copy of the current entries with nothing to flush: what a canary's
    /// `perch_init` or a shadow version runs on (its writes are never
    /// saved).
    pub fn snapshot(&self) -> StateCache {
        StateCache {
            entries: self.entries.clone(),
            total_bytes: self.total_bytes,
            ..StateCache::default()
        }
    }

    /// Every entry, in no particular order (for snapshots and takeovers).
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Replaces every entry with `other`'s, as a flush will write it: each
    /// key of either is marked changed, so the next flush stores exactly
    /// `other` (a restored or rebuilt state).
    pub fn replace_with(&mut self, other: StateCache) {
        let old = std::mem::take(&mut self.entries);
        for key in old.into_keys().chain(other.entries.keys().cloned()) {
            self.dirty.insert(key);
        }
        self.entries = other.entries;
        self.total_bytes = other.total_bytes;
        self.undo.clear();
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    pub fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        if key.len() > MAX_KEY_BYTES || value.len() > MAX_VALUE_BYTES {
            return Err(StateError::TooLong);
        }
        let old_len = self.entries.get(key).map(|v| key.len() + v.len());
        let new_total = self.total_bytes - old_len.unwrap_or(0) + key.len() + value.len();
        if new_total > MAX_TOTAL_BYTES {
            return Err(StateError::Full);
        }
        self.total_bytes = new_total;
        // Reuse the stored allocation when the key exists.
        let previous = match self.entries.get_mut(key) {
            Some(stored) => {
                let previous = std::mem::replace(stored, value.to_vec());
                Some(previous)
            }
            None => {
                self.entries.insert(key.to_vec(), value.to_vec());
                None
            }
        };
        self.undo.push((key.to_vec(), previous));
        self.mark_dirty(key);
        Ok(())
    }

    pub fn delete(&mut self, key: &[u8]) -> Result<(), StateError> {
        let Some(previous) = self.entries.remove(key) else {
            return Err(StateError::NotFound);
        };
        self.total_bytes -= key.len() + previous.len();
        self.undo.push((key.to_vec(), Some(previous)));
        self.mark_dirty(key);
        Ok(())
    }

    fn mark_dirty(&mut self, key: &[u8]) {
        if !self.dirty.contains(key) {
            self.dirty.insert(key.to_vec());
        }
    }

    /// Makes the current invocation's writes final.
    pub fn commit(&mut self) {
        self.undo.clear();
    }

    /// Takes back the current invocation's writes.
    pub fn rollback(&mut self) {
        while let Some((key, previous)) = self.undo.pop() {
            if let Some(now) = self.entries.get(&key) {
                self.total_bytes -= key.len() + now.len();
            }
            match previous {
                Some(v) => {
                    self.total_bytes += key.len() + v.len();
                    self.entries.insert(key, v);
                }
                None => {
                    self.entries.remove(&key);
                }
            }
        }
        // A key changed and restored stays dirty; writing its (old) value
        // again is harmless.
    }

    /// Whether there is anything to flush.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The changes since the last flush: `(key, Some(value))` to store,
    /// `(key, None)` to delete. Call [`StateCache::flushed`] once written.
    pub fn changes(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.dirty
            .iter()
            .map(|k| (k.as_slice(), self.entries.get(k).map(Vec::as_slice)))
    }

    /// Forgets the changes after they were written.
    pub fn flushed(&mut self) {
        self.dirty.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_restores_values_sizes_and_absence() {
        let mut s = StateCache::from_rows(vec![(b"a".to_vec(), b"1".to_vec())]);
        s.set(b"a", b"22").unwrap();
        s.set(b"b", b"3").unwrap();
        s.delete(b"a").unwrap();
        s.rollback();
        assert_eq!(s.get(b"a"), Some(&b"1"[..]));
        assert_eq!(s.get(b"b"), None);
        assert_eq!(s.total_bytes, 2);
    }

    #[test]
    fn committed_writes_are_reported_as_changes_once() {
        let mut s = StateCache::default();
        s.set(b"k", b"v").unwrap();
        s.set(b"k", b"w").unwrap();
        s.set(b"gone", b"x").unwrap();
        s.delete(b"gone").unwrap();
        s.commit();
        let mut changes: Vec<_> = s
            .changes()
            .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
            .collect();
        changes.sort();
        assert_eq!(
            changes,
            vec![
                (b"gone".to_vec(), None),
                (b"k".to_vec(), Some(b"w".to_vec()))
            ]
        );
        s.flushed();
        assert!(!s.is_dirty());
    }

    #[test]
    fn bounds_are_enforced() {
        let mut s = StateCache::default();
        assert_eq!(s.set(&[0; 257], b"v"), Err(StateError::TooLong));
        assert_eq!(
            s.set(b"k", &vec![0; MAX_VALUE_BYTES + 1]),
            Err(StateError::TooLong)
        );
        for i in 0..15u8 {
            s.set(&[i], &vec![0; MAX_VALUE_BYTES]).unwrap();
        }
        assert_eq!(
            s.set(b"more", &vec![0; MAX_VALUE_BYTES]),
            Err(StateError::Full)
        );
        assert_eq!(s.delete(b"absent"), Err(StateError::NotFound));
    }

    #[test]
    fn a_replaced_state_is_flushed_whole_deleted_keys_included() {
        let mut s = StateCache::from_rows(vec![
            (b"gone".to_vec(), b"1".to_vec()),
            (b"kept".to_vec(), b"2".to_vec()),
        ]);
        let other = StateCache::from_rows(vec![
            (b"kept".to_vec(), b"3".to_vec()),
            (b"new".to_vec(), b"4".to_vec()),
        ]);
        s.replace_with(other);
        let mut changes: Vec<_> = s
            .changes()
            .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
            .collect();
        changes.sort();
        assert_eq!(
            changes,
            vec![
                (b"gone".to_vec(), None),
                (b"kept".to_vec(), Some(b"3".to_vec())),
                (b"new".to_vec(), Some(b"4".to_vec())),
            ]
        );
        assert_eq!(s.total_bytes, 9);
    }
}
