//! Messages from clients that the gateway keeps, and why their
//! acknowledgement waits: a PUBACK means it is on disk.
//!
//! # Design: keep, then acknowledge
//!
//! A QoS 1/2 PUBLISH that the gateway takes responsibility for is handed to
//! the writer that keeps it while the codec reads it, before rumqttd routes
//! it: a message on `upstream.forward_topics` to the buffer as a record
//! (through a [`Keeper`], which the gateway wires to the buffer's intake),
//! a retained one (or an empty one, which deletes the retained message) to
//! the retained store ([`super::retained::Capture::keep`]). Each takes a
//! ticket ([`crate::kit::durable`]); the codec remembers, per packet id, the
//! tickets of that publish ([`Kept`]).
//!
//! rumqttd answers a publish with PUBACK (QoS 1) or PUBREC (QoS 2) as soon
//! as its router has it in memory. When the codec is asked to write that
//! acknowledgement it waits until the writers have settled the tickets:
//! committed, it goes out; refused (the buffer at its bound under
//! `drop_newest`, the retained store over its bound, a failed write) or
//! not settled within [`crate::kit::durable::WAIT_LIMIT`], a 5.0 client gets
//! it with reason 0x97 (Quota exceeded; 0x80 after the time limit) and a
//! 3.1.1 client, which has no way to be told, loses the connection without
//! it (MQTT-4.3.2: the sender keeps the message and sends it again). A
//! writer that cannot take the message at once (its backlog full) refuses
//! it before it is routed: 5.0 answers 0x97 and routes nothing, 3.1.1
//! closes the connection. Nothing is acknowledged from memory.
//!
//! The writers commit in groups (the buffer every `ack_commit_interval_ms`
//! at most), so throughput does not pay a sync per message; while a
//! connection waits, its client's own in-flight window is what slows it
//! down: nothing is dropped for being behind.
//!
//! QoS 0 messages on `forward_topics` go the same way, without a ticket:
//! fire and forget, but never lost to a slow internal reader.
//!
//! # Forwarded once
//!
//! The upstream capture still subscribes to `forward_topics` through an
//! in-process link, for what does not come through a codec (functions'
//! publishes, wills). A message the codec handed to the [`Keeper`] says so
//! in the mark the codec writes into every message that enters the router
//! (a bit of the marked Payload Format Indicator, see `codec::delivery`),
//! and the capture skips it ([`is_kept`]); the codec takes the mark out
//! again from every publish it writes to a client, so no client sees it.

use std::collections::VecDeque;
use std::sync::Arc;

use rumqttd::protocol::{Publish, PublishProperties};

use super::retained::Capture;
use crate::kit::durable::{Gate, Lane, Refused, Ticket, Wanted, LANES};

/// What keeps the messages clients publish on the topics it asks for (the
/// gateway's forwarding into the buffer). Called by connections' codecs,
/// one call per publish: must not block.
pub trait Keeper: Send + Sync {
    /// Whether messages published on `topic` are kept.
    fn keeps(&self, topic: &str) -> bool;

    /// Keeps one message. With a ticket, the writer settles it once the
    /// message is committed (or refused by the commit). `Err`: refused now,
    /// nothing taken.
    fn keep(&self, topic: &str, payload: &[u8], ticket: Option<Ticket>) -> Result<(), Refused>;
}

/// Whether a publish was handed to the [`Keeper`] by the codec that read
/// it (so the upstream capture leaves it alone).
pub fn is_kept(props: Option<&PublishProperties>) -> bool {
    super::codec::delivery::is_kept(props)
}

/// One connection's kept publishes whose acknowledgement waits, in the
/// order they were read.
#[derive(Default)]
pub(super) struct Kept {
    /// Created with the connection's first kept QoS 1/2 publish.
    gate: Option<Arc<Gate>>,
    /// The last ticket number taken per lane.
    issued: Wanted,
    /// Packet id and the tickets its PUBACK/PUBREC waits for, oldest
    /// first (rumqttd acknowledges in the order it read).
    waiting: VecDeque<(u16, Wanted)>,
}

impl Kept {
    /// The ticket the next publish on `lane` takes, with its number; the
    /// number counts as used only once [`Kept::taken`] says the writer took
    /// the message.
    fn next(&mut self, lane: Lane) -> (Ticket, u64) {
        let gate = self.gate.get_or_insert_with(Gate::new);
        let n = self.issued[lane as usize] + 1;
        (Ticket::new(gate, lane, n), n)
    }

    /// The writer of `lane` took ticket `n`: the publish waits for it.
    fn taken(&mut self, lane: Lane, n: u64, wanted: &mut Wanted) {
        self.issued[lane as usize] = n;
        wanted[lane as usize] = n;
    }

    /// The acknowledgement of `pkid` waits for `wanted`.
    fn wait_for(&mut self, pkid: u16, wanted: Wanted) {
        if wanted != [0; LANES] {
            self.waiting.push_back((pkid, wanted));
        }
    }

    /// Hands a client's publish that the gateway keeps to where it is kept,
    /// before rumqttd routes it: on `forward_topics` to the `keeper`, if it
    /// changes the retained set to the `retained` store. At QoS 1/2 (`at`:
    /// QoS and packet id) each writer takes a ticket and the publish's
    /// acknowledgement waits for them. Returns whether the keeper took it
    /// (the codec marks it so, for the capture); `Err` when a QoS 1/2 one
    /// is refused now (a QoS 0 one always goes on: the writer counts what
    /// it could not take).
    pub(super) fn keep(
        &mut self,
        keeper: Option<&dyn Keeper>,
        retained: Option<&Capture>,
        topic: &str,
        publish: &Publish,
        props: &Option<PublishProperties>,
        (qos, pkid): (u8, Option<u16>),
    ) -> Result<bool, Refused> {
        let forward = keeper.filter(|k| k.keeps(topic));
        // rumqttd deletes the retained message on any empty payload,
        // retained or not; the store mirrors it.
        let retained = retained.filter(|_| publish.retain || publish.payload.is_empty());
        if forward.is_none() && retained.is_none() {
            return Ok(false);
        }
        let pkid = pkid.filter(|_| qos > 0);
        let mut wanted = [0; LANES];
        if let Some(capture) = retained {
            let expiry = props.as_ref().and_then(|p| p.message_expiry_interval);
            let (ticket, n) = pkid.map(|_| self.next(Lane::Retained)).unzip();
            match capture.keep(topic, qos.min(2), &publish.payload, expiry, ticket) {
                Ok(()) => {
                    if let Some(n) = n {
                        self.taken(Lane::Retained, n, &mut wanted);
                    }
                }
                Err(refused) if pkid.is_some() => return Err(refused),
                Err(_) => {}
            }
        }
        if let Some(keeper) = forward {
            let (ticket, n) = pkid.map(|_| self.next(Lane::Buffer)).unzip();
            match keeper.keep(topic, &publish.payload, ticket) {
                Ok(()) => {
                    if let Some(n) = n {
                        self.taken(Lane::Buffer, n, &mut wanted);
                    }
                }
                Err(refused) if pkid.is_some() => return Err(refused),
                Err(_) => {}
            }
        }
        if let Some(pkid) = pkid {
            self.wait_for(pkid, wanted);
        }
        Ok(forward.is_some())
    }

    /// What the acknowledgement of `pkid` waits for, if anything; taken.
    pub(super) fn take(&mut self, pkid: u16) -> Option<(Arc<Gate>, Wanted)> {
        let i = self.waiting.iter().position(|w| w.0 == pkid)?;
        let (_, wanted) = self.waiting.remove(i)?;
        Some((self.gate.clone()?, wanted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kit::durable::{settle, Outcome};

    /// A keeper that keeps `kept/#`, holds on to the tickets for the test
    /// to settle, and refuses everything at once while `refuse` is set.
    #[derive(Default)]
    struct Holding {
        tickets: std::sync::Mutex<Vec<Ticket>>,
        refuse: std::sync::atomic::AtomicBool,
    }

    impl Keeper for Holding {
        fn keeps(&self, topic: &str) -> bool {
            topic.starts_with("kept/")
        }

        fn keep(&self, _: &str, _: &[u8], ticket: Option<Ticket>) -> Result<(), Refused> {
            if self.refuse.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(Refused);
            }
            self.tickets.lock().unwrap().extend(ticket);
            Ok(())
        }
    }

    impl Holding {
        /// Settles every ticket taken so far.
        fn settle_all(&self, committed: bool) {
            let tickets = std::mem::take(&mut *self.tickets.lock().unwrap());
            assert!(!tickets.is_empty(), "nothing was kept");
            settle(tickets.into_iter().map(|t| (t, committed)));
        }
    }

    fn broker(keeper: Arc<Holding>) -> (super::super::Broker, std::net::SocketAddr) {
        use super::super::{Broker, BrokerConfig, ListenerConfig};
        let config = BrokerConfig {
            listeners: vec![ListenerConfig {
                listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                ..ListenerConfig::default()
            }],
            ..BrokerConfig::default()
        };
        let broker = Broker::start_in(&config, None, Some(keeper)).unwrap();
        let addr = broker.listening()[0].addr;
        (broker, addr)
    }

    const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

    /// Waits until the keeper holds `n` tickets: the publishes were read.
    async fn kept(keeper: &Holding, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while keeper.tickets.lock().unwrap().len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the publish was not kept"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// A 3.1.1 client whose event loop runs in a task: its PUBACKs' packet
    /// ids, and `None` once the connection closed.
    fn client_v4(
        addr: std::net::SocketAddr,
    ) -> (
        rumqttc::AsyncClient,
        tokio::sync::mpsc::UnboundedReceiver<Option<u16>>,
    ) {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet as P};
        let (client, mut el) =
            AsyncClient::new(MqttOptions::new("c", addr.ip().to_string(), addr.port()), 8);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(P::PubAck(a))) => {
                        let _ = tx.send(Some(a.pkid));
                    }
                    Ok(_) => {}
                    Err(_) => {
                        let _ = tx.send(None);
                        return;
                    }
                }
            }
        });
        (client, rx)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_publish_is_acknowledged_only_once_committed() {
        use rumqttc::QoS;
        use tokio::time::timeout;
        let keeper = Arc::new(Holding::default());
        let (_broker, addr) = broker(keeper.clone());
        let (client, mut acks) = client_v4(addr);
        client
            .publish("kept/a", QoS::AtLeastOnce, false, "1")
            .await
            .unwrap();
        kept(&keeper, 1).await;
        let early = timeout(std::time::Duration::from_millis(200), acks.recv()).await;
        assert!(early.is_err(), "acknowledged before the commit: {early:?}");
        keeper.settle_all(true);
        assert!(matches!(
            timeout(WAIT, acks.recv()).await,
            Ok(Some(Some(_)))
        ));
        // What is not kept is acknowledged as before.
        client
            .publish("other/a", QoS::AtLeastOnce, false, "2")
            .await
            .unwrap();
        assert!(matches!(
            timeout(WAIT, acks.recv()).await,
            Ok(Some(Some(_)))
        ));
        // Refused by the commit: 3.1.1 cannot say so, the connection ends
        // without the PUBACK.
        client
            .publish("kept/b", QoS::AtLeastOnce, false, "3")
            .await
            .unwrap();
        kept(&keeper, 1).await;
        keeper.settle_all(false);
        assert_eq!(timeout(WAIT, acks.recv()).await.unwrap(), Some(None));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_5_0_client_is_told_0x97_for_what_cannot_be_kept() {
        use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
        use rumqttc::v5::{
            mqttbytes::QoS as Q5, AsyncClient as C5, Event as E5, MqttOptions as O5,
        };
        let keeper = Arc::new(Holding::default());
        let (_broker, addr) = broker(keeper.clone());
        let (client, mut el) = C5::new(O5::new("c5", addr.ip().to_string(), addr.port()), 8);
        let (tx, mut reasons) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = el.poll().await {
                if let E5::Incoming(P5::PubAck(a)) = event {
                    let _ = tx.send(a.reason);
                }
            }
        });
        let mut next_reason = async || {
            tokio::time::timeout(WAIT, reasons.recv())
                .await
                .expect("a PUBACK")
                .expect("the connection")
        };
        // Refused by the commit.
        client
            .publish("kept/a", Q5::AtLeastOnce, false, "1")
            .await
            .unwrap();
        kept(&keeper, 1).await;
        keeper.settle_all(false);
        assert_eq!(next_reason().await, PubAckReason::QuotaExceeded);
        // Refused at once: answered in rumqttd's place, connection kept.
        keeper
            .refuse
            .store(true, std::sync::atomic::Ordering::Relaxed);
        client
            .publish("kept/b", Q5::AtLeastOnce, false, "2")
            .await
            .unwrap();
        assert_eq!(next_reason().await, PubAckReason::QuotaExceeded);
        keeper
            .refuse
            .store(false, std::sync::atomic::Ordering::Relaxed);
        client
            .publish("kept/c", Q5::AtLeastOnce, false, "3")
            .await
            .unwrap();
        kept(&keeper, 1).await;
        keeper.settle_all(true);
        assert_eq!(next_reason().await, PubAckReason::Success);
    }

    #[test]
    fn an_acknowledgement_waits_for_the_tickets_of_its_packet_id() {
        let mut kept = Kept::default();
        let mut wanted = [0; LANES];
        let (ticket, n) = kept.next(Lane::Buffer);
        kept.taken(Lane::Buffer, n, &mut wanted);
        let (retained, m) = kept.next(Lane::Retained);
        kept.taken(Lane::Retained, m, &mut wanted);
        kept.wait_for(7, wanted);
        // A number not taken is offered again.
        assert_eq!(kept.next(Lane::Buffer).1, 2);
        kept.wait_for(8, [0; LANES]);
        assert!(kept.take(8).is_none(), "nothing kept: nothing to wait for");
        let (gate, wanted) = kept.take(7).unwrap();
        assert!(kept.waiting.is_empty());
        settle([(ticket, true)]);
        assert_eq!(gate.poll(wanted), None, "the retained store is not done");
        settle([(retained, true)]);
        assert_eq!(gate.poll(wanted), Some(Outcome::Committed));
    }
}
