//! The SQLite side of the buffer: schema, batched commits, bounds.
//! Only the buffer's writer thread writes; readers open their own
//! connections (WAL lets them read while it writes).

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::config::{BufferConfig, Synchronous, WhenFull};
use super::events::{self, EventBounds, KeptEvent, NewEvent};
use super::record::{Batch, StoredRecord};
use super::{BufferError, Stats};
use crate::aggregate::{self, Aggregator};
use crate::kit::sqlite::{self, IfNotWal, OpenError};

/// Kinds of rows in `records`.
pub const KIND_RECORD: i64 = 0;
pub const KIND_AGGREGATE: i64 = 1;
pub const KIND_SUMMARY: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    stream     TEXT    NOT NULL,
    kind       INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    payload    BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq        INTEGER PRIMARY KEY,
    stream     TEXT    NOT NULL,
    kind       INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    payload    BLOB    NOT NULL,
    status     INTEGER NOT NULL,
    response   TEXT    NOT NULL,
    failed_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS windows (
    metric          TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    closed_until_ms INTEGER NOT NULL,
    open            TEXT,
    PRIMARY KEY (metric, key)
);
";

/// A record accepted but not committed yet.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub stream: String,
    pub kind: i64,
    pub created_ms: i64,
    pub payload: Vec<u8>,
}

impl NewRecord {
    fn size(&self) -> u64 {
        (self.stream.len() + self.payload.len()) as u64
    }
}

/// What one transaction writes.
#[derive(Debug, Default)]
pub struct Pending {
    /// New records, in arrival order.
    pub records: Vec<NewRecord>,
    /// Records upstream acknowledged: deleted.
    pub acks: Vec<i64>,
    /// Records upstream refused for good: (seqs, status, response), moved
    /// to dead letters.
    pub dead: Vec<(Vec<i64>, u16, String)>,
    /// Trigger events to keep for replay ([`super::events`]).
    pub events: Vec<NewEvent>,
    /// Link totals that changed ([`super::counters`]), written as they are.
    pub totals: Vec<super::counters::Row>,
    /// Set by a commit: how many of `records` (the first ones) went in; the
    /// rest were refused by `drop_newest`.
    pub inserted: usize,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.acks.is_empty()
            && self.dead.is_empty()
            && self.events.is_empty()
    }
}

/// Disk bytes counted against each byte of records the disk bound lets in.
/// A new page is written twice (to the WAL, then by the checkpoint into the
/// database file), and a page of 4096 bytes holds one record of 2 KiB, so a
/// byte of records can cost four bytes of disk and more (interior pages,
/// frame headers) until the WAL restarts. With 8, each commit takes at most
/// about half of the free space above the reserve, so the bound approaches
/// the reserve without crossing it; near it, commits get small and then the
/// buffer is full.
pub const DISK_BYTES_PER_RECORD_BYTE: u64 = 8;

/// Most bytes the WAL file keeps after a checkpoint restarts it
/// (`journal_size_limit`): the working space acknowledged deletes write
/// into when the disk is low, without the file growing much past it.
pub const WAL_KEEP_BYTES: i64 = 1024 * 1024;

/// How many more bytes of records the disk lets a commit add: the free
/// space above the reserve divided by [`DISK_BYTES_PER_RECORD_BYTE`], plus
/// the database's own free pages (space deleted records left inside the
/// file, which SQLite reuses before it grows the file: it costs only WAL
/// frames, written into the WAL's existing space once it restarted).
pub fn disk_room(free: u64, reserve: u64, reusable: u64) -> u64 {
    (free.saturating_sub(reserve) / DISK_BYTES_PER_RECORD_BYTE).saturating_add(reusable)
}

/// What the file system holds for a commit: free bytes (for unprivileged
/// users, `statvfs` `f_bavail`) of the data directory's file system, as
/// measured just before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disk {
    pub free: u64,
}

/// What the disk looked like to one commit. "Free" is the file system's
/// free space less what the WAL still owes the database file, plus the
/// free pages inside that file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskOutcome {
    /// The buffer is full because of the disk: free was below
    /// `min_free_bytes`, or the disk bound (tighter than `max_bytes`) made
    /// `when_full` drop or refuse records in this commit.
    pub full: bool,
    /// Free was at least twice `min_free_bytes`: the buffer is no longer
    /// full because of the disk.
    pub roomy: bool,
    /// The free space was below twice `min_free_bytes`: the writer keeps
    /// the WAL short ([`Store::restart_wal`] after each commit).
    pub low: bool,
}

/// The writer's connection and what it knows about the table's size.
pub struct Store {
    conn: Connection,
    /// The database file (its size tells what the WAL still owes it).
    path: std::path::PathBuf,
    bytes: u64,
    records: u64,
    page_size: u64,
    /// SQLite's `data_version` as of our last look: it changes when another
    /// connection (`perch buffer replay`) commits, and then the totals are
    /// counted again.
    data_version: i64,
    /// Kept events' bytes and last pruning.
    events: EventBounds,
}

pub fn open_connection(path: &Path, sync: Synchronous) -> Result<Connection, BufferError> {
    let err = |source| BufferError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = sqlite::open_wal(path, sync, "the buffer", IfNotWal::Fail).map_err(|e| match e {
        OpenError::Sqlite(source) => err(source),
        OpenError::NotWal(mode) => BufferError::NoWal {
            path: path.to_owned(),
            mode,
        },
    })?;
    conn.execute_batch(SCHEMA).map_err(err)?;
    conn.execute_batch(events::SCHEMA).map_err(err)?;
    Ok(conn)
}

/// Free bytes an unprivileged process may use on the file system that
/// holds `dir` (`statvfs`: `f_bavail * f_frsize`).
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

impl Store {
    pub fn open(path: &Path, config: &BufferConfig) -> Result<Store, BufferError> {
        let conn = open_connection(path, config.synchronous)?;
        // Every statement the writer runs stays prepared (rusqlite keeps 16
        // by default; inserts, deletes, windows, dead letters and events
        // come close to that).
        conn.set_prepared_statement_cache_capacity(32);
        // The WAL keeps at most this much after a checkpoint restarts it.
        conn.pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES)
            .map_err(|source| BufferError::Open {
                path: path.to_owned(),
                source,
            })?;
        let page_size: i64 = conn
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .map_err(|source| BufferError::Open {
                path: path.to_owned(),
                source,
            })?;
        let (records, bytes): (i64, i64) = conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(length(stream) + length(payload)), 0) FROM records",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|source| BufferError::Open {
                path: path.to_owned(),
                source,
            })?;
        let data_version = conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|source| BufferError::Open {
                path: path.to_owned(),
                source,
            })?;
        let event_bytes = events::total_bytes(&conn).map_err(|source| BufferError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Store {
            conn,
            path: path.to_owned(),
            bytes: bytes as u64,
            records: records as u64,
            page_size: page_size as u64,
            data_version,
            events: EventBounds {
                bytes: event_bytes,
                pruned_ms: 0,
            },
        })
    }

    #[cfg(test)]
    pub(super) fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn oldest_ms(&self) -> Option<i64> {
        self.conn
            .query_row(
                "SELECT created_ms FROM records ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .ok()
            .flatten()
    }

    /// Loads the windows saved at the last commit into `agg`.
    pub fn restore_windows(&self, agg: &mut Aggregator) -> rusqlite::Result<usize> {
        let mut stmt = self
            .conn
            .prepare("SELECT metric, key, closed_until_ms, open FROM windows")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })?;
        let mut n = 0;
        for row in rows {
            let (metric, key, closed_until, open) = row?;
            let windows = open.map(|json| aggregate::open_from_json(&json));
            agg.restore(windows.unwrap_or_default(), &metric, &key, closed_until);
            n += 1;
        }
        Ok(n)
    }

    /// Commits one batch in one transaction: deletes acknowledged records,
    /// inserts new ones (under the `drop_newest` policy, as many as fit),
    /// saves changed windows, expires old records and enforces the bound.
    /// The bound is `max_bytes`, or less when `disk` is known and low: the
    /// bytes held now plus [`disk_room`] (so below `min_free_bytes`, with no
    /// free pages in the file, the buffer is full at its current size and
    /// `when_full` applies). On error nothing changed and `pending` is
    /// untouched, so it can be retried.
    pub fn commit(
        &mut self,
        pending: &mut Pending,
        agg: &mut Aggregator,
        now_ms: i64,
        config: &BufferConfig,
        stats: &Stats,
        disk: Option<Disk>,
    ) -> rusqlite::Result<DiskOutcome> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
        if version != self.data_version {
            let (n, b): (i64, i64) = self.conn.query_row(
                "SELECT COUNT(*), COALESCE(SUM(length(stream) + length(payload)), 0) FROM records",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            (self.records, self.bytes, self.data_version) = (n as u64, b as u64, version);
            self.events.bytes = events::total_bytes(&self.conn)?;
        }
        let mut bytes = self.bytes;
        let mut records = self.records;
        let mut counts = Counts::default();
        let mut outcome = DiskOutcome::default();
        let mut limit = config.max_bytes;
        if let Some(disk) = disk {
            let free_pages: i64 = self
                .conn
                .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
            let reusable = free_pages as u64 * self.page_size;
            // Pages that live only in the WAL yet: the next checkpoint
            // writes them into the database file, which grows by that much
            // at once (at the automatic checkpoint, 1000 pages: 4 MiB).
            let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let file = std::fs::metadata(&self.path).map_or(0, |m| m.len());
            let owed = (pages as u64 * self.page_size).saturating_sub(file);
            let free = disk.free.saturating_sub(owed);
            let room = disk_room(free, config.min_free_bytes, reusable);
            let headroom = free.saturating_add(reusable);
            outcome.full = headroom < config.min_free_bytes;
            outcome.roomy = headroom >= config.min_free_bytes.saturating_mul(2);
            outcome.low = disk.free < config.min_free_bytes.saturating_mul(2);
            limit = limit.min(bytes.saturating_add(room));
        }
        let tx = self.conn.transaction()?;
        {
            // Acknowledged records go in runs of consecutive seqs, one
            // statement per run: an upstream message acknowledges up to
            // `max_records_per_message` records of one stream, mostly
            // consecutive, and a commit interval collects many messages.
            pending.acks.sort_unstable();
            pending.acks.dedup();
            for (first, last) in runs(&pending.acks) {
                let (n, size) = delete_counted(&tx, "seq BETWEEN ?1 AND ?2", [first, last])?;
                bytes -= size;
                records -= n;
                counts.acked += n;
            }
            let mut delete = tx.prepare_cached(
                "DELETE FROM records WHERE seq = ?1 RETURNING length(stream) + length(payload)",
            )?;
            let mut to_dead = tx.prepare_cached(
                "INSERT OR REPLACE INTO dead_letters \
                 SELECT seq, stream, kind, created_ms, payload, ?2, ?3, ?4 FROM records WHERE seq = ?1",
            )?;
            for (seqs, status, response) in pending.dead.iter() {
                for seq in seqs {
                    if to_dead.execute(params![seq, status, response, now_ms])? == 1 {
                        if let Some(size) =
                            delete.query_row([seq], |r| r.get::<_, i64>(0)).optional()?
                        {
                            bytes -= size as u64;
                            records -= 1;
                        }
                    }
                }
            }
            // Under drop_newest, only what fits goes in (in order).
            let fits = fitting(&pending.records, bytes, limit, config.when_full);
            counts.dropped_newest += (pending.records.len() - fits) as u64;
            pending.inserted = fits;
            let new = &pending.records[..fits];
            // Under drop_oldest, make room before inserting, so the new rows
            // reuse the pages the old ones leave instead of growing the file
            // (at the disk bound there is no room to grow it).
            if config.when_full == WhenFull::DropOldest {
                let incoming: u64 = new.iter().map(NewRecord::size).sum();
                if bytes + incoming > limit {
                    let (n, size) = drop_oldest(&tx, bytes + incoming - limit)?;
                    counts.dropped_oldest += n;
                    bytes -= size;
                    records -= n;
                }
            }
            // INSERT statements of INSERT_ROWS rows: SQLite does its
            // per-statement work (AUTOINCREMENT's sqlite_sequence read and
            // write, statement reset) once per chunk instead of per record.
            let mut chunks = new.chunks_exact(INSERT_ROWS);
            {
                let mut insert = tx.prepare_cached(&insert_sql(INSERT_ROWS))?;
                for chunk in chunks.by_ref() {
                    for (i, r) in chunk.iter().enumerate() {
                        bind_record(&mut insert, i, r)?;
                    }
                    insert.raw_execute()?;
                }
            }
            let mut one = tx.prepare_cached(&insert_sql(1))?;
            for r in chunks.remainder() {
                bind_record(&mut one, 0, r)?;
                one.raw_execute()?;
            }
            for r in new {
                bytes += r.size();
            }
            records += new.len() as u64;
            counts.committed += new.len() as u64;
            let mut save = tx.prepare_cached(
                "INSERT OR REPLACE INTO windows (metric, key, closed_until_ms, open) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut failed = None;
            agg.drain_dirty(|metric, key, open, closed_until| {
                let open = aggregate::open_to_json(open);
                if let Err(e) = save.execute(params![metric, key, closed_until, open]) {
                    failed.get_or_insert(e);
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
        }
        let cutoff = now_ms - (config.max_age_s as i64) * 1000;
        let oldest: Option<i64> = tx
            .query_row(
                "SELECT created_ms FROM records ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if oldest.is_some_and(|o| o < cutoff) {
            let (n, size) = delete_where(&tx, "created_ms < ?1", cutoff)?;
            counts.expired += n;
            bytes -= size;
            records -= n;
        }
        while bytes > limit && records > 0 {
            if config.when_full == WhenFull::Degrade {
                let (removed, freed, added) = super::degrade::degrade_oldest(&tx, now_ms)?;
                if removed > 0 {
                    counts.degraded += removed;
                    bytes = bytes - freed + added;
                    records = records - removed + 1;
                    continue;
                }
            }
            let (n, size) = drop_oldest(&tx, bytes - limit)?;
            if n == 0 {
                break;
            }
            counts.dropped_oldest += n;
            bytes -= size;
            records -= n;
        }
        let (event_bounds, event_counts) =
            events::write(&tx, &pending.events, &self.events, now_ms, config.max_bytes)?;
        super::counters::write(&tx, &pending.totals)?;
        tx.commit()?;
        self.bytes = bytes;
        self.records = records;
        self.events = event_bounds;
        pending.records.clear();
        pending.acks.clear();
        pending.dead.clear();
        if limit < config.max_bytes
            && counts.dropped_newest + counts.dropped_oldest + counts.degraded > 0
        {
            outcome.full = true;
            outcome.roomy = false;
        }
        pending.events.clear();
        counts.apply(stats);
        event_counts.apply(stats, self.events.bytes);
        Ok(outcome)
    }

    /// Copies the WAL into the database and restarts it from its start
    /// (`wal_checkpoint(RESTART)`), so the next commits write into the WAL
    /// file's existing space instead of growing it; `journal_size_limit`
    /// then trims it to [`WAL_KEEP_BYTES`]. Waits for readers up to the busy
    /// timeout. Returns whether the checkpoint completed.
    pub fn restart_wal(&self) -> rusqlite::Result<bool> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get(0))?;
        Ok(busy == 0)
    }
}

/// How many of `records` (the first ones) go in: all of them, but under
/// `drop_newest` only those that fit under `limit` above `bytes`.
fn fitting(records: &[NewRecord], mut bytes: u64, limit: u64, policy: WhenFull) -> usize {
    if policy != WhenFull::DropNewest {
        return records.len();
    }
    for (i, r) in records.iter().enumerate() {
        if bytes + r.size() > limit {
            return i;
        }
        bytes += r.size();
    }
    records.len()
}

/// Deletes the oldest rows that together hold at least `excess` bytes, at
/// most 1000 rows. Returns (rows, bytes) deleted.
fn drop_oldest(tx: &rusqlite::Transaction, excess: u64) -> rusqlite::Result<(u64, u64)> {
    let mut through = None;
    {
        let mut stmt = tx.prepare_cached(
            "SELECT seq, length(stream) + length(payload) FROM records ORDER BY seq LIMIT 1000",
        )?;
        let mut rows = stmt.query([])?;
        let mut freed = 0u64;
        while let Some(row) = rows.next()? {
            through = Some(row.get::<_, i64>(0)?);
            freed += row.get::<_, i64>(1)? as u64;
            if freed >= excess {
                break;
            }
        }
    }
    match through {
        Some(through) => delete_where(tx, "seq <= ?1", through),
        None => Ok((0, 0)),
    }
}

/// The runs of consecutive values in `sorted` (ascending, no duplicates),
/// as (first, last).
pub(super) fn runs(sorted: &[i64]) -> impl Iterator<Item = (i64, i64)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let first = *sorted.get(i)?;
        let mut last = first;
        i += 1;
        while sorted.get(i) == Some(&(last + 1)) {
            last += 1;
            i += 1;
        }
        Some((first, last))
    })
}

/// Rows per multi-row INSERT (4 parameters each; far below SQLite's 32766).
const INSERT_ROWS: usize = 64;

fn insert_sql(rows: usize) -> String {
    let mut sql = String::from("INSERT INTO records (stream, kind, created_ms, payload) VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        let p = i * 4;
        sql.push_str(&format!("(?{},?{},?{},?{})", p + 1, p + 2, p + 3, p + 4));
    }
    sql
}

/// Binds `r` as row `row` of an [`insert_sql`] statement.
fn bind_record(
    stmt: &mut rusqlite::CachedStatement<'_>,
    row: usize,
    r: &NewRecord,
) -> rusqlite::Result<()> {
    let p = row * 4;
    stmt.raw_bind_parameter(p + 1, r.stream.as_str())?;
    stmt.raw_bind_parameter(p + 2, r.kind)?;
    stmt.raw_bind_parameter(p + 3, r.created_ms)?;
    stmt.raw_bind_parameter(p + 4, r.payload.as_slice())?;
    Ok(())
}

fn delete_where(
    tx: &rusqlite::Transaction,
    predicate: &str,
    arg: i64,
) -> rusqlite::Result<(u64, u64)> {
    delete_counted(tx, predicate, [arg])
}

/// Deletes the records that match `predicate` and returns (rows, bytes)
/// deleted. The rows and bytes are counted by a read before the delete
/// rather than with `DELETE ... RETURNING`: on a drain's range of
/// acknowledged seqs the RETURNING form costs about 2.3 times the CPU of
/// the read and the plain delete together (it is what the buffer's writer
/// spent most of a drain on; docs/performance.md).
fn delete_counted<P: rusqlite::Params + Copy>(
    tx: &rusqlite::Transaction,
    predicate: &str,
    args: P,
) -> rusqlite::Result<(u64, u64)> {
    let (n, size): (i64, i64) = tx
        .prepare_cached(&format!(
            "SELECT COUNT(*), COALESCE(SUM(length(stream) + length(payload)), 0) \
             FROM records WHERE {predicate}"
        ))?
        .query_row(args, |r| Ok((r.get(0)?, r.get(1)?)))?;
    if n > 0 {
        tx.prepare_cached(&format!("DELETE FROM records WHERE {predicate}"))?
            .execute(args)?;
    }
    Ok((n as u64, size as u64))
}

#[derive(Default)]
struct Counts {
    committed: u64,
    acked: u64,
    dropped_newest: u64,
    dropped_oldest: u64,
    expired: u64,
    degraded: u64,
}

impl Counts {
    fn apply(&self, stats: &Stats) {
        use std::sync::atomic::Ordering::Relaxed;
        stats.committed.fetch_add(self.committed, Relaxed);
        stats.acked.fetch_add(self.acked, Relaxed);
        stats.dropped_newest.fetch_add(self.dropped_newest, Relaxed);
        stats.dropped_oldest.fetch_add(self.dropped_oldest, Relaxed);
        stats.expired.fetch_add(self.expired, Relaxed);
        stats.degraded.fetch_add(self.degraded, Relaxed);
        stats.commits.fetch_add(1, Relaxed);
    }
}

/// A read-only view for upstream and the CLI.
pub struct Reader {
    pub(super) conn: Connection,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, BufferError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| BufferError::Open {
            path: path.to_owned(),
            source,
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|source| BufferError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(Reader { conn })
    }

    /// Up to `limit` records with `seq > after`, in order.
    pub fn after(&self, after: i64, limit: usize) -> rusqlite::Result<Vec<StoredRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, stream, kind, created_ms, payload FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, limit as i64], StoredRecord::from_row)?;
        rows.collect()
    }

    /// Up to `limit` records with `after < seq <= until`, in order, into
    /// `batch` (emptied first): [`Reader::after`] without an allocation per
    /// row. `until = i64::MAX` reads to the newest record.
    pub fn read_after(
        &self,
        after: i64,
        until: i64,
        limit: usize,
        batch: &mut Batch,
    ) -> rusqlite::Result<()> {
        batch.clear();
        let mut stmt = self.conn.prepare_cached("SELECT seq, stream, kind, created_ms, payload FROM records WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3")?;
        let mut rows = stmt.query(params![after, until, limit as i64])?;
        while let Some(row) = rows.next()? {
            batch.push(row)?;
        }
        Ok(())
    }

    /// The newest `n` records, oldest first.
    pub fn tail(&self, n: usize) -> rusqlite::Result<Vec<StoredRecord>> {
        let first: i64 = self
            .conn
            .query_row(
                "SELECT COALESCE(MIN(seq), 1) FROM (SELECT seq FROM records ORDER BY seq DESC LIMIT ?1)",
                [n as i64],
                |r| r.get(0),
            )?;
        self.after(first - 1, n)
    }

    /// (records, bytes, oldest created_ms) now.
    pub fn totals(&self) -> rusqlite::Result<(u64, u64, Option<i64>)> {
        let (n, bytes): (i64, i64) = self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(length(stream) + length(payload)), 0) FROM records",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let oldest = self
            .conn
            .query_row(
                "SELECT created_ms FROM records ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok((n as u64, bytes as u64, oldest))
    }
}

impl Reader {
    /// Up to `limit` kept trigger events of `function` since `since_ms`
    /// (not yet expired at `now_ms`), oldest first, and how many there are.
    pub fn events_since(
        &self,
        function: &str,
        since_ms: i64,
        now_ms: i64,
        limit: usize,
    ) -> rusqlite::Result<(Vec<KeptEvent>, u64)> {
        events::since(&self.conn, function, since_ms, now_ms, limit)
    }

    /// (kept events, their bytes, oldest created_ms): `perch buffer stats`.
    pub fn event_totals(&self) -> rusqlite::Result<(u64, u64, Option<i64>)> {
        events::totals(&self.conn)
    }
}
