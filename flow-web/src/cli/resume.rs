//! The commands that need a workflow's code (a [`Registry`]): `graph`, and `runs resume`,
//! which continues a run here and shows its states as they run.

use std::io::Write;
use std::sync::Arc;

use flow_core::{AgentStatus, FlowError};
use flow_runtime::{Agent, CheckpointStore, EventKind};

use super::runs::{find, millis};
use super::table::printable;
use super::{Failure, GraphFormat, status_name};
use crate::Registry;

/// The registered workflow `name`, or an error that says how to register it.
fn registered<'a>(registry: &'a Registry, name: &str) -> Result<&'a Agent, Failure> {
    registry.get(name).ok_or_else(|| {
        let known = registry.names();
        Failure::usage(if known.is_empty() {
            format!(
                "workflow `{name}` is not registered: this command needs the workflow's code; run it from your program with `fluffy_flow::cli::main_with(Registry::new().register(&workflow))`"
            )
        } else {
            format!(
                "workflow `{name}` is not registered here (registered: {})",
                known.join(", ")
            )
        })
    })
}

/// `graph WORKFLOW --format …`.
pub(crate) fn graph(
    registry: &Registry,
    workflow: &str,
    format: GraphFormat,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let agent = registered(registry, workflow)?;
    let graph = agent.graph().map_err(Failure::from)?;
    let text = match format {
        GraphFormat::Mermaid => crate::graph::mermaid(&graph),
        GraphFormat::Dot => crate::graph::dot(&graph),
        GraphFormat::Svg => crate::graph::svg(&graph, &Default::default()) + "\n",
    };
    write!(out, "{text}").map_err(Failure::io)
}

/// What `runs resume` was given.
pub(crate) struct ResumeRequest<'a> {
    pub(crate) key: &'a str,
    pub(crate) workflow: Option<&'a str>,
    /// Resume a run whose checkpoint says it is running.
    pub(crate) force: bool,
}

/// `runs resume KEY`: the run continued here from its latest checkpoint (also when it was
/// cancelled), a line per step.
pub(crate) fn resume(
    store: Arc<dyn CheckpointStore>,
    registry: &Registry,
    request: ResumeRequest<'_>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let (run, latest) = find(store.as_ref(), request.key, request.workflow)?;
    let agent = registered(registry, &run.workflow)?.clone();
    // A run whose latest checkpoint says it runs may be running in another process (or that
    // process died): running it here too would run its states twice.
    if latest.status == AgentStatus::Running && !request.force {
        return Err(Failure::usage(format!(
            "run `{}` was running when its latest checkpoint was taken ({}): it may still run in another process; resume it there, or add --force if that process is gone",
            run.run_key,
            super::time(latest.created_at)
        )));
    }
    // A run of a store's queue (PostgreSQL's) goes back to it, for a worker.
    if flow_runtime::requeue_resumed(store.as_ref(), &run.workflow, &run.run_key)
        .map_err(Failure::from)?
    {
        let line = format!(
            "queued run `{}` ({}) again: a worker continues it from its latest checkpoint",
            run.run_key, run.workflow
        );
        return writeln!(out, "{}", printable(&line)).map_err(Failure::io);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| Failure::failed(format!("starting a runtime: {error}")))?;
    let run_key = run.run_key.clone();
    // A line that cannot be written (a closed pipe) stops the printing, not the run: it
    // is said once the run has ended.
    let mut unwritten: Option<Failure> = None;
    let mut show = |out: &mut dyn Write, event: &EventKind| {
        if unwritten.is_none()
            && let Err(failure) = progress(out, event)
        {
            unwritten = Some(failure);
        }
    };
    let outcome = runtime.block_on(async {
        // Subscribed before the run starts: no step is missed.
        let mut events = agent.subscribe();
        let running = {
            let (agent, store, key) = (agent.clone(), Arc::clone(&store), run_key.clone());
            tokio::spawn(async move { agent.resume_durable(store, &key).await })
        };
        tokio::pin!(running);
        let mut listening = true;
        loop {
            tokio::select! {
                biased;
                event = events.next(), if listening => match event {
                    Some(Ok(event)) => show(out, &event.kind),
                    // (Missed events under load: the run goes on; the end is still shown.)
                    Some(Err(_)) => {}
                    None => listening = false,
                },
                ended = &mut running => {
                    // The events of the run's last steps, sent before it ended.
                    while let Some(event) = events.try_recv() {
                        if let Ok(event) = event {
                            show(out, &event.kind);
                        }
                    }
                    return ended.map_err(|error| Failure::failed(format!("the run's task stopped: {error}")));
                }
            }
        }
    })?;
    if let Some(failure) = unwritten {
        return Err(failure);
    }
    match outcome {
        Ok(report) => {
            let line = format!(
                "run `{run_key}` ({}): {} in {}",
                run.workflow,
                status_name(report.status),
                millis(report.duration.as_millis())
            );
            writeln!(out, "{}", printable(&line)).map_err(Failure::io)?;
            // What it waits for (asked again as it continued, or answered at once from the
            // answers left for it: only the report knows which).
            for record in &report.inputs {
                if matches!(record.outcome, flow_runtime::InputOutcome::Pending) {
                    let id = &record.request.id;
                    let line = format!(
                        "? {} asks: {} (answer: fluffy inputs answer {run_key} {id} VALUE)",
                        id.state, record.request.prompt
                    );
                    writeln!(out, "{}", printable(&line)).map_err(Failure::io)?;
                }
            }
            match report.status {
                AgentStatus::Completed | AgentStatus::AwaitingInput => Ok(()),
                other => Err(Failure::failed(format!(
                    "run `{run_key}` ended {}",
                    status_name(other)
                ))),
            }
        }
        Err(error @ FlowError::StateFailed { .. })
        | Err(error @ FlowError::StatePanicked { .. }) => {
            Err(Failure::failed(format!("run `{run_key}` failed: {error}")))
        }
        Err(error) => Err(Failure::from(error)),
    }
}

/// One line for a step of the run.
fn progress(out: &mut dyn Write, event: &EventKind) -> Result<(), Failure> {
    let line = match event {
        EventKind::StateStarted { state, attempt, .. } if *attempt > 1 => {
            format!("▶ {state} (attempt {attempt})")
        }
        EventKind::StateStarted { state, .. } => format!("▶ {state}"),
        EventKind::StateCompleted { state, duration } => {
            format!("✓ {state} {}", millis(duration.as_millis()))
        }
        EventKind::StateRetrying {
            state,
            attempt,
            delay,
            error,
        } => format!(
            "↻ {state}: {error}; attempt {attempt} in {}",
            millis(delay.as_millis())
        ),
        EventKind::StateFailed { state, error, .. } => format!("✗ {state}: {error}"),
        _ => return Ok(()),
    };
    writeln!(out, "{}", printable(&line)).map_err(Failure::io)?;
    out.flush().map_err(Failure::io)
}
