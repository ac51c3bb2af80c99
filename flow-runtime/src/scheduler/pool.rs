//! The resource pool seen from a run: preemption (the pool itself is an admission gate, see
//! `admission`).

use super::ready::ReadyEntry;
use super::*;

impl Coordinator {
    /// Tells a shared pool that `state` of this run no longer waits for it (it was cancelled
    /// or gave up; one that is granted is forgotten by the grant).
    pub(super) fn forget_pool_wait(&self, state: StateId) {
        if let Some(pool) = &self.compiled.pool {
            pool.forget_wait(self.run_key, self.graph.name(state));
        }
    }

    /// Whether the next ready state may be polled on the coordinator: it passes no gate
    /// (the pool included), and no timeout depends on the coordinator staying free (a state
    /// that blocks its thread there would hold the run's and its own deadline back).
    pub(super) fn head_needs_nothing(&self) -> bool {
        self.compiled.timeout.is_none()
            && self.ready.peek().is_some_and(|head| {
                let spec = &self.compiled.states[head.state.index()];
                spec.timeout.is_none() && spec.gates.is_empty()
            })
    }

    /// When the pool preempts: stops preemptible running states of this run with a lower
    /// priority than `head` (a ready state the pool cannot grant), lowest priority and latest
    /// started first, if that frees enough for it. They are queued again. Returns whether any
    /// was stopped.
    pub(super) fn preempt_for(&mut self, head: &ReadyEntry) -> bool {
        let Some(pool) = self.compiled.pool.clone() else {
            return false;
        };
        if !pool.preemption() {
            return false;
        }
        let head_priority = self.compiled.states[head.state.index()].priority;
        let needs = self.compiled.states[head.state.index()].needs;
        let short = pool.short_of(&needs);
        let mut candidates: Vec<(usize, flow_core::Priority, Instant)> = self
            .running
            .iter()
            .enumerate()
            .filter_map(|(slot, r)| r.as_ref().map(|r| (slot, r)))
            .filter(|(_, r)| {
                let spec = &self.compiled.states[r.state.index()];
                // A task that already finished has its report on the way: keep its result.
                let finished = r.abort.as_ref().is_some_and(AbortHandle::is_finished);
                let helps = (0..5).any(|k| short[k] && spec.needs[k] > 0);
                spec.preemptible
                    && spec.priority < head_priority
                    && r.grant.is_some()
                    && !finished
                    && helps
            })
            .map(|(slot, r)| {
                (
                    slot,
                    self.compiled.states[r.state.index()].priority,
                    r.started,
                )
            })
            .collect();
        candidates.sort_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)));
        let mut freed = [0u64; 5];
        let mut victims = Vec::new();
        for (slot, _, _) in candidates {
            if pool.would_fit(&needs, &freed) {
                break;
            }
            let Some(running) = &self.running[slot] else {
                continue;
            };
            for (total, amount) in freed
                .iter_mut()
                .zip(self.compiled.states[running.state.index()].needs)
            {
                *total += amount;
            }
            victims.push(slot);
        }
        if victims.is_empty() || !pool.would_fit(&needs, &freed) {
            return false;
        }
        for slot in victims {
            let Some(running) = self.running[slot].take() else {
                continue;
            };
            if let Some(abort) = &running.abort {
                abort.abort();
            }
            self.free_slots.push(slot as u32);
            self.running_count -= 1;
            let (state, branch, attempt, visit, queued_at) = (
                running.state,
                running.branch,
                running.attempt,
                running.visit,
                running.queued_at,
            );
            tracing::debug!(state = %self.graph.name(state), "preempted");
            self.now = Instant::now();
            self.log_attempt(
                state,
                (attempt, visit),
                (queued_at, running.started),
                || {
                    (
                        AttemptOutcome::Cancelled,
                        Some("preempted: a state of higher priority took its resources; it runs again from its start".to_owned()),
                    )
                },
            );
            // Dropping the record gives its grant back now.
            drop(running);
            self.publish_state(state, StateEvent::Cancelled);
            // The same run of it, from its start again.
            self.ready.push_at(state, branch, attempt, visit, queued_at);
            self.set_status(state, StateStatus::Ready);
        }
        true
    }
}
