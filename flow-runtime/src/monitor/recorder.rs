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
use crate::probe::{FLUSH_EVERY, RunProbe, StateEvent};

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
        /// The longest chain of required dependencies it resolved, first dependency first.
        chain: Option<Box<[usize]>>,
    },
    /// It became ready after it was blocked (at a join or on dependencies) this long; `on`
    /// is the dependency that completed last meanwhile.
    Unblocked {
        state: usize,
        waited: Duration,
        on: Option<usize>,
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
        /// Its start in the same batch, folded in (`Some(queue_wait)`): one record for both.
        started: Option<Option<Duration>>,
    },
    Retried {
        state: usize,
    },
    Failed {
        state: usize,
        kind: FailureKind,
    },
    Cancelled {
        state: usize,
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

/// A run's states running and ready to start now: kept by its recorder, handed to the
/// totals as it flushes (not one record per change).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Concurrency {
    pub(super) running: u64,
    pub(super) queued: u64,
}

/// What the recorder knows of one state in its run. (Instants are kept as they are: a
/// difference is taken only where a duration is recorded.)
#[derive(Clone, Default)]
struct Local {
    /// When its oldest queued run became ready (later ones wait in `Recorder::more_ready`).
    ready: Option<Instant>,
    blocked_since: Option<Instant>,
    running: u32,
}

/// What the recorder knows of one state in a run with dependencies (the others keep none).
#[derive(Clone, Default)]
struct Chain {
    /// Its last completion.
    completed_at: Option<Instant>,
    /// The longest chain of required dependencies that ends here (0: none resolved), and
    /// the dependency before it in that chain.
    depth: u32,
    previous: u32,
}

pub(super) struct Recorder {
    compiled: Arc<Compiled>,
    /// Whether any state of the workflow has dependencies (then completions are kept).
    dependencies: bool,
    totals: Arc<Mutex<Aggregate>>,
    slots: Option<Slots>,
    pending: Vec<Record>,
    /// By state index; sized at the run's first event of a state.
    states: Vec<Local>,
    /// By state index, sized with `states` in a run with dependencies (empty otherwise).
    chains: Vec<Chain>,
    more_ready: FxHashMap<usize, VecDeque<Instant>>,
    /// Running and queued now; what the totals were last told; the most running since.
    now: Concurrency,
    reported: Concurrency,
    peak: u64,
    asked: FxHashMap<String, Instant>,
    /// The end of the longest chain of required dependencies resolved so far.
    longest: Option<usize>,
}

impl Recorder {
    pub(super) fn new(compiled: Arc<Compiled>, totals: Arc<Mutex<Aggregate>>) -> Self {
        Self {
            dependencies: compiled.states.iter().any(|s| !s.dependencies.is_empty()),
            compiled,
            totals,
            slots: None,
            pending: Vec::new(),
            states: Vec::new(),
            chains: Vec::new(),
            more_ready: FxHashMap::default(),
            now: Concurrency::default(),
            reported: Concurrency::default(),
            peak: 0,
            asked: FxHashMap::default(),
            longest: None,
        }
    }

    /// How long from `earlier` (if any) to `at`.
    fn since(earlier: Option<Instant>, at: Instant) -> Option<Duration> {
        earlier.map(|earlier| at.saturating_duration_since(earlier))
    }

    /// The index of the state named `name` (input events name their state).
    fn index(&mut self, name: &str) -> Option<usize> {
        let index = self.compiled.graph.id(name)?.index();
        self.size();
        Some(index)
    }

    /// Makes room for every state of the run, at its first event of a state.
    fn size(&mut self) {
        if self.states.is_empty() {
            let states = self.compiled.graph.len();
            self.states = vec![Local::default(); states];
            if self.dependencies {
                self.chains = vec![Chain::default(); states];
            }
        }
    }

    /// An attempt of `state` ended: it leaves the running, or the queue if it was refused
    /// before it started.
    fn ended(&mut self, state: usize) {
        let local = &mut self.states[state];
        if local.running > 0 {
            local.running -= 1;
            self.now.running = self.now.running.saturating_sub(1);
        } else if self.pop_ready(state).is_some() {
            self.now.queued = self.now.queued.saturating_sub(1);
        }
    }

    fn pop_ready(&mut self, state: usize) -> Option<Instant> {
        let oldest = self.states[state].ready.take()?;
        if let Some(more) = self.more_ready.get_mut(&state) {
            self.states[state].ready = more.pop_front();
            if more.is_empty() {
                self.more_ready.remove(&state);
            }
        }
        Some(oldest)
    }

    /// The dependency of `state` that completed last at or after `since`.
    fn released_by(&self, state: usize, since: Instant) -> Option<usize> {
        self.compiled.states[state]
            .dependencies
            .iter()
            .filter_map(|d| {
                let at = self.chains[d.on.index()].completed_at?;
                (at >= since).then_some((at, d.on.index()))
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
            .filter(|d| self.chains[d.on.index()].completed_at.is_some())
            .map(|d| (self.chains[d.on.index()].depth.max(1), d.on.index()))
            .max();
        let Some((depth, previous)) = best else {
            return;
        };
        let longest = self.longest.map_or(0, |end| self.chains[end].depth);
        let local = &mut self.chains[state];
        local.depth = depth + 1;
        local.previous = previous as u32;
        if local.depth > longest {
            self.longest = Some(state);
        }
    }

    /// The longest chain found, first dependency first.
    fn longest_chain(&self) -> Option<Box<[usize]>> {
        let end = self.longest?;
        let length = self.chains[end].depth as usize;
        let mut chain = Vec::with_capacity(length);
        let mut at = end;
        // (Bounded by its length: a chain rebuilt in a loop cannot send it round forever.)
        for _ in 0..length {
            chain.push(at);
            if self.chains[at].depth <= 1 {
                break;
            }
            at = self.chains[at].previous as usize;
        }
        chain.reverse();
        Some(chain.into_boxed_slice())
    }

    /// What an event of the run (not of one attempt) adds, if anything.
    fn take(&mut self, at: Instant, kind: &EventKind) -> Option<Record> {
        Some(match kind {
            EventKind::RunStarted { .. } => Record::RunStarted { at },
            EventKind::RunFinished { status, duration } => Record::RunFinished {
                at,
                status: *status,
                duration: *duration,
                chain: {
                    // Nothing of the run runs or waits any more.
                    self.now = Concurrency::default();
                    self.longest_chain()
                },
            },
            EventKind::InputRequested { state, id, .. } => {
                self.asked.insert(id.to_string(), at);
                Record::InputRequested {
                    state: self.index(state)?,
                }
            }
            EventKind::InputAnswered { state, id, .. } => {
                let wait = self
                    .asked
                    .remove(&id.to_string())
                    .map(|asked| at.saturating_duration_since(asked));
                Record::InputAnswered {
                    state: self.index(state)?,
                    wait,
                }
            }
            EventKind::InputRefused { state, .. } => Record::InputRefused {
                state: self.index(state)?,
            },
            EventKind::InputTimedOut { state, id, .. } => {
                self.asked.remove(&id.to_string());
                Record::InputTimedOut {
                    state: self.index(state)?,
                }
            }
            EventKind::InputWithdrawn { id, .. } => {
                self.asked.remove(&id.to_string());
                return None;
            }
            // (Events of attempts come as `StateEvent`s; pauses change no figure.)
            _ => return None,
        })
    }

    /// What an event of one of `state`'s attempts adds, if anything.
    fn take_state(&mut self, at: Instant, state: usize, event: &StateEvent<'_>) -> Option<Record> {
        self.size();
        Some(match *event {
            StateEvent::Blocked => {
                self.states[state].blocked_since.get_or_insert(at);
                return None;
            }
            StateEvent::Ready => {
                let local = &mut self.states[state];
                match local.ready {
                    None => local.ready = Some(at),
                    Some(_) => self.more_ready.entry(state).or_default().push_back(at),
                }
                self.now.queued += 1;
                if !self.compiled.states[state].dependencies.is_empty() {
                    self.chain_to(state);
                }
                let since = self.states[state].blocked_since.take()?;
                Record::Unblocked {
                    state,
                    waited: at.saturating_duration_since(since),
                    on: self.released_by(state, since),
                }
            }
            StateEvent::Started { .. } => {
                let queue_wait = Self::since(self.pop_ready(state), at);
                if queue_wait.is_some() {
                    self.now.queued = self.now.queued.saturating_sub(1);
                }
                self.states[state].running += 1;
                self.now.running += 1;
                self.peak = self.peak.max(self.now.running);
                Record::Started { state, queue_wait }
            }
            StateEvent::Completed { duration } => {
                if self.dependencies {
                    self.chains[state].completed_at = Some(at);
                }
                self.ended(state);
                // An attempt that started in this batch (a quick state's usual case) takes
                // one record, not two.
                let started = match self.pending.last() {
                    Some(&Record::Started {
                        state: s,
                        queue_wait,
                    }) if s == state => {
                        self.pending.pop();
                        Some(queue_wait)
                    }
                    _ => None,
                };
                Record::Completed {
                    state,
                    at,
                    duration,
                    started,
                }
            }
            StateEvent::Retrying { .. } => {
                self.ended(state);
                Record::Retried { state }
            }
            StateEvent::Failed { kind, .. } => {
                // A state failed at its dependencies was blocked, not queued.
                self.states[state].blocked_since = None;
                self.ended(state);
                Record::Failed { state, kind }
            }
            StateEvent::Cancelled => {
                self.ended(state);
                Record::Cancelled { state }
            }
        })
    }

    fn push(&mut self, record: Record) {
        self.pending.push(record);
        if self.pending.len() >= FLUSH_EVERY {
            self.flush();
        }
    }
}

impl RunProbe for Recorder {
    fn record(&mut self, at: Instant, kind: &EventKind) {
        if let Some(record) = self.take(at, kind) {
            self.push(record);
        }
    }

    fn record_state(&mut self, at: Instant, state: StateId, event: &StateEvent<'_>) {
        if let Some(record) = self.take_state(at, state.index(), event) {
            self.push(record);
        }
    }

    fn flush(&mut self) {
        if self.pending.is_empty() && self.now == self.reported && self.peak <= self.now.running {
            return;
        }
        let mut totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
        let graph = &self.compiled.graph;
        totals.slots(&mut self.slots, &self.compiled);
        let Some(slots) = self.slots.as_mut() else {
            return;
        };
        let name = |index: usize| Arc::clone(graph.name(StateId::new(index as u32)));
        let mut latest = None;
        for record in self.pending.drain(..) {
            latest = totals.apply(slots, &name, record).or(latest);
        }
        totals.settle(slots, (self.reported, self.now, self.peak), latest);
        self.reported = self.now;
        self.peak = self.now.running;
    }
}
