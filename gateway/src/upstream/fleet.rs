//! Fleet desired state: the gateway follows deploy bundles that the
//! upstream broker holds for its fleet groups.
//!
//! With `upstream.mqtt.fleet_groups = ["lab"]`, a second client of the
//! upstream broker (client id `<delivery client id>-fleet`, same address,
//! login and TLS) subscribes to `perch/fleet/lab/deploy/+`. A retained
//! message there is the desired state of one function for the whole group:
//! a deploy request exactly as on the local control topic (an optional JSON
//! options line, then the bundle). Because it is retained, a gateway that
//! was offline when it was published gets it when it (re)connects, and
//! converges.
//!
//! The fleet client does not deploy by itself: it publishes the request,
//! unchanged, on the gateway's own `perch/<id>/fn/deploy` through an
//! in-process broker link, so a fleet deploy goes through the same entry
//! point, checks and replies as a local one (signature checks included
//! when the gateway has trusted keys: a fleet bundle must then be signed).
//! A request it already handed over (same topic, same SHA-256) since the
//! gateway started is not handed over again when the broker re-delivers it
//! on a reconnect; after a restart it is, and redeploying the running
//! version is harmless. An empty retained message (the desired state
//! cleared) changes nothing on the gateway. A rollout follows the same
//! way: a request with `{"canary": N}` starts the canary on every gateway
//! (each judges and rolls back its own), and publishing the same version
//! without the options line promotes it everywhere, restarts included.
//!
//! What the gateway says goes back upstream under its own id: every deploy
//! reply (`perch/<id>/fn/deploy/reply`) and every function status
//! (`perch/<id>/fn/<name>/status`, retained, cleared with the function), so
//! whoever publishes the desired state sees each gateway converge.

use std::collections::HashMap;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::Notification;
use tokio::sync::watch;

use super::config::MqttUpstreamConfig;
use super::UpstreamError;
use crate::broker::Links;
use crate::functions::control;

/// `perch/fleet/<group>/deploy/+`: the filter a group's desired state is on.
pub fn deploy_filter(group: &str) -> String {
    format!("perch/fleet/{group}/deploy/+")
}

/// `perch/fleet/<group>/deploy/<name>`: where a fleet's desired state of
/// function `name` is published, retained.
pub fn deploy_topic(group: &str, name: &str) -> String {
    format!("perch/fleet/{group}/deploy/{name}")
}

/// Starts the fleet client when `fleet_groups` is not empty: one task that
/// follows the upstream broker, one that reports back.
pub fn start(
    config: &MqttUpstreamConfig,
    gateway: &str,
    links: Links,
    max_bundle_bytes: usize,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<(&'static str, tokio::task::JoinHandle<()>)>, UpstreamError> {
    if config.fleet_groups.is_empty() {
        return Ok(Vec::new());
    }
    let client_id = if config.client_id.is_empty() {
        format!("perch-{gateway}-fleet")
    } else {
        format!("{}-fleet", config.client_id)
    };
    let mut options = super::connection_options(config, client_id)?;
    // A deploy bundle is one packet; it may be larger than the records.
    let packet = config
        .max_packet_size_bytes
        .max(max_bundle_bytes + crate::functions::config::BUNDLE_HEADROOM_BYTES);
    options.set_max_packet_size(packet, packet);
    options.set_clean_session(true);
    let (client, eventloop) = AsyncClient::new(options, 64);
    let (mut tx, rx) = links.open("perch-fleet")?;
    for filter in [
        control::deploy_reply_topic(gateway),
        control::status_topic(gateway, "+"),
    ] {
        tx.subscribe(filter).map_err(|source| {
            UpstreamError::Broker(crate::broker::BrokerError::Link {
                client_id: "perch-fleet".into(),
                source: Box::new(source),
            })
        })?;
    }
    let follow = Follow {
        client: client.clone(),
        groups: config.fleet_groups.clone(),
        deploy_topic: control::deploy_topic(gateway),
        local: tx,
        handed_over: HashMap::new(),
    };
    Ok(vec![
        (
            "fleet desired state",
            tokio::spawn(follow.run(eventloop, shutdown.clone())),
        ),
        ("fleet reports", tokio::spawn(report(rx, client, shutdown))),
    ])
}

struct Follow {
    client: AsyncClient,
    groups: Vec<String>,
    /// `perch/<id>/fn/deploy`, the local entry point.
    deploy_topic: String,
    local: LinkTx,
    /// SHA-256 of the request last handed over, per fleet topic.
    handed_over: HashMap<String, String>,
}

impl Follow {
    async fn run(mut self, mut eventloop: rumqttc::EventLoop, mut shutdown: watch::Receiver<bool>) {
        loop {
            let event = tokio::select! {
                e = eventloop.poll() => e,
                _ = shutdown.changed() => break,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    tracing::info!(groups = ?self.groups, "fleet: connected upstream");
                    for g in &self.groups {
                        if let Err(e) = self
                            .client
                            .try_subscribe(deploy_filter(g), QoS::AtLeastOnce)
                        {
                            tracing::error!(group = %g, error = %e, "fleet: cannot subscribe");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    self.on_desired_state(p.topic, p.payload)
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "fleet: upstream connection failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => break,
                    }
                }
            }
        }
    }

    fn on_desired_state(&mut self, topic: String, payload: Bytes) {
        if payload.is_empty() {
            tracing::info!(topic, "fleet: desired state cleared; nothing changes here");
            return;
        }
        let sha = control::sha256_hex(&payload);
        if self.handed_over.get(&topic) == Some(&sha) {
            return;
        }
        tracing::info!(topic, sha256 = %sha, bytes = payload.len(), "fleet: deploying the desired state");
        match self.local.publish(self.deploy_topic.clone(), payload) {
            Ok(_) => {
                self.handed_over.insert(topic, sha);
            }
            Err(e) => tracing::error!(topic, error = %e, "fleet: cannot hand the deploy over"),
        }
    }
}

/// Sends the gateway's deploy replies and function statuses upstream.
async fn report(mut rx: LinkRx, client: AsyncClient, mut shutdown: watch::Receiver<bool>) {
    loop {
        let next = tokio::select! {
            n = rx.next() => n,
            _ = shutdown.changed() => break,
        };
        match next {
            Ok(Some(Notification::Forward(forward))) => {
                let p = forward.publish;
                let Ok(topic) = std::str::from_utf8(&p.topic) else {
                    continue;
                };
                let retain = topic.ends_with("/status");
                // Waits for room in the client's queue; the upstream event
                // loop drains it (and keeps it while disconnected).
                if client
                    .publish(topic, QoS::AtLeastOnce, retain, p.payload.to_vec())
                    .await
                    .is_err()
                {
                    break;
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
}
