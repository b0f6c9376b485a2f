//! The store-and-forward buffer: an outbox in SQLite between the functions
//! (and aggregates) that produce records and the upstream that delivers them.
//!
//! # Design
//!
//! One writer thread owns the write connection. Producers hand it records
//! through [`Intake`] (never blocking: when more than `max_pending_records`
//! wait, new ones are refused and counted; a producer that must not drop
//! what it accepted, the function outputs, waits for [`Intake::has_room`]). The thread collects them and
//! commits **one transaction per batch**: when `commit_batch` records wait or
//! `commit_interval_ms` has passed since the last commit, whichever comes
//! first. Upstream reads committed records through its own read-only
//! connection (WAL: readers never block the writer) and reports
//! acknowledgements back through [`Intake::ack`]; the writer deletes
//! acknowledged rows in its next transaction, one count and one plain
//! `DELETE` per run of consecutive seqs (a commit interval's acks, sorted),
//! not one per row, and not `DELETE ... RETURNING`, which costs SQLite
//! about 2.3 times as much on such ranges. Upstream reads through a reusable
//! [`Batch`], so reading a backlog allocates nothing per record.
//!
//! A record a client waits on comes with a [`Ticket`]
//! ([`Intake::forward_kept`]): a QoS 1/2 message on `forward_topics` whose
//! PUBACK (PUBREC) the broker holds until it is committed. The writer
//! commits such records within `ack_commit_interval_ms` of the first one
//! (default 2 ms; the records of that interval share one transaction, so
//! the sync is paid per group, not per message) and then settles their
//! tickets: committed, or refused when `drop_newest` kept them out
//! ([`crate::kit::durable`]).
//!
//! The aggregator ([`crate::aggregate`]) runs on the same thread: a closed
//! window becomes a record in the same batch, and open windows are saved in
//! the same transaction, so records and windows never disagree after a crash.
//!
//! # Durability and the crash-loss window
//!
//! `journal_mode=WAL` always (checked: SQLite answers Ok even when WAL did
//! not take). A record is *committed* when its transaction commits; before
//! that it is only in memory. `synchronous = "full"` is the default, because
//! the promise is "even when the power goes": every commit syncs the WAL
//! before it returns. So:
//!
//! - `kill -9` of perch, or a power cut, loses at most the records accepted
//!   in the last `commit_interval_ms` (default 50 ms) before it, i.e. those
//!   not yet committed; nothing committed is lost. Records a client waits
//!   on are outside that window: nobody was told they were accepted before
//!   their commit;
//! - with `synchronous = "normal"` a crash of perch loses the same, but a
//!   power cut may also lose commits made since the last WAL sync (SQLite
//!   syncs the WAL at checkpoints), seconds of records; the database stays
//!   consistent.
//!
//! The sync is paid per commit, not per record: measured with
//! `cargo bench -p perch --bench buffer` (docs/performance.md, "Buffer performance"),
//! batched commits reach about 214 k records/s with `full` and 248 k with
//! `normal` on the development VM, against 1.9 k and 11.9 k records/s
//! committing each record alone.
//!
//! A committed record is deleted only after upstream acknowledged it (MQTT
//! PUBACK / HTTP 2xx), or by the bounds below, which are counted. After a
//! restart upstream starts from the oldest row again, so records sent but not
//! yet acknowledged before a crash are sent again: delivery is at least once,
//! and the id lets the receiver drop duplicates.
//!
//! # Schema
//!
//! ```sql
//! records (seq INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT, kind INTEGER,
//!          created_ms INTEGER, payload BLOB)
//! windows (metric TEXT, key TEXT, closed_until_ms INTEGER, open TEXT /* JSON */,
//!          PRIMARY KEY (metric, key))
//! dead_letters (seq INTEGER PRIMARY KEY, stream, kind, created_ms, payload,
//!               status INTEGER, response TEXT, failed_ms INTEGER)
//! link_totals (destination, stream, offered/sent/acked records and bytes)
//! ```
//!
//! Invariants:
//! - `seq` grows with every insert and is never reused (AUTOINCREMENT keeps
//!   the high-water mark even when the table empties), so `<gateway id>-<seq>`
//!   is a stable, unique record id. Upstream reads in `seq` order (the
//!   backlog and live records each in `seq` order when
//!   `drain.order = "live_first"`: `crate::upstream::pacing`), which is
//!   also the order within each stream.
//! - `kind`: 0 a record a function forwarded, 1 an aggregate, 2 a summary that
//!   replaced raw records under the `degrade` policy, 3 a mirrored message
//!   (`upstream.mirror`): `stream` is the topic it goes to upstream and
//!   `payload` the message's bytes, sent as they are, without an envelope.
//!   `degrade` summarizes only kind 0.
//! - Trigger events kept for `perch fn replay` are a kind of their own in a
//!   table of their own, `events (seq, function, topic, created_ms,
//!   expires_ms, payload)`, never forwarded and bounded apart from
//!   `records` ([`events`]).
//! - The writer's running totals of rows and bytes (`length(stream) +
//!   length(payload)`) match the table after every commit; they are loaded
//!   with one query at start.
//!
//! # Bounds
//!
//! After each commit: records older than `max_age_s` are deleted (counted as
//! expired); then while the table holds more than `max_bytes`, `when_full`
//! applies: `drop_oldest` deletes the oldest rows, `drop_newest` refuses the
//! new ones that do not fit (before inserting them), `degrade` replaces the
//! oldest raw records of a stream by one summary record, and drops the oldest
//! rows only when no raw records are left. Each is counted in [`Stats`].
//!
//! The disk bounds it too: before each commit the writer measures the free
//! space of the data directory's file system (one `statvfs`), and the
//! commit's bound is the smaller of `max_bytes` and what the disk allows
//! above `min_free_bytes` ([`store::disk_room`]), so below the reserve the
//! buffer is full at its current size and `when_full` applies as at
//! `max_bytes`: the buffer never fills the disk. Pages freed by deletions
//! stay in `buffer.db` (SQLite's freelist) and count as room. While the disk
//! is low the WAL is checkpointed and restarted after each commit and kept
//! at most 1 MiB (`journal_size_limit`), so acknowledged deletions always
//! have room and the buffer recovers when upstream drains it.
//!
//! # Errors
//!
//! A failed commit (disk full, read-only file system, I/O error) changes
//! nothing: the batch stays in memory, the error is logged and counted, and
//! the commit is retried with a growing delay (up to 5 s). While it fails,
//! producers are refused once `max_pending_records` wait. When a commit
//! with acknowledgements fails, those are committed alone at once, so the
//! space their deletion frees is there for the retry. The gateway stays up
//! and recovers by itself when the disk does.

mod config;
mod counters;
mod degrade;
mod events;
mod reads;
mod record;
mod store;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub use self::config::{BufferConfig, Synchronous, WhenFull};
pub use self::counters::{LinkTotals, Row as LinkRow, Slot, Stage, Totals, MAX_STREAMS, OTHER};
pub use self::events::{max_event_bytes, KeptEvent, NewEvent};
pub use self::reads::replay_dead_letters;
pub use self::reads::DeadLetter;
pub use self::record::{Batch, RecordRef, StoredRecord};
use self::store::{NewRecord, Store};
pub use self::store::{Reader, KIND_AGGREGATE, KIND_RECORD, KIND_SUMMARY};
use self::writer::{publish_gauges, FreeSpace, Writer};
use crate::aggregate::{AggregateConfig, Aggregator};
use crate::kit::clock::now_ms;
use crate::kit::durable::Ticket;

/// `kind` of a mirrored message: delivered raw to the topic in its
/// `stream` (see the schema above).
pub const KIND_MIRROR: i64 = 3;

/// File name of the buffer's database inside the data directory.
pub const FILE_NAME: &str = "buffer.db";

/// Longest metric or key name `emit` accepts; names live inline so an emit
/// allocates nothing.
pub const MAX_NAME_LEN: usize = 64;
/// A metric or key name, stored inline.
pub type Name = heapless::String<MAX_NAME_LEN>;

/// Why the buffer failed or refused.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("cannot open the buffer database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the buffer database {path} cannot use WAL journaling (got {mode:?}); put the data \
         directory on a local file system that supports shared memory (not NFS)"
    )]
    NoWal { path: PathBuf, mode: String },
    #[error("cannot start the buffer's writer thread: {0}")]
    Thread(std::io::Error),
    #[error("the buffer is not accepting records: {0} records wait for the disk already")]
    Backlog(usize),
    #[error("the buffer has stopped")]
    Stopped,
    #[error("the name {0:?} is longer than {MAX_NAME_LEN} bytes")]
    NameTooLong(String),
}

/// Counters and gauges of the buffer, updated by the writer thread.
#[derive(Debug, Default)]
pub struct Stats {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    /// created_ms of the oldest record, 0 when empty.
    pub oldest_ms: AtomicI64,
    pub commits: AtomicU64,
    pub committed: AtomicU64,
    pub acked: AtomicU64,
    pub dropped_oldest: AtomicU64,
    pub dropped_newest: AtomicU64,
    pub expired: AtomicU64,
    pub degraded: AtomicU64,
    /// Refused at intake because too many records waited for the disk.
    pub refused_backlog: AtomicU64,
    pub write_errors: AtomicU64,
    pub aggregates: AtomicU64,
    /// Emitted values for a window already written or past its grace.
    pub late_events: AtomicU64,
    /// Emitted values whose time was more than `aggregate.max_ahead_ms`
    /// ahead of the gateway's clock.
    pub ahead_events: AtomicU64,
    pub refused_emits: AtomicU64,
    pub open_windows: AtomicU64,
    /// Trigger events kept for `perch fn replay` ([`events`]), and those
    /// deleted again (expired or over their byte bound).
    pub events_kept: AtomicU64,
    pub events_dropped: AtomicU64,
    /// Bytes of kept events now.
    pub event_bytes: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Whether the last commit attempt failed (the database is not
    /// writable now); read by the admin listener's `/readyz`.
    pub commit_failing: std::sync::atomic::AtomicBool,
    /// Free bytes on the data directory's file system, measured when the
    /// buffer opened, then before each commit.
    pub disk_free: AtomicU64,
    /// Whether the buffer is full because of the disk (at
    /// `min_free_bytes`): set when a commit found less free than the reserve
    /// or had to drop records to stay above it; cleared when one finds twice
    /// the reserve free (counting the free pages inside `buffer.db`).
    pub disk_full: std::sync::atomic::AtomicBool,
    /// Records and bytes per upstream destination and stream, offered,
    /// sent and acknowledged: counted by upstream, persisted by the writer
    /// ([`counters`]).
    pub links: LinkTotals,
}

enum Command {
    Forward(NewRecord),
    /// A record whose client waits for its commit (the broker holds its
    /// PUBACK): settled once committed or refused.
    ForwardKept(NewRecord, Ticket),
    Emit {
        metric: Name,
        key: Name,
        value: f64,
        ts_ms: i64,
    },
    Keep(NewEvent),
    Ack(i64),
    Acks(Vec<i64>),
    DeadLetter {
        seqs: Vec<i64>,
        status: u16,
        response: String,
    },
    Flush(mpsc::SyncSender<()>),
}

/// The producers' side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Intake {
    tx: mpsc::Sender<Command>,
    /// Records (and emits) accepted but not yet committed: bounds what waits
    /// in memory (the channel, which std offers unbounded only, and the
    /// writer's batch) while the disk is slow or failing.
    pending: Arc<AtomicUsize>,
    max_pending: usize,
    stats: Arc<Stats>,
}

impl Intake {
    /// Accepts a record for upstream in `stream`.
    pub fn forward(&self, stream: &str, record: &[u8]) -> Result<(), BufferError> {
        self.forward_kept(stream, record, None)
    }

    /// [`Intake::forward`] for a message a client waits on: `ticket` is
    /// settled when the transaction that holds the record commits (within
    /// `ack_commit_interval_ms`), or as refused if the commit cannot take
    /// it (`drop_newest` at the bound). A refusal here takes no ticket.
    pub fn forward_kept(
        &self,
        stream: &str,
        record: &[u8],
        ticket: Option<Ticket>,
    ) -> Result<(), BufferError> {
        self.reserve()?;
        self.record_kept(stream.to_owned(), KIND_RECORD, record, ticket)
    }

    /// A message mirrored upstream as it is (`upstream.mirror`), to
    /// `upstream_topic`; `ticket` as for [`Intake::forward_kept`].
    pub fn mirror_kept(
        &self,
        upstream_topic: String,
        payload: &[u8],
        ticket: Option<Ticket>,
    ) -> Result<(), BufferError> {
        self.reserve()?;
        self.record_kept(upstream_topic, KIND_MIRROR, payload, ticket)
    }

    /// Sends a record [`Intake::reserve`] made room for to the writer.
    fn record_kept(
        &self,
        stream: String,
        kind: i64,
        payload: &[u8],
        ticket: Option<Ticket>,
    ) -> Result<(), BufferError> {
        let record = NewRecord {
            stream,
            kind,
            created_ms: now_ms(),
            payload: payload.to_vec(),
        };
        self.send(match ticket {
            Some(ticket) => Command::ForwardKept(record, ticket),
            None => Command::Forward(record),
        })
    }

    /// Adds a value to the (metric, key) window that holds `ts_ms`.
    pub fn emit(&self, metric: &str, key: &str, value: f64, ts_ms: i64) -> Result<(), BufferError> {
        let name = |s: &str| Name::try_from(s).map_err(|_| BufferError::NameTooLong(s.to_owned()));
        self.emit_named(name(metric)?, name(key)?, value, ts_ms)
    }

    /// [`Intake::emit`] for names already inline: allocates nothing.
    pub fn emit_named(
        &self,
        metric: Name,
        key: Name,
        value: f64,
        ts_ms: i64,
    ) -> Result<(), BufferError> {
        self.reserve()?;
        self.send(Command::Emit {
            metric,
            key,
            value,
            ts_ms,
        })
    }

    /// Keeps a function's trigger event for `perch fn replay` until
    /// `expires_ms` (never forwarded; see [`events`]). Takes the broker's
    /// buffers as they are: allocates nothing.
    pub fn keep_event(&self, event: NewEvent) -> Result<(), BufferError> {
        self.reserve()?;
        self.send(Command::Keep(event))
    }

    /// Marks a record acknowledged by upstream; it is deleted in the next
    /// transaction.
    pub fn ack(&self, seq: i64) {
        let _ = self.tx.send(Command::Ack(seq));
    }

    /// Marks the records of one upstream message or batch acknowledged:
    /// one message to the writer for all of them.
    pub fn ack_many(&self, seqs: Vec<i64>) {
        if !seqs.is_empty() {
            let _ = self.tx.send(Command::Acks(seqs));
        }
    }

    /// Moves records the upstream refused for good to the dead-letter table
    /// (with the status and response that refused them).
    pub fn dead_letter(&self, seqs: Vec<i64>, status: u16, response: String) {
        let _ = self.tx.send(Command::DeadLetter {
            seqs,
            status,
            response,
        });
    }

    /// Commits what waits now and returns when it is committed (or the
    /// commit failed).
    pub fn flush(&self) -> Result<(), BufferError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Command::Flush(tx))
            .map_err(|_| BufferError::Stopped)?;
        rx.recv().map_err(|_| BufferError::Stopped)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Whether a record would be taken now: fewer than
    /// `max_pending_records` wait for the disk. For producers that wait
    /// for room rather than be refused.
    pub fn has_room(&self) -> bool {
        self.pending.load(Ordering::Relaxed) < self.max_pending
    }

    fn reserve(&self) -> Result<(), BufferError> {
        let waiting = self.pending.fetch_add(1, Ordering::Relaxed);
        if waiting >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            self.stats.refused_backlog.fetch_add(1, Ordering::Relaxed);
            return Err(BufferError::Backlog(waiting));
        }
        Ok(())
    }

    fn send(&self, command: Command) -> Result<(), BufferError> {
        self.tx.send(command).map_err(|_| {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            BufferError::Stopped
        })
    }
}

/// The running buffer.
pub struct Buffer {
    intake: Intake,
    path: PathBuf,
    new_records: Arc<tokio::sync::Notify>,
    /// Detached: the writer ends when the last intake is dropped.
    _thread: JoinHandle<()>,
}

impl Buffer {
    /// Opens (or creates) `buffer.db` in `data_dir`, restores open windows
    /// and starts the writer thread.
    pub fn open(
        config: &BufferConfig,
        aggregate: &AggregateConfig,
        data_dir: &Path,
    ) -> Result<Buffer, BufferError> {
        let dir = data_dir.to_owned();
        Buffer::open_measured(
            config,
            aggregate,
            data_dir,
            Box::new(move || store::free_bytes(&dir)),
        )
    }

    /// [`Buffer::open`] with the free-space measurement given (unit tests
    /// give a number they control).
    fn open_measured(
        config: &BufferConfig,
        aggregate: &AggregateConfig,
        data_dir: &Path,
        free_space: FreeSpace,
    ) -> Result<Buffer, BufferError> {
        let path = data_dir.join(FILE_NAME);
        let store = Store::open(&path, config)?;
        let mut agg = Aggregator::new(aggregate.clone());
        let restored = store
            .restore_windows(&mut agg)
            .map_err(|source| BufferError::Open {
                path: path.clone(),
                source,
            })?;
        let stats = Arc::new(Stats {
            links: LinkTotals::load(&path, config.synchronous)?,
            ..Stats::default()
        });
        publish_gauges(&store, &agg, &stats);
        tracing::info!(
            records = store.records(),
            bytes = store.bytes(),
            windows = restored,
            "buffer open: {}",
            path.display()
        );
        let measured = free_space();
        // Measured now, not only before the first commit: `/readyz` and
        // `perch_buffer_disk_free_bytes` report it from the start (a gateway
        // with nothing to commit yet otherwise said 0 bytes free).
        if let Ok(free) = measured {
            stats.disk_free.store(free, Ordering::Relaxed);
        }
        match measured {
            Ok(free) if free < config.min_free_bytes => tracing::warn!(
                free,
                min_free_bytes = config.min_free_bytes,
                "buffer: the data directory's file system has less free space than \
                 buffer.min_free_bytes; the buffer holds no more than it holds now until \
                 space is freed (free some, or lower buffer.min_free_bytes)"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                error = %e,
                "buffer: cannot measure the data directory's free space; only \
                 buffer.max_bytes bounds the buffer"
            ),
        }
        let (tx, rx) = mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let new_records = Arc::new(tokio::sync::Notify::new());
        let writer = Writer::new(
            store,
            agg,
            config,
            stats.clone(),
            pending.clone(),
            new_records.clone(),
            free_space,
        );
        let thread = std::thread::Builder::new()
            .name("perch-buffer".into())
            .spawn(move || writer.run(rx))
            .map_err(BufferError::Thread)?;
        Ok(Buffer {
            intake: Intake {
                tx,
                pending,
                max_pending: config.max_pending_records,
                stats,
            },
            path,
            new_records,
            _thread: thread,
        })
    }

    pub fn intake(&self) -> Intake {
        self.intake.clone()
    }

    pub fn stats(&self) -> &Stats {
        &self.intake.stats
    }

    /// A new read-only connection for a reader (upstream, CLI).
    pub fn reader(&self) -> Result<Reader, BufferError> {
        Reader::open(&self.path)
    }

    /// Notified after each commit that added records.
    pub fn new_records(&self) -> Arc<tokio::sync::Notify> {
        self.new_records.clone()
    }

    /// Commits what waits. The writer thread ends by itself once every
    /// intake handle is dropped.
    pub fn close(self) {
        let _ = self.intake.flush();
    }
}

#[cfg(test)]
mod tests;
