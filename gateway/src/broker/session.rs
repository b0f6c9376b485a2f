//! Persistent sessions: what makes a client's session (3.1.1 clean session
//! 0, 5.0 clean start 0) survive a gateway restart, and what ends it when
//! its 5.0 Session Expiry Interval runs out. rumqttd keeps sessions in
//! memory only, forever.
//!
//! # Design
//!
//! - **Capture.** The codec of a connection with a persistent session hands
//!   over what defines the session: that it began (with its expiry), each
//!   filter it subscribed to (after the ACL) or unsubscribed from, and when
//!   the connection ended. A clean-session CONNECT deletes any stored session
//!   of its client id. Each is a non-blocking send on a bounded channel;
//!   SUBSCRIBEs are rare, so this costs nothing per message.
//! - **Persist.** One thread owns `<data_dir>/sessions.db` (WAL,
//!   `synchronous = NORMAL`), takes every queued operation and applies them in
//!   one transaction: a subscription is on disk milliseconds after its
//!   SUBSCRIBE; a clean shutdown waits for the queue to drain.
//! - **Bounded.** At most `max_persistent_sessions` sessions and
//!   `max_subscriptions_per_session` filters each are stored. Past either,
//!   the session or filter is not persisted (logged, counted): it works until
//!   the next restart, like any session before.
//! - **Restore.** Before any listener opens (after the retained messages),
//!   each stored session that has not expired is recreated in rumqttd
//!   through an in-process link under the client's id, with clean session 0:
//!   it subscribes to the stored filters at their QoS and disconnects. rumqttd
//!   then holds an offline session, exactly as if the client had just left:
//!   the client reconnects with SessionPresent=1, its subscriptions in place,
//!   and messages published after the restart are queued for it. Like any
//!   new subscription, the restored ones are sent the matching retained
//!   messages (RETAIN=1) when the client comes back.
//! - **Expiry.** When a 5.0 connection with a finite session expiry ends, a
//!   timer starts; a reconnect of the client id cancels it. When it fires,
//!   the session is ended in rumqttd (an in-process link connects under the
//!   client id with a clean session and leaves) and deleted from disk.
//!   Expiry 0 ends the session when the connection ends (5.0 §3.1.2.11.2);
//!   3.1.1 sessions and expiry 0xFFFFFFFF never expire.
//!
//! Not kept across a restart: the QoS 1/2 messages queued for an offline
//! session at the moment the gateway stops (they live in rumqttd's memory
//! log), in-flight packet ids, and 5.0 subscription options other than QoS,
//! No Local and Retain As Published (subscription identifiers are not
//! restored).
//!
//! # Tables
//!
//! `sessions(client_id TEXT PRIMARY KEY, expiry_s INTEGER NULL,
//! ended_at_ms INTEGER NULL)`: `expiry_s` NULL never expires; `ended_at_ms`
//! is when the last connection ended (Unix ms), NULL while connected (a
//! gateway that stopped with the client connected counts its start as the
//! end). `subscriptions(client_id, filter, qos, no_local, retain_as_published,
//! PRIMARY KEY (client_id, filter))`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::kit::clock::now_ms;

use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, Filter, Packet, QoS, RetainForwardRule, Subscribe,
};
use rusqlite::{params, Connection, OptionalExtension};

use super::codec::delivery::SubOptions;
use crate::kit::sqlite::{IfNotWal, OpenError, Synchronous};

/// Operations waiting for the persister; past this, captures are dropped
/// (and counted) rather than blocking a connection.
const QUEUE_LEN: usize = 4_096;

/// Why the session store could not open.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open the session store {path}: {source}; check that the data directory is \
     writable, or move the file aside to start without the stored sessions"
)]
pub struct SessionError {
    path: PathBuf,
    source: rusqlite::Error,
}

/// Bounds of the store.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_sessions: u64,
    pub max_subscriptions: u64,
}

/// One subscription of a stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sub {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
}

/// A stored session, as restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub client_id: String,
    /// Seconds left before it expires; `None` never.
    pub expires_in_s: Option<u64>,
    pub subs: Vec<Sub>,
}

enum Op {
    Begin {
        client_id: String,
        expiry_s: Option<u32>,
    },
    Subscribe {
        client_id: String,
        sub: Sub,
    },
    Unsubscribe {
        client_id: String,
        filter: String,
    },
    End {
        client_id: String,
        at_ms: i64,
    },
    Delete {
        client_id: String,
    },
    Flush(mpsc::Sender<()>),
}

/// Counts of what the store could not keep.
#[derive(Default, Debug)]
pub struct SessionStats {
    /// Sessions or subscriptions not persisted because a bound was reached.
    pub over_bound: AtomicU64,
    /// Captures dropped because the persister's queue was full.
    pub queue_full: AtomicU64,
    /// Transactions that failed (disk full, I/O error); logged each time.
    pub write_errors: AtomicU64,
}

/// Opens an in-process link to the router under a given client id, with
/// the given clean-session flag.
pub type Opener =
    dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx), Box<LinkError>> + Send + Sync + 'static;

/// Where a client id's session stands, for the expiry timers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// A connection with this generation is the client's current one.
    Online(u64),
    /// The session's expiry timer with this generation is running.
    Expiring(u64),
}

/// What codecs use: the capture channel and the expiry timers. Shared by
/// every listener.
pub struct Sessions {
    tx: Option<SyncSender<Op>>,
    stats: Arc<SessionStats>,
    /// Client id -> its current connection or expiry timer. A connection
    /// that was taken over finds another generation when it ends and
    /// leaves the session alone; so does a timer after a reconnect. Holds
    /// the ids connected now plus the sessions whose expiry runs.
    state: Mutex<HashMap<String, State>>,
    /// Signalled when a connection ends (see [`Sessions::wait_until_gone`]).
    gone: Condvar,
    next: AtomicU64,
    open: Arc<Opener>,
    /// The subscriptions, with their 5.0 options, of sessions whose client
    /// is offline, for its next connection: the codec applies the options
    /// rumqttd ignores and keeps them while the client is connected (see
    /// `delivery`); dropped when the session ends.
    subscriptions: Mutex<HashMap<String, Vec<SubOptions>>>,
}

impl Sessions {
    /// Sessions kept in memory only (no data directory): only expiry.
    pub fn in_memory(open: Arc<Opener>) -> Sessions {
        Sessions {
            tx: None,
            stats: Arc::default(),
            state: Mutex::new(HashMap::new()),
            gone: Condvar::new(),
            next: AtomicU64::new(1),
            open,
            subscriptions: Mutex::new(HashMap::new()),
        }
    }

    /// Waits, at most `limit`, until no earlier connection of `client_id`
    /// is open, so that its end reaches rumqttd before the new CONNECT.
    ///
    /// Why: when a client reconnects within milliseconds of losing its
    /// connection, the old connection's task may not have noticed yet.
    /// rumqttd takes the old connection over, frees its connection id and
    /// gives the *same* id to the new connection; the old task's "gone"
    /// event then closes the new connection. The old task sends that event
    /// right before it drops its codec, which tells us here. A healthy old
    /// connection (a real takeover) never ends by itself: the wait runs out
    /// and rumqttd takes it over, which is safe because such a task learns
    /// its end from rumqttd and sends no "gone" event.
    pub fn wait_until_gone(&self, client_id: &str, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        let wait = || {
            let mut state = self.state.lock().expect("sessions lock");
            while let Some(State::Online(_)) = state.get(client_id) {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return;
                }
                state = self
                    .gone
                    .wait_timeout(state, left)
                    .expect("sessions lock")
                    .0;
            }
        };
        let online = matches!(
            self.state.lock().expect("sessions lock").get(client_id),
            Some(State::Online(_))
        );
        if !online {
            return;
        }
        // The old connection's task needs a worker thread to end: on a
        // multi-thread runtime this one hands its other tasks over while
        // it waits. A current-thread runtime (unit tests) cannot wait.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            Ok(_) => {}
            Err(_) => wait(),
        }
    }

    /// A client connected. `persistent`: `Some(None)` a persistent session
    /// that never expires, `Some(Some(s))` one that expires `s` seconds
    /// after the connection ends, `None` a clean session (a stored one of
    /// this id is deleted). Returns the connection's generation, for
    /// [`Sessions::ended`].
    pub fn connected(&self, client_id: &str, persistent: Option<Option<u32>>) -> u64 {
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
        self.state
            .lock()
            .expect("sessions lock")
            .insert(client_id.to_owned(), State::Online(generation));
        let client_id = client_id.to_owned();
        self.send(match persistent {
            Some(expiry_s) => Op::Begin {
                client_id,
                expiry_s,
            },
            None => Op::Delete { client_id },
        });
        generation
    }

    /// Ends the session of `client_id` in rumqttd now (a 5.0 clean start
    /// whose new session must outlive the connection: rumqttd only knows
    /// "clean and forgotten" or "resumed").
    pub fn end_now(&self, client_id: &str) {
        let _state = self.state.lock().expect("sessions lock");
        self.end_in_router(client_id);
    }

    /// A 5.0 DISCONNECT changed the session's expiry (`persistent` as for
    /// [`Sessions::connected`]); the connection's end applies it, this
    /// stores it.
    pub fn expiry_changed(&self, client_id: &str, persistent: Option<Option<u32>>) {
        if let Some(expiry_s) = persistent {
            self.send(Op::Begin {
                client_id: client_id.to_owned(),
                expiry_s,
            });
        }
    }

    pub fn subscribed(&self, client_id: &str, sub: Sub) {
        self.send(Op::Subscribe {
            client_id: client_id.to_owned(),
            sub,
        });
    }

    pub fn unsubscribed(&self, client_id: &str, filter: &str) {
        self.send(Op::Unsubscribe {
            client_id: client_id.to_owned(),
            filter: filter.to_owned(),
        });
    }

    /// The connection `generation` of `client_id` ended. If it was still the
    /// client's current one, its session (if `persistent`, as given to
    /// [`Sessions::connected`]) expires after its interval.
    pub fn ended(
        self: &Arc<Self>,
        client_id: String,
        generation: u64,
        persistent: Option<Option<u32>>,
    ) {
        let mut state = self.state.lock().expect("sessions lock");
        if state.get(&client_id) != Some(&State::Online(generation)) {
            // Taken over by a newer connection: the session is its now.
            return;
        }
        state.remove(&client_id);
        drop(state);
        self.gone.notify_all();
        let Some(expiry_s) = persistent else {
            return;
        };
        self.send(Op::End {
            client_id: client_id.clone(),
            at_ms: now_ms(),
        });
        if let Some(s) = expiry_s {
            self.expire_after(client_id, Duration::from_secs(u64::from(s)));
        }
    }

    /// Ends `client_id`'s session after `delay` unless it reconnects first.
    fn expire_after(self: &Arc<Self>, client_id: String, delay: Duration) {
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Shutting down: the stored end time expires it at the next
            // start.
            return;
        };
        self.state
            .lock()
            .expect("sessions lock")
            .insert(client_id.clone(), State::Expiring(generation));
        let sessions = self.clone();
        runtime.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let mut state = sessions.state.lock().expect("sessions lock");
            if state.get(&client_id) != Some(&State::Expiring(generation)) {
                return;
            }
            state.remove(&client_id);
            // Held while rumqttd drops the session, so a reconnect of the
            // same id waits for it instead of racing it (microseconds).
            sessions.end_in_router(&client_id);
            drop(state);
            tracing::debug!(client_id, "session expired");
            sessions.send(Op::Delete { client_id });
        });
    }

    /// A connection of `client_id`'s persistent session ended with these
    /// subscriptions.
    pub fn keep_subscriptions(&self, client_id: &str, subs: Vec<SubOptions>) {
        let mut kept = self.subscriptions.lock().expect("sessions lock");
        if subs.is_empty() {
            kept.remove(client_id);
        } else {
            kept.insert(client_id.to_owned(), subs);
        }
    }

    /// The subscriptions of `client_id`'s session, for a connection that
    /// resumes it (and forgotten by any other).
    pub fn take_subscriptions(&self, client_id: &str) -> Vec<SubOptions> {
        let mut kept = self.subscriptions.lock().expect("sessions lock");
        kept.remove(client_id).unwrap_or_default()
    }

    /// Makes rumqttd forget `client_id`'s session: a clean-session link
    /// under that id takes it over and leaves.
    fn end_in_router(&self, client_id: &str) {
        let mut kept = self.subscriptions.lock().expect("sessions lock");
        kept.remove(client_id);
        drop(kept);
        match (self.open)(client_id, true) {
            Ok((mut tx, _rx)) => {
                if let Err(e) = super::send_now(&mut tx, disconnect()) {
                    tracing::warn!(client_id, error = %e, "cannot end a session");
                }
            }
            Err(e) => tracing::warn!(client_id, error = %e, "cannot end a session"),
        }
    }

    /// Recreates the stored sessions in rumqttd (see the module doc) and
    /// starts their expiry timers.
    pub fn restore(self: &Arc<Self>, stored: Vec<Stored>) {
        for s in stored {
            let filters: Vec<Filter> = s
                .subs
                .iter()
                .map(|sub| Filter {
                    path: sub.filter.clone(),
                    qos: match sub.qos {
                        0 => QoS::AtMostOnce,
                        1 => QoS::AtLeastOnce,
                        _ => QoS::ExactlyOnce,
                    },
                    nolocal: sub.no_local,
                    preserve_retain: sub.retain_as_published,
                    retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                })
                .collect();
            let (mut tx, _rx) = match (self.open)(&s.client_id, false) {
                Ok(link) => link,
                Err(e) => {
                    tracing::warn!(client_id = s.client_id, error = %e, "cannot restore a session");
                    continue;
                }
            };
            let mut packets = Vec::with_capacity(2);
            if !filters.is_empty() {
                packets.push(Packet::Subscribe(Subscribe { pkid: 1, filters }, None));
            }
            packets.push(disconnect());
            for p in packets {
                if let Err(e) = super::send_now(&mut tx, p) {
                    tracing::warn!(client_id = s.client_id, error = %e, "cannot restore a session");
                }
            }
            // Retain Handling is not stored: retained messages are sent
            // again to a restored subscription, as to a new one.
            let subs = s.subs.iter().map(|sub| SubOptions {
                filter: sub.filter.clone(),
                no_local: sub.no_local,
                retain_as_published: sub.retain_as_published,
                no_retained_on_subscribe: false,
            });
            self.keep_subscriptions(&s.client_id, subs.collect());
            if let Some(left) = s.expires_in_s {
                self.expire_after(s.client_id, Duration::from_secs(left));
            }
        }
    }

    /// Waits (at most `timeout`) until everything captured so far is
    /// committed.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(tx) = &self.tx else {
            return true;
        };
        let (done, rx) = mpsc::channel();
        if tx.send(Op::Flush(done)).is_err() {
            return false;
        }
        rx.recv_timeout(timeout).is_ok()
    }

    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    fn send(&self, op: Op) {
        let Some(tx) = &self.tx else {
            return;
        };
        match tx.try_send(op) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                let n = self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(1000) {
                    tracing::warn!(
                        dropped = n + 1,
                        "session change not persisted: the session store's queue is full (the \
                         session works until the next restart)"
                    );
                }
            }
        }
    }
}

fn disconnect() -> Packet {
    Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        },
        None,
    )
}

/// Opens (or creates) `<data_dir>/sessions.db`, deletes expired sessions,
/// reads the others and starts the persister.
pub fn open(
    data_dir: &Path,
    bounds: Bounds,
    opener: Arc<Opener>,
) -> Result<(Sessions, Vec<Stored>), SessionError> {
    let path = data_dir.join("sessions.db");
    let err = |source| SessionError {
        path: path.clone(),
        source,
    };
    let conn =
        crate::kit::sqlite::open_wal(&path, Synchronous::Normal, "session store", IfNotWal::Warn)
            .map_err(|e| match e {
            OpenError::Sqlite(source) => err(source),
            OpenError::NotWal(_) => unreachable!("IfNotWal::Warn does not fail"),
        })?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS sessions (
            client_id TEXT PRIMARY KEY,
            expiry_s INTEGER,
            ended_at_ms INTEGER
        );
        CREATE TABLE IF NOT EXISTS subscriptions (
            client_id TEXT NOT NULL,
            filter TEXT NOT NULL,
            qos INTEGER NOT NULL,
            no_local INTEGER NOT NULL,
            retain_as_published INTEGER NOT NULL,
            PRIMARY KEY (client_id, filter)
        );",
    )
    .map_err(err)?;
    let now = now_ms();
    let stored = (|| {
        let tx = conn.unchecked_transaction()?;
        // Connected when the gateway stopped: the session's connection
        // ended with it; count its expiry from now.
        tx.execute(
            "UPDATE sessions SET ended_at_ms = ?1 WHERE ended_at_ms IS NULL",
            [now],
        )?;
        tx.execute(
            "DELETE FROM sessions WHERE expiry_s IS NOT NULL
             AND ended_at_ms + expiry_s * 1000 <= ?1",
            [now],
        )?;
        tx.execute(
            "DELETE FROM subscriptions WHERE client_id NOT IN (SELECT client_id FROM sessions)",
            [],
        )?;
        let mut sessions: Vec<Stored> = {
            let mut stmt = tx.prepare(
                "SELECT client_id, expiry_s, ended_at_ms FROM sessions ORDER BY client_id",
            )?;
            let rows = stmt.query_map([], |r| {
                let expiry: Option<i64> = r.get(1)?;
                let ended: i64 = r.get(2)?;
                Ok(Stored {
                    client_id: r.get(0)?,
                    expires_in_s: expiry
                        .map(|e| ((ended + e * 1_000 - now).max(0) as u64).div_ceil(1_000)),
                    subs: Vec::new(),
                })
            })?;
            rows.collect::<Result<_, _>>()?
        };
        {
            let mut stmt = tx.prepare(
                "SELECT filter, qos, no_local, retain_as_published FROM subscriptions
                 WHERE client_id = ?1 ORDER BY filter",
            )?;
            for s in &mut sessions {
                let rows = stmt.query_map([&s.client_id], |r| {
                    Ok(Sub {
                        filter: r.get(0)?,
                        qos: r.get(1)?,
                        no_local: r.get(2)?,
                        retain_as_published: r.get(3)?,
                    })
                })?;
                s.subs = rows.collect::<Result<_, _>>()?;
            }
        }
        tx.commit()?;
        Ok(sessions)
    })()
    .map_err(err)?;
    let stats = Arc::new(SessionStats::default());
    let (tx, rx) = mpsc::sync_channel(QUEUE_LEN);
    let mut persister = Persister {
        conn,
        bounds,
        stats: stats.clone(),
    };
    std::thread::Builder::new()
        .name("perch-sessions".into())
        .spawn(move || persister.run(rx))
        .map_err(|e| err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
    let sessions = Sessions {
        tx: Some(tx),
        stats,
        ..Sessions::in_memory(opener)
    };
    Ok((sessions, stored))
}

struct Persister {
    conn: Connection,
    bounds: Bounds,
    stats: Arc<SessionStats>,
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
            if let Err(e) = self.apply(&batch) {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    error = %e,
                    "cannot write sessions to disk; they work until the next restart"
                );
            }
            for op in batch.drain(..) {
                if let Op::Flush(done) = op {
                    let _ = done.send(());
                }
            }
        }
    }

    fn over_bound(stats: &SessionStats, client_id: &str, what: &str) {
        let n = stats.over_bound.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(1000) {
            tracing::warn!(
                client_id,
                "{what} not persisted: broker.max_persistent_sessions or \
                 broker.max_subscriptions_per_session reached (it works until the next \
                 restart); raise the bound"
            );
        }
    }

    fn apply(&mut self, batch: &[Op]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        for op in batch {
            match op {
                Op::Begin {
                    client_id,
                    expiry_s,
                } => {
                    let exists = tx
                        .query_row(
                            "SELECT 1 FROM sessions WHERE client_id = ?1",
                            [client_id],
                            |_| Ok(()),
                        )
                        .optional()?
                        .is_some();
                    if exists {
                        tx.execute(
                            "UPDATE sessions SET expiry_s = ?2, ended_at_ms = NULL
                             WHERE client_id = ?1",
                            params![client_id, expiry_s],
                        )?;
                        continue;
                    }
                    let count: i64 =
                        tx.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))?;
                    if count as u64 >= self.bounds.max_sessions {
                        Self::over_bound(&self.stats, client_id, "session");
                        continue;
                    }
                    tx.execute(
                        "INSERT INTO sessions (client_id, expiry_s) VALUES (?1, ?2)",
                        params![client_id, expiry_s],
                    )?;
                }
                Op::Subscribe { client_id, sub } => {
                    let known = tx
                        .query_row(
                            "SELECT 1 FROM sessions WHERE client_id = ?1",
                            [client_id],
                            |_| Ok(()),
                        )
                        .optional()?
                        .is_some();
                    if !known {
                        // Over the session bound: not stored at all.
                        continue;
                    }
                    let replaces = tx
                        .query_row(
                            "SELECT 1 FROM subscriptions WHERE client_id = ?1 AND filter = ?2",
                            [client_id, &sub.filter],
                            |_| Ok(()),
                        )
                        .optional()?
                        .is_some();
                    if !replaces {
                        let n: i64 = tx.query_row(
                            "SELECT COUNT(*) FROM subscriptions WHERE client_id = ?1",
                            [client_id],
                            |r| r.get(0),
                        )?;
                        if n as u64 >= self.bounds.max_subscriptions {
                            Self::over_bound(&self.stats, client_id, "subscription");
                            continue;
                        }
                    }
                    tx.execute(
                        "INSERT INTO subscriptions
                            (client_id, filter, qos, no_local, retain_as_published)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT(client_id, filter) DO UPDATE SET
                            qos = excluded.qos, no_local = excluded.no_local,
                            retain_as_published = excluded.retain_as_published",
                        params![
                            client_id,
                            sub.filter,
                            sub.qos,
                            sub.no_local,
                            sub.retain_as_published
                        ],
                    )?;
                }
                Op::Unsubscribe { client_id, filter } => {
                    tx.execute(
                        "DELETE FROM subscriptions WHERE client_id = ?1 AND filter = ?2",
                        [client_id, filter],
                    )?;
                }
                Op::End { client_id, at_ms } => {
                    tx.execute(
                        "UPDATE sessions SET ended_at_ms = ?2 WHERE client_id = ?1",
                        params![client_id, at_ms],
                    )?;
                }
                Op::Delete { client_id } => {
                    tx.execute("DELETE FROM sessions WHERE client_id = ?1", [client_id])?;
                    tx.execute(
                        "DELETE FROM subscriptions WHERE client_id = ?1",
                        [client_id],
                    )?;
                }
                Op::Flush(_) => {}
            }
        }
        tx.commit()
    }
}

#[cfg(test)]
mod tests;
