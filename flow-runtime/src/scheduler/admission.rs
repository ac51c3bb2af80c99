//! Admission gates: what a ready state must pass, besides a slot and the resource pool,
//! before it starts: its circuit breaker, semaphores, mutexes, leases, bulkheads, rate limits,
//! quotas and barriers. Each answers "admitted" (with what it took: units to hold while the
//! state runs, a breaker's permission, ...), "not before instant T", "wait for a release", or
//! "refused" (see `coordination::Gate`).
//!
//! A state a gate refuses leaves the ready heap and waits at that gate (`ReadyQueue::park`),
//! so it never delays unrelated ready states and holds no slot. Only the first entry waiting
//! at a gate asks it again, when its instant comes; the others wait behind it without asking.
//! One timer per run is armed for the earliest such instant (`Message::GateDue`). An agent
//! whose states use no gate runs none of this: a state without gates passes in one check.

use std::sync::Arc;

use flow_core::FlowError;

use super::failures::Failure;
use super::ready::{ReadyEntry, Wake};
use super::task::Message;
use super::task::Outcome;
use super::{AbortOnDrop, BlockedState, Coordinator};
use crate::coordination::{Asker, HeldUnits, Owner, Taken, Verdict};
use crate::resilience::BreakerPermit;
use flow_core::StateId;
use tokio::time::Instant;

/// What the gates of a ready state said.
pub(super) enum GateVerdict {
    /// Every gate admitted it: it may start, holding these units (and its breaker's
    /// permission) while it runs.
    Admitted(ReadyEntry, Vec<HeldUnits>, Option<BreakerPermit>),
    /// It waits at a gate, out of the ready heap.
    Waiting,
    /// A gate refused it outright: the attempt fails.
    Refused(ReadyEntry, FlowError),
}

impl Coordinator {
    /// Asks the gates of `entry`'s state, in order. All or nothing: what earlier gates gave is
    /// given back when a later one refuses, so a waiting state never holds anything (and can
    /// never be part of a deadlock).
    pub(super) fn through_gates(&mut self, entry: ReadyEntry) -> GateVerdict {
        let compiled = Arc::clone(&self.compiled);
        let gates = &compiled.states[entry.state.index()].gates;
        if gates.is_empty() {
            return GateVerdict::Admitted(entry, Vec::new(), None);
        }
        let seq = entry.seq();
        // Others of this run already wait at one of its gates: wait behind them, in order.
        if let Some(&(gate, _)) = gates
            .iter()
            .find(|&&(gate, _)| self.ready.queued_at(gate, seq))
        {
            return self.wait_at(gate, entry, Wake::Behind);
        }
        // A state let out of a gate asks at the instant the gate named (see
        // `GateWait::trying`); others at the current one.
        let at = self.ready.asking_at(seq).unwrap_or(self.now);
        let name = Arc::clone(self.graph.name(entry.state));
        // Named for status and deadlock reports only when it may hold something: a state
        // behind rate limits alone allocates nothing here.
        let owner = gates
            .iter()
            .any(|&(gate, _)| compiled.gates[gate].engine().is_some())
            .then(|| Owner {
                task: None,
                label: Arc::from(format!(
                    "state `{name}` of run {} (workflow `{}`)",
                    self.observer.run_id, self.compiled.name
                )),
            });
        let mut taken: Vec<Taken> = Vec::new();
        for &(gate, amount) in gates.iter() {
            self.ready.asked(gate, at);
            if !self.ready.has_ticket(seq, gate)
                && let Some(ticket) =
                    compiled.gates[gate].arrive(self.now, self.run_key, &self.sender, gate)
            {
                self.ready.add_ticket(seq, gate, ticket);
            }
            let asker = Asker {
                state: &name,
                owner: owner.as_ref(),
                run_key: self.run_key,
                wake: &self.sender,
                gate,
                arrival: self.ready.arrival(seq, gate),
                attempt: entry.attempt,
                now: self.now,
            };
            let wake = match compiled.gates[gate].ask(at, amount, &asker) {
                Verdict::Admitted(took) => {
                    taken.push(took);
                    continue;
                }
                Verdict::At(until) => Wake::At(until),
                Verdict::OnRelease => Wake::OnRelease,
                Verdict::Refused(error) => {
                    taken.into_iter().for_each(Taken::undo);
                    self.ready.left(seq);
                    return GateVerdict::Refused(entry, error);
                }
            };
            // Given back before waiting: nothing is held while waiting.
            taken.into_iter().for_each(Taken::undo);
            return self.wait_at(gate, entry, wake);
        }
        self.ready.left(seq);
        let (mut held, mut breaker) = (Vec::new(), None);
        for took in taken {
            match took {
                Taken::Units(units) => held.push(units),
                Taken::Breaker(permit) => breaker = Some(permit),
                Taken::Rate(..) | Taken::Passage => {}
            }
        }
        GateVerdict::Admitted(entry, held, breaker)
    }

    /// Puts `entry` to wait at `gate`.
    fn wait_at(&mut self, gate: usize, entry: ReadyEntry, wake: Wake) -> GateVerdict {
        let ticket = if self.ready.has_ticket(entry.seq(), gate) {
            None
        } else {
            let state = self.graph.name(entry.state);
            match self.compiled.gates[gate].enter_wait(state, entry.attempt) {
                Ok(ticket) => Some(ticket),
                Err(error) => {
                    self.ready.left(entry.seq());
                    return GateVerdict::Refused(entry, error);
                }
            }
        };
        self.ready.park(gate, entry, wake, ticket);
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
        self.compiled.gates[gate].describe()
    }

    /// The run has ended: the primitives it waited at forget it.
    pub(super) fn forget_gates(&self) {
        for gate in &self.compiled.gates {
            gate.forget(self.run_key);
        }
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
                    None => "it waits for a release, or behind others of this run".to_owned(),
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

impl Coordinator {
    /// A state starts holding `held` in task `task`: labels the task for deadlock reports and
    /// arms a timer for the earliest TTL among its holds.
    pub(super) fn holding(
        &self,
        state: StateId,
        slot: u32,
        ticket: u64,
        task: tokio::task::Id,
        held: &[HeldUnits],
    ) -> Option<AbortOnDrop> {
        let label: Arc<str> = Arc::from(format!(
            "state `{}` of run {} (workflow `{}`)",
            self.graph.name(state),
            self.observer.run_id,
            self.compiled.name
        ));
        for units in held {
            units.set_task(task, &label);
        }
        let gates = &self.compiled.states[state.index()].gates;
        let (ttl, gate) = gates
            .iter()
            .filter_map(|&(gate, _)| self.compiled.gates[gate].ttl().map(|ttl| (ttl, gate)))
            .min()?;
        Some(AbortOnDrop(self.message_after(
            ttl,
            Message::HoldExpired { slot, ticket, gate },
        )))
    }

    /// A running state still holds a mutex or lease past its TTL: the primitive has gone (or
    /// goes now) to the next waiter, and the attempt is cancelled.
    pub(super) fn hold_expired(
        &mut self,
        slot: u32,
        ticket: u64,
        gate: usize,
    ) -> Result<(), FlowError> {
        let Some(Some(running)) = self.running.get(slot as usize) else {
            return Ok(());
        };
        if running.ticket != ticket {
            return Ok(());
        }
        if let Some(abort) = &running.abort {
            abort.abort();
        }
        let state = running.state;
        let error = FlowError::HoldExpired {
            state: self.graph.name(state).to_string(),
            attempts: running.attempt,
            primitive: self.gate_name(gate),
            ttl: self.compiled.gates[gate].ttl().unwrap_or_default(),
        };
        self.finish_task(slot, ticket, Outcome::Refused(error))
    }
}

impl Coordinator {
    /// A ready entry leaves the queue to start: its deadline, if any, is off.
    pub(super) fn dequeued(&mut self, seq: u64) {
        if self.deadlines.is_empty() {
            return;
        }
        if let Some(timer) = self.deadlines.remove(&seq) {
            timer.abort();
        }
    }

    /// A ready state waited for the pool past its acquisition timeout: the attempt fails.
    pub(super) fn acquire_deadline(&mut self, seq: u64) -> Result<(), FlowError> {
        if self.deadlines.remove(&seq).is_none() {
            return Ok(()); // it started meanwhile
        }
        let gate = self.ready.gate_of(seq);
        let Some(entry) = self.ready.remove_seq(seq) else {
            return Ok(());
        };
        self.forget_wait(entry.state);
        let waited = self.compiled.states[entry.state.index()]
            .acquire_timeout
            .unwrap_or_default();
        self.now = Instant::now();
        self.states[entry.state.index()].attempts = entry.attempt;
        let failure = match gate {
            Some(gate) => Failure::AdmissionTimeout(waited, self.gate_name(gate)),
            None => Failure::ResourceTimeout(waited),
        };
        self.attempt_failed(entry.state, entry.scope, entry.attempt, failure)
    }

    /// If `state` needs resources and has an acquisition timeout, arms a deadline for the wait
    /// of its queue entry `seq`.
    pub(super) fn arm_acquire_deadline(&mut self, state: StateId, seq: u64) {
        let spec = &self.compiled.states[state.index()];
        if let (Some(limit), true) = (
            spec.acquire_timeout,
            spec.needs != [0; 5] || !spec.gates.is_empty(),
        ) {
            let timer = self.message_after(limit, Message::AcquireDeadline { seq });
            self.deadlines.insert(seq, timer);
        }
    }
}
