//! The builder: an agent is a workflow definition that can be run many times.
//!
//! This module holds the definition and how it is built; `run` starts and controls runs,
//! `options` the per-state options, `compile` the validated form runs share.

mod compile;
mod options;
mod remote;
mod run;
mod shared;

pub(crate) use compile::{Compiled, CompiledDependency};
use compile::{check_requests, compile};
pub use options::StateOptions;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use flow_core::{
    AgentStatus, DependencyType, FlowError, Next, Priority, ResourceRequirements, RetryPolicy,
    StateError, StateGraph, StateId, StateSpec, StateStatus,
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
use crate::input::{InputHub, InputId, InputProvider, InputRequest, PostedAnswer};
use crate::resilience::{Bulkhead, CircuitBreaker};
use crate::resources::{Amounts, ResourcePool, amounts};
use crate::run::{Observer, RunControl, RunCounts, RunHandle, RunReport};
use crate::scheduler::Coordinator;
use crate::scheduler::{Restorable, check_fits};
use crate::state_fn::{BoxError, FnState, StateFn, StateResult};
use serde::Serialize;

/// Which errors of a state are worth another attempt (see [`StateOptions::retry_if`]).
pub type RetryIf = Arc<dyn Fn(&StateError) -> bool + Send + Sync>;

/// Events kept for a subscriber that has not read them yet, unless set otherwise.
pub const DEFAULT_EVENT_CAPACITY: usize = 4096;

/// The most state runs one run may take unless [`Agent::max_steps`] says otherwise: a loop of
/// instant states that never ends fails in a fraction of a second; no finite workflow in this
/// repository comes near it. An agent loop of model calls wants a limit of its own (tens).
pub const DEFAULT_MAX_STEPS: u64 = 100_000;

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
    max_steps: u64,
    timeout: Option<Duration>,
    cleanup_timeout: Duration,
    strict_joins: bool,
    blocking_threshold: Option<Duration>,
    default_retry: RetryPolicy,
    /// The handler of every state that names none (see `Agent::default_on_error`).
    default_on_error: Option<String>,
    /// How writes to a key combine, by key (see `Agent::reducer`).
    reducers: Arc<crate::context::Reducers>,
    /// What a failure with no handler does (see `Agent::on_branch_failure`).
    on_branch_failure: crate::BranchFailure,
    pool: Option<ResourcePool>,
    priority_aging: Duration,
    input_poll_interval: Duration,
    suspend_on_input: bool,
    checkpoints: Option<(Arc<dyn CheckpointStore>, CheckpointPolicy)>,
    /// Told of every input request of every run (see [`Agent::input_provider`]).
    input_provider: Option<Arc<dyn InputProvider>>,
    compiled: OnceLock<Result<Arc<Compiled>, FlowError>>,
}

#[derive(Clone)]
struct StateDef {
    spec: StateSpec,
    func: Arc<dyn StateFn>,
    priority: Priority,
    timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
    /// Which errors are retried (see `StateOptions::retry_if`); all when `None`.
    retry_if: Option<RetryIf>,
    /// Coordination primitives it passes before it starts, with the amount it asks for.
    gates: Vec<(Gate, u64)>,
    /// Problems found while the state was declared, reported when the definition is
    /// validated (as for retry policies).
    declared_problems: Vec<FlowError>,
    resources: ResourceRequirements,
    acquire_timeout: Option<Duration>,
    preemptible: bool,
    /// Its attempts may run on another worker (see `StateOptions::remote`).
    remote: bool,
    dependencies: Vec<(String, DependencyConfig)>,
    /// The workflow a subgraph state runs (see `Agent::add_subgraph`), validated with this one.
    subgraph: Option<Agent>,
}

/// How often a checkpointed run waiting for input reads the answers other processes left in
/// its store, unless set with [`Agent::input_poll_interval`]: 200 ms.
pub const DEFAULT_INPUT_POLL_INTERVAL: Duration = Duration::from_millis(200);

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
                max_steps: DEFAULT_MAX_STEPS,
                timeout: None,
                cleanup_timeout: Duration::ZERO,
                strict_joins: false,
                blocking_threshold: None,
                default_retry: RetryPolicy::NONE,
                default_on_error: None,
                reducers: Arc::default(),
                on_branch_failure: crate::BranchFailure::FailRun,
                pool: None,
                priority_aging: DEFAULT_PRIORITY_AGING,
                input_poll_interval: DEFAULT_INPUT_POLL_INTERVAL,
                suspend_on_input: false,
                checkpoints: None,
                input_provider: None,
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
        self.add_state_fn(StateSpec::new(name), Arc::new(FnState(body)), None)
    }

    /// Adds a state with this body (and, for a subgraph state, the workflow it runs).
    pub(crate) fn add_state_fn(
        &mut self,
        spec: StateSpec,
        func: Arc<dyn StateFn>,
        subgraph: Option<Agent>,
    ) -> StateOptions<'_> {
        let definition = self.definition_mut();
        definition.states.push(StateDef {
            spec,
            func,
            subgraph,
            priority: Priority::Normal,
            timeout: None,
            retry: None,
            retry_if: None,
            gates: Vec::new(),
            declared_problems: Vec::new(),
            resources: ResourceRequirements::NONE,
            acquire_timeout: None,
            preemptible: false,
            remote: false,
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

    /// The most state runs one run may take (default [`DEFAULT_MAX_STEPS`]; retries of a
    /// run do not count, each new run of a state does): the run that would take one more fails
    /// with [`FlowError::StepLimit`], its running states stopped. Catches loops that never end
    /// (an agent that keeps calling tools); set it to what the work can need. Must be at least
    /// 1; `u64::MAX` for no limit.
    pub fn max_steps(&mut self, limit: u64) -> &mut Self {
        self.definition_mut().max_steps = limit;
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

    /// Hands every input request of this agent's runs (`ctx.human_input`, `ctx.ask`) to
    /// `provider`: a [`crate::ChannelProvider`], the [`crate::TerminalProvider`], or your own.
    /// Requests can be answered through the run's handle as well, with or without one.
    pub fn input_provider(&mut self, provider: impl InputProvider) -> &mut Self {
        self.definition_mut().input_provider = Some(Arc::new(provider));
        self
    }

    /// How often a checkpointed run waiting for input reads the answers left in its store by
    /// other processes (default [`DEFAULT_INPUT_POLL_INTERVAL`]; answers given in this
    /// process arrive at once). Only runs with a request waiting read.
    pub fn input_poll_interval(&mut self, interval: Duration) -> &mut Self {
        self.definition_mut().input_poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Makes checkpointed runs suspend while they wait for people: when every running state
    /// waits for an answer and nothing else is queued or due, the run saves a checkpoint
    /// (listing the pending requests) and ends with status `AwaitingInput` (`run_durable`
    /// returns its report: not an error). Answer through the store
    /// ([`CheckpointStore::answer`], [`crate::AnswerInbox`]) and call `run_durable` again: the
    /// waiting states run again from their start and get their answers at once.
    ///
    /// Runs without a checkpoint store are refused when they start: they could not be
    /// continued.
    pub fn suspend_on_input(&mut self) -> &mut Self {
        self.definition_mut().suspend_on_input = true;
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

    /// The `on_error` handler of every state that names none of its own (see
    /// [`StateOptions::on_error`]): a state that fails its last attempt goes there instead of
    /// failing the run. The handler itself has none (if it fails, the run fails), and a state
    /// with a handler of its own keeps it. Checked when the definition is validated.
    pub fn default_on_error(&mut self, handler: impl Into<String>) -> &mut Self {
        self.definition_mut().default_on_error = Some(handler.into());
        self
    }

    /// How the writes of states to `key` combine (see [`Reducer`]): each write inside a state
    /// is a contribution the reducer folds into the value, and the contributions of parallel
    /// branches apply at their join in the order of the fork, not the order they finished
    /// in. Setting a key's reducer again replaces it.
    ///
    /// ```
    /// # use flow_runtime::{Agent, Reducer};
    /// let mut agent = Agent::new("research");
    /// agent.reducer("findings", Reducer::append::<String>());
    /// ```
    pub fn reducer(&mut self, key: impl Into<String>, reducer: crate::Reducer) -> &mut Self {
        Arc::make_mut(&mut self.definition_mut().reducers).insert(key.into(), reducer);
        self
    }

    /// What a state failure with no `on_error` handler does: fail the run, stopping the
    /// rest ([`BranchFailure::FailRun`](crate::BranchFailure), the default), or end only the
    /// failed branch while the others go on ([`BranchFailure::Continue`](crate::BranchFailure)):
    /// the run then ends `AgentStatus::CompletedWithFailures` and its report lists the
    /// failures ([`RunReport::failed_branches`](crate::RunReport::failed_branches)).
    pub fn on_branch_failure(&mut self, mode: crate::BranchFailure) -> &mut Self {
        self.definition_mut().on_branch_failure = mode;
        self
    }

    /// Several reducers at once (see [`Agent::reducer`]), for example those a `#[context]`
    /// struct declares: `agent.reducers(Research::reducers())`.
    pub fn reducers<K: Into<String>>(
        &mut self,
        reducers: impl IntoIterator<Item = (K, crate::Reducer)>,
    ) -> &mut Self {
        for (key, reducer) in reducers {
            self.reducer(key, reducer);
        }
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
    /// clones made earlier, keep the previous channel. (Monitors attached earlier stay
    /// attached: they do not read the channel.)
    pub fn event_capacity(&mut self, capacity: usize) -> &mut Self {
        self.events = self.events.resized(capacity.clamp(1, MAX_EVENT_CAPACITY));
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

    /// The in-process observers of this agent's runs (monitors).
    pub(crate) fn probes(&self) -> &crate::probe::ProbeList {
        self.events.probes()
    }
}
