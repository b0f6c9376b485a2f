//! Rollouts, promotion, rollback and removal of a deployed function.

use super::*;

impl Inner {
    /// Starts `compiled` as a canary or shadow beside the running version
    /// (see [`rollout`]); replaces a rollout under way.
    pub(super) fn start_rollout(
        &self,
        table: &mut Table,
        compiled: &Arc<runtime::Compiled>,
        stored: StoredVersion,
        mode: rollout::Mode,
    ) -> Result<(), DeployError> {
        let name = stored.name.clone();
        let entry = table
            .functions
            .get_mut(&name)
            .filter(|e| e.handle.is_running())
            .ok_or_else(|| DeployError::NoLiveVersion(name.clone()))?;
        let (ready_tx, ready_rx) = sync_mpsc::sync_channel(1);
        entry.handle.start_rollout(rollout::Start {
            compiled: compiled.clone(),
            mode,
            judge: rollout::Judge {
                window_events: self.config.canary_window_events,
                max_error_percent: self.config.canary_max_error_percent,
            },
            ready: ready_tx,
        });
        ready_rx
            .recv_timeout(READY_TIMEOUT)
            .map_err(|_| DeployError::Timeout(name.clone()))??;
        entry.candidate = Some((compiled.clone(), stored));
        Ok(())
    }

    /// Makes the canary or shadow the function's only version, through the
    /// same switch as a deploy. Returns (the version replaced, the one now
    /// running).
    pub(super) fn promote(&self, name: &str) -> Result<Done, DeployError> {
        let _busy = self.claim(name)?;
        let mut table = self.lock();
        let entry = table
            .functions
            .get_mut(name)
            .ok_or_else(|| DeployError::NotDeployed(name.to_owned()))?;
        let live = entry.handle.rollout().is_some_and(|r| r.state == "running");
        let Some((compiled, stored)) = entry.candidate.take().filter(|_| live) else {
            return Err(DeployError::NoRollout(name.to_owned()));
        };
        let stored = StoredVersion {
            deployed_at_ms: runtime::now_ms(),
            ..stored
        };
        match self.install(&mut table, &compiled, &stored, upgrade::Kind::Promote) {
            Ok(installed) => Ok(Done::switched(installed, stored.version)),
            Err(e) => {
                // The rollout goes on: the candidate is still the worker's.
                if let Some(entry) = table.functions.get_mut(name) {
                    entry.candidate = Some((compiled, stored));
                }
                Err(e)
            }
        }
    }

    /// Ends a canary or shadow that is running; returns its version, or
    /// None when there was none.
    #[allow(clippy::type_complexity)]
    pub(super) fn end_rollout(
        &self,
        table: &mut Table,
        name: &str,
    ) -> Result<Option<(String, Option<upgrade::StateNote>)>, DeployError> {
        let Some(entry) = table.functions.get_mut(name) else {
            return Ok(None);
        };
        let candidate = entry.candidate.take();
        let Some(info) = entry.handle.rollout().filter(|r| r.state == "running") else {
            return Ok(None);
        };
        let (done_tx, done_rx) = sync_mpsc::sync_channel(1);
        entry.handle.end_rollout(done_tx);
        let note = done_rx
            .recv_timeout(READY_TIMEOUT)
            .map_err(|_| DeployError::Timeout(name.to_owned()))?;
        let version = candidate.map_or(info.version, |(_, s)| s.version);
        Ok(Some((version, note)))
    }

    /// Returns to the version that ran before the current one, exactly as
    /// it was deployed. Returns (the version replaced, the one now running).
    pub(super) fn rollback(&self, name: &str) -> Result<Done, DeployError> {
        let _busy = self.claim(name)?;
        {
            // During a canary or shadow, a rollback ends it and nothing else.
            let mut table = self.lock();
            if let Some((ended, state)) = self.end_rollout(&mut table, name)? {
                let running = table.functions.get(name).map(|e| e.handle.status().version);
                return Ok(Done {
                    replaced: Some(ended),
                    version: running,
                    warning: None,
                    state,
                });
            }
        }
        let current = self
            .lock()
            .functions
            .get(name)
            .map(|e| (e.handle.status().version, e.versions.clone()))
            .ok_or_else(|| DeployError::NotDeployed(name.to_owned()))?;
        let Some((stored, seq)) = self.registry.rollback_target(name)? else {
            // The registry, not the worker's status: right after a deploy
            // the worker may not have switched yet.
            let version = self
                .registry
                .active()?
                .into_iter()
                .find(|v| v.name == name)
                .map_or(current.0, |v| v.version);
            return Err(DeployError::NoPrevious {
                name: name.to_owned(),
                version,
                kept: current.1.join(", "),
            });
        };
        let manifest = self.manifest(&stored.manifest)?;
        let compiled = Arc::new(self.runtime.compile(manifest, &stored.wasm)?);
        let stored = StoredVersion {
            deployed_at_ms: runtime::now_ms(),
            ..stored
        };
        let mut table = self.lock();
        let installed = self.install(
            &mut table,
            &compiled,
            &stored,
            upgrade::Kind::Rollback { seq },
        )?;
        Ok(Done::switched(installed, stored.version))
    }

    /// Stops a function and deletes its versions and state. Returns (the
    /// version that ran, None).
    pub(super) fn remove(&self, name: &str) -> Result<Done, DeployError> {
        let _busy = self.claim(name)?;
        let mut table = self.lock();
        let mut version = None;
        if let Some(mut entry) = table.functions.remove(name) {
            version = Some(entry.handle.status().version);
            entry.handle.shutdown();
            if let Some(thread) = entry.thread.take() {
                if thread.join().is_err() {
                    tracing::error!(function = %name, "function worker panicked");
                }
            }
            self.update_triggers(&mut table)
                .map_err(FunctionsError::from)?;
        }
        // Also removes what the registry has but could not be started.
        if !self.registry.remove(name)? && version.is_none() {
            return Err(DeployError::NotDeployed(name.to_owned()));
        }
        Ok(Done {
            replaced: version,
            version: None,
            warning: None,
            state: None,
        })
    }
}
