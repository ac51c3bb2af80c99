//! Turning user functions into states the scheduler can call.

use std::error::Error;
use std::future::Future;
use std::pin::Pin;

use flow_core::{Next, StateError};

use crate::context::Context;

/// The error type of [`StateResult`]: any error, boxed. `?` converts into it from every error
/// type that implements `std::error::Error + Send + Sync`, and from `anyhow::Error`.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// What a state returns, with the default error type. A state may use any other error type
/// instead (its own enum, `anyhow::Error`, `Box<dyn Error>`): see [`crate::Agent::add_state`].
pub type StateResult<E = BoxError> = Result<Next, E>;

/// The boxed future of one state run, its error already captured as text.
pub(crate) type StateFuture = Pin<Box<dyn Future<Output = Result<Next, StateError>> + Send>>;

/// A state's body, callable many times (loops, concurrent runs).
pub(crate) trait StateFn: Send + Sync + 'static {
    fn call(&self, ctx: Context) -> StateFuture;
}

/// Adapts an async function or closure taking the context.
pub(crate) struct FnState<F>(pub(crate) F);

impl<F, Fut, E> StateFn for FnState<F>
where
    F: Fn(Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Next, E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    fn call(&self, ctx: Context) -> StateFuture {
        let run = (self.0)(ctx);
        Box::pin(async move {
            run.await
                .map_err(|error| StateError::from_boxed(error.into()))
        })
    }
}
