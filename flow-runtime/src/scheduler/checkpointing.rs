//! Automatic checkpoints of a run: when they are due, and the last ones at its end.

use super::*;

impl Coordinator {
    /// Starts the writer of automatic checkpoints, and the timer of interval ones.
    pub(super) fn start_checkpoints(&mut self) {
        let Some((store, policy)) = &self.checkpoints else {
            return;
        };
        if !policy.is_active() {
            return;
        }
        if let Some(subgraphs) = &self.subgraphs {
            subgraphs.set_checkpointed();
        }
        // (A restored run's history was seeded from its checkpoint.)
        self.history
            .get_or_insert_with(|| Box::new(crate::checkpoint::AttemptLog::new(Vec::new())));
        // Its timeline tells the wait at gates apart: the queue notes when entries park.
        self.ready.note_gate_waits();
        self.writer = Some(Writer::start(
            Arc::clone(store),
            *policy,
            Arc::clone(&self.saved_sequence),
            self.sender.clone(),
        ));
        if let Some(interval) = policy.interval.filter(|i| !i.is_zero()) {
            let sender = self.sender.clone();
            let ticker = tokio::spawn(async move {
                let mut ticks = tokio::time::interval(interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticks.tick().await; // the first tick is immediate
                loop {
                    ticks.tick().await;
                    if sender.send(Message::CheckpointTick).is_err() {
                        break;
                    }
                }
            });
            self.ticker = Some(ticker.abort_handle());
        }
    }

    /// The policy asks for a checkpoint: taken now, or right after the save in progress.
    pub(super) fn checkpoint_due(&mut self) {
        // A run about to stop on a failure saves its last checkpoint when it ends.
        if self.deferred_failure.is_some() {
            return;
        }
        let Some(writer) = &mut self.writer else {
            return;
        };
        if writer.busy {
            writer.dirty = true;
            return;
        }
        writer.dirty = false;
        let status = self.observer.status();
        self.observer.inputs.saving();
        let pending = self.capture(status);
        if let Some(writer) = &mut self.writer {
            writer.submit(pending);
        }
    }

    /// At the end of the run, before anything is cancelled: the save in progress finishes,
    /// and a last checkpoint is saved (so completions merged while a save was in progress are
    /// not lost):
    /// - completed: status `Completed` (a durable run asked again returns its result);
    /// - cancelled or timed out: what was running is listed as due, to run again;
    /// - failed because a state failed with no handler: that state is due again, so running
    ///   the durable run again retries it;
    /// - failed otherwise (an invalid transition, a dependency failure, a store error): no
    ///   last checkpoint; the latest one saved stays.
    ///
    /// A failed last save fails the run: its end is not durable.
    pub(super) async fn finish_checkpoints(&mut self, stop: Option<Stop>) -> Option<Stop> {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        let Some(writer) = self.writer.take() else {
            return stop;
        };
        writer.close().await;
        let Some((store, policy)) = self.checkpoints.clone() else {
            return stop;
        };
        let status = match &stop {
            None if self.ended_branches > 0 => flow_core::AgentStatus::CompletedWithFailures,
            None => flow_core::AgentStatus::Completed,
            Some(Stop::Cancelled) => flow_core::AgentStatus::Cancelled,
            Some(Stop::AwaitingInput) => flow_core::AgentStatus::AwaitingInput,
            Some(Stop::TimedOut(_)) => flow_core::AgentStatus::Failed,
            Some(Stop::Failed(_)) => match self.failed_state.take() {
                Some((state, branch, visit)) => {
                    self.now = Instant::now();
                    let at = self.ready.clock(self.now);
                    // The same run of it, from its first attempt again.
                    self.requeue(state, branch, (1, visit), at);
                    flow_core::AgentStatus::Failed
                }
                None => return stop,
            },
        };
        let captured = self.listed.as_ref().and_then(|l| l.request()).is_some();
        let pending = self.capture(status);
        let saved = Arc::clone(&store);
        if let Err(error) =
            writer::save(saved, pending, policy, Arc::clone(&self.saved_sequence)).await
        {
            return Some(Stop::Failed(error));
        }
        self.cancel_if_asked_as_it_saved(store, status, captured, stop)
            .await
    }

    /// A cancel request that came while the last checkpoint was being saved (after it was
    /// taken) is made to that checkpoint, as to a run that no longer runs: what stopped
    /// anyway (suspended, failed, cancelled) is marked cancelled with its record; a completed
    /// run stays completed. Later requests pass the run by (see `ListedRun::conclude`).
    async fn cancel_if_asked_as_it_saved(
        &mut self,
        store: Arc<dyn crate::checkpoint::CheckpointStore>,
        status: flow_core::AgentStatus,
        captured: bool,
        stop: Option<Stop>,
    ) -> Option<Stop> {
        let Some(listed) = &self.listed else {
            return stop;
        };
        let late = match listed.conclude() {
            Some(request) if !captured && !status.is_completed() => request.clone(),
            _ => return stop,
        };
        let (agent, key) = (self.compiled.name.to_string(), self.durable_key.to_string());
        let marked = tokio::task::spawn_blocking(move || {
            crate::checkpoint::cancel_checkpoint(store.as_ref(), &agent, &key, late, false)
        })
        .await;
        match marked {
            Ok(Ok(_)) if matches!(stop, Some(Stop::AwaitingInput)) => Some(Stop::Cancelled),
            Ok(Ok(_)) => stop,
            Ok(Err(error)) => Some(Stop::Failed(error)),
            Err(error) => Some(Stop::Failed(flow_core::FlowError::CheckpointStore {
                store: "checkpoint writer".into(),
                action: "marking the run cancelled".into(),
                message: format!("the task stopped: {error}"),
            })),
        }
    }
}
