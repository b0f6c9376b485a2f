//! A function as the rest of the gateway sees it ([`FunctionHandle`]):
//! its queue, its counters, its status, and the commands its worker takes.

use super::*;

/// A function as the rest of the gateway sees it: its queue, its counters,
/// its status. Shared by the trigger links (which enqueue), the worker (which
/// dequeues) and the control plane (which deploys and lists).
pub struct FunctionHandle {
    pub name: Arc<str>,
    pub(super) inbox: Mutex<Inbox>,
    /// Wakes the worker: an event, a command, or shutdown.
    pub(super) wake: Condvar,
    /// Whether trigger links should enqueue for it; false while stopped.
    pub(super) accepting: AtomicBool,
    pub counters: Counters,
    pub(super) status: Mutex<Status>,
    /// The canary or shadow beside the live version, if any
    /// ([`rollout`]); its counters are updated by the worker.
    pub rollout: Mutex<Option<RolloutInfo>>,
    /// What the last upgrade did to the state (status `state_upgrade`).
    pub state_note: Mutex<Option<StateNote>>,
}

pub(super) struct Inbox {
    pub(super) events: VecDeque<Event>,
    pub(super) capacity: usize,
    pub(super) policy: QueuePolicy,
    pub(super) commands: VecDeque<Command>,
    pub(super) shutdown: bool,
}

/// A new version for a worker to start.
pub struct Deploy {
    pub compiled: Arc<Compiled>,
    /// The worker's verdict: instantiated (and waiting for `commit`) or why
    /// not.
    pub ready: sync_mpsc::SyncSender<Result<(), RuntimeError>>,
    /// `true` once the version is in the registry: the worker switches to it.
    /// `false` or a dropped sender: the worker keeps the old one.
    pub commit: sync_mpsc::Receiver<bool>,
    /// Told once the worker has switched (the new version takes the next
    /// event and its status shows it): the reply to a deploy, rollback or
    /// promote waits for this, so no event sent after the reply can reach
    /// the old version and the status published with the reply is current.
    /// Carries what happened to the state, or why the takeover's
    /// transaction failed (then nothing switched).
    pub switched: sync_mpsc::SyncSender<Result<Option<StateNote>, String>>,
    /// How the version takes over and what to store: `None` when the
    /// gateway starts a version the registry has active.
    pub takeover: Option<Plan>,
}

/// A one-off run of the live version for `perch fn invoke`: on a copy of
/// the state, its outputs captured and never delivered, its counters left
/// alone.
pub struct Invoke {
    pub event: Event,
    /// What it did, or why it could not run.
    pub reply: sync_mpsc::SyncSender<Result<Invoked, String>>,
}

/// What an invoked function did.
pub struct Invoked {
    pub version: String,
    pub duration: Duration,
    pub fuel_used: u64,
    /// Why the invocation failed, if it did.
    pub failure: Option<String>,
    pub outputs: Vec<crate::functions::control::InvokeOutput>,
    /// Its log lines, as JSON.
    pub logs: Vec<Bytes>,
}

/// A `perch fn replay`: run a version over kept trigger events in order,
/// in an instance of its own on a copy of the state, outputs captured.
pub struct Replay {
    /// The version to run; `None` for the live one.
    pub compiled: Option<Arc<Compiled>>,
    pub events: Vec<crate::buffer::KeptEvent>,
    pub reply: sync_mpsc::SyncSender<Result<Replayed, String>>,
}

/// The first this many outputs come back in a replay's reply.
pub const REPLAY_OUTPUTS: usize = 20;
/// The first this many failure messages come back in a replay's reply.
pub const REPLAY_ERRORS: usize = 5;
/// A replay stops after this long (the live events wait meanwhile); the
/// reply says how many events it got through.
pub const REPLAY_BUDGET: Duration = Duration::from_secs(5);

/// What a replay did.
#[derive(Debug, Default)]
pub struct Replayed {
    pub version: String,
    /// Events run (fewer than given when [`REPLAY_BUDGET`] ran out).
    pub replayed: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub publishes: u64,
    pub emits: u64,
    pub forwards: u64,
    /// Events whose outputs differed from the live version's on the same
    /// event (also run on a copy of the state); `None` when the replayed
    /// version is the live one.
    pub differed: Option<u64>,
    pub outputs: Vec<crate::functions::control::InvokeOutput>,
    pub duration: Duration,
}

pub(super) enum Command {
    Deploy(Box<Deploy>),
    Invoke(Box<Invoke>),
    Replay(Box<Replay>),
    /// Start a canary or shadow beside the live version.
    Rollout(Box<rollout::Start>),
    /// End the canary or shadow; the live version stays. Answers when done,
    /// with what happened to the state.
    EndRollout(sync_mpsc::SyncSender<Option<StateNote>>),
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here leaves the guarded data inconsistent on panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FunctionHandle {
    pub fn new(name: &str) -> Arc<FunctionHandle> {
        Arc::new(FunctionHandle {
            name: name.into(),
            inbox: Mutex::new(Inbox {
                events: VecDeque::new(),
                capacity: 0,
                policy: QueuePolicy::DropOldest,
                commands: VecDeque::new(),
                shutdown: false,
            }),
            wake: Condvar::new(),
            accepting: AtomicBool::new(false),
            counters: Counters::default(),
            status: Mutex::new(Status {
                version: String::new(),
                sha256: String::new(),
                deployed_at_ms: 0,
                state: RunState::Starting,
                last_error: None,
            }),
            rollout: Mutex::new(None),
            state_note: Mutex::new(None),
        })
    }

    /// Queues an event by the function's policy; returns whether it was
    /// queued without dropping anything.
    pub fn push(&self, event: Event) -> bool {
        if !self.accepting.load(Ordering::Relaxed) {
            return false;
        }
        let mut inbox = lock(&self.inbox);
        let mut clean = true;
        if inbox.events.len() >= inbox.capacity {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            clean = false;
            match inbox.policy {
                QueuePolicy::DropNewest => return false,
                QueuePolicy::DropOldest => {
                    inbox.events.pop_front();
                }
            }
        }
        inbox.events.push_back(event);
        drop(inbox);
        self.wake.notify_one();
        clean
    }

    /// Hands a new version to the worker.
    pub fn deploy(&self, deploy: Deploy) {
        lock(&self.inbox)
            .commands
            .push_back(Command::Deploy(Box::new(deploy)));
        self.wake.notify_one();
    }

    /// Asks the worker to run the live version once on an event.
    pub fn invoke(&self, invoke: Invoke) {
        lock(&self.inbox)
            .commands
            .push_back(Command::Invoke(Box::new(invoke)));
        self.wake.notify_one();
    }

    /// Asks the worker to replay kept events.
    pub fn replay(&self, replay: Replay) {
        lock(&self.inbox)
            .commands
            .push_back(Command::Replay(Box::new(replay)));
        self.wake.notify_one();
    }

    /// Hands a canary or shadow to the worker.
    pub fn start_rollout(&self, start: rollout::Start) {
        lock(&self.inbox)
            .commands
            .push_back(Command::Rollout(Box::new(start)));
        self.wake.notify_one();
    }

    /// Asks the worker to end the canary or shadow; `done` hears when it has.
    pub fn end_rollout(&self, done: sync_mpsc::SyncSender<Option<StateNote>>) {
        lock(&self.inbox)
            .commands
            .push_back(Command::EndRollout(done));
        self.wake.notify_one();
    }

    /// The canary or shadow, as its status shows it.
    pub fn rollout(&self) -> Option<RolloutInfo> {
        lock(&self.rollout).clone()
    }

    /// Asks the worker to flush state and exit.
    pub fn shutdown(&self) {
        self.accepting.store(false, Ordering::Relaxed);
        lock(&self.inbox).shutdown = true;
        self.wake.notify_one();
    }

    /// Events waiting.
    pub fn queued(&self) -> usize {
        lock(&self.inbox).events.len()
    }

    /// What the queue drops when full.
    pub fn queue_policy(&self) -> QueuePolicy {
        lock(&self.inbox).policy
    }

    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    /// Marks a function that the registry says is stopped.
    pub fn set_stopped(&self, compiled: &Compiled, deployed_at_ms: i64, reason: String) {
        let mut status = lock(&self.status);
        status.version = compiled.manifest.version.clone();
        status.sha256 = compiled.sha256.clone();
        status.deployed_at_ms = deployed_at_ms;
        status.state = RunState::Stopped(reason);
    }

    pub fn is_running(&self) -> bool {
        lock(&self.status).state == RunState::Running
    }
}
