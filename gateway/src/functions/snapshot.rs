//! State snapshots: the state a version left when another took over, kept
//! in `functions.db` so that a rollback can restore it.
//!
//! # What is stored
//!
//! ```sql
//! state_snapshots(id, name, version, taken_at_ms)  -- version: whose state it is
//! state_snapshot_rows(snapshot_id, key, value)     -- its key-value pairs
//! function_history.snapshot_id                     -- the state that entry's version left
//! ```
//!
//! A snapshot hangs on the history entry of the version whose state it
//! is: when v2 takes over from v1, the state v1 left is copied and linked
//! to v1's entry. A rollback to v1 restores exactly that one (and re-runs
//! the kept events since `taken_at_ms`, see `upgrade.rs`), then drops it;
//! an entry that leaves the history (a rollback popping it, its version
//! pruned, `fn remove`) takes its snapshot with it. When an entry between
//! two others leaves, the snapshot of the one below stays where it is,
//! which is still the state that version left.
//!
//! # Cost
//!
//! One copy of the state (at most `state::MAX_TOTAL_BYTES`, 1 MiB) per
//! takeover, written in the takeover's own transaction together with the
//! new version's state and its activation ([`Registry::take_over`]):
//! nothing per event, and a crash leaves either everything before the
//! takeover or everything after it.
//!
//! # Bounds
//!
//! `functions.snapshots_keep` per function (newest first) and
//! `functions.snapshots_max_age_s`; applied at every takeover and when the
//! gateway starts. An expired snapshot is never restored, even before it
//! is deleted.

use rusqlite::{params, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

use super::registry::{activate_in, Registry, RegistryError, StateRows, StoredVersion};
use super::state::StateCache;

/// How many snapshots a function keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub keep: usize,
    pub max_age_ms: i64,
}

/// A snapshot as the status and the replies name it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub id: i64,
    /// The version whose state it is.
    pub version: String,
    pub taken_at_ms: i64,
    pub keys: u64,
}

/// A version taking over a function, written in one transaction.
pub struct Takeover<'a> {
    pub version: &'a StoredVersion,
    /// A rollback: the history entry it returns to.
    pub rollback_to: Option<i64>,
    /// The state the version before left, and when it was taken, to keep as
    /// a snapshot; `None` for a rollback, a first deploy, or the running
    /// version installed again.
    pub left: Option<(&'a StateCache, i64)>,
    /// The state the new version starts on (after `perch_migrate`, or the
    /// restored and re-run one).
    pub state: &'a StateCache,
    pub bounds: Bounds,
    pub now_ms: i64,
}

impl Registry {
    /// Snapshots what the version before left, replaces the function's
    /// state with the new one, activates the version and applies the
    /// bounds, all in one transaction. Returns the new snapshot's id.
    pub fn take_over(&self, t: &Takeover<'_>) -> Result<Option<i64>, RegistryError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let name = &t.version.name;
        let mut id = None;
        if let Some((left, taken_at_ms)) = t.left {
            let top: Option<(i64, String)> = tx
                .query_row(
                    "SELECT seq, version FROM function_history WHERE name = ?1
                     ORDER BY seq DESC LIMIT 1",
                    params![name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((seq, version)) = top {
                tx.execute(
                    "INSERT INTO state_snapshots (name, version, taken_at_ms) VALUES (?1, ?2, ?3)",
                    params![name, version, taken_at_ms],
                )?;
                let sid = tx.last_insert_rowid();
                insert_rows(&tx, sid, left)?;
                tx.execute(
                    "UPDATE function_history SET snapshot_id = ?1 WHERE seq = ?2",
                    params![sid, seq],
                )?;
                id = Some(sid);
            }
        }
        tx.execute("DELETE FROM function_state WHERE name = ?1", params![name])?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO function_state (name, key, value) VALUES (?1, ?2, ?3)",
            )?;
            for (key, value) in t.state.entries() {
                insert.execute(params![name, key, value])?;
            }
        }
        activate_in(&tx, t.version, t.rollback_to)?;
        if let Some(seq) = t.rollback_to {
            // Restored: the version runs again and will leave a new state.
            tx.execute(
                "UPDATE function_history SET snapshot_id = NULL WHERE seq = ?1",
                params![seq],
            )?;
            gc(&tx, name)?;
        }
        bound(&tx, name, t.bounds, t.now_ms)?;
        tx.commit()?;
        Ok(id)
    }

    /// The snapshot of the state history entry `seq`'s version left, unless
    /// there is none or it is older than the bounds allow.
    pub fn snapshot_of(
        &self,
        seq: i64,
        bounds: Bounds,
        now_ms: i64,
    ) -> Result<Option<(SnapshotInfo, StateRows)>, RegistryError> {
        let conn = self.conn();
        let info: Option<SnapshotInfo> = conn
            .query_row(
                "SELECT s.id, s.version, s.taken_at_ms,
                        (SELECT COUNT(*) FROM state_snapshot_rows WHERE snapshot_id = s.id)
                 FROM function_history h JOIN state_snapshots s ON s.id = h.snapshot_id
                 WHERE h.seq = ?1 AND s.taken_at_ms >= ?2",
                params![seq, now_ms.saturating_sub(bounds.max_age_ms)],
                row_to_info,
            )
            .optional()?;
        let Some(info) = info else {
            return Ok(None);
        };
        let mut stmt =
            conn.prepare("SELECT key, value FROM state_snapshot_rows WHERE snapshot_id = ?1")?;
        let rows = stmt
            .query_map(params![info.id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(Some((info, rows)))
    }

    /// The snapshots `name` keeps, oldest first.
    pub fn snapshots(&self, name: &str) -> Result<Vec<SnapshotInfo>, RegistryError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT s.id, s.version, s.taken_at_ms,
                    (SELECT COUNT(*) FROM state_snapshot_rows WHERE snapshot_id = s.id)
             FROM state_snapshots s WHERE s.name = ?1 ORDER BY s.id",
        )?;
        let rows = stmt.query_map(params![name], row_to_info)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Applies the bounds to every function's snapshots (at start).
    pub fn bound_snapshots(&self, bounds: Bounds, now_ms: i64) -> Result<(), RegistryError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let names: Vec<String> = {
            let mut stmt = tx.prepare("SELECT DISTINCT name FROM state_snapshots")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for name in names {
            bound(&tx, &name, bounds, now_ms)?;
        }
        tx.commit()?;
        Ok(())
    }
}

fn row_to_info(r: &rusqlite::Row<'_>) -> rusqlite::Result<SnapshotInfo> {
    Ok(SnapshotInfo {
        id: r.get(0)?,
        version: r.get(1)?,
        taken_at_ms: r.get(2)?,
        keys: r.get::<_, i64>(3)? as u64,
    })
}

fn insert_rows(tx: &Transaction<'_>, id: i64, state: &StateCache) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO state_snapshot_rows (snapshot_id, key, value) VALUES (?1, ?2, ?3)",
    )?;
    for (key, value) in state.entries() {
        insert.execute(params![id, key, value])?;
    }
    Ok(())
}

/// Deletes `name`'s snapshots beyond the newest `bounds.keep` or older than
/// `bounds.max_age_ms`, and unlinks them from the history.
fn bound(tx: &Transaction<'_>, name: &str, bounds: Bounds, now_ms: i64) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM state_snapshots WHERE name = ?1 AND (taken_at_ms < ?2 OR id NOT IN
             (SELECT id FROM state_snapshots WHERE name = ?1 ORDER BY id DESC LIMIT ?3))",
        params![
            name,
            now_ms.saturating_sub(bounds.max_age_ms),
            bounds.keep as i64
        ],
    )?;
    tx.execute(
        "UPDATE function_history SET snapshot_id = NULL WHERE name = ?1
         AND snapshot_id IS NOT NULL AND snapshot_id NOT IN (SELECT id FROM state_snapshots)",
        params![name],
    )?;
    delete_orphan_rows(tx)
}

/// Deletes `name`'s snapshots that no history entry links to any more (its
/// entry was popped, pruned or removed).
pub(super) fn gc(tx: &Transaction<'_>, name: &str) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM state_snapshots WHERE name = ?1 AND id NOT IN
             (SELECT snapshot_id FROM function_history
              WHERE name = ?1 AND snapshot_id IS NOT NULL)",
        params![name],
    )?;
    delete_orphan_rows(tx)
}

fn delete_orphan_rows(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM state_snapshot_rows WHERE snapshot_id NOT IN (SELECT id FROM state_snapshots)",
        [],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests;
