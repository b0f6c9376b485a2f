//! The function registry: every deployed version of every function, and each
//! function's key-value state, in one SQLite database
//! (`<data_dir>/functions.db`, WAL mode, `synchronous = FULL`: a deploy that
//! was acknowledged survives a power cut).
//!
//! # Schema (version 1, in `PRAGMA user_version`)
//!
//! ```sql
//! function_versions(id, name, version, manifest TEXT, wasm BLOB, sha256,
//!                   deployed_at_ms, active, stopped_reason)
//!   -- UNIQUE(name, version); at most one active row per name
//! function_state(name, key BLOB, value BLOB)  -- PRIMARY KEY(name, key)
//! ```
//!
//! A version row is immutable once written except for `active` and
//! `stopped_reason`: rollback (issue 5) is "make an older row active". The
//! active row of each name is what runs after a restart; `stopped_reason`
//! keeps a function that the circuit breaker stopped stopped across restarts
//! until it is deployed again.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};

/// The schema version this code writes.
const SCHEMA_VERSION: i64 = 1;

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
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        // pragma_update returns Ok even when WAL did not take, so check.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(RegistryError::NotWal(mode));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
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
             PRAGMA user_version = 1;",
        )
        .map_err(open_err)?;
        Ok(Registry {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
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
    /// version of its name, in one transaction.
    pub fn activate(&self, v: &StoredVersion) -> Result<(), RegistryError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
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
        tx.commit()?;
        Ok(())
    }

    /// The active version of every function.
    pub fn active(&self) -> Result<Vec<StoredVersion>, RegistryError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, version, manifest, wasm, sha256, deployed_at_ms, stopped_reason
             FROM function_versions WHERE active = 1 ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(StoredVersion {
                name: r.get(0)?,
                version: r.get(1)?,
                manifest: r.get(2)?,
                wasm: r.get(3)?,
                sha256: r.get(4)?,
                deployed_at_ms: r.get(5)?,
                stopped_reason: r.get(6)?,
            })
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
