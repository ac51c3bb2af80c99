//! Where checkpoints are kept, and when a run writes them.

use std::time::Duration;

use flow_core::FlowError;

use super::{CancelOutcome, CancelRecord, Checkpoint};
use crate::input::{InputId, InputOutcome, PostedAnswer};

/// Keeps checkpoints, by workflow and run key.
///
/// The methods block (a file or database write): the runtime calls them on tokio's blocking
/// threads, never on the scheduler. Every store keeps each saved checkpoint whole or not at
/// all (a crash during `save` leaves the previous latest one readable), and reports
/// unreadable data as [`FlowError::CorruptCheckpoint`] naming the store and the run. The
/// conformance suite in `tests/checkpoints.rs` runs against every store.
pub trait CheckpointStore: Send + Sync + 'static {
    /// The store's kind and location, for error messages (`file store /var/lib/flows`).
    fn describe(&self) -> String;

    /// Saves a checkpoint under its agent, run key and sequence number (replacing one with the
    /// same three). Durable when it returns, as far as the store's medium allows.
    fn save(&self, checkpoint: &Checkpoint) -> Result<(), FlowError>;

    /// Saves `checkpoint` (the run's newest) and keeps only the latest `keep` checkpoints of
    /// its run (all when `keep` is 0): what an automatic checkpoint does. By default
    /// [`Self::save`] then [`Self::prune`]; a store that can do both in one write (PostgreSQL:
    /// one statement) overrides it.
    fn save_pruned(&self, checkpoint: &Checkpoint, keep: usize) -> Result<(), FlowError> {
        self.save(checkpoint)?;
        self.prune(&checkpoint.agent, &checkpoint.run_key, keep)
    }

    /// The checkpoint of `run` with the highest sequence number, if any.
    fn latest(&self, agent: &str, run: &str) -> Result<Option<Checkpoint>, FlowError>;

    /// The sequence numbers kept for `run`, ascending.
    fn sequences(&self, agent: &str, run: &str) -> Result<Vec<u64>, FlowError>;

    /// One checkpoint of `run`, if kept.
    fn load(&self, agent: &str, run: &str, sequence: u64) -> Result<Option<Checkpoint>, FlowError>;

    /// Forgets one checkpoint of `run` (nothing if it is not kept).
    fn delete(&self, agent: &str, run: &str, sequence: u64) -> Result<(), FlowError>;

    /// Every run this store keeps a checkpoint of, sorted by workflow and key: what the
    /// command line and the dashboard list. Stores that cannot list their runs refuse (the
    /// default); every store of this crate, and PostgreSQL's, can.
    fn runs(&self) -> Result<Vec<StoredRun>, FlowError> {
        Err(FlowError::CheckpointStore {
            store: self.describe(),
            action: "listing runs".into(),
            message: "this store cannot list the runs it keeps: implement `CheckpointStore::runs` for it, or use one that does (memory, file, redb, postgres)".into(),
        })
    }

    /// Forgets every checkpoint of `run`, and the answers left for it.
    fn delete_run(&self, agent: &str, run: &str) -> Result<(), FlowError> {
        for sequence in self.sequences(agent, run)? {
            self.delete(agent, run, sequence)?;
        }
        self.clear_answers(agent, run)
    }

    /// Leaves an answer to one of `run`'s input requests, for the run to pick up (the latest
    /// per request wins). Stores that keep no answers refuse (the default).
    fn post_answer(&self, agent: &str, run: &str, answer: &PostedAnswer) -> Result<(), FlowError> {
        let _ = (agent, run, answer);
        Err(FlowError::CheckpointStore {
            store: self.describe(),
            action: "leaving an answer".into(),
            message: "this store keeps no answers to input requests: answer through the run's handle, or use a store that does (file, redb, memory)".into(),
        })
    }

    /// The answers left for `run`, oldest first.
    fn posted_answers(&self, agent: &str, run: &str) -> Result<Vec<PostedAnswer>, FlowError> {
        let _ = (agent, run);
        Ok(Vec::new())
    }

    /// What wakes a durable run waiting for input when an answer is left in this store (by
    /// any process), so that it reads its answers at once rather than at its next poll
    /// ([`crate::Agent::input_poll_interval`]; it still polls). `None`, the default: polling
    /// only. A database that notifies (PostgreSQL's `NOTIFY`) returns one.
    fn answers_posted(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }

    /// Forgets the answers left for `run`.
    fn clear_answers(&self, agent: &str, run: &str) -> Result<(), FlowError> {
        let _ = (agent, run);
        Ok(())
    }

    /// Answers an input request of the durable run `run` of workflow `agent`, from any
    /// process that can open this store (the run may be waiting in another process, or
    /// suspended). If the run is waiting in this process, the answer goes to it at once and
    /// its checks run now (an invalid answer is `FlowError::InvalidAnswer`); otherwise the
    /// request is looked up in the run's latest checkpoint (an unknown or answered request is
    /// an error; text requests must get text) and the answer is left for the run, which picks
    /// it up within its poll interval (see [`crate::Agent::input_poll_interval`]) or when it
    /// is continued, runs the request's checks, and records it or its refusal.
    fn answer(
        &self,
        agent: &str,
        run: &str,
        id: &InputId,
        by: &str,
        value: serde_json::Value,
    ) -> Result<(), FlowError> {
        // Waiting in this process now: given at once, its checks run here.
        if let Some(hub) = super::live_inputs(&self.describe(), agent, run)
            && hub.is_waiting(id)
        {
            return hub.answer(id, value, by);
        }
        let latest = self.latest(agent, run)?;
        let record = latest
            .as_ref()
            .and_then(|checkpoint| checkpoint.inputs.iter().find(|r| &r.request.id == id));
        let Some(record) = record else {
            return Err(FlowError::UnknownInput {
                id: id.to_string(),
                run_key: run.to_owned(),
            });
        };
        if let InputOutcome::Answered { by, .. } = &record.outcome {
            return Err(FlowError::InputClosed {
                id: id.to_string(),
                how: format!("answered by {by}"),
            });
        }
        let text = record.request.schema.get("type").and_then(|t| t.as_str()) == Some("string");
        if text && !value.is_string() {
            return Err(FlowError::InvalidAnswer {
                id: id.to_string(),
                answer: value.to_string(),
                reason: format!("the answer must be text, not {value}"),
            });
        }
        self.post_answer(agent, run, &PostedAnswer::new(id.clone(), value, by))
    }

    /// Asks the process that holds the durable run `run` (another process, which this store
    /// knows: a PostgreSQL worker holding its lease) to cancel it with `record`; the holder's
    /// name when one was asked. `None`, the default: this store knows no holders.
    fn ask_holder_to_cancel(
        &self,
        agent: &str,
        run: &str,
        record: &CancelRecord,
    ) -> Result<Option<String>, FlowError> {
        let _ = (agent, run, record);
        Ok(None)
    }

    /// Puts the durable run `run` back in the run queue this store keeps (PostgreSQL's), for
    /// a worker to continue it; whether it did. `false`, the default: this store keeps no
    /// queue, or `run` was not submitted to it (or is queued or running already); whoever
    /// resumes it then continues it ([`crate::Agent::resume_durable`]). See
    /// [`crate::requeue_resumed`].
    fn requeue(&self, agent: &str, run: &str) -> Result<bool, FlowError> {
        let _ = (agent, run);
        Ok(false)
    }

    /// Cancels the durable run `run` of workflow `agent`, for good: `run_durable` will not
    /// continue it (only [`crate::Agent::resume_durable`] does), and its last checkpoint keeps
    /// `record` (who, why, when).
    /// - Running in this process: told to stop, it writes that checkpoint as it stops
    ///   ([`CancelOutcome::Stopping`]).
    /// - Held by a process the store knows (a PostgreSQL worker): asked through the store
    ///   ([`Self::ask_holder_to_cancel`], [`CancelOutcome::Requested`]).
    /// - Not running (waiting for answers, failed, stopped): its latest checkpoint is saved
    ///   again as cancelled ([`CancelOutcome::Cancelled`]).
    /// - Its latest checkpoint says running, but it does not run here: it may run in a
    ///   process this store cannot reach, which would write over the cancellation, so
    ///   [`FlowError::CancelRefused`] says so, unless `force` (that process is known gone).
    ///
    /// A completed run is refused ([`FlowError::CancelRefused`]); a run with no checkpoint is
    /// [`FlowError::NoCheckpoint`]; one cancelled before is
    /// [`CancelOutcome::AlreadyCancelled`] with the first record.
    fn cancel_run(
        &self,
        agent: &str,
        run: &str,
        record: CancelRecord,
        force: bool,
    ) -> Result<CancelOutcome, FlowError> {
        super::cancel::cancel_run(self, agent, run, record, force)
    }

    /// Edits the context of `run`'s latest checkpoint (LangGraph's `update_state`): `edit`
    /// changes its values ([`CheckpointContext::set`], [`CheckpointContext::remove`]), and the
    /// result is saved as a new checkpoint after it, so that `run_durable` continues from the
    /// edited values; the checkpoints before stay as they were. Returns the new checkpoint's
    /// sequence. [`FlowError::NoCheckpoint`] when `run` has no checkpoint.
    fn edit_latest(
        &self,
        agent: &str,
        run: &str,
        edit: &mut dyn FnMut(&mut super::CheckpointContext) -> Result<(), FlowError>,
    ) -> Result<u64, FlowError> {
        let mut checkpoint = latest_kept(self, agent, run)?;
        edit(&mut checkpoint.context)?;
        checkpoint.sequence = checkpoint.sequence.saturating_add(1);
        checkpoint.created_at = std::time::SystemTime::now();
        self.save(&checkpoint)?;
        Ok(checkpoint.sequence)
    }

    /// Forks `run` at its checkpoint `sequence` into a new run `into` (DBOS's fork,
    /// LangGraph's time travel): `into`'s first checkpoint is a copy of that one under the new
    /// key (its input requests renamed with it), and `run` is left untouched. Continue the
    /// fork with `run_durable(store, into)`, after editing it if you like
    /// ([`Self::edit_latest`]). [`FlowError::NoCheckpoint`] when that checkpoint does not exist;
    /// [`FlowError::InvalidConfig`] when `into` already has checkpoints.
    fn fork_run(&self, agent: &str, run: &str, sequence: u64, into: &str) -> Result<(), FlowError> {
        let mut checkpoint =
            self.load(agent, run, sequence)?
                .ok_or_else(|| FlowError::NoCheckpoint {
                    agent: agent.to_owned(),
                    run: run.to_owned(),
                    what: format!("checkpoint {sequence}"),
                })?;
        if !self.sequences(agent, into)?.is_empty() {
            return Err(FlowError::InvalidConfig {
                agent: agent.to_owned(),
                message: format!(
                    "cannot fork `{run}` into `{into}`: `{into}` already has checkpoints; fork into a new key, or delete that run first"
                ),
            });
        }
        checkpoint.run_key = into.to_owned();
        checkpoint.sequence = 1;
        checkpoint.created_at = std::time::SystemTime::now();
        for record in &mut checkpoint.inputs {
            record.request.id.run_key = into.to_owned();
        }
        self.save(&checkpoint)
    }

    /// Deletes the checkpoints of `run` taken more than `max_age` before `now` (wall
    /// clock), always keeping the latest. Checkpoints are numbered in the order they were
    /// taken, so it reads from the oldest and stops at the first young enough one: a save
    /// that prunes reads one checkpoint more than it deletes.
    fn prune_older_than(
        &self,
        agent: &str,
        run: &str,
        max_age: Duration,
        now: std::time::SystemTime,
    ) -> Result<(), FlowError> {
        let sequences = self.sequences(agent, run)?;
        let Some((_latest, older)) = sequences.split_last() else {
            return Ok(());
        };
        for &sequence in older {
            // One that cannot be read (damaged, or of a newer format) is left alone: its age
            // is unknown, and a save must not fail for it.
            let Ok(Some(checkpoint)) = self.load(agent, run, sequence) else {
                continue;
            };
            let age = now
                .duration_since(checkpoint.created_at)
                .unwrap_or_default();
            if age < max_age {
                break;
            }
            self.delete(agent, run, sequence)?;
        }
        Ok(())
    }

    /// Keeps only the latest `keep` checkpoints of `run` (all of them when `keep` is 0).
    fn prune(&self, agent: &str, run: &str, keep: usize) -> Result<(), FlowError> {
        if keep == 0 {
            return Ok(());
        }
        let sequences = self.sequences(agent, run)?;
        let excess = sequences.len().saturating_sub(keep);
        for &sequence in &sequences[..excess] {
            self.delete(agent, run, sequence)?;
        }
        Ok(())
    }
}

/// The latest checkpoint of `run`, or [`FlowError::NoCheckpoint`] when it has none (for what
/// changes a run's latest checkpoint: an edit, a cancellation).
pub(crate) fn latest_kept<S: CheckpointStore + ?Sized>(
    store: &S,
    agent: &str,
    run: &str,
) -> Result<Checkpoint, FlowError> {
    store
        .latest(agent, run)?
        .ok_or_else(|| FlowError::NoCheckpoint {
            agent: agent.to_owned(),
            run: run.to_owned(),
            what: "checkpoint".to_owned(),
        })
}

/// When a run writes checkpoints on its own (see [`crate::Agent::checkpoints`]).
///
/// Writing happens off the scheduler: the coordinator takes a consistent image (its own small
/// records, and the context's map shared copy-on-write: O(1)) and a writer task serializes
/// and saves it.
/// While a save is in progress, further requests are merged into one image taken when it
/// ends: a slow store makes checkpoints rarer, never the scheduler slower, and the latest
/// checkpoint is never older than the one being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckpointPolicy {
    /// Also checkpoint every this often (on tokio's clock), if set.
    pub interval: Option<Duration>,
    /// Checkpoint after every state that completes.
    pub after_each_state: bool,
    /// How many checkpoints to keep per run (older ones are deleted after a save); 0 keeps all.
    pub keep: usize,
    /// Also delete, after a save, the run's checkpoints older than this (wall clock; the
    /// latest is always kept). `None` keeps them whatever their age.
    pub max_age: Option<Duration>,
}

impl CheckpointPolicy {
    /// After every completed state, keeping the latest 3.
    pub fn after_each_state() -> Self {
        Self {
            interval: None,
            after_each_state: true,
            keep: 3,
            max_age: None,
        }
    }

    /// Every `interval`, keeping the latest 3.
    pub fn every(interval: Duration) -> Self {
        Self {
            interval: Some(interval),
            after_each_state: false,
            keep: 3,
            max_age: None,
        }
    }

    /// Whether it asks for any checkpoint at all.
    pub(crate) fn is_active(&self) -> bool {
        self.after_each_state || self.interval.is_some_and(|i| !i.is_zero())
    }
}

/// A shared store is a store: `Arc<dyn CheckpointStore>` (a store chosen at run time, as the
/// command line opens one) or `Arc<S>` goes wherever a store is taken. Every method goes to
/// the shared one, its own overrides included.
impl<S: CheckpointStore + ?Sized> CheckpointStore for std::sync::Arc<S> {
    fn describe(&self) -> String {
        (**self).describe()
    }

    fn save(&self, checkpoint: &Checkpoint) -> Result<(), FlowError> {
        (**self).save(checkpoint)
    }

    fn save_pruned(&self, checkpoint: &Checkpoint, keep: usize) -> Result<(), FlowError> {
        (**self).save_pruned(checkpoint, keep)
    }

    fn latest(&self, agent: &str, run: &str) -> Result<Option<Checkpoint>, FlowError> {
        (**self).latest(agent, run)
    }

    fn sequences(&self, agent: &str, run: &str) -> Result<Vec<u64>, FlowError> {
        (**self).sequences(agent, run)
    }

    fn load(&self, agent: &str, run: &str, sequence: u64) -> Result<Option<Checkpoint>, FlowError> {
        (**self).load(agent, run, sequence)
    }

    fn delete(&self, agent: &str, run: &str, sequence: u64) -> Result<(), FlowError> {
        (**self).delete(agent, run, sequence)
    }

    fn runs(&self) -> Result<Vec<StoredRun>, FlowError> {
        (**self).runs()
    }

    fn delete_run(&self, agent: &str, run: &str) -> Result<(), FlowError> {
        (**self).delete_run(agent, run)
    }

    fn post_answer(&self, agent: &str, run: &str, answer: &PostedAnswer) -> Result<(), FlowError> {
        (**self).post_answer(agent, run, answer)
    }

    fn posted_answers(&self, agent: &str, run: &str) -> Result<Vec<PostedAnswer>, FlowError> {
        (**self).posted_answers(agent, run)
    }

    fn answers_posted(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        (**self).answers_posted()
    }

    fn clear_answers(&self, agent: &str, run: &str) -> Result<(), FlowError> {
        (**self).clear_answers(agent, run)
    }

    fn answer(
        &self,
        agent: &str,
        run: &str,
        id: &InputId,
        by: &str,
        value: serde_json::Value,
    ) -> Result<(), FlowError> {
        (**self).answer(agent, run, id, by, value)
    }

    fn cancel_run(
        &self,
        agent: &str,
        run: &str,
        record: CancelRecord,
        force: bool,
    ) -> Result<CancelOutcome, FlowError> {
        (**self).cancel_run(agent, run, record, force)
    }

    fn ask_holder_to_cancel(
        &self,
        agent: &str,
        run: &str,
        record: &CancelRecord,
    ) -> Result<Option<String>, FlowError> {
        (**self).ask_holder_to_cancel(agent, run, record)
    }

    fn requeue(&self, agent: &str, run: &str) -> Result<bool, FlowError> {
        (**self).requeue(agent, run)
    }

    fn edit_latest(
        &self,
        agent: &str,
        run: &str,
        edit: &mut dyn FnMut(&mut super::CheckpointContext) -> Result<(), FlowError>,
    ) -> Result<u64, FlowError> {
        (**self).edit_latest(agent, run, edit)
    }

    fn fork_run(&self, agent: &str, run: &str, sequence: u64, into: &str) -> Result<(), FlowError> {
        (**self).fork_run(agent, run, sequence, into)
    }

    fn prune_older_than(
        &self,
        agent: &str,
        run: &str,
        max_age: Duration,
        now: std::time::SystemTime,
    ) -> Result<(), FlowError> {
        (**self).prune_older_than(agent, run, max_age, now)
    }

    fn prune(&self, agent: &str, run: &str, keep: usize) -> Result<(), FlowError> {
        (**self).prune(agent, run, keep)
    }
}

/// A run a store keeps checkpoints of (see [`CheckpointStore::runs`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoredRun {
    /// The workflow's name.
    pub workflow: String,
    /// The run's key.
    pub run_key: String,
}

impl StoredRun {
    /// The run `run_key` of `workflow`.
    pub fn new(workflow: impl Into<String>, run_key: impl Into<String>) -> Self {
        Self {
            workflow: workflow.into(),
            run_key: run_key.into(),
        }
    }
}
