//! Run control from outside (pause, resume, cancelling one state) and the end of a run
//! (cleanup of what still runs, final statuses, the report).

use std::sync::Arc;

use flow_core::{AgentStatus, FlowError, StateId, StateStatus};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::task::Message;
use super::{Coordinator, Stop};
use crate::checkpoint::AttemptOutcome;
use crate::events::EventKind;
use crate::probe::StateEvent;
use crate::run::RunReport;

impl Coordinator {
    pub(super) fn pause(&mut self, ack: oneshot::Sender<()>) {
        if !self.paused {
            self.paused = true;
            self.observer.set_status(AgentStatus::Paused);
            self.publish(EventKind::RunPaused);
        }
        self.pause_waiters.push(ack);
    }

    /// Tells those waiting for a pause that nothing runs any more.
    pub(super) fn acknowledge_pause(&mut self) {
        if self.paused {
            for waiter in self.pause_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    pub(super) fn resume(&mut self) {
        // Whoever waits for a pause resumed before it settled is told it is over.
        for waiter in self.pause_waiters.drain(..) {
            let _ = waiter.send(());
        }
        if self.paused {
            self.paused = false;
            self.observer.set_status(AgentStatus::Running);
            self.publish(EventKind::RunResumed);
        }
    }

    /// Cancels the running and ready runs of `state`, and those waiting for a retry; each
    /// branch ends. Returns how many. (Branches held at a join are not cancelled: they are
    /// waiting for others, not running the state.)
    pub(super) fn cancel_state(&mut self, state: StateId) -> usize {
        // Its input requests are withdrawn now, not when its task happens to be dropped.
        let name = Arc::clone(self.graph.name(state));
        for event in self.observer.inputs.withdraw(Some(&name)) {
            self.publish(event);
        }
        let mut ended = Vec::new();
        for slot in 0..self.running.len() {
            let of_state = self.running[slot]
                .as_ref()
                .is_some_and(|r| r.state == state);
            if of_state && let Some(running) = self.running[slot].take() {
                if let Some(abort) = running.abort {
                    abort.abort();
                }
                self.free_slots.push(slot as u32);
                self.running_count -= 1;
                ended.push(running.branch);
            }
        }
        ended.extend(self.cancel_timers(state));
        let removed = self.ready.remove_state(state);
        for entry in &removed {
            self.dequeued(entry.seq());
        }
        if !removed.is_empty() {
            self.forget_pool_wait(state);
        }
        ended.extend(removed.into_iter().map(|entry| entry.branch));
        let queued_or_running = ended.len();
        let waiting = self.cancel_waiting(state);
        let cancelled = ended.len() + waiting.len();
        ended.extend(waiting.into_iter().flatten());
        let graph = Arc::clone(&self.graph);
        for branch in &ended {
            self.joins.end(&graph, *branch, state);
        }
        for _ in 0..queued_or_running {
            self.dependency_ended(state, None);
        }
        if cancelled > queued_or_running && queued_or_running == 0 {
            // Only waits were cancelled: what waited on this state may go on.
            self.recheck_dependents(state, false);
        }
        if cancelled > 0 {
            self.set_status(state, StateStatus::Cancelled);
            for _ in 0..cancelled {
                self.publish_state(state, StateEvent::Cancelled);
            }
            self.absorb_joins();
        }
        cancelled
    }

    /// Aborts every running state task; returns their states.
    pub(super) fn abort_running(&mut self) -> Vec<StateId> {
        self.running_count = 0;
        self.running
            .iter_mut()
            .filter_map(Option::take)
            .map(|running| {
                if let Some(abort) = running.abort {
                    abort.abort();
                }
                super::telemetry::attempt_cancelled(&running.span);
                running.state
            })
            .collect()
    }

    /// Gives running states the cleanup timeout to finish after the run's cancellation fired;
    /// their outcomes are recorded, but their branches go nowhere.
    async fn wind_down(&mut self) {
        let limit = self.compiled.cleanup_timeout;
        if limit.is_zero() || self.running_count == 0 {
            return;
        }
        // A cleanup time too long for the clock means waiting for every state.
        let deadline = Instant::now().checked_add(limit);
        while self.running_count > 0 {
            let next = self.inbox.recv();
            let message = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, next).await {
                    Ok(Some(message)) => message,
                    Ok(None) | Err(_) => return,
                },
                None => match next.await {
                    Some(message) => message,
                    None => return,
                },
            };
            match message {
                Message::Done {
                    slot,
                    ticket,
                    outcome,
                } => {
                    let entry = &mut self.running[slot as usize];
                    if entry
                        .as_ref()
                        .is_none_or(|running| running.ticket != ticket)
                    {
                        continue;
                    }
                    let Some(running) = entry.take() else {
                        continue;
                    };
                    super::record_breaker(running.breaker, &outcome);
                    super::telemetry::attempt_ended(&running.span, &outcome);
                    self.free_slots.push(slot);
                    self.running_count -= 1;
                    let now = Instant::now();
                    self.now = now;
                    let record = &mut self.states[running.state.index()];
                    let duration = now - running.started;
                    record.total_time = record.total_time.saturating_add(duration);
                    record.last_finished = Some(now);
                    let completed = matches!(outcome, super::task::Outcome::Finished(Ok(_)));
                    self.log_attempt(
                        running.state,
                        (running.attempt, running.visit),
                        (running.queued_at, running.started),
                        || {
                            if completed {
                                (AttemptOutcome::Completed, None)
                            } else {
                                (
                                    AttemptOutcome::Cancelled,
                                    Some("stopped with its run".to_owned()),
                                )
                            }
                        },
                    );
                    if matches!(outcome, super::task::Outcome::Finished(Ok(_))) {
                        self.completed = self.completed.saturating_add(1);
                        self.set_status(running.state, StateStatus::Completed);
                        self.publish_state(running.state, StateEvent::Completed { duration });
                    } else {
                        self.set_status(running.state, StateStatus::Cancelled);
                        self.publish_state(running.state, StateEvent::Cancelled);
                    }
                }
                Message::Pause(ack) => {
                    let _ = ack.send(());
                }
                Message::CancelState { reply, .. } => {
                    let _ = reply.send(0);
                }
                Message::Blocked(reply) => {
                    let _ = reply.send(Vec::new());
                }
                Message::Input(kind) => self.publish(kind),
                Message::Checkpoint(_)
                | Message::CheckpointTick
                | Message::CheckpointSaved(_)
                | Message::SubgraphProgress => {}
                Message::Retry { .. }
                | Message::StateDeadline { .. }
                | Message::Blocking { .. }
                | Message::DependencyDeadline { .. }
                | Message::Resume
                | Message::GateDue
                | Message::GateReleased { .. }
                | Message::HoldExpired { .. }
                | Message::AcquireDeadline { .. }
                | Message::Cancel
                | Message::Deadline => {}
            }
        }
    }

    /// Stops what still runs, settles every status, and writes the report.
    pub(super) async fn conclude(mut self, stop: Option<Stop>, started_at: Instant) -> RunReport {
        // (Events are stamped with `now`.)
        self.now = Instant::now();
        // Asked to cancel as it suspended: cancelled (its record is kept in its last
        // checkpoint whatever it ended with, but completed).
        let stop = match stop {
            Some(Stop::AwaitingInput)
                if self
                    .listed
                    .as_ref()
                    .is_some_and(|listed| listed.request().is_some()) =>
            {
                Some(Stop::Cancelled)
            }
            stop => stop,
        };
        // Requests still waiting are withdrawn: their states are being stopped. (A restore
        // asks them again, with the same ids.) A suspended run keeps them pending: it is
        // continued when they are answered.
        // No longer answerable in this process: an answer now goes to the store.
        self.input_watch = None;
        if let Some(listed) = &self.listed {
            listed.answer_through(None);
        }
        if matches!(stop, Some(Stop::AwaitingInput)) {
            self.observer.inputs.suspend();
        } else {
            for event in self.observer.inputs.withdraw(None) {
                self.publish(event);
            }
        }
        let stop = self.finish_checkpoints(stop).await;
        self.forget_gates();
        let agent = || self.compiled.name.to_string();
        let (status, error) = match stop {
            None if self.ended_branches > 0 => (AgentStatus::CompletedWithFailures, None),
            None => (AgentStatus::Completed, None),
            Some(Stop::Failed(error)) => (AgentStatus::Failed, Some(error)),
            Some(Stop::Cancelled) => {
                let error = match self.listed.as_ref().and_then(|listed| listed.request()) {
                    Some(request) => FlowError::CancelledOnRequest {
                        agent: agent(),
                        run: self.durable_key.to_string(),
                        by: request.by.clone(),
                        reason: request.reason.clone(),
                    },
                    None => FlowError::Cancelled { agent: agent() },
                };
                (AgentStatus::Cancelled, Some(error))
            }
            Some(Stop::AwaitingInput) => (AgentStatus::AwaitingInput, None),
            Some(Stop::TimedOut(timeout)) => {
                let mut running: Vec<String> = self
                    .running
                    .iter()
                    .flatten()
                    .map(|r| self.graph.name(r.state).to_string())
                    .collect();
                running.sort_unstable();
                running.dedup();
                (
                    AgentStatus::Failed,
                    Some(FlowError::RunTimedOut {
                        agent: agent(),
                        timeout,
                        running,
                    }),
                )
            }
        };
        // States see the run stop through their context, and get the cleanup timeout.
        self.cancel.cancel();
        let waiting_for_retry = self.abort_timers();
        for (_, deadline) in self.deadlines.drain() {
            deadline.abort();
        }
        if let Some(pool) = &self.compiled.pool {
            pool.forget_run(self.run_key);
        }
        self.wind_down().await;
        self.now = Instant::now();
        // Work that will not happen is reported as cancelled, never silently dropped.
        let mut cancelled = self.abort_running();
        cancelled.extend(self.ready.drain().map(|entry| entry.state));
        cancelled.extend(self.joins.held_states());
        cancelled.extend(waiting_for_retry);
        cancelled.extend(self.abort_dependency_waits());
        cancelled.sort_unstable();
        cancelled.dedup();
        for state in cancelled {
            self.set_status(state, StateStatus::Cancelled);
            self.publish_state(state, StateEvent::Cancelled);
        }
        // The runs of stopped subgraph states were cancelled with them: their ends (their
        // events, their states in the report) come before this run's.
        if let Some(subgraphs) = &self.subgraphs {
            subgraphs.children_ended().await;
        }
        for waiter in self.pause_waiters.drain(..) {
            let _ = waiter.send(());
        }
        // No branch disappears: each was created, then ended, was absorbed by a join, or is
        // still live (a run that stopped early); a completed run has none live.
        #[cfg(debug_assertions)]
        {
            let ledger = self.joins.ledger();
            let live = self.joins.live_branches();
            assert_eq!(
                ledger.created,
                ledger.ended + ledger.absorbed + live,
                "scheduler bug: branches lost ({ledger:?}, {live} live)"
            );
            assert!(
                status != AgentStatus::Completed || live == 0,
                "scheduler bug: a completed run left {live} branches"
            );
        }
        self.now = Instant::now();
        let duration = self.now.saturating_duration_since(started_at);
        self.observer.set_counts(self.completed, 0, 0);
        self.observer.set_status(status);
        super::telemetry::run_ended(&tracing::Span::current(), status, error.as_ref());
        self.publish(EventKind::RunFinished { status, duration });
        self.events.flush();
        self.observer.stream.close();
        match &error {
            None => tracing::debug!(?duration, "run completed"),
            Some(error) => tracing::debug!(%error, "run stopped"),
        }
        let mut states = std::mem::take(&mut self.states);
        if let Some(subgraphs) = &self.subgraphs {
            states.extend(subgraphs.reports());
        }
        RunReport {
            agent: Arc::clone(&self.compiled.name),
            run_id: self.observer.run_id,
            run_key: Arc::clone(&self.durable_key),
            status,
            error,
            context: self.context.clone(),
            states,
            transitions: self.transitions,
            max_concurrency: self.max_concurrency,
            dead_letters: std::mem::take(&mut self.dead_letters),
            warnings: std::mem::take(&mut self.warnings),
            restored_from: self.restored_from,
            inputs: self.observer.inputs.records(),
            started_at,
            duration,
        }
    }
}
