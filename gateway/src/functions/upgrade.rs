//! Stateful upgrades: what happens to a function's state when a version
//! takes over (deploy, promote), when a takeover or a canary is rolled
//! back, and how the events since are re-run.
//!
//! # The model
//!
//! Every state change by an upgrade starts from a *base* state taken at a
//! fork point, runs the version that will own the state over it, and
//! switches in one SQLite transaction ([`super::snapshot`]):
//!
//! | what | base | then | snapshot kept |
//! |---|---|---|---|
//! | deploy | the live state | `perch_migrate` (if exported and another version wrote the state) | the base, linked to the version before |
//! | promote | the state when the canary started | `perch_migrate`, then every event since the canary started, through the canary version | the base |
//! | rollback | the snapshot the target version left | every event since, through the target version | none (the one used is dropped) |
//! | canary rolled back (by itself or by `rollback`) | the state when the canary started | every event since, through the live version | none |
//!
//! So after a rollback, or after a canary ends, the state is what the
//! version that now runs would have made of the same events alone.
//!
//! # Which events are re-run
//!
//! Those the function's live version kept (`[replay] keep_events_s`), read
//! from `buffer.db` through an [`EventSource`]. While the gateway runs, the
//! worker knows how many events it handled since each fork point, and the
//! first and last of them ([`Since`]): the re-run takes exactly those, and
//! waits (up to [`WAIT_FOR_COMMIT`]) for the buffer to have committed the
//! last. If one was not kept (the version keeps none, the output channel
//! was full, it expired or the buffer dropped it), nothing is re-run and
//! the note says why: a rollback then restores the snapshot alone, a
//! canary's end leaves the live state without the canary's share, a
//! promote migrates the live state instead. After a restart the worker has
//! no count, and a rollback takes the kept events that arrived at or after
//! the snapshot was taken (an event queued at the switch can fall on the
//! wrong side of that time).
//!
//! Re-runs discard every output: publishes were delivered and emits and
//! forwards reached the aggregates and the buffer when the events first
//! ran, and are not sent twice. An aggregate window or record a bad version
//! produced stays as it was produced (closed windows never change); only
//! the state is restored.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::dispatch::Event;
use super::runtime::{Compiled, Instance, OutputCounters, Runtime, RuntimeError, Seed};
use super::state::StateCache;

/// Reads the kept trigger events of a function that arrived at or after a
/// time, oldest first (from `buffer.db`; handed in by the functions stage,
/// which may read it).
pub type EventSource = Arc<dyn Fn(&str, i64) -> Result<Vec<Event>, String> + Send + Sync>;

/// How long a re-run waits for the buffer to commit the last kept event
/// (it commits every `buffer.commit_interval_ms`, 50 ms by default).
pub const WAIT_FOR_COMMIT: Duration = Duration::from_secs(2);

/// A re-run stops after this long; past it nothing is re-run and the note
/// says so.
pub const RERUN_BUDGET: Duration = Duration::from_secs(10);

/// The events a worker handled since a fork point: how many, how many it
/// kept, and the first and last kept (handles to the broker's buffers,
/// nothing copied), to find exactly those among the kept events.
#[derive(Debug, Clone, Default)]
pub struct Since {
    pub at_ms: i64,
    handled: u64,
    kept: u64,
    first: Option<Event>,
    last: Option<Event>,
}

impl Since {
    pub fn new(at_ms: i64) -> Since {
        Since {
            at_ms,
            ..Since::default()
        }
    }

    /// Counts one event; `kept` says whether the buffer was handed it
    /// (`None`: the version keeps no events).
    #[inline]
    pub fn record(&mut self, event: &Event, kept: Option<bool>) {
        self.handled += 1;
        if kept == Some(true) {
            self.kept += 1;
            if self.first.is_none() {
                self.first = Some(event.clone());
            }
            self.last = Some(event.clone());
        }
    }
}

/// What takes a function over, as the control plane hands it to the worker.
pub struct Plan {
    pub stored: super::registry::StoredVersion,
    pub kind: Kind,
    pub bounds: super::snapshot::Bounds,
}

/// How a version takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Deploy,
    /// The canary or shadow beside the live version becomes it.
    Promote,
    /// Back to the version of history entry `seq`.
    Rollback {
        seq: i64,
    },
}

/// A canary's fork point: the live state when it started, and the events
/// the worker handled since (both versions' shares).
#[derive(Debug)]
pub struct Fork {
    pub base: StateCache,
    pub since: Since,
}

/// What an upgrade did to a function's state: in the command's reply and
/// in the function's status (`state_upgrade`) until the next one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateNote {
    /// `deploy`, `promote`, `rollback` or `canary_ended`.
    pub kind: String,
    pub at_ms: i64,
    /// The snapshot of the state the version before left (deploy, promote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_taken: Option<i64>,
    /// The snapshot a rollback restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_restored: Option<i64>,
    /// `perch_migrate` ran on the state this version left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrated_from: Option<String>,
    /// Kept events run again through the version that owns the state.
    pub events_rerun: u64,
    /// Of those, the ones its handler failed on (as they would have live).
    pub events_failed: u64,
    /// Why the events since the fork point were not re-run, when they were
    /// not: the state lacks their effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_not_rerun: Option<String>,
}

impl StateNote {
    pub fn new(kind: &str) -> StateNote {
        StateNote {
            kind: kind.into(),
            at_ms: super::runtime::now_ms(),
            ..StateNote::default()
        }
    }
}

/// The kept events that are the ones handled since `since` (or, without a
/// count, that arrived since `at_ms`), oldest first; or why they cannot be
/// had.
pub fn kept_since(
    source: &EventSource,
    name: &str,
    since: Option<&Since>,
    at_ms: i64,
) -> Result<Vec<Event>, String> {
    let Some(since) = since else {
        return source(name, at_ms);
    };
    if since.handled == 0 {
        return Ok(Vec::new());
    }
    if since.kept < since.handled {
        return Err(format!(
            "{} of the {} events since were not kept (the version keeps none: set [replay] \
             keep_events_s in its manifest; or the gateway's output queue was full)",
            since.handled - since.kept,
            since.handled
        ));
    }
    let (Some(first), Some(last)) = (&since.first, &since.last) else {
        return Ok(Vec::new());
    };
    let same = |a: &Event, b: &Event| {
        a.timestamp_ms == b.timestamp_ms && a.topic == b.topic && a.payload == b.payload
    };
    let deadline = Instant::now() + WAIT_FOR_COMMIT;
    loop {
        let mut events = source(name, first.timestamp_ms)?;
        let n = since.kept as usize;
        if events.len() >= n {
            events.drain(..events.len() - n);
            if same(&events[0], first) && same(&events[n - 1], last) {
                return Ok(events);
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the buffer no longer holds all {n} events since (they expired, \
                 exceeded the kept events' share of buffer.max_bytes, or number more than a \
                 re-run takes)"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An instance of `compiled` on `state`, its `perch_init` outputs dropped.
pub fn fresh(
    runtime: &Runtime,
    compiled: &Compiled,
    state: StateCache,
    counters: Arc<OutputCounters>,
) -> Result<Instance, RuntimeError> {
    let mut instance = runtime
        .instantiate(compiled, Seed { state, counters })
        .map_err(|(e, _)| e)?;
    drop(instance.capture());
    Ok(instance)
}

/// Runs `perch_migrate` on the instance's state when `from`, the version
/// that wrote it, is another; records it in `note`.
pub fn migrate(
    instance: &mut Instance,
    own: &str,
    from: Option<&str>,
    note: &mut StateNote,
) -> Result<(), RuntimeError> {
    let Some(from) = from.filter(|f| *f != own) else {
        return Ok(());
    };
    match instance.migrate(from) {
        Ok(ran) => {
            if ran {
                // Its outputs and log lines are not delivered.
                note.migrated_from = Some(from.to_owned());
                drop(instance.capture());
            }
            Ok(())
        }
        Err(failure) => Err(RuntimeError::Migrate {
            from: from.to_owned(),
            failure,
        }),
    }
}

/// Runs `events` in order through `instance` (of `compiled`), every
/// output discarded; an event that traps is taken back and the instance
/// re-created on its state, as it would be live. Counts into `note`.
pub fn rerun(
    runtime: &Runtime,
    compiled: &Compiled,
    instance: Instance,
    events: &[Event],
    note: &mut StateNote,
) -> Result<Instance, RuntimeError> {
    let started = Instant::now();
    let mut instance = instance;
    for event in events {
        if started.elapsed() >= RERUN_BUDGET {
            return Err(RuntimeError::Upgrade(format!(
                "re-running the {} kept events took longer than {RERUN_BUDGET:?}",
                events.len()
            )));
        }
        let result = instance.on_event(&event.topic, &event.payload, event.timestamp_ms);
        drop(instance.capture());
        note.events_rerun += 1;
        if result.is_err() {
            note.events_failed += 1;
        }
        if instance.is_poisoned() {
            let seed = instance.into_seed();
            instance = fresh(runtime, compiled, seed.state, seed.counters)?;
        }
    }
    Ok(instance)
}

/// `base` with `events` run through `compiled` again, or `None` (and why,
/// in `note`) when the events cannot be had or re-run.
pub fn rebuild(
    runtime: &Runtime,
    compiled: &Compiled,
    base: StateCache,
    events: Result<Vec<Event>, String>,
    note: &mut StateNote,
) -> Option<StateCache> {
    let events = match events {
        Ok(events) => events,
        Err(why) => {
            note.events_not_rerun = Some(why);
            return None;
        }
    };
    let counters = Arc::new(OutputCounters::default());
    let rebuilt = fresh(runtime, compiled, base, counters)
        .and_then(|i| rerun(runtime, compiled, i, &events, note));
    match rebuilt {
        Ok(instance) => Some(instance.into_seed().state),
        Err(e) => {
            note.events_not_rerun = Some(e.to_string());
            None
        }
    }
}
