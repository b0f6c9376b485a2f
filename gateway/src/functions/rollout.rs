//! Canary and shadow rollouts: a candidate version of a function runs beside
//! the live one, on the function's own worker thread, until it is promoted,
//! rolled back or replaced.
//!
//! # Canary (`perch fn deploy ... --canary PERCENT`)
//!
//! The candidate takes PERCENT of the function's events, the live version
//! the rest. The split is deterministic, not random: an accumulator adds
//! PERCENT per event and the event goes to the canary each time the sum
//! passes 100, so of N events exactly ⌊N·PERCENT/100⌋ reach the canary,
//! evenly spread (with 10: the 10th, the 20th, ...). Every event is handled
//! by exactly one of the two, except that an event the canary failed on
//! without effect (a trap, a timeout, an event too large for it, a canary
//! that could not be re-created) is then handled by the live version too,
//! so no event's output is lost to a broken canary; an event on which the
//! canary's handler *returned* an error is not (its outputs and state
//! writes stand, as for any version, and running the live version too would
//! apply the event twice). The canary works on a fork of the state: a copy
//! of the live state taken when it started, on which its `perch_migrate`
//! runs; its writes stay there and never reach the live state, which only
//! the live version writes. When the canary ends (rolled back by itself or
//! by `rollback`, or replaced by a deploy), the live state is rebuilt from
//! the fork point with every event since run through the live version; a
//! promote rebuilds it through the canary version instead (`upgrade.rs`).
//! Its publishes, emits and forwards are delivered like the live version's.
//!
//! It is judged over windows of `functions.canary_window_events` of its own
//! invocations: as soon as more than `functions.canary_max_error_percent`
//! of one window have failed, it is rolled back automatically. The live
//! version never stopped taking events, so nothing else changes; the
//! function's status keeps the canary object with `"state": "rolled_back"`,
//! the reason and the counts, and its `last_error` says so, until the next
//! deploy.
//!
//! # Shadow (`perch fn deploy ... --shadow`)
//!
//! The candidate runs on a copy of every event the live version handles,
//! right after it, on a copy of the state taken when the shadow started
//! (its state writes are never saved). Its publishes, emits and forwards are
//! discarded, never delivered; a hash of them is compared with the hash of
//! the live version's outputs for the same event, and a difference is
//! counted (`differing`). A shadow is never rolled back automatically: it
//! can take nothing down. Interval ticks go to the live version only.
//!
//! # How a rollout ends
//!
//! - `promote` makes the candidate the live version through the ordinary
//!   takeover: instantiated afresh, stored in the registry, switched between
//!   two events; a canary's state is rebuilt from its fork point through it
//!   (a shadow's takes over the live state, migrated).
//! - `rollback` during a rollout ends the rollout; the live version stays
//!   (after a canary, on the rebuilt state).
//! - Any plain deploy of the function replaces both.
//! - A restart resolves it: a candidate is never written to the registry,
//!   so the gateway comes back with the live version only (deploy the
//!   canary again to resume it). A clean stop first ends a canary as a
//!   rollback does, so its share of the events is in the live state.
//!
//! The `perch_init` (and `perch_migrate`) of a candidate runs on a copy of
//! the state and its outputs are discarded.

use std::sync::{mpsc as sync_mpsc, Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::dispatch::Event;
use super::runtime::{
    now_ms, Compiled, Failure, Instance, OutputCounters, Runtime, RuntimeError, Seed,
};
use super::state::StateCache;
use super::upgrade::{self, Fork, Since, StateNote};

/// How a candidate shares the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// This share of events (1–99 percent) goes to the candidate.
    Canary { percent: u8 },
    /// The candidate sees every event; its outputs are discarded.
    Shadow,
}

/// When a canary is rolled back (`[functions]` canary keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judge {
    pub window_events: u64,
    pub max_error_percent: u8,
}

/// A rollout as `perch fn status` shows it: the `canary` or `shadow` object
/// of [`super::control::FunctionInfo`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutInfo {
    /// The candidate's version.
    pub version: String,
    /// SHA-256 of its module.
    pub sha256: String,
    /// A canary's share of the events, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    /// `running`, or `rolled_back` (automatically, see `reason`).
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The candidate's invocations and failed invocations.
    pub invocations: u64,
    pub errors: u64,
    /// A shadow's invocations whose outputs differed from the live
    /// version's for the same event.
    #[serde(default)]
    pub differing: u64,
    /// Invocations and failures in the current window (a canary's).
    #[serde(default)]
    pub window_invocations: u64,
    #[serde(default)]
    pub window_errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub started_at_ms: i64,
}

/// A rollout for the worker to start.
pub struct Start {
    pub compiled: Arc<Compiled>,
    pub mode: Mode,
    pub judge: Judge,
    /// The worker's verdict: the candidate is instantiated and takes its
    /// share from the next event on, or why not.
    pub ready: sync_mpsc::SyncSender<Result<(), RuntimeError>>,
}

/// Where an event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Live,
    Candidate,
    /// The live version, then a copy to the shadow.
    Both,
}

/// The candidate, owned by the function's worker thread.
pub struct Candidate {
    pub compiled: Arc<Compiled>,
    pub mode: Mode,
    judge: Judge,
    /// Exactly one of `instance` and `seed` is set.
    instance: Option<Instance>,
    seed: Option<Seed>,
    /// The canary split's accumulator (percent points).
    acc: u32,
    /// A canary's fork point (a shadow has none: it never owns state).
    pub fork: Option<Fork>,
}

impl Candidate {
    /// Instantiates the candidate on a copy of the live state and publishes
    /// its status in `status`.
    pub fn start(
        runtime: &Runtime,
        start: &Start,
        live: (&StateCache, Option<&str>),
        status: &Mutex<Option<RolloutInfo>>,
    ) -> Result<Candidate, RuntimeError> {
        let (live_state, live_version) = live;
        let seed = Seed {
            state: live_state.snapshot(),
            counters: Arc::new(OutputCounters::default()),
        };
        let mut instance = runtime
            .instantiate(&start.compiled, seed)
            .map_err(|(e, _)| e)?;
        instance.discard();
        let mut fork = None;
        if matches!(start.mode, Mode::Canary { .. }) {
            // A canary owns a fork of the state, in its own format.
            let own = start.compiled.manifest.version.as_str();
            let mut note = StateNote::default();
            upgrade::migrate(&mut instance, own, live_version, &mut note)?;
            fork = Some(Fork {
                base: live_state.snapshot(),
                since: Since::new(now_ms()),
            });
        }
        *lock(status) = Some(RolloutInfo {
            version: start.compiled.manifest.version.clone(),
            sha256: start.compiled.sha256.clone(),
            percent: match start.mode {
                Mode::Canary { percent } => Some(percent),
                Mode::Shadow => None,
            },
            state: "running".into(),
            started_at_ms: now_ms(),
            ..RolloutInfo::default()
        });
        Ok(Candidate {
            compiled: start.compiled.clone(),
            mode: start.mode,
            judge: start.judge,
            instance: Some(instance),
            seed: None,
            acc: 0,
            fork,
        })
    }

    /// Decides where the next event goes.
    #[inline]
    pub fn route(&mut self) -> Route {
        match self.mode {
            Mode::Shadow => Route::Both,
            Mode::Canary { percent } if split(&mut self.acc, percent) => Route::Candidate,
            Mode::Canary { .. } => Route::Live,
        }
    }

    /// Runs a canary's share of an event on its own state; its outputs go
    /// to `publish` and the output channel like the live version's. Returns
    /// why the canary must be rolled back, if it must, and whether the event
    /// had no effect (the canary trapped, timed out, could not take it or
    /// could not be re-created), so the live version must handle it.
    pub fn canary_event(
        &mut self,
        runtime: &Runtime,
        event: &Event,
        status: &Mutex<Option<RolloutInfo>>,
        publish: impl FnMut(Bytes, Bytes),
    ) -> (Option<String>, bool) {
        if self.instance.as_ref().is_some_and(Instance::is_poisoned) {
            self.seed = self.instance.take().map(Instance::into_seed);
        }
        let instance = match self.instance.take() {
            Some(instance) => instance,
            None => {
                let seed = self.seed.take().unwrap_or_default();
                match runtime.instantiate(&self.compiled, seed) {
                    Ok(mut instance) => {
                        instance.discard();
                        instance
                    }
                    Err((e, seed)) => {
                        self.seed = Some(seed);
                        let why = format!("could not be restarted after a trap: {e}");
                        return (self.ended(status, why), true);
                    }
                }
            }
        };
        let instance = self.instance.insert(instance);
        let result = instance.on_event(&event.topic, &event.payload, event.timestamp_ms);
        instance.release(publish);
        // A trapped or stopped invocation staged nothing and undid its
        // state writes; an event too large never reached the guest.
        let without_effect = matches!(result, Err(ref f) if !matches!(f, Failure::Returned(_)));
        (self.record(status, result.err(), false), without_effect)
    }

    /// Runs a shadow on a copy of an event the live version handled, whose
    /// outputs hashed to `live`; discards its outputs. Returns why the
    /// shadow ended, if it did.
    pub fn shadow_event(
        &mut self,
        runtime: &Runtime,
        event: &Event,
        live: u64,
        status: &Mutex<Option<RolloutInfo>>,
    ) -> Option<String> {
        if self.instance.as_ref().is_some_and(Instance::is_poisoned) {
            self.seed = self.instance.take().map(Instance::into_seed);
        }
        if self.instance.is_none() {
            let seed = self.seed.take().unwrap_or_default();
            match runtime.instantiate(&self.compiled, seed) {
                Ok(mut instance) => {
                    instance.discard();
                    self.instance = Some(instance);
                }
                Err((e, seed)) => {
                    self.seed = Some(seed);
                    return self.ended(status, format!("could not be restarted after a trap: {e}"));
                }
            }
        }
        let instance = self.instance.as_mut()?;
        let result = instance.on_event(&event.topic, &event.payload, event.timestamp_ms);
        let differs = instance.fingerprint() != live;
        instance.discard();
        self.record(status, result.err(), differs)
    }

    /// Counts one invocation; judges a canary's window.
    fn record(
        &mut self,
        status: &Mutex<Option<RolloutInfo>>,
        failure: Option<Failure>,
        differs: bool,
    ) -> Option<String> {
        let mut guard = lock(status);
        let info = guard.as_mut()?;
        info.invocations += 1;
        info.window_invocations += 1;
        if differs {
            info.differing += 1;
        }
        if let Some(failure) = &failure {
            info.errors += 1;
            info.window_errors += 1;
            info.last_error = Some(failure.to_string());
        }
        let judge = self.judge;
        let verdict = match self.mode {
            Mode::Canary { .. } if too_many(info.window_errors, judge) => Some(format!(
                "canary {} rolled back automatically: {} of its last {} invocations failed, \
                 more than functions.canary_max_error_percent ({}%) of a {}-invocation window; \
                 last error: {}",
                info.version,
                info.window_errors,
                info.window_invocations,
                judge.max_error_percent,
                judge.window_events,
                info.last_error.as_deref().unwrap_or("none"),
            )),
            _ => None,
        };
        if info.window_invocations >= judge.window_events {
            info.window_invocations = 0;
            info.window_errors = 0;
        }
        if let Some(reason) = &verdict {
            info.state = "rolled_back".into();
            info.reason = Some(reason.clone());
        }
        verdict
    }

    /// Marks the rollout as ended for `why`; returns the reason to report.
    fn ended(&self, status: &Mutex<Option<RolloutInfo>>, why: String) -> Option<String> {
        let mut guard = lock(status);
        let info = guard.as_mut()?;
        let reason = format!("{} {} ended: {why}", self.mode.noun(), info.version);
        info.state = "rolled_back".into();
        info.reason = Some(reason.clone());
        Some(reason)
    }
}

impl Mode {
    pub fn noun(&self) -> &'static str {
        match self {
            Mode::Canary { .. } => "canary",
            Mode::Shadow => "shadow",
        }
    }
}

/// The canary split: whether the next event goes to the canary.
#[inline]
fn split(acc: &mut u32, percent: u8) -> bool {
    *acc += u32::from(percent);
    if *acc >= 100 {
        *acc -= 100;
        true
    } else {
        false
    }
}

/// Whether `errors` failures exceed the allowed share of a window.
fn too_many(errors: u64, judge: Judge) -> bool {
    errors * 100 > u64::from(judge.max_error_percent) * judge.window_events
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route_of(percent: u8, events: usize) -> Vec<Route> {
        let mut acc = 0u32;
        (0..events)
            .map(|_| match split(&mut acc, percent) {
                true => Route::Candidate,
                false => Route::Live,
            })
            .collect()
    }

    #[test]
    fn the_canary_split_is_exact_and_even() {
        let r = route_of(10, 100);
        let canary: Vec<usize> = r
            .iter()
            .enumerate()
            .filter(|(_, r)| **r == Route::Candidate)
            .map(|(i, _)| i + 1)
            .collect();
        assert_eq!(canary, vec![10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
        for percent in [1u8, 7, 33, 50, 99] {
            for n in [1usize, 17, 100, 1000] {
                let got = route_of(percent, n)
                    .iter()
                    .filter(|r| **r == Route::Candidate)
                    .count();
                assert_eq!(got, n * percent as usize / 100, "{percent}% of {n}");
            }
        }
    }

    #[test]
    fn a_window_fails_once_errors_pass_the_share() {
        let judge = Judge {
            window_events: 20,
            max_error_percent: 10,
        };
        assert!(!too_many(2, judge));
        assert!(too_many(3, judge));
        let strict = Judge {
            window_events: 20,
            max_error_percent: 0,
        };
        assert!(too_many(1, strict));
        assert!(!too_many(0, strict));
    }
}
