//! What the MQTT delivery sends next: the live lane and the backlog lane
//! of one connection ([`super::pacing`] says what each is), each read
//! from the buffer in `seq` order through its own reusable batches, with
//! the next query already running while a full batch goes out.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::pacing::{Backlog, DrainConfig, DrainOrder, Pacer};
use super::{Message, Packing};
use crate::buffer::{Batch, Reader};

/// A query of the buffer running on a blocking thread: it hands back the
/// batch it filled.
type Read = tokio::task::JoinHandle<(Batch, rusqlite::Result<()>)>;

/// Starts reading up to `limit` records with `after < seq <= until` into
/// `batch`.
fn start_read(
    reader: &Arc<Mutex<Reader>>,
    after: i64,
    until: i64,
    limit: usize,
    mut batch: Batch,
) -> Read {
    let reader = reader.clone();
    tokio::task::spawn_blocking(move || {
        let result = reader
            .lock()
            .expect("reader lock")
            .read_after(after, until, limit, &mut batch);
        (batch, result)
    })
}

/// The highest `seq` committed now: the watermark between backlog and live.
pub(super) async fn watermark(reader: &Arc<Mutex<Reader>>) -> Result<i64, String> {
    let reader = reader.clone();
    tokio::task::spawn_blocking(move || reader.lock().expect("reader lock").newest_seq())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading the buffer: {e}"))
}

/// One lane's messages packed and waiting, and its reads.
#[derive(Default)]
struct Lane {
    ready: VecDeque<Message>,
    /// A read started after a full batch, with the range it reads.
    prefetch: Option<(Read, i64, i64)>,
    /// The batch not being read into: two batches in turn serve every query.
    spare: Batch,
}

impl Lane {
    /// Reads the next records of `(after, until]` and packs them into
    /// `ready`. Returns the last `seq` read and whether the batch was full
    /// (more may follow).
    async fn fill(
        &mut self,
        reader: &Arc<Mutex<Reader>>,
        (after, until): (i64, i64),
        limit: usize,
        packing: &Packing<'_>,
        too_big: &mut Vec<(i64, usize)>,
    ) -> Result<(Option<i64>, bool), String> {
        let read = match self.prefetch.take() {
            Some((read, a, u)) if (a, u) == (after, until) => read,
            _ => start_read(reader, after, until, limit, std::mem::take(&mut self.spare)),
        };
        let (rows, result) = read.await.map_err(|e| e.to_string())?;
        result.map_err(|e| format!("reading the buffer: {e}"))?;
        let last = rows.last_seq();
        let full = rows.len() >= limit;
        if let (Some(last), true) = (last, full) {
            let next = start_read(reader, last, until, limit, std::mem::take(&mut self.spare));
            self.prefetch = Some((next, last, until));
        }
        packing.pack(rows.iter(), &mut self.ready, too_big);
        self.spare = rows;
        Ok((last, full))
    }
}

/// The two lanes of one connection and the backlog's pace.
pub(super) struct Drain {
    order: DrainOrder,
    pacer: Pacer,
    backlog: Backlog,
    /// Live records up to here were read.
    live_cursor: i64,
    /// Live records may have been committed since the live lane last read:
    /// set by the buffer's notification (and a timer), cleared by a read
    /// that came back short.
    pub live_check: bool,
    live: Lane,
    old: Lane,
    /// Records per query.
    limit: usize,
}

/// Which lane a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum From {
    Live,
    Backlog,
}

impl Drain {
    /// A connection that came up with `watermark` the newest committed
    /// `seq`: everything up to it is backlog.
    pub(super) fn new(config: &DrainConfig, watermark: i64, limit: usize) -> Drain {
        let mut backlog = Backlog::default();
        let live_cursor = backlog.link_up(0, watermark);
        Drain {
            order: config.order,
            pacer: Pacer::new(config),
            backlog,
            live_cursor,
            live_check: true,
            live: Lane::default(),
            old: Lane::default(),
            limit,
        }
    }

    fn backlog_left(&self) -> bool {
        !self.backlog.is_empty() || !self.old.ready.is_empty()
    }

    /// When the backlog may send again, if it waits for its pace now.
    pub(super) fn paced_until(&self) -> Option<Instant> {
        if !self.backlog_left() {
            return None;
        }
        self.pacer.wait_until(Instant::now())
    }

    /// The message to publish next, or `None` when there is none now (live
    /// caught up, and the backlog done or waiting for its pace). Records
    /// no packet can carry go to `too_big`.
    pub(super) async fn next(
        &mut self,
        reader: &Arc<Mutex<Reader>>,
        packing: &Packing<'_>,
        too_big: &mut Vec<(i64, usize)>,
    ) -> Result<Option<(Message, From)>, String> {
        loop {
            let backlog_left = self.backlog_left();
            if self.order == DrainOrder::LiveFirst || !backlog_left {
                if self.live.ready.is_empty() && self.live_check {
                    let range = (self.live_cursor, i64::MAX);
                    let (last, full) = self
                        .live
                        .fill(reader, range, self.limit, packing, too_big)
                        .await?;
                    self.live_cursor = last.unwrap_or(self.live_cursor);
                    self.live_check = full;
                }
                if let Some(m) = self.live.ready.pop_front() {
                    return Ok(Some((m, From::Live)));
                }
            }
            if !backlog_left || self.pacer.wait_until(Instant::now()).is_some() {
                return Ok(None);
            }
            if let Some(m) = self.old.ready.pop_front() {
                return Ok(Some((m, From::Backlog)));
            }
            let Some(&range) = self.backlog.ranges.front() else {
                return Ok(None);
            };
            let (last, full) = self
                .old
                .fill(reader, range, self.limit, packing, too_big)
                .await?;
            self.backlog.read_up_to(last, !full);
        }
    }

    /// A backlog message of `records` and `bytes` went out now.
    pub(super) fn spent(&mut self, records: u64, bytes: u64) {
        self.pacer.spent(Instant::now(), records, bytes);
    }
}
