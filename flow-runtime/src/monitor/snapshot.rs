//! What a [`Monitor`](super::Monitor) reports: plain serde data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything a monitor has seen, aggregated across the runs of the agents it watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// By workflow (agent name).
    pub workflows: BTreeMap<String, WorkflowMetrics>,
    /// The resource pools of the agents watched (with `MetricType::RESOURCES`).
    pub pools: Option<Vec<PoolMetrics>>,
}

/// One resource pool, as the monitor reads it when the snapshot is taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolMetrics {
    /// The workflows watched that draw from it.
    pub workflows: Vec<String>,
    /// Each kind the pool has some of.
    pub kinds: Vec<ResourceMetrics>,
}

/// One kind of resource in a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceMetrics {
    /// `cpu`, `memory_mb`, `io`, `network` or `gpu`.
    pub kind: String,
    /// The pool's total.
    pub capacity: f64,
    /// Held now.
    pub in_use: f64,
    /// The most held at once.
    pub peak: f64,
    /// The share of the capacity held on average since the pool's first grant (0 to 1).
    pub utilisation: f64,
    /// Grants that included this kind.
    pub grants: u64,
    /// Times a state had to wait for this kind.
    pub waits: u64,
}

/// One workflow's metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkflowMetrics {
    /// Runs by outcome.
    pub runs: RunOutcomes,
    /// How long runs took, start to end (with `MetricType::TIMING`).
    pub run_duration: Option<Summary>,
    /// How long completed attempts of all its states ran (with `MetricType::TIMING`).
    pub state_duration: Option<Summary>,
    /// By state.
    pub states: BTreeMap<String, StateMetrics>,
    /// States and runs per second (with `MetricType::THROUGHPUT`).
    pub throughput: Option<Throughput>,
    /// States running now, and the most at once (with `MetricType::STATE`).
    pub concurrency: Option<Concurrency>,
    /// Failures by kind (with `MetricType::ERRORS`).
    pub errors: Option<BTreeMap<String, u64>>,
    /// The longest chain of required dependencies a run of it resolved (with
    /// `MetricType::TIMING`; `None` until one state has waited for another).
    pub longest_dependency_chain: Option<DependencyChain>,
}

/// Runs by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOutcomes {
    /// Runs started.
    pub started: u64,
    /// Runs that completed.
    pub completed: u64,
    /// Runs that completed with failures that ended branches (`BranchFailure::Continue`).
    #[serde(default)]
    pub completed_with_failures: u64,
    /// Runs that failed.
    pub failed: u64,
    /// Runs that were cancelled.
    pub cancelled: u64,
    /// Runs that suspended waiting for input.
    pub awaiting_input: u64,
}

/// One state's metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateMetrics {
    /// Attempts started.
    pub started: u64,
    /// Attempts that completed.
    pub completed: u64,
    /// Attempts that failed and were retried (not counted in `failed`).
    pub retried: u64,
    /// Runs that failed for good, after their retries.
    pub failed: u64,
    /// Attempts cancelled because their run stopped.
    pub cancelled: u64,
    /// How long completed attempts ran (with `MetricType::TIMING`).
    pub duration: Option<Summary>,
    /// How long attempts waited from ready to started: for a slot, the resource pool and
    /// admission gates (with `MetricType::TIMING`).
    pub queue_wait: Option<Summary>,
    /// How long the state waited blocked before it became ready: at a join for sibling
    /// branches, or on its dependencies (with `MetricType::TIMING`).
    pub blocked: Option<Summary>,
    /// Input requests (with `MetricType::INPUT`).
    pub input: Option<InputMetrics>,
    /// What released the state when it waited on its dependencies, by the dependency that
    /// completed last before it could start (the one it was held up by), with how long it
    /// waited in all (with `MetricType::TIMING`; empty for a state without dependencies).
    pub blocked_on: BTreeMap<String, BlockedOn>,
}

/// How often, and how long, a state waited for one dependency last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockedOn {
    /// Times this dependency was the last one the state waited for.
    pub times: u64,
    /// How long the state had waited by then (blocked to ready).
    pub waited: Summary,
}

/// The longest chain of required dependencies one run resolved: each state waited for the
/// one before it (`a` ← `b` ← `c`: `c` requires `b`, which requires `a`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DependencyChain {
    /// How many states it links (2 for one state and its dependency).
    pub length: u32,
    /// The states, the first dependency first.
    pub states: Vec<String>,
}

/// A state's input requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputMetrics {
    /// Requests made.
    pub requested: u64,
    /// Requests answered.
    pub answered: u64,
    /// Answers refused.
    pub refused: u64,
    /// Requests that timed out.
    pub timed_out: u64,
    /// How long answered requests waited for their answer.
    pub wait: Option<Summary>,
}

/// A distribution of durations, in milliseconds.
///
/// Kept in a log-linear histogram of microseconds: count, min, max and mean are exact; each
/// percentile is at most 1% above the exact value (never below it, never above the max).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// How many.
    pub count: u64,
    /// The shortest.
    pub min_ms: f64,
    /// The mean.
    pub mean_ms: f64,
    /// The median.
    pub p50_ms: f64,
    /// The 95th percentile.
    pub p95_ms: f64,
    /// The 99th percentile.
    pub p99_ms: f64,
    /// The longest.
    pub max_ms: f64,
}

/// States and runs per second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// States completed per second over the last window.
    pub states_per_s_window: f64,
    /// Runs finished per second over the last window.
    pub runs_per_s_window: f64,
    /// The window, in seconds (see `Monitor::window`).
    pub window_s: f64,
    /// States completed per second since the monitor saw its first event of this workflow.
    pub states_per_s: f64,
    /// Runs finished per second since then.
    pub runs_per_s: f64,
}

/// States running and queued.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concurrency {
    /// Running now.
    pub running: u64,
    /// The most that ran at once.
    pub peak: u64,
    /// Ready and waiting to start now (for a slot, the pool or a gate).
    pub queued: u64,
}
