//! Admission gates: what a ready state must pass, besides a slot, before it starts: the
//! resource pool, its circuit breaker, semaphores, mutexes, leases, bulkheads, rate limits,
//! quotas and barriers. Each answers "admitted" (with what it took: a grant or units to hold
//! while the state runs, a breaker's permission, ...), "not before instant T", "wait for a
//! release", or "refused" (see `coordination::Gate`).
//!
//! A state a gate refuses leaves the ready heap and waits at that gate (`ReadyQueue::park`),
//! so it never delays unrelated ready states and holds no slot. Only the first entry waiting
//! at a gate asks it again, when its instant comes or a release wakes the gate; the others
//! wait behind it without asking (see `WaitRule`). One timer per run is armed for the
//! earliest such instant (`Message::GateDue`). An agent whose states use no gate runs none of
//! this: a state without gates passes in one check.

use std::sync::Arc;

use flow_core::FlowError;

use super::failures::Failure;
use super::ready::{ReadyEntry, Wake};
use super::task::Message;
use super::task::Outcome;
use super::{AbortOnDrop, BlockedState, Coordinator};
use crate::coordination::{
    Asker, AttemptIdentity, Gate, HeldUnits, Owner, Taken, Verdict, WaitRule,
};
use crate::resilience::BreakerPermit;
use crate::resources::Grant;
use flow_core::StateId;
use tokio::time::Instant;

/// What the gates of a ready state said.
pub(super) enum GateVerdict {
    /// Every gate admitted it: it may start, holding what they gave while it runs.
    Admitted(ReadyEntry, Admission),
    /// It waits at a gate, out of the ready heap.
    Waiting,
    /// A gate refused it outright: the attempt fails.
    Refused(ReadyEntry, FlowError),
}

/// What an admitted state holds while its attempt runs; each part is given back when dropped.
#[derive(Default)]
pub(super) struct Admission {
    /// Its grant of the resource pool.
    pub(super) grant: Option<Grant>,
    /// Units of coordination primitives.
    pub(super) held: Vec<HeldUnits>,
    /// Its circuit breaker's permission, settled by the attempt's outcome.
    pub(super) breaker: Option<BreakerPermit>,
    /// What shared primitives (kept outside the process) gave it.
    pub(super) shared: Vec<crate::coordination::SharedHold>,
    /// When it first had to wait at one of its gates, if it did (its timeline shows the wait
    /// for resources apart from the wait for its turn).
    pub(super) gated_since: Option<Instant>,
}

impl Coordinator {
    /// Asks the gates of `entry`'s state, in order. All or nothing: what earlier gates gave is
    /// given back when a later one refuses, so a waiting state never holds anything (and can
    /// never be part of a deadlock).
    pub(super) fn through_gates(&mut self, entry: ReadyEntry) -> GateVerdict {
        let compiled = Arc::clone(&self.compiled);
        let gates = &compiled.states[entry.state.index()].gates;
        if gates.is_empty() {
            return GateVerdict::Admitted(entry, Admission::default());
        }
        let seq = entry.seq();
        // Others of this run already wait at one of its gates: wait behind them, in order.
        if let Some(&(gate, _)) = gates
            .iter()
            .find(|&&(gate, _)| self.ready.queued_at(gate, &entry))
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
            // Only a barrier takes an arrival before it is asked.
            let barrier = compiled.wait_rules[gate] == WaitRule::Together;
            if barrier
                && !self.ready.has_ticket(seq, gate)
                && let Some(ticket) =
                    compiled.gates[gate].arrive(self.now, self.run_key, &self.sender, gate)
            {
                self.ready.add_ticket(seq, gate, ticket);
            }
            let ask = |this: &Coordinator| {
                let asker = Asker {
                    state: &name,
                    workflow: &compiled.name,
                    run_id: this.observer.run_id,
                    needs: &compiled.states[entry.state.index()].needs,
                    owner: owner.as_ref(),
                    run_key: this.run_key,
                    wake: &this.sender,
                    gate,
                    arrival: if barrier {
                        this.ready.arrival(seq, gate)
                    } else {
                        None
                    },
                    attempt: entry.attempt,
                    now: this.now,
                };
                compiled.gates[gate].ask(at, amount, &asker)
            };
            let verdict = match ask(self) {
                // The pool cannot grant it: a preempting pool may stop lower-priority states
                // of this run to make room (the pool is asked first: nothing else is taken).
                Verdict::OnRelease
                    if matches!(&compiled.gates[gate], Gate::Pool(pool) if pool.preemption())
                        && self.preempt_for(&entry) =>
                {
                    ask(self)
                }
                verdict => verdict,
            };
            let wake = match verdict {
                Verdict::Admitted(took) => {
                    taken.push(took);
                    continue;
                }
                Verdict::At(until) => Wake::At(until),
                Verdict::OnRelease => Wake::OnRelease,
                Verdict::Refused(error) => {
                    taken.into_iter().for_each(Taken::undo);
                    let _ = self.ready.left(seq);
                    return GateVerdict::Refused(entry, error);
                }
            };
            // Given back before waiting: nothing is held while waiting.
            taken.into_iter().for_each(Taken::undo);
            return self.wait_at(gate, entry, wake);
        }
        let mut admission = Admission {
            gated_since: self.ready.left(seq),
            ..Admission::default()
        };
        for took in taken {
            match took {
                Taken::Grant(grant) => admission.grant = Some(grant),
                Taken::Units(units) => admission.held.push(units),
                Taken::Breaker(permit) => admission.breaker = Some(permit),
                Taken::Shared(held) => admission.shared.push(held),
                Taken::Rate(..) | Taken::Passage => {}
            }
        }
        GateVerdict::Admitted(entry, admission)
    }

    /// Puts `entry` to wait at `gate`.
    fn wait_at(&mut self, gate: usize, entry: ReadyEntry, wake: Wake) -> GateVerdict {
        let ticket = if self.ready.has_ticket(entry.seq(), gate) {
            None
        } else {
            let state = self.graph.name(entry.state);
            match self.compiled.gates[gate].enter_wait(state, entry.attempt, self.run_key) {
                Ok(ticket) => ticket,
                Err(error) => {
                    let _ = self.ready.left(entry.seq());
                    return GateVerdict::Refused(entry, error);
                }
            }
        };
        self.ready.park(gate, entry, (wake, self.now), ticket);
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
                let spec = &self.compiled.states[entry.state.index()];
                if let Gate::Pool(pool) = &self.compiled.gates[gate] {
                    return BlockedState {
                        state: Arc::clone(self.graph.name(entry.state)),
                        waits_for: vec![format!(
                            "the resource pool: {}",
                            pool.wait_reason(&spec.needs)
                        )],
                        waited: self.now.saturating_duration_since(
                            self.ready.became_ready(entry, spec.priority),
                        ),
                    };
                }
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
    /// A state's attempt `identity` starts holding `held`: records it as their holder for
    /// deadlock reports and arms a timer for the earliest TTL among its holds.
    pub(super) fn holding(
        &self,
        state: StateId,
        slot: u32,
        ticket: u64,
        identity: &AttemptIdentity,
        held: &[HeldUnits],
    ) -> Option<AbortOnDrop> {
        let label = identity.label();
        for units in held {
            units.set_task(identity.actor, &label);
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

    /// A ready state waited for admission past its acquisition timeout: the attempt fails.
    pub(super) fn acquire_deadline(&mut self, seq: u64) -> Result<(), FlowError> {
        if self.deadlines.remove(&seq).is_none() {
            return Ok(()); // it started meanwhile
        }
        let gate = self.ready.gate_of(seq);
        // Leaving the queue gives up its place at the gate.
        let Some(entry) = self.ready.remove_seq(seq) else {
            return Ok(());
        };
        self.forget_pool_wait(entry.state);
        let waited = self.compiled.states[entry.state.index()]
            .acquire_timeout
            .unwrap_or_default();
        self.now = Instant::now();
        self.states[entry.state.index()].attempts = entry.attempt;
        // Waiting for the pool (or for a slot) keeps its own error, `ResourceTimeout`.
        let failure = match gate {
            Some(gate) if !matches!(self.compiled.gates[gate], Gate::Pool(_)) => {
                Failure::AdmissionTimeout(waited, self.gate_name(gate))
            }
            _ => Failure::ResourceTimeout(waited),
        };
        self.attempt_failed(
            entry.state,
            entry.branch,
            (entry.attempt, entry.visit),
            failure,
        )
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
