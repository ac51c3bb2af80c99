#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub use flow_core::{
    AgentStatus, FlowError, Next, Priority, StateError, StateGraph, StateId, StateName, StateSpec,
    StateStatus,
};
pub use flow_runtime::{
    Agent, BoxError, Context, ContextValue, DEFAULT_EVENT_CAPACITY, Event, EventKind, EventStream,
    EventStreamError, MAX_EVENT_CAPACITY, RunCounts, RunHandle, RunReport, StateOptions,
    StateReport, StateResult,
};

/// Everything a workflow usually needs, in one import: `use fluffy_flow::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Agent, AgentStatus, Context, FlowError, Next, Priority, RunReport, StateResult, StateStatus,
    };
}

/// Items the macros' generated code refers to. Not a public API: it changes without notice.
#[doc(hidden)]
pub mod __private {
    pub use flow_core;
    pub use flow_runtime;
}
