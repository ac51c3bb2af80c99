//! `fluffy runs cancel`: a run stopped for good (through `CheckpointStore::cancel_run`), who
//! and why kept in its last checkpoint; `runs resume` continues it.

use std::io::Write;

use flow_core::FlowError;
use flow_runtime::{CancelOutcome, CancelRecord, CheckpointStore};
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
}

#[derive(Serialize)]
struct Cancelled<'a> {
    workflow: &'a str,
    key: &'a str,
    /// `stopping`, `cancelled` or `already_cancelled`.
    outcome: &'static str,
    /// The checkpoint written (`cancelled`).
    checkpoint: Option<u64>,
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
    let (name, checkpoint, kept) = match &outcome {
        CancelOutcome::Stopping => ("stopping", None, &record),
        CancelOutcome::Cancelled { sequence } => ("cancelled", Some(*sequence), &record),
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
            "cancelled run `{}` ({}) by {}{why}: checkpoint {}; `fluffy runs resume {}` continues it",
            run.run_key,
            run.workflow,
            kept.by,
            checkpoint.unwrap_or_default(),
            run.run_key
        ),
    };
    output.say(out, &line)
}
