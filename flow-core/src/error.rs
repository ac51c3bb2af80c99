//! The one error type of the library.

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Everything that can go wrong when building, validating or running a workflow, and when
/// reading the context.
///
/// Every message names the workflow or state and the offending value, and says what to do.
/// The enum is `#[non_exhaustive]`: later features add variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// The workflow has no states.
    #[error(
        "workflow `{agent}` has no states: add at least one with `add_state` before running it"
    )]
    NoStates {
        /// The workflow.
        agent: String,
    },
    /// Two states share a name.
    #[error(
        "workflow `{agent}` has two states named `{state}`: state names must be unique, rename one of them"
    )]
    DuplicateState {
        /// The workflow.
        agent: String,
        /// The name given twice.
        state: String,
    },
    /// An entry state was named that the workflow does not have.
    #[error("workflow `{agent}` names `{entry}` as its entry state, but has no state of that name{}", did_you_mean(.suggestion))]
    UnknownEntry {
        /// The workflow.
        agent: String,
        /// The entry name given.
        entry: String,
        /// The closest existing name, if one is close.
        suggestion: Option<String>,
    },
    /// A state declares a successor that does not exist.
    #[error("state `{state}` of workflow `{agent}` declares `{target}` as a successor, but there is no state of that name{}", did_you_mean(.suggestion))]
    UnknownSuccessor {
        /// The workflow.
        agent: String,
        /// The state whose declaration is wrong.
        state: String,
        /// The successor named.
        target: String,
        /// The closest existing name, if one is close.
        suggestion: Option<String>,
    },
    /// A state returned a transition to a state the workflow does not have.
    #[error("state `{from}` of workflow `{agent}` returned a transition to `{to}`, but there is no state of that name{}; add it with `add_state` or fix the name", did_you_mean(.suggestion))]
    UnknownTransition {
        /// The workflow.
        agent: String,
        /// The state that returned the transition.
        from: String,
        /// The name it returned.
        to: String,
        /// The closest existing name, if one is close.
        suggestion: Option<String>,
    },
    /// A state returned a transition outside the successors it declared.
    #[error("state `{from}` of workflow `{agent}` returned a transition to `{to}`, which is not among its declared successors [{}]; declare it with `successors(...)` or return one of those", .declared.join(", "))]
    UndeclaredTransition {
        /// The workflow.
        agent: String,
        /// The state that returned the transition.
        from: String,
        /// The name it returned.
        to: String,
        /// What the state declared.
        declared: Vec<String>,
    },
    /// An option of the workflow or of a state has a value that cannot work.
    #[error("invalid configuration of workflow `{agent}`: {message}")]
    InvalidConfig {
        /// The workflow.
        agent: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Validation found several problems at once; each is listed.
    #[error("workflow `{agent}` is invalid ({} problems):{}", .errors.len(), bullet_list(.errors))]
    Invalid {
        /// The workflow.
        agent: String,
        /// Every problem found.
        errors: Vec<FlowError>,
    },
    /// A state returned an error on its last attempt.
    #[error("state `{state}` failed after {attempts} attempt(s): {cause}")]
    StateFailed {
        /// The state.
        state: String,
        /// How many times it ran in this activation.
        attempts: u32,
        /// The error it returned.
        cause: StateError,
    },
    /// A state panicked. The panic was caught; the runtime and the caller go on.
    #[error("state `{state}` panicked on attempt {attempts}: {message}")]
    StatePanicked {
        /// The state.
        state: String,
        /// How many times it ran in this activation.
        attempts: u32,
        /// The panic payload, when it was a string.
        message: String,
    },
    /// A state ran longer than its timeout and was cancelled.
    #[error(
        "state `{state}` timed out after {timeout:?} on attempt {attempts}; raise its `timeout` or make it faster"
    )]
    StateTimedOut {
        /// The state.
        state: String,
        /// How many times it ran in this activation.
        attempts: u32,
        /// The timeout it exceeded.
        timeout: Duration,
    },
    /// A state needs more of some resource than its pool has at all: it could never start.
    #[error("state `{state}` of workflow `{agent}` needs more {} than the resource pool has, or than its quota allows ({needs} against a pool of {capacity}); lower its `resources`, raise the quota, or give the agent a larger pool", .kinds.join(", "))]
    ResourceRequestTooLarge {
        /// The workflow.
        agent: String,
        /// The state.
        state: String,
        /// The kinds it asks too much of.
        kinds: Vec<String>,
        /// What it asks for.
        needs: String,
        /// What the pool has.
        capacity: String,
    },
    /// A state waited longer than its acquisition timeout for the resource pool.
    #[error(
        "state `{state}` waited {waited:?} for its resources on attempt {attempts} and gave up; raise its `acquire_timeout`, lower its `resources`, or give the agent a larger pool"
    )]
    ResourceTimeout {
        /// The state.
        state: String,
        /// How many times it was attempted in this activation.
        attempts: u32,
        /// How long it waited.
        waited: Duration,
    },
    /// The state's circuit breaker is open: the attempt failed without calling the state.
    #[error(
        "state `{state}` was not called on attempt {attempts}: its circuit breaker is open after repeated failures and half-opens in {retry_in:?}; give it a retry policy that waits that long, or fix what it calls"
    )]
    CircuitOpen {
        /// The state.
        state: String,
        /// How many times it was attempted in this activation.
        attempts: u32,
        /// How long until the breaker lets a trial through.
        retry_in: Duration,
    },
    /// The state's bulkhead had no place and its queue was full.
    #[error(
        "state `{state}` was not called on attempt {attempts}: bulkhead `{bulkhead}` has its {max_concurrent} places taken and {max_queued} attempts queued; raise its limits or slow the callers"
    )]
    BulkheadFull {
        /// The state.
        state: String,
        /// How many times it was attempted in this activation.
        attempts: u32,
        /// The bulkhead's name.
        bulkhead: String,
        /// Its places.
        max_concurrent: usize,
        /// Its queue.
        max_queued: usize,
    },
    /// A rate limit was given values it cannot work with.
    #[error("invalid rate limit {limit}: {reason}")]
    InvalidRateLimit {
        /// The limit as written (strategy and values).
        limit: String,
        /// What is wrong and what to use instead.
        reason: String,
    },
    /// A leaky bucket already held as many waiting acquisitions as its capacity: this one was
    /// refused rather than queued.
    #[error(
        "{}: leaky bucket `{limit}` already holds {capacity} waiting acquisitions; raise its capacity, slow the callers, or give the state a retry policy", refused_caller(.state)
    )]
    RateLimited {
        /// The state refused (`None` for an acquisition made directly on the limit).
        state: Option<String>,
        /// The limit's name.
        limit: String,
        /// How many acquisitions it lets wait.
        capacity: u32,
    },
    /// A state or a caller asked a coordination primitive for more than it has at all.
    #[error(
        "{who} asks {primitive} for {amount}, more than its {capacity}; ask for less or give it more"
    )]
    CoordinationRequestTooLarge {
        /// The state (or task) that asked.
        who: String,
        /// The primitive, like "semaphore `gpu`".
        primitive: String,
        /// What it asked for.
        amount: String,
        /// What the primitive has.
        capacity: String,
    },
    /// A quota without a reset period has too little left for a take, and never refills.
    #[error(
        "{who} cannot take {amount} from quota `{quota}`: its limit of {limit} is spent and it has no reset period; give it one (`Quota::per`) or a larger limit"
    )]
    QuotaExhausted {
        /// The state (or task) that asked.
        who: String,
        /// The quota.
        quota: String,
        /// What it asked for.
        amount: String,
        /// The quota's limit.
        limit: String,
    },
    /// Waiting for a primitive would have closed a cycle of waits: the waiter was refused.
    #[error("deadlock refused: {}; the last wait was refused to break it (take primitives in one order, or declare them all on the state so that it takes them at once)", .cycle.join("; "))]
    Deadlock {
        /// Each holder in the cycle: what it holds and what it waits for.
        cycle: Vec<String>,
    },
    /// A barrier's round was not complete within its timeout: every waiter of the round
    /// failed.
    #[error(
        "{who} waited at barrier `{barrier}` for {timeout:?} and not all {parties} parties arrived; the round failed for every waiter (retries apply); raise the timeout or check that {parties} states reach the barrier"
    )]
    BarrierTimeout {
        /// The state (or task) that waited.
        who: String,
        /// The barrier.
        barrier: String,
        /// Its parties.
        parties: u32,
        /// Its timeout.
        timeout: Duration,
    },
    /// A state held a mutex or lease past its TTL: the hold went to the next waiter and the
    /// attempt was cancelled.
    #[error(
        "state `{state}` held {primitive} longer than its TTL of {ttl:?} on attempt {attempts}; it was given to the next waiter and the attempt cancelled; raise the TTL or make the state faster"
    )]
    HoldExpired {
        /// The state.
        state: String,
        /// How many times it was attempted in this activation.
        attempts: u32,
        /// The primitive, like "lease `batch`".
        primitive: String,
        /// Its TTL.
        ttl: Duration,
    },
    /// A ready state waited longer than its acquisition timeout at an admission gate (a rate
    /// limit): it was not called.
    #[error(
        "state `{state}` waited {waited:?} at {gate} on attempt {attempts} and gave up; raise its `acquire_timeout` or the limit's rate"
    )]
    AdmissionTimeout {
        /// The state.
        state: String,
        /// How many times it was attempted in this activation.
        attempts: u32,
        /// How long it waited.
        waited: Duration,
        /// What it waited at (e.g. "rate limit `openai`").
        gate: String,
    },
    /// The whole run exceeded its timeout; running states were cancelled.
    #[error(
        "run of workflow `{agent}` timed out after {timeout:?}{}; raise the run's `timeout` or find the slow state in the report (a state that blocks its thread belongs in `tokio::task::spawn_blocking`)",
        stopped_states(.running)
    )]
    RunTimedOut {
        /// The workflow.
        agent: String,
        /// The run timeout.
        timeout: Duration,
        /// The states that were running at the deadline: stopped, or abandoned if they do not
        /// yield (sorted, each once).
        running: Vec<String>,
    },
    /// The run took as many state runs as its step limit allows, and another was due: a
    /// loop that does not end, most likely (an agent calling tools forever).
    #[error(
        "run of workflow `{agent}` reached its step limit of {limit} state runs, and `{state}` was due to run again; a loop that never ends? raise `max_steps` if the work needs more"
    )]
    StepLimit {
        /// The workflow.
        agent: String,
        /// The limit (`max_steps`).
        limit: u64,
        /// The state that would have run past it.
        state: String,
    },
    /// The run was cancelled (by `cancel()` on its handle, or by dropping the `run()` future).
    #[error("run of workflow `{agent}` was cancelled")]
    Cancelled {
        /// The workflow.
        agent: String,
    },
    /// A durable run was cancelled on request (`CheckpointStore::cancel_run`, `fluffy runs
    /// cancel`, the dashboard): `run_durable` returns this until it is resumed.
    #[error("run `{run}` of workflow `{agent}` was cancelled by {by}{}; resume it with `resume_durable` (`fluffy runs resume {run}`) to go on", if .reason.is_empty() { String::new() } else { format!(" ({})", .reason) })]
    CancelledOnRequest {
        /// The workflow.
        agent: String,
        /// The run's key.
        run: String,
        /// Who cancelled it.
        by: String,
        /// Why (may be empty).
        reason: String,
    },
    /// A durable run was not cancelled (`CheckpointStore::cancel_run`, `fluffy runs cancel`):
    /// it has ended, or it may run in a process this store cannot reach.
    #[error("run `{run}` of workflow `{agent}` was not cancelled: {reason}")]
    CancelRefused {
        /// The workflow.
        agent: String,
        /// The run's key.
        run: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The run's coordinator stopped without a result (its tokio runtime shut down).
    #[error(
        "run of workflow `{agent}` ended without a result: its tokio runtime shut down while it ran"
    )]
    RunLost {
        /// The workflow.
        agent: String,
    },
    /// Nothing is running or ready, yet states still wait: the run cannot make progress.
    #[error("run of workflow `{agent}` cannot make progress: nothing runs, and these states wait: {}; make sure what they wait for can happen (a transition to it, a condition that can turn true), or give the dependency a `timeout`", .waiting.join("; "))]
    NoProgress {
        /// The workflow.
        agent: String,
        /// Each waiting state, with what it waits for: a join (`merge (held at a join)`) or
        /// dependencies (``report (waits for `load` (required): it is scheduled or running)``).
        waiting: Vec<String>,
    },
    /// With [`strict_joins`](../fluffy_flow/struct.Agent.html#method.strict_joins), branches of
    /// one fork were held at several joins that may each lead to another, with nothing else
    /// left to run: which join comes first cannot be known from the graph.
    #[error("run of workflow `{agent}` stopped at an ambiguous join: branches{} are held at {} and each may still reach another, so the scheduler cannot tell which join comes first; {}", fork_of(.fork), .held.join(", "), declare_hint(.declare))]
    AmbiguousJoin {
        /// The workflow.
        agent: String,
        /// The state whose fork opened the branches (`None`: the run's entries).
        fork: Option<String>,
        /// The states where branches are held.
        held: Vec<String>,
        /// The states whose successors are undeclared and make the join ambiguous (empty when
        /// every state involved declares its successors and the joins reach each other).
        declare: Vec<String>,
    },
    /// A state depends on a state that does not exist.
    #[error("state `{state}` of workflow `{agent}` depends on `{dependency}`, but there is no state of that name{}", did_you_mean(.suggestion))]
    UnknownDependency {
        /// The workflow.
        agent: String,
        /// The dependent state.
        state: String,
        /// The dependency named.
        dependency: String,
        /// The closest existing name, if one is close.
        suggestion: Option<String>,
    },
    /// Required dependencies form a cycle, so none of its states could ever start.
    #[error("required dependencies of workflow `{agent}` form a cycle: {}; none of these states could ever start — make one of these dependencies `optional` or remove it", .cycle.join(" → "))]
    DependencyCycle {
        /// The workflow.
        agent: String,
        /// The states of the cycle, each required by the next; the first is repeated at the end.
        cycle: Vec<String>,
    },
    /// A state's required dependency failed, so the state cannot run.
    #[error(
        "state `{state}` cannot run: its required dependency `{dependency}` failed ({error}); fix `{dependency}`, or make the dependency `optional` if `{state}` can do without it"
    )]
    DependencyFailed {
        /// The dependent state.
        state: String,
        /// The dependency that failed.
        dependency: String,
        /// How it failed.
        error: String,
    },
    /// A state's required dependency has not completed and nothing left in the run can run it.
    #[error(
        "state `{state}` cannot run: its required dependency `{dependency}` {reason}, and nothing left in the run can start it; make sure a transition reaches `{dependency}`, or make the dependency `optional`"
    )]
    DependencyUnsatisfied {
        /// The dependent state.
        state: String,
        /// The dependency.
        dependency: String,
        /// What is known of the dependency (never ran, or its completion no longer counts).
        reason: String,
    },
    /// A state waited for a dependency longer than that dependency's `timeout`.
    #[error(
        "state `{state}` waited {timeout:?} for its dependency `{dependency}` ({waiting_for}) and gave up; raise the dependency's `timeout`, or find out why `{dependency}` is not satisfied"
    )]
    DependencyTimeout {
        /// The dependent state.
        state: String,
        /// The dependency it waited for.
        dependency: String,
        /// The dependency's timeout.
        timeout: Duration,
        /// What it still waited for.
        waiting_for: String,
    },
    /// Checkpoint data could not be read: truncated, corrupt, or not a checkpoint.
    #[error(
        "checkpoint of run `{run}` of workflow `{agent}` in {store} is unreadable: {message}; restore an earlier checkpoint or start the run afresh"
    )]
    CorruptCheckpoint {
        /// The store (its kind and location).
        store: String,
        /// The workflow.
        agent: String,
        /// The run's key.
        run: String,
        /// What is wrong with it.
        message: String,
    },
    /// A store file is already open (a second `RedbStore::open` of one path).
    #[error(
        "checkpoint store {store} is already open (in this process, or another one): open it once and clone the store, whose clones share the database"
    )]
    StoreInUse {
        /// The store (its kind and location).
        store: String,
    },
    /// A checkpoint store's file is damaged: it cannot be opened or read safely.
    #[error(
        "checkpoint store {store} is damaged: {message}; restore the file from a backup, or move it away to start afresh (runs it held then start over and repeat their side effects)"
    )]
    CorruptStore {
        /// The store (its kind and location).
        store: String,
        /// What is wrong with it.
        message: String,
    },
    /// A worker's lease on a queued run has lapsed (it could not renew it in time, and
    /// another worker may have claimed the run): the database refused its write, fenced off
    /// by the lease's token.
    #[error(
        "worker `{worker}` no longer holds the lease on run `{run}` of workflow `{workflow}` (fencing token {fence}), so its {action} was refused; the run goes on with the worker that holds it now, from its latest checkpoint (renew leases more often than they last: a heartbeat shorter than the lease)"
    )]
    LeaseLost {
        /// The run's workflow.
        workflow: String,
        /// The run's key.
        run: String,
        /// The worker that lost the lease.
        worker: String,
        /// The fencing token it held.
        fence: u64,
        /// What was refused (`checkpoint`, `result`).
        action: String,
    },
    /// A state that runs on another worker (`remote`) used what only the run's own process
    /// has.
    #[error(
        "state `{state}` runs on another worker (it is `remote`), where {what} is not available; {fix}"
    )]
    RemoteState {
        /// The state.
        state: String,
        /// What it used.
        what: String,
        /// What to do instead.
        fix: String,
    },
    /// A checkpoint store failed to read or write.
    #[error(
        "checkpoint store {store} failed while {action}: {message}; check that its location exists, is writable and has space, or use another store"
    )]
    CheckpointStore {
        /// The store (its kind and location).
        store: String,
        /// What it was doing.
        action: String,
        /// The underlying error.
        message: String,
    },
    /// A checkpoint does not belong to the agent it is restored into.
    #[error(
        "checkpoint of run `{run}` of workflow `{checkpoint_agent}` cannot be restored into workflow `{agent}`: {reason}"
    )]
    CheckpointMismatch {
        /// The agent restoring it.
        agent: String,
        /// The workflow the checkpoint was taken of.
        checkpoint_agent: String,
        /// The run's key.
        run: String,
        /// What differs, and what to do.
        reason: String,
    },
    /// A checkpoint was written by a newer version of fluffy-flow than this one.
    #[error(
        "checkpoint of run `{run}` of workflow `{agent}` in {store} has format {format}, newer than this version of fluffy-flow reads ({supported}); upgrade fluffy-flow to restore it"
    )]
    CheckpointTooNew {
        /// The store (its kind and location).
        store: String,
        /// The workflow.
        agent: String,
        /// The run's key.
        run: String,
        /// Its format.
        format: u32,
        /// The newest format this version reads.
        supported: u32,
    },
    /// A checkpoint asked for (to edit or fork a run) is not in the store.
    #[error(
        "the store has no {what} of run `{run}` of workflow `{agent}`; list what it keeps with `sequences(agent, run)`"
    )]
    NoCheckpoint {
        /// The workflow.
        agent: String,
        /// The run's key.
        run: String,
        /// Which checkpoint (`checkpoint`, `checkpoint 3`).
        what: String,
    },
    /// A control call was made on an agent that has not started a run.
    #[error("workflow `{agent}` has no run to {action}; start one with `start` or `run` first")]
    NoRun {
        /// The workflow.
        agent: String,
        /// What was asked.
        action: String,
    },
    /// A control call reached a run that has already ended.
    #[error("run `{run_id}` of workflow `{agent}` has already ended; there is nothing to {action}")]
    RunEnded {
        /// The workflow.
        agent: String,
        /// The run.
        run_id: u64,
        /// What was asked.
        action: String,
    },
    /// A state name given to a control call does not exist.
    #[error("the workflow has no state named `{state}`{}", did_you_mean(.suggestion))]
    UnknownState {
        /// The name given.
        state: String,
        /// The closest existing name, if one is close.
        suggestion: Option<String>,
    },
    /// A state's `on_error` handler does not exist.
    #[error("state `{state}` of workflow `{agent}` names `{handler}` as its `on_error` handler, but there is no state of that name{}", did_you_mean(.suggestion))]
    UnknownErrorHandler {
        /// The workflow.
        agent: String,
        /// The state.
        state: String,
        /// The handler named.
        handler: String,
        /// The closest existing name, if one is close.
        suggestion: Option<String>,
    },
    /// A run was started outside a tokio runtime.
    #[error(
        "workflow `{agent}` was started outside a tokio runtime; call `run`/`start` from async code running on tokio (for example under `#[tokio::main]`)"
    )]
    NoRuntime {
        /// The workflow.
        agent: String,
    },
    /// The context has no value under this key.
    #[error(
        "the context has no key `{key}`; set it before reading it, or read it with `get_state_or`"
    )]
    MissingKey {
        /// The key read.
        key: String,
    },
    /// The context holds a value of another type under this key.
    #[error(
        "context key `{key}` holds a `{found}`, not the `{expected}` that was asked for; read it as `{found}` or store a `{expected}`"
    )]
    WrongType {
        /// The key read.
        key: String,
        /// The type asked for.
        expected: String,
        /// The type stored (for a value restored from JSON, `serialized data`).
        found: String,
    },
    /// A context value could not be converted to or from JSON.
    #[error("context key `{key}` could not be converted to JSON: {message}")]
    Serialization {
        /// The key.
        key: String,
        /// The serializer's message.
        message: String,
    },
    /// An answer to an input request was refused before it was recorded: it failed the
    /// request's validator, or does not have the type the request asks for. The request stays
    /// pending.
    #[error(
        "the answer {answer} to input request `{id}` was refused: {reason}; the request is still pending: answer it again"
    )]
    InvalidAnswer {
        /// The request.
        id: String,
        /// The answer, as JSON.
        answer: String,
        /// Why, for the person answering.
        reason: String,
    },
    /// An answer names an input request the run never made.
    #[error(
        "run `{run_key}` has no input request `{id}`; list the pending ones with `pending_inputs()`"
    )]
    UnknownInput {
        /// The request named.
        id: String,
        /// The run asked.
        run_key: String,
    },
    /// An answer names an input request that is no longer pending.
    #[error(
        "input request `{id}` is closed ({how}): the answer was not recorded; list the pending ones with `pending_inputs()`"
    )]
    InputClosed {
        /// The request named.
        id: String,
        /// How it was closed: "answered by ops at ...", "timed out", "withdrawn: ...".
        how: String,
    },
    /// A state waited for an answer past its input request's timeout, and the request has no
    /// default.
    #[error(
        "state `{state}` waited {waited:?} for an answer to \"{prompt}\" (input request `{id}`) and gave up; give the request a default, a longer `timeout`, or say `no_timeout()`"
    )]
    InputTimeout {
        /// The state.
        state: String,
        /// The request.
        id: String,
        /// Its prompt.
        prompt: String,
        /// How long it waited.
        waited: Duration,
    },
    /// `human_input` or `ask` was called on a context that belongs to no state run.
    #[error(
        "input request \"{prompt}\" was made outside a state: ask for input with the context a state is given"
    )]
    InputOutsideState {
        /// The prompt.
        prompt: String,
    },
    /// A state wrote a value of a type a key's reducer takes neither as a contribution nor as
    /// the whole value.
    #[error(
        "a state wrote a `{found}` to context key `{key}`, whose reducer takes {expected}; write one of those, or give the key another reducer"
    )]
    ReducerMismatch {
        /// The key.
        key: String,
        /// What the reducer takes: its contribution type and its value type, named.
        expected: String,
        /// The type written.
        found: String,
    },
    /// A run whose branches keep views (it has reducers or maps) made more than 2^32
    /// branches: they could no longer be told apart.
    #[error(
        "run of workflow `{agent}` made more than 4,294,967,295 branches, more than its reducers and maps can tell apart; split the work over several runs"
    )]
    TooManyBranches {
        /// The workflow.
        agent: String,
    },
    /// A reducer's fold panicked.
    #[error(
        "the `{reducer}` reducer of context key `{key}` panicked while folding a contribution: {message}; make the fold total (no overflow, no unwrap on the values)"
    )]
    ReducerPanicked {
        /// The key.
        key: String,
        /// The reducer's name.
        reducer: String,
        /// The panic's message.
        message: String,
    },
    /// `ctx.update_typed` on a key with a reducer, on a branch of a fork: it would replace
    /// what the branch's siblings contribute.
    #[error(
        "a state on a parallel branch called `update_typed` on context key `{key}`, which has a reducer: the update would replace the contributions of its sibling branches; contribute with `set_state`, or replace on purpose with `replace_state`"
    )]
    ReducerUpdate {
        /// The key.
        key: String,
    },
    /// `ctx.input()` was called in a state that is not on a branch of `Next::map`.
    #[error(
        "state `{state}` read its input, but it has none: only the branches a `Next::map` makes (and the branches they fork) have one; return `Next::map(\"{state}\", items)` to run it on each item"
    )]
    NoInput {
        /// The state that asked.
        state: String,
    },
    /// A subgraph state's run of its workflow did not complete.
    #[error("subgraph state `{state}` ran workflow `{workflow}`, which did not complete: {error}")]
    SubgraphFailed {
        /// The subgraph state, by its path (`parent/child` when nested).
        state: String,
        /// The workflow it runs.
        workflow: String,
        /// Why that run stopped.
        error: Box<FlowError>,
    },
    /// A key a subgraph's mapping names was not there to copy.
    #[error(
        "subgraph state `{state}` maps {direction} key `{key}`, but the {side} context does not hold it; set `{key}` before the subgraph hands it over, or remove it from the mapping"
    )]
    SubgraphKey {
        /// The subgraph state, by its path.
        state: String,
        /// The missing key.
        key: String,
        /// `input` or `output`.
        direction: String,
        /// Whose context lacks it: `parent's` or `subgraph's`.
        side: String,
    },
    /// A subgraph state holds a workflow whose definition is invalid.
    #[error("subgraph state `{state}` holds an invalid workflow: {error}")]
    InvalidSubgraph {
        /// The subgraph state.
        state: String,
        /// What is wrong with the workflow it holds.
        error: Box<FlowError>,
    },
}

impl FlowError {
    /// `Ok` for no problems, the problem itself for one, [`FlowError::Invalid`] listing all of
    /// them for several: how validation reports everything it found at once.
    pub fn from_problems(agent: &str, mut problems: Vec<FlowError>) -> Result<(), FlowError> {
        match problems.len() {
            0 => Ok(()),
            1 => Err(problems.remove(0)),
            _ => Err(FlowError::Invalid {
                agent: agent.to_owned(),
                errors: problems,
            }),
        }
    }
}

fn stopped_states(running: &[String]) -> String {
    if running.is_empty() {
        String::new()
    } else {
        format!(" with {} still running (stopped)", backticked(running))
    }
}

/// Names as `` `a`, `b` ``.
fn backticked(names: &[String]) -> String {
    names
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn fork_of(fork: &Option<String>) -> String {
    match fork {
        Some(fork) => format!(" forked by `{fork}`"),
        None => String::new(),
    }
}

fn declare_hint(declare: &[String]) -> String {
    if declare.is_empty() {
        "these declared joins reach each other: make one lead to the other only, or end a branch before the other join".to_owned()
    } else {
        format!(
            "declare the successors of {} (`.successors(..)`, as `#[workflow]` does) so that joins are exact",
            backticked(declare)
        )
    }
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(name) => format!(" (did you mean `{name}`?)"),
        None => String::new(),
    }
}

/// Who a refused acquisition was for, as the start of a message.
fn refused_caller(state: &Option<String>) -> String {
    match state {
        Some(state) => format!("state `{state}` was not called"),
        None => "an acquisition was refused".to_owned(),
    }
}

fn bullet_list(errors: &[FlowError]) -> String {
    errors.iter().map(|e| format!("\n  - {e}")).collect()
}

/// The error a state returned.
///
/// It keeps the error itself (so that [`StateError::downcast_ref`] gives back the user's type)
/// and its message with the chain of sources, separated by `: `. Cloning shares the error.
/// Two `StateError`s are equal when their messages are.
#[derive(Debug, Clone)]
pub struct StateError {
    message: String,
    error: Option<Arc<dyn Error + Send + Sync + 'static>>,
}

impl StateError {
    /// An error with this message and no typed error behind it.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            error: None,
        }
    }

    /// Captures an error and the messages of its chain of sources.
    pub fn from_boxed(error: Box<dyn Error + Send + Sync + 'static>) -> Self {
        let message = chain_message(&*error);
        Self {
            message,
            error: Some(Arc::from(error)),
        }
    }

    /// The full message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The original error, if it is a `T`.
    pub fn downcast_ref<T: Error + 'static>(&self) -> Option<&T> {
        self.error.as_deref()?.downcast_ref::<T>()
    }
}

fn chain_message(error: &(dyn Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Some error types repeat their source in their own message already.
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

impl PartialEq for StateError {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for StateError {}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for StateError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[test]
    fn state_error_keeps_the_source_chain() {
        let error = StateError::from_boxed(Box::new(Outer(Inner)));
        assert_eq!(error.message(), "outer: inner");
        assert!(error.downcast_ref::<Outer>().is_some());
        assert!(error.downcast_ref::<Inner>().is_none());
        assert_eq!(error, StateError::new("outer: inner"));
    }

    #[test]
    fn messages_name_the_value_and_the_fix() {
        let error = FlowError::UnknownTransition {
            agent: "a".into(),
            from: "x".into(),
            to: "fromat".into(),
            suggestion: Some("format".into()),
        };
        assert_eq!(
            error.to_string(),
            "state `x` of workflow `a` returned a transition to `fromat`, but there is no state of that name (did you mean `format`?); add it with `add_state` or fix the name"
        );
        let many = FlowError::Invalid {
            agent: "a".into(),
            errors: vec![
                FlowError::DuplicateState {
                    agent: "a".into(),
                    state: "x".into(),
                },
                FlowError::NoStates { agent: "a".into() },
            ],
        };
        assert!(
            many.to_string()
                .starts_with("workflow `a` is invalid (2 problems):\n  - ")
        );
    }
}
