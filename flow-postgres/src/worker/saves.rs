//! Saving leased runs' checkpoints, in batches (see `batch`): the write a durable run makes
//! after each of its steps, and so the one a busy worker makes most.

use std::time::SystemTime;

use flow_core::FlowError;

use super::batch::{Batcher, among};
use crate::PgBackend;

/// One checkpoint to save under its run's lease.
pub(super) struct Save {
    pub(super) workflow: String,
    pub(super) key: String,
    pub(super) sequence: i64,
    pub(super) created: SystemTime,
    /// The checkpoint's JSON.
    pub(super) body: Vec<u8>,
    /// How many of the run's checkpoints to keep (0: all).
    pub(super) keep: i64,
    /// The lease: the run's id and fencing token.
    pub(super) id: i64,
    pub(super) fence: i64,
}

/// Where a worker's runs send their saves: each is answered with whether the lease was
/// held (and so the checkpoint saved), or the database's error.
pub(super) type Saves = Batcher<Save, Result<bool, FlowError>>;

/// Starts saving checkpoints on `backend`.
pub(super) fn start(backend: &PgBackend) -> Saves {
    let backend_ = backend.clone();
    Batcher::start(backend, move |batch: Vec<Save>| {
        let backend = backend_.clone();
        async move {
            if batch.len() == 1 {
                return vec![save_all(&backend, batch).await.map(first)];
            }
            // One statement for the lot; if it fails, each again on its own, so that one
            // save the database refuses fails only its own run.
            let singles: Vec<Save> = batch.iter().map(Save::copy).collect();
            match save_all(&backend, batch).await {
                Ok(held) => held.into_iter().map(Ok).collect(),
                Err(error) => {
                    tracing::debug!(%error, "a batch of checkpoint saves failed; saving each alone");
                    let mut outcomes = Vec::with_capacity(singles.len());
                    for save in singles {
                        outcomes.push(save_all(&backend, vec![save]).await.map(first));
                    }
                    outcomes
                }
            }
        }
    })
}

/// The outcome of a batch of one.
fn first(held: Vec<bool>) -> bool {
    held.first().copied().unwrap_or(false)
}

impl Save {
    fn copy(&self) -> Self {
        Self {
            workflow: self.workflow.clone(),
            key: self.key.clone(),
            sequence: self.sequence,
            created: self.created,
            body: self.body.clone(),
            keep: self.keep,
            id: self.id,
            fence: self.fence,
        }
    }
}

/// Saves `batch` in one statement; for each save, whether its lease was held.
pub(super) async fn save_all(
    backend: &PgBackend,
    batch: Vec<Save>,
) -> Result<Vec<bool>, FlowError> {
    let n = batch.len();
    let mut workflows = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut sequences = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    let mut bodies = Vec::with_capacity(n);
    let mut keeps = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut fences = Vec::with_capacity(n);
    for save in batch {
        workflows.push(save.workflow);
        keys.push(save.key);
        sequences.push(save.sequence);
        times.push(save.created);
        bodies.push(save.body);
        keeps.push(save.keep);
        ids.push(save.id);
        fences.push(save.fence);
    }
    let asked = ids.clone();
    let rows = backend
        .query("saving a checkpoint", move |c| async move {
            c.client
                .query(
                    &c.sql.fenced_saves,
                    &[
                        &workflows, &keys, &sequences, &times, &bodies, &keeps, &ids, &fences,
                    ],
                )
                .await
        })
        .await?;
    Ok(among(&asked, &rows))
}
