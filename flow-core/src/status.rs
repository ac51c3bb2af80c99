//! Status of a run and of each state in it.

use serde::{Deserialize, Serialize};

/// Where a run (or the latest run of an agent) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Not started.
    Idle,
    /// States are running or ready.
    Running,
    /// No new state starts until the run is resumed.
    Paused,
    /// Every branch ended.
    Completed,
    /// Every branch ended, and some ended because a state failed with no `on_error` handler
    /// (the run goes on past such failures under `BranchFailure::Continue`): the report
    /// lists them.
    CompletedWithFailures,
    /// A state failed (error, panic or timeout), a transition named an unknown state, or the run
    /// timed out.
    Failed,
    /// The run was cancelled.
    Cancelled,
    /// A durable run that suspends on input (`Agent::suspend_on_input`) stopped with every
    /// running state waiting for an answer; its last checkpoint lists the requests. Running
    /// it again (`run_durable`) continues it.
    AwaitingInput,
}

/// Where one state of a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateStatus {
    /// Not scheduled (yet).
    Pending,
    /// Scheduled and waiting for a free slot.
    Ready,
    /// Running now.
    Running,
    /// Its last run finished.
    Completed,
    /// Its last run returned an error or panicked.
    Failed,
    /// It waits: a branch arrived and waits for sibling branches that may still reach it (a
    /// join), or it waits on its dependencies.
    Blocked,
    /// Its run was cancelled.
    Cancelled,
    /// Its last run exceeded its timeout.
    Timeout,
}

macro_rules! u8_codec {
    ($ty:ident { $($variant:ident = $code:literal),* $(,)? }) => {
        impl $ty {
            /// A compact code, for storing the status in an atomic.
            pub const fn as_u8(self) -> u8 {
                match self { $($ty::$variant => $code),* }
            }

            /// The inverse of `as_u8`; `None` for a code no variant has.
            pub const fn from_u8(code: u8) -> Option<Self> {
                match code { $($code => Some($ty::$variant),)* _ => None }
            }
        }
    };
}

u8_codec!(AgentStatus { Idle = 0, Running = 1, Paused = 2, Completed = 3, Failed = 4, Cancelled = 5, AwaitingInput = 6, CompletedWithFailures = 7 });
u8_codec!(StateStatus {
    Pending = 0,
    Ready = 1,
    Running = 2,
    Completed = 3,
    Failed = 4,
    Blocked = 5,
    Cancelled = 6,
    Timeout = 7,
});

impl AgentStatus {
    /// True for a run that ended having done its work: `Completed`, or
    /// `CompletedWithFailures` (some branches failed, the rest of the work was done).
    pub const fn is_completed(self) -> bool {
        matches!(
            self,
            AgentStatus::Completed | AgentStatus::CompletedWithFailures
        )
    }

    /// True once the run can change no more.
    pub const fn is_finished(self) -> bool {
        matches!(
            self,
            AgentStatus::Completed
                | AgentStatus::CompletedWithFailures
                | AgentStatus::Failed
                | AgentStatus::Cancelled
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in 0..=7u8 {
            assert_eq!(
                StateStatus::from_u8(code).map(StateStatus::as_u8),
                Some(code)
            );
        }
        for code in 0..=7u8 {
            assert_eq!(
                AgentStatus::from_u8(code).map(AgentStatus::as_u8),
                Some(code)
            );
        }
        assert_eq!(StateStatus::from_u8(8), None);
        assert_eq!(AgentStatus::from_u8(8), None);
    }
}
