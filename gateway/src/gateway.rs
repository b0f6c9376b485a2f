//! The daemon: starts the stages in order, says when it is ready, and stops
//! them in stages on shutdown.
//!
//! Start order follows the data's trip backwards so that nothing produces
//! into a stage that is not there yet: state directory (locked, so a second
//! gateway on it exits naming the first; every database in it test-written,
//! so a file perch cannot write fails the start, not a stage later), admin
//! listener
//! (bound first, so a taken port fails before anything runs), buffer,
//! broker, upstream, functions (whose trigger links subscribe before the
//! ready line is logged, so a client that waits for it cannot publish past
//! a function), then the admin listener starts serving. After the ready
//! line systemd is told `READY=1` (and pinged by its watchdog when the unit
//! asks for it).
//! Shutdown runs the other way: stop accepting clients first, then stop the
//! functions (each flushes its state; their last outputs reach the buffer),
//! then the tasks that feed and drain the buffer, then commit what the
//! buffer holds, all within `gateway.shutdown_timeout_ms`; a stage still
//! running at the deadline is named in the log and dropped.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::broker::{Broker, BrokerError};
use crate::buffer::{Buffer, BufferError};
use crate::config::Config;
use crate::functions::{Functions, FunctionsError, Output};
use crate::telemetry::admin::AdminError;
use crate::telemetry::systemd;
use crate::upstream::{self, UpstreamError};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(
        "cannot use data directory {path}: {source}; pass --data-dir or set gateway.data_dir \
         to a directory perch can write to (perch runs as {user} here: `chown -R {user} \
         {path}` gives it an existing one)"
    )]
    DataDir {
        path: PathBuf,
        user: String,
        source: std::io::Error,
    },
    #[error(
        "the data directory {dir} is in use by another perch ({holder}, per {lock}): two \
         gateways on one data directory would share its buffer and both forward it upstream; \
         stop that one first, or give this one a data directory of its own (--data-dir or \
         gateway.data_dir)"
    )]
    Locked {
        dir: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    #[error(
        "cannot write {path}: {source}; perch runs as {user} here, so give it the file with \
         `chown {user} {path}` (and its -wal and -shm files, if there are any), or start perch \
         as the user that owns the data directory"
    )]
    Unwritable {
        path: PathBuf,
        user: String,
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Buffer(#[from] BufferError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Functions(#[from] FunctionsError),
    #[error(transparent)]
    Admin(#[from] AdminError),
}

/// A running gateway.
pub struct Gateway {
    id: String,
    config: Config,
    broker: Broker,
    buffer: Buffer,
    functions: Functions,
    upstream_stats: Arc<upstream::Stats>,
    admin_addr: Option<std::net::SocketAddr>,
    /// Turns true when the tasks below must stop.
    stop: watch::Sender<bool>,
    /// Long-lived tasks, with a name for the shutdown log.
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    /// `<data-dir>/lock`, locked while this gateway runs; dropped (and so
    /// unlocked) last.
    _lock: File,
}

impl Gateway {
    /// Starts every stage and logs the ready line. Must run inside a tokio
    /// runtime.
    pub async fn start(config: Config) -> Result<Gateway, GatewayError> {
        let id = config.gateway.resolved_id();
        prepare_data_dir(&config.gateway.data_dir)?;
        let lock = lock_data_dir(&config.gateway.data_dir)?;
        prove_databases_writable(&config.gateway.data_dir)?;
        // rustls needs one process-wide crypto provider for outgoing TLS.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let admin = crate::telemetry::admin::bind(&config.admin)?;
        let started = std::time::Instant::now();
        let buffer = Buffer::open(&config.buffer, &config.aggregate, &config.gateway.data_dir)?;
        let upstream_stats = Arc::new(upstream::Stats::default());
        // Clients' messages on forward_topics go from the codecs straight
        // into the buffer, acknowledged once committed (broker::kept).
        let forwarding =
            upstream::Forwarding::keeper(&config.upstream, &buffer, upstream_stats.clone());
        let broker = Broker::start_in(
            &config.broker_resolved(),
            Some(&config.gateway.data_dir),
            forwarding,
        )?;
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        tasks.extend(upstream::start(
            &config.upstream,
            &id,
            &buffer,
            &broker,
            upstream_stats.clone(),
            stopped.clone(),
        )?);
        // Functions' emit/forward records go through a bounded channel to
        // the buffer's intake; `Output` is the interface between the stages.
        let (outputs_tx, outputs_rx) = mpsc::channel(config.functions.output_queue_len);
        let functions = Functions::start(
            broker.links(),
            &config.functions,
            &config.gateway.data_dir,
            &id,
            outputs_tx,
        )
        .await?;
        tasks.push((
            "function outputs",
            tokio::spawn(outputs_to_buffer(outputs_rx, buffer.intake())),
        ));
        if let Some(mqtt) = &config.upstream.mqtt {
            // Fleet deploys arrive on the local control topic, so the
            // functions stage handles them like any other deploy; it
            // subscribes to that topic first (Functions::start).
            tasks.extend(upstream::fleet::start(
                mqtt,
                &id,
                broker.links(),
                config.functions.max_bundle_bytes,
                stopped.clone(),
            )?);
        }
        let listeners = broker
            .listening()
            .iter()
            .map(|l| {
                let scheme = if l.tls { "mqtts" } else { "mqtt" };
                format!("{scheme}://{} ({})", l.addr, l.name)
            })
            .collect::<Vec<_>>();
        let admin_addr = admin.addr();
        tasks.extend(admin.start(
            crate::telemetry::admin::Sources {
                id: id.clone(),
                listeners: listeners.clone(),
                listener_addrs: broker.listening().iter().map(|l| l.addr).collect(),
                traffic: broker.traffic().clone(),
                refusals: broker.refusals().clone(),
                functions: functions.observer(),
                buffer: buffer.intake(),
                upstream: upstream_stats.clone(),
                upstream_kind: match (&config.upstream.mqtt, &config.upstream.http) {
                    (Some(_), _) => "mqtt",
                    (None, Some(_)) => "http",
                    (None, None) => "none",
                },
                upstream_endpoint: config.upstream.endpoint(),
                links: broker.links(),
                started,
            },
            stopped.clone(),
        ));
        let admin_text = match admin_addr {
            Some(a) => format!("admin on http://{a}"),
            None => "admin off".to_owned(),
        };
        tracing::info!(
            "perch ready: gateway {id}, data in {}, {admin_text}, listening on {}",
            config.gateway.data_dir.display(),
            listeners.join(", ")
        );
        systemd::notify_or_log("READY=1");
        if let Some(every) = systemd::watchdog_interval() {
            tasks.push(("systemd watchdog", tokio::spawn(watchdog(every, stopped))));
        }
        Ok(Gateway {
            id,
            config,
            broker,
            buffer,
            functions,
            upstream_stats,
            admin_addr,
            stop,
            tasks,
            _lock: lock,
        })
    }

    /// This gateway's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The embedded broker.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The store-and-forward buffer.
    pub fn buffer(&self) -> &Buffer {
        &self.buffer
    }

    /// The functions stage.
    pub fn functions(&self) -> &Functions {
        &self.functions
    }

    /// Where the admin HTTP listener is bound (`None` when disabled).
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin_addr
    }

    /// Counters of the upstream link.
    pub fn upstream_stats(&self) -> &upstream::Stats {
        &self.upstream_stats
    }

    /// Stops the stages in order within the configured deadline.
    pub async fn shutdown(mut self) {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.config.gateway.shutdown_timeout_ms);
        systemd::notify_or_log("STOPPING=1");
        tracing::info!("shutdown: no longer accepting MQTT clients");
        self.broker.stop_listening();
        if tokio::time::timeout_at(deadline, self.functions.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("shutdown: functions still running at the deadline; stopped");
        }
        let _ = self.stop.send(true);
        for (name, task) in self.tasks.drain(..) {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!("shutdown: {name} still running at the deadline; stopped");
                abort.abort();
            }
        }
        let buffer = self.buffer;
        let flush = tokio::task::spawn_blocking(move || buffer.close());
        if tokio::time::timeout_at(deadline, flush).await.is_err() {
            tracing::warn!("shutdown: the buffer's last commit did not finish by the deadline");
        }
        tracing::info!("shutdown complete");
    }
}

/// Feeds what functions emit and forward into the buffer. Ends when every
/// function is gone (the channel closes).
///
/// A function was told its output was accepted when it took a place in
/// the output channel, so nothing is dropped here for want of room: while
/// `buffer.max_pending_records` wait for the disk, this waits, the channel
/// fills, and the functions' next `emit`/`forward` get `FULL` (which they
/// are told). What the buffer refuses for another reason (it stopped) is
/// counted by the buffer and logged here.
async fn outputs_to_buffer(mut outputs: mpsc::Receiver<Output>, intake: crate::buffer::Intake) {
    let mut refused = 0u64;
    let mut waits = 0u64;
    while let Some(output) = outputs.recv().await {
        let (function, result) = loop {
            if !intake.has_room() {
                // Once and then every 1000th time, so a slow disk cannot
                // flood the log.
                if waits.is_multiple_of(1000) {
                    tracing::info!(
                        waits,
                        "function outputs wait for the buffer: buffer.max_pending_records \
                         records wait for the disk"
                    );
                }
                waits += 1;
                while !intake.has_room() {
                    tokio::time::sleep(ROOM_POLL).await;
                }
            }
            match to_buffer(&intake, &output) {
                // Another producer (a client's kept publish) took the room
                // first: wait again.
                (_, Err(crate::buffer::BufferError::Backlog(_))) => continue,
                handed => break handed,
            }
        };
        if let Err(e) = result {
            // The buffer counts every refusal; the log names the function,
            // once and then every 1000th time, so a backlog cannot flood it.
            if refused.is_multiple_of(1000) {
                tracing::warn!(function = %function, error = %e, refused, "function output not buffered");
            }
            refused += 1;
        }
    }
}

/// How often a function output waiting for room in the buffer looks again.
const ROOM_POLL: Duration = Duration::from_millis(2);

/// Hands one function output to the buffer: the function's name and the
/// outcome. Copies only what the buffer keeps (a record's bytes); an event
/// and a metric's names are shared or inline.
fn to_buffer(
    intake: &crate::buffer::Intake,
    output: &Output,
) -> (std::sync::Arc<str>, Result<(), crate::buffer::BufferError>) {
    match output {
        Output::Record {
            function,
            stream,
            record,
            ..
        } => (function.clone(), intake.forward(stream, record)),
        Output::Event(event) => (event.function.clone(), intake.keep_event(event.clone())),
        Output::Metric {
            function,
            metric,
            key,
            value,
            timestamp_ms,
        } => (
            function.clone(),
            intake.emit_named(metric.clone(), key.clone(), *value, *timestamp_ms),
        ),
    }
}

/// Pings systemd's watchdog every `every` (half of `WatchdogSec=`) while
/// the async runtime runs; a wedged runtime stops the pings and systemd
/// restarts perch.
async fn watchdog(every: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = ticks.tick() => systemd::notify_or_log("WATCHDOG=1"),
            _ = stop.changed() => return,
        }
    }
}

/// Runs a gateway until `shutdown` resolves, then stops it.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
    let gateway = Gateway::start(config).await?;
    shutdown.await;
    gateway.shutdown().await;
    Ok(())
}

/// The data directory's lock file, holding the pid of the gateway that
/// holds the lock.
pub const LOCK_FILE: &str = "lock";

/// The SQLite files a gateway keeps in its data directory.
const DATABASES: [&str; 4] = [
    crate::buffer::FILE_NAME,
    "functions.db",
    "retained.db",
    "sessions.db",
];

/// Takes the data directory's advisory lock (`flock` on `<data-dir>/lock`)
/// and writes this process's pid into it; held until the returned file is
/// dropped, and released by the kernel if the process dies. A lock held by
/// another process is [`GatewayError::Locked`], naming the pid it wrote.
fn lock_data_dir(dir: &Path) -> Result<File, GatewayError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK_FILE);
    let err = |source| GatewayError::DataDir {
        path: path.clone(),
        user: effective_user(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim().parse::<u32>() {
                Ok(pid) => format!("pid {pid}"),
                Err(_) => "a process that has not written its pid yet".to_owned(),
            };
            return Err(GatewayError::Locked {
                dir: dir.to_owned(),
                lock: path,
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
    }
    file.set_len(0).map_err(err)?;
    file.rewind().map_err(err)?;
    writeln!(file, "{}", std::process::id()).map_err(err)?;
    Ok(file)
}

/// Writes to every database already in the data directory (its
/// `user_version` rewritten unchanged: a real write transaction, committed),
/// so a file perch may read but not write (another owner, a read-only mode)
/// fails the start with what to do instead of passing the readiness check
/// and failing the first commit. A file that does not exist yet is created
/// by its stage in the directory `prepare_data_dir` proved writable.
fn prove_databases_writable(dir: &Path) -> Result<(), GatewayError> {
    for name in DATABASES {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let write = || -> Result<(), rusqlite::Error> {
            let conn = rusqlite::Connection::open(&path)?;
            conn.busy_timeout(Duration::from_secs(5))?;
            let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
            conn.pragma_update(None, "user_version", version)
        };
        write().map_err(|source| GatewayError::Unwritable {
            path: path.clone(),
            user: effective_user(),
            source,
        })?;
    }
    Ok(())
}

/// The name of the user this process runs as (its effective uid, from
/// `/proc/self/status` and `/etc/passwd`), or the uid when it has no name,
/// as `chown` takes either.
fn effective_user() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(uid) = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
    else {
        return "the user perch runs as".to_owned();
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let mut fields = l.split(':');
            let name = fields.next()?;
            (fields.nth(1)? == uid).then(|| name.to_owned())
        })
        .unwrap_or_else(|| uid.to_owned())
}

/// Creates the data directory and proves it is writable, so a read-only or
/// missing mount fails at start with its path instead of later in a stage.
fn prepare_data_dir(path: &PathBuf) -> Result<(), GatewayError> {
    let err = |source| GatewayError::DataDir {
        path: path.clone(),
        user: effective_user(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    let probe = path.join(".perch-write-test");
    std::fs::write(&probe, b"ok").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)?;
    Ok(())
}
