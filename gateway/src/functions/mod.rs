//! Functions: sandboxed WebAssembly functions that run on MQTT events.
//!
//! This module owns everything between "a publish reached the broker" and
//! "a function's output left it": the registry of deployed versions
//! ([`registry`], SQLite), the manifest ([`manifest`]), the wasm sandbox and
//! host ABI ([`runtime`], wasmi), per-function state ([`state`]), triggers,
//! queues and workers ([`dispatch`]), canary and shadow rollouts beside the
//! running version ([`rollout`]), and the deploy control plane over MQTT
//! ([`control`]) with its bundles and their signatures ([`bundle`]). The ABI
//! between host and guest is `sdk/ABI.md`.
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
//! - A deploy, rollback or remove first claims its function's name: a
//!   second command for a claimed name is refused at once, not queued.
//!   Their switches are then serialized by the function table's lock, which
//!   is only ever held on blocking threads, never across an `.await`.
//! - Rollback returns to the version that ran before (the registry's
//!   history), instantiated before it takes traffic like a deploy.
//! - A command's reply goes out after the worker confirmed the switch
//!   (bounded by `SWITCH_TIMEOUT`) and after the statuses it changed.
//! - Each function's status is published retained on
//!   `perch/<id>/fn/<name>/status` when it changes, at most about once a
//!   second plus once after each command: never per event.

mod abi;
pub mod bundle;
pub mod config;
pub mod control;
pub mod dispatch;
pub mod failure;
mod install;
mod invoke;
mod lifecycle;
pub mod manifest;
mod plane;
pub mod registry;
pub mod rollout;
pub mod runtime;
pub mod snapshot;
pub mod state;
pub mod triggers;
pub mod upgrade;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as sync_mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

pub use self::config::FunctionsConfig;
use self::control::{CommandReply, CommandRequest, ControlError, DeployReply, FunctionInfo};
use self::dispatch::{FunctionHandle, RunState};
use self::manifest::{Manifest, ManifestError};
use self::plane::{run_control, run_publisher, run_status, OUTGOING_QUEUE};
use self::registry::{Registry, RegistryError, StoredVersion};
use self::runtime::{Runtime, RuntimeError};
use self::state::StateCache;
use self::triggers::{Subscriber, Triggers};
use crate::broker::{BrokerError, Links};

/// How long a deploy waits for the function's worker to instantiate the new
/// version (the worker may be finishing an invocation first).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Most kept events one replay runs (the oldest in the window first).
const MAX_REPLAY_EVENTS: usize = 10_000;

/// How long a deploy, rollback or promote waits, once the new version is
/// committed, for the worker to say it switched (it does so between two
/// events, at once unless the machine is starved). Past this the reply goes
/// out with a warning; the switch still happens.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// A trigger event to keep for `perch fn replay` (the function's
    /// manifest sets `[replay] keep_events_s`); never forwarded.
    Event(crate::buffer::NewEvent),
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

/// Why a deploy, rollback or remove was refused. The message goes back to
/// whoever sent the command; whatever ran before still runs.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Bundle(#[from] ControlError),
    #[error(transparent)]
    Signature(#[from] bundle::BundleError),
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
    #[error("the manifest asks for more than this gateway allows:\n{}", over_caps(.0))]
    OverCap(Vec<config::OverCap>),
    #[error(transparent)]
    Start(#[from] FunctionsError),
    #[error("the worker of function {0:?} did not answer within {READY_TIMEOUT:?}")]
    Timeout(String),
    #[error(
        "a deploy, rollback or remove of function {0:?} is in progress; wait for its reply, \
         then send this again"
    )]
    Busy(String),
    #[error(
        "function {name:?} runs version {running}; {version} is older and is refused so that \
         nothing is downgraded by accident: to go back to what ran before, `perch fn rollback \
         {name}`; to install this older version anyway, deploy it with --force"
    )]
    Older {
        name: String,
        version: String,
        running: String,
    },
    #[error("no function {0:?} is deployed on this gateway; `perch fn list` shows what is")]
    NotDeployed(String),
    #[error(
        "function {name:?} has no previous version to roll back to: {version} is the first \
         version it ran that this gateway still keeps (kept: {kept})"
    )]
    NoPrevious {
        name: String,
        version: String,
        kept: String,
    },
    #[error(
        "function {0:?} has no running version for a canary or shadow to run beside; deploy it \
         without --canary/--shadow first"
    )]
    NoLiveVersion(String),
    #[error(
        "function {0:?} has no canary or shadow to promote; deploy one with --canary PERCENT or \
         --shadow, or deploy the new version directly"
    )]
    NoRollout(String),
    #[error(
        "function {name:?} already runs this module (version {version}); a canary or shadow \
         of it would compare it with itself, so nothing was started"
    )]
    SameAsRunning { name: String, version: String },
    /// An invoke that could not run; the message says why and what to do.
    #[error("{0}")]
    Invoke(String),
    /// The worker could not store a takeover; nothing switched.
    #[error("{0}")]
    Takeover(String),
    #[error(
        "the deploy options are not valid: {0}; give \"canary\" as a share of the events from 1 \
         to 99 percent, or \"shadow\": true, not both"
    )]
    RolloutOptions(String),
}

/// The running functions stage.
pub struct Functions {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

struct Inner {
    gateway_id: String,
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    /// `buffer.db`, where kept trigger events are read for `replay`.
    buffer_path: std::path::PathBuf,
    links: Links,
    config: FunctionsConfig,
    /// The functions and the trigger links. Locked for a whole deploy,
    /// rollback or remove; only on blocking threads.
    table: Mutex<Table>,
    /// Names with a deploy, rollback or remove under way. A second command
    /// for one of them is refused at once ("in progress") rather than left
    /// waiting on the table lock without a word.
    busy: Mutex<HashSet<String>>,
    /// Wakes the status publisher when a command changed a function.
    changed: Notify,
}

struct Table {
    functions: BTreeMap<String, Entry>,
    triggers: Triggers,
}

struct Entry {
    handle: Arc<FunctionHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
    filters: Arc<[String]>,
    every_ms: u64,
    /// The versions kept in the registry, in deploy order (for status).
    versions: Vec<String>,
    /// The state snapshots kept (for status), refreshed by each command.
    snapshots: Vec<snapshot::SnapshotInfo>,
    /// The canary or shadow the worker runs beside the live version,
    /// as `promote` installs it (never in the registry until then).
    candidate: Option<(Arc<runtime::Compiled>, StoredVersion)>,
}

/// A version handed to a worker ([`Inner::hand_over`]).
struct HandedOver {
    /// The worker's verdict: instantiated, or why not.
    ready: Result<(), RuntimeError>,
    /// `true` commits the switch; `false` or dropping it abandons it.
    commit: sync_mpsc::SyncSender<bool>,
    /// Hears when the worker has switched, or why it could not.
    switched: sync_mpsc::Receiver<Result<Option<upgrade::StateNote>, String>>,
}

/// What [`Inner::install`] did.
#[derive(Default)]
struct Installed {
    /// The version it replaced, if any.
    replaced: Option<String>,
    /// Set when the worker did not confirm the switch in time.
    warning: Option<String>,
    /// What the takeover did to the state.
    state: Option<upgrade::StateNote>,
}

/// What a rollback, promote or remove did: the version replaced, the one
/// running now, and a warning for the reply.
struct Done {
    replaced: Option<String>,
    version: Option<String>,
    warning: Option<String>,
    state: Option<upgrade::StateNote>,
}

impl Done {
    fn switched(installed: Installed, version: String) -> Done {
        Done {
            replaced: installed.replaced,
            version: Some(version),
            warning: installed.warning,
            state: installed.state,
        }
    }
}

/// A claim on a function name for one command; released on drop.
struct Busy<'a> {
    inner: &'a Inner,
    name: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.inner
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
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
        let buffer_path = data_dir.join(crate::buffer::FILE_NAME);
        let config = config.clone();
        let id = gateway_id.to_owned();
        let inner = tokio::task::spawn_blocking(move || -> Result<Arc<Inner>, FunctionsError> {
            let registry = Arc::new(Registry::open(&path)?);
            let inner = Arc::new(Inner {
                gateway_id: id.clone(),
                runtime: Arc::new(
                    Runtime::new(outputs)
                        .publish_logs_as(&id)
                        .default_timeout_ms(config.default_timeout_ms),
                ),
                registry,
                buffer_path,
                links: links.clone(),
                config,
                table: Mutex::new(Table {
                    functions: BTreeMap::new(),
                    triggers: Triggers::new(links),
                }),
                busy: Mutex::new(HashSet::new()),
                changed: Notify::new(),
            });
            inner.restore()?;
            Ok(inner)
        })
        .await
        .map_err(|e| FunctionsError::Join(e.to_string()))??;

        let (mut tx, rx) = inner.links.open("functions-control")?;
        for command in COMMANDS {
            tx.subscribe(control::command_topic(&inner.gateway_id, command))
                .map_err(|source| BrokerError::Link {
                    client_id: "functions-control".into(),
                    source: Box::new(source),
                })?;
        }
        let (out_tx, out_rx) = mpsc::channel(OUTGOING_QUEUE);
        let (status_tx, status_rx) = mpsc::channel(OUTGOING_QUEUE);
        let tasks = vec![
            tokio::spawn(run_control(inner.clone(), rx, out_tx.clone(), status_tx)),
            tokio::spawn(run_publisher(tx, out_rx)),
            tokio::spawn(run_status(inner.clone(), out_tx, status_rx)),
        ];
        Ok(Functions { inner, tasks })
    }

    /// Deploys a bundle (a deploy request: options line optional), as the
    /// control topic does.
    pub async fn deploy(&self, bundle: Bytes) -> DeployReply {
        let inner = self.inner.clone();
        let reply = tokio::task::spawn_blocking(move || inner.deploy(&bundle))
            .await
            .unwrap_or_else(|e| DeployReply {
                ok: false,
                bundle_sha256: String::new(),
                request_id: None,
                name: None,
                version: None,
                sha256: None,
                replaced: None,
                error: Some(format!("the deploy failed: {e}")),
                warning: None,
                state: None,
            });
        self.inner.changed.notify_one();
        reply
    }

    /// Rolls a function back to the version that ran before, as the control
    /// topic does.
    pub async fn rollback(&self, name: &str) -> CommandReply {
        self.command("rollback", name).await
    }

    /// Makes a function's canary or shadow its only version.
    pub async fn promote(&self, name: &str) -> CommandReply {
        self.command("promote", name).await
    }

    /// Removes a function, its versions and its state.
    pub async fn remove(&self, name: &str) -> CommandReply {
        self.command("remove", name).await
    }

    async fn command(&self, command: &'static str, name: &str) -> CommandReply {
        let inner = self.inner.clone();
        let request = CommandRequest {
            name: name.to_owned(),
            request_id: None,
        };
        let reply = tokio::task::spawn_blocking(move || inner.command(command, request))
            .await
            .unwrap_or_else(|e| CommandReply {
                command: command.into(),
                error: Some(format!("the {command} failed: {e}")),
                ..CommandReply::default()
            });
        self.inner.changed.notify_one();
        reply
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
        for task in &self.tasks {
            task.abort();
        }
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

/// The command topics the control link subscribes to.
pub(crate) const COMMANDS: [&str; 7] = [
    "deploy", "rollback", "remove", "list", "promote", "invoke", "replay",
];

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

    /// Claims `name` for one command, or says another is under way.
    fn claim(&self, name: &str) -> Result<Busy<'_>, DeployError> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(name.to_owned()) {
            return Err(DeployError::Busy(name.to_owned()));
        }
        Ok(Busy {
            inner: self,
            name: name.to_owned(),
        })
    }

    /// Parses and checks a manifest, then holds its limits against the
    /// gateway's caps (`[functions] max_fuel`…). Every way a version starts
    /// (deploy, rollback, restart) goes through here, so a lowered cap
    /// applies to versions stored before it.
    fn manifest(&self, text: &str) -> Result<Manifest, DeployError> {
        let manifest = Manifest::from_toml(text)?;
        let over = self.config.over_caps(&manifest.limits);
        if over.is_empty() {
            Ok(manifest)
        } else {
            Err(DeployError::OverCap(over))
        }
    }

    /// Starts every active version in the registry.
    fn restore(&self) -> Result<(), FunctionsError> {
        let bounds = self.config.snapshot_bounds();
        if let Err(e) = self.registry.bound_snapshots(bounds, runtime::now_ms()) {
            tracing::error!(error = %e, "cannot apply the snapshot bounds");
        }
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
        let manifest = self.manifest(&stored.manifest)?;
        let compiled = Arc::new(self.runtime.compile(manifest, &stored.wasm)?);
        let handle = self.create(table, &compiled)?;
        if let Some(reason) = stored.stopped_reason {
            handle.set_stopped(&compiled, stored.deployed_at_ms, reason);
            return Ok(());
        }
        let HandedOver { ready, commit, .. } = self.hand_over(&handle, compiled.clone(), None)?;
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

    /// Where a worker reads the kept trigger events it re-runs after a
    /// rollback or a canary's end (`upgrade.rs`): `buffer.db`, read-only.
    fn event_source(&self) -> upgrade::EventSource {
        let path = self.buffer_path.clone();
        Arc::new(move |name: &str, since_ms: i64| {
            let reader = crate::buffer::Reader::open(&path).map_err(|e| e.to_string())?;
            let (events, _) = reader
                .events_since(name, since_ms, runtime::now_ms(), MAX_REPLAY_EVENTS)
                .map_err(|e| format!("cannot read the kept events: {e}"))?;
            Ok(events
                .into_iter()
                .map(|e| dispatch::Event {
                    topic: Bytes::from(e.topic),
                    payload: Bytes::from(e.payload),
                    timestamp_ms: e.created_ms,
                })
                .collect())
        })
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

    /// Handles a rollback or remove request; always answers.
    fn command(&self, command: &str, request: CommandRequest) -> CommandReply {
        let result = match command {
            "rollback" => self.rollback(&request.name),
            "promote" => self.promote(&request.name),
            _ => self.remove(&request.name),
        };
        let mut reply = CommandReply {
            ok: result.is_ok(),
            command: command.to_owned(),
            request_id: request.request_id,
            name: Some(request.name.clone()),
            ..CommandReply::default()
        };
        match result {
            Ok(Done {
                replaced,
                version,
                warning,
                state,
            }) => {
                tracing::info!(function = %request.name, ?replaced, ?version, "{command} done");
                reply.replaced = replaced;
                reply.version = version;
                reply.warning = warning;
                reply.state = state;
            }
            Err(e) => {
                tracing::warn!(function = %request.name, "{command} refused: {e}");
                reply.error = Some(e.to_string());
            }
        }
        reply
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
                let rollout = h.rollout();
                let canary = rollout.as_ref().is_some_and(|r| r.percent.is_some());
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
                    triggers: e.filters.to_vec(),
                    every_ms: e.every_ms,
                    versions: e.versions.clone(),
                    canary: rollout.clone().filter(|_| canary),
                    shadow: rollout.filter(|_| !canary),
                    state_upgrade: h
                        .state_note
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                    snapshots: e.snapshots.clone(),
                }
            })
            .collect()
    }
}

/// The rollout a deploy asks for, if any.
fn rollout_mode(options: &control::DeployOptions) -> Result<Option<rollout::Mode>, DeployError> {
    match (options.canary, options.shadow) {
        (Some(_), true) => Err(DeployError::RolloutOptions(
            "it asks for a canary and a shadow at once".into(),
        )),
        (Some(percent @ 1..=99), false) => Ok(Some(rollout::Mode::Canary { percent })),
        (Some(percent), false) => Err(DeployError::RolloutOptions(format!(
            "canary {percent} is not a share from 1 to 99 percent (100 is a plain deploy)"
        ))),
        (None, true) => Ok(Some(rollout::Mode::Shadow)),
        (None, false) => Ok(None),
    }
}

/// Whether semantic version `new` is lower than `running` (a version that
/// does not parse is never "older": the manifest check refuses it anyway).
/// One line per limit over its cap, as in a manifest error.
fn over_caps(over: &[config::OverCap]) -> String {
    over.iter()
        .map(|o| format!("  - {o}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_older(new: &str, running: &str) -> bool {
    match (semver::Version::parse(new), semver::Version::parse(running)) {
        (Ok(new), Ok(running)) => new < running,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
