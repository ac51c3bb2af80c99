//! Recording runs' ends in batches: the ends that are ready while a statement is in flight
//! go together in the next one (one commit for many runs, where each would take its own).

use tokio::sync::{mpsc, oneshot};

use crate::PgBackend;

/// At most this many ends in one statement.
const MAX_BATCH: usize = 256;

/// A run's end, to record under its lease.
pub(super) struct End {
    pub(super) id: i64,
    pub(super) fence: i64,
    pub(super) status: &'static str,
    /// The final context (JSON).
    pub(super) result: Option<Vec<u8>>,
    pub(super) error: Option<String>,
}

/// Where a worker's runs send their ends.
#[derive(Clone)]
pub(super) struct Ends {
    sender: mpsc::UnboundedSender<(End, oneshot::Sender<bool>)>,
}

/// Stops the recording task when the worker is done with it.
pub(super) struct Recorder(tokio::task::AbortHandle);

impl Drop for Recorder {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Ends {
    /// Starts recording ends on `backend`'s runtime.
    pub(super) fn start(backend: &PgBackend) -> (Self, Recorder) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let task = backend.spawn(record(backend.clone(), receiver));
        (Self { sender }, Recorder(task))
    }

    /// Records `end`; whether it was (false: the lease had passed on, or the database could
    /// not be reached).
    pub(super) async fn record(&self, end: End) -> bool {
        let (sender, receiver) = oneshot::channel();
        if self.sender.send((end, sender)).is_err() {
            return false;
        }
        receiver.await.unwrap_or(false)
    }
}

/// Takes the ends as they come, each batch in one statement.
async fn record(
    backend: PgBackend,
    mut ends: mpsc::UnboundedReceiver<(End, oneshot::Sender<bool>)>,
) {
    while let Some(first) = ends.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match ends.try_recv() {
                Ok(end) => batch.push(end),
                Err(_) => break,
            }
        }
        let mut ids = Vec::with_capacity(batch.len());
        let mut fences = Vec::with_capacity(batch.len());
        let mut statuses = Vec::with_capacity(batch.len());
        let mut results = Vec::with_capacity(batch.len());
        let mut errors = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for (end, reply) in batch {
            ids.push(end.id);
            fences.push(end.fence);
            statuses.push(end.status);
            results.push(end.result);
            errors.push(end.error);
            replies.push((end.id, reply));
        }
        let recorded = backend
            .query("recording runs' ends", move |c| async move {
                let rows = c
                    .client
                    .query(
                        &c.sql.complete,
                        &[&ids, &fences, &statuses, &results, &errors],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|row| row.get::<_, i64>(0))
                    .collect::<Vec<_>>())
            })
            .await;
        if let Err(error) = &recorded {
            tracing::warn!(%error, "recording runs' ends failed");
        }
        for (id, reply) in replies {
            let done = recorded.as_ref().is_ok_and(|ids| ids.contains(&id));
            let _ = reply.send(done);
        }
    }
}
