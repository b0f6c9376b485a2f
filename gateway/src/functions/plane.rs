//! The control plane's tasks: reading the command topics, publishing
//! replies and retained statuses through the control link.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish, PublishProperties};
use rumqttd::Notification;
use tokio::sync::mpsc;

use super::control::{self, CommandReply, CommandRequest};
use super::{Inner, COMMANDS};

/// A publish of the control plane: a reply or a retained status.
pub(super) struct Outgoing {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    /// MQTT 5 correlation data of the request this answers.
    correlation: Option<Bytes>,
}

/// Replies and statuses waiting for the control link.
pub(super) const OUTGOING_QUEUE: usize = 64;

/// How often the retained status of each function is compared with what
/// was published, and republished if it changed.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// The same while a function is still starting (see `run_status`), for
/// at most `STATUS_FAST_FOR`.
const STATUS_WHILE_STARTING: Duration = Duration::from_millis(20);
const STATUS_FAST_FOR: Duration = Duration::from_secs(5);

/// How long a reply waits for the status publisher to have queued the
/// statuses the command changed (they go out before the reply).
const STATUS_BEFORE_REPLY: Duration = Duration::from_secs(2);

/// Reads the command topics; each command runs in its own task (on a
/// blocking thread), so a slow deploy does not hold up `list` or commands
/// for other functions. After a command that changes a function, the
/// statuses are republished before the reply (`status_now`), so a client
/// that reads the retained status after the reply sees the change.
pub(super) async fn run_control(
    inner: Arc<Inner>,
    mut rx: LinkRx,
    out: mpsc::Sender<Outgoing>,
    status_now: mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
) {
    let topics: Vec<(String, &'static str)> = COMMANDS
        .iter()
        .map(|c| (control::command_topic(&inner.gateway_id, c), *c))
        .collect();
    loop {
        match rx.next().await {
            Ok(Some(Notification::Forward(forward))) => {
                let publish = forward.publish;
                let Some(&(_, command)) =
                    topics.iter().find(|(t, _)| publish.topic == t.as_bytes())
                else {
                    continue;
                };
                // An MQTT 5 request names where its answer goes.
                let (response_topic, correlation) = match forward.properties {
                    Some(p) => (p.response_topic, p.correlation_data),
                    None => (None, None),
                };
                let topic = response_topic
                    .unwrap_or_else(|| control::reply_topic(&inner.gateway_id, command));
                let inner = inner.clone();
                let out = out.clone();
                let status_now = status_now.clone();
                tokio::spawn(async move {
                    let worker = inner.clone();
                    let payload = publish.payload;
                    let reply = tokio::task::spawn_blocking(move || match command {
                        "deploy" => serde_json::to_vec(&worker.deploy(&payload)),
                        "list" => serde_json::to_vec(&worker.list()),
                        "invoke" => serde_json::to_vec(&worker.invoke(&payload)),
                        "replay" => serde_json::to_vec(&worker.replay(&payload)),
                        _ => {
                            let reply = match CommandRequest::decode(command, &payload) {
                                Ok(request) => worker.command(command, request),
                                Err(e) => CommandReply {
                                    command: command.into(),
                                    error: Some(e.to_string()),
                                    ..CommandReply::default()
                                },
                            };
                            serde_json::to_vec(&reply)
                        }
                    })
                    .await;
                    if matches!(command, "list" | "invoke" | "replay") {
                        // Changes nothing, but whoever asks may read the
                        // statuses next: bring them up to date, unhurried.
                        inner.changed.notify_one();
                    } else {
                        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
                        if status_now.send(done_tx).await.is_ok() {
                            let _ = tokio::time::timeout(STATUS_BEFORE_REPLY, done_rx).await;
                        }
                    }
                    match reply {
                        Ok(Ok(payload)) => {
                            let _ = out
                                .send(Outgoing {
                                    topic,
                                    payload,
                                    retain: false,
                                    correlation,
                                })
                                .await;
                        }
                        Ok(Err(e)) => tracing::error!(error = %e, "cannot encode a control reply"),
                        Err(e) => tracing::error!(error = %e, "a control command failed"),
                    }
                });
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

/// Publishes replies and statuses through the control link.
pub(super) async fn run_publisher(mut tx: LinkTx, mut out: mpsc::Receiver<Outgoing>) {
    while let Some(o) = out.recv().await {
        let properties = o.correlation.map(|c| PublishProperties {
            correlation_data: Some(c),
            ..PublishProperties::default()
        });
        let publish = Publish::new(Bytes::from(o.topic), Bytes::from(o.payload), o.retain);
        if let Err(e) = tx.send(Packet::Publish(publish, properties)).await {
            tracing::error!(error = %e, "cannot publish a control reply or status");
        }
    }
}

/// Keeps `perch/<id>/fn/<name>/status` (retained) up to date: compares
/// each function's status with what was last published once a second, and
/// right after a command; publishes only what changed; clears the topic of
/// a removed function (an empty retained message). A request on `now`
/// makes it compare at once and answer once what changed is queued.
pub(super) async fn run_status(
    inner: Arc<Inner>,
    out: mpsc::Sender<Outgoing>,
    mut now: mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
) {
    let mut published: HashMap<String, Vec<u8>> = HashMap::new();
    let mut waiting: Vec<tokio::sync::oneshot::Sender<()>> = Vec::new();
    let mut fast_until = None;
    loop {
        let snapshot = {
            let inner = inner.clone();
            match tokio::task::spawn_blocking(move || inner.list()).await {
                Ok(s) => s,
                Err(_) => return,
            }
        };
        let mut seen = HashSet::new();
        // A function whose worker has not switched to its version yet (at
        // start, after a restore) is looked at again soon, so the retained
        // status says "running" within milliseconds of it, not a second;
        // for a few seconds at most, should one never leave "starting".
        let starting = snapshot.iter().any(|info| info.state == "starting");
        let fast = match (starting, fast_until) {
            (false, _) => {
                fast_until = None;
                false
            }
            (true, None) => {
                fast_until = Some(tokio::time::Instant::now() + STATUS_FAST_FOR);
                true
            }
            (true, Some(until)) => tokio::time::Instant::now() < until,
        };
        for info in snapshot {
            seen.insert(info.name.clone());
            let Ok(payload) = serde_json::to_vec(&info) else {
                continue;
            };
            if published.get(&info.name) == Some(&payload) {
                continue;
            }
            published.insert(info.name.clone(), payload.clone());
            let topic = control::status_topic(&inner.gateway_id, &info.name);
            if out
                .send(Outgoing {
                    topic,
                    payload,
                    retain: true,
                    correlation: None,
                })
                .await
                .is_err()
            {
                return;
            }
        }
        let gone: Vec<String> = published
            .keys()
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            published.remove(&name);
            let topic = control::status_topic(&inner.gateway_id, &name);
            let clear = Outgoing {
                topic,
                payload: Vec::new(),
                retain: true,
                correlation: None,
            };
            if out.send(clear).await.is_err() {
                return;
            }
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
        let next = if fast {
            STATUS_WHILE_STARTING
        } else {
            STATUS_INTERVAL
        };
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = inner.changed.notified() => {}
            Some(done) = now.recv() => waiting.push(done),
        }
    }
}
