//! `[buffer]`: the store-and-forward outbox's durability, bounds and policy.

use serde::Deserialize;

use crate::kit::Problem;

/// `[buffer]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Longest a record waits in memory before its transaction commits. This
    /// is the crash-loss window: a power cut loses at most the records
    /// accepted in the last `commit_interval_ms`.
    pub commit_interval_ms: u64,
    /// Longest a record that a client waits on waits for its transaction:
    /// a QoS 1/2 message on `upstream.forward_topics`, whose PUBACK (PUBREC)
    /// the broker holds until the record is committed. Such records commit
    /// together (group commit); 0 commits as soon as the writer is free,
    /// which still groups what arrives during the commit before.
    pub ack_commit_interval_ms: u64,
    /// Records per transaction at most; a full batch commits at once.
    pub commit_batch: usize,
    /// SQLite `synchronous` setting: `full` (default: a commit survives power
    /// loss, each commit waits for the disk) or `normal` (WAL: a commit
    /// survives a crash of perch, but the commits since the last WAL sync
    /// may be lost on power loss).
    pub synchronous: Synchronous,
    /// Most bytes of records kept (payload and stream name). At the bound
    /// `when_full` applies.
    pub max_bytes: u64,
    /// Records older than this are deleted and counted as expired.
    pub max_age_s: u64,
    /// Free space the buffer leaves on the data directory's file system.
    /// Below it the buffer is full whatever `max_bytes` says: it keeps its
    /// current size, `when_full` applies, and what that drops is counted.
    /// Acknowledged records are still deleted, so the space they held is
    /// used again once upstream drains the backlog.
    pub min_free_bytes: u64,
    /// What to do when full (at `max_bytes`, or at `min_free_bytes`).
    pub when_full: WhenFull,
    /// Records accepted but not yet committed, at most; beyond it new records
    /// are refused and counted (protects memory when the disk stalls).
    pub max_pending_records: usize,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            commit_interval_ms: 50,
            ack_commit_interval_ms: 2,
            commit_batch: 1_000,
            synchronous: Synchronous::Full,
            max_bytes: 64 * 1024 * 1024,
            max_age_s: 7 * 24 * 3600,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            when_full: WhenFull::DropOldest,
            max_pending_records: 50_000,
        }
    }
}

/// `buffer.min_free_bytes` by default: 16 MiB, a few seconds of a busy
/// gateway's records and room for the other databases' commits and logs.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 16 * 1024 * 1024;

/// The smallest `buffer.min_free_bytes`: the WAL's working space
/// ([`super::store::WAL_KEEP_BYTES`]) plus a batch; below it the reserve
/// could not hold one commit of acknowledged deletes.
pub const SMALLEST_MIN_FREE_BYTES: u64 = 1024 * 1024;

pub use crate::kit::sqlite::Synchronous;

/// The policy at `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Delete the oldest records to make room.
    DropOldest,
    /// Refuse new records until upstream has drained some.
    DropNewest,
    /// Replace the oldest raw records by one summary per stream (count, time
    /// range, min/max/mean of each numeric JSON field) before dropping
    /// anything; if summaries alone still exceed the bound, drop the oldest.
    Degrade,
}

impl BufferConfig {
    pub(crate) fn validate(&self, problems: &mut Vec<Problem>) {
        for (key, value) in [
            ("buffer.commit_interval_ms", self.commit_interval_ms),
            ("buffer.commit_batch", self.commit_batch as u64),
            ("buffer.max_age_s", self.max_age_s),
            (
                "buffer.max_pending_records",
                self.max_pending_records as u64,
            ),
        ] {
            if value == 0 {
                problems.push(Problem::new(key, "must be greater than 0"));
            }
        }
        if self.min_free_bytes < SMALLEST_MIN_FREE_BYTES {
            problems.push(Problem::new(
                "buffer.min_free_bytes",
                format!(
                    "must be at least {SMALLEST_MIN_FREE_BYTES} (1 MiB): the buffer needs that much \
                     free disk to delete acknowledged records and recover once upstream \
                     drains; the default is {DEFAULT_MIN_FREE_BYTES} (16 MiB)"
                ),
            ));
        }
        if self.max_bytes < 64 * 1024 {
            problems.push(Problem::new(
                "buffer.max_bytes",
                "must be at least 65536 (64 KiB); the buffer needs room for a few batches",
            ));
        }
    }
}
