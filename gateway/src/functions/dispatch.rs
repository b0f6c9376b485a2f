//! Getting events to functions: trigger links, per-function queues, and the
//! worker that runs each function.
//!
//! # Trigger links
//!
//! Each distinct trigger filter gets its own in-process link to the broker
//! ([`Triggers`]). One link per filter, not one for all, because rumqttd
//! keeps a log per filter and delivers a publish once per matching
//! subscription of a connection, without saying which filter matched: a
//! single link subscribed to `a/#` and `a/+/c` would see `a/b/c` twice and
//! could not tell a duplicate from a repeat. With a link per filter, a
//! publish that arrives on filter F goes to a function only if F is the first
//! of that function's filters that matches the topic, so each function gets
//! each publish exactly once. The link task answers `Unschedule` with
//! `wake()` (without it the link stalls once ~200 notifications are pending).
//!
//! # Queues
//!
//! Every function has a bounded queue ([`FunctionHandle`]): `queue_len`
//! events, preallocated; when full, `drop_oldest` or `drop_newest` applies
//! and the drop is counted. Enqueuing takes a mutex for a push and never
//! waits for the function, so a slow function never slows the broker or the
//! other functions. The queue holds `Bytes` handles to the broker's own
//! buffers: routing an event allocates nothing.
//!
//! # Workers
//!
//! Each function runs on its own OS thread, not a tokio task: an invocation
//! may burn its whole fuel budget (tens of milliseconds), and on a 2-core
//! board two such functions on the async runtime's worker threads would
//! stall the broker's listeners. On their own threads the kernel shares the
//! cores fairly and the async runtime stays responsive. The worker owns the
//! instance, re-creates it after a trap, counts failures and stops the
//! function when `max_consecutive_failures` are reached in a row (circuit
//! breaker, the reason kept in its status and the registry), runs interval
//! ticks, publishes outputs through the function's own broker link, and
//! flushes state to SQLite at most once per `state_commit_interval_ms`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc as sync_mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};

use super::manifest::QueuePolicy;
use super::registry::Registry;
use super::rollout::{self, Candidate, RolloutInfo, Route};
use super::runtime::{
    now_ms, Compiled, Failure, Instance, OutputCounters, Runtime, RuntimeError, Seed,
};
use super::state::StateCache;
use super::upgrade::{EventSource, Plan, Since, StateNote};
use crate::kit::metrics::Histogram;

/// How long a worker waits for the deploy to be committed to the registry
/// before it keeps the old version.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// One MQTT publish for a function.
#[derive(Debug, Clone)]
pub struct Event {
    pub topic: Bytes,
    pub payload: Bytes,
    pub timestamp_ms: i64,
}

/// Whether a function runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Not yet started (between creation and its first deploy).
    Starting,
    Running,
    /// Stopped, with the reason; deploying it again starts it.
    Stopped(String),
}

/// What `perch fn list` shows about a function besides counters.
#[derive(Debug, Clone)]
pub struct Status {
    pub version: String,
    pub sha256: String,
    pub deployed_at_ms: i64,
    pub state: RunState,
    pub last_error: Option<String>,
}

/// Counters of one function, since the gateway started.
#[derive(Debug, Default)]
pub struct Counters {
    /// Handler calls (events and ticks), successful or not.
    pub invocations: AtomicU64,
    /// Failed invocations: traps, non-zero returns, events too large.
    pub errors: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Failures in a row (the circuit breaker's count).
    pub consecutive_failures: AtomicU32,
    /// Outputs the host refused.
    pub outputs: Arc<OutputCounters>,
    /// Failed invocations by [`Failure::kind`], indexed like [`ERROR_KINDS`].
    pub errors_by_kind: [AtomicU64; ERROR_KINDS.len()],
    /// How long invocations took.
    pub duration: Histogram,
    /// Fuel burnt by invocations.
    pub fuel_used: AtomicU64,
}

/// The failure kinds counted per function ([`Failure::kind`]); anything
/// else counts as the last, `other`.
pub const ERROR_KINDS: [&str; 16] = [
    "out_of_fuel",
    "timeout",
    "memory_limit",
    "memory_out_of_bounds",
    "stack_overflow",
    "unreachable",
    "integer_divide_by_zero",
    "integer_overflow",
    "bad_conversion_to_integer",
    "table_out_of_bounds",
    "indirect_call_to_null",
    "bad_signature",
    "host_error",
    "handler_error",
    "event_too_large",
    "other",
];

impl Counters {
    /// Counts one invocation that started at `started` and burnt
    /// `fuel_used`: a few relaxed atomic adds and a clock read, nothing
    /// locked or allocated (the hot path; `benches/runtime.rs` measures it).
    #[inline]
    pub fn record(&self, started: Instant, fuel_used: u64, failure: Option<&Failure>) {
        self.invocations.fetch_add(1, Ordering::Relaxed);
        self.duration
            .observe_ns(started.elapsed().as_nanos().min(u64::MAX as u128) as u64);
        self.fuel_used.fetch_add(fuel_used, Ordering::Relaxed);
        if let Some(failure) = failure {
            self.errors.fetch_add(1, Ordering::Relaxed);
            let kind = failure.kind();
            let i = ERROR_KINDS
                .iter()
                .position(|k| *k == kind)
                .unwrap_or(ERROR_KINDS.len() - 1);
            self.errors_by_kind[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts the worker thread of a function. It owns the function's publish
/// link and its state; it runs until [`FunctionHandle::shutdown`].
pub fn spawn_worker(
    handle: Arc<FunctionHandle>,
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    publisher: (LinkTx, LinkRx),
    state: StateCache,
    flush_every: Duration,
    source: EventSource,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (publisher, publisher_rx) = publisher;
    let worker = Worker {
        _publisher_rx: publisher_rx,
        seed: Some(Seed {
            state,
            counters: handle.counters.outputs.clone(),
        }),
        handle,
        runtime,
        registry,
        publisher,
        compiled: None,
        instance: None,
        candidate: None,
        deployed_at_ms: 0,
        flush_every,
        next_flush: Instant::now() + flush_every,
        next_tick: None,
        source,
        since: Since::new(now_ms()),
    };
    std::thread::Builder::new()
        .name(format!("fn-{}", worker.handle.name))
        // wasmi keeps guest stacks on the heap; this thread needs little.
        .stack_size(1024 * 1024)
        .spawn(move || worker.run())
}

struct Worker {
    handle: Arc<FunctionHandle>,
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    /// The function's own link: its publishes enter the broker as client
    /// `perch-fn-<name>`.
    publisher: LinkTx,
    /// Kept open: a link whose receiver is gone looks dead to the router.
    /// Nothing arrives on it (QoS 0 publishes are not acknowledged).
    _publisher_rx: LinkRx,
    compiled: Option<Arc<Compiled>>,
    /// Exactly one of `instance` and `seed` holds the state at any time.
    instance: Option<Instance>,
    seed: Option<Seed>,
    /// A canary or shadow beside the live version ([`rollout`]).
    candidate: Option<Candidate>,
    deployed_at_ms: i64,
    flush_every: Duration,
    next_flush: Instant,
    next_tick: Option<Instant>,
    /// Kept trigger events, for re-runs after a rollback (`upgrade.rs`).
    source: EventSource,
    /// The events handled since the live version took over.
    since: Since,
}

enum Job {
    Command(Command),
    Event(Event),
    Tick,
    Flush,
    Shutdown,
}

impl Worker {
    fn state(&mut self) -> &mut StateCache {
        match &mut self.instance {
            Some(i) => i.state_mut(),
            // By the invariant the seed is there; an empty one is harmless.
            None => &mut self.seed.get_or_insert_with(Seed::default).state,
        }
    }

    fn run(mut self) {
        loop {
            let flush_at = self.state().is_dirty().then_some(self.next_flush);
            let job = {
                let mut inbox = lock(&self.handle.inbox);
                loop {
                    if let Some(command) = inbox.commands.pop_front() {
                        break Job::Command(command);
                    }
                    if inbox.shutdown {
                        break Job::Shutdown;
                    }
                    if let Some(event) = inbox.events.pop_front() {
                        break Job::Event(event);
                    }
                    let now = Instant::now();
                    if self.next_tick.is_some_and(|t| t <= now) {
                        break Job::Tick;
                    }
                    if flush_at.is_some_and(|t| t <= now) {
                        break Job::Flush;
                    }
                    let deadline = match (self.next_tick, flush_at) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    inbox = match deadline {
                        Some(d) => {
                            self.handle
                                .wake
                                .wait_timeout(inbox, d - now)
                                .unwrap_or_else(|p| p.into_inner())
                                .0
                        }
                        None => self
                            .handle
                            .wake
                            .wait(inbox)
                            .unwrap_or_else(|p| p.into_inner()),
                    };
                }
            };
            match job {
                Job::Command(Command::Deploy(d)) => self.deploy(*d),
                Job::Command(Command::Rollout(start)) => self.start_rollout(*start),
                Job::Command(Command::Invoke(job)) => {
                    let result = self.invoke(&job.event);
                    let _ = job.reply.send(result);
                }
                Job::Command(Command::Replay(job)) => {
                    let result = self.replay(&job);
                    let _ = job.reply.send(result);
                }
                Job::Command(Command::EndRollout(done)) => {
                    let note = self.end_canary();
                    *lock(&self.handle.rollout) = None;
                    let _ = done.send(note);
                }
                Job::Event(event) => self.on_event(event),
                Job::Tick => self.on_tick(),
                Job::Flush => self.flush(),
                Job::Shutdown => break,
            }
            if Instant::now() >= self.next_flush {
                self.flush();
            }
        }
        let left = {
            let mut inbox = lock(&self.handle.inbox);
            let n = inbox.events.len();
            inbox.events.clear();
            n
        };
        if left > 0 {
            // QoS 0 events: dropping them at shutdown is within the promise.
            self.handle
                .counters
                .dropped
                .fetch_add(left as u64, Ordering::Relaxed);
            tracing::info!(function = %self.handle.name, dropped = left, "shutdown: queued events dropped");
        }
        // A canary is never stored: its share goes into the live state
        // before the last flush (the buffer stops after the functions).
        self.end_canary();
        self.flush();
    }

    fn deploy(&mut self, mut d: Deploy) {
        if let Some(plan) = d.takeover.take() {
            return self.take_over(d, plan);
        }
        // A version the registry has active, at start: the state moves to
        // it for its perch_init and moves back if it does not go through.
        let state = std::mem::take(self.state());
        let seed = Seed {
            state,
            counters: self.handle.counters.outputs.clone(),
        };
        let new = match self.runtime.instantiate(&d.compiled, seed) {
            Ok(new) => new,
            Err((e, seed)) => {
                *self.state() = seed.state;
                let _ = d.ready.send(Err(e));
                return;
            }
        };
        let _ = d.ready.send(Ok(()));
        if d.commit.recv_timeout(COMMIT_TIMEOUT) != Ok(true) {
            *self.state() = new.into_seed().state;
            return;
        }
        self.switch_to(new, d.compiled);
        let _ = d.switched.send(Ok(None));
    }

    /// Runs the live version once on `event` in an instance of its own,
    /// seeded with a copy of the state: the live instance, its state and
    /// its counters are untouched, and nothing it outputs is delivered.
    fn invoke(&mut self, event: &Event) -> Result<Invoked, String> {
        let name = self.handle.name.clone();
        let compiled = self
            .compiled
            .clone()
            .ok_or_else(|| format!("function {name:?} has no version running yet"))?;
        if let RunState::Stopped(reason) = self.handle.status().state {
            return Err(format!(
                "function {name:?} is stopped ({reason}); deploy it again to start it, then \
                 invoke it"
            ));
        }
        let seed = Seed {
            state: self.state().snapshot(),
            counters: Arc::new(OutputCounters::default()),
        };
        let mut instance = self
            .runtime
            .instantiate(&compiled, seed)
            .map_err(|(e, _)| format!("function {name:?} could not be instantiated: {e}"))?;
        // What its perch_init did is not this event's doing.
        drop(instance.capture());
        let started = Instant::now();
        let result = instance.on_event(&event.topic, &event.payload, event.timestamp_ms);
        let duration = started.elapsed();
        let fuel_used = match result {
            Err(Failure::EventTooLarge { .. }) => 0,
            _ => compiled
                .manifest
                .limits
                .fuel
                .saturating_sub(instance.fuel_left()),
        };
        let (outputs, logs) = instance.capture();
        Ok(Invoked {
            version: compiled.manifest.version.clone(),
            duration,
            fuel_used,
            failure: result.err().map(|f| f.to_string()),
            outputs,
            logs,
        })
    }

    /// Runs `job`'s version (or the live one) over its events in order, in
    /// an instance of its own seeded with a copy of the state; with another
    /// version than the live one, the live one runs beside it on its own
    /// copy and the events whose outputs differ are counted.
    fn replay(&mut self, job: &Replay) -> Result<Replayed, String> {
        use super::control::InvokeOutput;
        let name = self.handle.name.clone();
        let live = self
            .compiled
            .clone()
            .ok_or_else(|| format!("function {name:?} has no version running yet"))?;
        let chosen = job.compiled.clone().unwrap_or_else(|| live.clone());
        let state = self.state().snapshot();
        let fresh = |compiled: &Arc<Compiled>, state: StateCache| {
            let seed = Seed {
                state,
                counters: Arc::new(OutputCounters::default()),
            };
            self.runtime
                .instantiate(compiled, seed)
                .map(|mut i| {
                    drop(i.capture());
                    i
                })
                .map_err(|(e, _)| format!("function {name:?} could not be instantiated: {e}"))
        };
        let mut run = fresh(&chosen, state.snapshot())?;
        let mut beside = if Arc::ptr_eq(&chosen, &live) {
            None
        } else {
            Some(fresh(&live, state)?)
        };
        let mut out = Replayed {
            version: chosen.manifest.version.clone(),
            differed: beside.as_ref().map(|_| 0),
            ..Replayed::default()
        };
        let started = Instant::now();
        for event in &job.events {
            if started.elapsed() >= REPLAY_BUDGET {
                break;
            }
            out.replayed += 1;
            let result = run.on_event(&event.topic, &event.payload, event.created_ms);
            let print = run.fingerprint();
            let (outputs, _logs) = run.capture();
            if let Err(f) = result {
                out.errors += 1;
                if out.first_errors.len() < REPLAY_ERRORS {
                    out.first_errors.push(f.to_string());
                }
            }
            for o in outputs {
                match o {
                    InvokeOutput::Publish { .. } => out.publishes += 1,
                    InvokeOutput::Emit { .. } => out.emits += 1,
                    InvokeOutput::Forward { .. } => out.forwards += 1,
                }
                if out.outputs.len() < REPLAY_OUTPUTS {
                    out.outputs.push(o);
                }
            }
            if let Some(other) = beside.as_mut() {
                let _ = other.on_event(&event.topic, &event.payload, event.created_ms);
                if other.fingerprint() != print {
                    *out.differed.get_or_insert(0) += 1;
                }
                drop(other.capture());
                if other.is_poisoned() {
                    let seed = beside.take().expect("there").into_seed();
                    beside = Some(fresh(&live, seed.state)?);
                }
            }
            if run.is_poisoned() {
                run = fresh(&chosen, run.into_seed().state)?;
            }
        }
        out.duration = started.elapsed();
        Ok(out)
    }

    fn start_rollout(&mut self, start: rollout::Start) {
        let started = {
            let version = self.compiled.as_ref().map(|c| c.manifest.version.clone());
            let state = match &mut self.instance {
                Some(i) => i.state_mut(),
                None => &mut self.seed.get_or_insert_with(Seed::default).state,
            };
            let live = (&*state, version.as_deref());
            Candidate::start(&self.runtime, &start, live, &self.handle.rollout)
        };
        match started {
            Ok(candidate) => {
                tracing::info!(
                    function = %self.handle.name,
                    version = %candidate.compiled.manifest.version,
                    mode = candidate.mode.noun(),
                    "rollout started"
                );
                self.candidate = Some(candidate);
                let _ = start.ready.send(Ok(()));
            }
            Err(e) => {
                let _ = start.ready.send(Err(e));
            }
        }
    }

    /// Ends the candidate for `reason` (its status keeps the reason).
    fn end_candidate(&mut self, reason: String) {
        tracing::warn!(function = %self.handle.name, "{reason}");
        self.end_canary();
        lock(&self.handle.status).last_error = Some(reason);
    }

    /// The live instance, re-created first if a trap poisoned it.
    fn instance(&mut self) -> Option<&mut Instance> {
        if self.instance.as_ref().is_some_and(Instance::is_poisoned) {
            let seed = self.instance.take().map(Instance::into_seed);
            self.seed = seed;
        }
        if self.instance.is_none() {
            let compiled = self.compiled.clone()?;
            if !self.handle.is_running() {
                return None;
            }
            let seed = self.seed.take().unwrap_or_default();
            match self.runtime.instantiate(&compiled, seed) {
                Ok(mut instance) => {
                    let (publisher, name) = (&mut self.publisher, &self.handle.name);
                    instance.release(|t, p| publish(publisher, name, t, p));
                    self.instance = Some(instance);
                }
                Err((e, seed)) => {
                    self.seed = Some(seed);
                    self.stop(format!("could not be restarted after a trap: {e}"));
                    return None;
                }
            }
        }
        self.instance.as_mut()
    }

    fn on_event(&mut self, event: Event) {
        // `[replay] keep_events_s`: the buffer keeps the event (refcounted
        // handles to the broker's buffers; nothing is copied here).
        let kept = self
            .compiled
            .as_ref()
            .map(|c| c.manifest.replay.keep_events_s)
            .filter(|&s| s > 0)
            .map(|keep_s| {
                self.runtime.keep_event(crate::buffer::NewEvent {
                    function: self.handle.name.clone(),
                    topic: event.topic.clone(),
                    payload: event.payload.clone(),
                    created_ms: event.timestamp_ms,
                    expires_ms: event.timestamp_ms + keep_s as i64 * 1000,
                })
            });
        // Which events a rollback or a canary's end re-runs (`upgrade.rs`).
        self.since.record(&event, kept);
        if let Some(fork) = self.candidate.as_mut().and_then(|c| c.fork.as_mut()) {
            fork.since.record(&event, kept);
        }
        let route = self
            .candidate
            .as_mut()
            .map_or(Route::Live, Candidate::route);
        // A canary that failed without effect leaves the event to the live
        // version (see the rollout module).
        if route == Route::Candidate && !self.on_canary_event(&event) {
            return;
        }
        let Some(instance) = self.instance() else {
            return;
        };
        let started = Instant::now();
        let result = instance.on_event(&event.topic, &event.payload, event.timestamp_ms);
        let fuel_left = instance.fuel_left();
        // Only while a shadow runs: what the live version's outputs were.
        let live = (route == Route::Both).then(|| instance.fingerprint());
        self.finish(result, started, fuel_left);
        if let (Some(live), Some(shadow)) = (live, self.candidate.as_mut()) {
            if let Some(reason) =
                shadow.shadow_event(&self.runtime, &event, live, &self.handle.rollout)
            {
                self.end_candidate(reason);
            }
        }
    }

    /// A canary's share of the events: run on its own state, outputs
    /// delivered. Returns whether the live version must take the event
    /// (the canary failed on it without effect, or is gone).
    fn on_canary_event(&mut self, event: &Event) -> bool {
        let Some(canary) = self.candidate.as_mut() else {
            return true;
        };
        let (publisher, name) = (&mut self.publisher, &self.handle.name);
        let (verdict, without_effect) =
            canary.canary_event(&self.runtime, event, &self.handle.rollout, |t, p| {
                publish(publisher, name, t, p)
            });
        if let Some(reason) = verdict {
            self.end_candidate(reason);
        }
        without_effect
    }

    fn on_tick(&mut self) {
        let every = self
            .compiled
            .as_ref()
            .map_or(0, |c| c.manifest.triggers.every_ms);
        // Skip ticks missed while busy instead of bursting them.
        let now = Instant::now();
        let mut next = self.next_tick.unwrap_or(now);
        while next <= now {
            next += Duration::from_millis(every.max(1));
        }
        self.next_tick = Some(next);
        let Some(instance) = self.instance() else {
            return;
        };
        let started = Instant::now();
        let result = instance.on_timer(now_ms());
        let fuel_left = instance.fuel_left();
        self.finish(result, started, fuel_left);
    }

    fn finish(&mut self, result: Result<(), Failure>, started: Instant, fuel_left: u64) {
        let backpressure = self.instance.as_ref().is_some_and(|i| i.met_backpressure());
        let counters = &self.handle.counters;
        let fuel = self.compiled.as_ref().map_or(0, |c| c.manifest.limits.fuel);
        // An event too large never reached the guest: no fuel was set or
        // burnt for it.
        let fuel_used = match result {
            Err(Failure::EventTooLarge { .. }) => 0,
            _ => fuel.saturating_sub(fuel_left),
        };
        counters.record(started, fuel_used, result.as_ref().err());
        if let Some(instance) = self.instance.as_mut() {
            // After a trap nothing is staged; after a clean return (zero or
            // not) the outputs stand.
            let (publisher, name) = (&mut self.publisher, &self.handle.name);
            instance.release(|t, p| publish(publisher, name, t, p));
        }
        let failure = match result {
            Ok(()) => {
                counters.consecutive_failures.store(0, Ordering::Relaxed);
                return;
            }
            Err(failure) => failure,
        };
        let message = failure.to_string();
        let version = self
            .compiled
            .as_ref()
            .map_or("", |c| c.manifest.version.as_str());
        tracing::warn!(function = %self.handle.name, version, kind = failure.kind(), "invocation failed: {message}");
        lock(&self.handle.status).last_error = Some(message.clone());
        // An event too large for the buffer never reached the guest: it says
        // nothing about the function's health.
        if matches!(failure, Failure::EventTooLarge { .. }) {
            return;
        }
        // A handler that gives up because the gateway answered `FULL` (its
        // output channel was full: the gateway is overloaded) is not
        // unhealthy; stopping it would turn a burst into an outage. Traps
        // still count.
        if backpressure && matches!(failure, Failure::Returned(_)) {
            return;
        }
        let in_a_row = counters
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let max = self
            .compiled
            .as_ref()
            .map_or(u32::MAX, |c| c.manifest.limits.max_consecutive_failures);
        if in_a_row >= max {
            self.stop(format!(
                "stopped by the circuit breaker after {in_a_row} failed invocations in a row; \
                 last: {message}"
            ));
        }
    }

    /// Stops the function: no more events, the reason in its status and in
    /// the registry. A new deploy starts it again.
    fn stop(&mut self, reason: String) {
        self.handle.accepting.store(false, Ordering::Relaxed);
        lock(&self.handle.inbox).events.clear();
        self.next_tick = None;
        if let Some(instance) = self.instance.take() {
            self.seed = Some(instance.into_seed());
        }
        tracing::error!(function = %self.handle.name, "{reason}");
        let version = {
            let mut status = lock(&self.handle.status);
            status.state = RunState::Stopped(reason.clone());
            status.version.clone()
        };
        if let Err(e) = self
            .registry
            .set_stopped(&self.handle.name, &version, Some(&reason))
        {
            tracing::error!(function = %self.handle.name, error = %e, "cannot record the stop in the registry");
        }
    }

    /// Writes the state changes since the last flush in one transaction.
    fn flush(&mut self) {
        self.next_flush = Instant::now() + self.flush_every;
        let registry = self.registry.clone();
        let name = self.handle.name.clone();
        let state = self.state();
        if !state.is_dirty() {
            return;
        }
        match registry.save_state(&name, state.changes()) {
            Ok(()) => state.flushed(),
            // Kept dirty: the next flush tries again.
            Err(e) => tracing::error!(function = %name, error = %e, "cannot save function state"),
        }
    }
}

mod handle;
mod takeover;

use handle::{lock, Command};
pub use handle::{
    Deploy, FunctionHandle, Invoke, Invoked, Replay, Replayed, REPLAY_BUDGET, REPLAY_ERRORS,
    REPLAY_OUTPUTS,
};

fn publish(publisher: &mut LinkTx, function: &str, topic: Bytes, payload: Bytes) {
    if let Err(e) = publisher.publish(topic, payload) {
        tracing::error!(function, error = %e, "cannot publish to the broker");
    }
}
