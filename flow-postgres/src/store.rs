//! `PgStore`: checkpoints and answers in PostgreSQL, for runs in many processes and on many
//! machines.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flow_core::FlowError;
use flow_runtime::{CancelRecord, Checkpoint, CheckpointStore, PostedAnswer};

use crate::PgBackend;

/// A [`CheckpointStore`] in PostgreSQL: every process that connects to the database sees the
/// same checkpoints and answers.
///
/// Each save is one statement, so one transaction: a checkpoint is there whole or not at all,
/// and durable when `save` returns (as the server's `synchronous_commit` makes it).
/// Retention runs in the database: [`CheckpointStore::prune`] and
/// [`CheckpointStore::prune_older_than`] are each one `DELETE` that reads no checkpoint (the
/// age is a column). An answer posted from any process wakes listeners with
/// `NOTIFY fluffy_answers`.
///
/// The methods block the calling thread (as every store's do: the runtime calls them on
/// tokio's blocking threads); the queries run on the backend's own runtime.
#[derive(Clone)]
pub struct PgStore {
    backend: PgBackend,
}

/// `sequence` as PostgreSQL's `bigint` (for every store of this crate that saves).
pub(crate) fn to_bigint(store: &PgStore, sequence: u64) -> Result<i64, FlowError> {
    i64::try_from(sequence).map_err(|_| FlowError::CheckpointStore {
        store: store.describe(),
        action: "saving a checkpoint".to_owned(),
        message: format!(
            "sequence {sequence} is above PostgreSQL's bigint (at most {}); number checkpoints from 1",
            i64::MAX
        ),
    })
}

impl PgStore {
    /// The store of `backend`'s database (run [`PgBackend::migrate`] first).
    pub fn new(backend: &PgBackend) -> Self {
        Self {
            backend: backend.clone(),
        }
    }

    /// The backend it uses.
    pub fn backend(&self) -> &PgBackend {
        &self.backend
    }

    /// Writes raw bytes as checkpoint `sequence` of (`agent`, `run`), for tests of damaged
    /// data.
    #[doc(hidden)]
    pub fn insert_raw(
        &self,
        agent: &str,
        run: &str,
        sequence: u64,
        bytes: &[u8],
    ) -> Result<(), FlowError> {
        let (agent, run, bytes) = (agent.to_owned(), run.to_owned(), bytes.to_vec());
        let sequence = to_bigint(self, sequence)?;
        self.backend
            .blocking("saving raw bytes", move |c| async move {
                c.client
                    .execute(
                        &c.sql.save,
                        &[&agent, &run, &sequence, &SystemTime::now(), &bytes],
                    )
                    .await
                    .map(drop)
            })
    }

    /// The checkpoint in `row`'s first column, read.
    fn checkpoint(
        &self,
        body: Option<Vec<u8>>,
        agent: &str,
        run: &str,
    ) -> Result<Option<Checkpoint>, FlowError> {
        body.map(|bytes| Checkpoint::from_json(&bytes, &self.describe(), agent, run))
            .transpose()
    }
}

impl CheckpointStore for PgStore {
    fn describe(&self) -> String {
        self.backend.describe().to_owned()
    }

    fn save(&self, checkpoint: &Checkpoint) -> Result<(), FlowError> {
        let body = checkpoint.to_json()?;
        let sequence = to_bigint(self, checkpoint.sequence)?;
        let (agent, run) = (checkpoint.agent.clone(), checkpoint.run_key.clone());
        let created = checkpoint.created_at;
        self.backend
            .blocking("saving a checkpoint", move |c| async move {
                c.client
                    .execute(&c.sql.save, &[&agent, &run, &sequence, &created, &body])
                    .await
                    .map(drop)
            })
    }

    fn save_pruned(&self, checkpoint: &Checkpoint, keep: usize) -> Result<(), FlowError> {
        if keep == 0 {
            return self.save(checkpoint);
        }
        let body = checkpoint.to_json()?;
        let sequence = to_bigint(self, checkpoint.sequence)?;
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let (agent, run) = (checkpoint.agent.clone(), checkpoint.run_key.clone());
        let created = checkpoint.created_at;
        self.backend
            .blocking("saving a checkpoint", move |c| async move {
                c.client
                    .execute(
                        &c.sql.save_pruned,
                        &[&agent, &run, &sequence, &created, &body, &keep],
                    )
                    .await
                    .map(drop)
            })
    }

    fn latest(&self, agent: &str, run: &str) -> Result<Option<Checkpoint>, FlowError> {
        let (a, r) = (agent.to_owned(), run.to_owned());
        let body = self
            .backend
            .blocking("reading the latest checkpoint", move |c| async move {
                let row = c.client.query_opt(&c.sql.latest, &[&a, &r]).await?;
                Ok(row.map(|row| row.get::<_, Vec<u8>>(0)))
            })?;
        self.checkpoint(body, agent, run)
    }

    fn sequences(&self, agent: &str, run: &str) -> Result<Vec<u64>, FlowError> {
        let (a, r) = (agent.to_owned(), run.to_owned());
        let sequences = self
            .backend
            .blocking("listing checkpoints", move |c| async move {
                let rows = c.client.query(&c.sql.sequences, &[&a, &r]).await?;
                Ok(rows
                    .iter()
                    .map(|row| row.get::<_, i64>(0))
                    .collect::<Vec<_>>())
            })?;
        // (Saved from u64 through `to_bigint`: never negative.)
        Ok(sequences.into_iter().map(|s| s.max(0) as u64).collect())
    }

    fn runs(&self) -> Result<Vec<flow_runtime::StoredRun>, FlowError> {
        self.backend.blocking("listing runs", |c| async move {
            let rows = c.client.query(crate::sql::RUNS, &[]).await?;
            Ok(rows
                .iter()
                .map(|row| {
                    flow_runtime::StoredRun::new(row.get::<_, String>(0), row.get::<_, String>(1))
                })
                .collect())
        })
    }

    fn load(&self, agent: &str, run: &str, sequence: u64) -> Result<Option<Checkpoint>, FlowError> {
        let Ok(sequence) = i64::try_from(sequence) else {
            return Ok(None); // (never saved: above what a save takes)
        };
        let (a, r) = (agent.to_owned(), run.to_owned());
        let body = self
            .backend
            .blocking("reading a checkpoint", move |c| async move {
                let row = c
                    .client
                    .query_opt(&c.sql.load, &[&a, &r, &sequence])
                    .await?;
                Ok(row.map(|row| row.get::<_, Vec<u8>>(0)))
            })?;
        self.checkpoint(body, agent, run)
    }

    fn delete(&self, agent: &str, run: &str, sequence: u64) -> Result<(), FlowError> {
        let Ok(sequence) = i64::try_from(sequence) else {
            return Ok(());
        };
        let (a, r) = (agent.to_owned(), run.to_owned());
        self.backend
            .blocking("deleting a checkpoint", move |c| async move {
                c.client
                    .execute(&c.sql.delete, &[&a, &r, &sequence])
                    .await
                    .map(drop)
            })
    }

    fn delete_run(&self, agent: &str, run: &str) -> Result<(), FlowError> {
        let (a, r) = (agent.to_owned(), run.to_owned());
        self.backend
            .blocking("deleting a run", move |c| async move {
                c.client
                    .execute(&c.sql.delete_run, &[&a, &r])
                    .await
                    .map(drop)
            })
    }

    fn post_answer(&self, agent: &str, run: &str, answer: &PostedAnswer) -> Result<(), FlowError> {
        let body = serde_json::to_vec(answer).map_err(|e| FlowError::CheckpointStore {
            store: self.describe(),
            action: "leaving an answer".to_owned(),
            message: e.to_string(),
        })?;
        let (a, r, request) = (agent.to_owned(), run.to_owned(), answer.id.to_string());
        self.backend
            .blocking("leaving an answer", move |c| async move {
                c.client
                    .execute(&c.sql.post_answer, &[&a, &r, &request, &body])
                    .await
                    .map(drop)
            })
    }

    fn posted_answers(&self, agent: &str, run: &str) -> Result<Vec<PostedAnswer>, FlowError> {
        let (a, r) = (agent.to_owned(), run.to_owned());
        let bodies = self
            .backend
            .blocking("reading answers", move |c| async move {
                let rows = c.client.query(&c.sql.answers, &[&a, &r]).await?;
                Ok(rows
                    .iter()
                    .map(|row| row.get::<_, Vec<u8>>(0))
                    .collect::<Vec<_>>())
            })?;
        bodies
            .iter()
            .map(|body| {
                serde_json::from_slice(body).map_err(|e| FlowError::CorruptCheckpoint {
                    store: self.describe(),
                    agent: agent.to_owned(),
                    run: run.to_owned(),
                    message: format!("an answer left for it is not readable: {e}"),
                })
            })
            .collect()
    }

    fn ask_holder_to_cancel(
        &self,
        agent: &str,
        run: &str,
        record: &CancelRecord,
    ) -> Result<Option<String>, FlowError> {
        let request = serde_json::to_string(record).map_err(|e| FlowError::CheckpointStore {
            store: self.describe(),
            action: "asking a worker to cancel a run".to_owned(),
            message: e.to_string(),
        })?;
        let (a, r) = (agent.to_owned(), run.to_owned());
        self.backend
            .blocking("asking a worker to cancel a run", move |c| async move {
                let rows = c
                    .client
                    .query(crate::sql::ASK_TO_CANCEL, &[&a, &r, &request])
                    .await?;
                // A queued run has no holder: its checkpoint is marked (by `cancel_run`), and
                // the worker that claims it finds the request too.
                Ok(rows.first().and_then(|row| {
                    let (status, worker, live) = (
                        row.get::<_, String>(0),
                        row.get::<_, Option<String>>(1)
                            .unwrap_or_else(|| "a worker".to_owned()),
                        row.get::<_, bool>(2),
                    );
                    (status == "running").then(|| {
                        if live {
                            worker
                        } else {
                            format!("the worker that claims it next (the lease of {worker} lapsed)")
                        }
                    })
                }))
            })
    }

    fn requeue(&self, agent: &str, run: &str) -> Result<bool, FlowError> {
        let (a, r) = (agent.to_owned(), run.to_owned());
        self.backend
            .blocking("putting a run back in the queue", move |c| async move {
                let row = c.client.query_one(crate::sql::REQUEUE, &[&a, &r]).await?;
                Ok(row.get::<_, i64>(0) > 0)
            })
    }

    fn answers_posted(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.backend.notifications(crate::backend::Channel::Answers))
    }

    fn clear_answers(&self, agent: &str, run: &str) -> Result<(), FlowError> {
        let (a, r) = (agent.to_owned(), run.to_owned());
        self.backend
            .blocking("clearing answers", move |c| async move {
                c.client
                    .execute(&c.sql.clear_answers, &[&a, &r])
                    .await
                    .map(drop)
            })
    }

    fn prune_older_than(
        &self,
        agent: &str,
        run: &str,
        max_age: Duration,
        now: SystemTime,
    ) -> Result<(), FlowError> {
        let cutoff = now.checked_sub(max_age).unwrap_or(SystemTime::UNIX_EPOCH);
        let (a, r) = (agent.to_owned(), run.to_owned());
        self.backend
            .blocking("pruning checkpoints by age", move |c| async move {
                c.client
                    .execute(&c.sql.prune_older, &[&a, &r, &cutoff])
                    .await
                    .map(drop)
            })
    }

    fn prune(&self, agent: &str, run: &str, keep: usize) -> Result<(), FlowError> {
        if keep == 0 {
            return Ok(());
        }
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let (a, r) = (agent.to_owned(), run.to_owned());
        self.backend
            .blocking("pruning checkpoints", move |c| async move {
                c.client
                    .execute(&c.sql.prune_keep, &[&a, &r, &keep])
                    .await
                    .map(drop)
            })
    }
}
