//! Writes that many runs of a worker make at about the same time (their ends, their
//! checkpoints), gathered into one statement: what is ready while a statement is in flight
//! goes together in the next one, so a busy worker makes one round trip and one commit for
//! many runs where each would make its own, and an idle one waits for nobody.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use crate::PgBackend;

/// For each run id of a batch (`asked`), whether the batch statement returned it in its
/// first column (the statements return the runs whose lease was still held).
pub(super) fn among(asked: &[i64], returned: &[tokio_postgres::Row]) -> Vec<bool> {
    let returned: std::collections::HashSet<i64> =
        returned.iter().map(|row| row.get::<_, i64>(0)).collect();
    asked.iter().map(|id| returned.contains(id)).collect()
}

/// At most this many writes in one statement.
const MAX_BATCH: usize = 256;

/// Where a caller waits for its write's outcome.
enum Reply<R> {
    Async(oneshot::Sender<R>),
    Blocking(std::sync::mpsc::SyncSender<R>),
}

impl<R> Reply<R> {
    fn send(self, outcome: R) {
        let _ = match self {
            Reply::Async(sender) => sender.send(outcome).map_err(drop),
            Reply::Blocking(sender) => sender.send(outcome).map_err(drop),
        };
    }
}

/// Gathers writes of type `T`, each answered with an `R`.
pub(super) struct Batcher<T, R> {
    sender: mpsc::UnboundedSender<(T, Reply<R>)>,
    /// The task that writes them (stopped when the last handle goes).
    task: std::sync::Arc<AbortOnDrop>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
            task: std::sync::Arc::clone(&self.task),
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Writes batches with `write` (one outcome per write, in order) on `backend`'s runtime.
    pub(super) fn start<F, Fut>(backend: &PgBackend, write: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<R>> + Send,
    {
        let (sender, mut receiver) = mpsc::unbounded_channel::<(T, Reply<R>)>();
        let task = backend.spawn(async move {
            while let Some(first) = receiver.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match receiver.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let (items, replies): (Vec<T>, Vec<Reply<R>>) = batch.into_iter().unzip();
                for (reply, outcome) in replies.into_iter().zip(write(items).await) {
                    reply.send(outcome);
                }
            }
        });
        Self {
            sender,
            task: std::sync::Arc::new(AbortOnDrop(task)),
        }
    }

    /// Writes `item` with the next batch; `None` if the batcher has stopped.
    pub(super) async fn write(&self, item: T) -> Option<R> {
        let (sender, receiver) = oneshot::channel();
        self.sender.send((item, Reply::Async(sender))).ok()?;
        receiver.await.ok()
    }

    /// [`Batcher::write`], blocking this thread (which must not be one of the backend's).
    pub(super) fn write_blocking(&self, item: T) -> Option<R> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        self.sender.send((item, Reply::Blocking(sender))).ok()?;
        receiver.recv().ok()
    }
}
