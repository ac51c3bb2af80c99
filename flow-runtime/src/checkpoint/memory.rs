//! A store in memory: for tests, and for runs that only need to pause and resume in-process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use flow_core::FlowError;

use super::{Checkpoint, CheckpointStore};
use crate::input::PostedAnswer;

type Runs = BTreeMap<(String, String), BTreeMap<u64, Arc<[u8]>>>;
/// Answers left for runs, by run and then by request (the latest per request).
type Answers = BTreeMap<(String, String), BTreeMap<String, PostedAnswer>>;

/// Keeps checkpoints in memory, serialized (so that what comes back is what a durable store
/// would give). Clones share the same store.
#[derive(Clone, Default)]
pub struct MemoryStore {
    runs: Arc<Mutex<Runs>>,
    answers: Arc<Mutex<Answers>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores bytes as if they were checkpoint `sequence` of `run` (to test how damaged data is
    /// reported).
    pub fn insert_raw(&self, agent: &str, run: &str, sequence: u64, bytes: &[u8]) {
        self.lock()
            .entry((agent.to_owned(), run.to_owned()))
            .or_default()
            .insert(sequence, Arc::from(bytes));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Runs> {
        self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn decode(&self, bytes: &[u8], agent: &str, run: &str) -> Result<Checkpoint, FlowError> {
        Checkpoint::from_json(bytes, &self.describe(), agent, run)
    }
}

impl CheckpointStore for MemoryStore {
    fn describe(&self) -> String {
        // Its own number (shared by its clones): two memory stores are two stores, also to
        // what finds runs by store (`CheckpointStore::cancel_run`).
        format!("memory store {:x}", Arc::as_ptr(&self.runs) as usize)
    }

    fn save(&self, checkpoint: &Checkpoint) -> Result<(), FlowError> {
        let bytes = checkpoint.to_json()?;
        self.insert_raw(
            &checkpoint.agent,
            &checkpoint.run_key,
            checkpoint.sequence,
            &bytes,
        );
        Ok(())
    }

    fn latest(&self, agent: &str, run: &str) -> Result<Option<Checkpoint>, FlowError> {
        let bytes = self
            .lock()
            .get(&(agent.to_owned(), run.to_owned()))
            .and_then(|kept| kept.last_key_value().map(|(_, b)| Arc::clone(b)));
        bytes.map(|b| self.decode(&b, agent, run)).transpose()
    }

    fn post_answer(&self, agent: &str, run: &str, answer: &PostedAnswer) -> Result<(), FlowError> {
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((agent.to_owned(), run.to_owned()))
            .or_default()
            .insert(answer.id.to_string(), answer.clone());
        Ok(())
    }

    fn posted_answers(&self, agent: &str, run: &str) -> Result<Vec<PostedAnswer>, FlowError> {
        let mut answers: Vec<PostedAnswer> = self
            .answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(agent.to_owned(), run.to_owned()))
            .map(|kept| kept.values().cloned().collect())
            .unwrap_or_default();
        answers.sort_by_key(|a| a.at_ms);
        Ok(answers)
    }

    fn clear_answers(&self, agent: &str, run: &str) -> Result<(), FlowError> {
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(agent.to_owned(), run.to_owned()));
        Ok(())
    }

    fn sequences(&self, agent: &str, run: &str) -> Result<Vec<u64>, FlowError> {
        Ok(self
            .lock()
            .get(&(agent.to_owned(), run.to_owned()))
            .map(|kept| kept.keys().copied().collect())
            .unwrap_or_default())
    }

    fn runs(&self) -> Result<Vec<super::StoredRun>, FlowError> {
        Ok(self
            .lock()
            .iter()
            .filter(|(_, kept)| !kept.is_empty())
            .map(|((agent, run), _)| super::StoredRun::new(agent, run))
            .collect())
    }

    fn load(&self, agent: &str, run: &str, sequence: u64) -> Result<Option<Checkpoint>, FlowError> {
        let bytes = self
            .lock()
            .get(&(agent.to_owned(), run.to_owned()))
            .and_then(|kept| kept.get(&sequence).cloned());
        bytes.map(|b| self.decode(&b, agent, run)).transpose()
    }

    fn delete(&self, agent: &str, run: &str, sequence: u64) -> Result<(), FlowError> {
        if let Some(kept) = self.lock().get_mut(&(agent.to_owned(), run.to_owned())) {
            kept.remove(&sequence);
        }
        Ok(())
    }

    fn delete_run(&self, agent: &str, run: &str) -> Result<(), FlowError> {
        self.lock().remove(&(agent.to_owned(), run.to_owned()));
        self.clear_answers(agent, run)
    }
}
