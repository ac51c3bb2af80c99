//! `fluffy runs fork`: a new run that starts from one of another run's checkpoints (DBOS's
//! "fork from step N", through `CheckpointStore::fork_run`): the same context, states and
//! due work, under a key of its own, for `run_durable` (or a worker) to continue. The
//! original run is left as it was.

use std::io::Write;

use flow_core::FlowError;
use flow_runtime::CheckpointStore;
use serde::Serialize;

use super::runs::find;
use super::{Failure, Output};

/// What `runs fork` was given.
pub(crate) struct ForkRequest<'a> {
    pub(crate) key: &'a str,
    pub(crate) workflow: Option<&'a str>,
    /// The checkpoint to start from; `None`: the latest.
    pub(crate) from: Option<u64>,
    pub(crate) to: &'a str,
}

#[derive(Serialize)]
struct Forked<'a> {
    workflow: &'a str,
    from_key: &'a str,
    from_checkpoint: u64,
    key: &'a str,
}

pub(crate) fn fork(
    store: &dyn CheckpointStore,
    request: ForkRequest<'_>,
    output: Output,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let (run, latest) = find(store, request.key, request.workflow)?;
    if request.to == run.run_key {
        return Err(Failure::usage(format!(
            "the fork needs a key of its own, not `{}`",
            run.run_key
        )));
    }
    let from_checkpoint = request.from.unwrap_or(latest.sequence);
    store
        .fork_run(&run.workflow, &run.run_key, from_checkpoint, request.to)
        .map_err(|error| match error {
            FlowError::NoCheckpoint { .. } => {
                let kept = store
                    .sequences(&run.workflow, &run.run_key)
                    .map(|kept| {
                        kept.iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                Failure::not_found(format!(
                    "run `{}` has no checkpoint {from_checkpoint}; it keeps {kept}",
                    run.run_key
                ))
            }
            FlowError::InvalidConfig { message, .. } => Failure::usage(message),
            error => Failure::from(error),
        })?;
    if output.json {
        return output.json_to(
            out,
            &Forked {
                workflow: &run.workflow,
                from_key: &run.run_key,
                from_checkpoint,
                key: request.to,
            },
        );
    }
    output.say(
        out,
        &format!(
            "forked run `{}` ({}) at checkpoint {from_checkpoint} as `{}`: continue it with run_durable (or a worker) under that key",
            run.run_key, run.workflow, request.to
        ),
    )
}
