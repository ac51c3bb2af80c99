//! Checkpoints from the coordinator's side: taking a consistent image of a run between two
//! events, and starting a coordinator from one.

use std::time::{Duration, SystemTime};

use flow_core::{AgentStatus, FlowError, StateId, StateStatus};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::Coordinator;
use super::deps::{DependenciesImage, Origin};
use super::joins::{Branch, Joins, JoinsImage};
use crate::agent::Compiled;
use crate::checkpoint::{
    CHECKPOINT_FORMAT, Checkpoint, CheckpointContext, QueuePlace, QueuedState, StateCheckpoint,
};
use crate::context::{BranchesImage, Frozen, RestoredBranches};
use crate::subgraph::SubgraphsImage;

/// The scheduler's records in a checkpoint: branches and joins, due work, dependency waits.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct SchedulerImage {
    joins: JoinsImage,
    work: Vec<Work>,
    dependencies: DependenciesImage,
    /// The seed of the run's retry jitter, so that restored retries keep their schedule.
    seed: u64,
    completed: u64,
    transitions: u64,
    max_concurrency: usize,
    /// Branch-local writes and map items (see `branches`).
    #[serde(default)]
    branches: BranchesImage,
    /// The runs of subgraph states: in progress, and finished (see `crate::subgraph`).
    #[serde(default, skip_serializing_if = "SubgraphsImage::is_empty")]
    subgraphs: SubgraphsImage,
}

impl std::fmt::Debug for SchedulerImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerImage")
            .field("work", &self.work.len())
            .field("waiting", &self.dependencies.waiters.len())
            .finish_non_exhaustive()
    }
}

impl SchedulerImage {
    /// State runs that had finished, successfully or not.
    pub(crate) fn transitions(&self) -> u64 {
        self.transitions
    }

    /// The states of its subgraph states' finished runs, by path.
    pub(crate) fn subgraph_reports(&self) -> Vec<crate::StateReport> {
        self.subgraphs.reports()
    }

    /// The most states that had run at once.
    pub(crate) fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }
}

/// One due attempt.
#[derive(Clone, Serialize, Deserialize)]
struct Work {
    state: StateId,
    #[serde(rename = "group")]
    branch: Branch,
    attempt: u32,
    /// Which run of the state (see `ReadyEntry::visit`; 0 in checkpoints before format 3:
    /// numbered when it starts).
    #[serde(default)]
    visit: u32,
    place: Place,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
enum Place {
    /// Queued, with its virtual start time relative to the checkpoint (microseconds; negative:
    /// it had waited), so that it keeps its place and its age.
    Ready(i64),
    /// Running: it runs again, first.
    Running,
    /// Waiting for a retry due this much later.
    Retry(Duration),
}

/// A checkpoint as the coordinator hands it out: complete but for the context's values, which
/// whoever asked serializes (off the coordinator) from a copy-on-write image of the context
/// taken in the same step as the rest: later writes do not reach it.
pub(crate) struct PendingCheckpoint {
    checkpoint: Checkpoint,
    context: Frozen,
    /// Branch-local writes, or the error of one that would not serialize.
    branches: Result<(), FlowError>,
}

impl PendingCheckpoint {
    /// Serializes the context into the checkpoint.
    pub(crate) fn finish(self) -> Result<Checkpoint, FlowError> {
        self.branches?;
        let mut checkpoint = self.checkpoint;
        checkpoint.context = self.context.to_checkpoint()?;
        Ok(checkpoint)
    }
}

impl Coordinator {
    /// An image of the run now, with status `status`. Runs between events only.
    pub(super) fn capture(&mut self, status: AgentStatus) -> PendingCheckpoint {
        self.now = Instant::now();
        let now = self.now;
        let clock = self.ready.clock(now);
        self.checkpoint_sequence = self.checkpoint_sequence.saturating_add(1);
        let mut work: Vec<Work> = Vec::with_capacity(self.ready.len() + self.running_count);
        work.extend(self.running.iter().flatten().map(|r| Work {
            state: r.state,
            branch: r.branch,
            attempt: r.attempt,
            visit: r.visit,
            place: Place::Running,
        }));
        let mut ready: Vec<_> = self.ready.iter().collect();
        ready.sort_unstable();
        ready.reverse(); // the heap's order: the next to start first
        work.extend(ready.into_iter().map(|e| Work {
            state: e.state,
            branch: e.branch,
            attempt: e.attempt,
            visit: e.visit,
            place: Place::Ready(e.virtual_start().saturating_sub(clock)),
        }));
        work.extend(self.timers.iter().flatten().map(|t| Work {
            state: t.state,
            branch: t.branch,
            attempt: t.attempt,
            visit: t.visit,
            place: Place::Retry(t.due.saturating_duration_since(now)),
        }));
        let dependencies = self.dependencies_image();
        let name = |s: StateId| self.graph.name(s).to_string();
        let queue = work
            .iter()
            .map(|w| QueuedState {
                state: name(w.state),
                attempt: w.attempt,
                place: match w.place {
                    Place::Ready(_) => QueuePlace::Ready,
                    Place::Running => QueuePlace::Running,
                    Place::Retry(left) => QueuePlace::Retry(left),
                },
            })
            .collect();
        let mut waiting: Vec<String> = self.joins.held_states().map(name).collect();
        waiting.extend(dependencies.waiters.iter().map(|w| name(w.state)));
        waiting.sort_unstable();
        waiting.dedup();
        let states = self
            .states
            .iter()
            .zip(&self.completions)
            .map(|(report, &completions)| StateCheckpoint::of(report, completions))
            .collect();
        let (branch_images, branches_kept) = match self.branches_image() {
            Ok(image) => (image, Ok(())),
            Err(error) => (BranchesImage::default(), Err(error)),
        };
        let mut attempts = self.attempt_history();
        let created_at = SystemTime::now();
        if status == AgentStatus::Cancelled {
            // Its last checkpoint: what runs now is being stopped, not running on.
            let now_ms = crate::checkpoint::epoch_ms(created_at);
            for record in &mut attempts {
                if record.outcome == crate::checkpoint::AttemptOutcome::Running {
                    record.outcome = crate::checkpoint::AttemptOutcome::Cancelled;
                    record.ended_at_ms = Some(now_ms.max(record.started_at_ms));
                }
            }
        }
        let checkpoint = Checkpoint {
            format: CHECKPOINT_FORMAT,
            agent: self.compiled.name.to_string(),
            run_key: self.durable_key.to_string(),
            run_id: self.observer.run_id,
            sequence: self.checkpoint_sequence,
            created_at,
            status,
            elapsed: self
                .elapsed_before
                .saturating_add(now.saturating_duration_since(self.started_at)),
            definition: self.compiled.fingerprint(),
            states,
            queue,
            waiting,
            dead_letters: self.dead_letters.clone(),
            inputs: self.observer.inputs.records(),
            attempts,
            // A request is kept by any end but completion (a run that failed as it was being
            // cancelled stays cancelled: `run_durable` does not continue it).
            cancelled: match status {
                AgentStatus::Cancelled | AgentStatus::Failed => self
                    .listed
                    .as_ref()
                    .and_then(|listed| listed.request().cloned()),
                _ => None,
            },
            context: CheckpointContext::default(),
            scheduler: SchedulerImage {
                joins: self.joins.image(),
                work,
                dependencies,
                seed: self.seed,
                completed: self.completed,
                transitions: self.transitions,
                max_concurrency: self.max_concurrency,
                branches: branch_images,
                subgraphs: self
                    .subgraphs
                    .as_ref()
                    .map_or_else(SubgraphsImage::default, |s| {
                        s.image(
                            self.running
                                .iter()
                                .flatten()
                                .map(|r| (r.state, r.visit, r.attempt)),
                        )
                    }),
            },
        };
        // What a restore rebuilds from this image must be these very branches.
        #[cfg(debug_assertions)]
        if let Err(difference) = Joins::restore(
            &self.graph,
            &checkpoint.scheduler.joins,
            &branches(&checkpoint.scheduler),
        )
        .and_then(|rebuilt| self.joins.same_counts(&rebuilt))
        {
            panic!("scheduler bug: a checkpoint's branches do not rebuild: {difference}");
        }
        PendingCheckpoint {
            checkpoint,
            context: self.context.freeze(),
            branches: branches_kept,
        }
    }

    /// The run's attempts for a checkpoint: those that ended, then those running now (none
    /// for a run without checkpoints).
    fn attempt_history(&self) -> Vec<crate::checkpoint::AttemptRecord> {
        let Some(history) = self.history.as_deref() else {
            return Vec::new();
        };
        let running = self.running.iter().flatten().map(|r| {
            let priority = self.compiled.states[r.state.index()].priority;
            (
                r.state.index() as u32,
                (r.attempt, r.visit),
                (self.ready.became_ready_at(r.queued_at, priority), r.started),
            )
        });
        let graph = &self.graph;
        history.snapshot(|state| &**graph.name(StateId::new(state)), running)
    }

    /// Puts a checkpoint's run back in place of the fresh one `new` made: branches, due work
    /// (what was running is queued first, to run again), retries with their remaining delay,
    /// dependency waits, statuses and counts. The checkpoint was checked to fit the definition.
    pub(super) fn restore(
        &mut self,
        checkpoint: &Checkpoint,
        joins: Joins,
        branches: RestoredBranches,
    ) {
        let image = &checkpoint.scheduler;
        // Its history goes on. What was running then stopped with its run (at the
        // checkpoint, as far as anyone knows) and runs again: a record of its own.
        let taken_ms = crate::checkpoint::epoch_ms(checkpoint.created_at);
        let history = checkpoint
            .attempts
            .iter()
            .cloned()
            .map(|mut record| {
                if record.outcome == crate::checkpoint::AttemptOutcome::Running {
                    record.outcome = crate::checkpoint::AttemptOutcome::Cancelled;
                    record.ended_at_ms = Some(taken_ms.max(record.started_at_ms));
                    record.error = Some(
                        "stopped with its run; run again from its start when the run continued"
                            .into(),
                    );
                }
                record
            })
            .collect();
        self.history = Some(Box::new(crate::checkpoint::AttemptLog::new(history)));
        self.restored = true;
        self.restored_from = Some(checkpoint.sequence);
        self.now = Instant::now();
        self.joins = joins;
        self.joins.set_strict(self.compiled.strict_joins);
        // A checkpoint whose branches were not told apart (an older format, or taken before
        // the agent had reducers) gets fresh ids for them if they are told apart now.
        self.renumber_restored =
            !self.joins.tracks_branches() && !self.compiled.reducers.is_empty();
        let active = self.joins.tracks_branches() || !self.compiled.reducers.is_empty();
        self.restore_branches(branches, active);
        self.seed = image.seed;
        self.completed = image.completed;
        self.transitions = image.transitions;
        self.max_concurrency = image.max_concurrency;
        self.checkpoint_sequence = checkpoint.sequence;
        self.elapsed_before = checkpoint.elapsed;
        self.observer.inputs.restore(checkpoint.inputs.clone());
        if let Some(subgraphs) = &self.subgraphs {
            subgraphs.restore(&image.subgraphs);
        }
        self.dead_letters = checkpoint.dead_letters.clone();
        // The runs it took before count against its step limit.
        self.steps = checkpoint
            .states
            .iter()
            .map(|saved| u64::from(saved.visits.unwrap_or(saved.runs)))
            .sum();
        for (record, saved) in self.states.iter_mut().zip(&checkpoint.states) {
            record.runs = saved.runs;
            record.visits = saved.visits.unwrap_or(saved.runs);
            record.restored_runs = saved.runs;
            record.arrivals = saved.arrivals;
            record.attempts = saved.attempts;
            record.total_time = saved.total_time;
            record.last_error = saved.last_error.clone();
            record.status = saved.status;
        }
        for (index, saved) in checkpoint.states.iter().enumerate() {
            self.completions[index] = saved.completions;
            self.observer.set_state(index, saved.status);
        }
        let mut active = vec![0u32; self.graph.len()];
        let clock = self.ready.clock(self.now);
        for work in &image.work {
            active[work.state.index()] += 1;
            // Each keeps the run of the state it is (a running attempt starts again as the
            // same visit: keys made of its visit, and its input requests' ids, stay the same).
            let attempt = (work.attempt, work.visit);
            match work.place {
                // Ahead of everything queued: it had started already.
                Place::Running => {
                    let branch = self.restored_branch(work.branch);
                    self.requeue(work.state, branch, attempt, i64::MIN / 4)
                }
                Place::Ready(relative) => {
                    let branch = self.restored_branch(work.branch);
                    self.requeue(work.state, branch, attempt, clock.saturating_add(relative))
                }
                Place::Retry(left) => {
                    let branch = self.restored_branch(work.branch);
                    self.schedule_retry(
                        work.state,
                        branch,
                        attempt,
                        left,
                        "restored from a checkpoint".to_owned(),
                    );
                }
            }
        }
        self.restore_dependency_records(&image.dependencies, &active);
        for waiter in &image.dependencies.waiters {
            self.restore_waiter(waiter);
        }
        self.renumber_restored = false;
        // Branches a failure ended before the checkpoint still make the run's status.
        self.ended_branches = checkpoint
            .dead_letters
            .iter()
            .filter(|letter| letter.outcome == crate::FailureOutcome::EndedBranch)
            .count() as u32;
    }
}

/// Checks that a checkpoint fits the definition of `graph` before anything is restored:
/// same workflow, same states in the same order, same graph, and ids within range (a
/// damaged checkpoint that still parses is refused here rather than trusted).
pub(crate) fn check_fits(
    checkpoint: &Checkpoint,
    compiled: &Compiled,
) -> Result<Restorable, FlowError> {
    let (agent, graph) = (&*compiled.name, &*compiled.graph);
    let mismatch = |reason: String| FlowError::CheckpointMismatch {
        agent: agent.to_owned(),
        checkpoint_agent: checkpoint.agent.clone(),
        run: checkpoint.run_key.clone(),
        reason,
    };
    if checkpoint.agent != agent {
        return Err(mismatch(
            "it was taken of another workflow; restore it into an agent built from that workflow's definition".into(),
        ));
    }
    let names: Vec<&str> = graph.names().iter().map(|n| &**n).collect();
    let saved: Vec<&str> = checkpoint.states.iter().map(|s| s.name.as_str()).collect();
    if names != saved {
        let missing: Vec<&str> = saved
            .iter()
            .copied()
            .filter(|s| !names.contains(s))
            .collect();
        let added: Vec<&str> = names
            .iter()
            .copied()
            .filter(|s| !saved.contains(s))
            .collect();
        return Err(mismatch(format!(
            "its states differ from this definition's (missing here: [{}]; new here: [{}]{}); restore it into the definition it was taken of",
            missing.join(", "),
            added.join(", "),
            if missing.is_empty() && added.is_empty() {
                "; the same states in another order"
            } else {
                ""
            }
        )));
    }
    if checkpoint.definition != compiled.fingerprint() {
        return Err(mismatch(
            "its transitions, entries, error handlers or dependencies differ from this definition's; restore it into the definition it was taken of".into(),
        ));
    }
    let image = &checkpoint.scheduler;
    let n = graph.len();
    let corrupt = |message: String| FlowError::CorruptCheckpoint {
        store: "the checkpoint given".into(),
        agent: checkpoint.agent.clone(),
        run: checkpoint.run_key.clone(),
        message,
    };
    let state_ok = |s: StateId| s.index() < n;
    if !image.work.iter().all(|w| state_ok(w.state))
        || !image.dependencies.waiters.iter().all(|w| state_ok(w.state))
    {
        return Err(corrupt(
            "its queue or its waits name states that do not exist".into(),
        ));
    }
    if image.work.iter().any(|w| w.attempt == 0) {
        return Err(corrupt("its queue has an attempt numbered 0".into()));
    }
    // Every number the queue carries is within what the definition can produce: a damaged
    // delay must not leave a restored run waiting for ever.
    for work in &image.work {
        let policy = compiled.states[work.state.index()].retry;
        let name = graph.name(work.state);
        if work.attempt > policy.max_retries.saturating_add(1) {
            return Err(corrupt(format!(
                "state `{name}` is due for attempt {}, but its retry policy allows {}",
                work.attempt,
                policy.max_retries.saturating_add(1)
            )));
        }
        if let Place::Retry(left) = work.place
            && left > policy.max_delay
        {
            return Err(corrupt(format!(
                "state `{name}` waits {left:?} for a retry, longer than its policy's `max_delay` of {:?}",
                policy.max_delay
            )));
        }
    }
    if !(image.dependencies.records.is_empty() || image.dependencies.records.len() == n) {
        return Err(corrupt(format!(
            "it keeps dependency records for {} states, not {n}",
            image.dependencies.records.len()
        )));
    }
    if let Some(state) = checkpoint
        .states
        .iter()
        .find(|s| matches!(s.status, StateStatus::Running) && s.runs == 0)
    {
        return Err(corrupt(format!(
            "state `{}` is running but never started",
            state.name
        )));
    }
    let joins = Joins::restore(graph, &image.joins, &branches(image))
        .map_err(|reason| corrupt(format!("its branches do not fit together: {reason}")))?;
    let branch_data = image
        .branches
        .clone()
        .restore()
        .map_err(|reason| corrupt(format!("its branch-local writes do not fit: {reason}")))?;
    Ok(Restorable {
        joins,
        branches: branch_data,
    })
}

/// A checkpoint checked against a definition, with its branches rebuilt.
pub(crate) struct Restorable {
    joins: Joins,
    branches: RestoredBranches,
}

impl Coordinator {
    /// A restored branch, under a fresh id when the checkpoint did not tell branches apart
    /// and this run does (see `renumber_restored`).
    pub(super) fn restored_branch(&mut self, branch: Branch) -> Branch {
        if self.renumber_restored {
            Branch {
                id: self.joins.new_branch_id(),
                ..branch
            }
        } else {
            branch
        }
    }

    /// Continues the run of a checked checkpoint instead of starting afresh.
    pub(crate) fn continue_from(&mut self, checkpoint: &Checkpoint, checked: Restorable) {
        self.restore(checkpoint, checked.joins, checked.branches);
    }
}

/// Every branch the due work and the dependency waits stand for, by state and branch.
fn branches(image: &SchedulerImage) -> Vec<(StateId, Branch)> {
    let mut branches: Vec<(StateId, Branch)> =
        image.work.iter().map(|w| (w.state, w.branch)).collect();
    branches.extend(
        image
            .dependencies
            .waiters
            .iter()
            .filter_map(|w| match w.origin {
                Origin::Branch(branch) => Some((w.state, branch)),
                Origin::Requested | Origin::SelfStart => None,
            }),
    );
    branches
}
