//! One claimed run: run durably under its lease, and its end recorded (or the run given
//! back, or failed without running when its workers kept dying).

use flow_core::{AgentStatus, FlowError};
use flow_runtime::{Agent, Context};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::Ended;
use super::ends::{End, Ends};
use super::fenced::FencedStore;
use super::saves::Saves;
use crate::{PgBackend, PgStore, QueueStatus};

/// A run just claimed.
pub(super) struct Claimed {
    pub(super) id: i64,
    pub(super) workflow: String,
    pub(super) key: String,
    pub(super) context: Vec<u8>,
    pub(super) fence: i64,
    /// This claim's number (1: the first).
    pub(super) claims: i32,
    /// How many times it was taken over from a worker whose lease lapsed.
    pub(super) lapses: i32,
}

/// How many claims a run gets before an error of the store ends it as failed: a database
/// that was briefly unreachable costs a claim, a store that keeps failing fails the run.
const MAX_CLAIMS: i32 = 5;

/// What running one claimed run needs of its worker.
pub(super) struct RunSite {
    pub(super) backend: PgBackend,
    pub(super) worker: String,
    pub(super) ends: Ends,
    pub(super) saves: Saves,
    /// See `Worker::max_lapses`.
    pub(super) max_lapses: u32,
}

/// Runs one claimed run to its end (or until `cancel`) and records the end under its lease.
pub(super) async fn execute(
    site: RunSite,
    agent: Agent,
    run: Claimed,
    cancel: CancellationToken,
) -> Ended {
    if run.lapses > i32::try_from(site.max_lapses).unwrap_or(i32::MAX) {
        let error = format!(
            "run `{}` of workflow `{}` was taken over {} times from a worker that stopped renewing its lease (it died or stalled: a crash, a kill, out of memory?), more than the worker's limit of {}; it is failed rather than run again: find what stopped those workers, then submit it again under a new key",
            run.key, run.workflow, run.lapses, site.max_lapses
        );
        return record(&site, &run, QueueStatus::Failed, None, Some(error)).await;
    }
    let store = FencedStore::new(
        PgStore::new(&site.backend),
        run.id,
        u64::try_from(run.fence).unwrap_or(0),
        &site.worker,
        &run.workflow,
        &run.key,
    )
    .batched(site.saves.clone());
    // A first claim has nothing stored yet: the run's first reads of its checkpoint and of
    // answers left for it need no round trip.
    let store = if run.claims == 1 {
        store.fresh()
    } else {
        store
    };
    let context = match serde_json::from_slice::<Map<String, Value>>(&run.context) {
        Ok(values) => Context::from_json(values),
        Err(e) => {
            let error = format!("its submitted context is not a JSON object: {e}");
            return record(&site, &run, QueueStatus::Failed, None, Some(error)).await;
        }
    };
    let outcome = tokio::select! {
        // (An outcome that is there wins over a stop that came with it.)
        biased;
        outcome = agent.run_durable_with(store, &run.key, context) => outcome,
        () = cancel.cancelled() => return Ended::Stopped,
    };
    let (status, context, error) = match outcome {
        Ok(report) => {
            let status = match report.status {
                AgentStatus::Completed => QueueStatus::Completed,
                AgentStatus::CompletedWithFailures => QueueStatus::CompletedWithFailures,
                AgentStatus::Cancelled => QueueStatus::Cancelled,
                AgentStatus::AwaitingInput => QueueStatus::AwaitingInput,
                _ => QueueStatus::Failed,
            };
            (status, report.context.snapshot().ok(), None)
        }
        Err(FlowError::LeaseLost { .. }) => return Ended::Lost,
        // Cancelled on request (asked through the database, or in this process), or found
        // so when claimed: its end, with who and why.
        Err(error @ FlowError::CancelledOnRequest { .. }) => {
            (QueueStatus::Cancelled, None, Some(error.to_string()))
        }
        // The database failed under the run (a restart, a dropped connection), not the
        // workflow: the run goes back to the queue and continues from its latest
        // checkpoint, up to `MAX_CLAIMS` claims.
        Err(FlowError::CheckpointStore { .. }) if run.claims < MAX_CLAIMS => {
            return give_back(&site.backend, &run).await;
        }
        Err(error) => (QueueStatus::Failed, None, Some(error.to_string())),
    };
    record(&site, &run, status, context, error).await
}

/// Gives `run` back to the queue under its lease.
async fn give_back(backend: &PgBackend, run: &Claimed) -> Ended {
    let (ids, fences) = (vec![run.id], vec![run.fence]);
    let released = backend
        .query("releasing a run", move |c| async move {
            c.client.query(&c.sql.release, &[&ids, &fences]).await
        })
        .await;
    match released {
        Ok(rows) if !rows.is_empty() => Ended::Released,
        // (Unreachable still: its lease lapses, and a worker claims it then.)
        Ok(_) | Err(_) => Ended::Lost,
    }
}

/// Records the end of `run` under its lease (with the ends of other runs ready together).
async fn record(
    site: &RunSite,
    run: &Claimed,
    status: QueueStatus,
    context: Option<Map<String, Value>>,
    error: Option<String>,
) -> Ended {
    let end = End {
        id: run.id,
        fence: run.fence,
        status: status.as_str(),
        result: context.and_then(|values| serde_json::to_vec(&values).ok()),
        error,
    };
    if site.ends.write(end).await.unwrap_or(false) {
        Ended::Recorded
    } else {
        // Refused (the lease passed on) or unreachable: the holder of the lease records it.
        Ended::Lost
    }
}
