//! What each upstream destination was offered, sent and acknowledged, in
//! records and bytes, per stream, kept in `buffer.db` so a restart does not
//! reset it.
//!
//! # Design
//!
//! The delivery tasks count in memory ([`LinkTotals::add`], one short lock
//! per upstream message, never per record and never across an `.await`).
//! The buffer's writer thread writes the rows that changed since its last
//! commit in the same transaction as the records and acknowledgements of
//! that commit: no transaction of its own, so counting costs no sync (the
//! last commit of a clean stop, and an explicit flush, write them alone).
//! While the disk is at its reserve they wait in memory. At open the
//! persisted totals are loaded and counting goes on from them.
//!
//! A crash (kill -9, power cut) loses at most the counts of the last
//! `commit_interval_ms`, as it would lose records not yet committed; an
//! acknowledgement is counted before it is handed to the writer, so the
//! count of an acknowledged record commits with its deletion or earlier.
//!
//! # Schema
//!
//! ```sql
//! link_totals (destination TEXT, stream TEXT,
//!              offered_records, offered_bytes, sent_records, sent_bytes,
//!              acked_records, acked_bytes,   -- INTEGER, running totals
//!              PRIMARY KEY (destination, stream))
//! ```
//!
//! `destination` is the endpoint as `perch status` shows it
//! (`mqtt://host:port`, the HTTP URL without credentials); `stream` the
//! record's stream (for a mirrored message, its upstream topic). A
//! destination counts at most [`MAX_STREAMS`] streams by name; the rest
//! are counted together under [`OTHER`], so a topic per device cannot grow
//! the table without bound.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rusqlite::{params, Connection};

use super::config::Synchronous;
use super::store::open_connection;
use super::BufferError;

/// Streams counted by name per destination; the rest go under [`OTHER`].
pub const MAX_STREAMS: usize = 256;
/// The stream name the streams past [`MAX_STREAMS`] are counted under.
pub const OTHER: &str = "(other)";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS link_totals (
    destination     TEXT    NOT NULL,
    stream          TEXT    NOT NULL,
    offered_records INTEGER NOT NULL,
    offered_bytes   INTEGER NOT NULL,
    sent_records    INTEGER NOT NULL,
    sent_bytes      INTEGER NOT NULL,
    acked_records   INTEGER NOT NULL,
    acked_bytes     INTEGER NOT NULL,
    PRIMARY KEY (destination, stream)
);
";

/// Where a message is in its trip to the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Handed to the link's client to send (an MQTT publish, an HTTP POST
    /// started), resends included.
    Offered,
    /// Written to the link: the MQTT PUBLISH left for the socket, the POST
    /// got an HTTP answer (any status).
    Sent,
    /// Acknowledged by the destination: PUBACK, HTTP 2xx.
    Acked,
}

/// Running totals of one (destination, stream): records, and bytes of
/// payload on the link (the MQTT message's payload, the HTTP request
/// body as sent, gzipped when `gzip`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub offered_records: u64,
    pub offered_bytes: u64,
    pub sent_records: u64,
    pub sent_bytes: u64,
    pub acked_records: u64,
    pub acked_bytes: u64,
}

impl Totals {
    fn add(&mut self, stage: Stage, records: u64, bytes: u64) {
        let (r, b) = match stage {
            Stage::Offered => (&mut self.offered_records, &mut self.offered_bytes),
            Stage::Sent => (&mut self.sent_records, &mut self.sent_bytes),
            Stage::Acked => (&mut self.acked_records, &mut self.acked_bytes),
        };
        *r += records;
        *b += bytes;
    }

    /// Adds `other` to these totals (a destination's sum over streams).
    pub fn merge(&mut self, other: &Totals) {
        self.add(Stage::Offered, other.offered_records, other.offered_bytes);
        self.add(Stage::Sent, other.sent_records, other.sent_bytes);
        self.add(Stage::Acked, other.acked_records, other.acked_bytes);
    }
}

/// One (destination, stream) row as it is persisted or shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub destination: String,
    pub stream: String,
    pub totals: Totals,
}

/// A row's place in [`LinkTotals`]: looked up once per message, then
/// counted into without a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(usize);

#[derive(Debug, Default)]
struct Table {
    rows: Vec<Entry>,
    /// Per destination: its name and its streams' rows by name.
    destinations: Vec<(String, HashMap<String, usize>)>,
}

#[derive(Debug)]
struct Entry {
    destination: String,
    stream: String,
    now: Totals,
    /// What the last commit wrote: the row is written again when `now`
    /// differs.
    persisted: Totals,
}

/// The totals of every destination and stream, shared by the delivery
/// tasks (which count), the writer (which persists) and telemetry (which
/// reads).
#[derive(Debug, Default)]
pub struct LinkTotals {
    table: Mutex<Table>,
    /// Set by every count, cleared when the writer takes the changed rows:
    /// lets the writer skip an idle commit without taking the lock.
    changed: AtomicBool,
}

impl LinkTotals {
    /// The row of `stream` at `destination`, created at zero if new (or
    /// [`OTHER`]'s, past [`MAX_STREAMS`]).
    pub fn slot(&self, destination: &str, stream: &str) -> Slot {
        let mut t = self.table.lock().expect("link totals");
        Slot(t.slot(destination, stream))
    }

    /// Counts `records` and `bytes` at `stage` for the row of `slot`.
    pub fn add(&self, slot: Slot, stage: Stage, records: u64, bytes: u64) {
        let mut t = self.table.lock().expect("link totals");
        if let Some(e) = t.rows.get_mut(slot.0) {
            e.now.add(stage, records, bytes);
        }
        self.changed.store(true, Ordering::Relaxed);
    }

    /// Every row, in the order they were first counted (or loaded).
    pub fn snapshot(&self) -> Vec<Row> {
        let t = self.table.lock().expect("link totals");
        t.rows
            .iter()
            .map(|e| Row {
                destination: e.destination.clone(),
                stream: e.stream.clone(),
                totals: e.now,
            })
            .collect()
    }

    /// Whether anything was counted since the writer last took the rows.
    pub(super) fn changed(&self) -> bool {
        self.changed.load(Ordering::Relaxed)
    }

    /// Appends the rows that changed since they were last persisted to
    /// `out` (the writer's next transaction writes them).
    pub(super) fn take_changed(&self, out: &mut Vec<Row>) {
        if !self.changed.swap(false, Ordering::Relaxed) {
            return;
        }
        let t = self.table.lock().expect("link totals");
        out.extend(t.rows.iter().filter(|e| e.now != e.persisted).map(|e| Row {
            destination: e.destination.clone(),
            stream: e.stream.clone(),
            totals: e.now,
        }));
    }

    /// The rows of `written` are on disk now.
    pub(super) fn persisted(&self, written: &[Row]) {
        let mut t = self.table.lock().expect("link totals");
        for r in written {
            let i = t.slot(&r.destination, &r.stream);
            t.rows[i].persisted = r.totals;
        }
    }

    /// A commit that would have written `unwritten` failed: they are
    /// written with the next one.
    pub(super) fn unwritten(&self) {
        self.changed.store(true, Ordering::Relaxed);
    }

    /// Starts from the totals persisted in `buffer.db` (creating the table
    /// on first use).
    pub(super) fn load(path: &Path, sync: Synchronous) -> Result<LinkTotals, BufferError> {
        let err = |source| BufferError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = open_connection(path, sync)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        let rows = read(&conn).map_err(err)?;
        let totals = LinkTotals::default();
        {
            let mut t = totals.table.lock().expect("link totals");
            for r in rows {
                let i = t.slot(&r.destination, &r.stream);
                t.rows[i].now = r.totals;
                t.rows[i].persisted = r.totals;
            }
        }
        Ok(totals)
    }
}

impl Table {
    fn slot(&mut self, destination: &str, stream: &str) -> usize {
        let d = match self.destinations.iter().position(|(d, _)| d == destination) {
            Some(d) => d,
            None => {
                self.destinations
                    .push((destination.to_owned(), HashMap::new()));
                self.destinations.len() - 1
            }
        };
        if let Some(&i) = self.destinations[d].1.get(stream) {
            return i;
        }
        let named = self.destinations[d].1.len();
        let stream = if named >= MAX_STREAMS && stream != OTHER {
            match self.destinations[d].1.get(OTHER) {
                Some(&i) => return i,
                None => OTHER,
            }
        } else {
            stream
        };
        self.rows.push(Entry {
            destination: destination.to_owned(),
            stream: stream.to_owned(),
            now: Totals::default(),
            persisted: Totals::default(),
        });
        let i = self.rows.len() - 1;
        self.destinations[d].1.insert(stream.to_owned(), i);
        i
    }
}

/// Every persisted row.
pub(super) fn read(conn: &Connection) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn.prepare(
        "SELECT destination, stream, offered_records, offered_bytes, sent_records, sent_bytes, \
         acked_records, acked_bytes FROM link_totals ORDER BY rowid",
    )?;
    let rows = stmt.query_map([], |r| {
        let n = |i| r.get::<_, i64>(i).map(|v| v as u64);
        Ok(Row {
            destination: r.get(0)?,
            stream: r.get(1)?,
            totals: Totals {
                offered_records: n(2)?,
                offered_bytes: n(3)?,
                sent_records: n(4)?,
                sent_bytes: n(5)?,
                acked_records: n(6)?,
                acked_bytes: n(7)?,
            },
        })
    })?;
    rows.collect()
}

/// Writes `rows` inside the writer's transaction `tx`.
pub(super) fn write(tx: &rusqlite::Transaction, rows: &[Row]) -> rusqlite::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    // An update in place: the row keeps its rowid (the order rows are
    // shown in) and its key, so only the table's page changes, not the
    // key's index: one page less in the WAL per commit than a REPLACE.
    let mut upsert = tx.prepare_cached(
        "INSERT INTO link_totals (destination, stream, offered_records, offered_bytes, \
         sent_records, sent_bytes, acked_records, acked_bytes) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (destination, stream) DO UPDATE SET offered_records = ?3, \
         offered_bytes = ?4, sent_records = ?5, sent_bytes = ?6, acked_records = ?7, \
         acked_bytes = ?8",
    )?;
    for r in rows {
        let t = &r.totals;
        upsert.execute(params![
            r.destination,
            r.stream,
            t.offered_records as i64,
            t.offered_bytes as i64,
            t.sent_records as i64,
            t.sent_bytes as i64,
            t.acked_records as i64,
            t.acked_bytes as i64,
        ])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_past_the_limit_are_counted_together() {
        let totals = LinkTotals::default();
        for i in 0..MAX_STREAMS + 10 {
            let slot = totals.slot("mqtt://h:1", &format!("s/{i}"));
            totals.add(slot, Stage::Acked, 1, 10);
        }
        let rows = totals.snapshot();
        assert_eq!(rows.len(), MAX_STREAMS + 1);
        let other = rows.iter().find(|r| r.stream == OTHER).expect("(other)");
        assert_eq!(other.totals.acked_records, 10);
        assert_eq!(other.totals.acked_bytes, 100);
        // Another destination has its own streams.
        let slot = totals.slot("https://x/in", "s/0");
        totals.add(slot, Stage::Sent, 2, 5);
        assert_eq!(totals.snapshot().len(), MAX_STREAMS + 2);
    }

    #[test]
    fn only_changed_rows_are_taken_and_a_failed_write_is_taken_again() {
        let totals = LinkTotals::default();
        let a = totals.slot("d", "a");
        let b = totals.slot("d", "b");
        totals.add(a, Stage::Offered, 3, 30);
        totals.add(b, Stage::Offered, 1, 10);
        let mut out = Vec::new();
        totals.take_changed(&mut out);
        assert_eq!(out.len(), 2);
        totals.persisted(&out);
        assert!(!totals.changed());
        totals.add(a, Stage::Acked, 3, 30);
        let mut out = Vec::new();
        totals.take_changed(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].stream, "a");
        assert_eq!(out[0].totals.acked_records, 3);
        // The commit failed: nothing was persisted, the row comes again.
        totals.unwritten();
        let mut again = Vec::new();
        totals.take_changed(&mut again);
        assert_eq!(again, out);
    }
}
