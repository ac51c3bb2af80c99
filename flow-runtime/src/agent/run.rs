//! Starting, restoring and controlling runs of an agent.

use super::*;

/// A durable run: its key, store and checkpoint policy.
struct Durable<'a> {
    key: &'a str,
    store: Arc<dyn CheckpointStore>,
    policy: CheckpointPolicy,
    /// The highest checkpoint number the store holds for it when that is known (`None`: the
    /// first save asks the store).
    highest: Option<u64>,
    /// Its listing for cancel requests, made before its checkpoint was read (`None`: the
    /// coordinator lists it).
    listed: Option<crate::checkpoint::ListedRun>,
}
impl Agent {
    /// Starts a run with an empty context and returns its handle at once.
    ///
    /// Must be called within a tokio runtime. The run goes on if the handle is dropped.
    pub fn start(&self) -> Result<RunHandle, FlowError> {
        self.start_with(Context::new())
    }

    /// Starts a run whose states share `context` (which may hold initial values).
    pub fn start_with(&self, context: Context) -> Result<RunHandle, FlowError> {
        self.launch(context, None, None)
    }

    /// Starts a run like [`Agent::start_with`], with a stream of its events from the first
    /// ([`EventKind::RunStarted`](crate::EventKind::RunStarted)) to the last
    /// ([`EventKind::RunFinished`](crate::EventKind::RunFinished)), where the stream ends: a
    /// progress display is a `while let Some(event) = events.next().await` loop.
    ///
    /// Events are built only while someone subscribes, so runs started with
    /// [`Agent::start_with`] meanwhile cost a little more; the stream keeps this run's own.
    pub fn start_watched(&self, context: Context) -> Result<(RunHandle, RunEvents), FlowError> {
        // (See `start_streaming` for a stream of values, writes and emitted parts too.)
        // Subscribed before the launch, so that not even the first event is missed.
        let events = self.events.subscribe();
        let handle = self.launch(context, None, None)?;
        let finished = handle.control.observer.finished.clone();
        let events = RunEvents::new(events, handle.run_id(), finished);
        Ok((handle, events))
    }

    /// Starts a run like [`Agent::start_with`], with a stream of it in `modes` from its very
    /// start (see [`RunStream`](crate::RunStream)): the context after each state, each write,
    /// what states `emit`, its events. [`RunHandle::stream`] opens more streams later.
    ///
    /// ```
    /// use flow_runtime::{Agent, Context, StreamMode, StreamPart};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), flow_core::FlowError> {
    /// let mut agent = Agent::new("chat");
    /// agent.add_state("answer", |ctx: Context| async move {
    ///     for token in ["Hel", "lo"] {
    ///         ctx.emit(token).await?;
    ///     }
    ///     Ok(flow_core::Next::End)
    /// });
    /// let (handle, mut stream) = agent.start_streaming(Context::new(), StreamMode::CUSTOM)?;
    /// let mut answer = String::new();
    /// while let Some(part) = stream.next().await {
    ///     if let StreamPart::Custom { value, .. } = part {
    ///         answer.push_str(value.as_str().unwrap_or_default());
    ///     }
    /// }
    /// assert_eq!(answer, "Hello");
    /// handle.wait().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn start_streaming(
        &self,
        context: Context,
        modes: crate::StreamMode,
    ) -> Result<(RunHandle, crate::RunStream), FlowError> {
        let hub = Arc::new(crate::stream::StreamHub::default());
        // Opened before the run starts, so that not even its first part is missed.
        let stream = hub.subscribe(modes);
        let handle = self.launch_with(context, None, None, Vec::new(), hub, None)?;
        Ok((handle, stream))
    }

    /// Continues the run a checkpoint was taken of, in this agent (built from the same
    /// definition: same states in the same order, same transitions and dependencies — anything
    /// else is [`FlowError::CheckpointMismatch`]). States that had completed do not run again;
    /// states that were running when it was taken run again from their start (at-least-once:
    /// make such states idempotent); retries keep their remaining delay and attempt count; the
    /// context comes back with every value, decoded into its type on first read.
    ///
    /// ```
    /// use flow_core::{FlowError, Next};
    /// use flow_runtime::{Agent, Context};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), FlowError> {
    /// fn build() -> Agent {
    ///     let mut agent = Agent::new("two_steps");
    ///     agent.add_state("first", |ctx: Context| async move {
    ///         ctx.set_state("first", 1u32);
    ///         Ok(Next::to("second"))
    ///     });
    ///     agent.add_state("second", |ctx: Context| async move {
    ///         let first: u32 = ctx.get_state("first")?;
    ///         ctx.set_state("second", first + 1);
    ///         Ok(Next::End)
    ///     });
    ///     agent
    /// }
    /// let handle = build().start()?;
    /// let checkpoint = handle.pause().await?; // nothing runs once it returns
    /// handle.cancel();
    /// let json = checkpoint.to_json()?;
    ///
    /// let checkpoint = flow_runtime::Checkpoint::from_json(&json, "bytes", "two_steps", "1")?;
    /// let report = build().restore_from_checkpoint(checkpoint)?.result().await?;
    /// assert_eq!(report.context.get_state::<u32>("second")?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn restore_from_checkpoint(
        &self,
        mut checkpoint: Checkpoint,
    ) -> Result<RunHandle, FlowError> {
        let compiled = self.compiled()?;
        let checked = check_fits(&checkpoint, &compiled)?;
        let context = Context::from_checkpoint(std::mem::take(&mut checkpoint.context))?;
        self.launch(context, Some((&checkpoint, checked)), None)
    }

    /// Runs the workflow as the durable run `key`, checkpointed in `store`: if the store has a
    /// checkpoint of `key` for this workflow, the run continues from the latest (or, if that
    /// one says the run completed, its report is returned without running anything);
    /// otherwise it starts afresh. Checkpoints follow the agent's [`CheckpointPolicy`] if one
    /// was set with [`Agent::checkpoints`], else one after every completed state. Run the same
    /// program again after a crash and it continues where the last checkpoint left it.
    ///
    /// When the run ends it saves a last checkpoint: a failed state (with no handler) is due
    /// again in it, and what was running when the run was cancelled or timed out is due again:
    /// running the same key again continues from there. A run cancelled on request
    /// ([`CheckpointStore::cancel_run`], `fluffy runs cancel`) is not continued:
    /// [`FlowError::CancelledOnRequest`] says who cancelled it and why;
    /// [`Agent::resume_durable`] continues it.
    pub async fn run_durable(
        &self,
        store: impl CheckpointStore,
        key: &str,
    ) -> Result<RunReport, FlowError> {
        self.run_durable_arc(Arc::new(store), key).await
    }

    /// [`Agent::run_durable`] that also continues a run cancelled on request: before it runs
    /// anything it saves a checkpoint after the latest that says it runs, with no cancel
    /// record (so that another process neither finds it cancelled nor resumes it too). What
    /// `fluffy runs resume` and the dashboard's resume button do.
    pub async fn resume_durable(
        &self,
        store: impl CheckpointStore,
        key: &str,
    ) -> Result<RunReport, FlowError> {
        self.run_durable_arc_with(
            Arc::new(store),
            key,
            Context::new(),
            Continue::EvenCancelled,
        )
        .await
    }

    /// [`Agent::run_durable`] whose context, if the run starts afresh, is `context` (a run
    /// that continues a checkpoint continues with the checkpoint's context).
    pub async fn run_durable_with(
        &self,
        store: impl CheckpointStore,
        key: &str,
        context: Context,
    ) -> Result<RunReport, FlowError> {
        self.run_durable_arc_with(Arc::new(store), key, context, Continue::UnlessCancelled)
            .await
    }

    /// [`Agent::run_durable`] in the store this agent checkpoints to (see
    /// [`Agent::checkpoints`]), so that the store is opened and given once. Without one, a
    /// [`FlowError::InvalidConfig`] says to set it.
    pub async fn run_durable_in_agent_store(&self, key: &str) -> Result<RunReport, FlowError> {
        let Some((store, _)) = &self.definition.checkpoints else {
            return Err(FlowError::InvalidConfig {
                agent: self.name().to_owned(),
                message: "this agent has no checkpoint store: set one with `checkpoints(store, policy)`, or pass one to `run_durable(store, key)`".into(),
            });
        };
        self.run_durable_arc(Arc::clone(store), key).await
    }

    async fn run_durable_arc(
        &self,
        store: Arc<dyn CheckpointStore>,
        key: &str,
    ) -> Result<RunReport, FlowError> {
        self.run_durable_arc_with(store, key, Context::new(), Continue::UnlessCancelled)
            .await
    }

    async fn run_durable_arc_with(
        &self,
        store: Arc<dyn CheckpointStore>,
        key: &str,
        context: Context,
        resume: Continue,
    ) -> Result<RunReport, FlowError> {
        let compiled = self.compiled()?;
        // Listed before its checkpoint is read: a cancel request made while it starts reaches
        // it (see `CheckpointStore::cancel_run`).
        let listed =
            crate::checkpoint::ListedRun::register(store.as_ref(), &compiled.name, key, None);
        let latest = {
            let (store, agent, key) = (
                Arc::clone(&store),
                compiled.name.to_string(),
                key.to_owned(),
            );
            // With the answers other processes left for it: given to the run before it starts,
            // so that a state asking again finds its answer at once.
            tokio::task::spawn_blocking(move || {
                let latest = store.latest(&agent, &key)?;
                let posted = match &latest {
                    Some(checkpoint) if !checkpoint.status.is_completed() => {
                        store.posted_answers(&agent, &key)?
                    }
                    _ => Vec::new(),
                };
                Ok::<_, FlowError>((latest, posted))
            })
            .await
            .map_err(|error| FlowError::CheckpointStore {
                store: "checkpoint reader".into(),
                action: "reading the latest checkpoint".into(),
                message: error.to_string(),
            })??
        };
        let policy = match &self.definition.checkpoints {
            Some((_, policy)) if policy.is_active() => *policy,
            _ => CheckpointPolicy::after_each_state(),
        };
        let (latest, posted) = latest;
        let handle = match latest {
            Some(checkpoint) if checkpoint.status.is_completed() => {
                let _checked = check_fits(&checkpoint, &compiled)?;
                return RunReport::from_checkpoint(checkpoint);
            }
            Some(checkpoint)
                if checkpoint.cancelled.is_some() && resume == Continue::UnlessCancelled =>
            {
                let _checked = check_fits(&checkpoint, &compiled)?;
                return RunReport::from_checkpoint(checkpoint)?.into_result();
            }
            Some(mut checkpoint) => {
                let checked = check_fits(&checkpoint, &compiled)?;
                if resume == Continue::EvenCancelled {
                    // Resumed: said at once (another process must not find it cancelled or
                    // stopped, nor resume it too, while its first state runs).
                    checkpoint = resumed(Arc::clone(&store), checkpoint).await?;
                }
                let context = Context::from_checkpoint(std::mem::take(&mut checkpoint.context))?;
                self.launch_with(
                    context,
                    Some((&checkpoint, checked)),
                    // (The store's latest: the run numbers its checkpoints above it without
                    // asking the store again.)
                    Some(Durable {
                        key,
                        store,
                        policy,
                        highest: Some(checkpoint.sequence),
                        listed: Some(listed),
                    }),
                    posted,
                    Arc::default(),
                    None,
                )?
            }
            // (The store has no checkpoint of this run: it numbers its own from 1.)
            None => self.launch(
                context,
                None,
                Some(Durable {
                    key,
                    store,
                    policy,
                    highest: Some(0),
                    listed: Some(listed),
                }),
            )?,
        };
        // Dropping this future cancels the run, as for `run`: two of one durable run must not
        // go on side by side.
        let guard = handle.control.cancel.clone().drop_guard();
        let result = handle.result().await;
        guard.disarm();
        result
    }

    /// Starts a run: afresh, or continuing a checkpoint; as a durable run when given a key.
    fn launch(
        &self,
        context: Context,
        checkpoint: Option<(&Checkpoint, Restorable)>,
        durable: Option<Durable<'_>>,
    ) -> Result<RunHandle, FlowError> {
        self.launch_with(
            context,
            checkpoint,
            durable,
            Vec::new(),
            Arc::default(),
            None,
        )
    }

    /// Starts the run of a subgraph state (see `crate::subgraph`): part of the run `nesting`
    /// describes, continuing `restored` when the parent's checkpoint had it in progress.
    pub(crate) fn launch_nested(
        &self,
        context: Context,
        mut nesting: crate::subgraph::Nesting,
        mut restored: Option<Checkpoint>,
    ) -> Result<RunHandle, FlowError> {
        let compiled = self.compiled()?;
        // Every child checkpoint replaces the last: the parent's checkpoints keep the latest.
        let policy = CheckpointPolicy {
            keep: 0,
            ..CheckpointPolicy::after_each_state()
        };
        let key = nesting.key.clone();
        let durable = nesting.progress.take().map(|sink| {
            let store: Arc<dyn CheckpointStore> = Arc::new(sink);
            Durable {
                key: key.as_str(),
                store,
                policy,
                highest: None,
                listed: None,
            }
        });
        let (context, checked) = match &mut restored {
            Some(checkpoint) => {
                let checked = check_fits(checkpoint, &compiled)?;
                let context = Context::from_checkpoint(std::mem::take(&mut checkpoint.context))?;
                (context, Some(checked))
            }
            None => (context, None),
        };
        self.launch_with(
            context,
            restored.as_ref().zip(checked),
            durable,
            Vec::new(),
            Arc::default(),
            Some(&nesting),
        )
    }

    /// As `launch`, with answers left in the store for the run's input requests.
    fn launch_with(
        &self,
        context: Context,
        checkpoint: Option<(&Checkpoint, Restorable)>,
        mut durable: Option<Durable<'_>>,
        posted: Vec<PostedAnswer>,
        stream: Arc<crate::stream::StreamHub>,
        nesting: Option<&crate::subgraph::Nesting>,
    ) -> Result<RunHandle, FlowError> {
        let compiled = self.compiled()?;
        if compiled.suspend_on_input && durable.is_none() && compiled.checkpoints.is_none() {
            return Err(FlowError::InvalidConfig {
                agent: self.name().to_owned(),
                message: "`suspend_on_input` needs a checkpoint store to continue the run from: set one with `checkpoints(store, policy)` or use `run_durable(store, key)`".into(),
            });
        }
        // Quotas may have changed since the definition was validated: a request above one
        // would wait forever, so it is an error now.
        check_requests(&self.definition, compiled.pool.as_ref())?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| FlowError::NoRuntime {
            agent: self.name().to_owned(),
        })?;
        let run_id = self.shared.next_run_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (sender, inbox) = unbounded_channel();
        // A subgraph's run streams into its parent's streams.
        let stream = match nesting {
            Some(nesting) => Arc::new(crate::stream::StreamHub::nested(
                Arc::clone(&nesting.stream),
                Arc::clone(&nesting.state),
            )),
            None => stream,
        };
        let checkpointed = durable.is_some() || compiled.checkpoints.is_some();
        // A subgraph's run tells its parent's provider when it has none of its own, and its
        // requests are pending in (and answered through) its parent.
        let provider = match nesting {
            Some(nesting) => {
                (self.definition.input_provider.clone()).or_else(|| nesting.inputs.provider())
            }
            None => self.definition.input_provider.clone(),
        };
        let inputs = Arc::new(InputHub::new(sender.clone(), provider, checkpointed));
        if let Some(nesting) = nesting {
            nesting.inputs.adopt(&inputs);
        }
        let observer = Arc::new(Observer::new(
            run_id,
            Arc::clone(&compiled.graph),
            Arc::clone(&compiled.name),
            inputs,
            stream,
        ));
        observer.set_status(AgentStatus::Running);
        // A durable run listed before its checkpoint was read is stopped through its listing.
        let listed = durable.as_mut().and_then(|durable| durable.listed.take());
        let control = RunControl {
            observer,
            cancel: listed
                .as_ref()
                .map_or_else(CancellationToken::new, |listed| listed.token()),
            sender,
            halted: Arc::default(),
        };
        // A subgraph's run is part of its parent's: the agent's controls (`cancel_all`,
        // `pause`, `answer`, ...) and dead letters stay with the agent's own runs.
        let own_run = nesting.is_none();
        if own_run {
            *self
                .shared
                .latest
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(control.clone());
        }
        let (report_tx, report_rx) = oneshot::channel();
        let mut coordinator = Coordinator::new(
            Arc::clone(&compiled),
            context,
            control.clone(),
            inbox,
            nesting.map_or_else(|| self.events.clone(), |n| n.events.clone()),
        );
        if let Some(nesting) = nesting {
            coordinator.nest(nesting.event_run_id, Arc::clone(&nesting.path));
        }
        let run_key: Arc<str> = match (&durable, &checkpoint, nesting) {
            (Some(durable), _, _) => Arc::from(durable.key),
            (None, Some((checkpoint, _)), _) => Arc::from(checkpoint.run_key.as_str()),
            (None, None, Some(nesting)) => Arc::from(nesting.key.as_str()),
            (None, None, None) => Arc::from(crate::scheduler::default_key(run_id)),
        };
        let highest = durable.as_ref().and_then(|durable| durable.highest);
        coordinator.durable(
            &run_key,
            durable.map(|durable| (durable.store, durable.policy)),
            highest,
        );
        coordinator.listed(listed);
        if let Some((checkpoint, checked)) = checkpoint {
            coordinator.continue_from(checkpoint, checked);
        }
        control.observer.inputs.deliver_posted(posted);
        let shared = Arc::clone(&self.shared);
        // Fires when the coordinator is done, also if it panicked: per-run event streams end.
        let finished = control.observer.finished.clone().drop_guard();
        let stream = crate::stream::CloseOnDrop(Arc::clone(&control.observer.stream));
        // Boxed: the coordinator's future is large, and a task moves its future more than once
        // (into its cell, into the running stage); boxed, each move is a pointer's.
        runtime.spawn(Box::pin(async move {
            let _finished = finished;
            let _stream = stream;
            let report = coordinator.run().await;
            if own_run && !report.dead_letters.is_empty() {
                let mut kept = shared
                    .dead_letters
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                kept.extend(report.dead_letters.iter().cloned());
                let excess = kept.len().saturating_sub(DEAD_LETTER_CAPACITY);
                kept.drain(..excess);
            }
            // The receiver is gone only if nobody waits for the report.
            let _ = report_tx.send(report);
        }));
        Ok(RunHandle {
            agent: Arc::clone(&compiled.name),
            run_key,
            control,
            report: report_rx,
            events: self.events.clone(),
        })
    }

    /// Runs the workflow with an empty context to the end: its report if it completed, the
    /// error that stopped it otherwise. Dropping the returned future cancels the run.
    pub async fn run(&self) -> Result<RunReport, FlowError> {
        self.run_with(Context::new()).await
    }

    /// Runs the workflow with `context` (which may hold initial values) to the end.
    ///
    /// Dropping the returned future stops the run there and then: its context's cancellation
    /// fires, and (unless [`Agent::cleanup_timeout`] gives states time to clean up) no state
    /// is polled again, also before the run's coordinator hears of it.
    pub async fn run_with(&self, context: Context) -> Result<RunReport, FlowError> {
        let handle = self.start_with(context)?;
        let mut guard = StopOnDrop {
            control: Some(handle.control.clone()),
            halt: self.compiled()?.cleanup_timeout.is_zero(),
        };
        let result = handle.result().await;
        guard.control = None;
        result
    }

    fn latest(&self) -> Option<RunControl> {
        self.shared
            .latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Status of the latest run started from this agent or a clone; `Idle` before the first.
    pub fn status(&self) -> AgentStatus {
        self.latest()
            .map_or(AgentStatus::Idle, |run| run.observer.status())
    }

    /// A state's status in the latest run; `None` before the first run or for an unknown name.
    pub fn state_status(&self, state: &str) -> Option<StateStatus> {
        self.latest()?.observer.state_status(state)
    }

    /// The input requests of the latest run waiting for an answer, in the order asked.
    pub fn pending_inputs(&self) -> Vec<InputRequest> {
        self.latest()
            .map(|run| run.observer.inputs.pending())
            .unwrap_or_default()
    }

    /// Answers an input request of the latest run (see [`RunHandle::answer`]).
    pub fn answer(&self, id: &InputId, value: impl Serialize) -> Result<(), FlowError> {
        match self.latest() {
            Some(run) => run.answer(id, "code", value),
            None => Err(FlowError::NoRun {
                agent: self.name().to_owned(),
                action: "answer an input request".into(),
            }),
        }
    }

    /// Completed, running and pending counts of the latest run.
    pub fn counts(&self) -> RunCounts {
        self.latest()
            .map(|run| run.observer.counts())
            .unwrap_or_default()
    }

    /// Pauses the latest run and returns its checkpoint (see [`RunHandle::pause`]).
    pub fn pause(
        &self,
    ) -> impl Future<Output = Result<Checkpoint, FlowError>> + Send + 'static + use<> {
        let pausing = self.latest().map(|run| run.pause());
        let agent = self.name().to_owned();
        async move {
            match pausing {
                Some(pausing) => pausing.await,
                None => Err(FlowError::NoRun {
                    agent,
                    action: "pause".into(),
                }),
            }
        }
    }

    /// A checkpoint of the latest run, taken now (see [`RunHandle::create_checkpoint`]).
    pub async fn create_checkpoint(&self) -> Result<Checkpoint, FlowError> {
        match self.latest() {
            Some(run) => run.checkpoint().await,
            None => Err(FlowError::NoRun {
                agent: self.name().to_owned(),
                action: "checkpoint".into(),
            }),
        }
    }

    /// Resumes the latest run (see [`RunHandle::resume`]).
    pub fn resume(&self) {
        if let Some(run) = self.latest() {
            run.resume();
        }
    }

    /// Cancels the running and ready runs of one state in the latest run (see
    /// [`RunHandle::cancel_state`]).
    pub async fn cancel_state(&self, state: &str) -> Result<usize, FlowError> {
        match self.latest() {
            Some(run) => run.cancel_state(state).await,
            None => Ok(0),
        }
    }

    /// The states of the latest run waiting on their dependencies (see
    /// [`RunHandle::blocked`]).
    pub async fn blocked(&self) -> Vec<crate::BlockedState> {
        match self.latest() {
            Some(run) => run.blocked().await,
            None => Vec::new(),
        }
    }

    /// Cancels the latest run (see [`RunHandle::cancel`]).
    pub fn cancel_all(&self) {
        if let Some(run) = self.latest() {
            run.cancel.cancel();
        }
    }

    /// The dead letters of this agent's runs (and its clones'), oldest first: every state that
    /// failed after its last attempt, handled by an `on_error` state or not. At most
    /// [`DEAD_LETTER_CAPACITY`] are kept.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.shared
            .dead_letters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

/// Stops a run whose future was dropped before it finished.
struct StopOnDrop {
    control: Option<RunControl>,
    /// Whether states are stopped at once (no cleanup time).
    halt: bool,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(control) = self.control.take() {
            if self.halt {
                control
                    .halted
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            control.cancel.cancel();
        }
    }
}

/// Whether `run_durable` continues a run cancelled on request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Continue {
    /// `run_durable`: its report is returned.
    UnlessCancelled,
    /// `resume_durable`: it goes on.
    EvenCancelled,
}

/// `checkpoint` saved again after itself as running, with no cancel record: a resumed run's
/// first checkpoint, written before it runs anything.
async fn resumed(
    store: Arc<dyn CheckpointStore>,
    mut checkpoint: Checkpoint,
) -> Result<Checkpoint, FlowError> {
    checkpoint.cancelled = None;
    checkpoint.status = AgentStatus::Running;
    checkpoint.sequence = checkpoint.sequence.saturating_add(1);
    checkpoint.created_at = std::time::SystemTime::now();
    tokio::task::spawn_blocking(move || {
        store.save(&checkpoint)?;
        Ok(checkpoint)
    })
    .await
    .map_err(|error| FlowError::CheckpointStore {
        store: "checkpoint writer".into(),
        action: "saving a resumed run's checkpoint".into(),
        message: error.to_string(),
    })?
}
