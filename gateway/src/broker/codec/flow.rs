//! Flow control towards a client (5.0 §4.9): what the codec holds back by
//! the client's Receive Maximum, and the acknowledgements it makes up for
//! rumqttd in order (see "Flow control" in [`super`]).

use std::collections::{HashSet, VecDeque};
/// A packet the codec hands rumqttd as if the client had sent it.
#[derive(Clone, Copy)]
pub(super) enum Inject {
    PubAck(u16),
    PubRec(u16),
    PubComp(u16),
    /// A PINGREQ whose PINGRESP releases a held publish.
    Release,
}

/// The client's side of flow control, for the QoS 1/2 publishes written to
/// it (see "Flow control" in the module doc).
#[derive(Default)]
pub(super) struct Flow {
    /// The client's Receive Maximum (5.0; 65,535 when it sets none).
    pub(super) receive_max: usize,
    /// The client's Maximum Packet Size in bytes (0: none).
    pub(super) max_packet: usize,
    /// Publishes written to the client and not yet acknowledged (PUBACK,
    /// PUBCOMP, PUBREC with a failure code).
    pub(super) in_flight: usize,
    /// Publishes held back by Receive Maximum, encoded, oldest first:
    /// packet id and bytes.
    pub(super) held: VecDeque<(u16, Vec<u8>)>,
    /// Every QoS 1/2 publish rumqttd wrote, in its order, until the
    /// PUBACK/PUBREC: packet id, QoS, and whether it was discarded (too
    /// large), so its made-up acknowledgement waits for its turn.
    pub(super) acks: VecDeque<(u16, u8, bool)>,
    /// PUBRELs rumqttd wrote, in order, until the PUBCOMP: packet id and
    /// whether its message was discarded.
    pub(super) rels: VecDeque<(u16, bool)>,
    /// Packet ids of discarded QoS 2 publishes whose PUBREL is due.
    pub(super) discarded_qos2: HashSet<u16>,
    /// Releases asked of rumqttd (PINGREQs injected) not yet answered.
    pub(super) releasing: usize,
}

impl Flow {
    /// The client acknowledged `pkid` (PUBACK or PUBREC): the made-up
    /// acknowledgements of discarded publishes that were waiting for it
    /// follow.
    pub(super) fn acked(&mut self, pkid: u16, inject: &mut VecDeque<Inject>) {
        if let Some(i) = self.acks.iter().position(|a| a.0 == pkid) {
            self.acks.remove(i);
        }
        self.flush_acks(inject);
    }

    /// Made-up acknowledgements for the discarded publishes at the head.
    pub(super) fn flush_acks(&mut self, inject: &mut VecDeque<Inject>) {
        while let Some(&(pkid, qos, true)) = self.acks.front() {
            self.acks.pop_front();
            if qos == 1 {
                inject.push_back(Inject::PubAck(pkid));
            } else {
                self.discarded_qos2.insert(pkid);
                inject.push_back(Inject::PubRec(pkid));
            }
        }
    }

    /// The client completed `pkid` (PUBCOMP).
    pub(super) fn completed(&mut self, pkid: u16, inject: &mut VecDeque<Inject>) {
        if let Some(i) = self.rels.iter().position(|r| r.0 == pkid) {
            self.rels.remove(i);
        }
        self.flush_rels(inject);
    }

    /// Made-up PUBCOMPs for the discarded QoS 2 publishes at the head.
    pub(super) fn flush_rels(&mut self, inject: &mut VecDeque<Inject>) {
        while let Some(&(pkid, true)) = self.rels.front() {
            self.rels.pop_front();
            inject.push_back(Inject::PubComp(pkid));
        }
    }

    /// A slot of the client's Receive Maximum came free.
    pub(super) fn freed(&mut self, inject: &mut VecDeque<Inject>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.schedule(inject);
    }

    /// Asks for as many held publishes as the client has room for.
    pub(super) fn schedule(&mut self, inject: &mut VecDeque<Inject>) {
        while self.held.len() > self.releasing && self.in_flight + self.releasing < self.receive_max
        {
            self.releasing += 1;
            inject.push_back(Inject::Release);
        }
    }
}
