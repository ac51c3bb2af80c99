//! Human input seen from a run: its events, checkpoints when requests and answers come, the
//! store's answers for checkpointed runs, and suspension while only input is awaited.

use super::*;

/// What a checkpointed run keeps for answers given through its store.
pub(super) struct InputWatch {
    /// Reads the store's answers while input is awaited; started on the first request.
    poller: Option<AbortOnDrop>,
}

impl Coordinator {
    /// Something happened to an input request: published, and a request and an answer are
    /// saved with a checkpoint at once (another process can answer a request only once the
    /// checkpoint shows it, and a state run again after a crash gets a recorded answer
    /// without asking).
    pub(super) fn input_event(&mut self, kind: EventKind) {
        let answered = matches!(kind, EventKind::InputAnswered { .. });
        let requested = matches!(kind, EventKind::InputRequested { .. });
        self.publish(kind);
        if answered || requested {
            self.checkpoint_due();
        }
        if requested {
            self.watch_store_for_answers();
        }
    }

    /// Whether everything the run does is wait for answers: states run, each waits for one,
    /// and nothing is queued or due later (a retry, a dependency's timeout).
    pub(super) fn only_awaiting_input(&self) -> bool {
        if self.running_count == 0
            || !self.ready.is_empty()
            || self.timer_count > 0
            || self.deps.armed > 0
            || self.checkpoints.is_none()
        {
            return false;
        }
        // Each running state itself waits (not a finished attempt's request, not another
        // run of the same state).
        let waiting = self.observer.inputs.waiting_runs();
        self.running.iter().flatten().all(|running| {
            let name = self.graph.name(running.state);
            waiting
                .iter()
                .any(|(state, visit)| **state == **name && *visit == running.visit)
        })
    }

    /// A checkpointed run asked for input: from now on, answers left in its store (by this
    /// process or another) reach it: listed for `CheckpointStore::answer` in this process, and
    /// read every poll interval while a request waits. Started once per run.
    fn watch_store_for_answers(&mut self) {
        let Some((store, _)) = &self.checkpoints else {
            return;
        };
        let Some(watch) = &mut self.input_watch else {
            return;
        };
        if watch.poller.is_some() {
            return;
        }
        let (store, hub) = (Arc::clone(store), Arc::clone(&self.observer.inputs));
        let (workflow, run) = (self.compiled.name.to_string(), self.durable_key.to_string());
        let every = self.compiled.input_poll_interval;
        let posted = store.answers_posted();
        let poller = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Armed before each read, so that an answer posted while reading wakes the next
            // wait (a store that notifies; the others are read at each tick only).
            let arm = || {
                posted.as_deref().map(|signal| {
                    let mut notified = Box::pin(signal.notified());
                    notified.as_mut().enable();
                    notified
                })
            };
            let mut armed = arm();
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = async {
                        match armed.as_mut() {
                            Some(notified) => notified.as_mut().await,
                            None => std::future::pending().await,
                        }
                    } => {}
                }
                armed = arm();
                if !hub.has_waiting() {
                    continue;
                }
                let (store, workflow, run) = (Arc::clone(&store), workflow.clone(), run.clone());
                let read =
                    tokio::task::spawn_blocking(move || store.posted_answers(&workflow, &run))
                        .await;
                // A failed read is tried again at the next tick.
                if let Ok(Ok(answers)) = read {
                    hub.deliver_posted(answers);
                }
            }
        });
        watch.poller = Some(AbortOnDrop(poller.abort_handle()));
    }

    /// A checkpointed run is listed for answers given through its store in this process
    /// (`CheckpointStore::answer`), and for cancel requests (`CheckpointStore::cancel_run`),
    /// from its start to its end.
    pub(super) fn list_for_answers(&mut self) {
        if let Some((store, _)) = &self.checkpoints {
            // (A run of `run_durable` was listed before it started, with its token.)
            if self.listed.is_none() {
                self.listed = Some(crate::checkpoint::ListedRun::register(
                    store.as_ref(),
                    &self.compiled.name,
                    &self.durable_key,
                    Some(self.cancel.clone()),
                ));
            }
            if let Some(listed) = &self.listed {
                listed.answer_through(Some(&self.observer.inputs));
            }
            self.input_watch = Some(InputWatch { poller: None });
        }
    }
}
