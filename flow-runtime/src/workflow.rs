//! The bridge between `#[workflow]` and the builder: a workflow type knows its static graph and
//! how to register its states on an [`Agent`].

use std::sync::Arc;

use flow_core::WorkflowSpec;

use crate::agent::Agent;

/// A workflow written with `#[workflow]` on an `impl` block. The macro implements it; users
/// call [`Workflow::agent`] (or [`Workflow::agent_shared`] to keep a handle on the value).
pub trait Workflow: Send + Sync + Sized + 'static {
    /// The workflow's states, transitions, dependencies and options, known at compile time.
    const GRAPH: WorkflowSpec;

    /// Adds every state to `agent`, each calling its method on `this`. Generated; not meant to
    /// be called by hand.
    #[doc(hidden)]
    fn __register(this: Arc<Self>, agent: &mut Agent);

    /// The agent that runs this workflow, owning `self`.
    fn agent(self) -> Agent {
        Self::agent_shared(Arc::new(self))
    }

    /// The agent that runs this workflow on a shared value.
    fn agent_shared(this: Arc<Self>) -> Agent {
        let mut agent = Agent::new(Self::GRAPH.name);
        if let Some(limit) = Self::GRAPH.max_concurrent {
            agent.max_concurrent(limit);
        }
        if let Some(timeout) = Self::GRAPH.timeout {
            agent.timeout(timeout);
        }
        if let Some(timeout) = Self::GRAPH.cleanup_timeout {
            agent.cleanup_timeout(timeout);
        }
        if let Some(limit) = Self::GRAPH.max_steps {
            agent.max_steps(limit);
        }
        Self::__register(this, &mut agent);
        agent
    }
}
