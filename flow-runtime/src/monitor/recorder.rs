//! One run's side of a monitor: owned by the run's coordinator, it pairs the run's events
//! (ready with started, blocked with ready, asked with answered) without a lock or a lookup
//! by name, and hands compact records to the monitor's totals in batches.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flow_core::{AgentStatus, DependencyType, FxHashMap, StateId};
use tokio::time::Instant;

use super::aggregate::{Aggregate, Slots};
use crate::FailureKind;
use crate::agent::Compiled;
use crate::events::EventKind;
use crate::probe::{FLUSH_EVERY, RunProbe};

/// What one event of a run adds to the totals, with the pairing already done. States are
/// the run's state indexes.
pub(super) enum Record {
    RunStarted {
        at: Instant,
    },
    RunFinished {
        at: Instant,
        status: AgentStatus,
        duration: Duration,
        /// States it left ready but not started.
        still_queued: u64,
        /// The longest chain of required dependencies it resolved, first dependency first.
        chain: Option<Box<[usize]>>,
    },
    Ready {
        state: usize,
        /// How long it was blocked before (at a join or on dependencies), and the dependency
        /// that completed last meanwhile.
        blocked: Option<(Duration, Option<usize>)>,
    },
    Started {
        state: usize,
        /// How long it waited from ready (`None`: it was not queued, e.g. a retry).
        queue_wait: Option<Duration>,
    },
    Completed {
        state: usize,
        at: Instant,
        duration: Duration,
        left: Left,
    },
    Retried {
        state: usize,
        left: Left,
    },
    Failed {
        state: usize,
        kind: FailureKind,
        left: Left,
    },
    Cancelled {
        state: usize,
        left: Left,
    },
    InputRequested {
        state: usize,
    },
    InputAnswered {
        state: usize,
        wait: Option<Duration>,
    },
    InputRefused {
        state: usize,
    },
    InputTimedOut {
        state: usize,
    },
}

/// What an attempt that ended had been doing: running, still queued (refused at admission),
/// or neither (a report of something the recorder did not see start).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Left {
    Running,
    Queue,
    Nothing,
}

/// What the recorder knows of one state in its run. Instants are [`Stamp`]s: a graph of
/// thousands of states keeps 40 bytes each.
#[derive(Clone, Default)]
struct Local {
    /// When its oldest queued run became ready (later ones wait in `Recorder::more_ready`).
    ready: Stamp,
    blocked_since: Stamp,
    completed_at: Stamp,
    running: u32,
    /// The longest chain of required dependencies that ends here (0: none resolved), and
    /// the dependency before it in that chain.
    depth: u32,
    previous: u32,
}

/// An instant of the run as nanoseconds since the recorder's base, plus one; 0 is none.
type Stamp = u64;

pub(super) struct Recorder {
    compiled: Arc<Compiled>,
    base: Instant,
    /// The last instant stamped, and its stamp.
    last: (Instant, Stamp),
    totals: Arc<Mutex<Aggregate>>,
    slots: Option<Slots>,
    pending: Vec<Record>,
    /// By state index; sized at the run's first event of a state.
    states: Vec<Local>,
    more_ready: FxHashMap<usize, VecDeque<Stamp>>,
    queued: u64,
    asked: FxHashMap<String, Instant>,
    /// The end of the longest chain of required dependencies resolved so far.
    longest: Option<usize>,
}

impl Recorder {
    pub(super) fn new(compiled: Arc<Compiled>, totals: Arc<Mutex<Aggregate>>) -> Self {
        let base = Instant::now();
        Self {
            compiled,
            base,
            last: (base, 1),
            totals,
            slots: None,
            pending: Vec::new(),
            states: Vec::new(),
            more_ready: FxHashMap::default(),
            queued: 0,
            asked: FxHashMap::default(),
            longest: None,
        }
    }

    /// `at` as a stamp: the events of one step share their instant, so the last one is kept.
    fn stamp(&mut self, at: Instant) -> Stamp {
        if self.last.0 != at {
            let since = at.saturating_duration_since(self.base);
            let nanos = since
                .as_secs()
                .saturating_mul(1_000_000_000)
                .saturating_add(u64::from(since.subsec_nanos()));
            self.last = (at, nanos.saturating_add(1));
        }
        self.last.1
    }

    /// How long from `stamp` to `now` (`None` for no stamp).
    fn since(stamp: Stamp, now: Stamp) -> Option<Duration> {
        (stamp != 0).then(|| Duration::from_nanos(now.saturating_sub(stamp)))
    }

    /// The index of the state named `name`: `known` when the scheduler said.
    fn index(&mut self, known: Option<StateId>, name: &str) -> Option<usize> {
        let index = match known {
            Some(state) => state.index(),
            None => self.compiled.graph.id(name)?.index(),
        };
        if self.states.is_empty() {
            self.states = vec![Local::default(); self.compiled.graph.len()];
        }
        Some(index)
    }

    /// How an attempt of `state` that ended had been doing.
    fn left(&mut self, state: usize) -> Left {
        let local = &mut self.states[state];
        if local.running > 0 {
            local.running -= 1;
            Left::Running
        } else if self.pop_ready(state).is_some() {
            self.queued = self.queued.saturating_sub(1);
            Left::Queue
        } else {
            Left::Nothing
        }
    }

    fn pop_ready(&mut self, state: usize) -> Option<Stamp> {
        let oldest = std::mem::take(&mut self.states[state].ready);
        if oldest == 0 {
            return None;
        }
        if let Some(more) = self.more_ready.get_mut(&state) {
            self.states[state].ready = more.pop_front().unwrap_or(0);
            if more.is_empty() {
                self.more_ready.remove(&state);
            }
        }
        Some(oldest)
    }

    /// The dependency of `state` that completed last at or after `since`.
    fn released_by(&self, state: usize, since: Stamp) -> Option<usize> {
        self.compiled.states[state]
            .dependencies
            .iter()
            .filter_map(|d| {
                let at = self.states[d.on.index()].completed_at;
                (at != 0 && at >= since).then_some((at, d.on.index()))
            })
            .max()
            .map(|(_, on)| on)
    }

    /// Extends the chains of required dependencies to `state`, which is about to run.
    fn chain_to(&mut self, state: usize) {
        let best = self.compiled.states[state]
            .dependencies
            .iter()
            .filter(|d| d.config.kind == DependencyType::Required)
            .filter(|d| self.states[d.on.index()].completed_at != 0)
            .map(|d| (self.states[d.on.index()].depth.max(1), d.on.index()))
            .max();
        let Some((depth, previous)) = best else {
            return;
        };
        let longest = self.longest.map_or(0, |end| self.states[end].depth);
        let local = &mut self.states[state];
        local.depth = depth + 1;
        local.previous = previous as u32;
        if local.depth > longest {
            self.longest = Some(state);
        }
    }

    /// The longest chain found, first dependency first.
    fn longest_chain(&self) -> Option<Box<[usize]>> {
        let end = self.longest?;
        let length = self.states[end].depth as usize;
        let mut chain = Vec::with_capacity(length);
        let mut at = end;
        // (Bounded by its length: a chain rebuilt in a loop cannot send it round forever.)
        for _ in 0..length {
            chain.push(at);
            if self.states[at].depth <= 1 {
                break;
            }
            at = self.states[at].previous as usize;
        }
        chain.reverse();
        Some(chain.into_boxed_slice())
    }

    fn take(&mut self, at: Instant, known: Option<StateId>, kind: &EventKind) -> Option<Record> {
        Some(match kind {
            EventKind::RunStarted { .. } => Record::RunStarted { at },
            EventKind::RunFinished { status, duration } => Record::RunFinished {
                at,
                status: *status,
                duration: *duration,
                still_queued: std::mem::take(&mut self.queued),
                chain: self.longest_chain(),
            },
            EventKind::StateBlocked { state } => {
                let state = self.index(known, state)?;
                if self.states[state].blocked_since == 0 {
                    self.states[state].blocked_since = self.stamp(at);
                }
                return None;
            }
            EventKind::StateReady { state } => {
                let state = self.index(known, state)?;
                let stamp = self.stamp(at);
                let local = &mut self.states[state];
                match local.ready {
                    0 => local.ready = stamp,
                    _ => self.more_ready.entry(state).or_default().push_back(stamp),
                }
                self.queued += 1;
                let since = std::mem::take(&mut self.states[state].blocked_since);
                let blocked = Self::since(since, stamp)
                    .map(|waited| (waited, self.released_by(state, since)));
                if !self.compiled.states[state].dependencies.is_empty() {
                    self.chain_to(state);
                }
                Record::Ready { state, blocked }
            }
            EventKind::StateStarted { state, .. } => {
                let state = self.index(known, state)?;
                let now = self.stamp(at);
                let queue_wait = self
                    .pop_ready(state)
                    .and_then(|ready| Self::since(ready, now));
                if queue_wait.is_some() {
                    self.queued = self.queued.saturating_sub(1);
                }
                self.states[state].running += 1;
                Record::Started { state, queue_wait }
            }
            EventKind::StateCompleted { state, duration } => {
                let state = self.index(known, state)?;
                self.states[state].completed_at = self.stamp(at);
                Record::Completed {
                    state,
                    at,
                    duration: *duration,
                    left: self.left(state),
                }
            }
            EventKind::StateRetrying { state, .. } => {
                let state = self.index(known, state)?;
                Record::Retried {
                    state,
                    left: self.left(state),
                }
            }
            EventKind::StateFailed { state, kind, .. } => {
                let state = self.index(known, state)?;
                // A state failed at its dependencies was blocked, not queued.
                self.states[state].blocked_since = 0;
                Record::Failed {
                    state,
                    kind: *kind,
                    left: self.left(state),
                }
            }
            EventKind::StateCancelled { state } => {
                let state = self.index(known, state)?;
                Record::Cancelled {
                    state,
                    left: self.left(state),
                }
            }
            EventKind::InputRequested { state, id, .. } => {
                self.asked.insert(id.to_string(), at);
                Record::InputRequested {
                    state: self.index(known, state)?,
                }
            }
            EventKind::InputAnswered { state, id, .. } => {
                let wait = self
                    .asked
                    .remove(&id.to_string())
                    .map(|asked| at.saturating_duration_since(asked));
                Record::InputAnswered {
                    state: self.index(known, state)?,
                    wait,
                }
            }
            EventKind::InputRefused { state, .. } => Record::InputRefused {
                state: self.index(known, state)?,
            },
            EventKind::InputTimedOut { state, id, .. } => {
                self.asked.remove(&id.to_string());
                Record::InputTimedOut {
                    state: self.index(known, state)?,
                }
            }
            EventKind::InputWithdrawn { id, .. } => {
                self.asked.remove(&id.to_string());
                return None;
            }
            EventKind::RunPaused | EventKind::RunResumed => return None,
        })
    }
}

impl RunProbe for Recorder {
    fn record(&mut self, at: Instant, state: Option<StateId>, kind: &EventKind) {
        if let Some(record) = self.take(at, state, kind) {
            self.pending.push(record);
            if self.pending.len() >= FLUSH_EVERY {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
        let graph = &self.compiled.graph;
        totals.slots(&mut self.slots, &self.compiled.name, graph.len());
        let Some(slots) = self.slots.as_mut() else {
            return;
        };
        let name = |index: usize| Arc::clone(graph.name(StateId::new(index as u32)));
        for record in self.pending.drain(..) {
            totals.apply(slots, &name, record);
        }
    }
}
