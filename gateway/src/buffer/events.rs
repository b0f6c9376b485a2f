//! Kept trigger events: what `perch fn replay` runs a version over.
//!
//! A function whose manifest sets `[replay] keep_events_s` has each of its
//! trigger events (function, topic, payload, time) kept in the `events`
//! table of `buffer.db`. They are a kind of row of their own, in a table of
//! their own, so nothing that reads `records` (upstream over MQTT and HTTP,
//! `perch buffer tail`) can forward or show them by mistake, and they never
//! count against `max_bytes` or its `when_full` policy: kept events cannot
//! evict or refuse a record waiting for upstream.
//!
//! They are written by the buffer's writer thread in the same batched
//! transaction as records (no commit per event), and bounded twice: each
//! expires `keep_events_s` after it arrived (its `expires_ms`), and all of
//! them together hold at most a quarter of `max_bytes` (function name +
//! topic + payload), the oldest deleted first.

use std::sync::Arc;

use bytes::Bytes;
use rusqlite::{params, OptionalExtension, Transaction};

/// The table; created with the buffer's schema.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY,
    function   TEXT    NOT NULL,
    topic      BLOB    NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    payload    BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_function ON events (function, created_ms);
";

/// The most bytes kept events may hold: a quarter of the records' bound.
pub fn max_event_bytes(max_bytes: u64) -> u64 {
    max_bytes / 4
}

/// Expired events are looked for at most this often (a scan of the table).
const PRUNE_EVERY_MS: i64 = 1_000;

/// A trigger event to keep. Holds the broker's own buffers: keeping one
/// allocates nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub function: Arc<str>,
    pub topic: Bytes,
    pub payload: Bytes,
    pub created_ms: i64,
    pub expires_ms: i64,
}

impl NewEvent {
    fn size(&self) -> u64 {
        (self.function.len() + self.topic.len() + self.payload.len()) as u64
    }
}

/// A kept event, as `perch fn replay` reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeptEvent {
    pub topic: Vec<u8>,
    pub payload: Vec<u8>,
    pub created_ms: i64,
}

/// The writer's running total and when it last pruned.
#[derive(Debug, Default)]
pub(super) struct EventBounds {
    pub bytes: u64,
    pub pruned_ms: i64,
}

/// What one commit did to the events table.
#[derive(Debug, Default, PartialEq)]
pub(super) struct EventCounts {
    pub kept: u64,
    pub expired: u64,
    pub dropped: u64,
}

impl EventCounts {
    /// Adds these counts to `stats`, with `bytes` the kept events' bytes now.
    pub(super) fn apply(&self, stats: &super::Stats, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        stats.events_kept.fetch_add(self.kept, Relaxed);
        stats
            .events_dropped
            .fetch_add(self.expired + self.dropped, Relaxed);
        stats.event_bytes.store(bytes, Relaxed);
    }
}

const SIZE: &str = "length(function) + length(topic) + length(payload)";

/// Bytes of every kept event.
pub(super) fn total_bytes(conn: &rusqlite::Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        &format!("SELECT COALESCE(SUM({SIZE}), 0) FROM events"),
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
}

/// Inserts `new` and applies both bounds, inside the commit's transaction.
/// `bounds` is updated only through the returned value's application by the
/// caller after the transaction commits, so a failed commit changes nothing.
pub(super) fn write(
    tx: &Transaction,
    new: &[NewEvent],
    bounds: &EventBounds,
    now_ms: i64,
    max_bytes: u64,
) -> rusqlite::Result<(EventBounds, EventCounts)> {
    let mut counts = EventCounts::default();
    let mut bytes = bounds.bytes;
    let mut pruned_ms = bounds.pruned_ms;
    if !new.is_empty() {
        let mut insert = tx.prepare_cached(
            "INSERT INTO events (function, topic, created_ms, expires_ms, payload) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for e in new {
            insert.execute(params![
                &*e.function,
                &e.topic[..],
                e.created_ms,
                e.expires_ms,
                &e.payload[..]
            ])?;
            bytes += e.size();
        }
        counts.kept = new.len() as u64;
    }
    if bytes > 0 && now_ms - pruned_ms >= PRUNE_EVERY_MS {
        let (n, size) = delete(tx, "expires_ms < ?1", now_ms)?;
        counts.expired = n;
        bytes -= size.min(bytes);
        pruned_ms = now_ms;
    }
    let cap = max_event_bytes(max_bytes);
    while bytes > cap {
        let excess = bytes - cap;
        let mut through = None;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT seq, {SIZE} FROM events ORDER BY seq LIMIT 1000"
            ))?;
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
        let Some(through) = through else {
            bytes = 0;
            break;
        };
        let (n, size) = delete(tx, "seq <= ?1", through)?;
        counts.dropped += n;
        bytes -= size.min(bytes);
    }
    Ok((EventBounds { bytes, pruned_ms }, counts))
}

fn delete(tx: &Transaction, predicate: &str, arg: i64) -> rusqlite::Result<(u64, u64)> {
    let mut stmt = tx.prepare_cached(&format!(
        "DELETE FROM events WHERE {predicate} RETURNING {SIZE}"
    ))?;
    let mut rows = stmt.query([arg])?;
    let (mut n, mut size) = (0u64, 0u64);
    while let Some(row) = rows.next()? {
        n += 1;
        size += row.get::<_, i64>(0)? as u64;
    }
    Ok((n, size))
}

/// Up to `limit` events of `function` that arrived at or after `since_ms`
/// and have not expired by `now_ms`, oldest first, and how many there are
/// in all.
pub(super) fn since(
    conn: &rusqlite::Connection,
    function: &str,
    since_ms: i64,
    now_ms: i64,
    limit: usize,
) -> rusqlite::Result<(Vec<KeptEvent>, u64)> {
    let total: i64 = conn.query_row(
        "SELECT COUNT(*) FROM events WHERE function = ?1 AND created_ms >= ?2 AND expires_ms >= ?3",
        params![function, since_ms, now_ms],
        |r| r.get(0),
    )?;
    let mut stmt = conn.prepare_cached(
        "SELECT topic, payload, created_ms FROM events \
         WHERE function = ?1 AND created_ms >= ?2 AND expires_ms >= ?3 ORDER BY seq LIMIT ?4",
    )?;
    let rows = stmt.query_map(params![function, since_ms, now_ms, limit as i64], |r| {
        Ok(KeptEvent {
            topic: r.get(0)?,
            payload: r.get(1)?,
            created_ms: r.get(2)?,
        })
    })?;
    Ok((rows.collect::<rusqlite::Result<_>>()?, total as u64))
}

/// (events, bytes, oldest created_ms) of every function.
pub(super) fn totals(conn: &rusqlite::Connection) -> rusqlite::Result<(u64, u64, Option<i64>)> {
    let (n, bytes): (i64, i64) = conn.query_row(
        &format!("SELECT COUNT(*), COALESCE(SUM({SIZE}), 0) FROM events"),
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let oldest = conn
        .query_row("SELECT MIN(created_ms) FROM events", [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .optional()?
        .flatten();
    Ok((n as u64, bytes as u64, oldest))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::aggregate::AggregateConfig;
    use crate::buffer::{now_ms, Buffer, BufferConfig};

    fn event(function: &str, payload: Vec<u8>, created_ms: i64, expires_ms: i64) -> NewEvent {
        NewEvent {
            function: function.into(),
            topic: Bytes::from_static(b"sensors/a"),
            payload: Bytes::from(payload),
            created_ms,
            expires_ms,
        }
    }

    #[test]
    fn kept_events_expire_stay_out_of_records_and_are_read_per_function() {
        let dir = tempfile::tempdir().unwrap();
        let buffer = Buffer::open(
            &BufferConfig::default(),
            &AggregateConfig::default(),
            dir.path(),
        )
        .unwrap();
        let intake = buffer.intake();
        let now = now_ms();
        intake
            .keep_event(event("f", b"old".to_vec(), now - 5_000, now - 1))
            .unwrap();
        intake
            .keep_event(event("f", b"1".to_vec(), now - 3_000, now + 60_000))
            .unwrap();
        intake
            .keep_event(event("f", b"2".to_vec(), now - 1_000, now + 60_000))
            .unwrap();
        intake
            .keep_event(event("g", b"3".to_vec(), now - 1_000, now + 60_000))
            .unwrap();
        intake.flush().unwrap();
        let reader = buffer.reader().unwrap();
        // The expired one was pruned at the commit; none is a record.
        assert_eq!(reader.event_totals().unwrap().0, 3);
        assert!(reader.after(0, 100).unwrap().is_empty());
        assert_eq!(buffer.stats().records.load(Relaxed), 0);
        assert_eq!(buffer.stats().events_dropped.load(Relaxed), 1);
        let (events, total) = reader.events_since("f", now - 10_000, now, 100).unwrap();
        assert_eq!(total, 2);
        let payloads: Vec<_> = events.iter().map(|e| e.payload.clone()).collect();
        assert_eq!(payloads, vec![b"1".to_vec(), b"2".to_vec()]);
        assert_eq!(events[0].topic, b"sensors/a");
        let (events, total) = reader.events_since("f", now - 2_000, now, 100).unwrap();
        assert_eq!((events.len(), total), (1, 1));
        let (events, _) = reader.events_since("f", now - 10_000, now, 1).unwrap();
        assert_eq!(events.len(), 1, "the limit holds");
    }

    #[test]
    fn kept_events_hold_at_most_a_quarter_of_max_bytes_oldest_dropped_first() {
        let dir = tempfile::tempdir().unwrap();
        let config = BufferConfig {
            max_bytes: 64 * 1024,
            ..BufferConfig::default()
        };
        let buffer = Buffer::open(&config, &AggregateConfig::default(), dir.path()).unwrap();
        let intake = buffer.intake();
        intake.forward("s", b"a record").unwrap();
        let now = now_ms();
        for i in 0..40u8 {
            let mut payload = vec![b'x'; 1024];
            payload[0] = i;
            intake
                .keep_event(event("f", payload, now, now + 60_000))
                .unwrap();
        }
        intake.flush().unwrap();
        let reader = buffer.reader().unwrap();
        let (n, bytes, _) = reader.event_totals().unwrap();
        assert!(
            bytes <= max_event_bytes(config.max_bytes),
            "{bytes} bytes kept"
        );
        assert!((14..40).contains(&n), "{n} events kept");
        assert_eq!(buffer.stats().event_bytes.load(Relaxed), bytes);
        let (events, _) = reader.events_since("f", 0, now, 100).unwrap();
        assert_eq!(events.last().unwrap().payload[0], 39, "the newest stay");
        // The record is untouched by the events' bound.
        assert_eq!(reader.after(0, 10).unwrap().len(), 1);
    }
}
