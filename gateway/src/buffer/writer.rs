//! The buffer's writer thread: takes what the intakes send, commits it in
//! batches (and what clients wait on within `ack_commit_interval_ms`),
//! applies the bounds, and reports what it did (see the module doc of
//! [`super`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::store::{self, Disk, NewRecord, Pending, Store};
use super::{BufferConfig, Command, Stats, KIND_AGGREGATE};
use crate::aggregate::{Aggregator, Emitted};
use crate::kit::clock::now_ms;
use crate::kit::durable::{self, Ticket};

/// Measures the free bytes of the data directory's file system.
pub(super) type FreeSpace = Box<dyn Fn() -> std::io::Result<u64> + Send>;

pub(super) struct Writer {
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
    pub(super) fn new(
        store: Store,
        agg: Aggregator,
        config: &BufferConfig,
        stats: Arc<Stats>,
        waiting: Arc<AtomicUsize>,
        new_records: Arc<tokio::sync::Notify>,
        free_space: FreeSpace,
    ) -> Writer {
        Writer {
            store,
            agg,
            config: config.clone(),
            stats,
            waiting,
            new_records,
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
        }
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Command>) {
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
                    self.commit(true);
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
                if self.commit(flush.is_some()) {
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
                let now = now_ms();
                match (self.agg).emit(&metric, &key, value, ts_ms, now, &mut self.closed) {
                    Emitted::Merged => {}
                    Emitted::Late => {
                        self.stats.late_events.fetch_add(1, Ordering::Relaxed);
                    }
                    Emitted::Ahead => {
                        self.stats.ahead_events.fetch_add(1, Ordering::Relaxed);
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

    /// One transaction; returns whether it committed. The link totals
    /// ride along with a transaction that writes anyway, never one of their
    /// own (nor a sync of their own), except with `totals_alone`: the last
    /// commit and an explicit flush. At the disk's reserve they wait in
    /// memory: records come first.
    fn commit(&mut self, totals_alone: bool) -> bool {
        let now = now_ms();
        self.agg.close_due(now, &mut self.closed);
        self.move_closed();
        let added = !self.pending.records.is_empty();
        let totals_alone = totals_alone && self.stats.links.changed();
        if self.pending.is_empty() && !self.emitted && !totals_alone && !self.store_needs_pass(now)
        {
            self.release();
            return true;
        }
        self.last_store_pass_ms = now;
        if totals_alone || !self.stats.disk_full.load(Ordering::Relaxed) {
            self.stats.links.take_changed(&mut self.pending.totals);
        }
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
        if result.is_ok() {
            self.stats.links.persisted(&self.pending.totals);
        } else if !self.pending.totals.is_empty() {
            self.stats.links.unwritten();
        }
        self.pending.totals.clear();
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

pub(super) fn publish_gauges(store: &Store, agg: &Aggregator, stats: &Stats) {
    stats.records.store(store.records(), Ordering::Relaxed);
    stats.bytes.store(store.bytes(), Ordering::Relaxed);
    stats
        .oldest_ms
        .store(store.oldest_ms().unwrap_or(0), Ordering::Relaxed);
    stats
        .open_windows
        .store(agg.open_windows() as u64, Ordering::Relaxed);
}
