//! What is kept when a state fails for good: dead letters.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The context key under which an `on_error` handler finds the [`DeadLetter`] of the failure
/// it handles (read it with [`crate::Context::failure`]).
pub const FAILURE_KEY: &str = "fluffy_flow.failure";

/// How many dead letters an agent keeps across its runs (the oldest are dropped first; every
/// run's report keeps all of its own).
pub const DEAD_LETTER_CAPACITY: usize = 1000;

/// How a state's attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The state returned an error.
    Error,
    /// The state panicked.
    Panic,
    /// The attempt ran past the state's timeout.
    Timeout,
    /// The state's circuit breaker was open: the state was not called.
    CircuitOpen,
    /// The state's bulkhead was full: the state was not called.
    BulkheadFull,
    /// The state waited too long for the resource pool: it was not called.
    ResourceTimeout,
    /// The state waited too long at an admission gate (a rate limit): it was not called.
    AdmissionTimeout,
    /// A rate limit refused the state outright (a full leaky bucket): it was not called.
    RateLimited,
    /// A coordination primitive refused the state (a quota spent for good, a request larger
    /// than the primitive), or it held a mutex or lease past its TTL and was cancelled.
    Coordination,
    /// A dependency failed, could no longer run, or was waited for past its timeout: the
    /// state was not called (and is not retried).
    Dependency,
    /// Nobody answered one of the state's input requests in time and it had no default
    /// (`FlowError::InputTimeout`).
    InputTimeout,
}

impl FailureKind {
    /// The kind's name in snake case, as serialized: `error`, `timeout`, `circuit_open`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Panic => "panic",
            Self::Timeout => "timeout",
            Self::CircuitOpen => "circuit_open",
            Self::BulkheadFull => "bulkhead_full",
            Self::ResourceTimeout => "resource_timeout",
            Self::AdmissionTimeout => "admission_timeout",
            Self::RateLimited => "rate_limited",
            Self::Coordination => "coordination",
            Self::Dependency => "dependency",
            Self::InputTimeout => "input_timeout",
        }
    }
}

/// The record of a state that failed after its last attempt: kept in the run's report and by
/// the agent, and handed to the state's `on_error` handler through the context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The run it happened in.
    pub run_id: u64,
    /// The state that failed.
    pub state: String,
    /// The last attempt's error message.
    pub error: String,
    /// How the last attempt failed.
    pub kind: FailureKind,
    /// How many attempts were made (1 + retries).
    pub attempts: u32,
    /// Whether the last attempt timed out.
    pub timed_out: bool,
    /// When it was recorded (wall clock).
    pub at: SystemTime,
    /// The context at that moment, as JSON (`{"snapshot_error": ..}` if a value could not be
    /// serialized).
    pub context: serde_json::Value,
    /// What became of the failure: its `on_error` handler ran, only its branch ended (see
    /// `Agent::on_branch_failure`), or it failed the run.
    #[serde(default)]
    pub outcome: FailureOutcome,
}

/// What became of a failure (see [`DeadLetter::outcome`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureOutcome {
    /// It failed the run.
    #[default]
    FailedRun,
    /// The state's `on_error` handler ran, on its branch.
    Handled {
        /// The handler.
        by: String,
    },
    /// Its branch ended and the rest of the run went on (`BranchFailure::Continue`).
    EndedBranch,
}

/// What a failure with no `on_error` handler does to a run (see
/// `Agent::on_branch_failure`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BranchFailure {
    /// It fails the run, and the run stops its other states (fail-fast, the default).
    #[default]
    FailRun,
    /// It ends its branch only: the other branches go on, and a run that then has nothing
    /// left to do ends `AgentStatus::CompletedWithFailures`, its report listing each failure
    /// (`RunReport::failed_branches`). States that depend on the failed one learn it failed.
    Continue,
}

#[cfg(test)]
mod tests {
    use super::FailureKind;

    #[test]
    fn a_kind_is_named_as_it_is_serialized() {
        use FailureKind::*;
        for kind in [
            Error,
            Panic,
            Timeout,
            CircuitOpen,
            BulkheadFull,
            ResourceTimeout,
            AdmissionTimeout,
            RateLimited,
            Coordination,
            Dependency,
            InputTimeout,
        ] {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(kind.as_str())
            );
        }
    }
}
