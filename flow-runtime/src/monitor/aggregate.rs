//! Folding events into metrics: the monitor's state, touched by its own tasks (one per agent
//! watched) and by whoever takes a snapshot, never by a run.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use flow_core::{AgentStatus, FxHashMap};
use tokio::time::Instant;

use super::MetricType;
use super::snapshot::{
    Concurrency, Durations, InputMetrics, RunOutcomes, Snapshot, StateMetrics, Throughput,
    WorkflowMetrics,
};
use crate::events::{Event, EventKind};

/// Everything seen so far.
pub(crate) struct Aggregate {
    types: MetricType,
    window: Duration,
    workflows: BTreeMap<Arc<str>, Workflow>,
    pub(crate) missed: u64,
}

#[derive(Default)]
struct Workflow {
    runs: RunOutcomes,
    run_duration: Option<Durations>,
    state_duration: Option<Durations>,
    states: BTreeMap<Arc<str>, State>,
    running: u64,
    peak: u64,
    queued: u64,
    errors: BTreeMap<String, u64>,
    /// When each state of each run became ready, oldest first (to pair with its start).
    ready_at: FxHashMap<(u64, Arc<str>), VecDeque<Instant>>,
    /// When each blocked state of each run became blocked.
    blocked_at: FxHashMap<(u64, Arc<str>), Instant>,
    /// When each pending input request was made.
    asked_at: FxHashMap<(u64, String), Instant>,
    /// Completions of states and finishes of runs within the throughput window.
    recent_states: VecDeque<Instant>,
    recent_runs: VecDeque<Instant>,
    completed_states: u64,
    finished_runs: u64,
    first_event: Option<Instant>,
}

#[derive(Default)]
struct State {
    started: u64,
    completed: u64,
    retried: u64,
    failed: u64,
    cancelled: u64,
    duration: Option<Durations>,
    queue_wait: Option<Durations>,
    blocked: Option<Durations>,
    input: Option<Input>,
}

#[derive(Default)]
struct Input {
    requested: u64,
    answered: u64,
    refused: u64,
    timed_out: u64,
    wait: Option<Durations>,
}

fn record(slot: &mut Option<Durations>, duration: Duration) {
    slot.get_or_insert_with(Durations::new).record(duration);
}

impl Aggregate {
    pub(crate) fn new(types: MetricType, window: Duration) -> Self {
        Self {
            types,
            window,
            workflows: BTreeMap::new(),
            missed: 0,
        }
    }

    /// Which metrics it keeps.
    pub(crate) fn types(&self) -> MetricType {
        self.types
    }

    /// Forgets everything seen (runs in flight are counted again from their next event).
    pub(crate) fn reset(&mut self) {
        self.workflows.clear();
        self.missed = 0;
    }

    /// Takes one event of a run of `workflow`.
    pub(crate) fn apply(&mut self, workflow: &Arc<str>, event: &Event) {
        let timing = self.types.contains(MetricType::TIMING);
        let throughput = self.types.contains(MetricType::THROUGHPUT);
        let window = self.window;
        let w = self.workflows.entry(Arc::clone(workflow)).or_default();
        w.first_event.get_or_insert(event.at);
        let run = event.run_id;
        match &event.kind {
            EventKind::RunStarted { .. } => w.runs.started += 1,
            EventKind::RunFinished { status, duration } => {
                match status {
                    AgentStatus::Completed => w.runs.completed += 1,
                    AgentStatus::Cancelled => w.runs.cancelled += 1,
                    AgentStatus::AwaitingInput => w.runs.awaiting_input += 1,
                    _ => w.runs.failed += 1,
                }
                if timing {
                    record(&mut w.run_duration, *duration);
                }
                w.finished_runs += 1;
                if throughput {
                    w.recent_runs.push_back(event.at);
                }
                // Nothing of this run is queued any more.
                w.ready_at.retain(|(r, _), _| *r != run);
                w.blocked_at.retain(|(r, _), _| *r != run);
                w.asked_at.retain(|(r, _), _| *r != run);
            }
            EventKind::StateReady { state } => {
                // Released from a join or its dependencies: blocked until now.
                if let Some(since) = w.blocked_at.remove(&(run, Arc::clone(state)))
                    && timing
                {
                    let s = w.states.entry(Arc::clone(state)).or_default();
                    record(&mut s.blocked, event.at.saturating_duration_since(since));
                }
                w.queued += 1;
                w.ready_at
                    .entry((run, Arc::clone(state)))
                    .or_default()
                    .push_back(event.at);
            }
            EventKind::StateStarted { state, .. } => {
                let ready = w
                    .ready_at
                    .get_mut(&(run, Arc::clone(state)))
                    .and_then(VecDeque::pop_front);
                if ready.is_some() {
                    w.queued = w.queued.saturating_sub(1);
                }
                w.running += 1;
                w.peak = w.peak.max(w.running);
                let s = w.states.entry(Arc::clone(state)).or_default();
                s.started += 1;
                if let (true, Some(ready)) = (timing, ready) {
                    record(&mut s.queue_wait, event.at.saturating_duration_since(ready));
                }
            }
            EventKind::StateCompleted { state, duration } => {
                w.running = w.running.saturating_sub(1);
                w.completed_states += 1;
                if throughput {
                    w.recent_states.push_back(event.at);
                }
                if timing {
                    record(&mut w.state_duration, *duration);
                }
                let s = w.states.entry(Arc::clone(state)).or_default();
                s.completed += 1;
                if timing {
                    record(&mut s.duration, *duration);
                }
            }
            EventKind::StateRetrying { state, .. } => {
                w.running = w.running.saturating_sub(1);
                w.states.entry(Arc::clone(state)).or_default().retried += 1;
            }
            EventKind::StateFailed { state, kind, .. } => {
                w.running = w.running.saturating_sub(1);
                w.states.entry(Arc::clone(state)).or_default().failed += 1;
                let kind = serde_json::to_value(kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("{kind:?}"));
                *w.errors.entry(kind).or_default() += 1;
            }
            EventKind::StateCancelled { state } => {
                w.running = w.running.saturating_sub(1);
                w.states.entry(Arc::clone(state)).or_default().cancelled += 1;
            }
            EventKind::InputRequested { state, id, .. } => {
                w.asked_at.insert((run, id.to_string()), event.at);
                input(w, state).requested += 1;
            }
            EventKind::InputAnswered { state, id, .. } => {
                let asked = w.asked_at.remove(&(run, id.to_string()));
                let input = input(w, state);
                input.answered += 1;
                if let Some(asked) = asked {
                    record(&mut input.wait, event.at.saturating_duration_since(asked));
                }
            }
            EventKind::InputRefused { state, .. } => input(w, state).refused += 1,
            EventKind::InputTimedOut { state, id, .. } => {
                w.asked_at.remove(&(run, id.to_string()));
                input(w, state).timed_out += 1;
            }
            EventKind::InputWithdrawn { id, .. } => {
                w.asked_at.remove(&(run, id.to_string()));
            }
            EventKind::StateBlocked { state } => {
                // (A join's later arrivals find it blocked already.)
                w.blocked_at
                    .entry((run, Arc::clone(state)))
                    .or_insert(event.at);
            }
            EventKind::RunPaused | EventKind::RunResumed => {}
        }
        if throughput {
            prune(&mut w.recent_states, event.at, window);
            prune(&mut w.recent_runs, event.at, window);
        }
    }

    /// The metrics now (`now` on tokio's clock ends the throughput window).
    pub(crate) fn snapshot(&self, now: Instant) -> Snapshot {
        let types = self.types;
        let workflows = self
            .workflows
            .iter()
            .map(|(name, w)| {
                let states = w
                    .states
                    .iter()
                    .map(|(name, s)| {
                        let metrics = StateMetrics {
                            started: s.started,
                            completed: s.completed,
                            retried: s.retried,
                            failed: s.failed,
                            cancelled: s.cancelled,
                            duration: s.duration.as_ref().and_then(Durations::summary),
                            queue_wait: s.queue_wait.as_ref().and_then(Durations::summary),
                            blocked: s.blocked.as_ref().and_then(Durations::summary),
                            input: types.contains(MetricType::INPUT).then(|| {
                                s.input.as_ref().map_or_else(InputMetrics::default, |i| {
                                    InputMetrics {
                                        requested: i.requested,
                                        answered: i.answered,
                                        refused: i.refused,
                                        timed_out: i.timed_out,
                                        wait: i.wait.as_ref().and_then(Durations::summary),
                                    }
                                })
                            }),
                        };
                        (name.to_string(), metrics)
                    })
                    .collect();
                let throughput = types.contains(MetricType::THROUGHPUT).then(|| {
                    let in_window = |recent: &VecDeque<Instant>| {
                        recent
                            .iter()
                            .filter(|&&at| now.saturating_duration_since(at) <= self.window)
                            .count() as f64
                    };
                    let window = self.window.as_secs_f64();
                    let elapsed = w.first_event.map_or(0.0, |first| {
                        now.saturating_duration_since(first).as_secs_f64()
                    });
                    let per_s = |count: u64| {
                        if elapsed > 0.0 {
                            count as f64 / elapsed
                        } else {
                            0.0
                        }
                    };
                    Throughput {
                        states_per_s_window: in_window(&w.recent_states) / window,
                        runs_per_s_window: in_window(&w.recent_runs) / window,
                        window_s: window,
                        states_per_s: per_s(w.completed_states),
                        runs_per_s: per_s(w.finished_runs),
                    }
                });
                let metrics = WorkflowMetrics {
                    runs: w.runs.clone(),
                    run_duration: w.run_duration.as_ref().and_then(Durations::summary),
                    state_duration: w.state_duration.as_ref().and_then(Durations::summary),
                    states,
                    throughput,
                    concurrency: types.contains(MetricType::STATE).then_some(Concurrency {
                        running: w.running,
                        peak: w.peak,
                        queued: w.queued,
                    }),
                    errors: types.contains(MetricType::ERRORS).then(|| w.errors.clone()),
                };
                (name.to_string(), metrics)
            })
            .collect();
        Snapshot {
            workflows,
            pools: None,
            events_missed: self.missed,
        }
    }
}

fn input<'a>(w: &'a mut Workflow, state: &Arc<str>) -> &'a mut Input {
    w.states
        .entry(Arc::clone(state))
        .or_default()
        .input
        .get_or_insert_with(Input::default)
}

/// Drops instants older than `window` before `now` (they arrive in order).
fn prune(recent: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while recent
        .front()
        .is_some_and(|&at| now.saturating_duration_since(at) > window)
    {
        recent.pop_front();
    }
}
