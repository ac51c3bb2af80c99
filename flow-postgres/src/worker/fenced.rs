//! The checkpoint store of one leased run (see [`FencedStore`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use flow_core::FlowError;
use flow_runtime::{Checkpoint, CheckpointStore, PostedAnswer};

use super::saves::{self, Save, Saves};
use crate::PgStore;

/// The checkpoint store of one leased run: saves go through only while the lease (the run's
/// id and fencing token) is still this worker's; everything else is the run's `PgStore`.
pub struct FencedStore {
    store: PgStore,
    id: i64,
    fence: i64,
    worker: String,
    workflow: String,
    key: String,
    /// The run was never claimed before: its first read of its latest checkpoint, and of
    /// the answers left for it, find nothing without asking (see [`FencedStore::fresh`]).
    fresh: Fresh,
    /// The worker's batcher of saves, if it gave one (see [`FencedStore::batched`]).
    saves: Option<Saves>,
}

/// One-shot flags for a fresh run's first reads.
#[derive(Default)]
struct Fresh {
    latest: AtomicBool,
    answers: AtomicBool,
}

impl FencedStore {
    /// The store of run `id` (of `workflow`, under `key`) leased with token `fence` by
    /// `worker`.
    pub fn new(
        store: PgStore,
        id: i64,
        fence: u64,
        worker: &str,
        workflow: &str,
        key: &str,
    ) -> Self {
        Self {
            store,
            id,
            fence: i64::try_from(fence).unwrap_or(i64::MAX),
            worker: worker.to_owned(),
            workflow: workflow.to_owned(),
            key: key.to_owned(),
            fresh: Fresh::default(),
            saves: None,
        }
    }

    /// The run has never been claimed before, so nothing is stored for it yet (submitting a
    /// key twice does nothing, and answers are accepted only for a run with a checkpoint):
    /// its first read of its latest checkpoint and of its posted answers return nothing
    /// without a round trip. Later reads ask the database.
    pub fn fresh(self) -> Self {
        self.fresh.latest.store(true, Ordering::Relaxed);
        self.fresh.answers.store(true, Ordering::Relaxed);
        self
    }

    /// Saves go with the other saves of the worker's runs: one statement for those ready
    /// together.
    pub(super) fn batched(mut self, saves: Saves) -> Self {
        self.saves = Some(saves);
        self
    }

    /// Whether this read of `agent`/`run` is the fresh run's first of its kind.
    fn first_read(&self, flag: &AtomicBool, agent: &str, run: &str) -> bool {
        agent == self.workflow && run == self.key && flag.swap(false, Ordering::Relaxed)
    }

    /// The checkpoint's JSON and its sequence as a `bigint`.
    fn encode(&self, checkpoint: &Checkpoint) -> Result<(Vec<u8>, i64), FlowError> {
        let sequence = crate::store::to_bigint(&self.store, checkpoint.sequence)?;
        Ok((checkpoint.to_json()?, sequence))
    }

    /// Saves `checkpoint` under the lease, keeping the run's latest `keep` (0: all): with the
    /// worker's other saves when it gave its batcher, on its own otherwise.
    fn save_keeping(&self, checkpoint: &Checkpoint, keep: i64) -> Result<(), FlowError> {
        let (body, sequence) = self.encode(checkpoint)?;
        let save = Save {
            workflow: checkpoint.agent.clone(),
            key: checkpoint.run_key.clone(),
            sequence,
            created: checkpoint.created_at,
            body,
            keep,
            id: self.id,
            fence: self.fence,
        };
        let held = match &self.saves {
            Some(saves) => saves.write_blocking(save).unwrap_or_else(|| {
                Err(crate::backend::db_error(
                    &self.store.describe(),
                    "saving a checkpoint",
                    "the worker has stopped",
                ))
            })?,
            None => {
                let backend = self.store.backend().clone();
                let held = self
                    .store
                    .backend()
                    .block_on(async move { saves::save_all(&backend, vec![save]).await })?;
                held.first().copied().unwrap_or(false)
            }
        };
        if !held {
            return Err(self.lost("checkpoint"));
        }
        Ok(())
    }

    fn lost(&self, action: &str) -> FlowError {
        FlowError::LeaseLost {
            workflow: self.workflow.clone(),
            run: self.key.clone(),
            worker: self.worker.clone(),
            fence: u64::try_from(self.fence).unwrap_or(0),
            action: action.to_owned(),
        }
    }
}

impl CheckpointStore for FencedStore {
    fn describe(&self) -> String {
        self.store.describe()
    }

    fn save(&self, checkpoint: &Checkpoint) -> Result<(), FlowError> {
        self.save_keeping(checkpoint, 0)
    }

    fn save_pruned(&self, checkpoint: &Checkpoint, keep: usize) -> Result<(), FlowError> {
        self.save_keeping(checkpoint, i64::try_from(keep).unwrap_or(i64::MAX))
    }

    fn latest(&self, agent: &str, run: &str) -> Result<Option<Checkpoint>, FlowError> {
        if self.first_read(&self.fresh.latest, agent, run) {
            return Ok(None);
        }
        self.store.latest(agent, run)
    }

    fn runs(&self) -> Result<Vec<flow_runtime::StoredRun>, FlowError> {
        self.store.runs()
    }

    fn sequences(&self, agent: &str, run: &str) -> Result<Vec<u64>, FlowError> {
        self.store.sequences(agent, run)
    }

    fn load(&self, agent: &str, run: &str, sequence: u64) -> Result<Option<Checkpoint>, FlowError> {
        self.store.load(agent, run, sequence)
    }

    fn delete(&self, agent: &str, run: &str, sequence: u64) -> Result<(), FlowError> {
        let Ok(sequence) = i64::try_from(sequence) else {
            return Ok(());
        };
        self.fenced_delete(
            "deleting a checkpoint",
            agent,
            run,
            Param::Int(sequence),
            Which::One,
        )
    }

    fn post_answer(&self, agent: &str, run: &str, answer: &PostedAnswer) -> Result<(), FlowError> {
        self.store.post_answer(agent, run, answer)
    }

    fn posted_answers(&self, agent: &str, run: &str) -> Result<Vec<PostedAnswer>, FlowError> {
        if self.first_read(&self.fresh.answers, agent, run) {
            return Ok(Vec::new());
        }
        self.store.posted_answers(agent, run)
    }

    fn clear_answers(&self, agent: &str, run: &str) -> Result<(), FlowError> {
        self.store.clear_answers(agent, run)
    }

    fn answers_posted(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        self.store.answers_posted()
    }

    fn prune(&self, agent: &str, run: &str, keep: usize) -> Result<(), FlowError> {
        if keep == 0 {
            return Ok(());
        }
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.fenced_delete(
            "pruning checkpoints",
            agent,
            run,
            Param::Int(keep),
            Which::Keep,
        )
    }

    fn prune_older_than(
        &self,
        agent: &str,
        run: &str,
        max_age: Duration,
        now: SystemTime,
    ) -> Result<(), FlowError> {
        let cutoff = now.checked_sub(max_age).unwrap_or(SystemTime::UNIX_EPOCH);
        self.fenced_delete(
            "pruning checkpoints by age",
            agent,
            run,
            Param::Time(cutoff),
            Which::Older,
        )
    }
}

/// The third parameter of a fenced deletion.
enum Param {
    Int(i64),
    Time(SystemTime),
}

/// Which fenced deletion.
enum Which {
    One,
    Keep,
    Older,
}

impl FencedStore {
    /// Deletes (one checkpoint, all but the latest `keep`, or those older than a cutoff) only
    /// while the lease is held: a stale worker deletes nothing of its successor's.
    fn fenced_delete(
        &self,
        action: &'static str,
        agent: &str,
        run: &str,
        param: Param,
        which: Which,
    ) -> Result<(), FlowError> {
        let (agent, run, id, fence) = (agent.to_owned(), run.to_owned(), self.id, self.fence);
        let held: i64 = self.store.backend().blocking(action, move |c| async move {
            let statement = match which {
                Which::One => &c.sql.fenced_delete,
                Which::Keep => &c.sql.fenced_prune_keep,
                Which::Older => &c.sql.fenced_prune_older,
            };
            let row = match param {
                Param::Int(value) => {
                    c.client
                        .query_one(statement, &[&agent, &run, &value, &id, &fence])
                        .await?
                }
                Param::Time(value) => {
                    c.client
                        .query_one(statement, &[&agent, &run, &value, &id, &fence])
                        .await?
                }
            };
            Ok(row.get(0))
        })?;
        if held == 0 {
            return Err(self.lost("pruning"));
        }
        Ok(())
    }
}
