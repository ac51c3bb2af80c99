//! Automatic checkpoints: a task that serializes and saves what the coordinator captured, so
//! that neither serialization nor the store's I/O happens on the scheduler.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flow_core::FlowError;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;

use super::{Checkpoint, CheckpointPolicy, CheckpointStore};
use crate::scheduler::{Message, PendingCheckpoint};

/// The coordinator's end of the writer task.
pub(crate) struct Writer {
    jobs: UnboundedSender<PendingCheckpoint>,
    task: JoinHandle<()>,
    /// A save is in progress.
    pub(crate) busy: bool,
    /// Another checkpoint was asked for while busy: one is taken when the save ends.
    pub(crate) dirty: bool,
}

impl Writer {
    /// Starts the task; it reports each save to the coordinator as [`Message::CheckpointSaved`].
    pub(crate) fn start(
        store: Arc<dyn CheckpointStore>,
        policy: CheckpointPolicy,
        saved: Arc<AtomicU64>,
        coordinator: UnboundedSender<Message>,
    ) -> Self {
        let (jobs, mut queue) = unbounded_channel::<PendingCheckpoint>();
        let task = tokio::spawn(async move {
            while let Some(pending) = queue.recv().await {
                let result = save(Arc::clone(&store), pending, policy, Arc::clone(&saved)).await;
                let _ = coordinator.send(Message::CheckpointSaved(result.err()));
            }
        });
        Self {
            jobs,
            task,
            busy: false,
            dirty: false,
        }
    }

    /// Hands a captured checkpoint to the task.
    pub(crate) fn submit(&mut self, pending: PendingCheckpoint) {
        self.busy = true;
        let _ = self.jobs.send(pending);
    }

    /// Waits for the save in progress, if any, and stops the task.
    pub(crate) async fn close(self) {
        drop(self.jobs);
        let _ = self.task.await;
    }
}

/// `saved` before a run knows the highest checkpoint number its store holds.
pub(crate) const UNKNOWN: u64 = u64::MAX;

/// Serializes and saves one checkpoint on a blocking thread, then prunes old ones (by
/// count and by age, as `policy` says).
///
/// `saved` is the highest sequence number of the run's checkpoints: the store's when the
/// run started (0: none), or [`UNKNOWN`], then the highest this run saved. Unknown, the
/// first save asks the store for the run's highest: a run restored from an older
/// checkpoint, or one whose key was used before, numbers its checkpoints above everything
/// kept, so that `latest` is its newest and pruning never removes it. (A durable run that
/// read the store's latest as it started knows it, and asks nothing.)
pub(crate) async fn save(
    store: Arc<dyn CheckpointStore>,
    pending: PendingCheckpoint,
    policy: CheckpointPolicy,
    saved: Arc<AtomicU64>,
) -> Result<Checkpoint, FlowError> {
    let joined = tokio::task::spawn_blocking(move || {
        let mut checkpoint = pending.finish()?;
        let mut highest = saved.load(Ordering::Acquire);
        if highest == UNKNOWN {
            highest = store
                .sequences(&checkpoint.agent, &checkpoint.run_key)?
                .last()
                .copied()
                .unwrap_or(0);
        }
        if checkpoint.sequence <= highest {
            checkpoint.sequence = highest.saturating_add(1);
        }
        store.save_pruned(&checkpoint, policy.keep)?;
        saved.store(checkpoint.sequence, Ordering::Release);
        let (agent, run) = (&checkpoint.agent, &checkpoint.run_key);
        if let Some(max_age) = policy.max_age {
            store.prune_older_than(agent, run, max_age, std::time::SystemTime::now())?;
        }
        Ok(checkpoint)
    })
    .await;
    joined.unwrap_or_else(|error| {
        Err(FlowError::CheckpointStore {
            store: "checkpoint writer".into(),
            action: "saving a checkpoint".into(),
            message: format!("the save task stopped: {error}"),
        })
    })
}
