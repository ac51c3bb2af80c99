//! The monitor's totals: what every run's recorder handed over, folded together. Touched
//! under the monitor's lock once per batch of a run's events, and by whoever takes a snapshot.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use flow_core::{AgentStatus, FxHashMap};
use tokio::time::Instant;

use super::MetricType;
use super::histogram::Durations;
use super::recorder::{Concurrency as RunConcurrency, Record};
use super::snapshot::{
    BlockedOn, Concurrency, DependencyChain, InputMetrics, RunOutcomes, Snapshot, StateMetrics,
    Throughput, WorkflowMetrics,
};
use crate::FailureKind;
use crate::agent::Compiled;

/// Everything handed over so far.
pub(crate) struct Aggregate {
    types: MetricType,
    window: Duration,
    /// Changes with every reset, so that runs in flight find their workflow and states again.
    generation: u64,
    workflows: Vec<Workflow>,
    by_name: FxHashMap<Arc<str>, usize>,
}

/// Where a run's records go: its workflow, and each of its states (by the run's own state
/// index) in the totals of one generation.
pub(super) struct Slots {
    generation: u64,
    workflow: usize,
    /// By the run's state index: the state's place in the workflow's totals (`u32::MAX`: not
    /// looked up yet). Empty for a run of the workflow's first graph, whose states are at
    /// their own index: no lookup at all.
    states: Vec<u32>,
}

struct Workflow {
    runs: RunOutcomes,
    run_duration: Option<Durations>,
    /// The first graph of the workflow the totals saw (a run's `Compiled`): its states are
    /// the first of `states`, in its order, so that its runs need no lookup by name. (Held
    /// weakly: the totals keep no agent alive, and the address is not reused meanwhile.)
    graph: Option<Weak<Compiled>>,
    states: Vec<State>,
    /// Every state's place in `states` by name, made when a run of another graph of the
    /// same workflow name first comes.
    state_index: FxHashMap<Arc<str>, u32>,
    running: u64,
    peak: u64,
    queued: u64,
    errors: BTreeMap<FailureKind, u64>,
    /// Completions of states and finishes of runs within the throughput window.
    recent_states: VecDeque<Instant>,
    recent_runs: VecDeque<Instant>,
    completed_states: u64,
    finished_runs: u64,
    first_event: Option<Instant>,
    longest_chain: Option<DependencyChain>,
}

impl Workflow {
    fn new() -> Self {
        Self {
            runs: RunOutcomes::default(),
            run_duration: None,
            graph: None,
            states: Vec::new(),
            state_index: FxHashMap::default(),
            running: 0,
            peak: 0,
            queued: 0,
            errors: BTreeMap::new(),
            recent_states: VecDeque::new(),
            recent_runs: VecDeque::new(),
            completed_states: 0,
            finished_runs: 0,
            first_event: None,
            longest_chain: None,
        }
    }
}

impl Workflow {
    /// Where the states of a run of `compiled` go, by the run's state index (empty: at their
    /// own index).
    fn slots_for(&mut self, compiled: &Arc<Compiled>) -> Vec<u32> {
        let graph = &compiled.graph;
        if self.graph.is_none() && self.states.is_empty() {
            // The first graph: its states, all at once, at their own index. A state that
            // never runs stays out of snapshots.
            self.graph = Some(Arc::downgrade(compiled));
            self.states.extend(
                graph
                    .names()
                    .iter()
                    .map(|name| State::new(Arc::clone(name))),
            );
            return Vec::new();
        }
        if self
            .graph
            .as_ref()
            .is_some_and(|first| std::ptr::eq(first.as_ptr(), Arc::as_ptr(compiled)))
        {
            return Vec::new();
        }
        if self.state_index.len() < self.states.len() {
            self.state_index = self
                .states
                .iter()
                .enumerate()
                .map(|(index, state)| (Arc::clone(&state.name), index as u32))
                .collect();
        }
        vec![u32::MAX; graph.len()]
    }
}

struct State {
    name: Arc<str>,
    started: u64,
    completed: u64,
    retried: u64,
    failed: u64,
    cancelled: u64,
    duration: Durations,
    queue_wait: Durations,
    /// What most states never need, out of line: a large graph's states stay small.
    extra: Option<Box<Extra>>,
}

#[derive(Default)]
struct Extra {
    blocked: Durations,
    blocked_on: BTreeMap<Arc<str>, (u64, Durations)>,
    input: Option<Input>,
}

#[derive(Default)]
struct Input {
    requested: u64,
    answered: u64,
    refused: u64,
    timed_out: u64,
    wait: Durations,
}

fn record(slot: &mut Option<Durations>, duration: Duration) {
    slot.get_or_insert_with(Durations::new).record(duration);
}

impl Aggregate {
    pub(crate) fn new(types: MetricType, window: Duration) -> Self {
        Self {
            types,
            window,
            generation: 0,
            workflows: Vec::new(),
            by_name: FxHashMap::default(),
        }
    }

    /// Which metrics it keeps.
    pub(crate) fn types(&self) -> MetricType {
        self.types
    }

    /// Forgets everything (runs in flight are counted again from their next records).
    pub(crate) fn reset(&mut self) {
        self.workflows.clear();
        self.by_name.clear();
        self.generation += 1;
    }

    /// Forgets everything and counts throughput over `window` from now on.
    pub(crate) fn set_window(&mut self, window: Duration) {
        self.reset();
        self.window = window;
    }

    /// Where records of a run of `compiled` go: `slots` if it is still current, new ones
    /// otherwise.
    pub(super) fn slots(&mut self, slots: &mut Option<Slots>, compiled: &Arc<Compiled>) {
        if slots
            .as_ref()
            .is_some_and(|s| s.generation == self.generation)
        {
            return;
        }
        let workflow = &compiled.name;
        let index = match self.by_name.get(workflow) {
            Some(&index) => index,
            None => {
                self.workflows.push(Workflow::new());
                self.by_name
                    .insert(Arc::clone(workflow), self.workflows.len() - 1);
                self.workflows.len() - 1
            }
        };
        *slots = Some(Slots {
            generation: self.generation,
            workflow: index,
            states: self.workflows[index].slots_for(compiled),
        });
    }

    /// Takes one record of a run. `name` names the run's states by their index. Returns
    /// the record's instant, if it has one (see `settle`).
    pub(super) fn apply(
        &mut self,
        slots: &mut Slots,
        name: &dyn Fn(usize) -> Arc<str>,
        taken: Record,
    ) -> Option<Instant> {
        let timing = self.types.contains(MetricType::TIMING);
        let throughput = self.types.contains(MetricType::THROUGHPUT);
        let w = &mut self.workflows[slots.workflow];
        let mut state = |w: &mut Workflow, index: usize| -> usize {
            let Some(slot) = slots.states.get_mut(index) else {
                return index; // (a run of the first graph)
            };
            if *slot == u32::MAX {
                // (One hash of the name, whether the state is new or known.)
                *slot = match w.state_index.entry(name(index)) {
                    Entry::Occupied(known) => *known.get(),
                    Entry::Vacant(new) => {
                        w.states.push(State::new(Arc::clone(new.key())));
                        *new.insert((w.states.len() - 1) as u32)
                    }
                };
            }
            *slot as usize
        };
        let mut at = None;
        match taken {
            Record::RunStarted { at: started } => {
                w.runs.started += 1;
                w.first_event.get_or_insert(started);
                at = Some(started);
            }
            Record::RunFinished {
                at: finished,
                status,
                duration,
                chain,
            } => {
                match status {
                    AgentStatus::Completed => w.runs.completed += 1,
                    AgentStatus::CompletedWithFailures => w.runs.completed_with_failures += 1,
                    AgentStatus::Cancelled => w.runs.cancelled += 1,
                    AgentStatus::AwaitingInput => w.runs.awaiting_input += 1,
                    _ => w.runs.failed += 1,
                }
                if timing {
                    record(&mut w.run_duration, duration);
                }
                w.finished_runs += 1;
                if throughput {
                    w.recent_runs.push_back(finished);
                }
                if let Some(chain) = chain
                    && timing
                    && w.longest_chain
                        .as_ref()
                        .is_none_or(|longest| longest.length < chain.len() as u32)
                {
                    w.longest_chain = Some(DependencyChain {
                        length: chain.len() as u32,
                        states: chain.iter().map(|&index| name(index).to_string()).collect(),
                    });
                }
                at = Some(finished);
            }
            Record::Unblocked {
                state: index,
                waited,
                on,
            } => {
                if timing {
                    let on = on.map(name);
                    let s = state(w, index);
                    let extra = w.states[s].extra();
                    extra.blocked.record(waited);
                    if let Some(on) = on {
                        let (times, durations) = extra
                            .blocked_on
                            .entry(on)
                            .or_insert_with(|| (0, Durations::new()));
                        *times += 1;
                        durations.record(waited);
                    }
                }
            }
            Record::Started {
                state: index,
                queue_wait,
            } => {
                let s = state(w, index);
                let s = &mut w.states[s];
                s.started += 1;
                if let (true, Some(wait)) = (timing, queue_wait) {
                    s.queue_wait.record(wait);
                }
            }
            Record::Completed {
                state: index,
                at: completed,
                duration,
                started,
            } => {
                w.completed_states += 1;
                if throughput {
                    w.recent_states.push_back(completed);
                }
                let s = state(w, index);
                let s = &mut w.states[s];
                s.completed += 1;
                if let Some(queue_wait) = started {
                    s.started += 1;
                    if let (true, Some(wait)) = (timing, queue_wait) {
                        s.queue_wait.record(wait);
                    }
                }
                if timing {
                    s.duration.record(duration);
                }
                at = Some(completed);
            }
            Record::Retried { state: index } => {
                let s = state(w, index);
                w.states[s].retried += 1;
            }
            Record::Failed { state: index, kind } => {
                let s = state(w, index);
                w.states[s].failed += 1;
                *w.errors.entry(kind).or_default() += 1;
            }
            Record::Cancelled { state: index } => {
                let s = state(w, index);
                w.states[s].cancelled += 1;
            }
            Record::InputRequested { state: index } => {
                let s = state(w, index);
                w.states[s].input().requested += 1;
            }
            Record::InputAnswered { state: index, wait } => {
                let s = state(w, index);
                let input = w.states[s].input();
                input.answered += 1;
                if let Some(wait) = wait {
                    input.wait.record(wait);
                }
            }
            Record::InputRefused { state: index } => {
                let s = state(w, index);
                w.states[s].input().refused += 1;
            }
            Record::InputTimedOut { state: index } => {
                let s = state(w, index);
                w.states[s].input().timed_out += 1;
            }
        }
        at
    }

    /// Ends a run's batch: its states running and queued now, and the most it ran at once
    /// since it last said (`reported` is what it said last time: its share of the totals);
    /// the throughput window moves on to `latest`, the batch's last instant.
    pub(super) fn settle(
        &mut self,
        slots: &Slots,
        (reported, now, peak): (RunConcurrency, RunConcurrency, u64),
        latest: Option<Instant>,
    ) {
        let window = self.window;
        let w = &mut self.workflows[slots.workflow];
        if let Some(latest) = latest {
            prune(&mut w.recent_states, latest, window);
            prune(&mut w.recent_runs, latest, window);
        }
        let others_running = w.running.saturating_sub(reported.running);
        // Runs hand over one at a time: the others' figures stand for the whole batch.
        w.peak = w.peak.max(others_running + peak.max(now.running));
        w.running = others_running + now.running;
        w.queued = w.queued.saturating_sub(reported.queued) + now.queued;
    }

    /// The metrics now (`now` on tokio's clock ends the throughput window).
    pub(crate) fn snapshot(&self, now: Instant) -> Snapshot {
        let workflows = self
            .by_name
            .iter()
            .map(|(name, &index)| {
                let w = &self.workflows[index];
                (name.to_string(), self.workflow_metrics(w, now))
            })
            .collect();
        Snapshot {
            workflows,
            pools: None,
        }
    }

    fn workflow_metrics(&self, w: &Workflow, now: Instant) -> WorkflowMetrics {
        let types = self.types;
        let states = w
            .states
            .iter()
            .filter(|s| s.is_seen())
            .map(|s| (s.name.to_string(), s.metrics(types)))
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
        WorkflowMetrics {
            runs: w.runs.clone(),
            run_duration: w.run_duration.as_ref().and_then(Durations::summary),
            // Every state's attempts together: merged here, not recorded twice as they come.
            state_duration: Durations::merged(w.states.iter().map(|s| &s.duration)).summary(),
            states,
            throughput,
            concurrency: types.contains(MetricType::STATE).then_some(Concurrency {
                running: w.running,
                peak: w.peak,
                queued: w.queued,
            }),
            errors: types.contains(MetricType::ERRORS).then(|| {
                w.errors
                    .iter()
                    .map(|(kind, &count)| (kind.as_str().to_owned(), count))
                    .collect()
            }),
            longest_dependency_chain: w.longest_chain.clone(),
        }
    }
}

impl State {
    fn new(name: Arc<str>) -> Self {
        Self {
            name,
            started: 0,
            completed: 0,
            retried: 0,
            failed: 0,
            cancelled: 0,
            duration: Durations::new(),
            queue_wait: Durations::new(),
            extra: None,
        }
    }

    /// Whether any record of it came (its graph's states are made before they run).
    fn is_seen(&self) -> bool {
        self.started + self.completed + self.retried + self.failed + self.cancelled > 0
            || self.extra.is_some()
    }

    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    fn input(&mut self) -> &mut Input {
        self.extra().input.get_or_insert_with(Input::default)
    }

    fn metrics(&self, types: MetricType) -> StateMetrics {
        let extra = self.extra.as_deref();
        let input = extra.and_then(|extra| extra.input.as_ref());
        StateMetrics {
            started: self.started,
            completed: self.completed,
            retried: self.retried,
            failed: self.failed,
            cancelled: self.cancelled,
            duration: self.duration.summary(),
            queue_wait: self.queue_wait.summary(),
            blocked: extra.and_then(|extra| extra.blocked.summary()),
            input: types.contains(MetricType::INPUT).then(|| {
                input.map_or_else(InputMetrics::default, |i| InputMetrics {
                    requested: i.requested,
                    answered: i.answered,
                    refused: i.refused,
                    timed_out: i.timed_out,
                    wait: i.wait.summary(),
                })
            }),
            blocked_on: extra
                .into_iter()
                .flat_map(|extra| &extra.blocked_on)
                .filter_map(|(on, (times, waited))| {
                    Some((
                        on.to_string(),
                        BlockedOn {
                            times: *times,
                            waited: waited.summary()?,
                        },
                    ))
                })
                .collect(),
        }
    }
}

/// Drops instants older than `window` before `now` from the front (each run's arrive in
/// order; a late batch of another run may leave a few older ones behind, which snapshots
/// skip).
fn prune(recent: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while recent
        .front()
        .is_some_and(|&at| now.saturating_duration_since(at) > window)
    {
        recent.pop_front();
    }
}
