//! The retained-message store: what makes retained messages survive a
//! gateway restart (rumqttd keeps them in memory only).
//!
//! # Design
//!
//! - **Capture.** Every connection's codec sees each PUBLISH a client sends,
//!   after the ACL let it through. Those that change rumqttd's retained set
//!   (a retained publish, or any publish with an empty payload, which rumqttd
//!   takes as "delete the retained message": see docs/broker.md's known
//!   deviations) are handed to [`Capture::offer`], a non-blocking send on a
//!   bounded channel. Non-retained publishes with a payload cost one branch.
//!   A retained will (delay 0) is captured when its connection ends without
//!   DISCONNECT, which is when rumqttd publishes it.
//! - **Persist.** One thread owns the SQLite file `<data_dir>/retained.db`
//!   (WAL, `synchronous = NORMAL`). It waits for an operation, takes every
//!   other one already queued, and applies them in one transaction: a
//!   retained message is on disk milliseconds after its PUBLISH was read; a
//!   clean shutdown waits for the queue to drain ([`Store::flush`]).
//! - **Acknowledged after the commit.** A QoS 1/2 publish comes with a
//!   ticket ([`Capture::keep`], [`crate::kit::durable`]): the codec holds its
//!   PUBACK (PUBREC) until the transaction that stores it has committed.
//! - **Bounded.** At most `max_retained_messages` topics and
//!   `max_retained_bytes` (topic + payload) are kept on disk. A retained
//!   publish to a new topic beyond either bound is not persisted: it is
//!   logged and counted; at QoS 1/2 its client is refused (MQTT 5: PUBACK
//!   0x97; 3.1.1: the connection is closed without PUBACK), at QoS 0 it is
//!   still retained in memory until the next restart. Replacing or deleting
//!   a stored topic always works. A full capture queue or a failed write is
//!   treated the same way (logged, counted).
//! - **Restore.** [`Store::open`] reads every row before any listener opens;
//!   the broker publishes them through an in-process link, as retained
//!   messages with their QoS (2 is restored as 1: a local link cannot run the
//!   QoS 2 handshake) and the rest of their 5.0 message expiry. Expired rows
//!   are deleted instead.
//!
//! # Table
//!
//! `retained(topic TEXT PRIMARY KEY, qos INTEGER, payload BLOB,
//! expires_at_ms INTEGER NULL)`: one row per topic; `expires_at_ms` is the
//! Unix time at which a 5.0 message expiry ends, NULL for none.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use crate::kit::clock::now_ms;

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};

use crate::kit::durable::{self, Refused, Ticket};
use crate::kit::sqlite::{IfNotWal, OpenError, Synchronous};

/// Operations waiting for the persister; past this, captures are dropped
/// (and counted) rather than blocking a connection.
const QUEUE_LEN: usize = 4_096;

/// Why the retained store could not open.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open the retained-message store {path}: {source}; check that the data directory \
     is writable, or move the file aside to start without the stored retained messages"
)]
pub struct RetainedError {
    path: PathBuf,
    source: rusqlite::Error,
}

/// One retained message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    pub topic: String,
    pub qos: u8,
    pub payload: Bytes,
    /// Seconds of 5.0 message expiry left, if the message has one.
    pub expiry_s: Option<u32>,
}

/// A change to the stored set; its ticket, when a client waits for it, is
/// settled by the commit (see [`Capture::keep`]).
enum Op {
    Set(Retained, Option<Ticket>),
    Delete(String, Option<Ticket>),
    Flush(mpsc::Sender<()>),
}

impl Op {
    fn take_ticket(&mut self) -> Option<Ticket> {
        match self {
            Op::Set(_, t) | Op::Delete(_, t) => t.take(),
            Op::Flush(_) => None,
        }
    }
}

/// Counts of what the store could not keep.
#[derive(Default, Debug)]
pub struct RetainedStats {
    /// Retained publishes not persisted because a bound was reached.
    pub over_bound: AtomicU64,
    /// Captures dropped because the persister's queue was full.
    pub queue_full: AtomicU64,
    /// Writes that failed (disk full, I/O error); logged each time.
    pub write_errors: AtomicU64,
}

/// The handle codecs use to hand over retained publishes. Cheap to clone.
#[derive(Clone)]
pub struct Capture {
    tx: SyncSender<Op>,
    stats: Arc<RetainedStats>,
}

impl Capture {
    /// Records that `topic` now retains `payload` (an empty payload deletes
    /// it). Never blocks.
    pub fn offer(&self, topic: &str, qos: u8, payload: &Bytes, expiry_s: Option<u32>) {
        let _ = self.keep(topic, qos, payload, expiry_s, None);
    }

    /// [`Capture::offer`] for a publish whose client waits for it to be on
    /// disk: `ticket` is settled by the commit, as refused when the change
    /// is over a bound or the write failed. `Err`: the queue is full;
    /// nothing was taken (counted and logged).
    pub fn keep(
        &self,
        topic: &str,
        qos: u8,
        payload: &Bytes,
        expiry_s: Option<u32>,
        ticket: Option<Ticket>,
    ) -> Result<(), Refused> {
        let op = if payload.is_empty() {
            Op::Delete(topic.to_owned(), ticket)
        } else {
            Op::Set(
                Retained {
                    topic: topic.to_owned(),
                    qos,
                    payload: payload.clone(),
                    expiry_s,
                },
                ticket,
            )
        };
        match self.tx.try_send(op) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                let n = self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(1000) {
                    tracing::warn!(
                        topic,
                        dropped = n + 1,
                        "retained message not persisted: the store's queue is full (a QoS 1/2 \
                         one is refused; a QoS 0 one is retained in memory until the next \
                         restart)"
                    );
                }
                Err(Refused)
            }
            Err(TrySendError::Disconnected(_)) => Err(Refused),
        }
    }
}

/// The store: its restored rows and the persister thread.
pub struct Store {
    capture: Capture,
    stats: Arc<RetainedStats>,
    restored: Vec<Retained>,
}

/// Bounds of the store.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_messages: u64,
    pub max_bytes: u64,
}

impl Store {
    /// Opens (or creates) `<data_dir>/retained.db`, reads what it holds and
    /// starts the persister.
    pub fn open(data_dir: &Path, bounds: Bounds) -> Result<Store, RetainedError> {
        let path = data_dir.join("retained.db");
        let err = |source| RetainedError {
            path: path.clone(),
            source,
        };
        let conn = crate::kit::sqlite::open_wal(
            &path,
            Synchronous::Normal,
            "retained store",
            IfNotWal::Warn,
        )
        .map_err(|e| match e {
            OpenError::Sqlite(source) => err(source),
            OpenError::NotWal(_) => unreachable!("IfNotWal::Warn does not fail"),
        })?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS retained (
                topic TEXT PRIMARY KEY,
                qos INTEGER NOT NULL,
                payload BLOB NOT NULL,
                expires_at_ms INTEGER
            );",
        )
        .map_err(err)?;
        let now = now_ms();
        conn.execute(
            "DELETE FROM retained WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ?1",
            [now],
        )
        .map_err(err)?;
        let restored = {
            let mut stmt = conn
                .prepare("SELECT topic, qos, payload, expires_at_ms FROM retained ORDER BY topic")
                .map_err(err)?;
            let rows = stmt
                .query_map([], |r| {
                    let expires: Option<i64> = r.get(3)?;
                    Ok(Retained {
                        topic: r.get(0)?,
                        qos: r.get(1)?,
                        payload: Bytes::from(r.get::<_, Vec<u8>>(2)?),
                        expiry_s: expires
                            .map(|at| ((at - now).max(1_000) / 1_000).min(i64::from(u32::MAX)))
                            .map(|s| s as u32),
                    })
                })
                .map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)?
        };
        let stats = Arc::new(RetainedStats::default());
        let (tx, rx) = mpsc::sync_channel(QUEUE_LEN);
        let mut persister = Persister {
            conn,
            bounds,
            count: restored.len() as u64,
            bytes: restored
                .iter()
                .map(|r| (r.topic.len() + r.payload.len()) as u64)
                .sum(),
            stats: stats.clone(),
        };
        std::thread::Builder::new()
            .name("perch-retained".into())
            .spawn(move || persister.run(rx))
            .map_err(|e| err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        Ok(Store {
            capture: Capture {
                tx,
                stats: stats.clone(),
            },
            stats,
            restored,
        })
    }

    /// The messages read at open, to publish before listeners open.
    pub fn take_restored(&mut self) -> Vec<Retained> {
        std::mem::take(&mut self.restored)
    }

    pub fn capture(&self) -> Capture {
        self.capture.clone()
    }

    pub fn stats(&self) -> &RetainedStats {
        &self.stats
    }

    /// Waits (at most `timeout`) until everything captured so far is
    /// committed.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        if self.capture.tx.send(Op::Flush(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(timeout).is_ok()
    }
}

struct Persister {
    conn: Connection,
    bounds: Bounds,
    /// Rows and bytes (topic + payload) on disk, for the bounds.
    count: u64,
    bytes: u64,
    stats: Arc<RetainedStats>,
}

impl Persister {
    fn run(&mut self, rx: Receiver<Op>) {
        let mut batch = Vec::new();
        while let Ok(op) = rx.recv() {
            batch.push(op);
            while batch.len() < 1_000 {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let mut over_bound = Vec::new();
            let written = self.apply(&mut batch, &mut over_bound);
            if let Err(e) = &written {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot write retained messages to disk; they stay retained in memory (QoS 1/2 publishes among them are refused)");
                // Re-read the totals: the transaction rolled back.
                if let Ok((c, b)) = self.totals() {
                    (self.count, self.bytes) = (c, b);
                }
            }
            let ok = written.is_ok();
            durable::settle(batch.iter_mut().enumerate().filter_map(|(i, op)| {
                let committed = ok && !over_bound.contains(&i);
                op.take_ticket().map(|t| (t, committed))
            }));
            for op in batch.drain(..) {
                if let Op::Flush(done) = op {
                    let _ = done.send(());
                }
            }
        }
    }

    fn totals(&self) -> rusqlite::Result<(u64, u64)> {
        self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(length(CAST(topic AS BLOB)) + length(payload)), 0) FROM retained",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
    }

    /// Applies `batch` in one transaction; the positions of changes not
    /// persisted because of a bound go to `over_bound`.
    fn apply(&mut self, batch: &mut [Op], over_bound: &mut Vec<usize>) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        for (i, op) in batch.iter().enumerate() {
            match op {
                Op::Set(r, _) => {
                    let old: Option<u64> = tx
                        .query_row(
                            "SELECT length(CAST(topic AS BLOB)) + length(payload) FROM retained WHERE topic = ?1",
                            [&r.topic],
                            |row| row.get::<_, i64>(0).map(|n| n as u64),
                        )
                        .optional()?;
                    let size = (r.topic.len() + r.payload.len()) as u64;
                    let (count, bytes) = match old {
                        Some(old) => (self.count, self.bytes - old + size),
                        None => (self.count + 1, self.bytes + size),
                    };
                    if count > self.bounds.max_messages || bytes > self.bounds.max_bytes {
                        let n = self.stats.over_bound.fetch_add(1, Ordering::Relaxed);
                        if n.is_multiple_of(1000) {
                            tracing::warn!(
                                topic = r.topic,
                                stored = self.count,
                                stored_bytes = self.bytes,
                                "retained message not persisted: broker.max_retained_messages or \
                                 broker.max_retained_bytes reached (it is retained in memory \
                                 until the next restart); raise the bound or clear retained \
                                 topics with an empty retained publish"
                            );
                        }
                        over_bound.push(i);
                        continue;
                    }
                    let expires = r
                        .expiry_s
                        .map(|s| now_ms().saturating_add(i64::from(s) * 1_000));
                    tx.execute(
                        "INSERT INTO retained (topic, qos, payload, expires_at_ms)
                         VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT(topic) DO UPDATE SET
                            qos = excluded.qos, payload = excluded.payload,
                            expires_at_ms = excluded.expires_at_ms",
                        params![r.topic, r.qos, &r.payload[..], expires],
                    )?;
                    (self.count, self.bytes) = (count, bytes);
                }
                Op::Delete(topic, _) => {
                    let old: Option<u64> = tx
                        .query_row(
                            "DELETE FROM retained WHERE topic = ?1
                             RETURNING length(CAST(topic AS BLOB)) + length(payload)",
                            [topic],
                            |row| row.get::<_, i64>(0).map(|n| n as u64),
                        )
                        .optional()?;
                    if let Some(old) = old {
                        self.count -= 1;
                        self.bytes -= old;
                    }
                }
                Op::Flush(_) => {}
            }
        }
        tx.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: Bounds = Bounds {
        max_messages: 1_000,
        max_bytes: 1 << 20,
    };

    fn offer(c: &Capture, topic: &str, payload: &'static [u8]) {
        c.offer(topic, 1, &Bytes::from_static(payload), None);
    }

    #[test]
    fn messages_survive_a_reopen_replaced_and_deleted_per_topic() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), BIG).unwrap();
            let c = store.capture();
            offer(&c, "a/1", b"one");
            offer(&c, "a/2", b"two");
            offer(&c, "a/1", b"uno");
            offer(&c, "a/2", b"");
            c.offer("a/3", 2, &Bytes::from_static(b"exp"), Some(3_600));
            assert!(store.flush(Duration::from_secs(10)));
        }
        let mut store = Store::open(dir.path(), BIG).unwrap();
        let got = store.take_restored();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            (got[0].topic.as_str(), &got[0].payload[..]),
            ("a/1", &b"uno"[..])
        );
        assert_eq!(got[0].expiry_s, None);
        assert_eq!(got[1].qos, 2);
        let left = got[1].expiry_s.unwrap();
        assert!((3_590..=3_600).contains(&left), "{left}");
    }

    #[test]
    fn new_topics_past_the_bound_are_counted_not_stored_and_replacing_still_works() {
        let dir = tempfile::tempdir().unwrap();
        let bounds = Bounds {
            max_messages: 2,
            max_bytes: 1 << 20,
        };
        {
            let store = Store::open(dir.path(), bounds).unwrap();
            let c = store.capture();
            offer(&c, "b/1", b"x");
            offer(&c, "b/2", b"x");
            offer(&c, "b/3", b"x");
            offer(&c, "b/1", b"y");
            assert!(store.flush(Duration::from_secs(10)));
            assert_eq!(store.stats().over_bound.load(Ordering::Relaxed), 1);
            // Deleting frees a place.
            offer(&c, "b/2", b"");
            offer(&c, "b/3", b"z");
            assert!(store.flush(Duration::from_secs(10)));
        }
        let mut store = Store::open(dir.path(), bounds).unwrap();
        let got: Vec<_> = store
            .take_restored()
            .into_iter()
            .map(|r| (r.topic, r.payload))
            .collect();
        assert_eq!(
            got,
            vec![
                ("b/1".to_owned(), Bytes::from_static(b"y")),
                ("b/3".to_owned(), Bytes::from_static(b"z"))
            ]
        );
    }

    #[test]
    fn a_kept_change_settles_its_ticket_once_committed_or_refused_over_the_bound() {
        use crate::kit::durable::{Gate, Lane, Outcome};
        let dir = tempfile::tempdir().unwrap();
        let bounds = Bounds {
            max_messages: 1,
            max_bytes: 1 << 20,
        };
        let store = Store::open(dir.path(), bounds).unwrap();
        let c = store.capture();
        let gate = Gate::new();
        let keep = |topic: &str, n| {
            let ticket = Ticket::new(&gate, Lane::Retained, n);
            c.keep(topic, 1, &Bytes::from_static(b"x"), None, Some(ticket))
                .unwrap();
        };
        keep("k/1", 1);
        keep("k/2", 2); // a second topic: over max_messages
        keep("k/1", 3); // replacing a stored topic always works
        let wait = |n| gate.wait([0, n], Duration::from_secs(10));
        assert_eq!(wait(1), Outcome::Committed);
        assert_eq!(wait(2), Outcome::Refused);
        assert_eq!(wait(3), Outcome::Committed);
    }

    #[test]
    fn the_byte_bound_counts_topic_and_payload() {
        let dir = tempfile::tempdir().unwrap();
        let bounds = Bounds {
            max_messages: 100,
            max_bytes: 10,
        };
        let store = Store::open(dir.path(), bounds).unwrap();
        let c = store.capture();
        offer(&c, "t1", b"12345678"); // 10 bytes: fits exactly
        offer(&c, "t2", b"1"); // over
        assert!(store.flush(Duration::from_secs(10)));
        assert_eq!(store.stats().over_bound.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_unwritable_data_dir_is_a_clear_error() {
        let err = Store::open(Path::new("/proc/perch-no-such-dir"), BIG)
            .err()
            .expect("cannot open there");
        let msg = err.to_string();
        assert!(msg.contains("retained.db"), "{msg}");
        assert!(msg.contains("data directory"), "{msg}");
    }
}
