//! Checkpoints: what a run is, at one moment, in a form that outlives the process.
//!
//! A [`Checkpoint`] is taken by the run's coordinator between two events, so it is consistent:
//! every state is either completed (its writes are in the context and its branch moved on) or
//! not (it is queued, running, waiting for a retry or for a dependency, or held at a join).
//! Restoring one ([`crate::Agent::restore_from_checkpoint`]) continues the run from there;
//! what was running runs again from its start (at-least-once).

mod context;
mod file;
mod memory;
mod redb_store;
mod store;
pub(crate) mod writer;

use std::time::{Duration, SystemTime};

use flow_core::{AgentStatus, FlowError, FxHasher, StateGraph, StateStatus};
use serde::{Deserialize, Serialize};

pub use context::CheckpointContext;
pub use file::FileStore;
pub use memory::MemoryStore;
pub use redb_store::RedbStore;
pub use store::{CheckpointPolicy, CheckpointStore};

use crate::failure::DeadLetter;
use crate::scheduler::SchedulerImage;

/// The checkpoint format this version writes. Older formats are migrated when read (see
/// [`Checkpoint::from_json`]); a newer one is an error naming both versions.
///
/// Format history: `1` — the first.
pub const CHECKPOINT_FORMAT: u32 = 1;

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
    /// The run's key: the durable run's name, or the run id as text.
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
    /// Attempts of its latest run (retries continue from here).
    pub attempts: u32,
    /// How many times it had completed.
    pub completions: u32,
    /// Time spent running, over all its runs.
    pub total_time: Duration,
    /// The message of its last failure, if any.
    pub last_error: Option<String>,
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

    /// Reads a checkpoint written by [`Checkpoint::to_json`] of this or an earlier format.
    /// `store` names where the bytes came from, for the error if they are not a checkpoint.
    ///
    /// Migration: the format number is read first; a checkpoint of an older format is
    /// upgraded step by step to [`CHECKPOINT_FORMAT`] before it is decoded (each format change
    /// adds one step here and a line to the format history), and one of a newer format is an
    /// error telling to upgrade.
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
            CHECKPOINT_FORMAT => {
                let wire: Wire<'_> = serde_json::from_slice(bytes)
                    .map_err(|error| corrupt(format!("format {CHECKPOINT_FORMAT}: {error}")))?;
                let context = CheckpointContext::parse(wire.context.get())
                    .map_err(|error| corrupt(format!("its context: {error}")))?;
                Ok(Checkpoint {
                    format: wire.format,
                    agent: wire.agent,
                    run_key: wire.run_key,
                    run_id: wire.run_id,
                    sequence: wire.sequence,
                    created_at: wire.created_at,
                    status: wire.status,
                    elapsed: wire.elapsed,
                    definition: wire.definition,
                    states: wire.states,
                    queue: wire.queue,
                    waiting: wire.waiting,
                    dead_letters: wire.dead_letters,
                    scheduler: wire.scheduler,
                    context,
                })
            }
            newer if newer > CHECKPOINT_FORMAT => Err(corrupt(format!(
                "it has format {newer}, newer than this version of fluffy-flow reads ({CHECKPOINT_FORMAT}); upgrade fluffy-flow"
            ))),
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

/// A checkpoint as [`Checkpoint::from_json`] reads it: the context borrowed, unparsed, so that
/// it is copied once, at its exact size, and indexed in one pass.
#[derive(Deserialize)]
struct Wire<'a> {
    format: u32,
    agent: String,
    run_key: String,
    run_id: u64,
    sequence: u64,
    created_at: SystemTime,
    status: AgentStatus,
    elapsed: Duration,
    definition: u64,
    states: Vec<StateCheckpoint>,
    queue: Vec<QueuedState>,
    waiting: Vec<String>,
    dead_letters: Vec<DeadLetter>,
    scheduler: SchedulerImage,
    #[serde(borrow)]
    context: &'a serde_json::value::RawValue,
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
/// entries, error handlers, dependencies. Stable across processes and builds (FxHash of the
/// names and indices, not of pointers).
pub(crate) fn fingerprint(graph: &StateGraph) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = FxHasher::default();
    graph.len().hash(&mut hasher);
    for index in 0..graph.len() {
        let state = flow_core::StateId::new(index as u32);
        graph.name(state).as_bytes().hash(&mut hasher);
        0xffu8.hash(&mut hasher);
        match graph.successors(state) {
            None => u32::MAX.hash(&mut hasher),
            Some(successors) => {
                successors.len().hash(&mut hasher);
                for s in successors {
                    s.index().hash(&mut hasher);
                }
            }
        }
        graph
            .error_handler(state)
            .map(|h| h.index())
            .hash(&mut hasher);
        for (on, kind) in graph.dependencies(state) {
            on.index().hash(&mut hasher);
            (*kind as u8).hash(&mut hasher);
        }
        graph.entries().contains(&state).hash(&mut hasher);
    }
    hasher.finish()
}
