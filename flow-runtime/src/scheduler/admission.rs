//! Admission gates: what a ready state must pass, besides a slot and the resource pool,
//! before it starts. Today these are rate limits; each answers "admitted" or "not before
//! instant T".
//!
//! A state a gate refuses leaves the ready heap and waits at that gate (`ReadyQueue::park`),
//! so it never delays unrelated ready states and holds no slot. Only the first entry waiting
//! at a gate asks it again, when its instant comes; the others wait behind it without asking.
//! One timer per run is armed for the earliest such instant (`Message::GateDue`). An agent
//! whose states use no gate runs none of this: a state without gates passes in one check.

use std::sync::Arc;

use flow_core::FlowError;
use tokio::time::Instant;

use super::ready::ReadyEntry;
use super::task::Message;
use super::{AbortOnDrop, BlockedState, Coordinator};
use crate::coordination::NotBefore;

/// What the gates of a ready state said.
pub(super) enum GateVerdict {
    /// Every gate admitted it (and counted it): it may start.
    Admitted(ReadyEntry),
    /// It waits at a gate, out of the ready heap.
    Waiting,
    /// A gate refused it outright: the attempt fails.
    Refused(ReadyEntry, FlowError),
}

impl Coordinator {
    /// Asks the gates of `entry`'s state, in order. All or nothing: an admission taken from
    /// an earlier gate is given back when a later one refuses.
    pub(super) fn through_gates(&mut self, entry: ReadyEntry) -> GateVerdict {
        let compiled = Arc::clone(&self.compiled);
        let gates = &compiled.states[entry.state.index()].gates;
        if gates.is_empty() {
            return GateVerdict::Admitted(entry);
        }
        let seq = entry.seq();
        // Others of this run already wait at one of its gates: wait behind them, in order.
        if let Some(&gate) = gates.iter().find(|&&gate| self.ready.queued_at(gate, seq)) {
            return self.wait_at(gate, entry, None);
        }
        // A state let out of a gate asks at the instant the gate named (see
        // `GateWait::trying`); others at the current one.
        let at = self.ready.asking_at(seq).unwrap_or(self.now);
        for (taken, &gate) in gates.iter().enumerate() {
            self.ready.asked(gate, at);
            if let Err(NotBefore(until)) = compiled.gates[gate].try_acquire_at(at) {
                for &earlier in &gates[..taken] {
                    compiled.gates[earlier].refund(at);
                }
                return self.wait_at(gate, entry, Some(until));
            }
        }
        self.ready.left(seq);
        GateVerdict::Admitted(entry)
    }

    /// Puts `entry` to wait at `gate` (`until`: the gate refused it until then).
    fn wait_at(&mut self, gate: usize, entry: ReadyEntry, until: Option<Instant>) -> GateVerdict {
        let ticket = if self.ready.has_ticket(entry.seq()) {
            None
        } else {
            match self.compiled.gates[gate].enter_wait(Some(self.graph.name(entry.state))) {
                Ok(ticket) => ticket,
                Err(error) => {
                    self.ready.left(entry.seq());
                    return GateVerdict::Refused(entry, error);
                }
            }
        };
        self.ready.park(gate, entry, until, ticket);
        GateVerdict::Waiting
    }

    /// Lets the states whose gate instant has come ask again (they rejoin the ready heap in
    /// their place). O(gates); nothing when the agent has none.
    pub(super) fn release_gates(&mut self) {
        if !self.compiled.gates.is_empty() {
            self.ready.release_due(self.now);
        }
    }

    /// Keeps the run's one gate timer set for the earliest instant a waiting state may ask
    /// again.
    pub(super) fn arm_gate_timer(&mut self) {
        if self.compiled.gates.is_empty() {
            return;
        }
        match (self.ready.next_release(), &self.gate_timer) {
            (None, _) => self.gate_timer = None,
            (Some(at), Some((armed, _))) if *armed == at => {}
            (Some(at), _) => {
                let delay = at.saturating_duration_since(self.now);
                let timer = AbortOnDrop(self.message_after(delay, Message::GateDue));
                self.gate_timer = Some((at, timer));
            }
        }
    }

    /// What a waiting state is waiting at, for messages.
    pub(super) fn gate_name(&self, gate: usize) -> String {
        format!("rate limit `{}`", self.compiled.gates[gate].name())
    }

    /// The states waiting at gates, for `blocked()`.
    pub(super) fn blocked_at_gates(&self) -> Vec<BlockedState> {
        self.ready
            .waiting_at_gates()
            .map(|(gate, entry, until)| {
                let when = match until {
                    Some(until) if until > self.now => {
                        format!("it may ask again in {:?}", until - self.now)
                    }
                    Some(_) => "it may ask again now".to_owned(),
                    None => "it waits behind others of this run".to_owned(),
                };
                let priority = self.compiled.states[entry.state.index()].priority;
                let since = self.ready.became_ready(entry, priority);
                BlockedState {
                    state: Arc::clone(self.graph.name(entry.state)),
                    waits_for: vec![format!("{}: {when}", self.gate_name(gate))],
                    waited: self.now.saturating_duration_since(since),
                }
            })
            .collect()
    }
}
