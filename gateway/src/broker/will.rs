//! Will messages: perch keeps them and publishes them itself, through an
//! in-process link, instead of handing them to rumqttd.
//!
//! Why: rumqttd learns of a clean DISCONNECT from the packet and of the
//! socket closing from its connection task, and the two race. When the
//! router handles the DISCONNECT first it frees the connection id, a new
//! client may get that id, and the old task's late "disconnected" event then
//! disconnects the *new* client (seen in the conformance tests: one client's
//! `mosquitto_pub` could drop another client). So the codec takes the will
//! out of the CONNECT, never passes a DISCONNECT on, and ends the connection
//! itself after one (one "disconnected" event, with an id that is still the
//! client's). That needs the will kept here:
//!
//! - a connection that ends without DISCONNECT (or with 5.0 reason 0x04,
//!   "disconnect with will") has its will published, after its delay: 5.0
//!   Will Delay Interval, capped by the Session Expiry Interval (§3.1.3.2.2);
//! - a new connection with the same client id within the delay cancels it
//!   (it continues the session), unless it starts a clean session, which
//!   ends the old one and publishes the will at once;
//! - a retained will is handed to the retained store when published.
//!
//! QoS 2 wills are published at QoS 1 (an in-process link cannot run the
//! QoS 2 handshake); their subscribers still get them once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttd::local::LinkTx;
use rumqttd::protocol::PublishProperties;

use super::retained::Capture;

/// A will, as taken from a CONNECT.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub props: Option<PublishProperties>,
    /// Seconds to wait after the connection ends.
    pub delay_s: u32,
}

/// The wills waiting for their delay, and the link they are published on.
pub struct Wills {
    /// client id -> (generation, will): a delayed will waits here; a later
    /// connection of that client removes it.
    pending: Mutex<HashMap<String, (u64, Will)>>,
    next: AtomicU64,
    /// The link wills are published through; a lock because connections
    /// end on any runtime thread. Held only for a non-blocking push.
    link: Mutex<LinkTx>,
    retained: Option<Capture>,
}

impl Wills {
    pub fn new(link: LinkTx, retained: Option<Capture>) -> Wills {
        Wills {
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            link: Mutex::new(link),
            retained,
        }
    }

    /// A client connected: a will still waiting for its delay is cancelled
    /// (the session goes on) or, with a clean start, published now.
    pub fn connected(&self, client_id: &str, clean_start: bool) {
        let pending = self.pending.lock().expect("wills lock").remove(client_id);
        if let Some((_, will)) = pending {
            if clean_start {
                self.publish(will);
            }
        }
    }

    /// A connection ended without a clean DISCONNECT: publish its will, now
    /// or after its delay.
    pub fn ended(self: &Arc<Self>, client_id: String, will: Will) {
        if will.delay_s == 0 {
            self.publish(will);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime (shutting down): publish rather than lose it.
            self.publish(will);
            return;
        };
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
        let delay = Duration::from_secs(u64::from(will.delay_s));
        self.pending
            .lock()
            .expect("wills lock")
            .insert(client_id.clone(), (generation, will));
        let wills = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            let due = {
                let mut pending = wills.pending.lock().expect("wills lock");
                match pending.get(&client_id) {
                    Some((g, _)) if *g == generation => pending.remove(&client_id),
                    _ => None,
                }
            };
            if let Some((_, will)) = due {
                wills.publish(will);
            }
        });
    }

    /// Publishes `will` (or any message handed over as one) now.
    pub fn publish(&self, will: Will) {
        if will.retain {
            if let Some(capture) = &self.retained {
                let topic = String::from_utf8_lossy(&will.topic);
                let expiry = will.props.as_ref().and_then(|p| p.message_expiry_interval);
                capture.offer(&topic, will.qos.min(2), &will.payload, expiry);
            }
        }
        let pkid = (self.next.fetch_add(1, Ordering::Relaxed) % u64::from(u16::MAX)) as u16 + 1;
        let Some(packet) = super::local_publish(
            will.topic.clone(),
            will.payload,
            will.qos,
            will.retain,
            will.props,
            pkid,
        ) else {
            tracing::warn!(topic = %String::from_utf8_lossy(&will.topic), "will message could not be encoded; not published");
            return;
        };
        let mut link = self.link.lock().expect("wills lock");
        if let Err(e) = super::send_now(&mut link, packet) {
            tracing::warn!(error = %e, "will message not published");
        }
    }
}

/// Publish properties of a will (5.0 §3.1.3.2: they travel with it).
pub fn publish_props(p: &rumqttd::protocol::LastWillProperties) -> PublishProperties {
    PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        topic_alias: None,
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
        subscription_identifiers: Vec::new(),
        content_type: p.content_type.clone(),
    }
}
