//! Lifecycle events of runs, on one subscription API.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use flow_core::AgentStatus;
use tokio::sync::broadcast;
use tokio::time::Instant;

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
    /// A state failed: returned an error, panicked or timed out.
    StateFailed {
        /// The state.
        state: Arc<str>,
        /// The error's message.
        error: String,
    },
    /// A running state was cancelled because the run stopped.
    StateCancelled {
        /// The state.
        state: Arc<str>,
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
}

impl EventHub {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shared: Arc::new(HubShared {
                capacity,
                sender: OnceLock::new(),
                subscribers: Arc::new(AtomicUsize::new(0)),
            }),
        }
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
            receiver: sender.subscribe(),
            subscribers: Arc::clone(&self.shared.subscribers),
        }
    }
}

/// A subscription to the events of every run of an agent, from the moment it was made.
///
/// Events are kept in a ring buffer of the agent's [`crate::Agent::event_capacity`]; a
/// subscriber that falls further behind is told how many it missed.
pub struct EventStream {
    receiver: broadcast::Receiver<Event>,
    // Only the counter: holding the hub would keep the sender, and the stream, open forever.
    subscribers: Arc<AtomicUsize>,
}

impl EventStream {
    /// The next event, waiting for it.
    pub async fn recv(&mut self) -> Result<Event, EventStreamError> {
        self.receiver.recv().await.map_err(|error| match error {
            broadcast::error::RecvError::Lagged(n) => EventStreamError::Lagged(n),
            broadcast::error::RecvError::Closed => EventStreamError::Closed,
        })
    }

    /// The next event if one is there, without waiting.
    pub fn try_recv(&mut self) -> Option<Result<Event, EventStreamError>> {
        match self.receiver.try_recv() {
            Ok(event) => Some(Ok(event)),
            Err(broadcast::error::TryRecvError::Empty) => None,
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                Some(Err(EventStreamError::Lagged(n)))
            }
            Err(broadcast::error::TryRecvError::Closed) => Some(Err(EventStreamError::Closed)),
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

impl Drop for EventStream {
    fn drop(&mut self) {
        self.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}
