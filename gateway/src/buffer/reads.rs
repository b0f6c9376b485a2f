//! What a [`Reader`] reads beside the hot path of the drain
//! ([`Reader::read_after`]): the bounds of a drain's backlog, a bounded
//! range of records, and the dead letters: records the upstream refused for
//! good (an HTTP 4xx, a record no MQTT packet of the link can carry), kept
//! apart from `records` for `perch buffer dead` and moved back by `perch
//! buffer replay`.

use std::path::Path;

use rusqlite::params;

use super::config::Synchronous;
use super::record::StoredRecord;
use super::store::{open_connection, Reader};
use super::BufferError;

impl Reader {
    /// The highest `seq` committed now (0 when the table is empty): the
    /// watermark a drain takes when its link comes up. Records at or below
    /// it are the backlog, records above it are live.
    pub fn newest_seq(&self) -> rusqlite::Result<i64> {
        self.conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM records", [], |r| {
                r.get(0)
            })
    }

    /// Up to `limit` records with `after < seq <= until`, in order.
    pub fn between(
        &self,
        after: i64,
        until: i64,
        limit: usize,
    ) -> rusqlite::Result<Vec<StoredRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, stream, kind, created_ms, payload FROM records \
             WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![after, until, limit as i64], StoredRecord::from_row)?;
        rows.collect()
    }
}

/// A batch the upstream refused for good, kept for inspection and replay.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub record: StoredRecord,
    pub status: u16,
    pub response: String,
    pub failed_ms: i64,
}

impl Reader {
    /// Every dead letter, oldest first.
    pub fn dead_letters(&self) -> rusqlite::Result<Vec<DeadLetter>> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, stream, kind, created_ms, payload, status, response, failed_ms \
             FROM dead_letters ORDER BY seq",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(DeadLetter {
                record: StoredRecord::from_row(r)?,
                status: r.get(5)?,
                response: r.get(6)?,
                failed_ms: r.get(7)?,
            })
        })?;
        rows.collect()
    }
}

/// Moves every dead letter back into `records` (with new seqs, so they are
/// sent again after what waits now). Safe while perch runs: SQLite serialises
/// this writer with the gateway's. Returns how many moved.
pub fn replay_dead_letters(path: &Path) -> Result<usize, BufferError> {
    let err = |source| BufferError::Open {
        path: path.to_owned(),
        source,
    };
    let mut conn = open_connection(path, Synchronous::Full)?;
    let tx = conn.transaction().map_err(err)?;
    let n = tx
        .execute(
            "INSERT INTO records (stream, kind, created_ms, payload) \
             SELECT stream, kind, created_ms, payload FROM dead_letters ORDER BY seq",
            [],
        )
        .map_err(err)?;
    tx.execute("DELETE FROM dead_letters", []).map_err(err)?;
    tx.commit().map_err(err)?;
    Ok(n)
}
