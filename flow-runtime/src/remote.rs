//! States run by another process: what a run sends out for a `remote` state's attempt, what
//! comes back, and the agent's two sides of it.
//!
//! A run's own process (its *coordinator*) keeps the scheduler: joins, retries, timeouts,
//! gates and checkpoints stay where they are. Only the attempt's body runs elsewhere. The
//! coordinator sends a [`RemoteCall`]: the context as the state's branch sees it, and its map
//! item. The process that takes the call ([`Agent::execute_remote`]) runs the body against a
//! context made from it, and records every write the body makes (with its kind: a replacing
//! write, a removal, a contribution to a key's reducer) instead of applying it. The
//! [`RemoteReply`] carries those writes and the transition back, and the coordinator applies
//! them to the state's own handle, as if the body had made them there: a branch's writes stay
//! with the branch until it joins, and contributions fold in fork order. So a run gives the
//! same result whether its remote states ran here or elsewhere.
//!
//! The transport is a [`Dispatch`]: `flow-postgres` sends calls through the database to any
//! worker; a test can send them over a channel.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use flow_core::{FlowError, Next, StateError, StateName};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::context::{Context, OpsImage};
use crate::state_fn::{StateFn, StateFuture};

/// Sends a remote state's attempt somewhere to run, and brings its reply back.
///
/// Dropping the returned future withdraws the call (the run stopped, or the state's timeout
/// passed): the transport should tell whoever runs it to stop.
pub trait Dispatch: Send + Sync + 'static {
    /// Runs `call` (with [`Agent::execute_remote`] of the same workflow, in any process) and
    /// returns its reply. An error here (the transport failed) fails the attempt, which is
    /// retried under the state's retry policy.
    fn dispatch(&self, call: RemoteCall) -> DispatchFuture;
}

/// What [`Dispatch::dispatch`] returns.
pub type DispatchFuture = Pin<Box<dyn Future<Output = Result<RemoteReply, FlowError>> + Send>>;

/// One attempt of a remote state, as it is sent out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteCall {
    /// The workflow's name.
    pub workflow: String,
    /// The run's key.
    pub run_key: String,
    /// The state.
    pub state: String,
    /// The attempt (1, or more for a retry).
    pub attempt: u32,
    /// Which run of the state in the run (see [`Context::visit`]).
    pub visit: u32,
    /// The context as the state's branch sees it.
    pub context: Map<String, Value>,
    /// The item of its `Next::map` branch, if it is on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
}

/// How a remote attempt ended, and the writes it made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteReply {
    outcome: RemoteOutcome,
    /// Its writes by key, in the order made (only for an attempt that returned a transition:
    /// a failed attempt's writes are dropped, as they are for a state run here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    writes: OpsImage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RemoteOutcome {
    Next(NextImage),
    Failed { message: String, retryable: bool },
    Panicked(String),
}

/// A transition as it travels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum NextImage {
    End,
    To(String),
    Parallel(Vec<String>),
    Map { state: String, items: Vec<Value> },
}

/// The error a remote state returned (its message; whether the state's `retry_if` retries it,
/// decided where it ran, where the typed error was).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    /// The error's message, with its chain of sources.
    pub message: String,
    /// Whether the state's retry predicate retries it.
    pub retryable: bool,
}

impl RemoteReply {
    /// A reply saying the attempt failed with `message` (for a transport that gives up on a
    /// call: its workers kept dying under it, say).
    pub fn failed(message: impl Into<String>, retryable: bool) -> Self {
        Self {
            outcome: RemoteOutcome::Failed {
                message: message.into(),
                retryable,
            },
            writes: Vec::new(),
        }
    }

    /// The reply of an attempt that returned `next` after making `writes`.
    pub(crate) fn returned(next: NextImage, writes: OpsImage) -> Self {
        Self {
            outcome: RemoteOutcome::Next(next),
            writes,
        }
    }

    /// The reply of an attempt that panicked.
    pub(crate) fn panicked(message: String) -> Self {
        Self {
            outcome: RemoteOutcome::Panicked(message),
            writes: Vec::new(),
        }
    }

    /// Whether the attempt returned a transition (rather than failing or panicking).
    pub fn succeeded(&self) -> bool {
        matches!(self.outcome, RemoteOutcome::Next(_))
    }

    /// Applies the reply to the state's own handle: its writes, then its outcome.
    fn apply(self, ctx: &Context) -> Result<Next, StateError> {
        match self.outcome {
            RemoteOutcome::Next(next) => {
                ctx.apply_writes(self.writes)
                    .map_err(|error| StateError::from_boxed(Box::new(error)))?;
                Ok(match next {
                    NextImage::End => Next::End,
                    NextImage::To(state) => Next::To(StateName::from(state)),
                    NextImage::Parallel(states) => Next::parallel(states),
                    NextImage::Map { state, items } => Next::map(state, items),
                })
            }
            RemoteOutcome::Failed { message, retryable } => {
                Err(StateError::from_boxed(Box::new(RemoteError {
                    message,
                    retryable,
                })))
            }
            // Raised again here, so that the run sees a panic (and its retry policy's `on`
            // decides), without the panic hook printing it a second time.
            RemoteOutcome::Panicked(message) => std::panic::resume_unwind(Box::new(message)),
        }
    }
}

pub(crate) fn next_image(next: Next) -> Result<NextImage, String> {
    Ok(match next {
        Next::End => NextImage::End,
        Next::To(state) => NextImage::To(state.to_string()),
        Next::Parallel(states) => {
            NextImage::Parallel(states.iter().map(|s| s.to_string()).collect())
        }
        Next::Map(fanout) => {
            let (state, items) = fanout.into_parts();
            let items = items.map_err(|(index, error)| {
                format!("item {index} of its `Next::map` did not serialize: {error}")
            })?;
            NextImage::Map {
                state: state.to_string(),
                items,
            }
        }
    })
}

/// A remote state's body in a dispatching agent: sends the attempt out, applies the reply.
pub(crate) struct Dispatched {
    pub(crate) dispatch: Arc<dyn Dispatch>,
}

impl StateFn for Dispatched {
    fn call(&self, ctx: Context) -> StateFuture {
        let dispatch = Arc::clone(&self.dispatch);
        Box::pin(async move {
            let boxed = |error: FlowError| StateError::from_boxed(Box::new(error));
            let call = ctx.remote_call().map_err(boxed)?;
            let reply = dispatch.dispatch(call).await.map_err(boxed)?;
            reply.apply(&ctx)
        })
    }
}

/// A [`Dispatch`] that runs every call in this process, on a task of its own, after a round
/// trip through JSON as a transport makes: to check, without a database, that a workflow's
/// remote states give the same result when dispatched (their values survive JSON, they use
/// only what the context carries). Dropping a call's future aborts its task.
///
/// ```
/// # use std::sync::Arc;
/// # use flow_runtime::{Agent, Context};
/// # use flow_runtime::remote::LocalDispatch;
/// # use flow_core::Next;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut agent = Agent::new("double");
/// agent
///     .add_state("double", |ctx: Context| async move {
///         let n: u64 = ctx.get_state("n")?;
///         ctx.set_state("n", n * 2);
///         Ok(Next::end())
///     })
///     .remote();
/// let dispatch = LocalDispatch::new(&agent);
/// let dispatched = agent.dispatching(dispatch.clone());
/// let context = Context::new();
/// context.set_state("n", 21u64);
/// let report = dispatched.run_with(context).await.unwrap();
/// assert_eq!(report.context.get_state::<u64>("n").unwrap(), 42);
/// assert_eq!(dispatch.calls(), 1);
/// # }
/// ```
pub struct LocalDispatch {
    agent: crate::Agent,
    calls: std::sync::atomic::AtomicU64,
}

impl LocalDispatch {
    /// Runs the calls with `agent` (the workflow as defined, not a dispatching one).
    pub fn new(agent: &crate::Agent) -> Arc<Self> {
        Arc::new(Self {
            agent: agent.clone(),
            calls: Default::default(),
        })
    }

    /// How many calls it has taken.
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Through JSON and back, as a transport carries it.
fn over_the_wire<T: Serialize + serde::de::DeserializeOwned>(
    value: &T,
    what: &str,
) -> Result<T, FlowError> {
    let failed = |error: serde_json::Error| FlowError::Serialization {
        key: format!("({what})"),
        message: error.to_string(),
    };
    serde_json::to_vec(value)
        .and_then(|wire| serde_json::from_slice(&wire))
        .map_err(failed)
}

/// Aborts a task when its caller stops waiting.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Dispatch for LocalDispatch {
    fn dispatch(&self, call: RemoteCall) -> DispatchFuture {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let agent = self.agent.clone();
        Box::pin(async move {
            let call = over_the_wire(&call, "a remote call")?;
            let task = tokio::spawn(async move { agent.execute_remote(call).await });
            let _abort = AbortOnDrop(task.abort_handle());
            let reply = task.await.map_err(|error| FlowError::InvalidConfig {
                agent: "(local dispatch)".into(),
                message: format!("the task running a remote call ended: {error}"),
            })??;
            over_the_wire(&reply, "a remote reply")
        })
    }
}
