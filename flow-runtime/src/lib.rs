//! The tokio runtime of fluffy-flow.
//!
//! [`Agent`] is the builder and the entry point; a run is driven by one coordinator task that
//! owns the scheduler's state, while states run as tokio tasks. See the `fluffy-flow` crate for
//! the guide.
#![warn(missing_docs)]

mod agent;
mod checkpoint;
mod context;
mod coordination;
mod dependency;
mod events;
mod failure;
mod input;
mod monitor;
mod probe;
pub mod remote;
mod resilience;
mod resources;
mod run;
mod scheduler;
mod state_fn;
mod stream;
mod subgraph;
mod team;
mod workflow;

pub use agent::{
    Agent, DEFAULT_EVENT_CAPACITY, DEFAULT_INPUT_POLL_INTERVAL, DEFAULT_MAX_STEPS,
    DEFAULT_PRIORITY_AGING, MAX_EVENT_CAPACITY, StateOptions,
};
pub use checkpoint::{
    ATTEMPT_HISTORY, AnswerInbox, AttemptOutcome, AttemptRecord, AttemptTimes, CHECKPOINT_FORMAT,
    CancelOutcome, CancelRecord, Checkpoint, CheckpointContext, CheckpointPolicy, CheckpointStore,
    FileStore, MemoryStore, QueuePlace, QueuedState, RedbStore, StateCheckpoint, StoredRun,
    attempt_times, cancel_in_this_process, epoch_ms, requeue_resumed, runs_in_this_process,
};
pub use context::{Context, ContextValue, Reducer};
pub use coordination::{
    CoordinationStatus, DeclaredPrimitives, FlowBarrier, FlowMutex, FlowSemaphore, HoldGuard,
    HolderStatus, Lease, NamedPrimitive, PrimitiveKind, PrimitiveStatus, Quota, RateLimit,
    SharedAcquire, SharedGate, SharedHold,
};
pub use dependency::{Condition, DependencyConfig};
pub use events::{Event, EventKind, EventStream, EventStreamError, RunEvents};
pub use failure::{
    BranchFailure, DEAD_LETTER_CAPACITY, DeadLetter, FAILURE_KEY, FailureKind, FailureOutcome,
};
pub use input::{
    Ask, ChannelProvider, DEFAULT_INPUT_TIMEOUT, HumanInput, InputAnswerer, InputId, InputOutcome,
    InputProvider, InputRecord, InputRequest, InputRequests, PendingInput, PostedAnswer, Refusal,
    TerminalProvider,
};
#[cfg(feature = "metrics")]
pub use monitor::MetricsExporter;
pub use monitor::{
    BlockedOn, Concurrency, DEFAULT_THROUGHPUT_WINDOW, DependencyChain, InputMetrics, MetricType,
    Monitor, MonitorUpdates, PoolMetrics, ResourceMetrics, RunOutcomes, Snapshot, StateMetrics,
    Summary, Throughput, UpdateGuard, WorkflowMetrics,
};
pub use resilience::{BreakerState, Bulkhead, CircuitBreaker};
pub use resources::{Allocation, ResourceKind, ResourcePool, UsageStats, Waiting};
pub use run::{RunCounts, RunHandle, RunReport, RunWarning, StateReport};
pub use scheduler::BlockedState;
#[doc(hidden)]
pub use schemars;
pub use state_fn::{BoxError, StateResult};
pub use stream::{RunStream, STREAM_CAPACITY, StreamMode, StreamPart};
pub use subgraph::{IntoSubgraph, SubgraphMapping};
pub use team::{Team, TeamReport};
pub use workflow::Workflow;
