#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub use flow_core::{
    AgentStatus, BreakerSpec, BulkheadSpec, CoordinationDecl, DependencyDecl, DependencyLifecycle,
    DependencyType, Fanout, FlowError, Jitter, Next, Priority, RateLimitSpec, ResourceRequirements,
    RetryOn, RetryPolicy, StateDecl, StateError, StateGraph, StateId, StateName, StateSpec,
    StateStatus, WorkflowSpec, parse_duration,
};
pub use flow_macros::{context, state, workflow};
#[cfg(feature = "metrics")]
pub use flow_runtime::MetricsExporter;
/// The JSON Schema derive for the answers of typed input requests (`ctx.ask::<T>`):
/// `#[derive(JsonSchema)]` with `#[schemars(crate = "fluffy_flow::schemars")]`, or depend on
/// `schemars` 1 yourself.
pub use flow_runtime::schemars;
pub use flow_runtime::{
    ATTEMPT_HISTORY, Agent, Allocation, AttemptOutcome, AttemptRecord, AttemptTimes, BlockedState,
    BoxError, BreakerState, Bulkhead, CHECKPOINT_FORMAT, CancelOutcome, CancelRecord, Checkpoint,
    CheckpointContext, CheckpointPolicy, CheckpointStore, CircuitBreaker, Condition, Context,
    ContextValue, CoordinationStatus, DEAD_LETTER_CAPACITY, DEFAULT_EVENT_CAPACITY,
    DEFAULT_MAX_STEPS, DEFAULT_PRIORITY_AGING, DeadLetter, DependencyConfig, Event, EventKind,
    EventStream, EventStreamError, FAILURE_KEY, FailureKind, FileStore, FlowBarrier, FlowMutex,
    FlowSemaphore, HoldGuard, HolderStatus, Lease, MAX_EVENT_CAPACITY, MemoryStore, PrimitiveKind,
    PrimitiveStatus, QueuePlace, QueuedState, Quota, RateLimit, RedbStore, Reducer, ResourceKind,
    ResourcePool, RunCounts, RunEvents, RunHandle, RunReport, RunWarning, StateCheckpoint,
    StateOptions, StateReport, StateResult, StoredRun, UsageStats, Waiting, Workflow,
    attempt_times, cancel_in_this_process, epoch_ms, requeue_resumed, runs_in_this_process,
};
pub use flow_runtime::{
    AnswerInbox, Ask, ChannelProvider, DEFAULT_INPUT_POLL_INTERVAL, DEFAULT_INPUT_TIMEOUT,
    HumanInput, InputAnswerer, InputId, InputOutcome, InputProvider, InputRecord, InputRequest,
    InputRequests, PendingInput, PostedAnswer, Refusal, TerminalProvider,
};
pub use flow_runtime::{
    BlockedOn, Concurrency, DEFAULT_THROUGHPUT_WINDOW, DependencyChain, InputMetrics, MetricType,
    Monitor, MonitorUpdates, PoolMetrics, ResourceMetrics, RunOutcomes, Snapshot, StateMetrics,
    Summary, Throughput, UpdateGuard, WorkflowMetrics,
};
pub use flow_runtime::{BranchFailure, FailureOutcome};
pub use flow_runtime::{NamedPrimitive, SharedAcquire, SharedGate, SharedHold};
pub use flow_runtime::{RunStream, STREAM_CAPACITY, StreamMode, StreamPart};
pub use flow_runtime::{SubgraphMapping, Team, TeamReport};

mod transitions;

/// PostgreSQL (cargo feature `postgres`): the checkpoint store and run queue that many
/// processes share, and the workers that claim runs from it.
#[cfg(feature = "postgres")]
pub mod postgres {
    pub use flow_postgres::{
        CancellationToken, DEFAULT_HEARTBEAT, DEFAULT_LEASE, DEFAULT_MAX_LAPSES,
        DEFAULT_PERMIT_TTL, FencedStore, PgBackend, PgPermit, PgRateLimit, PgSemaphore, PgStore,
        QueueStatus, QueuedRun, Submitted, TempCluster, Worker, WorkerReport, cluster,
    };
}

/// The `fluffy` command line (cargo feature `web`): list and show the runs of a store, answer
/// their input requests. `fluffy_flow::cli::main()` is the whole program, for a binary of
/// your own.
#[cfg(feature = "web")]
pub use flow_web::cli;

/// The web dashboard (cargo feature `web`): an axum `Router` over a store's runs, or served
/// with `dashboard::serve` (`fluffy serve`).
#[cfg(feature = "web")]
pub use flow_web::dashboard;

/// Remote states: a `remote` state's attempts sent to other processes (see the README's
/// "PostgreSQL" section for the workers that take them).
pub use flow_runtime::remote;

/// Everything a workflow usually needs, in one import: `use fluffy_flow::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Agent, AgentStatus, Context, FlowError, Next, Priority, Reducer, RunReport, StateResult,
        StateStatus, Workflow, context, end, goto, map, next, parallel, state, workflow,
    };
}

/// Items the macros' generated code refers to. Not a public API: it changes without notice.
#[doc(hidden)]
pub mod __private {
    pub use flow_core::{BreakerSpec, BulkheadSpec, DependencyDecl, DependencyLifecycle};
    pub use flow_core::{CoordinationDecl, RateLimitSpec};
    pub use flow_core::{
        DependencyType, FlowError, Jitter, Next, Priority, ResourceRequirements, RetryOn,
        RetryPolicy, StateDecl, WorkflowSpec,
    };
    pub use flow_runtime::{
        Agent, Bulkhead, CircuitBreaker, Context, ContextValue, DeclaredPrimitives,
        DependencyConfig, IntoSubgraph, RateLimit, Reducer, SubgraphMapping, Workflow,
    };
}
