//! What a run keeps of its subgraph states' runs: their progress (for its checkpoints), their
//! reports (for its own), the branches they ended with failures, and which still run.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use flow_core::{FlowError, FxHashMap, StateId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use crate::checkpoint::{Checkpoint, CheckpointStore, StateCheckpoint};
use crate::failure::DeadLetter;
use crate::run::StateReport;
use crate::scheduler::Message;

/// One attempt of a subgraph state: state, visit, attempt.
pub(crate) type AttemptKey = (StateId, u32, u32);

/// Orders child runs whatever order they finished in: the parent's restore generation (a
/// restored run's children come after those before the restore), state, visit, attempt, and
/// the start within the attempt (an attempt preempted and started again runs a second child).
pub(crate) type RunOrder = (u32, u32, u32, u32, u32);

/// The runs of one run's subgraph states. Shared by the run's coordinator and the subgraph
/// states' bodies; touched when a child run starts, saves a checkpoint and ends, never per
/// transition of the parent.
pub(crate) struct SubgraphRuns {
    /// The parent's coordinator, told when a child saved progress (it checkpoints then).
    coordinator: UnboundedSender<Message>,
    /// Whether the parent takes checkpoints (else the children take none).
    checkpointed: AtomicBool,
    records: Mutex<Records>,
    /// Child runs not yet ended, and the parent's end waiting for them.
    live: AtomicUsize,
    idle: Notify,
}

#[derive(Default)]
struct Records {
    /// The parent's restore generation (0 for a run that was never restored).
    generation: u32,
    /// The latest start of each attempt's child run.
    starts: FxHashMap<AttemptKey, u32>,
    /// The latest checkpoint (JSON) of each attempt's child run, with its start.
    progress: FxHashMap<AttemptKey, (u32, Arc<str>)>,
    /// Child runs a restored checkpoint had in progress, until their attempts start again.
    restored: FxHashMap<AttemptKey, Box<RawValue>>,
    /// The states of finished child runs, by path (`subgraph_state/child_state`), folded.
    states: FxHashMap<Arc<str>, Folded>,
    /// Branches child runs ended with failures (keep-going), until the coordinator takes
    /// them with the attempt's completion.
    failures: FxHashMap<AttemptKey, Vec<DeadLetter>>,
}

/// One child state over every run of its subgraph state.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Folded {
    /// Its place in the report: the first run that had it, and its place in that run's list.
    first: (RunOrder, u32),
    /// The latest run that ran it: its status, attempts and error are the state's.
    latest: RunOrder,
    state: StateCheckpoint,
    /// Of its runs, how many a checkpoint this run (or the child run) was restored from had
    /// counted.
    #[serde(default)]
    restored_runs: u32,
    #[serde(skip)]
    first_started: Option<Instant>,
    #[serde(skip)]
    last_finished: Option<Instant>,
}

impl SubgraphRuns {
    pub(crate) fn new(coordinator: UnboundedSender<Message>) -> Self {
        Self {
            coordinator,
            checkpointed: AtomicBool::new(false),
            records: Mutex::default(),
            live: AtomicUsize::new(0),
            idle: Notify::new(),
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

    /// A child run of `attempt` starts: its place among the child runs, and the checkpoint a
    /// restore found for it (once). A child that started before in this attempt is
    /// superseded: its progress is no longer kept, and its later saves are ignored.
    pub(crate) fn begin(
        &self,
        attempt: AttemptKey,
    ) -> (RunOrder, Option<Result<Checkpoint, FlowError>>) {
        self.live.fetch_add(1, Ordering::AcqRel);
        let mut records = self.lock();
        let start = records.starts.entry(attempt).or_insert(0);
        *start += 1;
        let start = *start;
        let state = u32::try_from(attempt.0.index()).unwrap_or(u32::MAX);
        let order = (records.generation, state, attempt.1, attempt.2, start);
        records.progress.remove(&attempt);
        let restored = records.restored.remove(&attempt).map(|json| {
            Checkpoint::from_json(json.get().as_bytes(), "a parent's checkpoint", "", "")
        });
        (order, restored)
    }

    /// A child run ended (completed, failed or cancelled; also one whose attempt was dropped):
    /// its states join the parent's report, and the branches it ended with failures wait for
    /// the coordinator (see `attempt_completed`). (`child_ended` says it no longer runs.)
    pub(crate) fn finished(
        &self,
        attempt: AttemptKey,
        order: RunOrder,
        owner: &str,
        report: &crate::RunReport,
    ) {
        {
            let mut records = self.lock();
            for (index, run) in report.states.iter().enumerate() {
                let path: Arc<str> = Arc::from(format!("{owner}/{}", run.name));
                let first = (order, index as u32);
                match records.states.get_mut(&path) {
                    Some(folded) => folded.add(first, order, run),
                    None => {
                        let folded = Folded {
                            first,
                            latest: order,
                            state: StateCheckpoint {
                                name: path.to_string(),
                                ..StateCheckpoint::of(run, 0)
                            },
                            restored_runs: run.restored_runs,
                            first_started: run.first_started,
                            last_finished: run.last_finished,
                        };
                        records.states.insert(path, folded);
                    }
                }
            }
            let failed: Vec<DeadLetter> = report
                .failed_branches()
                .map(|letter| DeadLetter {
                    state: format!("{owner}/{}", letter.state),
                    ..letter.clone()
                })
                .collect();
            if !failed.is_empty() {
                records.failures.insert(attempt, failed);
            }
        }
    }

    /// A child run (begun with `begin`) ended, or never started.
    pub(crate) fn child_ended(&self) {
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// The coordinator took the attempt's end: its child's progress is no longer needed, and
    /// the branches its child ended with failures are the parent's now.
    pub(crate) fn attempt_completed(&self, attempt: AttemptKey) -> Vec<DeadLetter> {
        let mut records = self.lock();
        records.progress.remove(&attempt);
        records.failures.remove(&attempt).unwrap_or_default()
    }

    /// Waits until every child run has ended (the parent is ending: its stopped attempts'
    /// children are being cancelled, and their states belong in its report).
    pub(crate) async fn children_ended(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.live.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The child runs' states, for the parent's report: by path, each folded over every run
    /// of its subgraph state, in the order of those runs (not the order they finished in).
    pub(crate) fn reports(&self) -> Vec<StateReport> {
        let records = self.lock();
        ordered_reports(records.states.values())
    }

    /// What a checkpoint keeps: the progress of the child runs of `running` attempts, and
    /// the folded states of finished ones.
    pub(crate) fn image(&self, running: impl Iterator<Item = AttemptKey>) -> SubgraphsImage {
        let records = self.lock();
        let progress = running
            .filter_map(|attempt| {
                let (_, json) = records.progress.get(&attempt)?;
                // Saved by the child's writer, so it is JSON.
                let checkpoint = RawValue::from_string(json.to_string()).ok()?;
                Some(ChildProgress {
                    state: attempt.0,
                    visit: attempt.1,
                    attempt: attempt.2,
                    checkpoint,
                })
            })
            .collect();
        let mut finished: Vec<Folded> = records.states.values().cloned().collect();
        finished.sort_by_key(|folded| folded.first);
        SubgraphsImage { progress, finished }
    }

    /// Takes back what a checkpoint kept (see `image`).
    pub(crate) fn restore(&self, image: &SubgraphsImage) {
        let mut records = self.lock();
        for child in &image.progress {
            let attempt = (child.state, child.visit, child.attempt);
            records.restored.insert(attempt, child.checkpoint.clone());
        }
        records.generation = image
            .finished
            .iter()
            .map(|folded| folded.first.0.0.max(folded.latest.0))
            .max()
            .map_or(1, |generation| generation + 1);
        records.states = image
            .finished
            .iter()
            .map(|folded| {
                let restored = Folded {
                    restored_runs: folded.state.runs,
                    ..folded.clone()
                };
                (Arc::from(folded.state.name.as_str()), restored)
            })
            .collect();
    }
}

impl Folded {
    /// Adds a later (or earlier: they may finish in any order) run's record of the state.
    fn add(&mut self, first: (RunOrder, u32), order: RunOrder, run: &StateReport) {
        let state = &mut self.state;
        state.runs = state.runs.saturating_add(run.runs);
        state.visits = Some(state.visits.unwrap_or(0).saturating_add(run.visits));
        state.arrivals = state.arrivals.saturating_add(run.arrivals);
        state.total_time = state.total_time.saturating_add(run.total_time);
        self.restored_runs = self.restored_runs.saturating_add(run.restored_runs);
        self.first_started = match (self.first_started, run.first_started) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_finished = self.last_finished.max(run.last_finished);
        self.first = self.first.min(first);
        // Its latest run's outcome, as for a state that runs several times in one run.
        if run.runs > 0 && order >= self.latest {
            self.latest = order;
            state.status = run.status;
            state.attempts = run.attempts;
            state.last_error = run.last_error.clone();
        }
    }
}

/// The folded states in report order.
fn ordered_reports<'a>(states: impl Iterator<Item = &'a Folded>) -> Vec<StateReport> {
    let mut states: Vec<&Folded> = states.collect();
    states.sort_by_key(|folded| folded.first);
    states
        .into_iter()
        .map(|folded| StateReport {
            restored_runs: folded.restored_runs,
            first_started: folded.first_started,
            last_finished: folded.last_finished,
            ..StateReport::restored(&folded.state)
        })
        .collect()
}

/// The subgraph part of a checkpoint's scheduler image.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct SubgraphsImage {
    /// Child runs in progress: each continues from here when its attempt runs again.
    progress: Vec<ChildProgress>,
    /// The states of child runs that had ended, folded, in report order.
    finished: Vec<Folded>,
}

impl SubgraphsImage {
    pub(crate) fn is_empty(&self) -> bool {
        self.progress.is_empty() && self.finished.is_empty()
    }

    /// The finished child runs' states, for the report of a run read from a checkpoint.
    pub(crate) fn reports(&self) -> Vec<StateReport> {
        ordered_reports(self.finished.iter())
            .into_iter()
            .map(|report| StateReport {
                restored_runs: report.runs,
                ..report
            })
            .collect()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ChildProgress {
    state: StateId,
    visit: u32,
    attempt: u32,
    /// The child run's latest checkpoint, as it is (JSON within the parent's).
    checkpoint: Box<RawValue>,
}

/// Where a child run's checkpoints go: into its parent's records, which its parent's next
/// checkpoint takes in. Holds the latest only.
pub(crate) struct ProgressSink {
    runs: Arc<SubgraphRuns>,
    attempt: AttemptKey,
    /// Which start of the attempt's child this is: a superseded one's saves are ignored.
    start: u32,
}

impl ProgressSink {
    pub(crate) fn new(runs: Arc<SubgraphRuns>, attempt: AttemptKey, order: RunOrder) -> Self {
        Self {
            runs,
            attempt,
            start: order.4,
        }
    }

    fn latest_json(&self) -> Option<Arc<str>> {
        let records = self.runs.lock();
        let (start, json) = records.progress.get(&self.attempt)?;
        (*start == self.start).then(|| Arc::clone(json))
    }
}

impl CheckpointStore for ProgressSink {
    fn describe(&self) -> String {
        "the parent run's checkpoints".into()
    }

    fn save(&self, checkpoint: &Checkpoint) -> Result<(), FlowError> {
        let json =
            String::from_utf8(checkpoint.to_json()?).map_err(|error| FlowError::Serialization {
                key: "(a subgraph's checkpoint)".into(),
                message: error.to_string(),
            })?;
        {
            let mut records = self.runs.lock();
            if records.starts.get(&self.attempt) != Some(&self.start) {
                // A later start of the attempt runs now: this child's end is not progress.
                return Ok(());
            }
            records
                .progress
                .insert(self.attempt, (self.start, Arc::from(json)));
        }
        // The parent may have ended meanwhile: then nobody needs the progress.
        let _ = self.runs.coordinator.send(Message::SubgraphProgress);
        Ok(())
    }

    fn latest(&self, agent: &str, run: &str) -> Result<Option<Checkpoint>, FlowError> {
        self.latest_json()
            .map(|json| Checkpoint::from_json(json.as_bytes(), &self.describe(), agent, run))
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
