//! The resource pool seen from a run: the head-of-queue rule, preemption, and waits.

use super::*;

impl Coordinator {
    /// Tells a shared pool that `state` of this run no longer waits for it.
    pub(super) fn forget_wait(&self, state: StateId) {
        if let Some(pool) = &self.compiled.pool {
            pool.forget_wait(self.run_key, self.graph.name(state));
        }
    }

    /// Whether the next ready state needs nothing from the pool (so it may run inline).
    /// Whether the next ready state may be polled on the coordinator: it needs nothing from
    /// the pool, and no timeout depends on the coordinator staying free (a state that blocks
    /// its thread there would hold the run's and its own deadline back).
    pub(super) fn head_needs_nothing(&self) -> bool {
        self.compiled.timeout.is_none()
            && self.ready.peek().is_some_and(|head| {
                let spec = &self.compiled.states[head.state.index()];
                spec.needs == [0; 5] && spec.timeout.is_none() && spec.gates.is_empty()
            })
    }

    /// Asks the pool for what the next ready state needs. `Err` when it must wait: the pool
    /// will send `PoolFreed` when something is given back.
    pub(super) fn grant_for_head(&self) -> Result<Option<Grant>, ()> {
        let (Some(head), Some(pool)) = (self.ready.peek(), &self.compiled.pool) else {
            return Ok(None);
        };
        let needs = &self.compiled.states[head.state.index()].needs;
        if *needs == [0; 5] {
            return Ok(None);
        }
        let who = Claimant {
            run_key: self.run_key,
            agent: Arc::clone(&self.compiled.name),
            run_id: self.observer.run_id,
            state: Arc::clone(self.graph.name(head.state)),
        };
        pool.try_grant(&who, needs, &self.sender)
            .map(Some)
            .ok_or(())
    }

    /// When the pool preempts: stops preemptible running states of this run with a lower
    /// priority than the next ready state, lowest priority and latest started first, if that
    /// frees enough for it. They are queued again. Returns whether any was stopped.
    pub(super) fn preempt_for_head(&mut self) -> bool {
        let (Some(head), Some(pool)) = (self.ready.peek(), self.compiled.pool.clone()) else {
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
                    && r._grant.is_some()
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
            let (state, scope, attempt, queued_at) = (
                running.state,
                running.scope,
                running.attempt,
                running.queued_at,
            );
            tracing::debug!(state = %self.graph.name(state), "preempted");
            // Dropping the record gives its grant back now.
            drop(running);
            self.publish(EventKind::StateCancelled {
                state: Arc::clone(self.graph.name(state)),
            });
            self.ready.push_at(state, scope, attempt, queued_at);
            self.set_status(state, StateStatus::Ready);
        }
        true
    }
}

impl Coordinator {
    /// The ready states the pool cannot grant now, for `blocked()`: each with the kinds it is
    /// short of.
    pub(super) fn blocked_at_pool(&self) -> Vec<BlockedState> {
        let Some(pool) = &self.compiled.pool else {
            return Vec::new();
        };
        self.ready
            .ready_entries()
            .filter_map(|entry| {
                let spec = &self.compiled.states[entry.state.index()];
                if spec.needs == [0; 5] {
                    return None;
                }
                let short = pool.short_of(&spec.needs);
                let kinds: Vec<String> = crate::resources::KINDS
                    .iter()
                    .zip(short)
                    .filter(|(_, short)| *short)
                    .map(|(kind, _)| format!("{kind:?}").to_lowercase())
                    .collect();
                if kinds.is_empty() {
                    return None; // it fits: it waits for a slot, not for the pool
                }
                let since = self.ready.became_ready(entry, spec.priority);
                Some(BlockedState {
                    state: Arc::clone(self.graph.name(entry.state)),
                    waits_for: vec![format!("the resource pool: short of {}", kinds.join(", "))],
                    waited: self.now.saturating_duration_since(since),
                })
            })
            .collect()
    }
}
