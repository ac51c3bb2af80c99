//! What a run keeps of its subgraph states' runs: their progress (for its checkpoints) and
//! their reports (for its own).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use flow_core::{FlowError, FxHashMap, StateGraph, StateId};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use crate::checkpoint::{Checkpoint, CheckpointStore, StateCheckpoint};
use crate::run::StateReport;
use crate::scheduler::Message;

/// One attempt of a subgraph state: state, visit, attempt.
pub(crate) type AttemptKey = (StateId, u32, u32);

/// The runs of one run's subgraph states. Shared by the run's coordinator and the subgraph
/// states' bodies; touched once per child checkpoint and per child run, never per transition
/// of the parent.
pub(crate) struct SubgraphRuns {
    /// The parent's coordinator, told when a child saved progress (it checkpoints then).
    coordinator: UnboundedSender<Message>,
    /// Whether the parent takes checkpoints (else the children take none).
    checkpointed: AtomicBool,
    records: Mutex<Records>,
}

#[derive(Default)]
struct Records {
    /// The latest checkpoint (JSON) of each child run in progress.
    progress: FxHashMap<AttemptKey, Arc<[u8]>>,
    /// Child runs a restored checkpoint had in progress, until their attempts start again.
    restored: FxHashMap<AttemptKey, Arc<[u8]>>,
    /// The states of each finished child run, by attempt.
    reports: Vec<(AttemptKey, Vec<StateReport>)>,
}

impl SubgraphRuns {
    pub(crate) fn new(coordinator: UnboundedSender<Message>) -> Self {
        Self {
            coordinator,
            checkpointed: AtomicBool::new(false),
            records: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The parent takes checkpoints from now on: child runs save their progress into them.
    pub(crate) fn set_checkpointed(&self) {
        self.checkpointed.store(true, Ordering::Release);
    }

    pub(crate) fn checkpointed(&self) -> bool {
        self.checkpointed.load(Ordering::Acquire)
    }

    /// The checkpoint a restore found for this attempt's child run, once.
    pub(crate) fn take_restored(&self, attempt: AttemptKey) -> Option<Checkpoint> {
        let json = self.lock().restored.remove(&attempt)?;
        // It was read from the parent's checkpoint, which parsed: a child that no longer
        // parses starts afresh rather than failing the parent.
        Checkpoint::from_json(&json, "a parent's checkpoint", "", "").ok()
    }

    /// A child run ended (completed, failed or cancelled): its states join the parent's
    /// report, and its progress is no longer kept.
    pub(crate) fn finished(&self, attempt: AttemptKey, states: &[StateReport]) {
        let mut records = self.lock();
        records.progress.remove(&attempt);
        records.reports.push((attempt, states.to_vec()));
    }

    /// The child runs' states, for the parent's report: by state path
    /// (`subgraph_state/child_state`), each folded over every run of its subgraph state in
    /// the order of their visits and attempts (not the order they finished in).
    pub(crate) fn reports(&self, graph: &StateGraph) -> Vec<StateReport> {
        let runs = self.lock().reports.clone();
        fold_runs(runs, |state| graph.names().get(state.index()).map(|n| &**n))
    }

    /// What a checkpoint keeps: the progress of the child runs of `running` attempts, and
    /// the states of finished ones.
    pub(crate) fn image(&self, running: impl Iterator<Item = AttemptKey>) -> SubgraphsImage {
        let records = self.lock();
        let progress = running
            .filter_map(|attempt| {
                let json = records.progress.get(&attempt)?;
                Some(ChildProgress {
                    state: attempt.0,
                    visit: attempt.1,
                    attempt: attempt.2,
                    checkpoint: String::from_utf8_lossy(json).into_owned(),
                })
            })
            .collect();
        let finished = records
            .reports
            .iter()
            .map(|(attempt, states)| FinishedChild {
                state: attempt.0,
                visit: attempt.1,
                attempt: attempt.2,
                states: states.iter().map(state_checkpoint).collect(),
            })
            .collect();
        SubgraphsImage { progress, finished }
    }

    /// Takes back what a checkpoint kept (see `image`).
    pub(crate) fn restore(&self, image: &SubgraphsImage) {
        let mut records = self.lock();
        for child in &image.progress {
            let attempt = (child.state, child.visit, child.attempt);
            let json: Arc<[u8]> = Arc::from(child.checkpoint.as_bytes());
            records.restored.insert(attempt, json);
        }
        records.reports = image
            .finished
            .iter()
            .map(|child| {
                let attempt = (child.state, child.visit, child.attempt);
                (attempt, child.states.iter().map(state_report).collect())
            })
            .collect();
    }
}

/// The states of child runs by path, each folded over every run of its subgraph state in the
/// order of their visits and attempts. `owner` names a subgraph state.
fn fold_runs<'a>(
    mut runs: Vec<(AttemptKey, Vec<StateReport>)>,
    owner: impl Fn(StateId) -> Option<&'a str>,
) -> Vec<StateReport> {
    runs.sort_by_key(|(attempt, _)| *attempt);
    let mut folded: Vec<StateReport> = Vec::new();
    let mut places: FxHashMap<Arc<str>, usize> = FxHashMap::default();
    for ((state, _, _), states) in runs {
        let owner = owner(state).unwrap_or("(subgraph)");
        for report in states {
            let name: Arc<str> = Arc::from(format!("{owner}/{}", report.name));
            match places.get(&name) {
                Some(&place) => fold(&mut folded[place], report),
                None => {
                    places.insert(Arc::clone(&name), folded.len());
                    folded.push(StateReport { name, ..report });
                }
            }
        }
    }
    folded
}

/// Folds a later run's record of a state into the record so far.
fn fold(into: &mut StateReport, later: StateReport) {
    into.runs = into.runs.saturating_add(later.runs);
    into.visits = into.visits.saturating_add(later.visits);
    into.arrivals = into.arrivals.saturating_add(later.arrivals);
    into.restored_runs = into.restored_runs.saturating_add(later.restored_runs);
    into.total_time = into.total_time.saturating_add(later.total_time);
    into.first_started = match (into.first_started, later.first_started) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    into.last_finished = into.last_finished.max(later.last_finished);
    // Its latest run's outcome, as for a state that runs several times in one run.
    if later.runs > 0 {
        into.status = later.status;
        into.attempts = later.attempts;
        into.last_error = later.last_error;
    }
}

fn state_checkpoint(report: &StateReport) -> StateCheckpoint {
    StateCheckpoint {
        name: report.name.to_string(),
        status: report.status,
        runs: report.runs,
        visits: Some(report.visits),
        arrivals: report.arrivals,
        attempts: report.attempts,
        completions: 0,
        total_time: report.total_time,
        last_error: report.last_error.clone(),
    }
}

fn state_report(saved: &StateCheckpoint) -> StateReport {
    StateReport {
        status: saved.status,
        runs: saved.runs,
        visits: saved.visits.unwrap_or(saved.runs),
        restored_runs: saved.runs,
        arrivals: saved.arrivals,
        attempts: saved.attempts,
        total_time: saved.total_time,
        last_error: saved.last_error.clone(),
        ..StateReport::new(Arc::from(saved.name.as_str()))
    }
}

/// The subgraph part of a checkpoint's scheduler image.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct SubgraphsImage {
    /// Child runs in progress: each continues from here when its attempt runs again.
    progress: Vec<ChildProgress>,
    /// Child runs that had ended, for the report.
    finished: Vec<FinishedChild>,
}

impl SubgraphsImage {
    pub(crate) fn is_empty(&self) -> bool {
        self.progress.is_empty() && self.finished.is_empty()
    }

    /// The finished child runs' states, for the report of a run read from a checkpoint;
    /// `names`: the run's states, by index.
    pub(crate) fn reports(&self, names: &[&str]) -> Vec<StateReport> {
        let runs = self
            .finished
            .iter()
            .map(|child| {
                let attempt = (child.state, child.visit, child.attempt);
                (attempt, child.states.iter().map(state_report).collect())
            })
            .collect();
        fold_runs(runs, |state| names.get(state.index()).copied())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ChildProgress {
    state: StateId,
    visit: u32,
    attempt: u32,
    /// The child run's latest checkpoint, as JSON.
    checkpoint: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct FinishedChild {
    state: StateId,
    visit: u32,
    attempt: u32,
    states: Vec<StateCheckpoint>,
}

/// Where a child run's checkpoints go: into its parent's records, which its parent's next
/// checkpoint takes in. Holds the latest only.
pub(crate) struct ProgressSink {
    runs: Arc<SubgraphRuns>,
    attempt: AttemptKey,
}

impl ProgressSink {
    pub(crate) fn new(runs: Arc<SubgraphRuns>, attempt: AttemptKey) -> Self {
        Self { runs, attempt }
    }

    fn latest_json(&self) -> Option<Arc<[u8]>> {
        self.runs.lock().progress.get(&self.attempt).cloned()
    }
}

impl CheckpointStore for ProgressSink {
    fn describe(&self) -> String {
        "the parent run's checkpoints".into()
    }

    fn save(&self, checkpoint: &Checkpoint) -> Result<(), FlowError> {
        let json: Arc<[u8]> = Arc::from(checkpoint.to_json()?);
        self.runs.lock().progress.insert(self.attempt, json);
        // The parent may have ended meanwhile: then nobody needs the progress.
        let _ = self.runs.coordinator.send(Message::SubgraphProgress);
        Ok(())
    }

    fn latest(&self, agent: &str, run: &str) -> Result<Option<Checkpoint>, FlowError> {
        self.latest_json()
            .map(|json| Checkpoint::from_json(&json, &self.describe(), agent, run))
            .transpose()
    }

    fn sequences(&self, agent: &str, run: &str) -> Result<Vec<u64>, FlowError> {
        Ok(self
            .latest(agent, run)?
            .map(|checkpoint| vec![checkpoint.sequence])
            .unwrap_or_default())
    }

    fn load(&self, agent: &str, run: &str, sequence: u64) -> Result<Option<Checkpoint>, FlowError> {
        Ok(self
            .latest(agent, run)?
            .filter(|checkpoint| checkpoint.sequence == sequence))
    }

    fn delete(&self, _agent: &str, _run: &str, _sequence: u64) -> Result<(), FlowError> {
        // Only the latest is kept: older ones are gone already.
        Ok(())
    }
}
