//! Checkpoints: what a run is, at one moment, in a form that outlives the process.
//!
//! A [`Checkpoint`] is taken by the run's coordinator between two events, so it is consistent:
//! every state is either completed (its writes are in the context and its branch moved on) or
//! not (it is queued, running, waiting for a retry or for a dependency, or held at a join).
//! Restoring one ([`crate::Agent::restore_from_checkpoint`]) continues the run from there;
//! what was running runs again from its start (at-least-once).

mod answers;
mod cancel;
mod context;
mod file;
mod history;
mod live;
mod memory;
mod redb_store;
mod store;
pub(crate) mod writer;

use std::time::{Duration, SystemTime};

use flow_core::{AgentStatus, FlowError, StateGraph, StateStatus};
use serde::{Deserialize, Serialize};

use crate::input::InputRecord;

pub use answers::AnswerInbox;
pub(crate) use cancel::cancel_checkpoint;
pub use cancel::{CancelOutcome, CancelRecord, requeue_resumed};
pub use context::CheckpointContext;
pub use file::FileStore;
pub(crate) use history::AttemptLog;
pub use history::{
    ATTEMPT_HISTORY, AttemptOutcome, AttemptRecord, AttemptTimes, attempt_times, epoch_ms,
};
pub(crate) use live::{ListedRun, live_inputs};
pub use live::{cancel_in_this_process, runs_in_this_process};
pub use memory::MemoryStore;
pub use redb_store::RedbStore;
pub use store::{CheckpointPolicy, CheckpointStore, StoredRun};

use crate::failure::DeadLetter;
use crate::scheduler::SchedulerImage;

/// The checkpoint format this version writes; a newer one is refused when read
/// ([`FlowError::CheckpointTooNew`]). When the format changes, [`Checkpoint::from_json`]
/// gains a step that upgrades the previous one, and this history a line.
///
/// Format history: `1` — the first; `2` — branches live in fork scopes (each with the state
/// that opened it), states count arrivals. A format-1 checkpoint reads as format 2: its
/// groups become scopes opened at their fork state, its arrivals are 0; `3` — the run's input
/// requests (`inputs`). Formats 1 and 2 read as format 3 with no input requests; `4` — branch
/// ids, branch views and map items (reducers and `Next::map`), the status
/// `completed_with_failures`, and each dead letter's `outcome`. Earlier formats read as
/// format 4 with no branch views (a run they hold had none) and outcomes read as `failed_run`;
/// `5` — the run's attempts with their times (`attempts`). Earlier formats read as format 5
/// with no attempts; `6` — who cancelled the run, why and when (`cancelled`). Earlier formats
/// read as format 6 with no such record (a run they hold continues when run again).
pub const CHECKPOINT_FORMAT: u32 = 6;

/// A run at one moment: enough to continue it in another process.
///
/// Serialized as JSON (see [`Checkpoint::to_json`]); the context's values keep their own JSON
/// form, so typed values come back as the same types.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The format version it was written in ([`CHECKPOINT_FORMAT`] for new ones).
    pub format: u32,
    /// The workflow's name.
    pub agent: String,
    /// The run's key: the durable run's name, or the key made unique for a run given none (see
    /// [`crate::RunHandle::run_key`]).
    pub run_key: String,
    /// The id of the run it was taken of.
    pub run_id: u64,
    /// This checkpoint's number within its run (1, 2, ...): later ones are larger.
    pub sequence: u64,
    /// When it was taken (wall clock).
    pub created_at: SystemTime,
    /// The run's status then.
    pub status: AgentStatus,
    /// How long the run had been going (over all its processes).
    pub elapsed: Duration,
    /// A fingerprint of the definition (states, their order, transitions, entries,
    /// dependencies): a checkpoint restores only into the same definition.
    pub definition: u64,
    /// Every state, in definition order.
    pub states: Vec<StateCheckpoint>,
    /// The work that was due: queued and running states (which run again when restored),
    /// and retries with their remaining delay.
    pub queue: Vec<QueuedState>,
    /// States waiting: at a join for sibling branches, or on their dependencies.
    pub waiting: Vec<String>,
    /// The run's dead letters so far.
    pub dead_letters: Vec<DeadLetter>,
    /// The run's input requests: pending ones (asked again, with the same ids, when their
    /// state runs again) and answered ones (their answers given at once when asked again),
    /// with every refusal.
    #[serde(default)]
    pub inputs: Vec<InputRecord>,
    /// The run's attempts with their times, the latest [`ATTEMPT_HISTORY`]: ended ones, then
    /// those running when it was taken.
    #[serde(default)]
    pub attempts: Vec<AttemptRecord>,
    /// Who cancelled the run, why and when, if it was cancelled on request
    /// ([`CheckpointStore::cancel_run`]): such a run is not continued by `run_durable`, only by
    /// [`crate::Agent::resume_durable`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<CancelRecord>,
    /// The scheduler's own records (branches and joins, dependency bookkeeping).
    pub(crate) scheduler: SchedulerImage,
    /// Every context value. (Last: [`Checkpoint::to_json`] appends its text as it is.)
    pub context: CheckpointContext,
}

/// Every field of a [`Checkpoint`] but its context, borrowed, in the same order and with the
/// same names: what [`Checkpoint::to_json`] serializes before it appends the context's text.
#[derive(Serialize)]
struct Head<'a> {
    format: u32,
    agent: &'a str,
    run_key: &'a str,
    run_id: u64,
    sequence: u64,
    created_at: SystemTime,
    status: AgentStatus,
    elapsed: Duration,
    definition: u64,
    states: &'a [StateCheckpoint],
    queue: &'a [QueuedState],
    waiting: &'a [String],
    dead_letters: &'a [DeadLetter],
    inputs: &'a [InputRecord],
    attempts: &'a [AttemptRecord],
    #[serde(skip_serializing_if = "Option::is_none")]
    cancelled: &'a Option<CancelRecord>,
    scheduler: &'a SchedulerImage,
}

/// One state in a [`Checkpoint`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateCheckpoint {
    /// Its name.
    pub name: String,
    /// Its status then.
    pub status: StateStatus,
    /// How many times it had started.
    pub runs: u32,
    /// How many distinct runs it had had (see [`StateReport::visits`](crate::StateReport));
    /// `None` in checkpoints of formats 1 and 2, where it is `runs`.
    #[serde(default)]
    pub visits: Option<u32>,
    /// How many branches had reached it (see [`StateReport::arrivals`](crate::StateReport)).
    /// Checkpoints of format 1 do not have it: 0.
    #[serde(default)]
    pub arrivals: u32,
    /// Attempts of its latest run (retries continue from here).
    pub attempts: u32,
    /// How many times it had completed.
    pub completions: u32,
    /// Time spent running, over all its runs.
    pub total_time: Duration,
    /// The message of its last failure, if any.
    pub last_error: Option<String>,
}

impl StateCheckpoint {
    /// What a checkpoint keeps of `report`, a state that had completed `completions` times.
    pub(crate) fn of(report: &crate::StateReport, completions: u32) -> Self {
        Self {
            name: report.name.to_string(),
            status: report.status,
            runs: report.runs,
            visits: Some(report.visits),
            arrivals: report.arrivals,
            attempts: report.attempts,
            completions,
            total_time: report.total_time,
            last_error: report.last_error.clone(),
        }
    }
}

/// A state that was due when a checkpoint was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedState {
    /// The state.
    pub state: String,
    /// The attempt that was due.
    pub attempt: u32,
    /// Where it was.
    pub place: QueuePlace,
}

/// Where a due state was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueuePlace {
    /// Ready, waiting for a slot or resources.
    Ready,
    /// Running: it runs again from its start when restored.
    Running,
    /// Waiting for a retry, due this much later.
    Retry(Duration),
}

impl Checkpoint {
    /// The checkpoint as JSON.
    pub fn to_json(&self) -> Result<Vec<u8>, FlowError> {
        let head = Head {
            format: self.format,
            agent: &self.agent,
            run_key: &self.run_key,
            run_id: self.run_id,
            sequence: self.sequence,
            created_at: self.created_at,
            status: self.status,
            elapsed: self.elapsed,
            definition: self.definition,
            states: &self.states,
            queue: &self.queue,
            waiting: &self.waiting,
            dead_letters: &self.dead_letters,
            inputs: &self.inputs,
            attempts: &self.attempts,
            cancelled: &self.cancelled,
            scheduler: &self.scheduler,
        };
        let context = self.context.text();
        let mut bytes = Vec::with_capacity(context.len() + 4096);
        serde_json::to_writer(&mut bytes, &head).map_err(|error| FlowError::Serialization {
            key: format!("checkpoint {} of run `{}`", self.sequence, self.run_key),
            message: error.to_string(),
        })?;
        // `{...}` becomes `{...,"context":<the context's JSON object>}`: the context was
        // written as JSON by this crate, so it goes in as it is, unparsed.
        bytes.pop();
        bytes.extend_from_slice(b",\"context\":");
        bytes.extend_from_slice(context.as_bytes());
        bytes.push(b'}');
        Ok(bytes)
    }

    /// Reads a checkpoint written by [`Checkpoint::to_json`]. `store`, `agent` and `run` only
    /// label the error if the bytes are not a checkpoint (they are not checked against its
    /// content: restoring checks the workflow).
    ///
    /// The format number is read first: [`CHECKPOINT_FORMAT`] is decoded; a newer one is
    /// [`FlowError::CheckpointTooNew`]. Earlier formats are read as the current one (the fields
    /// later formats added have defaults; see [`CHECKPOINT_FORMAT`]).
    pub fn from_json(bytes: &[u8], store: &str, agent: &str, run: &str) -> Result<Self, FlowError> {
        let corrupt = |message: String| FlowError::CorruptCheckpoint {
            store: store.to_owned(),
            agent: agent.to_owned(),
            run: run.to_owned(),
            message,
        };
        #[derive(Deserialize)]
        struct Version {
            format: u32,
        }
        // `to_json` writes the format first: read it there without parsing the whole document
        // twice; anything else (reformatted JSON) is parsed for it.
        let format = match leading_format(bytes) {
            Some(format) => format,
            None => {
                let version: Version = serde_json::from_slice(bytes).map_err(|error| {
                    corrupt(format!("no format version could be read ({error})"))
                })?;
                version.format
            }
        };
        match format {
            // The context is borrowed from `bytes`, copied once and indexed (see
            // `CheckpointContext`'s `Deserialize`).
            1..=5 | CHECKPOINT_FORMAT => serde_json::from_slice::<Self>(bytes)
                .map(|mut checkpoint| {
                    checkpoint.format = CHECKPOINT_FORMAT;
                    checkpoint
                })
                .map_err(|error| corrupt(format!("format {format}: {error}"))),
            newer if newer > CHECKPOINT_FORMAT => Err(FlowError::CheckpointTooNew {
                store: store.to_owned(),
                agent: agent.to_owned(),
                run: run.to_owned(),
                format: newer,
                supported: CHECKPOINT_FORMAT,
            }),
            older => Err(corrupt(format!(
                "format {older} is not one fluffy-flow ever wrote (the first is 1)"
            ))),
        }
    }

    /// The states that had completed at least once.
    pub fn completed(&self) -> impl Iterator<Item = &str> {
        self.states
            .iter()
            .filter(|s| s.completions > 0)
            .map(|s| s.name.as_str())
    }

    /// The state named `name`.
    pub fn state(&self, name: &str) -> Option<&StateCheckpoint> {
        self.states.iter().find(|s| s.name == name)
    }
}

/// The format number of a checkpoint written by [`Checkpoint::to_json`], which begins with
/// `{"format":N,`.
fn leading_format(bytes: &[u8]) -> Option<u32> {
    let rest = bytes.strip_prefix(b"{\"format\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || rest.get(digits) != Some(&b',') {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// A fingerprint of what a run's position means: state names in order, declared successors,
/// entries, error handlers, and each dependency's state and kind (not its timing options,
/// which a restored run may change). 64-bit FNV-1a over a fixed encoding (every number as
/// eight little-endian bytes), so it is the same on every platform, build and version that
/// keeps this encoding; changing the encoding means a new checkpoint format.
pub(crate) fn fingerprint(graph: &StateGraph) -> u64 {
    let mut hash = Fnv(0xcbf2_9ce4_8422_2325);
    hash.number(graph.len() as u64);
    for index in 0..graph.len() {
        let state = flow_core::StateId::new(index as u32);
        let name = graph.name(state);
        hash.number(name.len() as u64);
        hash.bytes(name.as_bytes());
        match graph.successors(state) {
            None => hash.number(u64::MAX),
            Some(successors) => {
                hash.number(successors.len() as u64);
                for s in successors {
                    hash.number(s.index() as u64);
                }
            }
        }
        hash.number(
            graph
                .error_handler(state)
                .map_or(u64::MAX, |h| h.index() as u64),
        );
        let dependencies = graph.dependencies(state);
        hash.number(dependencies.len() as u64);
        for (on, kind) in dependencies {
            hash.number(on.index() as u64);
            hash.number(*kind as u64);
        }
        hash.number(u64::from(graph.entries().contains(&state)));
    }
    hash.0
}

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn number(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use flow_core::{StateGraph, StateSpec};

    use super::fingerprint;

    #[test]
    fn the_fingerprint_is_fixed_for_a_definition() {
        let spec = |name: &str, next: &[&str]| StateSpec {
            successors: Some(next.iter().map(|s| s.to_string()).collect()),
            ..StateSpec::new(name)
        };
        let graph = StateGraph::build("w", &[spec("a", &["b"]), spec("b", &[])], &[]).unwrap();
        // The same on every platform and build: a stored checkpoint stays restorable.
        assert_eq!(fingerprint(&graph), 0x7567_2342_a880_efe5);
        let other = StateGraph::build("w", &[spec("a", &[]), spec("b", &[])], &[]).unwrap();
        assert_ne!(fingerprint(&graph), fingerprint(&other));
    }
}
