//! The store-and-forward buffer: an outbox in SQLite between the functions
//! (and aggregates) that produce records and the upstream that delivers them.
//!
//! # Design
//!
//! One writer thread owns the write connection. Producers hand it records
//! through [`Intake`] (never blocking: when more than `max_pending_records`
//! wait, new ones are refused and counted). The thread collects them and
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
//! ([`crate::durable`]).
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
//! ```
//!
//! Invariants:
//! - `seq` grows with every insert and is never reused (AUTOINCREMENT keeps
//!   the high-water mark even when the table empties), so `<gateway id>-<seq>`
//!   is a stable, unique record id. Upstream sends in `seq` order, which is
//!   also the order within each stream.
//! - `kind`: 0 a record a function forwarded, 1 an aggregate, 2 a summary that
//!   replaced raw records under the `degrade` policy.
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
mod events;
mod store;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use self::config::{BufferConfig, Synchronous, WhenFull};
pub use self::events::{max_event_bytes, KeptEvent, NewEvent};
pub use self::store::{
    replay_dead_letters, Batch, DeadLetter, Reader, RecordRef, StoredRecord, KIND_AGGREGATE,
    KIND_RECORD, KIND_SUMMARY,
};
use self::store::{Disk, NewRecord, Pending, Store};
use crate::aggregate::{AggregateConfig, Aggregator, Emitted};
use crate::durable::{self, Ticket};

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
    pub late_events: AtomicU64,
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
    /// Free bytes on the data directory's file system, measured before the
    /// last commit.
    pub disk_free: AtomicU64,
    /// Whether the buffer is full because of the disk (at
    /// `min_free_bytes`): set when a commit found less free than the reserve
    /// or had to drop records to stay above it; cleared when one finds twice
    /// the reserve free (counting the free pages inside `buffer.db`).
    pub disk_full: std::sync::atomic::AtomicBool,
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
        let record = NewRecord {
            stream: stream.to_owned(),
            kind: KIND_RECORD,
            created_ms: now_ms(),
            payload: record.to_vec(),
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
        let stats = Arc::new(Stats::default());
        publish_gauges(&store, &agg, &stats);
        tracing::info!(
            records = store.records(),
            bytes = store.bytes(),
            windows = restored,
            "buffer open: {}",
            path.display()
        );
        match free_space() {
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
        let writer = Writer {
            store,
            agg,
            config: config.clone(),
            stats: stats.clone(),
            waiting: pending.clone(),
            new_records: new_records.clone(),
            pending: Pending {
                records: Vec::with_capacity(config.commit_batch),
                ..Pending::default()
            },
            closed: Vec::new(),
            tickets: Vec::new(),
            tickets_since: None,
            emitted: false,
            taken: 0,
            failures: 0,
            free_space,
            measure_failed: false,
            last_store_pass_ms: 0,
        };
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

/// Measures the free bytes of the data directory's file system.
type FreeSpace = Box<dyn Fn() -> std::io::Result<u64> + Send>;

struct Writer {
    store: Store,
    /// Measured once per commit (one `statvfs`).
    free_space: FreeSpace,
    /// The last measurement failed (logged once per streak).
    measure_failed: bool,
    /// When the store last ran a commit pass (ms since the epoch).
    last_store_pass_ms: i64,
    agg: Aggregator,
    config: BufferConfig,
    stats: Arc<Stats>,
    /// Shared with the intakes: records and emits accepted but not yet
    /// committed (queued in the channel or taken into `pending`). Released
    /// only by a successful commit, so a failing disk bounds memory at
    /// `max_pending_records`.
    waiting: Arc<AtomicUsize>,
    /// How many of `waiting` this writer has taken since the last commit.
    taken: usize,
    /// Failed commits in a row (0 while commits work).
    failures: u64,
    new_records: Arc<tokio::sync::Notify>,
    /// What the next transaction writes.
    pending: Pending,
    /// Records of `pending` a client waits for (the broker holds their
    /// PUBACK): position in `pending.records` and ticket, settled by the
    /// commit that covers them.
    tickets: Vec<(usize, Ticket)>,
    /// When the oldest of `tickets` arrived: they commit within
    /// `ack_commit_interval_ms` of it, not `commit_interval_ms`.
    tickets_since: Option<Instant>,
    closed: Vec<crate::aggregate::Window>,
    /// Values were emitted since the last commit: windows need saving.
    emitted: bool,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        let interval = Duration::from_millis(self.config.commit_interval_ms);
        let ack_interval = Duration::from_millis(self.config.ack_commit_interval_ms);
        let mut next_commit = Instant::now() + interval;
        let mut retry_delay = interval;
        loop {
            // A client waiting for its PUBACK shortens the wait, except
            // while commits fail (then the retry delay paces them).
            let ack_at = self
                .tickets_since
                .filter(|_| self.failures == 0)
                .map(|t| t + ack_interval);
            let until = ack_at.map_or(next_commit, |a| a.min(next_commit));
            let wait = until.saturating_duration_since(Instant::now());
            let mut flush = None;
            match rx.recv_timeout(wait) {
                Ok(command) => self.take(command, &mut flush),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.commit();
                    return;
                }
            }
            // Drain what else is queued without waiting, up to a batch.
            while self.pending.records.len() < self.config.commit_batch && flush.is_none() {
                match rx.try_recv() {
                    Ok(command) => self.take(command, &mut flush),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            let due = now >= next_commit
                || self
                    .tickets_since
                    .is_some_and(|t| self.failures == 0 && now >= t + ack_interval);
            if flush.is_some() || due || self.pending.records.len() >= self.config.commit_batch {
                if self.commit() {
                    retry_delay = interval;
                    next_commit = Instant::now() + interval;
                } else {
                    retry_delay = (retry_delay * 2).min(Duration::from_secs(5));
                    next_commit = Instant::now() + retry_delay;
                }
                if let Some(reply) = flush {
                    let _ = reply.send(());
                }
            }
        }
    }

    fn take(&mut self, command: Command, flush: &mut Option<mpsc::SyncSender<()>>) {
        match command {
            Command::Forward(record) => {
                self.taken += 1;
                self.pending.records.push(record);
            }
            Command::ForwardKept(record, ticket) => {
                self.taken += 1;
                self.tickets.push((self.pending.records.len(), ticket));
                self.tickets_since.get_or_insert_with(Instant::now);
                self.pending.records.push(record);
            }
            Command::Emit {
                metric,
                key,
                value,
                ts_ms,
            } => {
                self.taken += 1;
                self.emitted = true;
                match self.agg.emit(&metric, &key, value, ts_ms, &mut self.closed) {
                    Emitted::Merged => {}
                    Emitted::Late => {
                        self.stats.late_events.fetch_add(1, Ordering::Relaxed);
                    }
                    Emitted::TooManySeries | Emitted::NotFinite => {
                        self.stats.refused_emits.fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.move_closed();
            }
            Command::Keep(event) => {
                self.taken += 1;
                self.pending.events.push(event);
            }
            Command::Ack(seq) => self.pending.acks.push(seq),
            Command::Acks(seqs) => self.pending.acks.extend_from_slice(&seqs),
            Command::DeadLetter {
                seqs,
                status,
                response,
            } => self.pending.dead.push((seqs, status, response)),
            Command::Flush(reply) => *flush = Some(reply),
        }
    }

    fn move_closed(&mut self) {
        let stream = &self.agg.config().stream;
        for w in self.closed.drain(..) {
            self.stats.aggregates.fetch_add(1, Ordering::Relaxed);
            self.pending.records.push(NewRecord {
                stream: stream.clone(),
                kind: KIND_AGGREGATE,
                created_ms: w.end_ms(),
                payload: w.to_record(),
            });
        }
    }

    /// One transaction; returns whether it committed.
    fn commit(&mut self) -> bool {
        let now = now_ms();
        self.agg.close_due(now, &mut self.closed);
        self.move_closed();
        let added = !self.pending.records.is_empty();
        if self.pending.is_empty() && !self.emitted && !self.store_needs_pass(now) {
            self.release();
            return true;
        }
        self.last_store_pass_ms = now;
        let disk = self.measure();
        let result = self.store.commit(
            &mut self.pending,
            &mut self.agg,
            now,
            &self.config,
            &self.stats,
            disk,
        );
        let result = match result {
            Err(e) if !self.pending.acks.is_empty() || !self.pending.dead.is_empty() => {
                // The disk may have no room for the new records but enough
                // for deleting what upstream acknowledged: commit those
                // alone, so the space they free is there for the retry.
                let mut acks = Pending {
                    acks: std::mem::take(&mut self.pending.acks),
                    dead: std::mem::take(&mut self.pending.dead),
                    ..Pending::default()
                };
                let mut no_windows = Aggregator::new(self.agg.config().clone());
                match self.store.commit(
                    &mut acks,
                    &mut no_windows,
                    now,
                    &self.config,
                    &self.stats,
                    disk,
                ) {
                    Ok(_) => self.restart_wal(),
                    Err(_) => {
                        self.pending.acks = acks.acks;
                        self.pending.dead = acks.dead;
                    }
                }
                Err(e)
            }
            other => other,
        };
        match result {
            Ok(outcome) => {
                self.note_disk(disk, outcome);
                self.emitted = false;
                self.release();
                self.settle();
                if self.failures > 0 {
                    tracing::info!(
                        failed_commits = self.failures,
                        "buffer: commits work again; what waited in memory is committed"
                    );
                    self.failures = 0;
                }
                self.stats.commit_failing.store(false, Ordering::Relaxed);
                publish_gauges(&self.store, &self.agg, &self.stats);
                if added {
                    self.new_records.notify_one();
                }
                true
            }
            Err(e) => {
                // A disk filled from outside fails the commit before the
                // bound can say so: report the reserve from the measurement.
                if let Some(d) = disk.filter(|d| d.free < self.config.min_free_bytes) {
                    let full = store::DiskOutcome {
                        full: true,
                        roomy: false,
                        low: true,
                    };
                    self.note_disk(Some(d), full);
                }
                self.stats.commit_failing.store(true, Ordering::Relaxed);
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                // Every failure is counted; the log says it once per streak
                // and then every 100th time, so a full disk cannot fill it.
                if self.failures.is_multiple_of(100) {
                    tracing::error!(
                        error = %e,
                        waiting = self.pending.records.len(),
                        "buffer: commit failed; keeping the batch in memory and retrying"
                    );
                }
                *self.stats.last_error.lock().expect("lock") = Some(e.to_string());
                self.failures += 1;
                self.agg.mark_all_dirty();
                false
            }
        }
    }

    /// The free space now, as the store's disk bound wants it (None when it
    /// cannot be measured; logged once per streak).
    fn measure(&mut self) -> Option<Disk> {
        match (self.free_space)() {
            Ok(free) => {
                self.measure_failed = false;
                self.stats.disk_free.store(free, Ordering::Relaxed);
                Some(Disk { free })
            }
            Err(e) => {
                if !self.measure_failed {
                    tracing::warn!(
                        error = %e,
                        "buffer: cannot measure the data directory's free space; only \
                         buffer.max_bytes bounds the buffer until it can"
                    );
                    self.measure_failed = true;
                }
                None
            }
        }
    }

    /// Reports the reserve's state changes, and keeps the WAL small while
    /// the disk is low.
    fn note_disk(&mut self, disk: Option<Disk>, outcome: store::DiskOutcome) {
        let was = self.stats.disk_full.load(Ordering::Relaxed);
        let now = if outcome.full {
            true
        } else if outcome.roomy {
            false
        } else {
            was
        };
        if now != was {
            self.stats.disk_full.store(now, Ordering::Relaxed);
            let free = disk.map_or(0, |d| d.free);
            if now {
                tracing::warn!(
                    free,
                    min_free_bytes = self.config.min_free_bytes,
                    when_full = ?self.config.when_full,
                    records = self.store.records(),
                    "buffer: the disk is at buffer.min_free_bytes; the buffer is full at its \
                     current size and when_full applies until upstream drains it or space is \
                     freed"
                );
            } else {
                tracing::info!(
                    free,
                    "buffer: the disk has room again (twice buffer.min_free_bytes); the \
                     buffer is no longer full"
                );
            }
        }
        if outcome.low {
            self.restart_wal();
        }
    }

    /// Restarts the WAL (see [`Store::restart_wal`]); a failure is only
    /// logged at debug level: the next low-space commit tries again.
    fn restart_wal(&self) {
        match self.store.restart_wal() {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!("buffer: WAL checkpoint waited for a reader; retrying later")
            }
            Err(e) => tracing::debug!(error = %e, "buffer: WAL checkpoint failed"),
        }
    }

    /// Tells the clients waiting for the records just committed: those
    /// past `pending.inserted` were refused by `drop_newest`.
    fn settle(&mut self) {
        let inserted = self.pending.inserted;
        durable::settle(self.tickets.drain(..).map(|(i, t)| (t, i < inserted)));
        self.tickets_since = None;
    }

    /// The intakes may accept again what this writer has committed.
    fn release(&mut self) {
        if self.taken > 0 {
            self.waiting.fetch_sub(self.taken, Ordering::Relaxed);
            self.taken = 0;
        }
    }

    /// Whether the bounds need a pass even without new rows (age expiry).
    fn store_needs_pass(&self, now: i64) -> bool {
        let oldest = self.stats.oldest_ms.load(Ordering::Relaxed);
        let expired = oldest != 0 && oldest < now - (self.config.max_age_s as i64) * 1000;
        // Full because of the disk: look again once a second even with
        // nothing to write, or the last drain's deletes (and the WAL
        // checkpoint after them) would free room nobody notices until the
        // next record comes.
        let disk_full =
            self.stats.disk_full.load(Ordering::Relaxed) && now - self.last_store_pass_ms >= 1000;
        expired || disk_full
    }
}

fn publish_gauges(store: &Store, agg: &Aggregator, stats: &Stats) {
    stats.records.store(store.records(), Ordering::Relaxed);
    stats.bytes.store(store.bytes(), Ordering::Relaxed);
    stats
        .oldest_ms
        .store(store.oldest_ms().unwrap_or(0), Ordering::Relaxed);
    stats
        .open_windows
        .store(agg.open_windows() as u64, Ordering::Relaxed);
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
