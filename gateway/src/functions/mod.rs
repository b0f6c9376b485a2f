//! Functions: sandboxed WebAssembly functions that run on MQTT events.
//!
//! This module owns everything between "a publish reached the broker" and
//! "a function's output left it": the registry of deployed versions
//! ([`registry`], SQLite), the manifest ([`manifest`]), the wasm sandbox and
//! host ABI ([`runtime`], wasmi), per-function state ([`state`]), triggers,
//! queues and workers ([`dispatch`]), and the deploy control plane over MQTT
//! ([`control`]). The ABI between host and guest is `sdk/ABI.md`.
//!
//! # How it fits together
//!
//! ```text
//! broker ──trigger link per filter──▶ queue of fn A ──▶ worker thread of A ──▶ instance (wasmi)
//!                                  └▶ queue of fn B ──▶ worker thread of B        │
//!     ◀──────────── publish, through A's own link (perch-fn-A) ◀──────────────────┤
//!                    emit / forward ──▶ [`Output`] channel (aggregate, buffer) ◀──┘
//! ```
//!
//! # Invariants
//!
//! - A function never blocks the broker or another function: bounded queue
//!   per function (drop policy counted), one OS thread per function, fuel
//!   per invocation, capped memory, stack and outputs.
//! - Deploys are atomic: the new version is compiled, validated against the
//!   ABI, instantiated and its `perch_init` run *before* it is written to the
//!   registry and takes traffic; any failure leaves the old version running
//!   and answers with an error naming the problem.
//! - The registry's active versions are what runs: a restart brings back
//!   every function as deployed (a function stopped by its circuit breaker
//!   stays stopped until deployed again).
//! - Deploys are serialized (one at a time) by the function table's lock,
//!   which is only ever held on blocking threads, never across an `.await`.

pub mod config;
pub mod control;
pub mod dispatch;
pub mod manifest;
pub mod registry;
pub mod runtime;
pub mod state;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as sync_mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::Notification;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use self::config::FunctionsConfig;
use self::control::{ControlError, DeployReply, FunctionInfo};
use self::dispatch::{FunctionHandle, RunState, Subscriber, Triggers};
use self::manifest::{Manifest, ManifestError};
use self::registry::{Registry, RegistryError, StoredVersion};
use self::runtime::{Runtime, RuntimeError};
use self::state::StateCache;
use crate::broker::{BrokerError, Links};

/// How long a deploy waits for the function's worker to instantiate the new
/// version (the worker may be finishing an invocation first).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What a function produces for the stages behind it: `Metric`s feed the
/// aggregate windows, `Record`s the store-and-forward buffer (the gateway
/// hands both to the buffer's intake, see `gateway.rs`).
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// `emit(metric, key, value)`: one sample for the tumbling windows of
    /// `metric` (and `key`, when given).
    Metric {
        function: Arc<str>,
        /// Inline names (at most 64 bytes): an emit allocates nothing.
        metric: crate::buffer::Name,
        /// Empty when the function gave no key.
        key: crate::buffer::Name,
        value: f64,
        timestamp_ms: i64,
    },
    /// `forward(stream, record)`: one record for upstream, in order per
    /// `stream`.
    Record {
        function: Arc<str>,
        stream: String,
        record: Bytes,
        timestamp_ms: i64,
    },
}

/// Why the functions stage could not start.
#[derive(Debug, thiserror::Error)]
pub enum FunctionsError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("cannot start a thread for function {name:?}: {source}")]
    Thread {
        name: String,
        source: std::io::Error,
    },
    #[error("the functions stage failed to start: {0}")]
    Join(String),
}

/// Why a deploy was refused. The message goes back to whoever deployed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Bundle(#[from] ControlError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Module(#[from] RuntimeError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(
        "this gateway already runs {max} functions (functions.max_functions); raise the limit \
         in the config or deploy to another gateway"
    )]
    TooMany { max: usize },
    #[error(transparent)]
    Start(#[from] FunctionsError),
    #[error("the worker of function {0:?} did not answer within {READY_TIMEOUT:?}")]
    Timeout(String),
}

/// The running functions stage.
pub struct Functions {
    inner: Arc<Inner>,
    control: JoinHandle<()>,
}

struct Inner {
    gateway_id: String,
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    links: Links,
    config: FunctionsConfig,
    /// The functions and the trigger links. Locked for a whole deploy (that
    /// is what serializes deploys); only on blocking threads.
    table: Mutex<Table>,
}

struct Table {
    functions: BTreeMap<String, Entry>,
    triggers: Triggers,
}

struct Entry {
    handle: Arc<FunctionHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
    filters: Arc<[String]>,
}

impl Functions {
    /// Opens the registry under `data_dir`, starts every active function and
    /// the control plane. `outputs` receives `emit`/`forward` records.
    pub async fn start(
        links: Links,
        config: &FunctionsConfig,
        data_dir: &Path,
        gateway_id: &str,
        outputs: mpsc::Sender<Output>,
    ) -> Result<Functions, FunctionsError> {
        let path = data_dir.join("functions.db");
        let config = config.clone();
        let id = gateway_id.to_owned();
        let inner = tokio::task::spawn_blocking(move || -> Result<Arc<Inner>, FunctionsError> {
            let registry = Arc::new(Registry::open(&path)?);
            let inner = Arc::new(Inner {
                gateway_id: id,
                runtime: Arc::new(Runtime::new(outputs)),
                registry,
                links: links.clone(),
                config,
                table: Mutex::new(Table {
                    functions: BTreeMap::new(),
                    triggers: Triggers::new(links),
                }),
            });
            inner.restore()?;
            Ok(inner)
        })
        .await
        .map_err(|e| FunctionsError::Join(e.to_string()))??;

        let (mut tx, rx) = inner.links.open("functions-control")?;
        for topic in [
            control::deploy_topic(&inner.gateway_id),
            control::list_topic(&inner.gateway_id),
        ] {
            tx.subscribe(topic).map_err(|source| BrokerError::Link {
                client_id: "functions-control".into(),
                source: Box::new(source),
            })?;
        }
        let control = tokio::spawn(run_control(inner.clone(), tx, rx));
        Ok(Functions { inner, control })
    }

    /// Deploys a bundle, as the control topic does.
    pub async fn deploy(&self, bundle: Bytes) -> DeployReply {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.deploy(&bundle))
            .await
            .unwrap_or_else(|e| DeployReply {
                ok: false,
                bundle_sha256: String::new(),
                name: None,
                version: None,
                sha256: None,
                replaced: None,
                error: Some(format!("the deploy failed: {e}")),
            })
    }

    /// Status and counters of every function.
    pub fn list(&self) -> Vec<FunctionInfo> {
        self.inner.list()
    }

    /// A read-only view for the admin listener, which outlives borrows.
    pub fn observer(&self) -> Observer {
        Observer(self.inner.clone())
    }

    /// Stops the control plane and the trigger links, then every worker
    /// (each flushes its state). Events still queued are dropped and
    /// counted; a worker busy in an invocation finishes it first (bounded by
    /// its fuel).
    pub async fn shutdown(self) {
        self.control.abort();
        let inner = self.inner.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut table = inner.table.lock().unwrap_or_else(|p| p.into_inner());
            table.triggers.close_all();
            for entry in table.functions.values() {
                entry.handle.shutdown();
            }
            for (name, entry) in table.functions.iter_mut() {
                if let Some(thread) = entry.thread.take() {
                    if thread.join().is_err() {
                        tracing::error!(function = %name, "function worker panicked");
                    }
                }
            }
        })
        .await;
        if let Err(e) = joined {
            tracing::error!(error = %e, "stopping the functions failed");
        }
    }
}

/// Reads the functions' status and counters; cheap to clone. Its methods
/// take the table lock, which a deploy holds: call them from a blocking
/// thread.
#[derive(Clone)]
pub struct Observer(Arc<Inner>);

impl Observer {
    /// Status and counters of every function, as `perch fn list` shows them.
    pub fn list(&self) -> Vec<FunctionInfo> {
        self.0.list()
    }

    /// Every function's handle (status, queue, all counters), for metrics.
    pub fn handles(&self) -> Vec<Arc<FunctionHandle>> {
        self.0
            .lock()
            .functions
            .values()
            .map(|e| e.handle.clone())
            .collect()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts every active version in the registry.
    fn restore(&self) -> Result<(), FunctionsError> {
        let mut table = self.lock();
        for stored in self.registry.active()? {
            let name = stored.name.clone();
            if let Err(e) = self.restore_one(&mut table, stored) {
                tracing::error!(function = %name, "cannot start the deployed function: {e}");
            }
        }
        self.update_triggers(&mut table)?;
        let running = table
            .functions
            .values()
            .filter(|e| e.handle.is_running())
            .count();
        tracing::info!(
            "functions: {} deployed, {running} running",
            table.functions.len()
        );
        Ok(())
    }

    fn restore_one(&self, table: &mut Table, stored: StoredVersion) -> Result<(), DeployError> {
        let manifest = Manifest::from_toml(&stored.manifest)?;
        let compiled = Arc::new(self.runtime.compile(manifest, &stored.wasm)?);
        let handle = self.create(table, &compiled)?;
        if let Some(reason) = stored.stopped_reason {
            handle.set_stopped(&compiled, stored.deployed_at_ms, reason);
            return Ok(());
        }
        let (ready, commit) = self.hand_over(&handle, compiled.clone())?;
        match ready {
            Ok(()) => {
                let _ = commit.send(true);
                Ok(())
            }
            Err(e) => {
                let reason = format!("could not be started: {e}");
                handle.set_stopped(&compiled, stored.deployed_at_ms, reason.clone());
                self.registry
                    .set_stopped(&stored.name, &stored.version, Some(&reason))?;
                Err(e.into())
            }
        }
    }

    /// Creates the handle, link and worker of a function name.
    fn create(
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
            },
        );
        Ok(handle)
    }

    /// Gives a version to the worker; returns its verdict and the sender
    /// that commits (or, dropped, abandons) the switch.
    #[allow(clippy::type_complexity)]
    fn hand_over(
        &self,
        handle: &FunctionHandle,
        compiled: Arc<runtime::Compiled>,
    ) -> Result<(Result<(), RuntimeError>, sync_mpsc::SyncSender<bool>), DeployError> {
        let (ready_tx, ready_rx) = sync_mpsc::sync_channel(1);
        let (commit_tx, commit_rx) = sync_mpsc::sync_channel(1);
        handle.deploy(dispatch::Deploy {
            compiled,
            ready: ready_tx,
            commit: commit_rx,
        });
        let ready = ready_rx
            .recv_timeout(READY_TIMEOUT)
            .map_err(|_| DeployError::Timeout(handle.name.to_string()))?;
        Ok((ready, commit_tx))
    }

    fn update_triggers(&self, table: &mut Table) -> Result<(), BrokerError> {
        let subscribers: Vec<Subscriber> = table
            .functions
            .values()
            .map(|e| Subscriber {
                handle: e.handle.clone(),
                filters: e.filters.clone(),
            })
            .collect();
        table.triggers.update(&subscribers)
    }

    /// Handles one deploy bundle; always answers.
    fn deploy(&self, bundle: &[u8]) -> DeployReply {
        let bundle_sha256 = control::sha256_hex(bundle);
        match self.try_deploy(bundle) {
            Ok((compiled, replaced)) => {
                tracing::info!(
                    function = %compiled.manifest.name,
                    version = %compiled.manifest.version,
                    bytes = compiled.wasm_len,
                    "deployed"
                );
                DeployReply {
                    ok: true,
                    bundle_sha256,
                    name: Some(compiled.manifest.name.clone()),
                    version: Some(compiled.manifest.version.clone()),
                    sha256: Some(compiled.sha256.clone()),
                    replaced,
                    error: None,
                }
            }
            Err(e) => {
                tracing::warn!("deploy refused: {e}");
                DeployReply {
                    ok: false,
                    bundle_sha256,
                    name: None,
                    version: None,
                    sha256: None,
                    replaced: None,
                    error: Some(e.to_string()),
                }
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn try_deploy(
        &self,
        bundle: &[u8],
    ) -> Result<(Arc<runtime::Compiled>, Option<String>), DeployError> {
        let (manifest_text, wasm) = control::decode_bundle(bundle)?;
        let manifest = Manifest::from_toml(manifest_text)?;
        let compiled = Arc::new(self.runtime.compile(manifest, wasm)?);
        let name = compiled.manifest.name.clone();
        let version = compiled.manifest.version.clone();
        self.registry.check_new(&name, &version, &compiled.sha256)?;

        let mut table = self.lock();
        let existed = table.functions.contains_key(&name);
        let handle = self.create(&mut table, &compiled)?;
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
        let (ready, commit) = match self.hand_over(&handle, compiled.clone()) {
            Ok(r) => r,
            Err(e) => {
                forget(&mut table);
                return Err(e);
            }
        };
        if let Err(e) = ready {
            forget(&mut table);
            return Err(e.into());
        }
        let stored = StoredVersion {
            name: name.clone(),
            version,
            manifest: manifest_text.to_owned(),
            wasm: wasm.to_vec(),
            sha256: compiled.sha256.clone(),
            deployed_at_ms: runtime::now_ms(),
            stopped_reason: None,
        };
        if let Err(e) = self.registry.activate(&stored) {
            let _ = commit.send(false);
            forget(&mut table);
            return Err(e.into());
        }
        let _ = commit.send(true);
        if let Some(entry) = table.functions.get_mut(&name) {
            entry.filters = compiled.manifest.trigger_filters().into();
        }
        self.update_triggers(&mut table)
            .map_err(FunctionsError::from)?;
        Ok((compiled, replaced))
    }

    fn list(&self) -> Vec<FunctionInfo> {
        let table = self.lock();
        table
            .functions
            .values()
            .map(|e| {
                let h = &e.handle;
                let status = h.status();
                let (state, reason) = match status.state {
                    RunState::Starting => ("starting", None),
                    RunState::Running => ("running", None),
                    RunState::Stopped(reason) => ("stopped", Some(reason)),
                };
                let c = &h.counters;
                FunctionInfo {
                    name: h.name.to_string(),
                    version: status.version,
                    state: state.into(),
                    reason,
                    invocations: c.invocations.load(Ordering::Relaxed),
                    errors: c.errors.load(Ordering::Relaxed),
                    dropped: c.dropped.load(Ordering::Relaxed),
                    queued: h.queued(),
                    denied: c.outputs.denied.load(Ordering::Relaxed),
                    limited: c.outputs.limited.load(Ordering::Relaxed),
                    full: c.outputs.full.load(Ordering::Relaxed),
                    last_error: status.last_error,
                    sha256: status.sha256,
                    deployed_at_ms: status.deployed_at_ms,
                }
            })
            .collect()
    }
}

/// Answers the control topics.
async fn run_control(inner: Arc<Inner>, mut tx: LinkTx, mut rx: LinkRx) {
    let deploy = control::deploy_topic(&inner.gateway_id);
    let list = control::list_topic(&inner.gateway_id);
    loop {
        match rx.next().await {
            Ok(Some(Notification::Forward(forward))) => {
                let publish = forward.publish;
                let (reply_topic, reply) = if publish.topic == deploy.as_bytes() {
                    let deployer = inner.clone();
                    let bundle = publish.payload;
                    let reply = tokio::task::spawn_blocking(move || deployer.deploy(&bundle)).await;
                    let Ok(reply) = reply else { continue };
                    (
                        control::deploy_reply_topic(&inner.gateway_id),
                        serde_json::to_vec(&reply),
                    )
                } else if publish.topic == list.as_bytes() {
                    (
                        control::list_reply_topic(&inner.gateway_id),
                        serde_json::to_vec(&inner.list()),
                    )
                } else {
                    continue;
                };
                match reply {
                    Ok(reply) => {
                        if let Err(e) = tx.publish(reply_topic, reply) {
                            tracing::error!(error = %e, "cannot publish a control reply");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "cannot encode a control reply"),
                }
            }
            Ok(Some(Notification::Unschedule)) => {
                if rx.wake().await.is_err() {
                    break;
                }
            }
            Ok(Some(Notification::Disconnect(..))) | Err(_) => break,
            Ok(_) => {}
        }
    }
    tracing::warn!("functions control plane stopped");
}

#[cfg(test)]
mod tests;
