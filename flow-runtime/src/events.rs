//! Lifecycle events of runs, on one subscription API.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use flow_core::AgentStatus;
use futures_core::Stream;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::probe::ProbeList;

/// Something that happened in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The run it happened in (see [`crate::RunHandle::run_id`]).
    pub run_id: u64,
    /// When, on tokio's clock (so that tests on a paused clock see exact times).
    pub at: Instant,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of [`Event`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// The run started.
    RunStarted {
        /// The workflow's name.
        agent: Arc<str>,
    },
    /// The run finished.
    RunFinished {
        /// Its final status.
        status: AgentStatus,
        /// How long it ran.
        duration: Duration,
    },
    /// A state was scheduled and waits for a free slot.
    StateReady {
        /// The state.
        state: Arc<str>,
    },
    /// A state waits: a branch arrived there and waits for sibling branches (a join), or it
    /// waits on its dependencies.
    StateBlocked {
        /// The state.
        state: Arc<str>,
    },
    /// A state started running.
    StateStarted {
        /// The state.
        state: Arc<str>,
        /// Which run of this state in this run it is (1 for the first).
        run: u32,
        /// Which attempt of that run (1 for the first, more after retries).
        attempt: u32,
    },
    /// An attempt failed and the state will be tried again after `delay`.
    StateRetrying {
        /// The state.
        state: Arc<str>,
        /// The attempt that will run next.
        attempt: u32,
        /// How long until it runs.
        delay: Duration,
        /// Why the last attempt failed.
        error: String,
    },
    /// The run was paused: no new state starts until it is resumed.
    RunPaused,
    /// The run was resumed.
    RunResumed,
    /// A state finished successfully.
    StateCompleted {
        /// The state.
        state: Arc<str>,
        /// How long it ran.
        duration: Duration,
    },
    /// A state failed for good (after its retries): returned an error, panicked, timed out,
    /// or was refused.
    StateFailed {
        /// The state.
        state: Arc<str>,
        /// The error's message.
        error: String,
        /// What kind of failure it was.
        kind: crate::FailureKind,
    },
    /// A running state was cancelled because the run stopped.
    StateCancelled {
        /// The state.
        state: Arc<str>,
    },
    /// A state asked for input (see `Context::human_input`).
    InputRequested {
        /// The state.
        state: Arc<str>,
        /// The request.
        id: crate::InputId,
        /// What it asks.
        prompt: String,
    },
    /// An answer was recorded.
    InputAnswered {
        /// The state.
        state: Arc<str>,
        /// The request.
        id: crate::InputId,
        /// Who answered.
        by: String,
    },
    /// An answer was refused (by the request's type or validator); the request stays pending.
    InputRefused {
        /// The state.
        state: Arc<str>,
        /// The request.
        id: crate::InputId,
        /// Who answered.
        by: String,
        /// Why it was refused.
        reason: String,
    },
    /// Nobody answered in time.
    InputTimedOut {
        /// The state.
        state: Arc<str>,
        /// The request.
        id: crate::InputId,
        /// Whether the request's default was used (else the attempt failed).
        used_default: bool,
    },
    /// The state stopped waiting before an answer came (cancelled, or the run stopped).
    InputWithdrawn {
        /// The state.
        state: Arc<str>,
        /// The request.
        id: crate::InputId,
    },
}

/// Why [`EventStream::recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventStreamError {
    /// The subscriber fell behind and this many events were overwritten; the stream goes on
    /// with the oldest event still kept. Raise the capacity with
    /// [`crate::Agent::event_capacity`] or read faster.
    #[error(
        "the event subscriber fell behind and missed {0} events; raise `event_capacity` or read faster"
    )]
    Lagged(u64),
    /// The agent and every run of it are gone: no more events will come.
    #[error("no more events: the agent and all its runs are gone")]
    Closed,
}

/// Publishes events of every run of one agent. Publishing costs one atomic load when nobody
/// subscribes: the channel is only created by the first subscriber.
#[derive(Clone)]
pub(crate) struct EventHub {
    shared: Arc<HubShared>,
}

struct HubShared {
    capacity: usize,
    sender: OnceLock<broadcast::Sender<Event>>,
    subscribers: Arc<AtomicUsize>,
    /// In-process observers of the runs (monitors), kept when the channel is replaced.
    probes: Arc<ProbeList>,
}

impl EventHub {
    pub(crate) fn new(capacity: usize) -> Self {
        Self::with_probes(capacity, Arc::default())
    }

    fn with_probes(capacity: usize, probes: Arc<ProbeList>) -> Self {
        Self {
            shared: Arc::new(HubShared {
                capacity,
                sender: OnceLock::new(),
                subscribers: Arc::new(AtomicUsize::new(0)),
                probes,
            }),
        }
    }

    /// A hub with a new channel of `capacity`, and the same probes.
    pub(crate) fn resized(&self, capacity: usize) -> Self {
        Self::with_probes(capacity, Arc::clone(&self.shared.probes))
    }

    /// The probes registered with this hub's agent.
    pub(crate) fn probes(&self) -> &ProbeList {
        &self.shared.probes
    }

    pub(crate) fn is_observed(&self) -> bool {
        self.shared.subscribers.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn publish(&self, event: Event) {
        if let Some(sender) = self.shared.sender.get() {
            // An error only means that every subscriber has just gone.
            let _ = sender.send(event);
        }
    }

    pub(crate) fn subscribe(&self) -> EventStream {
        let sender = self
            .shared
            .sender
            .get_or_init(|| broadcast::channel(self.shared.capacity).0);
        self.shared.subscribers.fetch_add(1, Ordering::Relaxed);
        EventStream {
            receiver: Some(sender.subscribe()),
            waiting: None,
            subscribers: Arc::clone(&self.shared.subscribers),
        }
    }
}

/// The wait for the next event: it owns the receiver while it waits (a broadcast receiver has
/// no poll method), and gives it back with the event.
type PendingRecv =
    Pin<Box<dyn Future<Output = (Result<Event, broadcast::error::RecvError>, Receiver)> + Send>>;
type Receiver = broadcast::Receiver<Event>;

/// A subscription to the events of every run of an agent, from the moment it was made.
///
/// It is a [`Stream`] of `Result<Event, EventStreamError>` that ends when the agent and every
/// run of it are gone, and has [`EventStream::next`] to read it without importing a stream
/// trait. Events are kept in a ring buffer of the agent's [`crate::Agent::event_capacity`]; a
/// subscriber that falls further behind gets [`EventStreamError::Lagged`] with how many it
/// missed, then the oldest event still kept. For the events of one run, ending with it, see
/// [`crate::Agent::start_watched`] and [`crate::RunHandle::events`].
pub struct EventStream {
    /// `None` while `waiting` holds it.
    receiver: Option<Receiver>,
    waiting: Option<PendingRecv>,
    // Only the counter: holding the hub would keep the sender, and the stream, open forever.
    subscribers: Arc<AtomicUsize>,
}

impl EventStream {
    /// The next event, waiting for it; `None` once no more can come.
    ///
    /// The same as [`StreamExt::next`](https://docs.rs/tokio-stream/latest/tokio_stream/trait.StreamExt.html#method.next),
    /// without importing it.
    pub async fn next(&mut self) -> Option<Result<Event, EventStreamError>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The next event, waiting for it; [`EventStreamError::Closed`] once no more can come.
    pub async fn recv(&mut self) -> Result<Event, EventStreamError> {
        self.next().await.unwrap_or(Err(EventStreamError::Closed))
    }

    /// The next event if one is there, without waiting.
    pub fn try_recv(&mut self) -> Option<Result<Event, EventStreamError>> {
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(self).poll_next(&mut cx) {
            Poll::Ready(Some(event)) => Some(event),
            Poll::Ready(None) => Some(Err(EventStreamError::Closed)),
            Poll::Pending => None,
        }
    }

    /// Every event already published and not yet read, without waiting.
    pub fn drain(&mut self) -> Result<Vec<Event>, EventStreamError> {
        let mut events = Vec::new();
        while let Some(event) = self.try_recv() {
            events.push(event?);
        }
        Ok(events)
    }
}

fn received(
    result: Result<Event, broadcast::error::RecvError>,
) -> Option<Result<Event, EventStreamError>> {
    match result {
        Ok(event) => Some(Ok(event)),
        Err(broadcast::error::RecvError::Lagged(n)) => Some(Err(EventStreamError::Lagged(n))),
        Err(broadcast::error::RecvError::Closed) => None,
    }
}

impl Stream for EventStream {
    type Item = Result<Event, EventStreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(waiting) = this.waiting.as_mut() {
            let Poll::Ready((result, receiver)) = waiting.as_mut().poll(cx) else {
                return Poll::Pending;
            };
            this.waiting = None;
            this.receiver = Some(receiver);
            return Poll::Ready(received(result));
        }
        let Some(mut receiver) = this.receiver.take() else {
            return Poll::Ready(None);
        };
        // Take what is there without allocating; box a wait only when there is nothing.
        match receiver.try_recv() {
            Ok(event) => {
                this.receiver = Some(receiver);
                Poll::Ready(Some(Ok(event)))
            }
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                this.receiver = Some(receiver);
                Poll::Ready(Some(Err(EventStreamError::Lagged(n))))
            }
            Err(broadcast::error::TryRecvError::Closed) => {
                this.receiver = Some(receiver);
                Poll::Ready(None)
            }
            Err(broadcast::error::TryRecvError::Empty) => {
                this.waiting = Some(Box::pin(async move {
                    let result = receiver.recv().await;
                    (result, receiver)
                }));
                self.poll_next(cx)
            }
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The events of one run, from its start (with [`crate::Agent::start_watched`]) or from the
/// moment of [`crate::RunHandle::events`], ending with the run: after its
/// [`EventKind::RunFinished`], or, if that was published before the subscription, as soon as
/// the run has finished.
///
/// A [`Stream`] of `Result<Event, EventStreamError>`, with [`RunEvents::next`] to read it
/// without importing a stream trait:
///
/// ```
/// use flow_core::{FlowError, Next};
/// use flow_runtime::{Agent, Context, EventKind};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), FlowError> {
/// let mut agent = Agent::new("progress");
/// agent.add_state("only", |_ctx: Context| async move { Ok(Next::End) });
/// let (handle, mut events) = agent.start_watched(Context::new())?;
/// let mut finished = 0;
/// while let Some(event) = events.next().await {
///     if let EventKind::StateCompleted { .. } = event.expect("kept up").kind {
///         finished += 1;
///     }
/// }
/// assert_eq!(finished, 1);
/// assert!(handle.wait().await.is_success());
/// # Ok(())
/// # }
/// ```
///
/// It reads the agent's event channel and keeps this run's events, so
/// [`EventStreamError::Lagged`] counts the events of every run of the agent that this
/// subscriber missed (raise [`crate::Agent::event_capacity`] when many runs go at once).
pub struct RunEvents {
    events: EventStream,
    run_id: u64,
    /// Fires once the run has published its last event (or its coordinator is gone).
    finished: Pin<Box<WaitForCancellationFutureOwned>>,
    state: RunEventsState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RunEventsState {
    Open,
    /// The run has finished: what is still in the buffer is read, then the stream ends.
    Draining,
    Ended,
}

impl RunEvents {
    pub(crate) fn new(events: EventStream, run_id: u64, finished: CancellationToken) -> Self {
        Self {
            events,
            run_id,
            finished: Box::pin(finished.cancelled_owned()),
            state: RunEventsState::Open,
        }
    }

    /// The run these are the events of.
    pub fn run_id(&self) -> u64 {
        self.run_id
    }

    /// The next event of the run, waiting for it; `None` once the run has ended and every one
    /// of its events has been read.
    pub async fn next(&mut self) -> Option<Result<Event, EventStreamError>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for RunEvents {
    type Item = Result<Event, EventStreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.state == RunEventsState::Ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.events).poll_next(cx) {
                Poll::Ready(Some(Ok(event))) => {
                    if event.run_id != this.run_id {
                        continue;
                    }
                    if matches!(event.kind, EventKind::RunFinished { .. }) {
                        this.state = RunEventsState::Ended;
                    }
                    return Poll::Ready(Some(Ok(event)));
                }
                Poll::Ready(Some(Err(lagged))) => return Poll::Ready(Some(Err(lagged))),
                Poll::Ready(None) => {
                    this.state = RunEventsState::Ended;
                    return Poll::Ready(None);
                }
                Poll::Pending if this.state == RunEventsState::Draining => {
                    this.state = RunEventsState::Ended;
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    // Every event of the run is published before `finished` fires: once it
                    // has, what is not in the buffer will never come.
                    if this.finished.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.state = RunEventsState::Draining;
                }
            }
        }
    }
}
