//! The function registry: every deployed version of every function, and each
//! function's key-value state, in one SQLite database
//! (`<data_dir>/functions.db`, WAL mode, `synchronous = FULL`: a deploy that
//! was acknowledged survives a power cut).
//!
//! # Schema (version 3, in `PRAGMA user_version`)
//!
//! ```sql
//! function_versions(id, name, version, manifest TEXT, wasm BLOB, sha256,
//!                   deployed_at_ms, active, stopped_reason)
//!   -- UNIQUE(name, version); at most one active row per name
//! function_state(name, key BLOB, value BLOB)  -- PRIMARY KEY(name, key)
//! function_history(seq, name, version, snapshot_id)  -- what ran, newest last
//! state_snapshots(id, name, version, taken_at_ms)   -- see functions/snapshot.rs
//! state_snapshot_rows(snapshot_id, key BLOB, value BLOB)
//! ```
//!
//! `function_history` is the undo stack of each name: a deploy pushes the
//! version it activates, a rollback pops the current one and activates the
//! entry below it (the version that ran before, not merely an older number:
//! after v1, v2, rollback, v3, a rollback returns to v1). Entries whose
//! version was pruned are skipped. Version 1 databases are upgraded in place
//! (the table is added, seeded with each active version).
//!
//! A version row is immutable once written except for `active`,
//! `stopped_reason` and `deployed_at_ms`: rollback is "make an older row
//! active", so it restores that version's manifest and module byte for byte.
//! Rows are in deploy order by `id`; [`Registry::prune`] keeps the newest
//! `functions.keep_versions` rows of a name (the active one always). The
//! active row of each name is what runs after a restart; `stopped_reason`
//! keeps a function that the circuit breaker stopped stopped across restarts
//! until it is deployed again. Removing a function deletes its rows and its
//! state.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};

/// The schema version this code writes.
const SCHEMA_VERSION: i64 = 3;

/// Why the registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot open the function registry {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the function registry {path} has schema version {found}, newer than this perch \
         understands ({SCHEMA_VERSION}); run the perch release that wrote it"
    )]
    Schema { path: PathBuf, found: i64 },
    #[error("the function registry could not switch to WAL mode (journal_mode is {0:?})")]
    NotWal(String),
    #[error(
        "version {version} of function {name:?} is already deployed with different code \
         (sha256 {existing}); give the new build a new version"
    )]
    VersionConflict {
        name: String,
        version: String,
        existing: String,
    },
    #[error("function registry error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// A function's state rows: (key, value).
pub type StateRows = Vec<(Vec<u8>, Vec<u8>)>;

/// A version as stored.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub name: String,
    pub version: String,
    pub manifest: String,
    pub wasm: Vec<u8>,
    pub sha256: String,
    pub deployed_at_ms: i64,
    pub stopped_reason: Option<String>,
}

/// The registry database. One connection behind a mutex: deploys are rare
/// and state flushes are one short transaction each, so contention is
/// negligible, and every caller runs on a blocking thread (never on the
/// async runtime's workers).
pub struct Registry {
    conn: Mutex<Connection>,
}

impl Registry {
    /// Opens (creating if needed) the registry at `path`.
    pub fn open(path: &Path) -> Result<Registry, RegistryError> {
        let open_err = |source| RegistryError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = crate::kit::sqlite::open_wal(
            path,
            crate::kit::sqlite::Synchronous::Full,
            "function registry",
            crate::kit::sqlite::IfNotWal::Fail,
        )
        .map_err(|e| match e {
            crate::kit::sqlite::OpenError::Sqlite(source) => open_err(source),
            crate::kit::sqlite::OpenError::NotWal(mode) => RegistryError::NotWal(mode),
        })?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(open_err)?;
        if found > SCHEMA_VERSION {
            return Err(RegistryError::Schema {
                path: path.to_owned(),
                found,
            });
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS function_versions (
                 id INTEGER PRIMARY KEY,
                 name TEXT NOT NULL,
                 version TEXT NOT NULL,
                 manifest TEXT NOT NULL,
                 wasm BLOB NOT NULL,
                 sha256 TEXT NOT NULL,
                 deployed_at_ms INTEGER NOT NULL,
                 active INTEGER NOT NULL DEFAULT 0,
                 stopped_reason TEXT,
                 UNIQUE (name, version)
             );
             CREATE UNIQUE INDEX IF NOT EXISTS function_versions_one_active
                 ON function_versions (name) WHERE active = 1;
             CREATE TABLE IF NOT EXISTS function_state (
                 name TEXT NOT NULL,
                 key BLOB NOT NULL,
                 value BLOB NOT NULL,
                 PRIMARY KEY (name, key)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS function_history (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 name TEXT NOT NULL,
                 version TEXT NOT NULL
             );
             INSERT INTO function_history (name, version)
                 SELECT name, version FROM function_versions
                 WHERE active = 1 AND name NOT IN (SELECT name FROM function_history);
             CREATE TABLE IF NOT EXISTS state_snapshots (
                 id INTEGER PRIMARY KEY,
                 name TEXT NOT NULL,
                 version TEXT NOT NULL,
                 taken_at_ms INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS state_snapshot_rows (
                 snapshot_id INTEGER NOT NULL,
                 key BLOB NOT NULL,
                 value BLOB NOT NULL,
                 PRIMARY KEY (snapshot_id, key)
             ) WITHOUT ROWID;",
        )
        .map_err(open_err)?;
        // Version 2 databases get the history's snapshot column.
        let has_column: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('function_history') \
                 WHERE name = 'snapshot_id'",
                [],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )
            .map_err(open_err)?;
        if !has_column {
            conn.execute_batch("ALTER TABLE function_history ADD COLUMN snapshot_id INTEGER;")
                .map_err(open_err)?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(open_err)?;
        Ok(Registry {
            conn: Mutex::new(conn),
        })
    }

    pub(super) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (transactions roll back on drop), so a poisoned lock is usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses a deploy that would reuse a name and version for other code.
    pub fn check_new(&self, name: &str, version: &str, sha256: &str) -> Result<(), RegistryError> {
        let existing: Option<String> = self
            .conn()
            .query_row(
                "SELECT sha256 FROM function_versions WHERE name = ?1 AND version = ?2",
                params![name, version],
                |r| r.get(0),
            )
            .optional()?;
        match existing {
            Some(existing) if existing != sha256 => Err(RegistryError::VersionConflict {
                name: name.to_owned(),
                version: version.to_owned(),
                existing,
            }),
            _ => Ok(()),
        }
    }

    /// Stores a version (or finds the identical one) and makes it the active
    /// version of its name, in one transaction; pushes it on the name's
    /// history unless it is already on top.
    pub fn activate(&self, v: &StoredVersion) -> Result<(), RegistryError> {
        self.activate_with(v, None)
    }

    /// The version a rollback of `name` returns to, with its place in the
    /// history: the newest history entry below the top whose version is
    /// still kept.
    pub fn rollback_target(
        &self,
        name: &str,
    ) -> Result<Option<(StoredVersion, i64)>, RegistryError> {
        let conn = self.conn();
        let found: Option<(i64, String)> = conn
            .query_row(
                "SELECT h.seq, h.version FROM function_history h
                 JOIN function_versions v ON v.name = h.name AND v.version = h.version
                 WHERE h.name = ?1
                   AND h.seq < (SELECT MAX(seq) FROM function_history WHERE name = ?1)
                   AND v.active = 0
                 ORDER BY h.seq DESC LIMIT 1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((seq, version)) = found else {
            return Ok(None);
        };
        let stored = conn.query_row(
            "SELECT name, version, manifest, wasm, sha256, deployed_at_ms, stopped_reason
             FROM function_versions WHERE name = ?1 AND version = ?2",
            params![name, version],
            row_to_version,
        )?;
        Ok(Some((stored, seq)))
    }

    /// Makes the rollback target from [`Registry::rollback_target`] active
    /// and pops the history down to it, in one transaction.
    pub fn activate_rollback(&self, v: &StoredVersion, seq: i64) -> Result<(), RegistryError> {
        self.activate_with(v, Some(seq))
    }

    fn activate_with(
        &self,
        v: &StoredVersion,
        rollback_to: Option<i64>,
    ) -> Result<(), RegistryError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        activate_in(&tx, v, rollback_to)?;
        tx.commit()?;
        Ok(())
    }

    /// Every kept version of `name`, in deploy order (oldest first).
    pub fn versions(&self, name: &str) -> Result<Vec<StoredVersion>, RegistryError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, version, manifest, wasm, sha256, deployed_at_ms, stopped_reason
             FROM function_versions WHERE name = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![name], row_to_version)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The kept version numbers of `name`, in deploy order, without the
    /// modules.
    pub fn version_names(&self, name: &str) -> Result<Vec<String>, RegistryError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT version FROM function_versions WHERE name = ?1 ORDER BY id")?;
        let rows = stmt.query_map(params![name], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes the oldest versions of `name` beyond the newest `keep` (never
    /// the active one); returns how many were deleted.
    pub fn prune(&self, name: &str, keep: usize) -> Result<usize, RegistryError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let deleted = tx.execute(
            "DELETE FROM function_versions WHERE name = ?1 AND active = 0 AND id NOT IN
                 (SELECT id FROM function_versions WHERE name = ?1 ORDER BY id DESC LIMIT ?2)",
            params![name, keep as i64],
        )?;
        tx.execute(
            "DELETE FROM function_history WHERE name = ?1
             AND version NOT IN (SELECT version FROM function_versions WHERE name = ?1)",
            params![name],
        )?;
        super::snapshot::gc(&tx, name)?;
        tx.commit()?;
        Ok(deleted)
    }

    /// Deletes every version and the state of `name`; returns whether it had
    /// any version.
    pub fn remove(&self, name: &str) -> Result<bool, RegistryError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM function_versions WHERE name = ?1",
            params![name],
        )?;
        tx.execute("DELETE FROM function_state WHERE name = ?1", params![name])?;
        tx.execute(
            "DELETE FROM function_history WHERE name = ?1",
            params![name],
        )?;
        super::snapshot::gc(&tx, name)?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// The active version of every function.
    pub fn active(&self) -> Result<Vec<StoredVersion>, RegistryError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, version, manifest, wasm, sha256, deployed_at_ms, stopped_reason
             FROM function_versions WHERE active = 1 ORDER BY name",
        )?;
        let rows = stmt.query_map([], row_to_version)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records why a function was stopped (or clears it), so a restart does
    /// not revive a function the circuit breaker stopped.
    pub fn set_stopped(
        &self,
        name: &str,
        version: &str,
        reason: Option<&str>,
    ) -> Result<(), RegistryError> {
        self.conn().execute(
            "UPDATE function_versions SET stopped_reason = ?3 WHERE name = ?1 AND version = ?2",
            params![name, version, reason],
        )?;
        Ok(())
    }

    /// A function's persisted state.
    pub fn load_state(&self, name: &str) -> Result<StateRows, RegistryError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT key, value FROM function_state WHERE name = ?1")?;
        let rows = stmt.query_map(params![name], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Writes state changes of one function in one transaction: `Some` stores
    /// a value, `None` deletes the key.
    pub fn save_state<'a>(
        &self,
        name: &str,
        changes: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> Result<(), RegistryError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO function_state (name, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name, key) DO UPDATE SET value = excluded.value",
            )?;
            let mut delete =
                tx.prepare_cached("DELETE FROM function_state WHERE name = ?1 AND key = ?2")?;
            for (key, value) in changes {
                match value {
                    Some(value) => upsert.execute(params![name, key, value])?,
                    None => delete.execute(params![name, key])?,
                };
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Makes `v` the active version of its name inside `tx` (see
/// [`Registry::activate`]); with `rollback_to`, pops the history down to
/// that entry instead of pushing one, and drops the snapshots of the
/// entries popped.
pub(super) fn activate_in(
    tx: &rusqlite::Transaction<'_>,
    v: &StoredVersion,
    rollback_to: Option<i64>,
) -> Result<(), RegistryError> {
    let existing: Option<String> = tx
        .query_row(
            "SELECT sha256 FROM function_versions WHERE name = ?1 AND version = ?2",
            params![v.name, v.version],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(existing) = existing {
        if existing != v.sha256 {
            return Err(RegistryError::VersionConflict {
                name: v.name.clone(),
                version: v.version.clone(),
                existing,
            });
        }
    }
    tx.execute(
        "UPDATE function_versions SET active = 0 WHERE name = ?1 AND active = 1",
        params![v.name],
    )?;
    tx.execute(
        "INSERT INTO function_versions
                 (name, version, manifest, wasm, sha256, deployed_at_ms, active, stopped_reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, NULL)
             ON CONFLICT (name, version) DO UPDATE SET
                 active = 1, stopped_reason = NULL, deployed_at_ms = excluded.deployed_at_ms",
        params![
            v.name,
            v.version,
            v.manifest,
            v.wasm,
            v.sha256,
            v.deployed_at_ms
        ],
    )?;
    match rollback_to {
        Some(seq) => {
            tx.execute(
                "DELETE FROM function_history WHERE name = ?1 AND seq > ?2",
                params![v.name, seq],
            )?;
        }
        None => {
            let top: Option<String> = tx
                .query_row(
                    "SELECT version FROM function_history WHERE name = ?1
                         ORDER BY seq DESC LIMIT 1",
                    params![v.name],
                    |r| r.get(0),
                )
                .optional()?;
            if top.as_deref() != Some(v.version.as_str()) {
                tx.execute(
                    "INSERT INTO function_history (name, version) VALUES (?1, ?2)",
                    params![v.name, v.version],
                )?;
            }
        }
    }
    super::snapshot::gc(tx, &v.name)?;
    Ok(())
}

fn row_to_version(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredVersion> {
    Ok(StoredVersion {
        name: r.get(0)?,
        version: r.get(1)?,
        manifest: r.get(2)?,
        wasm: r.get(3)?,
        sha256: r.get(4)?,
        deployed_at_ms: r.get(5)?,
        stopped_reason: r.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_versions_are_kept_and_the_active_one_always() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(&dir.path().join("f.db")).unwrap();
        for (i, v) in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"].iter().enumerate() {
            r.activate(&version("a", v, &format!("s{i}"))).unwrap();
        }
        // Roll back to the oldest: it stays although it is outside the
        // newest two.
        r.activate(&version("a", "1.0.0", "s0")).unwrap();
        assert_eq!(r.prune("a", 2).unwrap(), 1);
        assert_eq!(r.version_names("a").unwrap(), ["1.0.0", "1.2.0", "1.3.0"]);
        let kept = r.versions("a").unwrap();
        assert_eq!(kept[2].sha256, "s3");
        r.activate(&version("b", "0.1.0", "x")).unwrap();
        let set: Vec<(&[u8], Option<&[u8]>)> = vec![(b"k", Some(b"v"))];
        r.save_state("a", set.into_iter()).unwrap();
        assert!(r.remove("a").unwrap());
        assert!(!r.remove("a").unwrap());
        assert!(r.versions("a").unwrap().is_empty());
        assert!(r.load_state("a").unwrap().is_empty());
        assert_eq!(r.active().unwrap().len(), 1, "b is untouched");
    }

    #[test]
    fn rollback_returns_to_what_ran_before_not_to_an_older_number() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(&dir.path().join("f.db")).unwrap();
        assert!(r.rollback_target("a").unwrap().is_none());
        r.activate(&version("a", "1.0.0", "s1")).unwrap();
        assert!(
            r.rollback_target("a").unwrap().is_none(),
            "nothing before v1"
        );
        r.activate(&version("a", "2.0.0", "s2")).unwrap();
        let (target, seq) = r.rollback_target("a").unwrap().unwrap();
        assert_eq!(target.version, "1.0.0");
        r.activate_rollback(&target, seq).unwrap();
        assert_eq!(r.active().unwrap()[0].version, "1.0.0");
        assert!(
            r.rollback_target("a").unwrap().is_none(),
            "v1 is the bottom"
        );
        r.activate(&version("a", "3.0.0", "s3")).unwrap();
        let (target, _) = r.rollback_target("a").unwrap().unwrap();
        assert_eq!(
            target.version, "1.0.0",
            "2.0.0 was rolled back, 1.0.0 ran before 3.0.0"
        );
        assert_eq!(target.sha256, "s1");
    }

    fn version(name: &str, version: &str, sha: &str) -> StoredVersion {
        StoredVersion {
            name: name.into(),
            version: version.into(),
            manifest: format!("name = \"{name}\""),
            wasm: vec![0, 97, 115, 109],
            sha256: sha.into(),
            deployed_at_ms: 1,
            stopped_reason: None,
        }
    }

    #[test]
    fn one_version_per_name_is_active_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("functions.db");
        {
            let r = Registry::open(&path).unwrap();
            r.activate(&version("a", "1.0.0", "s1")).unwrap();
            r.activate(&version("a", "1.1.0", "s2")).unwrap();
            r.activate(&version("b", "0.1.0", "s3")).unwrap();
            r.set_stopped("b", "0.1.0", Some("stopped: 10 failures in a row"))
                .unwrap();
        }
        let r = Registry::open(&path).unwrap();
        let active = r.active().unwrap();
        let summary: Vec<_> = active
            .iter()
            .map(|v| {
                (
                    v.name.as_str(),
                    v.version.as_str(),
                    v.stopped_reason.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("a", "1.1.0", None),
                ("b", "0.1.0", Some("stopped: 10 failures in a row"))
            ]
        );
        // Re-deploying the identical older version makes it active again.
        r.activate(&version("a", "1.0.0", "s1")).unwrap();
        assert_eq!(r.active().unwrap()[0].version, "1.0.0");
    }

    #[test]
    fn a_version_cannot_be_reused_for_other_code() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(&dir.path().join("f.db")).unwrap();
        r.activate(&version("a", "1.0.0", "s1")).unwrap();
        let err = r.check_new("a", "1.0.0", "other").unwrap_err().to_string();
        assert!(
            err.contains("already deployed with different code"),
            "{err}"
        );
        assert!(err.contains("new version"), "{err}");
        assert!(r.activate(&version("a", "1.0.0", "other")).is_err());
        assert_eq!(r.active().unwrap()[0].sha256, "s1");
    }

    #[test]
    fn state_changes_are_written_and_deleted_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(&dir.path().join("f.db")).unwrap();
        let set: Vec<(&[u8], Option<&[u8]>)> = vec![(b"k1", Some(b"v1")), (b"k2", Some(b"v2"))];
        r.save_state("a", set.into_iter()).unwrap();
        let del: Vec<(&[u8], Option<&[u8]>)> = vec![(b"k1", None), (b"k2", Some(b"v3"))];
        r.save_state("a", del.into_iter()).unwrap();
        assert_eq!(
            r.load_state("a").unwrap(),
            vec![(b"k2".to_vec(), b"v3".to_vec())]
        );
        assert!(r.load_state("b").unwrap().is_empty());
    }
}
