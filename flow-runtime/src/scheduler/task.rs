//! One state run as a tokio task: panics caught, timeout applied, outcome sent back.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use flow_core::StateId;
use flow_core::{Next, StateError};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::joins::Branch;

use crate::context::Context;
use crate::coordination::AttemptIdentity;
use crate::state_fn::{StateFn, StateFuture};

/// How a state run ended.
pub(crate) enum Outcome {
    Finished(Result<Next, StateError>),
    Panicked(String),
    TimedOut(Duration),
    /// An admission gate refused the attempt outright.
    Refused(flow_core::FlowError),
}

/// What the coordinator hears: from its state tasks, its timers, and the run's controls.
pub(crate) enum Message {
    /// A state task finished its attempt.
    Done {
        slot: u32,
        ticket: u64,
        outcome: Outcome,
    },
    /// A state held its thread this long in one poll (over `Agent::warn_blocking`'s threshold).
    Blocking {
        slot: u32,
        ticket: u64,
        held: Duration,
    },
    /// A running state's timeout passed, by the coordinator's own timer.
    StateDeadline {
        slot: u32,
        ticket: u64,
        limit: Duration,
    },
    /// A retry's delay is over.
    Retry {
        timer: u32,
        state: StateId,
        branch: Branch,
        attempt: u32,
    },
    /// Stop starting states; answer when nothing runs.
    Pause(oneshot::Sender<()>),
    /// Start states again.
    Resume,
    /// The earliest instant a state waiting at an admission gate may ask it again has come.
    GateDue,
    /// Something happened to an input request (asked, answered, refused, timed out,
    /// withdrawn): published as this event, and an answer is checkpointed.
    Input(crate::events::EventKind),
    /// A coordination primitive or the resource pool got something back: the states waiting
    /// at that gate (by index) may ask again.
    GateReleased { gate: usize },
    /// A running state still holds a mutex or lease past its TTL (by the coordinator's timer).
    HoldExpired { slot: u32, ticket: u64, gate: usize },
    /// A ready state's acquisition timeout passed (the entry, by its sequence number).
    AcquireDeadline { seq: u64 },
    /// Cancel the running and ready runs of a state; answer how many.
    CancelState {
        state: StateId,
        reply: oneshot::Sender<usize>,
    },
    /// The run was cancelled.
    Cancel,
    /// The run's timeout passed.
    Deadline,
    /// A state waiting on its dependencies reached a dependency's timeout.
    DependencyDeadline { waiter: u32, token: u64 },
    /// Report which states wait on which dependencies.
    Blocked(oneshot::Sender<Vec<super::BlockedState>>),
    /// Take a checkpoint.
    Checkpoint(oneshot::Sender<super::PendingCheckpoint>),
    /// The checkpoint interval passed.
    CheckpointTick,
    /// A subgraph state's run saved a checkpoint into this run's records.
    SubgraphProgress,
    /// The checkpoint writer finished a save (with its error, if it failed).
    CheckpointSaved(Option<flow_core::FlowError>),
}

/// Calls a state's body; a panic in the call itself (before any future exists) is an outcome.
pub(crate) fn start(body: &Arc<dyn StateFn>, context: &Context) -> Result<StateFuture, Outcome> {
    catch_unwind(AssertUnwindSafe(|| body.call(context.clone())))
        .map_err(|payload| Outcome::Panicked(panic_message(payload)))
}

/// Runs a state's body to its end here, panics caught: its result, or the panic's message
/// (for an attempt another process sent, see `crate::remote`).
pub(crate) async fn run_detached(
    body: &Arc<dyn StateFn>,
    context: &Context,
) -> Result<Result<Next, StateError>, String> {
    let outcome = match start(body, context) {
        Ok(run) => {
            plain(Attempt {
                run,
                identity: None,
            })
            .await
        }
        Err(outcome) => outcome,
    };
    match outcome {
        Outcome::Finished(result) => Ok(result),
        Outcome::Panicked(message) => Err(message),
        // (Neither comes from a plain attempt: no timer, no gate.)
        Outcome::TimedOut(limit) => Err(format!("timed out after {limit:?}")),
        Outcome::Refused(error) => Err(error.to_string()),
    }
}

/// A state's future, with what the attempt is (for the primitives its body takes).
pub(crate) struct Attempt {
    pub(crate) run: StateFuture,
    pub(crate) identity: Option<AttemptIdentity>,
}

/// Polls a state's future once, here, as its attempt; `None` if it is not finished.
pub(crate) fn poll_once(attempt: &mut Attempt, cx: &mut TaskContext<'_>) -> Option<Outcome> {
    let run = &mut attempt.run;
    let polled = AttemptIdentity::polling(&mut attempt.identity, || {
        catch_unwind(AssertUnwindSafe(|| run.as_mut().poll(cx)))
    });
    match polled {
        Ok(Poll::Pending) => None,
        Ok(Poll::Ready(result)) => Some(Outcome::Finished(result)),
        Err(payload) => Some(Outcome::Panicked(panic_message(payload))),
    }
}

/// The plain attempt: the state's future, panics caught.
pub(crate) fn plain(attempt: Attempt) -> impl Future<Output = Outcome> + Send {
    CatchUnwind(attempt)
}

/// What a state task holds of its run: one reference for the channel to the coordinator and
/// the halt flag (one reference-count update per task, as a bare sender clone would cost).
pub(crate) struct TaskLink {
    pub(crate) report: UnboundedSender<Message>,
    /// Set when the run's future was dropped with no cleanup time (see `Agent::run_with`).
    pub(crate) halted: Arc<AtomicBool>,
    /// Polls longer than this are reported (see `Agent::warn_blocking`).
    pub(crate) blocking: Option<Duration>,
}

/// Drives a state's attempt as a task and reports how it ended. Once the run is halted (its
/// future dropped) the attempt is not polled again and reports nothing.
pub(crate) async fn supervise<F: Future<Output = Outcome> + Send>(
    attempt: F,
    limit: Option<Duration>,
    slot: u32,
    ticket: u64,
    link: Arc<TaskLink>,
) {
    let mut attempt = std::pin::pin!(attempt);
    let unless_halted = std::future::poll_fn(|cx| {
        if link.halted.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        let Some(threshold) = link.blocking else {
            return attempt.as_mut().poll(cx).map(Some);
        };
        let began = std::time::Instant::now();
        let polled = attempt.as_mut().poll(cx).map(Some);
        let held = began.elapsed();
        if held > threshold {
            let _ = link.report.send(Message::Blocking { slot, ticket, held });
        }
        polled
    });
    let outcome = match limit {
        None => unless_halted.await,
        // Boxed: a timer is large, and most states have none; keeping it out of this future
        // keeps every spawn small.
        Some(limit) => Box::pin(tokio::time::timeout(limit, unless_halted))
            .await
            .unwrap_or(Some(Outcome::TimedOut(limit))),
    };
    let Some(outcome) = outcome else { return };
    // The coordinator is gone only when the run was stopped; nobody needs the outcome then.
    let _ = link.report.send(Message::Done {
        slot,
        ticket,
        outcome,
    });
}

/// Polls a state's future, turning a panic into an outcome.
struct CatchUnwind(Attempt);

impl Future for CatchUnwind {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Outcome> {
        match poll_once(&mut self.0, cx) {
            Some(outcome) => Poll::Ready(outcome),
            None => Poll::Pending,
        }
    }
}

/// A panic's message (`String` or `&str` payloads), or a placeholder.
pub(crate) fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "a panic with a non-string payload".to_owned(),
        },
    }
}
