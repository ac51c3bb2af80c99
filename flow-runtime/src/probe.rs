//! In-process observers of runs that fold what happens where it happens, on the run's own
//! coordinator, instead of reading the event channel from another task.
//!
//! A [`Probe`] (a `Monitor`) is registered with an agent's event hub; each run opens a
//! [`RunProbe`] of its own, feeds it every event without a lock, and hands what it gathered
//! over in batches ([`RunProbe::flush`]): before the coordinator waits for anything, every
//! [`FLUSH_EVERY`] events of a run that never waits, and when the run ends. A workflow nobody
//! probes pays one atomic load per run for this.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use std::time::Duration;

use flow_core::StateId;
use tokio::time::Instant;

use crate::FailureKind;
use crate::agent::Compiled;
use crate::events::{Event, EventHub, EventKind};

/// A run probe holding this many events hands them over even if its run never waits.
pub(crate) const FLUSH_EVERY: usize = 1024;

/// Something that watches runs from inside them.
pub(crate) trait Probe: Send + Sync {
    /// The observer of one run of the workflow `compiled`.
    fn open(&self, compiled: &Arc<Compiled>) -> Box<dyn RunProbe>;
}

/// Something that happened to a state, as the scheduler says it: by id, without its name.
/// Probes take it as it is; an [`EventKind`] is built from it only for subscribers.
pub(crate) enum StateEvent<'a> {
    Ready,
    Blocked,
    Started {
        run: u32,
        attempt: u32,
    },
    Completed {
        duration: Duration,
    },
    Retrying {
        attempt: u32,
        delay: Duration,
        error: &'a str,
    },
    Failed {
        error: &'a str,
        kind: FailureKind,
    },
    Cancelled,
}

impl StateEvent<'_> {
    /// The event subscribers get, for the state named `state`.
    fn into_event(self, state: Arc<str>) -> EventKind {
        match self {
            Self::Ready => EventKind::StateReady { state },
            Self::Blocked => EventKind::StateBlocked { state },
            Self::Started { run, attempt } => EventKind::StateStarted {
                state,
                run,
                attempt,
            },
            Self::Completed { duration } => EventKind::StateCompleted { state, duration },
            Self::Retrying {
                attempt,
                delay,
                error,
            } => EventKind::StateRetrying {
                state,
                attempt,
                delay,
                error: error.to_owned(),
            },
            Self::Failed { error, kind } => EventKind::StateFailed {
                state,
                error: error.to_owned(),
                kind,
            },
            Self::Cancelled => EventKind::StateCancelled { state },
        }
    }
}

/// One run's side of a [`Probe`]: owned by the run's coordinator, never shared.
pub(crate) trait RunProbe: Send {
    /// Takes one event of the run that is not about one state's attempt (the run's, input).
    fn record(&mut self, at: Instant, kind: &EventKind);
    /// Takes one event of `state`.
    fn record_state(&mut self, at: Instant, state: StateId, event: &StateEvent<'_>);
    /// Hands over what it gathered since the last flush.
    fn flush(&mut self);
}

/// The probes registered with one agent (and its clones): shared by its event hubs, so that
/// replacing the hub's channel keeps them.
#[derive(Default)]
pub(crate) struct ProbeList {
    probes: Mutex<Vec<Weak<dyn Probe>>>,
    /// How many are registered: read once per run, so that an unprobed run takes no lock.
    count: AtomicUsize,
}

impl ProbeList {
    /// Registers `probe`, once however often it is added.
    pub(crate) fn add(&self, probe: Weak<dyn Probe>) {
        let mut probes = self.probes.lock().unwrap_or_else(PoisonError::into_inner);
        if probes.iter().any(|known| Weak::ptr_eq(known, &probe)) {
            return;
        }
        probes.push(probe);
        self.count.store(probes.len(), Ordering::Release);
    }

    /// A run probe of each live probe for a new run (none, without locking, when nothing is
    /// registered); forgets probes that were dropped.
    pub(crate) fn open(&self, compiled: &Arc<Compiled>) -> Vec<Box<dyn RunProbe>> {
        if self.count.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let mut probes = self.probes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut opened = Vec::with_capacity(probes.len());
        probes.retain(|probe| match probe.upgrade() {
            Some(probe) => {
                opened.push(probe.open(compiled));
                true
            }
            None => false,
        });
        self.count.store(probes.len(), Ordering::Release);
        opened
    }
}

/// Where a run's events go: the agent's event channel (when someone subscribes) and the run's
/// probes.
pub(crate) struct Publisher {
    hub: EventHub,
    probes: Vec<Box<dyn RunProbe>>,
    run_id: u64,
    /// The run's stream, which may want its events too.
    stream: Arc<crate::stream::StreamHub>,
    /// A subgraph's run: its states' names as the outermost run's events say them (see
    /// `nest`), by state index.
    paths: Option<Box<[Arc<str>]>>,
    /// The length of the run's path and the slash after it, in each of `paths`.
    path_len: usize,
}

impl Publisher {
    pub(crate) fn new(
        hub: EventHub,
        compiled: &Arc<Compiled>,
        run_id: u64,
        stream: Arc<crate::stream::StreamHub>,
    ) -> Self {
        let probes = hub.probes().open(compiled);
        Self {
            hub,
            probes,
            run_id,
            stream,
            paths: None,
            path_len: 0,
        }
    }

    /// Makes this the publisher of a subgraph's run: its events join those of the outermost
    /// run (`run_id`), its states named by their path, `path/state`; its own start and end
    /// are that run's subgraph state starting and ending, so they are not sent.
    pub(crate) fn nest(&mut self, run_id: u64, path: &str, compiled: &Compiled) {
        self.run_id = run_id;
        self.path_len = path.len() + 1;
        self.paths = Some(
            compiled
                .graph
                .names()
                .iter()
                .map(|name| Arc::from(format!("{path}/{name}")))
                .collect(),
        );
    }

    /// The name `state` goes by in events: its path in a subgraph's run, itself otherwise.
    fn path_of(&self, state: &Arc<str>) -> Arc<str> {
        let Some(paths) = &self.paths else {
            return Arc::clone(state);
        };
        // (Input events name their state; a run has few, so a search is fine.) Each path is
        // the run's path and a slash before the name: compared past them, a name with a
        // slash of its own matches too.
        paths
            .iter()
            .find(|path| path.get(self.path_len..) == Some(&**state))
            .map_or_else(|| Arc::clone(state), Arc::clone)
    }

    /// The hub events go to.
    pub(crate) fn hub(&self) -> &EventHub {
        &self.hub
    }

    /// The run id events carry.
    pub(crate) fn run_id(&self) -> u64 {
        self.run_id
    }

    /// Whether anything takes events: when not, callers skip building them.
    pub(crate) fn is_observed(&self) -> bool {
        !self.probes.is_empty() || self.hub.is_observed() || self.streamed()
    }

    fn streamed(&self) -> bool {
        self.stream.wants(crate::StreamMode::EVENTS)
    }

    /// Sends `event` to the event subscribers and the run's stream, as each wants.
    fn send(&self, event: Event) {
        if self.streamed() {
            let event = event.clone();
            self.stream.publish(crate::StreamMode::EVENTS, || {
                crate::StreamPart::Event(event)
            });
        }
        if self.hub.is_observed() {
            self.hub.publish(event);
        }
    }

    /// Publishes what happened `at` to `state`, named `name` (cloned only for subscribers).
    pub(crate) fn publish_state(
        &mut self,
        at: Instant,
        state: StateId,
        name: &Arc<str>,
        event: StateEvent<'_>,
    ) {
        for probe in &mut self.probes {
            probe.record_state(at, state, &event);
        }
        if self.hub.is_observed() || self.streamed() {
            let name = self
                .paths
                .as_ref()
                .map_or(name, |paths| &paths[state.index()]);
            self.send(Event {
                run_id: self.run_id,
                at,
                kind: event.into_event(Arc::clone(name)),
            });
        }
    }

    /// Publishes one event of the run, which happened `at`.
    pub(crate) fn publish(&mut self, at: Instant, kind: EventKind) {
        if !self.is_observed() {
            return;
        }
        for probe in &mut self.probes {
            probe.record(at, &kind);
        }
        if self.paths.is_some() {
            return self.publish_nested(at, kind);
        }
        if self.hub.is_observed() || self.streamed() {
            self.send(Event {
                run_id: self.run_id,
                at,
                kind,
            });
        }
    }

    /// `publish` for a subgraph's run: its input events name their state by its path; its
    /// run's start, end, pause and resumption are not sent (the subgraph state's are).
    #[cold]
    fn publish_nested(&mut self, at: Instant, mut kind: EventKind) {
        match &mut kind {
            EventKind::RunStarted { .. }
            | EventKind::RunFinished { .. }
            | EventKind::RunPaused
            | EventKind::RunResumed => return,
            EventKind::InputRequested { state, .. }
            | EventKind::InputAnswered { state, .. }
            | EventKind::InputRefused { state, .. }
            | EventKind::InputTimedOut { state, .. }
            | EventKind::InputWithdrawn { state, .. } => *state = self.path_of(state),
            _ => {}
        }
        if self.hub.is_observed() || self.streamed() {
            self.send(Event {
                run_id: self.run_id,
                at,
                kind,
            });
        }
    }

    /// Hands what the probes gathered over (the run is about to wait, or ends).
    pub(crate) fn flush(&mut self) {
        for probe in &mut self.probes {
            probe.flush();
        }
    }
}
