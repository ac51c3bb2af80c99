//! The agent's side of remote states (see `crate::remote`): dispatching its `remote` states'
//! attempts, and running one sent here.

use super::*;
use crate::remote::{Dispatch, Dispatched, RemoteCall, RemoteError, RemoteReply, next_image};

impl Agent {
    /// Whether any of its states is `remote` (see [`crate::StateOptions::remote`]).
    pub fn has_remote_states(&self) -> bool {
        self.definition.states.iter().any(|state| state.remote)
    }

    /// This workflow with its `remote` states' attempts sent through `dispatch` (the other
    /// states run here as before). The agent shares this one's events and dead letters.
    pub fn dispatching(&self, dispatch: Arc<dyn Dispatch>) -> Agent {
        let mut definition = (*self.definition).clone();
        // (Compiled again, with the dispatching bodies.)
        definition.compiled = std::sync::OnceLock::new();
        for state in definition.states.iter_mut().filter(|state| state.remote) {
            state.func = Arc::new(Dispatched {
                dispatch: Arc::clone(&dispatch),
            });
            // The predicate ran where the typed error was; an error of the transport itself
            // is retried.
            if state.retry_if.is_some() {
                state.retry_if = Some(Arc::new(|error: &StateError| {
                    error
                        .downcast_ref::<RemoteError>()
                        .is_none_or(|remote| remote.retryable)
                }));
            }
        }
        Agent {
            definition: Arc::new(definition),
            shared: Arc::clone(&self.shared),
            events: self.events.clone(),
        }
    }

    /// Runs one attempt of a remote state here, as `call` describes it, and returns its reply
    /// (the transition and the writes it made, or its error or panic). The attempt's own
    /// timeout and the run's cancellation stay with the run's coordinator, which withdraws
    /// the call; drop this future then.
    ///
    /// Fails (a [`FlowError`], not a reply) when the call is not for this workflow, or names
    /// a state it does not have or that is not `remote`.
    pub async fn execute_remote(&self, call: RemoteCall) -> Result<RemoteReply, FlowError> {
        let compiled = self.compiled()?;
        if call.workflow != *compiled.name {
            return Err(FlowError::InvalidConfig {
                agent: compiled.name.to_string(),
                message: format!(
                    "a call for workflow `{}` was given to this one: register that workflow with the worker",
                    call.workflow
                ),
            });
        }
        let unknown = || FlowError::UnknownState {
            state: call.state.clone(),
            suggestion: flow_core::closest_name(
                &call.state,
                self.definition.states.iter().map(|s| s.spec.name.as_str()),
            )
            .map(str::to_owned),
        };
        let state = compiled.graph.id(&call.state).ok_or_else(unknown)?;
        let definition = &self.definition.states[state.index()];
        if !definition.remote {
            return Err(FlowError::RemoteState {
                state: call.state.clone(),
                what: "its body (it is not marked `remote` in this process's definition)".into(),
                fix: "run the same definition of the workflow in every worker".into(),
            });
        }
        let run = crate::context::RunInfo {
            key: Arc::from(call.run_key.as_str()),
            id: 0,
            graph: Arc::clone(&compiled.graph),
            workflow: Arc::clone(&compiled.name),
            inputs: Arc::new(crate::input::InputHub::remote()),
            reducers: Arc::clone(&compiled.reducers),
            stream: Arc::default(),
            events: self.events.clone(),
            event_run_id: 0,
            path: None,
            subgraphs: None,
        };
        let (ctx, cell) = Context::for_remote(
            call.context,
            call.input,
            run,
            (state, call.attempt, call.visit),
        );
        let outcome = match crate::scheduler::run_detached(&definition.func, &ctx).await {
            Ok(result) => result,
            Err(message) => return Ok(RemoteReply::panicked(message)),
        };
        let (writes, failed_write) = cell.finish(outcome.is_ok());
        let failed = |message: String, retryable: bool| RemoteReply::failed(message, retryable);
        Ok(match (outcome, failed_write) {
            (Err(error), _) => {
                let retryable = definition.retry_if.as_ref().is_none_or(|retryable| {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| retryable(&error)))
                        .unwrap_or(false)
                });
                failed(error.message().to_owned(), retryable)
            }
            (Ok(_), Some(error)) => failed(error.to_string(), false),
            (Ok(next), None) => match next_image(next) {
                Ok(next) => RemoteReply::returned(next, crate::context::writes_image(writes)?),
                Err(message) => failed(message, false),
            },
        })
    }
}
