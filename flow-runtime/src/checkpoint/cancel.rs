//! Cancelling a durable run by its key, from wherever its store can be opened: the command
//! line (`fluffy runs cancel`), the dashboard's button, another part of a service.
//!
//! A cancelled run stays cancelled: its last checkpoint says `Cancelled` with a
//! [`CancelRecord`] (who, why, when), and `run_durable` returns that report instead of going
//! on. Only [`crate::Agent::resume_durable`] continues it. (A run cancelled through its handle
//! or by dropping its future, a process shutting down, keeps no record: run again, it goes
//! on.)

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use flow_core::{AgentStatus, FlowError};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{AttemptOutcome, CheckpointStore};

/// Who cancelled a durable run, why and when: kept in its last checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRecord {
    /// Who asked (a person, a program).
    pub by: String,
    /// Why (may be empty).
    pub reason: String,
    /// When it was asked, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl CancelRecord {
    /// A request made now.
    pub fn new(by: impl Into<String>, reason: impl Into<String>) -> Self {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        Self {
            by: by.into(),
            reason: reason.into(),
            at_ms,
        }
    }
}

/// What [`CheckpointStore::cancel_run`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelOutcome {
    /// The run runs in this process: it was told to stop, and writes its last checkpoint
    /// (`Cancelled`, with the record) as it stops.
    Stopping,
    /// The run was not running (waiting for answers, failed, stopped): its latest checkpoint,
    /// `sequence`, now says cancelled.
    Cancelled {
        /// The checkpoint written.
        sequence: u64,
    },
    /// It had been cancelled before: the record kept then.
    AlreadyCancelled(CancelRecord),
    /// Another process holds the run (a PostgreSQL worker, by its name): it was asked through
    /// the store ([`CheckpointStore::ask_holder_to_cancel`]), stops it, and its last checkpoint
    /// then says cancelled, with the record.
    Requested {
        /// Who holds the run.
        holder: String,
    },
}

/// What a cancel request reaches of a durable run that runs in this process.
pub(crate) struct CancelSlot {
    token: CancellationToken,
    request: OnceLock<CancelRecord>,
}

/// A durable run: its store (as [`CheckpointStore::describe`] names it: the same key in two
/// stores is two runs), workflow and key.
type RunName = (String, String, String);

/// The runs listed under each name (one, unless a program runs one key twice at once).
type Listing = HashMap<RunName, Vec<Weak<CancelSlot>>>;

/// The durable runs of this process. Written once when a run starts and once when it ends,
/// never per event.
static LISTED: LazyLock<Mutex<Listing>> = LazyLock::new(Mutex::default);

fn listing() -> std::sync::MutexGuard<'static, Listing> {
    LISTED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps a durable run reachable by [`CheckpointStore::cancel_run`] in this process while it
/// is held: from before `run_durable` reads the run's latest checkpoint (so that a request
/// made while it starts reaches it) to the end of its coordinator.
pub(crate) struct ListedRun {
    key: RunName,
    slot: Arc<CancelSlot>,
}

impl ListedRun {
    /// Lists the run `run` of `workflow` in `store`, stopped through `token` (the run's), or
    /// through a token of its own that the run is then given (see [`Self::token`]).
    pub(crate) fn register(
        store: &dyn CheckpointStore,
        workflow: &str,
        run: &str,
        token: Option<CancellationToken>,
    ) -> Self {
        let slot = Arc::new(CancelSlot {
            token: token.unwrap_or_default(),
            request: OnceLock::new(),
        });
        let key = (store.describe(), workflow.to_owned(), run.to_owned());
        let mut listing = listing();
        let listed = listing.entry(key.clone()).or_default();
        listed.retain(|slot| slot.strong_count() > 0);
        listed.push(Arc::downgrade(&slot));
        drop(listing);
        Self { key, slot }
    }

    /// What stops the run: a request cancels it.
    pub(crate) fn token(&self) -> CancellationToken {
        self.slot.token.clone()
    }

    /// The request that cancelled the run, if one did.
    pub(crate) fn request(&self) -> Option<&CancelRecord> {
        self.slot.request.get()
    }
}

impl Drop for ListedRun {
    fn drop(&mut self) {
        let mut listing = listing();
        if let Some(listed) = listing.get_mut(&self.key) {
            // Only its own listing: another run of the same key may be listed too.
            listed.retain(|slot| {
                slot.strong_count() > 0 && !std::ptr::eq(slot.as_ptr(), Arc::as_ptr(&self.slot))
            });
            if listed.is_empty() {
                listing.remove(&self.key);
            }
        }
    }
}

/// Whether the durable run `run` of `workflow` in `store` runs in this process now (started by
/// `run_durable`, `resume_durable` or a worker, not yet ended): what a dashboard asks before it
/// continues a run, so that one run never goes on twice side by side.
pub fn runs_in_this_process(store: &dyn CheckpointStore, workflow: &str, run: &str) -> bool {
    listing()
        .get(&(store.describe(), workflow.to_owned(), run.to_owned()))
        .is_some_and(|listed| listed.iter().any(|slot| slot.strong_count() > 0))
}

/// Stops the durable run `run` of `workflow` in `store` if it runs in this process, keeping
/// `record` for its last checkpoint; whether it did. What [`CheckpointStore::cancel_run`] does
/// first, and what a worker does when asked through its store.
pub fn cancel_in_this_process(
    store: &dyn CheckpointStore,
    workflow: &str,
    run: &str,
    record: &CancelRecord,
) -> bool {
    stop_live(&store.describe(), workflow, run, record)
}

/// Stops the runs `run` of `workflow` in the store `store` names that run in this process;
/// whether there was one.
fn stop_live(store: &str, workflow: &str, run: &str, record: &CancelRecord) -> bool {
    let slots: Vec<Arc<CancelSlot>> = listing()
        .get(&(store.to_owned(), workflow.to_owned(), run.to_owned()))
        .map(|listed| listed.iter().filter_map(Weak::upgrade).collect())
        .unwrap_or_default();
    for slot in &slots {
        // The first request is the one kept.
        let _ = slot.request.set(record.clone());
        slot.token.cancel();
    }
    !slots.is_empty()
}

/// [`CheckpointStore::cancel_run`].
pub(crate) fn cancel_run<S: CheckpointStore + ?Sized>(
    store: &S,
    agent: &str,
    run: &str,
    record: CancelRecord,
    force: bool,
) -> Result<CancelOutcome, FlowError> {
    let name = store.describe();
    if stop_live(&name, agent, run, &record) {
        return Ok(CancelOutcome::Stopping);
    }
    if let Some(holder) = store.ask_holder_to_cancel(agent, run, &record)? {
        return Ok(CancelOutcome::Requested { holder });
    }
    let refused = |reason: String| FlowError::CancelRefused {
        agent: agent.to_owned(),
        run: run.to_owned(),
        reason,
    };
    let mut checkpoint = super::store::latest_kept(store, agent, run)?;
    match checkpoint.status {
        AgentStatus::Completed | AgentStatus::CompletedWithFailures => {
            return Err(refused(format!(
                "it has completed (checkpoint {}); there is nothing left to stop",
                checkpoint.sequence
            )));
        }
        _ if checkpoint.cancelled.is_some() => {
            let previous = checkpoint.cancelled.take().unwrap_or(record);
            return Ok(CancelOutcome::AlreadyCancelled(previous));
        }
        AgentStatus::Running | AgentStatus::Paused | AgentStatus::Idle if !force => {
            return Err(refused(format!(
                "its latest checkpoint ({}) says it is running, and it does not run in this process: it may run in another one, which cannot be reached through {} (stop it there), or that process may have died; once it is gone, cancel with force (`fluffy runs cancel --force`)",
                checkpoint.sequence, name
            )));
        }
        _ => {}
    }
    let now_ms = record.at_ms;
    checkpoint.status = AgentStatus::Cancelled;
    checkpoint.cancelled = Some(record.clone());
    for attempt in &mut checkpoint.attempts {
        if attempt.outcome == AttemptOutcome::Running {
            attempt.outcome = AttemptOutcome::Cancelled;
            attempt.ended_at_ms = Some(now_ms.max(attempt.started_at_ms));
        }
    }
    checkpoint.sequence = checkpoint.sequence.saturating_add(1);
    checkpoint.created_at = SystemTime::now();
    store.save(&checkpoint)?;
    // A run of this key started here while the checkpoint was written would write over it:
    // it is stopped too.
    stop_live(&name, agent, run, &record);
    Ok(CancelOutcome::Cancelled {
        sequence: checkpoint.sequence,
    })
}

/// Resumes the durable run `run` through the run queue its store keeps, if it keeps one for it
/// (PostgreSQL's: [`CheckpointStore::requeue`]): its cancel record, if any, is dropped first (a
/// checkpoint after its latest, the same but for the record), so that the worker that claims
/// it continues it. `false`: the store has no queue for it; continue it yourself with
/// [`crate::Agent::resume_durable`] (what the command line and the dashboard then do).
pub fn requeue_resumed(
    store: &dyn CheckpointStore,
    workflow: &str,
    run: &str,
) -> Result<bool, FlowError> {
    let mut latest = super::store::latest_kept(store, workflow, run)?;
    if latest.cancelled.take().is_some() {
        latest.sequence = latest.sequence.saturating_add(1);
        latest.created_at = SystemTime::now();
        store.save(&latest)?;
    }
    store.requeue(workflow, run)
}
