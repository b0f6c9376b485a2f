//! Acknowledgements that wait for a commit: how a writer that commits in
//! batches (the buffer, the retained store) tells a client's connection that
//! what it published is on disk, so that the broker's PUBACK or PUBREC can
//! go out ("a PUBACK means it is on disk", docs/reliability.md).
//!
//! # Design
//!
//! A connection that publishes something the gateway keeps has one
//! [`Gate`]. For each message it hands a writer it takes a [`Ticket`] on
//! that writer's [`Lane`], numbered 1, 2, 3... per lane in the order the
//! connection hands the messages over. Each writer takes its work from one
//! queue and commits in order, so it settles a connection's tickets of its
//! lane in order too: the gate keeps, per lane, only the highest ticket
//! settled and the few that were refused (a commit that could not take the
//! message, e.g. `drop_newest` at the buffer's bound). A waiter asks for a
//! ticket per lane ([`Gate::wait`]) and gets [`Outcome::Committed`] once
//! each is settled and none was refused.
//!
//! Invariants: a ticket number is used only once the writer has accepted
//! the message (a message refused on the spot takes no number), so a lane's
//! numbers reach its writer without gaps; a writer settles a lane's tickets
//! of one gate in increasing order, refused ones in the same pass as the
//! committed ones after them ([`settle`] takes them in order).
//!
//! A ticket holds its gate, so a connection that ends before its commit
//! leaves nothing dangling: the writer settles into a gate nobody waits on,
//! and it is freed with the last ticket.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The writers a message can wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// The store-and-forward buffer (`buffer.db`): forwarded messages.
    Buffer = 0,
    /// The retained-message store (`retained.db`).
    Retained = 1,
}

/// How many lanes there are; a waiter asks for one ticket number per lane.
pub const LANES: usize = 2;

/// Ticket numbers a waiter asks for, per lane; 0 asks for nothing.
pub type Wanted = [u64; LANES];

/// How long a connection waits for a commit before it gives up on the
/// message: refused (MQTT 5: reason 0x80) or, under 3.1.1, the connection
/// is closed. The buffer retries a failing commit with a delay that grows to
/// 5 s; a wait this long means the disk is failing, not slow.
pub const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// One connection's messages waiting for their commits.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<State>,
    settled: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// The highest ticket settled, per lane.
    done: Wanted,
    /// Tickets settled as refused and not yet seen by a waiter.
    refused: Vec<(Lane, u64)>,
}

/// What became of the tickets a waiter asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every one is committed.
    Committed,
    /// A writer could not take one of them (full, or the write failed).
    Refused,
    /// Not all were settled within the limit.
    TimedOut,
}

/// A writer could not take a message now (its queue or backlog is full,
/// or it has stopped); the one who offered it says why in its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

/// One message handed to a writer, to settle once its commit is done.
pub struct Ticket {
    gate: Arc<Gate>,
    lane: Lane,
    n: u64,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticket({:?} #{})", self.lane, self.n)
    }
}

impl Ticket {
    /// Ticket `n` of `lane` on `gate` (the issuer numbers them).
    pub fn new(gate: &Arc<Gate>, lane: Lane, n: u64) -> Ticket {
        Ticket {
            gate: gate.clone(),
            lane,
            n,
        }
    }
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::default()
    }

    /// The outcome if every wanted ticket is settled already.
    fn check(state: &mut State, wanted: &Wanted) -> Option<Outcome> {
        if wanted.iter().zip(&state.done).any(|(w, d)| w > d) {
            return None;
        }
        let before = state.refused.len();
        state
            .refused
            .retain(|&(lane, n)| wanted[lane as usize] != n);
        Some(if state.refused.len() < before {
            Outcome::Refused
        } else {
            Outcome::Committed
        })
    }

    /// Waits until the wanted tickets are settled, at most `limit`; blocks
    /// the thread (see [`wait_on`] for async callers).
    pub fn wait(&self, wanted: Wanted, limit: Duration) -> Outcome {
        let deadline = Instant::now() + limit;
        let mut state = self.state.lock().expect("gate lock");
        loop {
            if let Some(outcome) = Gate::check(&mut state, &wanted) {
                return outcome;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Outcome::TimedOut;
            }
            state = self.settled.wait_timeout(state, left).expect("gate lock").0;
        }
    }

    /// The outcome if it is known now, without waiting.
    pub fn poll(&self, wanted: Wanted) -> Option<Outcome> {
        Gate::check(&mut self.state.lock().expect("gate lock"), &wanted)
    }
}

/// [`Gate::wait`] from code that runs on the async runtime (a connection's
/// codec, called by rumqttd's connection task, which cannot await): on the
/// multi-threaded runtime the worker hands its other tasks to another
/// thread while this one blocks (`block_in_place`); elsewhere (a
/// current-thread runtime in tests) it blocks. Nothing the writers need
/// runs on the runtime, so the wait cannot hold up the commit it waits for.
pub fn wait_on(gate: &Gate, wanted: Wanted, limit: Duration) -> Outcome {
    if let Some(outcome) = gate.poll(wanted) {
        return outcome;
    }
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(|| gate.wait(wanted, limit))
    } else {
        gate.wait(wanted, limit)
    }
}

/// Settles tickets, each committed (`true`) or refused: in the order
/// given, which must be each gate's ticket order per lane. Consecutive
/// tickets of one gate are settled under one lock and wake its waiter once.
pub fn settle(tickets: impl IntoIterator<Item = (Ticket, bool)>) {
    let mut tickets = tickets.into_iter().peekable();
    while let Some((first, ok)) = tickets.next() {
        let gate = first.gate;
        {
            let mut state = gate.state.lock().expect("gate lock");
            let mut one = |lane: Lane, n: u64, ok: bool| {
                let done = &mut state.done[lane as usize];
                *done = (*done).max(n);
                if !ok {
                    state.refused.push((lane, n));
                }
            };
            one(first.lane, first.n, ok);
            while let Some((t, ok)) = tickets.next_if(|(t, _)| Arc::ptr_eq(&t.gate, &gate)) {
                one(t.lane, t.n, ok);
            }
        }
        gate.settled.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_sees_its_tickets_committed_or_refused_per_lane() {
        let gate = Gate::new();
        let t = |lane, n| Ticket::new(&gate, lane, n);
        assert_eq!(gate.poll([1, 0]), None);
        settle([(t(Lane::Buffer, 1), true), (t(Lane::Buffer, 2), false)]);
        assert_eq!(gate.poll([1, 0]), Some(Outcome::Committed));
        assert_eq!(gate.poll([2, 0]), Some(Outcome::Refused));
        // A refusal is reported once: its waiter has taken it.
        assert_eq!(gate.poll([2, 0]), Some(Outcome::Committed));
        // Both lanes must be settled.
        assert_eq!(gate.poll([2, 1]), None);
        settle([(t(Lane::Retained, 1), true)]);
        assert_eq!(gate.poll([2, 1]), Some(Outcome::Committed));
        assert_eq!(
            gate.wait([3, 0], Duration::from_millis(10)),
            Outcome::TimedOut
        );
    }

    #[test]
    fn a_blocked_waiter_wakes_when_another_thread_settles() {
        let gate = Gate::new();
        let ticket = Ticket::new(&gate, Lane::Buffer, 1);
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            settle([(ticket, true)]);
        });
        assert_eq!(
            gate.wait([1, 0], Duration::from_secs(10)),
            Outcome::Committed
        );
        writer.join().unwrap();
    }

    #[test]
    fn consecutive_tickets_of_several_gates_settle_each_gate() {
        let (a, b) = (Gate::new(), Gate::new());
        settle([
            (Ticket::new(&a, Lane::Buffer, 1), true),
            (Ticket::new(&a, Lane::Buffer, 2), true),
            (Ticket::new(&b, Lane::Buffer, 1), false),
            (Ticket::new(&a, Lane::Buffer, 3), true),
        ]);
        assert_eq!(a.poll([3, 0]), Some(Outcome::Committed));
        assert_eq!(b.poll([1, 0]), Some(Outcome::Refused));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_on_the_runtime_does_not_stall_its_other_tasks() {
        let gate = Gate::new();
        let ticket = Ticket::new(&gate, Lane::Buffer, 1);
        // The settling happens on a runtime task while the waiter blocks.
        let settler = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            settle([(ticket, true)]);
        });
        let outcome = wait_on(&gate, [1, 0], Duration::from_secs(10));
        assert_eq!(outcome, Outcome::Committed);
        settler.await.unwrap();
    }
}
