//! Vocabulary shared by the fluffy-flow macros and runtime.
//!
//! This crate has no async runtime in it: it holds the types a workflow is described with
//! ([`Next`], [`Priority`], the status enums), the error type every fallible call returns
//! ([`FlowError`]), and the state graph with its validation ([`StateGraph`]), which the builder
//! runs when a run starts and the macros will run at compile time.
#![warn(missing_docs)]

mod coordination;
mod error;
mod graph;
mod hash;
mod next;
mod options;
mod priority;
mod spec;
mod status;
mod suggest;

pub use coordination::{CoordinationDecl, LONGEST_RATE_PERIOD, RateLimitSpec};
pub use error::{FlowError, StateError};
pub use graph::{StateGraph, StateId, StateSpec};
pub use hash::{FxBuildHasher, FxHashMap, FxHashSet, FxHasher};
pub use next::{Fanout, Next, StateName};
pub use options::{
    DependencyLifecycle, DependencyType, Jitter, ResourceRequirements, RetryOn, RetryPolicy,
    dependency_problems, parse_duration,
};
pub use priority::Priority;
pub use spec::{BreakerSpec, BulkheadSpec, DependencyDecl, StateDecl, WorkflowSpec, find_cycle};
pub use status::{AgentStatus, StateStatus};
pub use suggest::closest_name;
