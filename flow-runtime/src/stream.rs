//! Streaming a run as it goes: the context after each state, the writes each state makes,
//! what states send with `ctx.emit`, and the run's events.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll};

use futures_core::Stream;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::events::Event;

/// How many parts a stream holds for a reader that has not taken them yet (see
/// [`RunStream`] for what happens when it is full).
pub const STREAM_CAPACITY: usize = 1024;

/// What a [`RunStream`] carries: any union of the modes, `StreamMode::VALUES |
/// StreamMode::CUSTOM`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamMode(u8);

impl StreamMode {
    /// The run's context (its shared values) after each state that completes.
    pub const VALUES: Self = Self(1);
    /// Each write a state makes to the context, as it makes it: key and value.
    pub const UPDATES: Self = Self(2);
    /// What states send with `ctx.emit(value)`: tokens of a model's answer, progress.
    pub const CUSTOM: Self = Self(4);
    /// The run's events (see [`Event`]).
    pub const EVENTS: Self = Self(8);
    /// Everything.
    pub const ALL: Self = Self(15);

    /// Whether every mode of `other` is in this one.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for StreamMode {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// One part of a run's stream.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StreamPart {
    /// [`StreamMode::VALUES`]: the context's shared values after `state` completed. (Writes
    /// that stay with a branch until a join, see the README's "Reducers and maps over data",
    /// appear once they are joined into the run's context.)
    Values {
        /// The state that completed.
        after: Arc<str>,
        /// Every value, as JSON.
        values: Map<String, Value>,
    },
    /// [`StreamMode::UPDATES`]: `state` wrote `value` under `key` (for a key with a reducer,
    /// the contribution; `None`: it removed the key).
    Update {
        /// The state that wrote.
        state: Arc<str>,
        /// The key.
        key: String,
        /// The value written, as JSON; `None` for a removal.
        value: Option<Value>,
    },
    /// [`StreamMode::CUSTOM`]: what `state` sent with `ctx.emit`.
    Custom {
        /// The state that sent it.
        state: Arc<str>,
        /// The value, as JSON.
        value: Value,
    },
    /// [`StreamMode::EVENTS`]: an event of the run.
    Event(Event),
    /// The reader fell behind: this many parts of the values, updates and events modes were
    /// dropped at this point of the stream (custom parts never are: `emit` waits for room
    /// instead).
    Missed {
        /// How many.
        count: u64,
    },
}

/// A stream of a run's parts, in the order they happened (see [`StreamMode`]); it ends when
/// the run has ended and every part was read.
///
/// **Back-pressure.** It holds up to [`STREAM_CAPACITY`] parts. A state's `ctx.emit(value)`
/// waits while it is full, so a slow reader slows the state that emits (never the rest of the
/// run). Values, updates and events are made by the scheduler and by state writes, which do
/// not wait: when the stream is full they are dropped, and the reader gets a
/// [`StreamPart::Missed`] with their number where they would have been.
pub struct RunStream {
    receiver: mpsc::Receiver<StreamPart>,
    missed: Arc<AtomicU64>,
}

impl RunStream {
    /// The next part, waiting for it; `None` once the run has ended and every part was read.
    /// (The same as `StreamExt::next`, without importing it.)
    pub async fn next(&mut self) -> Option<StreamPart> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for RunStream {
    type Item = StreamPart;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<StreamPart>> {
        match self.receiver.poll_recv(cx) {
            // Parts dropped after the last that came, with no room left to say so in line.
            Poll::Ready(None) => {
                let missed = self.missed.swap(0, Ordering::AcqRel);
                Poll::Ready((missed > 0).then_some(StreamPart::Missed { count: missed }))
            }
            other => other,
        }
    }
}

struct Reader {
    modes: StreamMode,
    sender: mpsc::Sender<StreamPart>,
    missed: Arc<AtomicU64>,
}

/// The readers of one run's stream.
#[derive(Default)]
pub(crate) struct StreamHub {
    readers: Mutex<Vec<Reader>>,
    /// The union of the readers' modes: what the run must make at all.
    modes: AtomicU8,
    /// The run ended: new readers get an ended stream.
    closed: AtomicBool,
    /// A subgraph's run: where its custom parts and events go on to (see `nested`).
    forward: Option<Forward>,
}

/// The stream of the run a subgraph's run is part of, and the subgraph state's name there.
struct Forward {
    to: Arc<StreamHub>,
    state: Arc<str>,
}

/// What a subgraph's run passes on to its parent's stream: what its states emit, and its
/// events (already named by their path). Its values and writes are of its own context: the
/// parent's stream shows the outputs its mapping copies back.
const FORWARDED: StreamMode = StreamMode(StreamMode::CUSTOM.0 | StreamMode::EVENTS.0);

impl StreamHub {
    /// The stream hub of a subgraph's run, inside state `state` of the run `parent` streams:
    /// what its states emit reaches the parent's readers as `state/emitter`, and its events
    /// reach them too; the run's end does not end the parent's streams.
    pub(crate) fn nested(parent: Arc<StreamHub>, state: Arc<str>) -> Self {
        Self {
            forward: Some(Forward { to: parent, state }),
            ..Self::default()
        }
    }

    /// `part` as the parent of a subgraph's run sees it: an emitter named by its path.
    fn forwarded(forward: &Forward, part: StreamPart) -> StreamPart {
        match part {
            StreamPart::Custom { state, value } => StreamPart::Custom {
                state: Arc::from(format!("{}/{state}", forward.state)),
                value,
            },
            other => other,
        }
    }

    /// Whether the parent (of a subgraph's run) wants `mode`.
    fn forward_wanting(&self, mode: StreamMode) -> Option<&Forward> {
        let forward = self.forward.as_ref()?;
        let mode = StreamMode(mode.0 & FORWARDED.0);
        (mode.0 != 0 && forward.to.wants(mode)).then_some(forward)
    }

    /// A new reader of `modes` (an ended stream if the run has ended).
    pub(crate) fn subscribe(&self, modes: StreamMode) -> RunStream {
        let (sender, receiver) = mpsc::channel(STREAM_CAPACITY);
        let missed = Arc::default();
        let mut readers = self.lock();
        if !self.closed.load(Ordering::Acquire) {
            readers.push(Reader {
                modes,
                sender,
                missed: Arc::clone(&missed),
            });
            self.modes.fetch_or(modes.0, Ordering::AcqRel);
        }
        RunStream { receiver, missed }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Reader>> {
        self.readers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether some reader wants `mode` (one atomic load: the cost to a run nobody streams).
    pub(crate) fn wants(&self, mode: StreamMode) -> bool {
        StreamMode(self.modes.load(Ordering::Acquire)).intersects(mode)
            || (self.forward.is_some() && self.forward_wanting(mode).is_some())
    }

    /// Sends `part` (of `mode`) to the readers that want it, without waiting: a full stream
    /// drops it and counts it missed.
    pub(crate) fn publish(&self, mode: StreamMode, part: impl FnOnce() -> StreamPart) {
        if !self.wants(mode) {
            return;
        }
        self.publish_part(mode, part());
    }

    /// `publish`, the part made.
    fn publish_part(&self, mode: StreamMode, part: StreamPart) {
        if let Some(forward) = self.forward_wanting(mode) {
            forward
                .to
                .publish_part(mode, Self::forwarded(forward, part.clone()));
        }
        if !StreamMode(self.modes.load(Ordering::Acquire)).intersects(mode) {
            return;
        }
        let mut readers = self.lock();
        readers.retain(|reader| {
            if !reader.modes.intersects(mode) {
                return true;
            }
            // Parts dropped before this one are said first, in line, when there is room.
            let missed = reader.missed.load(Ordering::Acquire);
            if missed > 0 {
                match reader.sender.try_send(StreamPart::Missed { count: missed }) {
                    Ok(()) => {
                        reader.missed.fetch_sub(missed, Ordering::AcqRel);
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        reader.missed.fetch_add(1, Ordering::AcqRel);
                        return true;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            match reader.sender.try_send(part.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    reader.missed.fetch_add(1, Ordering::AcqRel);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        self.recompute(&readers);
    }

    /// Sends a custom part to the readers that want it, waiting for room in each.
    pub(crate) async fn emit(&self, part: StreamPart) {
        if !self.wants(StreamMode::CUSTOM) {
            return;
        }
        if let Some(forward) = self.forward_wanting(StreamMode::CUSTOM) {
            let parent = Box::pin(forward.to.emit(Self::forwarded(forward, part.clone())));
            parent.await;
        }
        let senders: Vec<mpsc::Sender<StreamPart>> = self
            .lock()
            .iter()
            .filter(|reader| reader.modes.intersects(StreamMode::CUSTOM))
            .map(|reader| reader.sender.clone())
            .collect();
        for sender in senders {
            // A reader that went away takes nothing.
            let _ = sender.send(part.clone()).await;
        }
    }

    /// The run ended: every stream ends once read to the end.
    pub(crate) fn close(&self) {
        let mut readers = self.lock();
        self.closed.store(true, Ordering::Release);
        readers.clear();
        self.modes.store(0, Ordering::Release);
    }

    fn recompute(&self, readers: &[Reader]) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let modes = readers
            .iter()
            .fold(0, |modes, reader| modes | reader.modes.0);
        self.modes.store(modes, Ordering::Release);
    }
}

/// Ends a run's streams when dropped: when its coordinator is done, also if it panicked.
pub(crate) struct CloseOnDrop(pub(crate) Arc<StreamHub>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}
