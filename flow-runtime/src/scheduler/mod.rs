//! The coordinator: one task per run that owns all scheduling state.
//!
//! States run as tokio tasks and report back over one channel; the coordinator is the only
//! code that touches the ready queue, the join bookkeeping and the per-state records, so none
//! of them needs a lock. State names never appear on this path: states are [`StateId`]s, and a
//! transition's name is resolved with one hash lookup.

mod admission;
mod control;
mod deps;
mod failures;
mod image;
mod joins;
mod ready;
mod task;
mod warnings;

pub use deps::BlockedState;
pub(crate) use image::{PendingCheckpoint, Restorable, SchedulerImage, check_fits};
pub(crate) use task::{Message, panic_message};

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
use crate::checkpoint::{CheckpointPolicy, CheckpointStore};
use crate::context::Context;
use crate::coordination::HeldUnits;
use crate::events::{Event, EventHub, EventKind};
use crate::failure::DeadLetter;
use crate::resilience::BreakerPermit;
use crate::resources::{Claimant, Grant, ResourcePool};
use crate::run::{Observer, RunControl, RunReport, RunWarning, StateReport};

use crate::state_fn::StateFuture;
use admission::GateVerdict;
use deps::{Dependencies, Origin};
use failures::Failure;
use joins::{Joins, ScopeId};
use ready::ReadyQueue;
use task::Outcome;

pub(crate) struct Coordinator {
    compiled: Arc<Compiled>,
    graph: Arc<StateGraph>,
    context: Context,
    observer: Arc<Observer>,
    events: EventHub,
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
    /// The state whose failure (with no handler) stopped the run, and its branch.
    failed_state: Option<(StateId, ScopeId)>,
    /// The highest checkpoint sequence this run saved (see `writer::save`).
    saved_sequence: Arc<std::sync::atomic::AtomicU64>,
}

struct Running {
    state: StateId,
    scope: ScopeId,
    attempt: u32,
    started: Instant,
    /// The task, when the state has one (a state whose body panicked when called has none).
    abort: Option<AbortHandle>,
    /// The state's circuit breaker's permission for this attempt, when it has a breaker.
    breaker: Option<BreakerPermit>,
    /// Tells this attempt's report from a late report of an attempt that used the slot before.
    ticket: u64,
    /// What it holds from the resource pool; given back when this is dropped.
    _grant: Option<Grant>,
    /// Its place in the ready order when it was granted, kept if it is preempted.
    queued_at: i64,
    /// The coordinator's own timer for the state's timeout (see `Message::StateDeadline`);
    /// stopped when the attempt ends.
    _deadline: Option<AbortOnDrop>,
    /// Units of coordination primitives it holds; given back when this is dropped.
    _held: Vec<HeldUnits>,
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
            saved_sequence: Arc::default(),
            ready: ReadyQueue::new(compiled.priority_aging).with_gates(&compiled.gates_together),
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
        };
        let info = crate::context::RunInfo {
            key: Arc::clone(&coordinator.durable_key),
            id: coordinator.observer.run_id,
            graph: Arc::clone(&coordinator.graph),
        };
        coordinator.context.set_run(info);
        coordinator
    }

    pub(crate) async fn run(self) -> RunReport {
        let span =
            tracing::info_span!("run", agent = %self.compiled.name, run_id = self.observer.run_id);
        self.drive().instrument(span).await
    }

    /// This run's key in checkpoint stores (a durable run's name), and the store and policy
    /// its automatic checkpoints follow, replacing the agent's.
    pub(crate) fn durable(
        &mut self,
        key: &str,
        checkpoints: Option<(Arc<dyn CheckpointStore>, CheckpointPolicy)>,
    ) {
        self.durable_key = Arc::from(key);
        self.context.set_run(crate::context::RunInfo {
            key: Arc::clone(&self.durable_key),
            id: self.observer.run_id,
            graph: Arc::clone(&self.graph),
        });
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
                scope,
                attempt,
            } => {
                self.retry_due(timer, state, scope, attempt);
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
            Message::PoolFreed | Message::GateDue => Ok(()),
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
            Message::CheckpointSaved(error) => {
                if let Some(writer) = &mut self.writer {
                    writer.busy = false;
                }
                if let Some(error) = error {
                    return Err(Stop::Failed(error));
                }
                if self.writer.as_ref().is_some_and(|w| w.dirty) {
                    self.checkpoint_due();
                }
                Ok(())
            }
        }
    }

    /// The one ready state, when nothing else runs: its first poll happens right here, and
    /// only if it does not finish at once does it move to a task of its own. Nothing else of
    /// this run can be delayed by that (there is nothing else), and a chain of quick states
    /// then costs no spawn and no channel hop per step.
    async fn run_solo(&mut self) -> Result<(), Stop> {
        // Cancellation and the deadline arrive as messages; a long chain must still see them.
        if let Ok(message) = self.inbox.try_recv() {
            self.handle(message)?;
            // The message may have paused the run or queued other states (some needing the
            // pool): then the main loop decides what starts.
            if self.paused || self.ready.len() != 1 || !self.head_needs_nothing() {
                return Ok(());
            }
        }
        // Yield to the tokio scheduler when this task's budget is spent, so that a long chain
        // of instant states does not starve other tasks on this worker.
        tokio::task::consume_budget().await;
        let Some(entry) = self.ready.pop() else {
            return Ok(());
        };
        self.dequeued(entry.seq());
        let (state, scope, attempt) = (entry.state, entry.scope, entry.attempt);
        self.max_concurrency = self.max_concurrency.max(1);
        self.now = Instant::now();
        let started = self.now;
        let span = self.begin(state, attempt);
        let breaker = match self.admit(state) {
            Ok(permit) => permit,
            Err(outcome) => {
                return self
                    .finish(state, scope, attempt, started, outcome)
                    .map_err(Stop::Failed);
            }
        };
        let context = self.state_context(state, attempt);
        let spec = &self.compiled.states[state.index()];
        let mut run = match task::start(&spec.func, &context) {
            Ok(run) => run,
            Err(outcome) => {
                record_breaker(breaker, &outcome);
                return self
                    .finish(state, scope, attempt, started, outcome)
                    .map_err(Stop::Failed);
            }
        };
        if spec.bulkhead.is_some() {
            // Waiting for a place must not happen here, on the coordinator.
            let holds = (None, Vec::new());
            self.launch(state, scope, attempt, started, run, breaker, holds, span);
            return Ok(());
        }
        let polled = {
            let _entered = span.enter();
            std::future::poll_fn(|cx| std::task::Poll::Ready(task::poll_once(&mut run, cx))).await
        };
        if let Some(threshold) = self.compiled.blocking_threshold {
            let held = Instant::now() - started;
            if held > threshold {
                self.report_blocking(state, held);
            }
        }
        match polled {
            Some(outcome) => {
                self.now = Instant::now();
                record_breaker(breaker, &outcome);
                let finished = self.finish(state, scope, attempt, started, outcome);
                self.publish_counts();
                finished.map_err(Stop::Failed)
            }
            None => {
                let holds = (None, Vec::new());
                self.launch(state, scope, attempt, started, run, breaker, holds, span);
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

    /// Starts ready states while slots are free.
    fn dispatch(&mut self) {
        if self.ready.is_empty() {
            return;
        }
        // Retries, resumes and cancellations arrive without a fresh clock reading.
        self.now = Instant::now();
        while self.running_count < self.compiled.max_concurrent {
            self.release_gates();
            // The head of the queue goes first: if the pool cannot grant it yet, nothing behind
            // it starts either (so a large request is not starved by small ones).
            let grant = match self.grant_for_head() {
                Ok(grant) => grant,
                Err(()) if self.preempt_for_head() => match self.grant_for_head() {
                    Ok(grant) => grant,
                    Err(()) => break,
                },
                Err(()) => break,
            };
            let Some(entry) = self.ready.pop() else { break };
            let entry = match self.through_gates(entry) {
                GateVerdict::Admitted(entry, held) => (entry, held),
                // Its grant, if any, goes back as it drops: others may use it meanwhile.
                GateVerdict::Waiting => continue,
                GateVerdict::Refused(entry, error) => {
                    self.dequeued(entry.seq());
                    let (state, scope, attempt) = (entry.state, entry.scope, entry.attempt);
                    let _span = self.begin(state, attempt);
                    self.launch_outcome(state, scope, attempt, Outcome::Refused(error));
                    continue;
                }
            };
            let (entry, held) = entry;
            self.dequeued(entry.seq());
            let (state, scope, attempt) = (entry.state, entry.scope, entry.attempt);
            let grant = grant.map(|grant| (grant, entry.virtual_start()));
            let span = self.begin(state, attempt);
            let breaker = match self.admit(state) {
                Ok(permit) => permit,
                Err(outcome) => {
                    // An open breaker fails the attempt without calling the state.
                    self.launch_outcome(state, scope, attempt, outcome);
                    continue;
                }
            };
            let context = self.state_context(state, attempt);
            match task::start(&self.compiled.states[state.index()].func, &context) {
                Ok(run) => {
                    let holds = (grant, held);
                    self.launch(state, scope, attempt, self.now, run, breaker, holds, span)
                }
                Err(outcome) => {
                    // The body panicked before it produced a future: report it like any panic.
                    record_breaker(breaker, &outcome);
                    self.launch_outcome(state, scope, attempt, outcome);
                }
            }
        }
        self.max_concurrency = self.max_concurrency.max(self.running_count);
        self.arm_gate_timer();
    }

    /// Records that `state` starts attempt `attempt` now; returns the span it is traced in.
    fn begin(&mut self, state: StateId, attempt: u32) -> tracing::Span {
        let now = self.now;
        let record = &mut self.states[state.index()];
        if attempt == 1 {
            record.runs = record.runs.saturating_add(1);
            self.dependency_began(state);
        }
        let record = &mut self.states[state.index()];
        record.attempts = attempt;
        record.status = StateStatus::Running;
        record.first_started.get_or_insert(now);
        let run = record.runs;
        self.observer.set_state(state.index(), StateStatus::Running);
        if self.events.is_observed() {
            let name = Arc::clone(self.graph.name(state));
            self.publish(EventKind::StateStarted {
                state: name,
                run,
                attempt,
            });
        }
        tracing::debug_span!("state", state = %self.graph.name(state), run, attempt)
    }

    /// The context handle a state's attempt is given (which state, attempt and visit).
    fn state_context(&self, state: StateId, attempt: u32) -> Context {
        self.context
            .for_state(state, attempt, self.states[state.index()].runs)
    }

    /// A free slot for a running attempt, and a ticket no earlier attempt had.
    fn take_slot(&mut self) -> (u32, u64) {
        self.next_ticket += 1;
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.running.push(None);
                (self.running.len() - 1) as u32
            }
        };
        (slot, self.next_ticket)
    }

    /// Queues a state for attempt `attempt`; if it needs resources and has an acquisition
    /// timeout, arms a deadline for the wait.
    fn enqueue(&mut self, state: StateId, scope: ScopeId, attempt: u32) {
        let spec = &self.compiled.states[state.index()];
        let seq = self
            .ready
            .push(state, scope, attempt, spec.priority, self.now);
        self.arm_acquire_deadline(state, seq);
    }

    /// If `state` needs resources and has an acquisition timeout, arms a deadline for the wait
    /// of its queue entry `seq`.
    fn arm_acquire_deadline(&mut self, state: StateId, seq: u64) {
        let spec = &self.compiled.states[state.index()];
        if let (Some(limit), true) = (
            spec.acquire_timeout,
            spec.needs != [0; 5] || !spec.gates.is_empty(),
        ) {
            let timer = self.message_after(limit, Message::AcquireDeadline { seq });
            self.deadlines.insert(seq, timer);
        }
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
    fn requeue(&mut self, state: StateId, scope: ScopeId, attempt: u32, virtual_start: i64) {
        let seq = self.ready.push_at(state, scope, attempt, virtual_start);
        self.arm_acquire_deadline(state, seq);
        self.set_status(state, StateStatus::Ready);
    }

    /// Starts the writer of automatic checkpoints, and the timer of interval ones.
    fn start_checkpoints(&mut self) {
        let Some((store, policy)) = &self.checkpoints else {
            return;
        };
        if !policy.is_active() {
            return;
        }
        self.writer = Some(Writer::start(
            Arc::clone(store),
            policy.keep,
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
    fn checkpoint_due(&mut self) {
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
    async fn finish_checkpoints(&mut self, stop: Option<Stop>) -> Option<Stop> {
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
            None => flow_core::AgentStatus::Completed,
            Some(Stop::Cancelled) => flow_core::AgentStatus::Cancelled,
            Some(Stop::TimedOut(_)) => flow_core::AgentStatus::Failed,
            Some(Stop::Failed(_)) => match self.failed_state.take() {
                Some((state, scope)) => {
                    self.now = Instant::now();
                    let at = self.ready.clock(self.now);
                    self.requeue(state, scope, 1, at);
                    flow_core::AgentStatus::Failed
                }
                None => return stop,
            },
        };
        let pending = self.capture(status);
        match writer::save(
            store,
            pending,
            policy.keep,
            Arc::clone(&self.saved_sequence),
        )
        .await
        {
            Ok(_) => stop,
            Err(error) => Some(Stop::Failed(error)),
        }
    }

    /// Tells a shared pool that `state` of this run no longer waits for it.
    fn forget_wait(&self, state: StateId) {
        if let Some(pool) = &self.compiled.pool {
            pool.forget_wait(self.run_key, self.graph.name(state));
        }
    }

    /// A ready entry leaves the queue to start: its deadline, if any, is off.
    fn dequeued(&mut self, seq: u64) {
        if self.deadlines.is_empty() {
            return;
        }
        if let Some(timer) = self.deadlines.remove(&seq) {
            timer.abort();
        }
    }

    /// A ready state waited for the pool past its acquisition timeout: the attempt fails.
    fn acquire_deadline(&mut self, seq: u64) -> Result<(), FlowError> {
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

    /// Whether the next ready state needs nothing from the pool (so it may run inline).
    /// Whether the next ready state may be polled on the coordinator: it needs nothing from
    /// the pool, and no timeout depends on the coordinator staying free (a state that blocks
    /// its thread there would hold the run's and its own deadline back).
    fn head_needs_nothing(&self) -> bool {
        self.compiled.timeout.is_none()
            && self.ready.peek().is_some_and(|head| {
                let spec = &self.compiled.states[head.state.index()];
                spec.needs == [0; 5] && spec.timeout.is_none() && spec.gates.is_empty()
            })
    }

    /// Asks the pool for what the next ready state needs. `Err` when it must wait: the pool
    /// will send `PoolFreed` when something is given back.
    fn grant_for_head(&self) -> Result<Option<Grant>, ()> {
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
    fn preempt_for_head(&mut self) -> bool {
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

    /// Asks the state's circuit breaker, if it has one, to let an attempt through.
    fn admit(&self, state: StateId) -> Result<Option<BreakerPermit>, Outcome> {
        match &self.compiled.states[state.index()].breaker {
            None => Ok(None),
            Some(breaker) => breaker
                .try_acquire()
                .map(Some)
                .map_err(Outcome::CircuitOpen),
        }
    }

    /// Runs a started state's future as a task of its own.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &mut self,
        state: StateId,
        scope: ScopeId,
        attempt: u32,
        started: Instant,
        run: StateFuture,
        mut breaker: Option<BreakerPermit>,
        (grant, held): (Option<(Grant, i64)>, Vec<HeldUnits>),
        span: tracing::Span,
    ) {
        let (slot, ticket) = self.take_slot();
        let spec = &self.compiled.states[state.index()];
        let (limit, link) = (spec.timeout, Arc::clone(&self.link));
        let task = match &spec.bulkhead {
            None => {
                let attempt = task::plain(run);
                tokio::spawn(task::supervise(attempt, limit, slot, ticket, link).instrument(span))
            }
            Some(bulkhead) => {
                // The timeout covers the call, not the wait for a place (see `task::guarded`).
                let attempt = task::guarded(run, bulkhead.clone(), breaker.take(), limit);
                tokio::spawn(task::supervise(attempt, None, slot, ticket, link).instrument(span))
            }
        };
        let abort = Some(task.abort_handle());
        let hold_timer = if held.is_empty() {
            None
        } else {
            self.holding(state, slot, ticket, task.id(), &held)
        };
        // The task's own timeout cannot fire while its state blocks the thread or never
        // yields: the coordinator keeps a timer too, and fails the attempt on time whatever
        // the state does (its task is abandoned). Not for a bulkhead state, whose timeout
        // starts once it has a place.
        let deadline = match (limit, &spec.bulkhead) {
            (Some(limit), None) => Some(AbortOnDrop(self.message_after(
                limit,
                Message::StateDeadline {
                    slot,
                    ticket,
                    limit,
                },
            ))),
            _ => None,
        };
        self.running[slot as usize] = Some(Running {
            state,
            scope,
            attempt,
            started,
            abort,
            breaker,
            ticket,
            queued_at: grant.as_ref().map_or(0, |(_, at)| *at),
            _grant: grant.map(|(grant, _)| grant),
            _deadline: deadline,
            _held: held,
            _hold_timer: hold_timer,
        });
        self.running_count += 1;
    }

    /// Accounts for a state that ended as it started, through the same channel as the rest.
    fn launch_outcome(&mut self, state: StateId, scope: ScopeId, attempt: u32, outcome: Outcome) {
        let (slot, ticket) = self.take_slot();
        let started = self.now;
        self.running[slot as usize] = Some(Running {
            state,
            scope,
            attempt,
            started,
            abort: None,
            breaker: None,
            ticket,
            _grant: None,
            queued_at: 0,
            _deadline: None,
            _held: Vec::new(),
            _hold_timer: None,
        });
        self.running_count += 1;
        let _ = self.sender.send(Message::Done {
            slot,
            ticket,
            outcome,
        });
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
            scope,
            attempt,
            started,
            breaker,
            ..
        }) = entry.take()
        else {
            return Ok(());
        };
        self.free_slots.push(slot);
        self.running_count -= 1;
        record_breaker(breaker, &outcome);
        self.finish(state, scope, attempt, started, outcome)
    }

    /// Records how a state's attempt ended and routes its branch: on, to a retry, to its
    /// `on_error` handler, or to the run's failure.
    fn finish(
        &mut self,
        state: StateId,
        scope: ScopeId,
        attempt: u32,
        started: Instant,
        outcome: Outcome,
    ) -> Result<(), FlowError> {
        self.transitions = self.transitions.saturating_add(1);
        let now = self.now;
        let duration = now - started;
        let record = &mut self.states[state.index()];
        record.total_time = record.total_time.saturating_add(duration);
        record.last_finished = Some(now);
        match outcome {
            Outcome::Finished(Ok(next)) => {
                self.set_status(state, StateStatus::Completed);
                self.completed = self.completed.saturating_add(1);
                tracing::debug!(state = %self.graph.name(state), ?duration, "state completed");
                if self.events.is_observed() {
                    let state = Arc::clone(self.graph.name(state));
                    self.publish(EventKind::StateCompleted { state, duration });
                }
                // Recorded before the branch moves (a join it releases sees it), announced to
                // waiting dependents after (so an arriving transition takes precedence over a
                // state starting by itself).
                self.dependency_completed(state);
                let completions = &mut self.completions[state.index()];
                *completions = completions.saturating_add(1);
                self.route(state, scope, next)?;
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
                self.attempt_failed(state, scope, attempt, Failure::Error(cause))
            }
            Outcome::Panicked(message) => {
                self.attempt_failed(state, scope, attempt, Failure::Panic(message))
            }
            Outcome::TimedOut(limit) => {
                self.attempt_failed(state, scope, attempt, Failure::Timeout(limit))
            }
            Outcome::CircuitOpen(retry_in) => {
                self.attempt_failed(state, scope, attempt, Failure::CircuitOpen(retry_in))
            }
            Outcome::BulkheadFull(full) => {
                self.attempt_failed(state, scope, attempt, Failure::BulkheadFull(full))
            }
            Outcome::Refused(error) => {
                self.attempt_failed(state, scope, attempt, Failure::Refused(error))
            }
        }
    }

    fn route(&mut self, from: StateId, scope: ScopeId, next: Next) -> Result<(), FlowError> {
        let graph = Arc::clone(&self.graph);
        match next {
            Next::End => self.joins.end(&graph, scope, from),
            Next::To(target) => {
                let to = self.resolve(from, &target)?;
                self.arrived(to);
                self.joins.goto(&graph, scope, from, to);
            }
            Next::Parallel(targets) => {
                let targets = targets
                    .iter()
                    .map(|target| self.resolve(from, target))
                    .collect::<Result<Vec<_>, _>>()?;
                for &target in &targets {
                    self.arrived(target);
                }
                self.joins.fork(&graph, scope, from, &targets);
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
    fn new_branch(&mut self, state: StateId) -> ScopeId {
        self.arrived(state);
        self.joins.spawn()
    }

    /// Moves what the join bookkeeping decided into the ready queue and the statuses.
    fn absorb_joins(&mut self) {
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
            if self.events.is_observed() {
                self.publish(EventKind::StateBlocked {
                    state: Arc::clone(self.graph.name(state)),
                });
            }
        }
        self.joins.blocked = blocked;
        let mut released = std::mem::take(&mut self.joins.released);
        self.note_incoming(&released, true);
        for (state, scope) in released.drain(..) {
            self.note_incoming(&[(state, scope)], false);
            self.arrive(state, Origin::Branch(scope));
        }
        // The gate may have sent a failed state's branch on to its handler meanwhile.
        released.append(&mut self.joins.released);
        self.joins.released = released;
        if !self.joins.released.is_empty() || !self.joins.blocked.is_empty() {
            self.absorb_joins();
        }
    }

    /// Queues a state's first attempt (it passed the dependency gate).
    fn make_ready(&mut self, state: StateId, scope: ScopeId) {
        self.enqueue(state, scope, 1);
        self.dependency_started(state);
        self.set_status(state, StateStatus::Ready);
        if self.events.is_observed() {
            self.publish(EventKind::StateReady {
                state: Arc::clone(self.graph.name(state)),
            });
        }
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

    fn publish(&self, kind: EventKind) {
        if self.events.is_observed() {
            self.events.publish(Event {
                run_id: self.observer.run_id,
                at: Instant::now(),
                kind,
            });
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

/// Tells a state's circuit breaker how its attempt went. A full bulkhead says nothing about
/// the service behind the breaker: the permit is given back unrecorded.
fn record_breaker(permit: Option<BreakerPermit>, outcome: &Outcome) {
    let Some(permit) = permit else { return };
    match outcome {
        Outcome::Finished(Ok(_)) => permit.record(true),
        Outcome::Finished(Err(_)) | Outcome::Panicked(_) | Outcome::TimedOut(_) => {
            permit.record(false)
        }
        Outcome::CircuitOpen(_) | Outcome::BulkheadFull(_) | Outcome::Refused(_) => drop(permit),
    }
}
