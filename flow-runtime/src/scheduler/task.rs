//! One state run as a tokio task: panics caught, timeout applied, outcome sent back.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use flow_core::{Next, StateError};
use tokio::sync::mpsc::UnboundedSender;

use crate::context::Context;
use crate::state_fn::{StateFn, StateFuture};

/// How a state run ended.
pub(crate) enum Outcome {
    Finished(Result<Next, StateError>),
    Panicked(String),
    TimedOut(Duration),
}

/// What the coordinator hears.
pub(crate) enum Message {
    Done { slot: u32, outcome: Outcome },
    Cancel,
    Deadline,
}

pub(crate) async fn supervise(
    body: Arc<dyn StateFn>,
    context: Context,
    limit: Option<Duration>,
    slot: u32,
    report: UnboundedSender<Message>,
) {
    // Calling the body may itself panic, before there is a future to poll.
    let outcome = match catch_unwind(AssertUnwindSafe(|| body.call(context))) {
        Err(payload) => Outcome::Panicked(panic_message(payload)),
        Ok(run) => match limit {
            None => CatchUnwind(run).await,
            Some(limit) => tokio::time::timeout(limit, CatchUnwind(run))
                .await
                .unwrap_or(Outcome::TimedOut(limit)),
        },
    };
    // The coordinator is gone only when the run was stopped; nobody needs the outcome then.
    let _ = report.send(Message::Done { slot, outcome });
}

/// Polls a state's future, turning a panic into an outcome.
struct CatchUnwind(StateFuture);

impl Future for CatchUnwind {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Outcome> {
        match catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(result)) => Poll::Ready(Outcome::Finished(result)),
            Err(payload) => Poll::Ready(Outcome::Panicked(panic_message(payload))),
        }
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "a panic with a non-string payload".to_owned(),
        },
    }
}
