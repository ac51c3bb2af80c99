//! The run queue: runs submitted from any process, their status, and waiting for their end.

use std::time::{Duration, SystemTime};

use flow_core::FlowError;
use flow_runtime::Context;
use serde_json::{Map, Value};

use crate::PgBackend;
use crate::backend::{db_error, explain};

/// Where a run of the queue stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueStatus {
    /// Waiting for a worker.
    Queued,
    /// Leased by a worker (or its lease lapsed and it waits to be claimed again).
    Running,
    /// Ended with every state done.
    Completed,
    /// Ended, with failed branches that the workflow let go.
    CompletedWithFailures,
    /// Ended with an error (see [`QueuedRun::error`]).
    Failed,
    /// Cancelled.
    Cancelled,
    /// Suspended on a human-input request (a workflow with `suspend_on_input`).
    AwaitingInput,
}

impl QueueStatus {
    /// As the `status` column has it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::CompletedWithFailures => "completed_with_failures",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::AwaitingInput => "awaiting_input",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "completed_with_failures" => Self::CompletedWithFailures,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "awaiting_input" => Self::AwaitingInput,
            _ => return None,
        })
    }

    /// Whether the run has ended (no worker will take it again).
    pub fn is_finished(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

/// What [`PgBackend::submit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    /// The run's id in the queue.
    pub id: i64,
    /// False when a run of that workflow and key had been submitted before (submitting is
    /// idempotent: the earlier run stands, with its context).
    pub new: bool,
}

/// A run of the queue, as the database has it now.
#[derive(Debug, Clone)]
pub struct QueuedRun {
    /// Its id in the queue.
    pub id: i64,
    /// Where it stands.
    pub status: QueueStatus,
    /// How many times a worker claimed it (more than one after a worker was lost).
    pub claims: u32,
    /// How many of those claims took it over from a worker whose lease had lapsed (see
    /// `Worker::max_lapses`).
    pub lapses: u32,
    /// The worker that holds or last held its lease.
    pub worker: Option<String>,
    /// The fencing token of its latest lease.
    pub fence: u64,
    /// Its final context, once it has ended without an error.
    pub context: Option<Map<String, Value>>,
    /// Its error, if it failed.
    pub error: Option<String>,
    /// When it was submitted, first claimed, and ended (the database's clock).
    pub submitted_at: SystemTime,
    /// When a worker first claimed it.
    pub started_at: Option<SystemTime>,
    /// When it ended.
    pub finished_at: Option<SystemTime>,
}

impl PgBackend {
    /// Submits a run of `workflow` under `key` with `context`'s values to the queue: a worker
    /// with that workflow registered claims it. Submitting a key again does nothing
    /// (`new: false`): a run is submitted once.
    pub async fn submit(
        &self,
        workflow: &str,
        key: &str,
        context: &Context,
    ) -> Result<Submitted, FlowError> {
        self.submit_with_priority(workflow, key, context, 0).await
    }

    /// [`Self::submit`] with a priority: workers claim higher ones first (then the oldest).
    pub async fn submit_with_priority(
        &self,
        workflow: &str,
        key: &str,
        context: &Context,
        priority: i32,
    ) -> Result<Submitted, FlowError> {
        let body = serde_json::to_vec(&context.snapshot()?).map_err(|e| {
            db_error(
                self.describe(),
                "submitting a run",
                format!("its context: {e}"),
            )
        })?;
        let (backend, workflow, key) = (self.clone(), workflow.to_owned(), key.to_owned());
        self.on_runtime(async move {
            let connection = backend.connection().await?;
            // (A concurrent submit of the same key may commit after this statement's
            // snapshot: the second try sees it.)
            for _ in 0..2 {
                let rows = connection
                    .client
                    .query(&connection.sql.submit, &[&workflow, &key, &body, &priority])
                    .await
                    .map_err(|e| db_error(backend.describe(), "submitting a run", explain(&e)))?;
                if let Some(row) = rows.first() {
                    return Ok(Submitted {
                        id: row.get(0),
                        new: row.get(1),
                    });
                }
            }
            Err(db_error(
                backend.describe(),
                "submitting a run",
                format!("run `{key}` of `{workflow}` was neither inserted nor found"),
            ))
        })
        .await
    }

    /// Submits many runs of `workflow` in one statement (a key and its context each; keys
    /// submitted before are kept as they are, `new: false`), in the order given, which is the
    /// order workers claim them in: what a batch of submits costs is one round trip and one
    /// commit. A key given twice in one batch is an error.
    pub async fn submit_batch(
        &self,
        workflow: &str,
        runs: &[(String, Context)],
    ) -> Result<Vec<Submitted>, FlowError> {
        let mut keys: Vec<String> = Vec::with_capacity(runs.len());
        let mut bodies: Vec<Vec<u8>> = Vec::with_capacity(runs.len());
        let mut seen = std::collections::HashSet::with_capacity(runs.len());
        for (key, context) in runs {
            if !seen.insert(key.as_str()) {
                return Err(FlowError::InvalidConfig {
                    agent: workflow.to_owned(),
                    message: format!("run key `{key}` is given twice in one batch of submits"),
                });
            }
            keys.push(key.clone());
            bodies.push(serde_json::to_vec(&context.snapshot()?).map_err(|e| {
                db_error(
                    self.describe(),
                    "submitting runs",
                    format!("the context of `{key}`: {e}"),
                )
            })?);
        }
        let mut submitted: Vec<Option<Submitted>> = vec![None; keys.len()];
        // (A concurrent submit of a key may commit after the statement's snapshot: the keys
        // it left without an id are asked again.)
        for _ in 0..2 {
            let missing: Vec<usize> = (0..keys.len())
                .filter(|&i| submitted[i].is_none())
                .collect();
            if missing.is_empty() {
                break;
            }
            let batch_keys: Vec<String> = missing.iter().map(|&i| keys[i].clone()).collect();
            let batch_bodies: Vec<Vec<u8>> = missing.iter().map(|&i| bodies[i].clone()).collect();
            let workflow_ = workflow.to_owned();
            let rows = self
                .query("submitting runs", move |c| async move {
                    let rows = c
                        .client
                        .query(
                            &c.sql.submit_many,
                            &[&workflow_, &batch_keys, &batch_bodies, &0i32],
                        )
                        .await?;
                    Ok(rows
                        .iter()
                        .map(|row| (row.get::<_, Option<i64>>(0), row.get::<_, bool>(1)))
                        .collect::<Vec<_>>())
                })
                .await?;
            for (&i, (id, new)) in missing.iter().zip(rows) {
                submitted[i] = id.map(|id| Submitted { id, new });
            }
        }
        submitted
            .into_iter()
            .zip(&keys)
            .map(|(submitted, key)| {
                submitted.ok_or_else(|| {
                    db_error(
                        self.describe(),
                        "submitting runs",
                        format!("run `{key}` of `{workflow}` was neither inserted nor found"),
                    )
                })
            })
            .collect()
    }

    /// The run of `workflow` under `key`, if it was submitted.
    pub async fn queued_run(
        &self,
        workflow: &str,
        key: &str,
    ) -> Result<Option<QueuedRun>, FlowError> {
        let (backend, workflow, key) = (self.clone(), workflow.to_owned(), key.to_owned());
        self.on_runtime(async move {
            let connection = backend.connection().await?;
            let fail = |e: tokio_postgres::Error| {
                db_error(backend.describe(), "reading a queued run", explain(&e))
            };
            let Some(row) = connection
                .client
                .query_opt(&connection.sql.run, &[&workflow, &key])
                .await
                .map_err(fail)?
            else {
                return Ok(None);
            };
            let status: String = row.get(1);
            let status = QueueStatus::parse(&status).ok_or_else(|| {
                db_error(
                    backend.describe(),
                    "reading a queued run",
                    format!("unknown status `{status}` (a newer fluffy-flow's schema?)"),
                )
            })?;
            let context = row
                .get::<_, Option<Vec<u8>>>(5)
                .map(|bytes| serde_json::from_slice::<Map<String, Value>>(&bytes))
                .transpose()
                .map_err(|e| {
                    db_error(
                        backend.describe(),
                        "reading a queued run",
                        format!("its final context is not a JSON object: {e}"),
                    )
                })?;
            Ok(Some(QueuedRun {
                id: row.get(0),
                status,
                claims: u32::try_from(row.get::<_, i32>(2)).unwrap_or(0),
                worker: row.get(3),
                fence: u64::try_from(row.get::<_, i64>(4)).unwrap_or(0),
                context,
                error: row.get(6),
                submitted_at: row.get(7),
                started_at: row.get(8),
                finished_at: row.get(9),
                lapses: u32::try_from(row.get::<_, i32>(10)).unwrap_or(0),
            }))
        })
        .await
    }

    /// Waits until the run of `workflow` under `key` has ended and returns it: woken by the
    /// worker's `NOTIFY` when it ends, and looking again every `poll` meanwhile.
    /// [`FlowError::InvalidConfig`] if no such run was submitted.
    pub async fn wait_for(
        &self,
        workflow: &str,
        key: &str,
        poll: Duration,
    ) -> Result<QueuedRun, FlowError> {
        let signal = self.notifications(crate::backend::Channel::Done);
        loop {
            let woken = signal.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.queued_run(workflow, key).await? {
                Some(run) if run.status.is_finished() => return Ok(run),
                Some(_) => {}
                None => {
                    return Err(FlowError::InvalidConfig {
                        agent: workflow.to_owned(),
                        message: format!(
                            "no run `{key}` of `{workflow}` was submitted to {}; submit it first",
                            self.describe()
                        ),
                    });
                }
            }
            let _ = tokio::time::timeout(poll, woken).await;
        }
    }
}
