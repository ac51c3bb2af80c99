//! The builder: an agent is a workflow definition that can be run many times.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use flow_core::{
    AgentStatus, DependencyType, FlowError, Next, Priority, ResourceRequirements, RetryPolicy,
    StateGraph, StateId, StateSpec, StateStatus,
};
use tokio::sync::mpsc::unbounded_channel;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{Checkpoint, CheckpointPolicy, CheckpointStore};
use crate::context::Context;
use crate::coordination::Gate;
use crate::dependency::DependencyConfig;
use crate::events::{EventHub, EventStream, RunEvents};
use crate::failure::{DEAD_LETTER_CAPACITY, DeadLetter};
use crate::resilience::{Bulkhead, CircuitBreaker};
use crate::resources::{Amounts, ResourcePool, amounts};
use crate::run::{Observer, RunControl, RunCounts, RunHandle, RunReport};
use crate::scheduler::Coordinator;
use crate::scheduler::{Restorable, check_fits};
use crate::state_fn::{BoxError, FnState, StateFn, StateResult};

/// Events kept for a subscriber that has not read them yet, unless set otherwise.
pub const DEFAULT_EVENT_CAPACITY: usize = 4096;

/// How long a ready state waits before it goes ahead of states one priority level above it.
pub const DEFAULT_PRIORITY_AGING: Duration = Duration::from_secs(1);

/// The largest event buffer [`Agent::event_capacity`] accepts (each slot is allocated when the
/// first subscriber subscribes).
pub const MAX_EVENT_CAPACITY: usize = 1 << 20;

/// A workflow: named async states, the options of each, and the run-wide options.
///
/// An `Agent` is a definition: [`Agent::run`] may be called many times, also concurrently
/// (a workflow per request); each run has its own context, status and report. Clones share the
/// definition, the event subscriptions and the view of the latest run; changing a clone's
/// definition (adding a state, setting an option) affects that clone only.
///
/// The graph is validated when a run starts (or by [`Agent::validate`]): duplicate names,
/// unknown entry states and unknown declared successors are each a [`FlowError`] naming them.
///
/// ```
/// use flow_core::{FlowError, Next};
/// use flow_runtime::{Agent, Context};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), FlowError> {
/// let mut agent = Agent::new("greeter");
/// agent.add_state("greet", |ctx: Context| async move {
///     ctx.set_state("greeting", "Hello, World!".to_string());
///     Ok(Next::to("shout"))
/// });
/// agent.add_state("shout", |ctx: Context| async move {
///     let greeting: String = ctx.get_state("greeting")?;
///     ctx.set_state("greeting", greeting.to_uppercase());
///     Ok(Next::End)
/// });
/// let report = agent.run().await?;
/// assert_eq!(report.context.get_state::<String>("greeting")?, "HELLO, WORLD!");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Agent {
    definition: Arc<Definition>,
    shared: Arc<AgentShared>,
    events: EventHub,
}

struct AgentShared {
    latest: Mutex<Option<RunControl>>,
    next_run_id: AtomicU64,
    dead_letters: Mutex<VecDeque<DeadLetter>>,
}

#[derive(Clone)]
struct Definition {
    name: Arc<str>,
    states: Vec<StateDef>,
    entries: Vec<String>,
    max_concurrent: Option<usize>,
    timeout: Option<Duration>,
    cleanup_timeout: Duration,
    strict_joins: bool,
    blocking_threshold: Option<Duration>,
    default_retry: RetryPolicy,
    pool: Option<ResourcePool>,
    priority_aging: Duration,
    checkpoints: Option<(Arc<dyn CheckpointStore>, CheckpointPolicy)>,
    compiled: OnceLock<Result<Arc<Compiled>, FlowError>>,
}

#[derive(Clone)]
struct StateDef {
    spec: StateSpec,
    func: Arc<dyn StateFn>,
    priority: Priority,
    timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
    breaker: Option<CircuitBreaker>,
    bulkhead: Option<Bulkhead>,
    /// Coordination primitives it passes before it starts, with the amount it asks for.
    gates: Vec<(Gate, u64)>,
    /// Problems found while the state was declared, reported when the definition is
    /// validated (as for retry policies).
    declared_problems: Vec<FlowError>,
    resources: ResourceRequirements,
    acquire_timeout: Option<Duration>,
    preemptible: bool,
    dependencies: Vec<(String, DependencyConfig)>,
}

/// A validated definition, shared by every run started from it.
pub(crate) struct Compiled {
    pub(crate) name: Arc<str>,
    pub(crate) graph: Arc<StateGraph>,
    pub(crate) states: Box<[CompiledState]>,
    pub(crate) max_concurrent: usize,
    pub(crate) timeout: Option<Duration>,
    pub(crate) cleanup_timeout: Duration,
    /// An ambiguous join fails the run rather than being guessed.
    pub(crate) strict_joins: bool,
    /// Polls of a state longer than this are reported (see [`Agent::warn_blocking`]).
    pub(crate) blocking_threshold: Option<Duration>,
    /// The pool states draw from; `None` when no state needs anything.
    pub(crate) pool: Option<ResourcePool>,
    /// Every distinct rate limit the states use (a state names them by index).
    pub(crate) gates: Box<[Gate]>,
    /// For each gate, whether its waiters all ask at once when it wakes (see
    /// `ReadyQueue::with_gates`).
    pub(crate) gates_together: Box<[bool]>,
    pub(crate) priority_aging: Duration,
    /// Where runs write automatic checkpoints, and when.
    pub(crate) checkpoints: Option<(Arc<dyn CheckpointStore>, CheckpointPolicy)>,
    /// What a checkpoint of this definition is stamped with (see `checkpoint::fingerprint`),
    /// computed the first time one is taken or restored.
    fingerprint: OnceLock<u64>,
    /// For each state, the states that depend on it.
    pub(crate) dependents: Box<[Box<[StateId]>]>,
    /// The states that start by themselves once their dependencies let them (see
    /// [`DependencyConfig`]).
    pub(crate) self_starting: Box<[StateId]>,
}

impl Compiled {
    /// The definition's fingerprint (see `checkpoint::fingerprint`).
    pub(crate) fn fingerprint(&self) -> u64 {
        *self
            .fingerprint
            .get_or_init(|| crate::checkpoint::fingerprint(&self.graph))
    }
}

/// One dependency of a compiled state.
pub(crate) struct CompiledDependency {
    pub(crate) on: StateId,
    pub(crate) config: DependencyConfig,
}

pub(crate) struct CompiledState {
    pub(crate) func: Arc<dyn StateFn>,
    pub(crate) priority: Priority,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: RetryPolicy,
    pub(crate) breaker: Option<CircuitBreaker>,
    pub(crate) bulkhead: Option<Bulkhead>,
    /// What the state needs from the pool, in exact units (all zero: nothing).
    pub(crate) needs: Amounts,
    /// How long it may wait for the pool before the attempt fails.
    pub(crate) acquire_timeout: Option<Duration>,
    /// Whether a higher-priority state of its run may stop it to take its resources.
    pub(crate) preemptible: bool,
    /// Its admission gates (indexes into [`Compiled::gates`]) and the amount it asks of
    /// each, asked in this order.
    pub(crate) gates: Box<[(usize, u64)]>,
    /// What it waits for before it starts.
    pub(crate) dependencies: Box<[CompiledDependency]>,
}

impl Agent {
    /// An empty workflow with this name.
    pub fn new(name: impl Into<String>) -> Self {
        let name: String = name.into();
        Self {
            definition: Arc::new(Definition {
                name: Arc::from(name),
                states: Vec::new(),
                entries: Vec::new(),
                max_concurrent: None,
                timeout: None,
                cleanup_timeout: Duration::ZERO,
                strict_joins: false,
                blocking_threshold: None,
                default_retry: RetryPolicy::NONE,
                pool: None,
                priority_aging: DEFAULT_PRIORITY_AGING,
                checkpoints: None,
                compiled: OnceLock::new(),
            }),
            shared: Arc::new(AgentShared {
                latest: Mutex::new(None),
                next_run_id: AtomicU64::new(0),
                dead_letters: Mutex::new(VecDeque::new()),
            }),
            events: EventHub::new(DEFAULT_EVENT_CAPACITY),
        }
    }

    /// The workflow's name.
    pub fn name(&self) -> &str {
        &self.definition.name
    }

    /// The names of its states, in the order they were added.
    pub fn state_names(&self) -> Vec<&str> {
        self.definition
            .states
            .iter()
            .map(|s| s.spec.name.as_str())
            .collect()
    }

    fn definition_mut(&mut self) -> &mut Definition {
        let definition = Arc::make_mut(&mut self.definition);
        definition.compiled = OnceLock::new();
        definition
    }

    /// Adds a state: `body` is an async function or closure that takes the run's [`Context`] and
    /// returns a [`StateResult`] — `Ok(Next::to("b"))`, with no type annotation. `?` converts
    /// every `std::error::Error + Send + Sync` type (a thiserror enum, [`FlowError`], ...) and
    /// `anyhow::Error` into its [`BoxError`]; `Err("message".into())` works too. The original
    /// error stays reachable through [`flow_core::StateError::downcast_ref`]. Returns the
    /// state's options. (For a body that returns its own error type, see
    /// [`Agent::add_state_with_error`].)
    ///
    /// States may be added in a loop (a dynamic workflow); names are checked when a run starts.
    pub fn add_state<F, Fut>(&mut self, name: impl Into<String>, body: F) -> StateOptions<'_>
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = StateResult> + Send + 'static,
    {
        self.add_state_with_error(name, body)
    }

    /// [`Agent::add_state`] for a body that uses shared data (a client, a model, a pool): the
    /// body gets its own handle to `shared` with each call, so it needs no clone-per-state
    /// boilerplate.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use flow_core::Next;
    /// # use flow_runtime::Agent;
    /// struct Llm { model: String }
    /// let llm = Arc::new(Llm { model: "small".into() });
    /// let mut agent = Agent::new("answer");
    /// agent.add_state_with("ask", Arc::clone(&llm), |llm, ctx| async move {
    ///     ctx.set_state("model", llm.model.clone());
    ///     Ok(Next::End)
    /// });
    /// ```
    pub fn add_state_with<S, F, Fut>(
        &mut self,
        name: impl Into<String>,
        shared: Arc<S>,
        body: F,
    ) -> StateOptions<'_>
    where
        S: Send + Sync + 'static + ?Sized,
        F: Fn(Arc<S>, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = StateResult> + Send + 'static,
    {
        self.add_state(name, move |ctx| body(Arc::clone(&shared), ctx))
    }

    /// [`Agent::add_state`] for a body returning `Result<Next, E>` with an error type of its
    /// own: any `E` that converts into [`BoxError`] — every `std::error::Error + Send + Sync`
    /// type, `anyhow::Error`, `String`. (A plain `Box<dyn Error>` is not `Send`, so it cannot
    /// leave the state's task: add `+ Send + Sync`.)
    pub fn add_state_with_error<F, Fut, E>(
        &mut self,
        name: impl Into<String>,
        body: F,
    ) -> StateOptions<'_>
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Next, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let definition = self.definition_mut();
        definition.states.push(StateDef {
            spec: StateSpec::new(name),
            func: Arc::new(FnState(body)),
            priority: Priority::Normal,
            timeout: None,
            retry: None,
            breaker: None,
            bulkhead: None,
            gates: Vec::new(),
            declared_problems: Vec::new(),
            resources: ResourceRequirements::NONE,
            acquire_timeout: None,
            preemptible: false,
            dependencies: Vec::new(),
        });
        let state = definition
            .states
            .last_mut()
            .expect("a state was just pushed");
        StateOptions { state }
    }

    /// Makes `state` an entry state (in addition to states marked with
    /// [`StateOptions::entry`]). Without any entry, the first state added is the entry.
    pub fn set_entry(&mut self, state: impl Into<String>) -> &mut Self {
        self.definition_mut().entries.push(state.into());
        self
    }

    /// At most this many states run at once (default: unlimited). Must be at least 1.
    pub fn max_concurrent(&mut self, limit: usize) -> &mut Self {
        self.definition_mut().max_concurrent = Some(limit);
        self
    }

    /// A run that takes longer than this fails with [`FlowError::RunTimedOut`] and its running
    /// states are aborted.
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.definition_mut().timeout = Some(timeout);
        self
    }

    /// How long running states get to finish, after the run's context is cancelled, when the
    /// run stops (it failed, was cancelled or timed out) before they are aborted. Default zero:
    /// abort at once. States see the cancellation through [`Context::cancelled`].
    pub fn cleanup_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.definition_mut().cleanup_timeout = timeout;
        self
    }

    /// Whether an ambiguous join fails the run (default `false`).
    ///
    /// Without declared successors the scheduler cannot always tell which of two joins comes
    /// first: when every branch of a fork is held, at states that may each lead to another, it
    /// releases the set held last and reports a [`RunWarning::AmbiguousJoin`](crate::RunWarning)
    /// (and a `tracing` warning). With `strict_joins(true)` the run fails with
    /// [`FlowError::AmbiguousJoin`] instead, naming the states whose successors to declare.
    pub fn strict_joins(&mut self, strict: bool) -> &mut Self {
        self.definition_mut().strict_joins = strict;
        self
    }

    /// Reports a state that holds its thread for longer than `threshold` in one poll (a
    /// blocking call, or a loop that never yields): a [`RunWarning::BlockingState`] in the
    /// report and a `tracing` warning naming the state, which should run such work with
    /// `tokio::task::spawn_blocking`. Off by default: it reads the clock around every poll of
    /// every state (about 50 ns each). One to two seconds is a usual threshold.
    ///
    /// [`RunWarning::BlockingState`]: crate::RunWarning::BlockingState
    pub fn warn_blocking(&mut self, threshold: Duration) -> &mut Self {
        self.definition_mut().blocking_threshold = Some(threshold);
        self
    }

    /// The pool this agent's states draw from (clone one pool into several agents to share it).
    /// Without one, a workflow whose states need resources gets [`ResourcePool::detect`]'s pool,
    /// one per agent.
    pub fn resource_pool(&mut self, pool: ResourcePool) -> &mut Self {
        self.definition_mut().pool = Some(pool);
        self
    }

    /// Makes every run write checkpoints to `store` as `policy` says (after each completed
    /// state, every interval, or both), off the scheduler. When a run ends it writes a last
    /// one: `Completed`; `Cancelled` or `Failed` with what was running due again; `Failed` with
    /// a failed state due again (see [`Agent::run_durable`]). A save that fails fails the run.
    /// A policy that asks for no checkpoint is [`FlowError::InvalidConfig`] when the run
    /// starts. See [`CheckpointPolicy`].
    pub fn checkpoints(
        &mut self,
        store: impl CheckpointStore,
        policy: CheckpointPolicy,
    ) -> &mut Self {
        self.definition_mut().checkpoints = Some((Arc::new(store), policy));
        self
    }

    /// How long a ready state waits before it goes ahead of states one priority level above it
    /// that became ready after it (default [`DEFAULT_PRIORITY_AGING`]): no state waits forever
    /// behind a stream of higher-priority work.
    pub fn priority_aging(&mut self, aging: Duration) -> &mut Self {
        self.definition_mut().priority_aging = aging;
        self
    }

    /// The retry policy of every state that sets none of its own (default:
    /// [`RetryPolicy::NONE`], no retries).
    pub fn default_retry(&mut self, policy: RetryPolicy) -> &mut Self {
        self.definition_mut().default_retry = policy;
        self
    }

    /// How many events a subscriber may fall behind before it misses some (default
    /// [`DEFAULT_EVENT_CAPACITY`], at least 1, at most [`MAX_EVENT_CAPACITY`]), rounded up to
    /// the next power of two (the broadcast ring's size: `event_capacity(5)` keeps 8 events).
    /// Set it before subscribing: subscriptions made earlier, and
    /// clones made earlier, keep the previous channel.
    pub fn event_capacity(&mut self, capacity: usize) -> &mut Self {
        self.events = EventHub::new(capacity.clamp(1, MAX_EVENT_CAPACITY));
        self
    }

    /// Checks the definition without running it.
    pub fn validate(&self) -> Result<(), FlowError> {
        self.compiled().map(|_| ())
    }

    /// The validated graph of states.
    pub fn graph(&self) -> Result<Arc<StateGraph>, FlowError> {
        self.compiled().map(|c| Arc::clone(&c.graph))
    }

    pub(crate) fn compiled(&self) -> Result<Arc<Compiled>, FlowError> {
        self.definition
            .compiled
            .get_or_init(|| compile(&self.definition))
            .clone()
    }

    /// Subscribes to the events of every run of this agent (and its clones) from now on.
    pub fn subscribe(&self) -> EventStream {
        self.events.subscribe()
    }

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
        // Subscribed before the launch, so that not even the first event is missed.
        let events = self.events.subscribe();
        let handle = self.launch(context, None, None)?;
        let finished = handle.control.observer.finished.clone();
        let events = RunEvents::new(events, handle.run_id(), finished);
        Ok((handle, events))
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
    /// running the same key again continues from there.
    pub async fn run_durable(
        &self,
        store: impl CheckpointStore,
        key: &str,
    ) -> Result<RunReport, FlowError> {
        self.run_durable_arc(Arc::new(store), key).await
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
        let compiled = self.compiled()?;
        let latest = {
            let (store, agent, key) = (
                Arc::clone(&store),
                compiled.name.to_string(),
                key.to_owned(),
            );
            tokio::task::spawn_blocking(move || store.latest(&agent, &key))
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
        let handle = match latest {
            Some(checkpoint) if checkpoint.status == AgentStatus::Completed => {
                let _checked = check_fits(&checkpoint, &compiled)?;
                return RunReport::from_checkpoint(checkpoint);
            }
            Some(mut checkpoint) => {
                let checked = check_fits(&checkpoint, &compiled)?;
                let context = Context::from_checkpoint(std::mem::take(&mut checkpoint.context))?;
                self.launch(
                    context,
                    Some((&checkpoint, checked)),
                    Some((key, store, policy)),
                )?
            }
            None => self.launch(Context::new(), None, Some((key, store, policy)))?,
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
        durable: Option<(&str, Arc<dyn CheckpointStore>, CheckpointPolicy)>,
    ) -> Result<RunHandle, FlowError> {
        let compiled = self.compiled()?;
        // Quotas may have changed since the definition was validated: a request above one
        // would wait forever, so it is an error now.
        check_requests(&self.definition, compiled.pool.as_ref())?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| FlowError::NoRuntime {
            agent: self.name().to_owned(),
        })?;
        let run_id = self.shared.next_run_id.fetch_add(1, Ordering::Relaxed) + 1;
        let observer = Arc::new(Observer::new(
            run_id,
            Arc::clone(&compiled.graph),
            Arc::clone(&compiled.name),
        ));
        observer.set_status(AgentStatus::Running);
        let (sender, inbox) = unbounded_channel();
        let control = RunControl {
            observer,
            cancel: CancellationToken::new(),
            sender,
            halted: Arc::default(),
        };
        *self
            .shared
            .latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(control.clone());
        let (report_tx, report_rx) = oneshot::channel();
        let mut coordinator = Coordinator::new(
            Arc::clone(&compiled),
            context,
            control.clone(),
            inbox,
            self.events.clone(),
        );
        let run_key: Arc<str> = match (&durable, &checkpoint) {
            (Some((key, _, _)), _) => Arc::from(*key),
            (None, Some((checkpoint, _))) => Arc::from(checkpoint.run_key.as_str()),
            (None, None) => Arc::from(crate::scheduler::default_key(run_id)),
        };
        coordinator.durable(&run_key, durable.map(|(_, store, policy)| (store, policy)));
        if let Some((checkpoint, checked)) = checkpoint {
            coordinator.continue_from(checkpoint, checked);
        }
        let shared = Arc::clone(&self.shared);
        // Fires when the coordinator is done, also if it panicked: per-run event streams end.
        let finished = control.observer.finished.clone().drop_guard();
        runtime.spawn(async move {
            let _finished = finished;
            let report = coordinator.run().await;
            if !report.dead_letters.is_empty() {
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
        });
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

/// The options of one state, returned by [`Agent::add_state`].
pub struct StateOptions<'a> {
    state: &'a mut StateDef,
}

impl StateOptions<'_> {
    /// Which ready state starts first when slots are short (default `Normal`).
    pub fn priority(self, priority: Priority) -> Self {
        self.state.priority = priority;
        self
    }

    /// A run of this state that takes longer fails with [`FlowError::StateTimedOut`] and status
    /// `Timeout`.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.state.timeout = Some(timeout);
        self
    }

    /// How this state is retried when an attempt fails (returns an error, panics or times out):
    /// see [`RetryPolicy`]. Without one, the agent's [`Agent::default_retry`] applies.
    pub fn retry(self, policy: RetryPolicy) -> Self {
        self.state.retry = Some(policy);
        self
    }

    /// What this state needs from the agent's resource pool: it starts only when the pool can
    /// grant all of it at once, and gives it back when its attempt ends, however it ends.
    pub fn resources(self, needs: ResourceRequirements) -> Self {
        self.state.resources = needs;
        self
    }

    /// How long this state may wait, once ready, for the pool to grant its resources: longer,
    /// and the attempt fails with [`FlowError::ResourceTimeout`] and status `Timeout` (retries
    /// and `on_error` apply as for any failure).
    pub fn acquire_timeout(self, timeout: Duration) -> Self {
        self.state.acquire_timeout = Some(timeout);
        self
    }

    /// Lets a higher-priority state of the same run stop this one when the pool (if it has
    /// preemption, see [`ResourcePool::with_preemption`]) cannot grant it otherwise: this
    /// state's attempt is aborted, its resources go back at once, and it is queued to run again
    /// from the start later. Mark only states that can safely run twice.
    pub fn preemptible(self) -> Self {
        self.state.preemptible = true;
        self
    }

    /// Protects what this state calls with a circuit breaker (share one breaker between the
    /// states, and agents, that call the same service). See [`CircuitBreaker`].
    pub fn circuit_breaker(self, breaker: CircuitBreaker) -> Self {
        self.state.breaker = Some(breaker);
        self
    }

    /// Runs this state's attempts through a bulkhead (shared by every state given the same
    /// one). See [`Bulkhead`].
    pub fn bulkhead(self, bulkhead: Bulkhead) -> Self {
        self.state.bulkhead = Some(bulkhead);
        self
    }

    /// Adds a coordination gate (see `coordination::attach` for the public options); one
    /// primitive given twice counts once, with the later amount.
    pub(crate) fn push_gate(&mut self, gate: Gate, amount: u64) {
        match self.state.gates.iter_mut().find(|(g, _)| g.same(&gate)) {
            Some(existing) => existing.1 = amount,
            None => self.state.gates.push((gate, amount)),
        }
    }

    /// Records a problem found while declaring the state, reported when the definition is
    /// validated.
    pub(crate) fn declared_problem(&mut self, problem: FlowError) {
        self.state.declared_problems.push(problem);
    }

    /// The state that runs when this one has failed its last attempt: the branch goes there
    /// instead of failing the run, and the handler reads the failure with
    /// [`Context::failure`]. The failure is still recorded as a dead letter.
    pub fn on_error(self, handler: impl Into<String>) -> Self {
        self.state.spec.on_error = Some(handler.into());
        self
    }

    /// Makes this state depend on `state`: a [`DependencyType`](flow_core::DependencyType) or a
    /// full [`DependencyConfig`] (lifecycle, expiry, interval, timeout, condition). See
    /// [`DependencyConfig`] for what each kind waits for. Checked when a run starts: an unknown
    /// state, a second dependency on the same state and a cycle of required dependencies are
    /// errors.
    ///
    /// ```
    /// use flow_core::{DependencyType, FlowError, Next};
    /// use flow_runtime::{Agent, Context, DependencyConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), FlowError> {
    /// let mut agent = Agent::new("etl");
    /// agent.add_state("extract", |_ctx: Context| async { Ok(Next::to("load")) });
    /// agent.add_state("load", |ctx: Context| async move {
    ///     ctx.set_state("rows", 3u32);
    ///     Ok(Next::End)
    /// });
    /// // Nothing transitions to `report`: it starts once `load` completed.
    /// agent
    ///     .add_state("report", |ctx: Context| async move {
    ///         let rows: u32 = ctx.get_state("rows")?;
    ///         ctx.set_state("summary", format!("{rows} rows"));
    ///         Ok(Next::End)
    ///     })
    ///     .depends_on("load", DependencyType::Required)
    ///     .depends_on("extract", DependencyConfig::sequential());
    /// let report = agent.run().await?;
    /// assert_eq!(report.context.get_state::<String>("summary")?, "3 rows");
    /// # Ok(())
    /// # }
    /// ```
    pub fn depends_on(
        self,
        state: impl Into<String>,
        dependency: impl Into<DependencyConfig>,
    ) -> Self {
        let dependency = dependency.into();
        let state = state.into();
        self.state
            .spec
            .dependencies
            .push((state.clone(), dependency.kind));
        self.state.dependencies.push((state, dependency));
        self
    }

    /// Makes this an entry state: the run starts here (with several, they start in parallel).
    pub fn entry(self) -> Self {
        self.state.spec.entry = true;
        self
    }

    /// Declares every state this one may transition to. Optional, but it lets the scheduler
    /// release a join as soon as no sibling branch can still reach it; and a transition outside
    /// the list fails the run with [`FlowError::UndeclaredTransition`]. For a state that
    /// always ends its branch, use [`StateOptions::terminal`].
    pub fn successors<I, S>(self, states: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.state.spec.successors = Some(states.into_iter().map(Into::into).collect());
        self
    }

    /// Declares that this state always ends its branch: it has no successors (what
    /// `.successors([])` would say, if an empty list could name its element type). A
    /// transition from it fails the run with [`FlowError::UndeclaredTransition`].
    pub fn terminal(self) -> Self {
        self.state.spec.successors = Some(Vec::new());
        self
    }
}

fn compile(definition: &Definition) -> Result<Arc<Compiled>, FlowError> {
    let agent = &*definition.name;
    let specs: Vec<StateSpec> = definition.states.iter().map(|s| s.spec.clone()).collect();
    let graph = StateGraph::build(agent, &specs, &definition.entries)?;
    let invalid = |message: String| FlowError::InvalidConfig {
        agent: agent.to_owned(),
        message,
    };
    if definition.max_concurrent == Some(0) {
        return Err(invalid(
            "`max_concurrent` is 0, so no state could ever run; use at least 1".into(),
        ));
    }
    if definition.timeout == Some(Duration::ZERO) {
        return Err(invalid(
            "the run `timeout` is zero; use a positive duration or none".into(),
        ));
    }
    if let Some(state) = definition
        .states
        .iter()
        .find(|s| s.timeout == Some(Duration::ZERO))
    {
        return Err(invalid(format!(
            "state `{}` has a zero `timeout`; use a positive duration or none",
            state.spec.name
        )));
    }
    let mut timing = Vec::new();
    for state in &definition.states {
        timing.extend(state.declared_problems.iter().cloned());
        let retry = state.retry.unwrap_or(definition.default_retry);
        timing.extend(retry.problems().into_iter().map(|problem| {
            invalid(format!(
                "state `{}` has a retry policy that cannot be used: {problem}",
                state.spec.name
            ))
        }));
        for (dependency, config) in &state.dependencies {
            timing.extend(
                config
                    .problems(&state.spec.name, dependency)
                    .into_iter()
                    .map(invalid),
            );
        }
    }
    FlowError::from_problems(agent, timing)?;
    // Every distinct limit once; each state names its own by index. Nothing is built for an
    // agent whose states use none.
    let mut gates: Vec<Gate> = Vec::new();
    let mut state_gates: Vec<Box<[(usize, u64)]>> = Vec::new();
    if definition.states.iter().any(|s| !s.gates.is_empty()) {
        let mut too_large = Vec::new();
        for state in &definition.states {
            let mut own = Vec::with_capacity(state.gates.len());
            for (gate, amount) in &state.gates {
                if let Some(error) = gate.too_large(*amount, &state.spec.name) {
                    too_large.push(error);
                }
                let index = match gates.iter().position(|g| g.same(gate)) {
                    Some(index) => index,
                    None => {
                        gates.push(gate.clone());
                        gates.len() - 1
                    }
                };
                own.push((index, *amount));
            }
            // Holds first, then rate limits, then quotas (see `Gate::rank`); stable, so the
            // declared order stands within each.
            own.sort_by_key(|&(index, _)| gates[index].rank());
            state_gates.push(own.into());
        }
        FlowError::from_problems(agent, too_large)?;
    }
    let states = definition
        .states
        .iter()
        .enumerate()
        .map(|(index, s)| CompiledState {
            func: Arc::clone(&s.func),
            priority: s.priority,
            timeout: s.timeout,
            retry: s.retry.unwrap_or(definition.default_retry),
            breaker: s.breaker.clone(),
            bulkhead: s.bulkhead.clone(),
            needs: amounts(&s.resources),
            acquire_timeout: s.acquire_timeout,
            preemptible: s.preemptible,
            gates: state_gates.get(index).cloned().unwrap_or_default(),
            // The graph resolved and checked the names, in the same order.
            dependencies: graph
                .dependencies(StateId::new(index as u32))
                .iter()
                .zip(&s.dependencies)
                .map(|(&(on, _), (_, config))| CompiledDependency {
                    on,
                    config: config.clone(),
                })
                .collect(),
        })
        .collect();
    let (dependents, self_starting) = dependency_tables(&graph);
    if let Some((_, policy)) = &definition.checkpoints
        && !policy.is_active()
    {
        return Err(invalid(
            "the checkpoint policy asks for no checkpoint; use `CheckpointPolicy::after_each_state()`, `CheckpointPolicy::every(interval)` with a positive interval, or both".into(),
        ));
    }
    let needs_any = definition
        .states
        .iter()
        .any(|s| amounts(&s.resources) != [0; 5]);
    let pool = match &definition.pool {
        Some(pool) => Some(pool.clone()),
        None if needs_any => Some(ResourcePool::detect()),
        None => None,
    };
    for state in &definition.states {
        let r = &state.resources;
        if [r.cpu, r.io, r.network, r.gpu]
            .iter()
            .any(|v| !v.is_finite() || *v < 0.0)
        {
            return Err(invalid(format!(
                "state `{}` asks for {:?}: resource amounts must be finite and not negative",
                state.spec.name, r
            )));
        }
        if state.acquire_timeout == Some(Duration::ZERO) {
            return Err(invalid(format!(
                "state `{}` has a zero `acquire_timeout`; use a positive duration or none",
                state.spec.name
            )));
        }
    }
    check_requests(definition, pool.as_ref())?;
    Ok(Arc::new(Compiled {
        name: Arc::clone(&definition.name),
        graph: Arc::new(graph),
        states,
        max_concurrent: definition.max_concurrent.unwrap_or(usize::MAX),
        timeout: definition.timeout,
        cleanup_timeout: definition.cleanup_timeout,
        strict_joins: definition.strict_joins,
        blocking_threshold: definition.blocking_threshold,
        pool,
        gates_together: gates.iter().map(Gate::together).collect(),
        gates: gates.into(),
        priority_aging: definition.priority_aging,
        checkpoints: definition.checkpoints.clone(),
        fingerprint: OnceLock::new(),
        dependents,
        self_starting,
    }))
}

/// Who depends on each state, and which states start by themselves: those with a required
/// dependency that are not entries and that no declared transition leads to.
/// For each state, a list of states.
type PerState = Box<[Box<[StateId]>]>;

fn dependency_tables(graph: &StateGraph) -> (PerState, Box<[StateId]>) {
    let mut dependents = vec![Vec::new(); graph.len()];
    let mut self_starting = Vec::new();
    let mut handles_errors = vec![false; graph.len()];
    for index in 0..graph.len() {
        if let Some(handler) = graph.error_handler(StateId::new(index as u32)) {
            handles_errors[handler.index()] = true;
        }
    }
    for (index, &handles_errors) in handles_errors.iter().enumerate() {
        let state = StateId::new(index as u32);
        for &(on, _) in graph.dependencies(state) {
            dependents[on.index()].push(state);
        }
        let required = graph
            .dependencies(state)
            .iter()
            .any(|(_, kind)| *kind == DependencyType::Required);
        if required
            && !graph.entries().contains(&state)
            && graph.predecessors(state).is_empty()
            && !handles_errors
        {
            self_starting.push(state);
        }
    }
    (
        dependents.into_iter().map(Vec::into_boxed_slice).collect(),
        self_starting.into_boxed_slice(),
    )
}

/// Every state's request must fit the pool and its quotas, or it would wait forever.
fn check_requests(definition: &Definition, pool: Option<&ResourcePool>) -> Result<(), FlowError> {
    let Some(pool) = pool else { return Ok(()) };
    let agent = &*definition.name;
    let mut too_large = Vec::new();
    for s in &definition.states {
        let kinds = pool.oversized(agent, &s.spec.name, &amounts(&s.resources));
        if !kinds.is_empty() {
            too_large.push(FlowError::ResourceRequestTooLarge {
                agent: agent.to_owned(),
                state: s.spec.name.clone(),
                kinds: kinds
                    .iter()
                    .map(|k| format!("{k:?}").to_lowercase())
                    .collect(),
                needs: format!("{:?}", s.resources),
                capacity: format!("{:?}", pool.capacity()),
            });
        }
    }
    FlowError::from_problems(agent, too_large)
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
