//! Opening perch's SQLite files: the one sequence the buffer, the function
//! registry, the retained-message store and the session store share.
//!
//! Each file is opened read-write (created if missing) with a 5 s busy
//! timeout (another connection's commit or checkpoint is waited for, not
//! reported as "database is locked"), `journal_mode = WAL` (readers never
//! block the writer), checked because SQLite answers Ok even when WAL did not
//! take (NFS, some FUSE file systems), and the caller's `synchronous`.
//! Schemas and any further pragmas stay with their owners.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use serde::Deserialize;

/// SQLite's `synchronous` pragma, as far as perch lets it be chosen
/// (`buffer.synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    Normal,
    Full,
}

/// How long a statement waits for another connection's lock.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What to do when the file cannot use WAL journaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfNotWal {
    /// Log a warning naming `what` and go on in the mode SQLite chose.
    Warn,
    /// Refuse: [`OpenError::NotWal`].
    Fail,
}

/// Why [`open_wal`] failed.
#[derive(Debug)]
pub(crate) enum OpenError {
    Sqlite(rusqlite::Error),
    /// WAL did not take (and [`IfNotWal::Fail`] was asked); the journal mode
    /// SQLite reported instead.
    NotWal(String),
}

impl From<rusqlite::Error> for OpenError {
    fn from(e: rusqlite::Error) -> Self {
        OpenError::Sqlite(e)
    }
}

/// Opens `path` (creating it) in WAL mode with the busy timeout and
/// `synchronous`; `what` names the file in the warning ("retained store").
pub(crate) fn open_wal(
    path: &Path,
    synchronous: Synchronous,
    what: &str,
    if_not_wal: IfNotWal,
) -> Result<Connection, OpenError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // pragma_update returns Ok even when WAL did not take; check the answer.
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        match if_not_wal {
            IfNotWal::Warn => {
                tracing::warn!(path = %path.display(), mode, "{what} is not in WAL mode")
            }
            IfNotWal::Fail => return Err(OpenError::NotWal(mode)),
        }
    }
    let sync = match synchronous {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_opens_in_wal_mode_with_the_asked_synchronous() {
        let dir = tempfile::tempdir().unwrap();
        for (sync, want) in [(Synchronous::Full, 2), (Synchronous::Normal, 1)] {
            let conn =
                open_wal(&dir.path().join("t.db"), sync, "test store", IfNotWal::Fail).unwrap();
            let mode: String = conn
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            let got: i64 = conn
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn a_missing_directory_is_an_sqlite_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = open_wal(
            &dir.path().join("no/such/dir/t.db"),
            Synchronous::Full,
            "test store",
            IfNotWal::Warn,
        )
        .unwrap_err();
        assert!(matches!(err, OpenError::Sqlite(_)), "{err:?}");
    }
}
