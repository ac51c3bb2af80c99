//! Where checkpoints are kept, and when a run writes them.

use std::time::Duration;

use flow_core::FlowError;

use super::Checkpoint;

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

    /// The checkpoint of `run` with the highest sequence number, if any.
    fn latest(&self, agent: &str, run: &str) -> Result<Option<Checkpoint>, FlowError>;

    /// The sequence numbers kept for `run`, ascending.
    fn sequences(&self, agent: &str, run: &str) -> Result<Vec<u64>, FlowError>;

    /// One checkpoint of `run`, if kept.
    fn load(&self, agent: &str, run: &str, sequence: u64) -> Result<Option<Checkpoint>, FlowError>;

    /// Forgets one checkpoint of `run` (nothing if it is not kept).
    fn delete(&self, agent: &str, run: &str, sequence: u64) -> Result<(), FlowError>;

    /// Forgets every checkpoint of `run`.
    fn delete_run(&self, agent: &str, run: &str) -> Result<(), FlowError> {
        for sequence in self.sequences(agent, run)? {
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
}

impl CheckpointPolicy {
    /// After every completed state, keeping the latest 3.
    pub fn after_each_state() -> Self {
        Self {
            interval: None,
            after_each_state: true,
            keep: 3,
        }
    }

    /// Every `interval`, keeping the latest 3.
    pub fn every(interval: Duration) -> Self {
        Self {
            interval: Some(interval),
            after_each_state: false,
            keep: 3,
        }
    }

    /// Whether it asks for any checkpoint at all.
    pub(crate) fn is_active(&self) -> bool {
        self.after_each_state || self.interval.is_some_and(|i| !i.is_zero())
    }
}
