//! Cancelling a durable run by its key, from wherever its store can be opened: the command
//! line (`fluffy runs cancel`), the dashboard's button, another part of a service.
//!
//! A cancelled run stays cancelled: its last checkpoint says `Cancelled` with a
//! [`CancelRecord`] (who, why, when), and `run_durable` returns that report instead of going
//! on. Only [`crate::Agent::resume_durable`] continues it. (A run cancelled through its handle
//! or by dropping its future, a process shutting down, keeps no record: run again, it goes
//! on.)

use std::time::SystemTime;

use super::live::stop_live;
use super::{AttemptOutcome, Checkpoint, CheckpointStore};
use flow_core::{AgentStatus, FlowError};
use serde::{Deserialize, Serialize};

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
        Self {
            by: by.into(),
            reason: reason.into(),
            at_ms: super::epoch_ms(SystemTime::now()),
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

/// [`FlowError::CancelRefused`] for a run whose `latest` checkpoint says it completed.
fn refuse_completed(latest: &Checkpoint) -> Result<(), FlowError> {
    if !latest.status.is_completed() {
        return Ok(());
    }
    Err(FlowError::CancelRefused {
        agent: latest.agent.clone(),
        run: latest.run_key.clone(),
        reason: format!(
            "it has completed (checkpoint {}); there is nothing left to stop",
            latest.sequence
        ),
    })
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
    // A completed run is refused first: one that saved its completed checkpoint is still
    // listed here for the moment it takes to end, and nothing is left to stop.
    if let Ok(Some(latest)) = store.latest(agent, run) {
        refuse_completed(&latest)?;
    }
    if stop_live(&name, agent, run, &record) {
        return Ok(CancelOutcome::Stopping);
    }
    if let Some(holder) = store.ask_holder_to_cancel(agent, run, &record)? {
        return Ok(CancelOutcome::Requested { holder });
    }
    cancel_checkpoint(store, agent, run, record, force)
}

/// The request made to the run's latest checkpoint, the run not running in this process (or
/// past its last checkpoint): saved again as cancelled, unless it completed or says it runs
/// (elsewhere, unless `force`).
pub(crate) fn cancel_checkpoint<S: CheckpointStore + ?Sized>(
    store: &S,
    agent: &str,
    run: &str,
    record: CancelRecord,
    force: bool,
) -> Result<CancelOutcome, FlowError> {
    let name = store.describe();
    let refused = |reason: String| FlowError::CancelRefused {
        agent: agent.to_owned(),
        run: run.to_owned(),
        reason,
    };
    let mut checkpoint = super::store::latest_kept(store, agent, run)?;
    refuse_completed(&checkpoint)?;
    match checkpoint.status {
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
