//! The durable default: checkpoints in one embedded redb database file.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flow_core::FlowError;
use redb::{Database, ReadOnlyTable, ReadableDatabase, StorageError, Table, TableDefinition};

use super::{AnswerInbox, Checkpoint, CheckpointStore};
use crate::input::PostedAnswer;
use crate::scheduler::panic_message;

/// Checkpoints by (workflow, run key, sequence).
type Key<'a> = (&'a str, &'a str, u64);

const CHECKPOINTS: TableDefinition<Key<'static>, &[u8]> =
    TableDefinition::new("fluffy_flow_checkpoints");

/// Keeps checkpoints in a redb database: one file, crash-safe transactions (a commit is
/// durable when `save` returns; a crash mid-commit leaves the previous commit intact), many
/// workflows and runs side by side, the latest checkpoint of a run found by a range lookup.
///
/// redb is a pure-Rust embedded key-value store: nothing to install, no server, no C library
/// to build. Clones share the open database; one process at a time may open the file.
///
/// A damaged file is an error, never a panic: an existing file is opened with redb's integrity
/// check (every page's checksum), an existing file that is empty or not a redb database is
/// [`FlowError::CorruptStore`] (only a file the store creates itself starts empty: a truncated
/// store never silently restarts the runs it held), and a panic inside redb on damaged data is
/// caught at this boundary and reported as [`FlowError::CorruptStore`] /
/// [`FlowError::CorruptCheckpoint`], naming the file.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Guarded>,
    path: PathBuf,
}

/// The database, closed without letting a panic out (redb may panic dropping a damaged file).
struct Guarded(Option<Database>);

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(db) = self.0.take() {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(db.close())));
        }
    }
}

impl Guarded {
    fn db(&self) -> &Database {
        self.0
            .as_ref()
            .expect("the database is only taken when dropped")
    }
}

impl RedbStore {
    /// Opens the database at `path`, creating it if it does not exist. An existing file is
    /// checked page by page as it opens (it reads the whole file once).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FlowError> {
        let path = path.as_ref().to_path_buf();
        let store = format!("redb store {}", path.display());
        let corrupt = |message: String| FlowError::CorruptStore {
            store: store.clone(),
            message,
        };
        let exists = match std::fs::metadata(&path) {
            Ok(meta) if meta.len() == 0 => {
                return Err(corrupt(
                    "the file is empty (truncated?), not a database this store created".into(),
                ));
            }
            Ok(_) => true,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
            Err(error) => {
                return Err(FlowError::CheckpointStore {
                    store,
                    action: "opening the database".to_owned(),
                    message: error.to_string(),
                });
            }
        };
        let opened = catch_unwind(AssertUnwindSafe(|| {
            let mut builder = Database::builder();
            if exists {
                builder.set_check_integrity_on_open(true).open(&path)
            } else {
                builder.create(&path)
            }
        }));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(error @ redb::DatabaseError::Storage(StorageError::Corrupted(_)))) => {
                return Err(corrupt(error.to_string()));
            }
            Ok(Err(error))
                if exists && !matches!(error, redb::DatabaseError::DatabaseAlreadyOpen) =>
            {
                return Err(corrupt(format!(
                    "it is not a redb database this store can open ({error})"
                )));
            }
            Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
                return Err(FlowError::StoreInUse { store });
            }
            Ok(Err(error)) => {
                return Err(FlowError::CheckpointStore {
                    store,
                    action: "opening the database".to_owned(),
                    message: error.to_string(),
                });
            }
            Err(panic) => {
                return Err(corrupt(format!(
                    "redb panicked opening it ({})",
                    panic_message(panic)
                )));
            }
        };
        Ok(Self {
            db: Arc::new(Guarded(Some(db))),
            path,
        })
    }

    /// Stores bytes as if they were checkpoint `sequence` of `run` (to test how damaged data
    /// is reported).
    pub fn insert_raw(
        &self,
        agent: &str,
        run: &str,
        sequence: u64,
        bytes: &[u8],
    ) -> Result<(), FlowError> {
        self.write("writing a checkpoint", |table| {
            table.insert((agent, run, sequence), bytes).map(drop)
        })
    }

    fn failed(&self, action: &str, error: impl std::fmt::Display + 'static) -> FlowError {
        let message = error.to_string();
        let corrupted = (&error as &dyn std::any::Any)
            .downcast_ref::<StorageError>()
            .is_some_and(|e| matches!(e, StorageError::Corrupted(_)));
        if corrupted || message.to_lowercase().contains("corrupt") {
            return FlowError::CorruptStore {
                store: self.describe(),
                message: format!("{action}: {message}"),
            };
        }
        FlowError::CheckpointStore {
            store: self.describe(),
            action: action.to_owned(),
            message,
        }
    }

    /// One write transaction doing `change` (described by `action` if it fails), committed.
    fn write(
        &self,
        action: &str,
        change: impl FnOnce(&mut Table<Key<'static>, &[u8]>) -> Result<(), StorageError>,
    ) -> Result<(), FlowError> {
        self.guard(action, || {
            let txn = self
                .db
                .db()
                .begin_write()
                .map_err(|e| self.failed("starting a write", e))?;
            {
                let mut table = txn
                    .open_table(CHECKPOINTS)
                    .map_err(|e| self.failed("opening the checkpoint table", e))?;
                change(&mut table).map_err(|e| self.failed(action, e))?;
            }
            txn.commit().map_err(|e| self.failed(action, e))
        })
    }

    /// One read transaction doing `look` (described by `action` if it fails); `None` when
    /// nothing was ever saved (the table does not exist yet).
    fn read<R>(
        &self,
        action: &str,
        look: impl FnOnce(&ReadOnlyTable<Key<'static>, &[u8]>) -> Result<R, StorageError>,
    ) -> Result<Option<R>, FlowError> {
        self.guard(action, || {
            let txn = self
                .db
                .db()
                .begin_read()
                .map_err(|e| self.failed("starting a read", e))?;
            let table = match txn.open_table(CHECKPOINTS) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(error) => return Err(self.failed("opening the checkpoint table", error)),
            };
            look(&table).map(Some).map_err(|e| self.failed(action, e))
        })
    }

    /// Runs a redb call, turning a panic on damaged data into an error naming the file.
    fn guard<R>(
        &self,
        action: &str,
        call: impl FnOnce() -> Result<R, FlowError>,
    ) -> Result<R, FlowError> {
        catch_unwind(AssertUnwindSafe(call)).unwrap_or_else(|panic| {
            Err(FlowError::CorruptStore {
                store: self.describe(),
                message: format!("redb panicked while {action} ({})", panic_message(panic)),
            })
        })
    }

    fn decode(
        &self,
        bytes: Option<Vec<u8>>,
        agent: &str,
        run: &str,
    ) -> Result<Option<Checkpoint>, FlowError> {
        bytes
            .map(|bytes| Checkpoint::from_json(&bytes, &self.describe(), agent, run))
            .transpose()
    }
}

impl CheckpointStore for RedbStore {
    fn describe(&self) -> String {
        format!("redb store {}", self.path.display())
    }

    fn save(&self, checkpoint: &Checkpoint) -> Result<(), FlowError> {
        let bytes = checkpoint.to_json()?;
        self.insert_raw(
            &checkpoint.agent,
            &checkpoint.run_key,
            checkpoint.sequence,
            &bytes,
        )
    }

    fn latest(&self, agent: &str, run: &str) -> Result<Option<Checkpoint>, FlowError> {
        let bytes = self.read("reading a checkpoint", |table| {
            let mut range = table.range((agent, run, 0)..=(agent, run, u64::MAX))?;
            range
                .next_back()
                .transpose()
                .map(|entry| entry.map(|(_, value)| value.value().to_vec()))
        })?;
        self.decode(bytes.flatten(), agent, run)
    }

    fn sequences(&self, agent: &str, run: &str) -> Result<Vec<u64>, FlowError> {
        let sequences = self.read("listing checkpoints", |table| {
            table
                .range((agent, run, 0)..=(agent, run, u64::MAX))?
                .map(|entry| entry.map(|(key, _)| key.value().2))
                .collect::<Result<Vec<u64>, _>>()
        })?;
        Ok(sequences.unwrap_or_default())
    }

    fn runs(&self) -> Result<Vec<super::StoredRun>, FlowError> {
        let runs = self.read("listing runs", |table| {
            let mut runs: Vec<super::StoredRun> = Vec::new();
            // Keys are ordered by workflow, run and sequence: a run's checkpoints are together.
            for entry in redb::ReadableTable::iter(table)? {
                let (key, _) = entry?;
                let (agent, run, _) = key.value();
                let seen = runs
                    .last()
                    .is_some_and(|last| last.workflow == agent && last.run_key == run);
                if !seen {
                    runs.push(super::StoredRun::new(agent, run));
                }
            }
            Ok(runs)
        })?;
        Ok(runs.unwrap_or_default())
    }

    fn load(&self, agent: &str, run: &str, sequence: u64) -> Result<Option<Checkpoint>, FlowError> {
        let bytes = self.read("reading a checkpoint", |table| {
            Ok(table
                .get((agent, run, sequence))?
                .map(|value| value.value().to_vec()))
        })?;
        self.decode(bytes.flatten(), agent, run)
    }

    /// Answers are kept beside the database (see [`AnswerInbox::for_redb_store`]), so that
    /// another process can leave one while this one holds the database open.
    fn post_answer(&self, agent: &str, run: &str, answer: &PostedAnswer) -> Result<(), FlowError> {
        AnswerInbox::for_redb_store(&self.path).post(agent, run, answer)
    }

    fn posted_answers(&self, agent: &str, run: &str) -> Result<Vec<PostedAnswer>, FlowError> {
        AnswerInbox::for_redb_store(&self.path).list(agent, run)
    }

    fn clear_answers(&self, agent: &str, run: &str) -> Result<(), FlowError> {
        AnswerInbox::for_redb_store(&self.path).clear(agent, run)
    }

    fn delete(&self, agent: &str, run: &str, sequence: u64) -> Result<(), FlowError> {
        self.write("deleting a checkpoint", |table| {
            table.remove((agent, run, sequence)).map(drop)
        })
    }
}
