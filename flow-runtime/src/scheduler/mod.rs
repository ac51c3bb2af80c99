//! The coordinator: one task per run that owns all scheduling state.
//!
//! States run as tokio tasks and report back over one channel; the coordinator is the only
//! code that touches the ready queue, the join bookkeeping and the per-state records, so none
//! of them needs a lock. State names never appear on this path: states are [`StateId`]s, and a
//! transition's name is resolved with one hash lookup.

mod admission;
mod branches;
mod checkpointing;
mod control;
mod deps;
mod failures;
mod image;
mod inputs;
mod joins;
mod launch;
mod pool;
mod ready;
mod streaming;
mod task;
mod telemetry;
mod warnings;

pub use deps::BlockedState;
pub(crate) use image::{PendingCheckpoint, Restorable, SchedulerImage, check_fits};
pub(crate) use task::{Message, panic_message, run_detached};

use std::sync::Arc;
use std::time::Duration;

use flow_core::{FlowError, FxHashMap, Next, StateGraph, StateId, StateName, StateStatus};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::agent::Compiled;
use crate::checkpoint::writer::{self, Writer};
use crate::checkpoint::{AttemptLog, AttemptOutcome, CheckpointPolicy, CheckpointStore};
use crate::context::Context;
use crate::coordination::{Actor, AttemptIdentity, HeldUnits};
use crate::events::{EventHub, EventKind};
use crate::failure::DeadLetter;
use crate::probe::{Publisher, StateEvent};
use crate::resilience::BreakerPermit;
use crate::resources::{Grant, ResourcePool};
use crate::run::{Observer, RunControl, RunReport, RunWarning, StateReport};

use crate::state_fn::StateFuture;
use admission::{Admission, GateVerdict};
use deps::{Dependencies, Origin};
use failures::Failure;
use joins::{Branch, Joins};
use ready::ReadyQueue;
use task::Outcome;

pub(crate) struct Coordinator {
    compiled: Arc<Compiled>,
    graph: Arc<StateGraph>,
    context: Context,
    observer: Arc<Observer>,
    /// Where the run's events go (subscribers, monitors).
    events: Publisher,
    cancel: CancellationToken,
    joins: Joins,
    ready: ReadyQueue,
    running: Vec<Option<Running>>,
    free_slots: Vec<u32>,
    running_count: usize,
    states: Vec<StateReport>,
    sender: UnboundedSender<Message>,
    /// What state tasks hold of the run (the sender again, and the halt flag).
    link: Arc<task::TaskLink>,
    inbox: UnboundedReceiver<Message>,
    completed: u64,
    transitions: u64,
    /// New runs of states so far (retries not counted), against `max_steps`.
    steps: u64,
    max_concurrency: usize,
    /// The time of the event being handled: one clock read serves the state that finished
    /// and the states it lets start.
    now: Instant,
    next_ticket: u64,
    /// Identifies this run to a shared resource pool.
    run_key: u64,
    /// Acquisition deadlines of ready states, by queue sequence number.
    deadlines: FxHashMap<u64, AbortHandle>,
    /// The one timer for the earliest instant a state waiting at a gate may ask it again.
    gate_timer: Option<(Instant, AbortOnDrop)>,
    /// No state starts while paused; these wait to hear that nothing runs any more.
    paused: bool,
    pause_waiters: Vec<oneshot::Sender<()>>,
    /// Timers of retries waiting for their delay, by id (aborted when the run stops).
    timers: Vec<Option<failures::RetryTimer>>,
    free_timers: Vec<u32>,
    timer_count: usize,
    dead_letters: Vec<DeadLetter>,
    /// Which states wait on which, and what each state's dependents need to know of it.
    deps: Dependencies,
    /// The run's failure when something found deep in a step ends it (a dependency failure
    /// with no handler, an ambiguous join under `strict_joins`); the loop acts on it.
    deferred_failure: Option<FlowError>,
    /// What the scheduler decided without knowing, for the report.
    warnings: Vec<RunWarning>,
    /// The seed of retry jitter: the id of the run this one continues (its own if new).
    seed: u64,
    /// Completions of each state.
    completions: Vec<u32>,
    /// The run's key in checkpoint stores.
    durable_key: Arc<str>,
    /// The number of the last checkpoint taken.
    checkpoint_sequence: u64,
    /// Time the run had taken in earlier processes (restored from a checkpoint).
    elapsed_before: Duration,
    started_at: Instant,
    /// Whether this run continues a checkpoint (then it does not start its entries).
    restored: bool,
    /// The sequence of the checkpoint it continues, for the report.
    restored_from: Option<u64>,
    /// Where automatic checkpoints go, and when.
    checkpoints: Option<(Arc<dyn CheckpointStore>, CheckpointPolicy)>,
    writer: Option<Writer>,
    ticker: Option<AbortHandle>,
    /// Branches a failure ended, the run going on (`BranchFailure::Continue`).
    ended_branches: u32,
    /// While restoring: give restored branches fresh ids (see `restored_branch`).
    renumber_restored: bool,
    /// The state whose failure (with no handler) stopped the run, and its branch.
    failed_state: Option<(StateId, Branch, u32)>,
    /// A checkpointed run: listed for answers given through its store in this process, and
    /// reading those other processes leave there (see `watch_store_for_answers`).
    input_watch: Option<inputs::InputWatch>,
    /// A checkpointed run: reachable by `CheckpointStore::cancel_run` in this process, which
    /// leaves here who cancelled it for its last checkpoint.
    listed: Option<crate::checkpoint::ListedRun>,
    /// Branch-local writes and map items (see `branches`).
    branches: branches::Branches,
    /// The highest checkpoint sequence this run saved (see `writer::save`).
    saved_sequence: Arc<std::sync::atomic::AtomicU64>,
    /// Its attempts with their times, for its checkpoints: a run with checkpoints only.
    history: Option<Box<AttemptLog>>,
    /// The runs of its subgraph states, when it has any (see `crate::subgraph`).
    subgraphs: Option<Arc<crate::subgraph::SubgraphRuns>>,
    /// For a subgraph's run: its subgraph state's path in the outermost run.
    path: Option<Arc<str>>,
}

struct Running {
    state: StateId,
    branch: Branch,
    attempt: u32,
    /// Which run of the state it is (see `ReadyEntry::visit`).
    visit: u32,
    started: Instant,
    /// The task, when the state has one (a state whose body panicked when called has none).
    abort: Option<AbortHandle>,
    /// The state's circuit breaker's permission for this attempt, when it has a breaker.
    breaker: Option<BreakerPermit>,
    /// Tells this attempt's report from a late report of an attempt that used the slot before.
    ticket: u64,
    /// What it holds from the resource pool; given back when this is dropped.
    grant: Option<Grant>,
    /// Its place in the ready order when it was admitted, kept if it is preempted.
    queued_at: i64,
    /// The coordinator's own timer for the state's timeout (see `Message::StateDeadline`);
    /// stopped when the attempt ends.
    _deadline: Option<AbortOnDrop>,
    /// Units of coordination primitives it holds; given back when this is dropped.
    _held: Vec<HeldUnits>,
    /// What shared primitives gave it; given back when this is dropped.
    _shared: Vec<crate::coordination::SharedHold>,
    /// The attempt's tracing span, for its result.
    span: tracing::Span,
    /// The timer for the earliest TTL among them (see `Message::HoldExpired`).
    _hold_timer: Option<AbortOnDrop>,
}

/// Aborts a helper task when dropped.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a run stopped before completing.
enum Stop {
    Failed(FlowError),
    Cancelled,
    TimedOut(Duration),
    /// Every running state waits for input, and the run suspends on input.
    AwaitingInput,
}

impl Coordinator {
    pub(crate) fn new(
        compiled: Arc<Compiled>,
        context: Context,
        control: RunControl,
        inbox: UnboundedReceiver<Message>,
        events: EventHub,
    ) -> Self {
        let graph = Arc::clone(&compiled.graph);
        let RunControl {
            observer,
            cancel,
            sender,
            halted,
        } = control;
        let blocking = compiled.blocking_threshold;
        let events = Publisher::new(
            events,
            &compiled,
            observer.run_id,
            Arc::clone(&observer.stream),
        );
        let mut coordinator = Self {
            joins: {
                let mut joins = Joins::new(&graph);
                joins.set_strict(compiled.strict_joins);
                joins
            },
            deps: Dependencies::new(
                graph.len(),
                compiled.states.iter().any(|s| !s.dependencies.is_empty()),
                &compiled.self_starting,
            ),
            deferred_failure: None,
            warnings: Vec::new(),
            seed: observer.run_id,
            completions: vec![0; graph.len()],
            durable_key: Arc::from(default_key(observer.run_id)),
            checkpoint_sequence: 0,
            elapsed_before: Duration::ZERO,
            started_at: Instant::now(),
            restored: false,
            restored_from: None,
            checkpoints: compiled.checkpoints.clone(),
            writer: None,
            ticker: None,
            failed_state: None,
            ended_branches: 0,
            renumber_restored: false,
            saved_sequence: Arc::new(std::sync::atomic::AtomicU64::new(
                crate::checkpoint::writer::UNKNOWN,
            )),
            history: None,
            subgraphs: None,
            path: None,
            input_watch: None,
            listed: None,
            ready: ReadyQueue::new(compiled.priority_aging).with_gates(&compiled.wait_rules),
            states: graph
                .names()
                .iter()
                .cloned()
                .map(StateReport::new)
                .collect(),
            context: context.for_run(cancel.clone()),
            compiled,
            graph,
            observer,
            events,
            cancel,

            running: Vec::new(),
            free_slots: Vec::new(),
            running_count: 0,
            link: Arc::new(task::TaskLink {
                report: sender.clone(),
                halted,
                blocking,
            }),
            sender,
            inbox,
            completed: 0,
            transitions: 0,
            steps: 0,
            max_concurrency: 0,
            now: Instant::now(),
            next_ticket: 0,
            run_key: ResourcePool::run_key(),
            deadlines: FxHashMap::default(),
            gate_timer: None,
            paused: false,
            pause_waiters: Vec::new(),
            timers: Vec::new(),
            free_timers: Vec::new(),
            timer_count: 0,
            dead_letters: Vec::new(),
            branches: branches::Branches::default(),
        };
        if !coordinator.compiled.reducers.is_empty() {
            coordinator.activate_branches();
        }
        if coordinator.compiled.has_subgraphs {
            coordinator.subgraphs = Some(Arc::new(crate::subgraph::SubgraphRuns::new(
                coordinator.sender.clone(),
            )));
        }
        let info = coordinator.run_info();
        coordinator.context.set_run(info);
        coordinator
    }

    /// What the run's context handles know of it.
    fn run_info(&self) -> crate::context::RunInfo {
        crate::context::RunInfo {
            key: Arc::clone(&self.durable_key),
            id: self.observer.run_id,
            graph: Arc::clone(&self.graph),
            workflow: Arc::clone(&self.compiled.name),
            inputs: Arc::clone(&self.observer.inputs),
            reducers: Arc::clone(&self.compiled.reducers),
            stream: Arc::clone(&self.observer.stream),
            events: self.events.hub().clone(),
            event_run_id: self.events.run_id(),
            path: self.path.clone(),
            subgraphs: self.subgraphs.clone(),
        }
    }

    /// Makes this the run of a subgraph state at `path` in the run with id `run_id` (see
    /// `crate::subgraph`): its events are that run's.
    pub(crate) fn nest(&mut self, run_id: u64, path: Arc<str>) {
        self.events.nest(run_id, &path, &self.compiled);
        self.path = Some(path);
        let info = self.run_info();
        self.context.set_run(info);
    }

    pub(crate) async fn run(self) -> RunReport {
        let span = tracing::info_span!(
            "run",
            cicd.pipeline.name = &*self.compiled.name,
            cicd.pipeline.run.id = &*self.durable_key,
            fluffy_flow.run_id = i64::try_from(self.observer.run_id).unwrap_or(i64::MAX),
            cicd.pipeline.result = tracing::field::Empty,
            fluffy_flow.run.status = tracing::field::Empty,
        );
        self.drive().instrument(span).await
    }

    /// A durable run listed for cancel requests before it started (see `run_durable`).
    pub(crate) fn listed(&mut self, listed: Option<crate::checkpoint::ListedRun>) {
        if listed.is_some() {
            self.listed = listed;
        }
    }

    /// This run's key in checkpoint stores (a durable run's name), and the store and policy
    /// its automatic checkpoints follow, replacing the agent's.
    pub(crate) fn durable(
        &mut self,
        key: &str,
        checkpoints: Option<(Arc<dyn CheckpointStore>, CheckpointPolicy)>,
        highest: Option<u64>,
    ) {
        self.durable_key = Arc::from(key);
        if let Some(highest) = highest {
            self.saved_sequence
                .store(highest, std::sync::atomic::Ordering::Release);
        }
        let info = self.run_info();
        self.context.set_run(info);
        if checkpoints.is_some() {
            self.checkpoints = checkpoints;
        }
    }

    async fn drive(mut self) -> RunReport {
        let started_at = self.now;
        self.started_at = started_at;
        self.publish(EventKind::RunStarted {
            agent: Arc::clone(&self.compiled.name),
        });
        let watcher = self.watch(started_at);
        self.start_checkpoints();
        self.list_for_answers();

        if !self.restored {
            let graph = Arc::clone(&self.graph);
            for &entry in graph.entries() {
                self.arrived(entry);
            }
            self.joins.start(&graph, graph.entries());
            self.absorb_joins();
            if self.deps.enabled {
                self.park_self_starting();
            }
        } else {
            let graph = Arc::clone(&self.graph);
            self.joins.resettle(&graph);
            self.absorb_joins();
        }

        let stop = loop {
            if !self.paused
                && self.running_count == 0
                && self.ready.len() == 1
                && self.head_needs_nothing()
            {
                if let Err(stop) = self.run_solo().await {
                    break Some(stop);
                }
                if let Some(error) = self.deferred_failure.take() {
                    break Some(Stop::Failed(error));
                }
                continue;
            }
            if !self.paused {
                self.dispatch();
                // (The step limit stops dispatching with nothing running.)
                if let Some(error) = self.deferred_failure.take() {
                    break Some(Stop::Failed(error));
                }
            }
            if self.running_count == 0 {
                self.acknowledge_pause();
                if self.ready.is_empty() && self.timer_count == 0 {
                    if self.joins.is_finished() && self.deps.waiting() == 0 {
                        break None;
                    }
                    if !self.paused {
                        // Nothing else is left to run: waits that only depended on that end.
                        if self.deps.waiting() > 0 && self.settle_dependencies() {
                            if let Some(error) = self.deferred_failure.take() {
                                break Some(Stop::Failed(error));
                            }
                            continue;
                        }
                        // A dependency timeout still to fire is progress to come.
                        if self.deps.armed == 0 {
                            break Some(Stop::Failed(self.no_progress()));
                        }
                    }
                }
            }
            self.publish_counts();
            // About to wait: monitors get what happened so far.
            self.events.flush();
            // The coordinator holds a sender, so the channel never closes.
            let Some(message) = self.inbox.recv().await else {
                break Some(Stop::Cancelled);
            };
            if let Err(stop) = self.handle(message) {
                break Some(stop);
            }
            if let Some(error) = self.deferred_failure.take() {
                break Some(Stop::Failed(error));
            }
            if self.compiled.suspend_on_input && self.only_awaiting_input() {
                break Some(Stop::AwaitingInput);
            }
        };
        watcher.abort();
        self.conclude(stop, started_at).await
    }

    fn handle(&mut self, message: Message) -> Result<(), Stop> {
        // One clock read per event serves everything it leads to (statuses, queue order).
        self.now = Instant::now();
        match message {
            Message::Done {
                slot,
                ticket,
                outcome,
            } => self
                .finish_task(slot, ticket, outcome)
                .map_err(Stop::Failed),
            Message::Blocking { slot, ticket, held } => {
                if let Some(Some(running)) = self.running.get(slot as usize)
                    && running.ticket == ticket
                {
                    self.report_blocking(running.state, held);
                }
                Ok(())
            }
            Message::StateDeadline {
                slot,
                ticket,
                limit,
            } => {
                // Still running past its timeout: its task did not report (it may block its
                // thread). Abandon it; a late report finds its slot's ticket changed.
                if let Some(Some(running)) = self.running.get(slot as usize)
                    && running.ticket == ticket
                    && let Some(abort) = &running.abort
                {
                    abort.abort();
                }
                self.finish_task(slot, ticket, Outcome::TimedOut(limit))
                    .map_err(Stop::Failed)
            }
            Message::Retry {
                timer,
                state,
                branch,
                attempt,
            } => {
                self.retry_due(timer, state, branch, attempt);
                Ok(())
            }
            Message::Pause(ack) => {
                self.pause(ack);
                Ok(())
            }
            Message::Resume => {
                self.resume();
                Ok(())
            }
            // The loop dispatches after every message: nothing else to do.
            Message::GateDue => Ok(()),
            Message::Input(kind) => {
                self.input_event(kind);
                Ok(())
            }
            Message::GateReleased { gate } => {
                self.ready.wake_gate(gate, self.now);
                Ok(())
            }
            Message::HoldExpired { slot, ticket, gate } => {
                self.hold_expired(slot, ticket, gate).map_err(Stop::Failed)
            }
            Message::AcquireDeadline { seq } => self.acquire_deadline(seq).map_err(Stop::Failed),
            Message::CancelState { state, reply } => {
                let cancelled = self.cancel_state(state);
                let _ = reply.send(cancelled);
                Ok(())
            }
            Message::Cancel => Err(Stop::Cancelled),
            Message::Deadline => Err(Stop::TimedOut(self.compiled.timeout.unwrap_or_default())),
            Message::DependencyDeadline { waiter, token } => {
                self.dependency_deadline(waiter, token);
                Ok(())
            }
            Message::Blocked(reply) => {
                let _ = reply.send(self.blocked_states());
                Ok(())
            }
            Message::Checkpoint(reply) => {
                let status = self.observer.status();
                let _ = reply.send(self.capture(status));
                Ok(())
            }
            Message::CheckpointTick => {
                self.checkpoint_due();
                Ok(())
            }
            Message::SubgraphProgress => {
                // A subgraph state's run saved progress: a run checkpointed after each state
                // keeps it at once.
                if self
                    .checkpoints
                    .as_ref()
                    .is_some_and(|(_, policy)| policy.after_each_state)
                {
                    self.checkpoint_due();
                }
                Ok(())
            }
            Message::CheckpointSaved(error) => {
                if let Some(writer) = &mut self.writer {
                    writer.busy = false;
                }
                if let Some(error) = error {
                    return Err(Stop::Failed(error));
                }
                // Requests in it can be answered through the store now: hand them out.
                self.observer.inputs.saved();
                if self.writer.as_ref().is_some_and(|w| w.dirty) {
                    self.checkpoint_due();
                }
                Ok(())
            }
        }
    }

    /// A task that turns cancellation and the run's deadline into messages, so that the
    /// coordinator waits on its channel alone.
    fn watch(&self, started_at: Instant) -> AbortHandle {
        let cancel = self.cancel.clone();
        let sender = self.sender.clone();
        // A timeout too long to add to the clock is no deadline at all.
        let deadline = self
            .compiled
            .timeout
            .and_then(|timeout| started_at.checked_add(timeout));
        tokio::spawn(async move {
            let message = match deadline {
                Some(deadline) => tokio::select! {
                    _ = cancel.cancelled() => Message::Cancel,
                    _ = tokio::time::sleep_until(deadline) => Message::Deadline,
                },
                None => {
                    cancel.cancelled().await;
                    Message::Cancel
                }
            };
            let _ = sender.send(message);
        })
        .abort_handle()
    }

    /// Queues a state for attempt `attempt` of run `visit` (0: a new run); if it needs resources and has an acquisition
    /// timeout, arms a deadline for the wait.
    fn enqueue(&mut self, state: StateId, branch: Branch, attempt: u32, visit: u32) {
        let spec = &self.compiled.states[state.index()];
        let seq = self
            .ready
            .push(state, branch, attempt, visit, spec.priority, self.now);
        self.arm_acquire_deadline(state, seq);
    }

    /// A timer that sends `message` to this coordinator after `delay` (a delay too long for
    /// the clock sleeps "forever"); abort it to take the message back.
    fn message_after(&self, delay: Duration, message: Message) -> AbortHandle {
        let sender = self.sender.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = sender.send(message);
        })
        .abort_handle()
    }

    /// Queues a restored attempt at a given place in the order.
    fn requeue(
        &mut self,
        state: StateId,
        branch: Branch,
        (attempt, visit): (u32, u32),
        virtual_start: i64,
    ) {
        let seq = self
            .ready
            .push_at(state, branch, attempt, visit, virtual_start);
        self.arm_acquire_deadline(state, seq);
        self.set_status(state, StateStatus::Ready);
    }

    /// A task reported how its state run ended.
    fn finish_task(&mut self, slot: u32, ticket: u64, outcome: Outcome) -> Result<(), FlowError> {
        let entry = &mut self.running[slot as usize];
        if entry
            .as_ref()
            .is_none_or(|running| running.ticket != ticket)
        {
            return Ok(()); // a late report of an attempt that was cancelled
        }
        let Some(Running {
            state,
            branch,
            attempt,
            visit,
            started,
            breaker,
            span,
            queued_at,
            ..
        }) = entry.take()
        else {
            return Ok(());
        };
        telemetry::attempt_ended(&span, &outcome);
        self.free_slots.push(slot);
        self.running_count -= 1;
        record_breaker(breaker, &outcome);
        self.finish(
            state,
            branch,
            (attempt, visit),
            (queued_at, started),
            outcome,
        )
    }

    /// Records how a state's attempt ended and routes its branch: on, to a retry, to its
    /// `on_error` handler, or to the run's failure.
    ///
    /// `times`: the attempt's place in the ready order (its virtual start) and its start.
    fn finish(
        &mut self,
        state: StateId,
        branch: Branch,
        attempt: (u32, u32),
        (queued_at, started): (i64, Instant),
        mut outcome: Outcome,
    ) -> Result<(), FlowError> {
        let completed = matches!(outcome, Outcome::Finished(Ok(_)));
        if let Some(subgraphs) = &self.subgraphs {
            // A subgraph state's run that completed with failures (keep-going) ended
            // branches: the run did not do all its work either.
            let failures = subgraphs.attempt_completed((state, attempt.1, attempt.0));
            if completed && !failures.is_empty() {
                let count = u32::try_from(failures.len()).unwrap_or(u32::MAX);
                self.ended_branches = self.ended_branches.saturating_add(count);
                self.dead_letters.extend(failures);
            }
        }
        if let Some(error) = self.return_branch(branch.id, completed)
            && completed
        {
            // A write the state made could not be kept: the attempt failed.
            outcome = Outcome::Finished(Err(flow_core::StateError::from_boxed(Box::new(error))));
        }
        self.transitions = self.transitions.saturating_add(1);
        let now = self.now;
        let duration = now - started;
        self.log_attempt(state, attempt, (queued_at, started), || {
            attempt_outcome(&outcome)
        });
        let record = &mut self.states[state.index()];
        record.total_time = record.total_time.saturating_add(duration);
        record.last_finished = Some(now);
        match outcome {
            Outcome::Finished(Ok(next)) => {
                self.set_status(state, StateStatus::Completed);
                self.completed = self.completed.saturating_add(1);
                tracing::debug!(state = %self.graph.name(state), ?duration, "state completed");
                self.publish_state(state, StateEvent::Completed { duration });
                self.stream_values(state);
                // Recorded before the branch moves (a join it releases sees it), announced to
                // waiting dependents after (so an arriving transition takes precedence over a
                // state starting by itself).
                self.dependency_completed(state);
                let completions = &mut self.completions[state.index()];
                *completions = completions.saturating_add(1);
                self.route(state, branch, next)?;
                self.absorb_joins();
                self.after_completion(state);
                if self.writer.is_some()
                    && self
                        .checkpoints
                        .as_ref()
                        .is_some_and(|(_, p)| p.after_each_state)
                {
                    self.checkpoint_due();
                }
                Ok(())
            }
            Outcome::Finished(Err(cause)) => {
                self.attempt_failed(state, branch, attempt, Failure::Error(cause))
            }
            Outcome::Panicked(message) => {
                self.attempt_failed(state, branch, attempt, Failure::Panic(message))
            }
            Outcome::TimedOut(limit) => {
                self.attempt_failed(state, branch, attempt, Failure::Timeout(limit))
            }
            Outcome::Refused(error) => {
                self.attempt_failed(state, branch, attempt, Failure::Refused(error))
            }
        }
    }

    fn route(&mut self, from: StateId, branch: Branch, next: Next) -> Result<(), FlowError> {
        let graph = Arc::clone(&self.graph);
        match next {
            Next::End => self.joins.end(&graph, branch, from),
            Next::To(target) => {
                let to = self.resolve(from, &target)?;
                self.arrived(to);
                self.joins.goto(&graph, branch, from, to);
            }
            Next::Parallel(targets) => {
                let targets = targets
                    .iter()
                    .map(|target| self.resolve(from, target))
                    .collect::<Result<Vec<_>, _>>()?;
                for &target in &targets {
                    self.arrived(target);
                }
                if self.joins.tracks_branches() {
                    let first = self.joins.next_branch_id();
                    let inputs = branches::ForkInputs::Inherit;
                    self.fork_branches(branch, first, targets.len(), inputs)?;
                }
                self.joins.fork(&graph, branch, from, &targets);
            }
            Next::Map(fanout) => {
                let (target, items) = fanout.into_parts();
                let to = self.resolve(from, &target)?;
                let items = self.map_items(from, &target, items)?;
                let targets = vec![to; items.len()];
                for _ in &targets {
                    self.arrived(to);
                }
                self.activate_branches();
                let first = self.joins.next_branch_id();
                let count = items.len();
                self.fork_branches(branch, first, count, branches::ForkInputs::Items(items))?;
                self.joins.fork(&graph, branch, from, &targets);
            }
        }
        Ok(())
    }

    fn resolve(&self, from: StateId, target: &StateName) -> Result<StateId, FlowError> {
        let agent = || self.compiled.name.to_string();
        let Some(to) = self.graph.id(target) else {
            return Err(FlowError::UnknownTransition {
                agent: agent(),
                from: self.graph.name(from).to_string(),
                to: target.to_string(),
                suggestion: self.graph.suggest(target),
            });
        };
        if !self.graph.allows(from, to) {
            let declared = self.graph.successors(from).unwrap_or_default();
            return Err(FlowError::UndeclaredTransition {
                agent: agent(),
                from: self.graph.name(from).to_string(),
                to: target.to_string(),
                declared: declared
                    .iter()
                    .map(|&s| self.graph.name(s).to_string())
                    .collect(),
            });
        }
        Ok(to)
    }

    /// A branch reached `state` (for the report's arrivals).
    fn arrived(&mut self, state: StateId) {
        let record = &mut self.states[state.index()];
        record.arrivals = record.arrivals.saturating_add(1);
    }

    /// A branch of its own for `state`, started by the dependency rules.
    fn new_branch(&mut self, state: StateId) -> Branch {
        self.arrived(state);
        self.joins.spawn()
    }

    /// Moves what the join bookkeeping decided into the ready queue and the statuses.
    fn absorb_joins(&mut self) {
        self.apply_branch_events();
        if !self.joins.ambiguities.is_empty() {
            self.report_ambiguities();
        }
        let mut blocked = std::mem::take(&mut self.joins.blocked);
        for (state, _) in blocked.drain(..) {
            // A branch that joined a held set which this same step released did not wait
            // (it may run in the parent scope, if the join closed its own).
            if self
                .joins
                .released
                .iter()
                .any(|&(released, _)| released == state)
            {
                continue;
            }
            self.set_status(state, StateStatus::Blocked);
            self.publish_state(state, StateEvent::Blocked);
        }
        self.joins.blocked = blocked;
        let mut released = std::mem::take(&mut self.joins.released);
        self.note_incoming(&released, true);
        for (state, branch) in released.drain(..) {
            self.note_incoming(&[(state, branch)], false);
            self.arrive(state, Origin::Branch(branch));
        }
        // The gate may have sent a failed state's branch on to its handler meanwhile.
        released.append(&mut self.joins.released);
        self.joins.released = released;
        if !self.joins.released.is_empty() || !self.joins.blocked.is_empty() {
            self.absorb_joins();
        }
    }

    /// Queues a state's first attempt (it passed the dependency gate).
    fn make_ready(&mut self, state: StateId, branch: Branch) {
        self.enqueue(state, branch, 1, 0);
        self.dependency_started(state);
        self.set_status(state, StateStatus::Ready);
        self.publish_state(state, StateEvent::Ready);
    }

    fn set_status(&mut self, state: StateId, status: StateStatus) {
        self.states[state.index()].status = status;
        self.observer.set_state(state.index(), status);
    }

    fn publish_counts(&self) {
        let pending = self.ready.len() + self.joins.held_total() + self.deps.waiting();
        self.observer
            .set_counts(self.completed, self.running_count, pending);
    }

    /// Publishes an event of the run, stamped with the time of the step that led to it.
    fn publish(&mut self, kind: EventKind) {
        self.events.publish(self.now, kind);
    }

    /// Keeps an attempt of `state` that ended now in the run's history (a run with
    /// checkpoints only). `times`: its virtual start in the ready order, and its start.
    #[inline]
    fn log_attempt(
        &mut self,
        state: StateId,
        attempt: (u32, u32),
        (queued_at, started): (i64, Instant),
        how: impl FnOnce() -> (AttemptOutcome, Option<String>),
    ) {
        // (A run without checkpoints keeps no history, and builds nothing for it: one test
        // of a field, inlined where attempts end.)
        if self.history.is_some() {
            self.keep_attempt(state, attempt, (queued_at, started), how());
        }
    }

    /// The attempt `attempt` of `state`, starting now, first had to wait at a gate at `since`
    /// (a run with checkpoints keeps it for its timeline).
    fn note_gated(&mut self, state: StateId, attempt: (u32, u32), since: Instant) {
        if let Some(history) = self.history.as_deref_mut() {
            history.gated(state.index() as u32, attempt, since);
        }
    }

    #[inline(never)]
    fn keep_attempt(
        &mut self,
        state: StateId,
        attempt: (u32, u32),
        (queued_at, started): (i64, Instant),
        how: (AttemptOutcome, Option<String>),
    ) {
        let Some(history) = self.history.as_deref_mut() else {
            return;
        };
        let priority = self.compiled.states[state.index()].priority;
        let ready = self.ready.became_ready_at(queued_at, priority);
        history.ended(
            state.index() as u32,
            attempt,
            (ready, started),
            self.now,
            how,
        );
    }

    /// Publishes what happened to `state` (an event is built only for subscribers).
    fn publish_state(&mut self, state: StateId, event: StateEvent<'_>) {
        if self.events.is_observed() {
            self.events
                .publish_state(self.now, state, self.graph.name(state), event);
        }
    }

    fn no_progress(&self) -> FlowError {
        let mut waiting: Vec<String> = self
            .joins
            .held_states()
            .map(|s| format!("{} (held at a join)", self.graph.name(s)))
            .collect();
        waiting.sort();
        waiting.dedup();
        waiting.extend(self.blocked_states().into_iter().map(|blocked| {
            format!(
                "{} (waits for {})",
                blocked.state,
                blocked.waits_for.join(", ")
            )
        }));
        FlowError::NoProgress {
            agent: self.compiled.name.to_string(),
            waiting,
        }
    }
}

/// How an attempt ended, for the run's history, with its error.
fn attempt_outcome(outcome: &Outcome) -> (AttemptOutcome, Option<String>) {
    match outcome {
        Outcome::Finished(Ok(_)) => (AttemptOutcome::Completed, None),
        Outcome::Finished(Err(error)) => (AttemptOutcome::Failed, Some(error.to_string())),
        Outcome::Panicked(message) => (AttemptOutcome::Panicked, Some(message.clone())),
        Outcome::TimedOut(limit) => (
            AttemptOutcome::TimedOut,
            Some(format!("timed out after {limit:?}")),
        ),
        Outcome::Refused(error) => (AttemptOutcome::Refused, Some(error.to_string())),
    }
}

/// The key of a run that was given none: unique across processes (time, process, run id), so
/// that two processes' runs never share checkpoints in one store.
pub(crate) fn default_key(run_id: u64) -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{millis}-{}-{run_id}", std::process::id())
}

impl Drop for Coordinator {
    /// A coordinator that stops abnormally (its task aborted or its runtime shutting down)
    /// takes its states' tasks with it rather than leaving them running unaccounted for.
    fn drop(&mut self) {
        self.abort_running();
        if let Some(pool) = &self.compiled.pool {
            pool.forget_run(self.run_key);
        }
    }
}

/// Tells a state's circuit breaker how its attempt went. A refusal at admission (a full
/// bulkhead, ...) says nothing about the service behind the breaker: the permit is given back
/// unrecorded.
fn record_breaker(permit: Option<BreakerPermit>, outcome: &Outcome) {
    let Some(permit) = permit else { return };
    match outcome {
        Outcome::Finished(Ok(_)) => permit.record(true),
        Outcome::Finished(Err(_)) | Outcome::Panicked(_) | Outcome::TimedOut(_) => {
            permit.record(false)
        }
        Outcome::Refused(_) => drop(permit),
    }
}
