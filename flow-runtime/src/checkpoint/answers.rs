//! Answers left for durable runs in files: the inbox of [`FileStore`](super::FileStore) and
//! [`RedbStore`](super::RedbStore) (beside the database, so that another process can post one
//! while the run's process holds the database open).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use flow_core::FlowError;
use serde::Serialize;

use super::file::{escape, write_whole};
use crate::input::{InputId, PostedAnswer};

/// A directory of answers to the input requests of durable runs: one file per request, the
/// latest answer winning. A durable run checkpointed in the matching store reads it while it
/// waits (every [`crate::Agent::input_poll_interval`]), checks each answer with the request's
/// own checks, and records it or records its refusal in its audit.
///
/// Posting needs no lock on the store: another process can answer a run whose process holds a
/// [`RedbStore`](super::RedbStore) open. It does not check the answer against the run (the
/// store's [`CheckpointStore::answer`](super::CheckpointStore::answer) does, where the store
/// can be opened).
#[derive(Debug, Clone)]
pub struct AnswerInbox {
    root: PathBuf,
}

impl AnswerInbox {
    /// The inbox of the [`FileStore`](super::FileStore) in `dir`.
    pub fn for_file_store(dir: impl AsRef<Path>) -> Self {
        Self {
            root: dir.as_ref().join(".answers"),
        }
    }

    /// The inbox of the [`RedbStore`](super::RedbStore) at `path` (the directory
    /// `<path>.answers` beside it).
    pub fn for_redb_store(path: impl AsRef<Path>) -> Self {
        let mut root = path.as_ref().as_os_str().to_owned();
        root.push(".answers");
        Self { root: root.into() }
    }

    /// Leaves `value` as `by`'s answer to request `id` of `workflow`'s run `run_key`.
    pub fn answer(
        &self,
        workflow: &str,
        run_key: &str,
        id: &InputId,
        by: &str,
        value: impl Serialize,
    ) -> Result<(), FlowError> {
        let value = crate::input::to_value(id, value)?;
        self.post(workflow, run_key, &PostedAnswer::new(id.clone(), value, by))
    }

    fn run_dir(&self, workflow: &str, run_key: &str) -> PathBuf {
        self.root.join(escape(workflow)).join(escape(run_key))
    }

    fn failed(&self, action: String, error: &io::Error) -> FlowError {
        FlowError::CheckpointStore {
            store: format!("answer inbox {}", self.root.display()),
            action,
            message: error.to_string(),
        }
    }

    /// Writes one answer whole or not at all (a temporary file renamed over the old one).
    pub(crate) fn post(
        &self,
        workflow: &str,
        run_key: &str,
        answer: &PostedAnswer,
    ) -> Result<(), FlowError> {
        let dir = self.run_dir(workflow, run_key);
        fs::create_dir_all(&dir)
            .map_err(|e| self.failed(format!("creating {}", dir.display()), &e))?;
        let target = dir.join(format!("{}.json", escape(&answer.id.to_string())));
        // Unique per posting (its own id), so that postings at once never share one.
        let temporary = dir.join(format!(".{}.tmp", escape(&answer.posting)));
        let bytes = serde_json::to_vec(answer).map_err(|error| FlowError::Serialization {
            key: format!("answer to {}", answer.id),
            message: error.to_string(),
        })?;
        write_whole(&dir, &temporary, &target, &bytes)
            .map_err(|error| self.failed(format!("writing {}", target.display()), &error))
    }

    /// Every answer left for the run (unreadable files are skipped: a file being replaced).
    pub(crate) fn list(
        &self,
        workflow: &str,
        run_key: &str,
    ) -> Result<Vec<PostedAnswer>, FlowError> {
        let dir = self.run_dir(workflow, run_key);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(self.failed(format!("listing {}", dir.display()), &error)),
        };
        let mut answers = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name
                .to_str()
                .is_none_or(|n| n.starts_with('.') || !n.ends_with(".json"))
            {
                continue;
            }
            if let Ok(bytes) = fs::read(entry.path())
                && let Ok(answer) = serde_json::from_slice::<PostedAnswer>(&bytes)
            {
                answers.push(answer);
            }
        }
        answers.sort_by_key(|a| a.at_ms);
        Ok(answers)
    }

    /// Forgets the run's answers.
    pub(crate) fn clear(&self, workflow: &str, run_key: &str) -> Result<(), FlowError> {
        let dir = self.run_dir(workflow, run_key);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(self.failed(format!("deleting {}", dir.display()), &error)),
        }
    }
}
