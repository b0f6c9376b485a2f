//! The worker's side of a stateful upgrade (the model is in `upgrade.rs`):
//! preparing the new version on the right state while the old one keeps
//! its own, committing the switch in one transaction, switching between
//! two events, and rebuilding the live state when a canary ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    lock, now_ms, publish, Compiled, Deploy, Instance, RunState, RuntimeError, Seed, Worker,
    COMMIT_TIMEOUT,
};
use crate::functions::snapshot::Takeover;
use crate::functions::state::StateCache;
use crate::functions::upgrade::{self, Kind, Plan, Since, StateNote};

/// A new version ready to take over, and what the transaction stores.
struct Prepared {
    instance: Instance,
    /// The state the version before left and when it was taken, to keep.
    left: Option<(StateCache, i64)>,
    /// The events handled since the new version's fork point.
    since: Since,
    note: StateNote,
}

impl Worker {
    /// A deploy, promote or rollback: prepares the new version on a copy of
    /// the right state (the live one is untouched until the switch), stores
    /// the snapshot, the new state and the version in one transaction, then
    /// switches. A refused or abandoned takeover changes nothing.
    pub(super) fn take_over(&mut self, d: Deploy, plan: Plan) {
        let prepared = match self.prepare(&d.compiled, &plan) {
            Ok(p) => p,
            Err(e) => {
                let _ = d.ready.send(Err(e));
                return;
            }
        };
        let _ = d.ready.send(Ok(()));
        if d.commit.recv_timeout(COMMIT_TIMEOUT) != Ok(true) {
            return;
        }
        let Prepared {
            mut instance,
            left,
            since,
            mut note,
        } = prepared;
        let stored = crate::functions::registry::StoredVersion {
            deployed_at_ms: now_ms(),
            ..plan.stored
        };
        let rollback_to = match plan.kind {
            Kind::Rollback { seq } => Some(seq),
            _ => None,
        };
        let written = self.registry.take_over(&Takeover {
            version: &stored,
            rollback_to,
            left: left.as_ref().map(|(s, at)| (s, *at)),
            state: instance.state_mut(),
            bounds: plan.bounds,
            now_ms: now_ms(),
        });
        match written {
            Ok(id) => note.snapshot_taken = id,
            Err(e) => {
                let _ = d.switched.send(Err(format!(
                    "the takeover could not be stored, nothing was switched: {e}"
                )));
                return;
            }
        }
        // The transaction wrote the whole state.
        instance.state_mut().flushed();
        self.since = since;
        self.switch_to(instance, d.compiled);
        *lock(&self.handle.state_note) = Some(note.clone());
        let _ = d.switched.send(Ok(Some(note)));
    }

    /// Makes `new` (of `compiled`) the live instance, between two events.
    pub(super) fn switch_to(&mut self, mut new: Instance, compiled: Arc<Compiled>) {
        let name = self.handle.name.clone();
        let publisher = &mut self.publisher;
        new.release(|topic, payload| publish(publisher, &name, topic, payload));
        self.instance = Some(new);
        self.seed = None;
        let manifest = &compiled.manifest;
        {
            let mut inbox = lock(&self.handle.inbox);
            inbox.capacity = manifest.limits.queue_len;
            inbox.policy = manifest.limits.queue_policy;
            let excess = inbox.events.len().saturating_sub(inbox.capacity);
            inbox.events.drain(..excess);
            let extra = inbox.capacity.saturating_sub(inbox.events.capacity());
            inbox.events.reserve_exact(extra);
        }
        self.next_tick = (manifest.triggers.every_ms > 0)
            .then(|| Instant::now() + Duration::from_millis(manifest.triggers.every_ms));
        self.deployed_at_ms = now_ms();
        {
            let mut status = lock(&self.handle.status);
            status.version = manifest.version.clone();
            status.sha256 = compiled.sha256.clone();
            status.deployed_at_ms = self.deployed_at_ms;
            status.state = RunState::Running;
            status.last_error = None;
        }
        self.handle
            .counters
            .consecutive_failures
            .store(0, Ordering::Relaxed);
        self.compiled = Some(compiled);
        // A deploy (or the promotion of the candidate) replaces both.
        self.candidate = None;
        *lock(&self.handle.rollout) = None;
        self.handle.accepting.store(true, Ordering::Relaxed);
    }

    fn prepare(&mut self, compiled: &Arc<Compiled>, plan: &Plan) -> Result<Prepared, RuntimeError> {
        let own = compiled.manifest.version.clone();
        let running = self.compiled.as_ref().map(|c| c.manifest.version.clone());
        let counters = self.handle.counters.outputs.clone();
        let instantiate = |runtime: &crate::functions::runtime::Runtime, state| {
            runtime
                .instantiate(
                    compiled,
                    Seed {
                        state,
                        counters: counters.clone(),
                    },
                )
                .map_err(|(e, _)| e)
        };
        let now = now_ms();
        match plan.kind {
            Kind::Deploy => {
                let mut note = StateNote::new("deploy");
                let base = self.live_base(&mut note);
                let mut instance = instantiate(&self.runtime, base.snapshot())?;
                upgrade::migrate(&mut instance, &own, running.as_deref(), &mut note)?;
                let left = (running.is_some() && running.as_deref() != Some(own.as_str()))
                    .then_some((base, now));
                Ok(Prepared {
                    instance,
                    left,
                    since: Since::new(now),
                    note,
                })
            }
            Kind::Promote => self.prepare_promote(compiled, running.as_deref(), &instantiate),
            Kind::Rollback { seq } => {
                let mut note = StateNote::new("rollback");
                let snapshot = self
                    .registry
                    .snapshot_of(seq, plan.bounds, now)
                    .map_err(|e| RuntimeError::Upgrade(format!("cannot read the snapshot: {e}")))?;
                let state = match snapshot {
                    Some((info, rows)) => {
                        note.snapshot_restored = Some(info.id);
                        let since = (self.since.at_ms == info.taken_at_ms).then_some(&self.since);
                        let name = self.handle.name.clone();
                        let events =
                            upgrade::kept_since(&self.source, &name, since, info.taken_at_ms);
                        let base = StateCache::from_rows(rows);
                        upgrade::rebuild(
                            &self.runtime,
                            compiled,
                            base.snapshot(),
                            events,
                            &mut note,
                        )
                        .unwrap_or(base)
                    }
                    None => {
                        note.events_not_rerun = Some(format!(
                            "no snapshot of the state {own} left was kept (functions.snapshots_keep \
                             and snapshots_max_age_s bound them): the state stays as {} left it",
                            running.as_deref().unwrap_or("the version rolled back")
                        ));
                        self.state().snapshot()
                    }
                };
                let mut instance = instantiate(&self.runtime, state)?;
                if note.snapshot_restored.is_none() {
                    upgrade::migrate(&mut instance, &own, running.as_deref(), &mut note)?;
                }
                Ok(Prepared {
                    instance,
                    left: None,
                    since: Since::new(now),
                    note,
                })
            }
        }
    }

    /// A promote: a canary's state is rebuilt from its fork point through
    /// the canary version (migrated first); a shadow, or a canary whose
    /// events cannot be had, takes over the live state, migrated.
    fn prepare_promote(
        &mut self,
        compiled: &Arc<Compiled>,
        running: Option<&str>,
        instantiate: &dyn Fn(
            &crate::functions::runtime::Runtime,
            StateCache,
        ) -> Result<Instance, RuntimeError>,
    ) -> Result<Prepared, RuntimeError> {
        let own = compiled.manifest.version.clone();
        let mut note = StateNote::new("promote");
        let now = now_ms();
        let name = self.handle.name.clone();
        let fork = self.candidate.as_ref().and_then(|c| c.fork.as_ref());
        if let Some(fork) = fork {
            match upgrade::kept_since(&self.source, &name, Some(&fork.since), fork.since.at_ms) {
                Ok(events) => {
                    let mut instance = instantiate(&self.runtime, fork.base.snapshot())?;
                    upgrade::migrate(&mut instance, &own, running, &mut note)?;
                    let instance =
                        upgrade::rerun(&self.runtime, compiled, instance, &events, &mut note)?;
                    return Ok(Prepared {
                        instance,
                        left: Some((fork.base.snapshot(), fork.since.at_ms)),
                        since: fork.since.clone(),
                        note,
                    });
                }
                Err(why) => {
                    note.events_not_rerun = Some(format!(
                        "the events since the canary started were not re-run through it, so \
                         the state is the live version's, migrated, without the canary's \
                         share: {why}"
                    ));
                }
            }
        }
        let base = self.state().snapshot();
        let mut instance = instantiate(&self.runtime, base.snapshot())?;
        upgrade::migrate(&mut instance, &own, running, &mut note)?;
        Ok(Prepared {
            instance,
            left: Some((base, now)),
            since: Since::new(now),
            note,
        })
    }

    /// The live state a deploy starts from: during a canary, rebuilt from
    /// its fork point through the live version (so the canary's share is
    /// in it); otherwise a copy of the live state.
    fn live_base(&mut self, note: &mut StateNote) -> StateCache {
        let name = self.handle.name.clone();
        if let (Some(fork), Some(live)) = (
            self.candidate.as_ref().and_then(|c| c.fork.as_ref()),
            self.compiled.clone(),
        ) {
            let events =
                upgrade::kept_since(&self.source, &name, Some(&fork.since), fork.since.at_ms);
            if let Some(state) =
                upgrade::rebuild(&self.runtime, &live, fork.base.snapshot(), events, note)
            {
                return state;
            }
        }
        self.state().snapshot()
    }

    /// Ends the canary or shadow. After a canary, the live state becomes
    /// the state at its fork point with every event since re-run through
    /// the live version, as if the canary never ran; the note says what
    /// was done (also in the function's status).
    pub(super) fn end_canary(&mut self) -> Option<StateNote> {
        let candidate = self.candidate.take()?;
        let fork = candidate.fork?;
        let live = self.compiled.clone()?;
        let mut note = StateNote::new("canary_ended");
        let name = self.handle.name.clone();
        let events = upgrade::kept_since(&self.source, &name, Some(&fork.since), fork.since.at_ms);
        match upgrade::rebuild(&self.runtime, &live, fork.base, events, &mut note) {
            Some(state) => self.state().replace_with(state),
            None => {
                let why = note.events_not_rerun.take().unwrap_or_default();
                note.events_not_rerun = Some(format!(
                    "the events the canary handled are not in the live state: {why}"
                ));
            }
        }
        tracing::info!(
            function = %name,
            rerun = note.events_rerun,
            missing = ?note.events_not_rerun,
            "canary ended: live state rebuilt from its fork point"
        );
        *lock(&self.handle.state_note) = Some(note.clone());
        Some(note)
    }
}
