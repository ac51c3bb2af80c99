//! A run seen from outside: its live status, its handle, and its final report.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use flow_core::{AgentStatus, FlowError, StateGraph, StateStatus};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::Checkpoint;
use crate::context::Context;
use crate::events::{EventHub, RunEvents};
use crate::failure::DeadLetter;
use crate::input::{InputHub, InputId, InputRecord, InputRequest};
use crate::scheduler::{BlockedState, Message};
use serde::Serialize;

/// Live status of one run, written by its coordinator with plain atomic stores (no lock), read
/// by handles and agents at any time.
pub(crate) struct Observer {
    pub(crate) run_id: u64,
    pub(crate) graph: Arc<StateGraph>,
    /// The workflow's name.
    pub(crate) agent: Arc<str>,
    status: AtomicU8,
    states: Box<[AtomicU8]>,
    completed: AtomicU64,
    running: AtomicUsize,
    pending: AtomicUsize,
    /// Fires once the run has published its last event, or its coordinator is gone: the end
    /// of [`crate::RunEvents`].
    pub(crate) finished: CancellationToken,
    /// The run's input requests.
    pub(crate) inputs: Arc<InputHub>,
    /// The readers of the run's stream.
    pub(crate) stream: Arc<crate::stream::StreamHub>,
}

impl Observer {
    pub(crate) fn new(
        run_id: u64,
        graph: Arc<StateGraph>,
        agent: Arc<str>,
        inputs: Arc<InputHub>,
        stream: Arc<crate::stream::StreamHub>,
    ) -> Self {
        let states = (0..graph.len())
            .map(|_| AtomicU8::new(StateStatus::Pending.as_u8()))
            .collect();
        Self {
            run_id,
            graph,
            agent,
            status: AtomicU8::new(AgentStatus::Idle.as_u8()),
            states,
            completed: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            finished: CancellationToken::new(),
            inputs,
            stream,
        }
    }

    pub(crate) fn set_status(&self, status: AgentStatus) {
        self.status.store(status.as_u8(), Ordering::Release);
    }

    pub(crate) fn set_state(&self, index: usize, status: StateStatus) {
        self.states[index].store(status.as_u8(), Ordering::Relaxed);
    }

    pub(crate) fn set_counts(&self, completed: u64, running: usize, pending: usize) {
        self.completed.store(completed, Ordering::Relaxed);
        self.running.store(running, Ordering::Relaxed);
        self.pending.store(pending, Ordering::Relaxed);
    }

    pub(crate) fn status(&self) -> AgentStatus {
        AgentStatus::from_u8(self.status.load(Ordering::Acquire)).unwrap_or(AgentStatus::Idle)
    }

    pub(crate) fn state_status(&self, name: &str) -> Option<StateStatus> {
        let id = self.graph.id(name)?;
        StateStatus::from_u8(self.states[id.index()].load(Ordering::Relaxed))
    }

    pub(crate) fn counts(&self) -> RunCounts {
        RunCounts {
            completed: self.completed.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
        }
    }
}

/// How many state runs of a run are done, running and waiting, at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunCounts {
    /// State runs that finished successfully so far.
    pub completed: u64,
    /// States running now.
    pub running: usize,
    /// States scheduled but not started: ready for a slot, or held at a join.
    pub pending: usize,
}

/// What controls a run from outside: shared by its handle and its agent.
#[derive(Clone)]
pub(crate) struct RunControl {
    pub(crate) observer: Arc<Observer>,
    pub(crate) cancel: CancellationToken,
    pub(crate) sender: UnboundedSender<Message>,
    /// Set when the future driving the run was dropped with no cleanup time to give: state
    /// tasks are not polled again (see `scheduler::task::supervise`).
    pub(crate) halted: Arc<AtomicBool>,
}

impl RunControl {
    /// Answers one of the run's input requests as `by`, checked before it is recorded.
    pub(crate) fn answer(
        &self,
        id: &InputId,
        by: &str,
        value: impl Serialize,
    ) -> Result<(), FlowError> {
        let value = crate::input::to_value(id, value)?;
        self.observer.inputs.answer(id, value, by)
    }

    /// Asks for the pause at once; the returned future completes when nothing runs.
    pub(crate) fn pause(
        &self,
    ) -> impl Future<Output = Result<Checkpoint, FlowError>> + Send + 'static + use<> {
        let (ack, done) = oneshot::channel();
        let sent = self.sender.send(Message::Pause(ack)).is_ok();
        let control = self.clone();
        async move {
            if sent {
                // An error means the run ended meanwhile (reported by the checkpoint below).
                let _ = done.await;
            }
            control.checkpoint().await
        }
    }

    /// A checkpoint taken by the coordinator now; its values are serialized on a blocking
    /// thread, not by the scheduler.
    pub(crate) async fn checkpoint(&self) -> Result<Checkpoint, FlowError> {
        let ended = || FlowError::RunEnded {
            agent: self.observer.agent.to_string(),
            run_id: self.observer.run_id,
            action: "checkpoint".into(),
        };
        let (reply, answer) = oneshot::channel();
        if self.sender.send(Message::Checkpoint(reply)).is_err() {
            return Err(ended());
        }
        let pending = answer.await.map_err(|_| ended())?;
        // Serializing a large context takes milliseconds: not on an async worker.
        tokio::task::spawn_blocking(move || pending.finish())
            .await
            .unwrap_or_else(|error| {
                Err(FlowError::Serialization {
                    key: "(the checkpoint)".into(),
                    message: format!("the serializing task stopped: {error}"),
                })
            })
    }

    pub(crate) fn resume(&self) {
        let _ = self.sender.send(Message::Resume);
    }

    pub(crate) async fn cancel_state(&self, state: &str) -> Result<usize, FlowError> {
        let Some(id) = self.observer.graph.id(state) else {
            return Err(FlowError::UnknownState {
                state: state.to_owned(),
                suggestion: self.observer.graph.suggest(state),
            });
        };
        let (reply, answer) = oneshot::channel();
        if self
            .sender
            .send(Message::CancelState { state: id, reply })
            .is_err()
        {
            return Ok(0);
        }
        Ok(answer.await.unwrap_or(0))
    }

    pub(crate) async fn blocked(&self) -> Vec<BlockedState> {
        let (reply, answer) = oneshot::channel();
        if self.sender.send(Message::Blocked(reply)).is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }
}

/// A run in progress. Dropping the handle leaves the run going; [`RunHandle::cancel`] stops it.
pub struct RunHandle {
    pub(crate) agent: Arc<str>,
    pub(crate) run_key: Arc<str>,
    pub(crate) control: RunControl,
    pub(crate) report: oneshot::Receiver<RunReport>,
    pub(crate) events: EventHub,
}

impl RunHandle {
    /// This run's id, unique among the runs of one agent (and its clones).
    pub fn run_id(&self) -> u64 {
        self.control.observer.run_id
    }

    /// A stream of the run from now on, in `modes` (see [`RunStream`](crate::RunStream));
    /// [`Agent::start_streaming`](crate::Agent::start_streaming) opens one before the run
    /// starts. A stream opened after the run ended is empty.
    pub fn stream(&self, modes: crate::StreamMode) -> crate::RunStream {
        self.control.observer.stream.subscribe(modes)
    }

    /// The run's status now.
    pub fn status(&self) -> AgentStatus {
        self.control.observer.status()
    }

    /// Answers an input request of this run (recorded as answered by "code"). The answer is
    /// checked first: `FlowError::InvalidAnswer` (with the reason) when it does not have the
    /// request's type or its validator refuses it, and the request stays pending;
    /// `FlowError::UnknownInput` or `FlowError::InputClosed` when the request is not waiting.
    pub fn answer(&self, id: &InputId, value: impl Serialize) -> Result<(), FlowError> {
        self.control.answer(id, "code", value)
    }

    /// As [`RunHandle::answer`], recording who answered.
    pub fn answer_as(
        &self,
        by: &str,
        id: &InputId,
        value: impl Serialize,
    ) -> Result<(), FlowError> {
        self.control.answer(id, by, value)
    }

    /// The input requests waiting for an answer, in the order asked.
    pub fn pending_inputs(&self) -> Vec<InputRequest> {
        self.control.observer.inputs.pending()
    }

    /// Every input request of the run so far, with its refusals and outcome (the audit).
    pub fn inputs(&self) -> Vec<InputRecord> {
        self.control.observer.inputs.records()
    }

    /// A state's status now; `None` if the workflow has no state of that name.
    pub fn state_status(&self, state: &str) -> Option<StateStatus> {
        self.control.observer.state_status(state)
    }

    /// Completed, running and pending counts now.
    pub fn counts(&self) -> RunCounts {
        self.control.observer.counts()
    }

    /// Asks the run to stop: its context's cancellation fires, running states get the agent's
    /// `cleanup_timeout` to finish and are then aborted, and the run ends as
    /// [`AgentStatus::Cancelled`]. Returns at once; [`RunHandle::wait`] gives the report.
    pub fn cancel(&self) {
        self.control.cancel.cancel();
    }

    /// The same as [`RunHandle::cancel`]: stops every state of the run.
    pub fn cancel_all(&self) {
        self.cancel();
    }

    /// Stops starting new states, from the moment it is called; the returned future completes
    /// once the running ones have finished (their transitions are followed, so states they
    /// make ready wait too), or at once if the run has ended. The run's status is `Paused`
    /// until [`RunHandle::resume`].
    ///
    /// The future returns the run's [`Checkpoint`] at that point: nothing is running, so it
    /// holds only completed work, queued states and waits. Keep it to continue the run
    /// elsewhere with [`crate::Agent::restore_from_checkpoint`]. A run that has ended gives
    /// [`FlowError::RunEnded`].
    pub fn pause(
        &self,
    ) -> impl Future<Output = Result<Checkpoint, FlowError>> + Send + 'static + use<> {
        self.control.pause()
    }

    /// A checkpoint of the run now: consistent (taken between two events of the scheduler, so
    /// no state is half-counted), with the states that are running listed as due again. The
    /// context's values are serialized by the caller, so a large context does not hold up
    /// the run. A run that has ended gives [`FlowError::RunEnded`].
    pub async fn create_checkpoint(&self) -> Result<Checkpoint, FlowError> {
        self.control.checkpoint().await
    }

    /// Lets a paused run start states again.
    pub fn resume(&self) {
        self.control.resume();
    }

    /// Cancels the runs of one state that are running or ready: each is aborted, its status
    /// becomes `Cancelled`, and its branch ends (a join waiting for it goes on without it).
    /// Returns how many were cancelled; an unknown name is an error.
    pub async fn cancel_state(&self, state: &str) -> Result<usize, FlowError> {
        self.control.cancel_state(state).await
    }

    /// The states waiting on their dependencies right now (status `Blocked`), each with what
    /// it waits for, sorted by name. Empty when none waits or the run has ended.
    pub async fn blocked(&self) -> Vec<BlockedState> {
        self.control.blocked().await
    }

    /// The events of this run from now on, ending with the run (at once if it has already
    /// finished). To see every event from the run's start, start it with
    /// [`crate::Agent::start_watched`] instead.
    pub fn events(&self) -> RunEvents {
        RunEvents::new(
            self.events.subscribe(),
            self.run_id(),
            self.control.observer.finished.clone(),
        )
    }

    /// The run's key in checkpoint stores: the durable run's name, the key of the checkpoint
    /// it continues, or one made unique for it (time, process and run id).
    pub fn run_key(&self) -> &str {
        &self.run_key
    }

    /// The workflow's name.
    pub(crate) fn agent_name(&self) -> &str {
        &self.agent
    }

    /// The run's cancellation (for a subgraph state, which stops its run with its own).
    pub(crate) fn cancel_token(&self) -> tokio_util::sync::CancellationToken {
        self.control.cancel.clone()
    }

    /// Waits for the run to finish and returns its report, whatever the outcome.
    pub async fn wait(self) -> RunReport {
        let (agent, key) = (self.agent.clone(), self.run_key.clone());
        match self.report.await {
            Ok(report) => report,
            Err(_) => RunReport::lost(agent, key, &self.control.observer),
        }
    }

    /// Waits for the run to finish: the report if it completed, its error otherwise.
    pub async fn result(self) -> Result<RunReport, FlowError> {
        self.wait().await.into_result()
    }
}

/// Something the scheduler decided without knowing, reported with the run (and logged with
/// `tracing::warn!`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunWarning {
    /// Every live branch of one fork was held, at several states that may each lead to
    /// another, so the scheduler could not tell which join comes first. It released the set
    /// held last (deterministic for a given order of events) and went on; with
    /// [`Agent::strict_joins`](crate::Agent::strict_joins) the run fails with
    /// [`FlowError::AmbiguousJoin`] instead.
    AmbiguousJoin {
        /// The state whose fork opened the branches (`None`: the run's entries).
        fork: Option<Arc<str>>,
        /// The states where branches were held, oldest first.
        held: Vec<Arc<str>>,
        /// The state released first.
        released: Arc<str>,
        /// The states whose undeclared successors make it ambiguous: declare them (empty when
        /// declared joins reach each other).
        declare: Vec<Arc<str>>,
        /// How many times it happened in this run.
        times: u32,
    },
    /// A state held its thread for longer than [`Agent::warn_blocking`]'s threshold in one
    /// poll: it blocks (or spins) instead of awaiting. Run such work with
    /// `tokio::task::spawn_blocking`.
    ///
    /// [`Agent::warn_blocking`]: crate::Agent::warn_blocking
    BlockingState {
        /// The state.
        state: Arc<str>,
        /// The longest it held its thread in one poll.
        held_for: Duration,
        /// How many polls went over the threshold.
        times: u32,
    },
}

impl std::fmt::Display for RunWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AmbiguousJoin {
                fork,
                held,
                released,
                declare,
                times,
            } => {
                let list = |states: &[Arc<str>]| {
                    states
                        .iter()
                        .map(|s| format!("`{s}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                write!(f, "ambiguous join")?;
                if let Some(fork) = fork {
                    write!(f, " in the branches forked by `{fork}`")?;
                }
                write!(
                    f,
                    ": branches held at {} may each reach another; `{released}` was released first ({times} time{})",
                    list(held),
                    if *times == 1 { "" } else { "s" }
                )?;
                if declare.is_empty() {
                    write!(f, "; these declared joins reach each other")
                } else {
                    write!(f, "; declare the successors of {}", list(declare))
                }
            }
            Self::BlockingState {
                state,
                held_for,
                times,
            } => write!(
                f,
                "state `{state}` held its thread for {held_for:?} without yielding ({times} time{}); run blocking work with `tokio::task::spawn_blocking`",
                if *times == 1 { "" } else { "s" }
            ),
        }
    }
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The workflow's name.
    pub agent: Arc<str>,
    /// The run's id.
    pub run_id: u64,
    /// The run's key in checkpoint stores (see [`RunHandle::run_key`]).
    pub run_key: Arc<str>,
    /// Completed, Failed or Cancelled.
    pub status: AgentStatus,
    /// Why the run did not complete, when it did not.
    pub error: Option<FlowError>,
    /// The context as the run left it.
    pub context: Context,
    /// Every state of the workflow, in the order they were added, with what it did in this run.
    pub states: Vec<StateReport>,
    /// How many state runs finished, successfully or not.
    pub transitions: u64,
    /// The most states that ran at the same time.
    pub max_concurrency: usize,
    /// Every state that failed after its last attempt in this run, handled or not.
    pub dead_letters: Vec<DeadLetter>,
    /// What the scheduler had to decide without knowing (for example an ambiguous join in a
    /// workflow without declared successors), once per kind and place.
    pub warnings: Vec<RunWarning>,
    /// The sequence number of the checkpoint this run continued (after a crash, a pause or a
    /// failure), if it did: its states' counts then include what ran before (see
    /// [`StateReport::restored_runs`]).
    pub restored_from: Option<u64>,
    /// Every input request of the run, with its refusals and outcome (the audit).
    pub inputs: Vec<InputRecord>,
    /// When the run started, on tokio's clock.
    pub started_at: Instant,
    /// How long it took.
    pub duration: Duration,
}

impl RunReport {
    /// The report of the state with this name.
    pub fn state(&self, name: &str) -> Option<&StateReport> {
        self.states.iter().find(|state| &*state.name == name)
    }

    /// True when the run completed (with no failure: see
    /// [`AgentStatus::CompletedWithFailures`]).
    pub fn is_success(&self) -> bool {
        self.status == AgentStatus::Completed
    }

    /// The failures that ended a branch while the run went on (`BranchFailure::Continue`),
    /// oldest first: what a run that ended `CompletedWithFailures` did not do.
    pub fn failed_branches(&self) -> impl Iterator<Item = &DeadLetter> {
        self.dead_letters
            .iter()
            .filter(|letter| letter.outcome == crate::FailureOutcome::EndedBranch)
    }

    /// `Ok(self)` when the run completed (also with failures that only ended branches: check
    /// [`RunReport::failed_branches`]) or suspended awaiting input, its error otherwise.
    pub fn into_result(self) -> Result<RunReport, FlowError> {
        match self.error {
            // Suspended, not failed: the report lists what it waits for.
            None if matches!(
                self.status,
                AgentStatus::Completed
                    | AgentStatus::CompletedWithFailures
                    | AgentStatus::AwaitingInput
            ) =>
            {
                Ok(self)
            }
            None => Err(FlowError::Cancelled {
                agent: self.agent.to_string(),
            }),
            Some(error) => Err(error),
        }
    }

    /// The report of a durable run that had ended (completed, or cancelled on request), from
    /// its last checkpoint.
    pub(crate) fn from_checkpoint(mut checkpoint: Checkpoint) -> Result<Self, FlowError> {
        let context = Context::from_checkpoint(std::mem::take(&mut checkpoint.context))?;
        let mut states: Vec<StateReport> = checkpoint
            .states
            .iter()
            .map(StateReport::restored)
            .collect();
        states.extend(checkpoint.scheduler.subgraph_reports());
        Ok(RunReport {
            agent: Arc::from(checkpoint.agent.as_str()),
            run_id: checkpoint.run_id,
            run_key: Arc::from(checkpoint.run_key.as_str()),
            status: checkpoint.status,
            // (A run cancelled on request, returned as it ended.)
            error: checkpoint
                .cancelled
                .as_ref()
                .map(|request| FlowError::CancelledOnRequest {
                    agent: checkpoint.agent.clone(),
                    run: checkpoint.run_key.clone(),
                    by: request.by.clone(),
                    reason: request.reason.clone(),
                }),
            context,
            states,
            transitions: checkpoint.scheduler.transitions(),
            max_concurrency: checkpoint.scheduler.max_concurrency(),
            restored_from: Some(checkpoint.sequence),
            dead_letters: checkpoint.dead_letters,
            warnings: Vec::new(),
            inputs: checkpoint.inputs,
            started_at: Instant::now(),
            duration: checkpoint.elapsed,
        })
    }

    fn lost(agent: Arc<str>, run_key: Arc<str>, observer: &Observer) -> Self {
        RunReport {
            error: Some(FlowError::RunLost {
                agent: agent.to_string(),
            }),
            agent,
            run_id: observer.run_id,
            run_key,
            status: AgentStatus::Failed,
            context: Context::new(),
            states: Vec::new(),
            transitions: 0,
            max_concurrency: 0,
            warnings: Vec::new(),
            restored_from: None,
            dead_letters: Vec::new(),
            inputs: observer.inputs.records(),
            started_at: Instant::now(),
            duration: Duration::ZERO,
        }
    }
}

/// What one state did in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct StateReport {
    /// The state's name.
    pub name: Arc<str>,
    /// Its status when the run ended (`Pending` if it never ran).
    pub status: StateStatus,
    /// How many times it started (more than once in a loop).
    pub runs: u32,
    /// How many distinct runs it had: `runs`, less the starts that ran again a first attempt
    /// a restore found in flight (such a start keeps its visit number: see
    /// [`Context::visit`]).
    pub visits: u32,
    /// How many branches reached it: transitions to it, fork targets, and starts as an entry
    /// or by the dependency rules. A join that merged three branches into one run counts 3
    /// arrivals and 1 run.
    pub arrivals: u32,
    /// Attempts of its latest run (1, or more after retries).
    pub attempts: u32,
    /// Time spent running, over all its runs.
    pub total_time: Duration,
    /// When it first started.
    pub first_started: Option<Instant>,
    /// When it last finished.
    pub last_finished: Option<Instant>,
    /// The message of its last failure, if it failed.
    pub last_error: Option<String>,
    /// Of `runs`, how many the checkpoint this run was restored from had counted (0 for a run
    /// that was not restored): `runs - restored_runs` happened in this process. When the two
    /// are equal, `attempts`, `status` and `last_error` are those of a run before the restore.
    pub restored_runs: u32,
}

impl StateReport {
    /// The state as a checkpoint kept it: every run it counts was before the restore.
    pub(crate) fn restored(saved: &crate::checkpoint::StateCheckpoint) -> Self {
        Self {
            status: saved.status,
            runs: saved.runs,
            visits: saved.visits.unwrap_or(saved.runs),
            restored_runs: saved.runs,
            arrivals: saved.arrivals,
            attempts: saved.attempts,
            total_time: saved.total_time,
            last_error: saved.last_error.clone(),
            ..StateReport::new(Arc::from(saved.name.as_str()))
        }
    }

    pub(crate) fn new(name: Arc<str>) -> Self {
        Self {
            name,
            status: StateStatus::Pending,
            runs: 0,
            visits: 0,
            arrivals: 0,
            attempts: 0,
            total_time: Duration::ZERO,
            first_started: None,
            last_finished: None,
            last_error: None,
            restored_runs: 0,
        }
    }
}
