//! Recording runs' ends, in batches (see `batch`).

use super::batch::{Batcher, among};
use crate::PgBackend;

/// A run's end, to record under its lease.
pub(super) struct End {
    pub(super) id: i64,
    pub(super) fence: i64,
    pub(super) status: &'static str,
    /// The final context (JSON).
    pub(super) result: Option<Vec<u8>>,
    pub(super) error: Option<String>,
}

/// Where a worker's runs send their ends: each is answered with whether it was recorded
/// (false: the lease had passed on, or the database could not be reached).
pub(super) type Ends = Batcher<End, bool>;

/// Starts recording ends on `backend`.
pub(super) fn start(backend: &PgBackend) -> Ends {
    let backend_ = backend.clone();
    Batcher::start(backend, move |batch: Vec<End>| {
        let backend = backend_.clone();
        async move {
            let n = batch.len();
            let mut ids = Vec::with_capacity(n);
            let mut fences = Vec::with_capacity(n);
            let mut statuses = Vec::with_capacity(n);
            let mut results = Vec::with_capacity(n);
            let mut errors = Vec::with_capacity(n);
            for end in batch {
                ids.push(end.id);
                fences.push(end.fence);
                statuses.push(end.status);
                results.push(end.result);
                errors.push(end.error);
            }
            let asked = ids.clone();
            let recorded = backend
                .query("recording runs' ends", move |c| async move {
                    c.client
                        .query(
                            &c.sql.complete,
                            &[&ids, &fences, &statuses, &results, &errors],
                        )
                        .await
                })
                .await;
            match recorded {
                Ok(rows) => among(&asked, &rows),
                Err(error) => {
                    tracing::warn!(%error, "recording runs' ends failed");
                    vec![false; n]
                }
            }
        }
    })
}
