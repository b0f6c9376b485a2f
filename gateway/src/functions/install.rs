//! Deploying a version: the bundle checked, the instance created on the worker, the version installed and the triggers updated.

use super::*;

impl Inner {
    /// Creates the handle, link and worker of a function name.
    pub(super) fn create(
        &self,
        table: &mut Table,
        compiled: &runtime::Compiled,
    ) -> Result<Arc<FunctionHandle>, DeployError> {
        let name = &compiled.manifest.name;
        if let Some(entry) = table.functions.get(name) {
            return Ok(entry.handle.clone());
        }
        if table.functions.len() >= self.config.max_functions {
            return Err(DeployError::TooMany {
                max: self.config.max_functions,
            });
        }
        let handle = FunctionHandle::new(name);
        let publisher = self
            .links
            .open(&format!("fn-{name}"))
            .map_err(FunctionsError::from)?;
        let state = StateCache::from_rows(
            self.registry
                .load_state(name)
                .map_err(FunctionsError::from)?,
        );
        let thread = dispatch::spawn_worker(
            handle.clone(),
            self.runtime.clone(),
            self.registry.clone(),
            publisher,
            state,
            Duration::from_millis(self.config.state_commit_interval_ms),
            self.event_source(),
        )
        .map_err(|source| FunctionsError::Thread {
            name: name.clone(),
            source,
        })?;
        table.functions.insert(
            name.clone(),
            Entry {
                handle: handle.clone(),
                thread: Some(thread),
                filters: compiled.manifest.trigger_filters().into(),
                every_ms: compiled.manifest.triggers.every_ms,
                versions: self.registry.version_names(name).unwrap_or_default(),
                snapshots: self.registry.snapshots(name).unwrap_or_default(),
                candidate: None,
            },
        );
        Ok(handle)
    }

    /// Gives a version to the worker; returns its verdict, the sender that
    /// commits (or, dropped, abandons) the switch and the receiver that
    /// hears when the worker has switched.
    pub(super) fn hand_over(
        &self,
        handle: &FunctionHandle,
        compiled: Arc<runtime::Compiled>,
        takeover: Option<upgrade::Plan>,
    ) -> Result<HandedOver, DeployError> {
        let (ready_tx, ready_rx) = sync_mpsc::sync_channel(1);
        let (commit_tx, commit_rx) = sync_mpsc::sync_channel(1);
        let (switched_tx, switched_rx) = sync_mpsc::sync_channel(1);
        handle.deploy(dispatch::Deploy {
            compiled,
            ready: ready_tx,
            commit: commit_rx,
            switched: switched_tx,
            takeover,
        });
        let ready = ready_rx
            .recv_timeout(READY_TIMEOUT)
            .map_err(|_| DeployError::Timeout(handle.name.to_string()))?;
        Ok(HandedOver {
            ready,
            commit: commit_tx,
            switched: switched_rx,
        })
    }

    /// Handles one deploy request; always answers.
    pub(super) fn deploy(&self, payload: &[u8]) -> DeployReply {
        let (request_id, bundle, result) = match control::decode_deploy_request(payload) {
            Ok((options, bundle)) => {
                let result = self.try_deploy(bundle, &options);
                (options.request_id, bundle, result)
            }
            Err(e) => (None, payload, Err(e.into())),
        };
        let bundle_sha256 = control::sha256_hex(bundle);
        match result {
            Ok((
                compiled,
                Installed {
                    replaced,
                    warning,
                    state,
                },
            )) => {
                tracing::info!(
                    function = %compiled.manifest.name,
                    version = %compiled.manifest.version,
                    bytes = compiled.wasm_len,
                    "deployed"
                );
                DeployReply {
                    ok: true,
                    bundle_sha256,
                    request_id,
                    name: Some(compiled.manifest.name.clone()),
                    version: Some(compiled.manifest.version.clone()),
                    sha256: Some(compiled.sha256.clone()),
                    replaced,
                    error: None,
                    warning,
                    state,
                }
            }
            Err(e) => {
                tracing::warn!("deploy refused: {e}");
                DeployReply {
                    ok: false,
                    bundle_sha256,
                    request_id,
                    name: None,
                    version: None,
                    sha256: None,
                    replaced: None,
                    error: Some(e.to_string()),
                    warning: None,
                    state: None,
                }
            }
        }
    }

    #[allow(clippy::type_complexity)]
    pub(super) fn try_deploy(
        &self,
        bundle: &[u8],
        options: &control::DeployOptions,
    ) -> Result<(Arc<runtime::Compiled>, Installed), DeployError> {
        if bundle.len() > self.config.max_bundle_bytes {
            return Err(ControlError::TooLarge {
                size: bundle.len(),
                max: self.config.max_bundle_bytes,
            }
            .into());
        }
        let bundle = bundle::parse(bundle)?;
        bundle::check_trust(&bundle, &self.config.trusted_public_keys())?;
        let (manifest_text, wasm) = (bundle.manifest, bundle.wasm);
        let manifest = self.manifest(manifest_text)?;
        let name = manifest.name.clone();
        let version = manifest.version.clone();
        let _busy = self.claim(&name)?;
        let running = self
            .lock()
            .functions
            .get(&name)
            .map(|e| e.handle.status().version)
            .filter(|v| !v.is_empty());
        if let Some(running) = running {
            if !options.force && is_older(&version, &running) {
                return Err(DeployError::Older {
                    name,
                    version,
                    running,
                });
            }
        }
        let mode = rollout_mode(options)?;
        let compiled = Arc::new(self.runtime.compile(manifest, wasm)?);
        if mode.is_some() {
            let running = self.lock().functions.get(&name).map(|e| e.handle.status());
            if let Some(running) =
                running.filter(|s| s.sha256 == compiled.sha256 && s.version == version)
            {
                return Err(DeployError::SameAsRunning {
                    name,
                    version: running.version,
                });
            }
        }
        self.registry.check_new(&name, &version, &compiled.sha256)?;
        let stored = StoredVersion {
            name,
            version,
            manifest: manifest_text.to_owned(),
            wasm: wasm.to_vec(),
            sha256: compiled.sha256.clone(),
            deployed_at_ms: runtime::now_ms(),
            stopped_reason: None,
        };
        let mut table = self.lock();
        if let Some(mode) = mode {
            self.start_rollout(&mut table, &compiled, stored, mode)?;
            return Ok((compiled, Installed::default()));
        }
        let installed = self.install(&mut table, &compiled, &stored, upgrade::Kind::Deploy)?;
        Ok((compiled, installed))
    }

    /// Switches a function to `compiled` (stored as `stored`): the worker
    /// instantiates it and runs its `perch_init` while the old version keeps
    /// taking events; only once the registry has it does the worker swap
    /// instances, between two events. Returns the version it replaced.
    pub(super) fn install(
        &self,
        table: &mut Table,
        compiled: &Arc<runtime::Compiled>,
        stored: &StoredVersion,
        kind: upgrade::Kind,
    ) -> Result<Installed, DeployError> {
        let name = stored.name.clone();
        let plan = upgrade::Plan {
            stored: stored.clone(),
            kind,
            bounds: self.config.snapshot_bounds(),
        };
        let existed = table.functions.contains_key(&name);
        let handle = self.create(table, compiled)?;
        let previous = handle.status();
        let replaced = (existed && !previous.version.is_empty()).then_some(previous.version);
        let forget = |table: &mut Table| {
            if !existed {
                if let Some(mut entry) = table.functions.remove(&name) {
                    entry.handle.shutdown();
                    if let Some(t) = entry.thread.take() {
                        let _ = t.join();
                    }
                }
            }
        };
        let HandedOver {
            ready,
            commit,
            switched,
        } = match self.hand_over(&handle, compiled.clone(), Some(plan)) {
            Ok(r) => r,
            Err(e) => {
                forget(table);
                return Err(e);
            }
        };
        if let Err(e) = ready {
            forget(table);
            return Err(e.into());
        }
        // The worker stores the version, the snapshot and the state in one
        // transaction, then switches.
        let _ = commit.send(true);
        // The reply waits for the worker's switch (bounded): a client that
        // sends an event after the reply reaches the new version.
        let (state, warning) = match switched.recv_timeout(SWITCH_TIMEOUT) {
            Ok(Ok(note)) => (note, None),
            Ok(Err(e)) => {
                forget(table);
                return Err(DeployError::Takeover(e));
            }
            Err(_) => (
                None,
                Some(format!(
                    "version {} of {name:?} was handed to its worker, which had not confirmed \
                     the switch within {SWITCH_TIMEOUT:?} (the machine may be overloaded); it \
                     switches by itself, `perch fn status {name}` shows when",
                    stored.version
                )),
            ),
        };
        if let Err(e) = self.registry.prune(&name, self.config.keep_versions) {
            tracing::error!(function = %name, error = %e, "cannot prune old versions");
        }
        let versions = self.registry.version_names(&name).unwrap_or_default();
        let snapshots = self.registry.snapshots(&name).unwrap_or_default();
        if let Some(entry) = table.functions.get_mut(&name) {
            entry.filters = compiled.manifest.trigger_filters().into();
            entry.every_ms = compiled.manifest.triggers.every_ms;
            entry.versions = versions;
            entry.snapshots = snapshots;
            // The worker dropped any canary or shadow with the switch.
            entry.candidate = None;
        }
        self.update_triggers(table).map_err(FunctionsError::from)?;
        Ok(Installed {
            replaced,
            warning,
            state,
        })
    }
}
