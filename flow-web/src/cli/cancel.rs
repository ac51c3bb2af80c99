//! `fluffy runs cancel`: a run stopped for good (through `CheckpointStore::cancel_run`), who
//! and why kept in its last checkpoint; `runs resume` continues it.

use std::io::Write;
use std::time::{Duration, Instant};

use flow_core::FlowError;
use flow_runtime::{CancelOutcome, CancelRecord, Checkpoint, CheckpointStore};
use serde::Serialize;

use super::runs::find;
use super::{Failure, Output};

/// What `runs cancel` was given.
pub(crate) struct CancelRequest<'a> {
    pub(crate) key: &'a str,
    pub(crate) workflow: Option<&'a str>,
    pub(crate) by: &'a str,
    pub(crate) reason: &'a str,
    /// Cancel a run whose checkpoint says it is running (its process is gone).
    pub(crate) force: bool,
    /// How long to wait for another process asked to stop the run.
    pub(crate) wait: Duration,
}

#[derive(Serialize)]
struct Cancelled<'a> {
    workflow: &'a str,
    key: &'a str,
    /// `stopping`, `cancelled` or `already_cancelled`.
    outcome: &'static str,
    /// The checkpoint written (`cancelled`).
    checkpoint: Option<u64>,
    /// The process that held the run and stopped it, when another one did.
    holder: Option<&'a str>,
    by: &'a str,
    reason: &'a str,
}

/// `runs cancel KEY`.
pub(crate) fn cancel(
    store: &dyn CheckpointStore,
    request: CancelRequest<'_>,
    output: Output,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let (run, _) = find(store, request.key, request.workflow)?;
    let record = CancelRecord::new(request.by, request.reason);
    let outcome = store
        .cancel_run(&run.workflow, &run.run_key, record.clone(), request.force)
        .map_err(|error| match error {
            FlowError::CancelRefused { .. } => Failure::refused(error.to_string()),
            error => Failure::from(error),
        })?;
    // Held by another process, which was asked through the store: waited for.
    let (outcome, holder) = match outcome {
        CancelOutcome::Requested { holder } => {
            if !output.json {
                output.say(
                    out,
                    &format!(
                        "asked {holder} to stop run `{}` ({}); waiting for its last checkpoint…",
                        run.run_key, run.workflow
                    ),
                )?;
                out.flush().map_err(Failure::io)?;
            }
            let stopped = stopped(store, &run.workflow, &run.run_key, &holder, request.wait)?;
            // (The record kept is the first request's, maybe another's than this one.)
            let kept = stopped.cancelled.unwrap_or_else(|| record.clone());
            (
                CancelOutcome::Cancelled {
                    sequence: stopped.sequence,
                },
                Some((holder, kept)),
            )
        }
        outcome => (outcome, None),
    };
    let (holder, stopped_with) = match holder {
        Some((holder, kept)) => (Some(holder), Some(kept)),
        None => (None, None),
    };
    let (name, checkpoint, kept) = match &outcome {
        CancelOutcome::Stopping => ("stopping", None, &record),
        CancelOutcome::Cancelled { sequence } => (
            "cancelled",
            Some(*sequence),
            stopped_with.as_ref().unwrap_or(&record),
        ),
        CancelOutcome::AlreadyCancelled(first) => ("already_cancelled", None, first),
        // (A kind added later is reported by name only.)
        _ => ("cancelled", None, &record),
    };
    if output.json {
        return output.json_to(
            out,
            &Cancelled {
                workflow: &run.workflow,
                key: &run.run_key,
                outcome: name,
                checkpoint,
                holder: holder.as_deref(),
                by: &kept.by,
                reason: &kept.reason,
            },
        );
    }
    let why = if kept.reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", kept.reason)
    };
    let line = match outcome {
        CancelOutcome::Stopping => format!(
            "run `{}` ({}) runs in this process: told to stop; its last checkpoint will say cancelled by {}{why}",
            run.run_key, run.workflow, kept.by
        ),
        CancelOutcome::AlreadyCancelled(_) => format!(
            "run `{}` ({}) was already {}",
            run.run_key,
            run.workflow,
            super::runs::cancelled_line(kept)
        ),
        _ => format!(
            "cancelled run `{}` ({}) by {}{why}{}: checkpoint {}; `fluffy runs resume {}` continues it",
            run.run_key,
            run.workflow,
            kept.by,
            holder
                .as_deref()
                .map(|holder| format!(", stopped by {holder}"))
                .unwrap_or_default(),
            checkpoint.unwrap_or_default(),
            run.run_key
        ),
    };
    output.say(out, &line)
}

/// Waits up to `wait` for the run's latest checkpoint to say it was cancelled on request (its
/// holder stopped it); that checkpoint. A run that completed first is refused.
fn stopped(
    store: &dyn CheckpointStore,
    workflow: &str,
    key: &str,
    holder: &str,
    wait: Duration,
) -> Result<Checkpoint, Failure> {
    let started = Instant::now();
    loop {
        if let Some(latest) = store.latest(workflow, key).map_err(Failure::from)? {
            if latest.cancelled.is_some() {
                return Ok(latest);
            }
            if latest.status.is_completed() {
                return Err(Failure::refused(format!(
                    "run `{key}` completed before {holder} could stop it (checkpoint {})",
                    latest.sequence
                )));
            }
        }
        if started.elapsed() >= wait {
            return Err(Failure::failed(format!(
                "{holder} was asked to stop run `{key}` but its checkpoints do not say so after {}; the request stays with the run (whoever holds it next stops it); see `fluffy runs show {key}`",
                humantime::format_duration(wait)
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
