//! Run and state metrics through the `metrics` facade (feature `metrics`): counters, gauges
//! and histograms for whichever recorder the program installed (Prometheus with
//! `metrics-exporter-prometheus`, StatsD, ...). Labels are the workflow, the state, and an
//! outcome or failure kind: never the run id, so a scrape stays small however many runs go by.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use flow_core::{AgentStatus, FlowError, FxHashMap};
use metrics::{counter, gauge, histogram};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::agent::Agent;
use crate::events::{Event, EventKind, EventStreamError};

/// Sends the runs' metrics of the agents it is attached to through the `metrics` facade, as
/// they happen:
///
/// | metric | kind | labels |
/// |---|---|---|
/// | `fluffy_flow_runs_started_total` | counter | workflow |
/// | `fluffy_flow_runs_total` | counter | workflow, outcome (`completed`, `failed`, `cancelled`, `awaiting_input`) |
/// | `fluffy_flow_run_duration_seconds` | histogram | workflow |
/// | `fluffy_flow_states_running` | gauge | workflow |
/// | `fluffy_flow_state_attempts_total` | counter | workflow, state, outcome (`completed`, `retried`, `failed`, `cancelled`) |
/// | `fluffy_flow_state_failures_total` | counter | workflow, state, kind (a `FailureKind`) |
/// | `fluffy_flow_state_duration_seconds` | histogram | workflow, state |
/// | `fluffy_flow_state_queue_wait_seconds` | histogram | workflow, state |
/// | `fluffy_flow_input_requests_total` | counter | workflow, state, outcome (`requested`, `answered`, `refused`, `timed_out`, `withdrawn`) |
/// | `fluffy_flow_events_missed_total` | counter | workflow |
///
/// `retried` counts attempts that failed and were tried again, apart from `failed` (final
/// failures). Clones share one exporter; dropping the last stops it.
#[derive(Clone, Default)]
pub struct MetricsExporter {
    readers: Arc<Readers>,
}

#[derive(Default)]
struct Readers(Mutex<Vec<AbortHandle>>);

impl Drop for Readers {
    fn drop(&mut self) {
        for reader in self
            .0
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            reader.abort();
        }
    }
}

impl MetricsExporter {
    /// An exporter attached to no agent yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Exports the metrics of every run `agent` (or a clone) starts from now on. Needs a
    /// tokio runtime.
    pub fn attach(&self, agent: &Agent) -> Result<(), FlowError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| FlowError::NoRuntime {
            agent: agent.name().to_owned(),
        })?;
        let workflow = agent.name().to_owned();
        let mut events = agent.subscribe();
        let reader = runtime.spawn(async move {
            let mut ready = Ready::default();
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => export(&workflow, &event, &mut ready),
                    Err(EventStreamError::Lagged(missed)) => {
                        counter!("fluffy_flow_events_missed_total", "workflow" => workflow.clone())
                            .increment(missed);
                    }
                    Err(EventStreamError::Closed) => break,
                }
            }
        });
        self.readers
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(reader.abort_handle());
        Ok(())
    }
}

/// When each state of each run became ready, to pair with its start.
#[derive(Default)]
struct Ready(FxHashMap<(u64, Arc<str>), VecDeque<Instant>>);

fn export(workflow: &str, event: &Event, ready: &mut Ready) {
    let w = workflow.to_owned();
    let attempt = |state: &Arc<str>, outcome: &'static str| {
        counter!("fluffy_flow_state_attempts_total", "workflow" => w.clone(), "state" => state.to_string(), "outcome" => outcome)
            .increment(1);
    };
    let running = || gauge!("fluffy_flow_states_running", "workflow" => w.clone());
    let input = |state: &Arc<str>, outcome: &'static str| {
        counter!("fluffy_flow_input_requests_total", "workflow" => w.clone(), "state" => state.to_string(), "outcome" => outcome)
            .increment(1);
    };
    match &event.kind {
        EventKind::RunStarted { .. } => {
            counter!("fluffy_flow_runs_started_total", "workflow" => w.clone()).increment(1);
        }
        EventKind::RunFinished { status, duration } => {
            let outcome = match status {
                AgentStatus::Completed => "completed",
                AgentStatus::CompletedWithFailures => "completed_with_failures",
                AgentStatus::Cancelled => "cancelled",
                AgentStatus::AwaitingInput => "awaiting_input",
                _ => "failed",
            };
            counter!("fluffy_flow_runs_total", "workflow" => w.clone(), "outcome" => outcome)
                .increment(1);
            histogram!("fluffy_flow_run_duration_seconds", "workflow" => w.clone())
                .record(duration.as_secs_f64());
            ready.0.retain(|(run, _), _| *run != event.run_id);
        }
        EventKind::StateReady { state } => {
            ready
                .0
                .entry((event.run_id, Arc::clone(state)))
                .or_default()
                .push_back(event.at);
        }
        EventKind::StateStarted { state, .. } => {
            running().increment(1.0);
            if let Some(at) = ready
                .0
                .get_mut(&(event.run_id, Arc::clone(state)))
                .and_then(VecDeque::pop_front)
            {
                histogram!("fluffy_flow_state_queue_wait_seconds", "workflow" => w.clone(), "state" => state.to_string())
                    .record(event.at.saturating_duration_since(at).as_secs_f64());
            }
        }
        EventKind::StateCompleted { state, duration } => {
            running().decrement(1.0);
            attempt(state, "completed");
            histogram!("fluffy_flow_state_duration_seconds", "workflow" => w.clone(), "state" => state.to_string())
                .record(duration.as_secs_f64());
        }
        EventKind::StateRetrying { state, .. } => {
            running().decrement(1.0);
            attempt(state, "retried");
        }
        EventKind::StateFailed { state, kind, .. } => {
            running().decrement(1.0);
            attempt(state, "failed");
            let kind = serde_json::to_value(kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{kind:?}"));
            counter!("fluffy_flow_state_failures_total", "workflow" => w.clone(), "state" => state.to_string(), "kind" => kind)
                .increment(1);
        }
        EventKind::StateCancelled { state } => {
            running().decrement(1.0);
            attempt(state, "cancelled");
        }
        EventKind::InputRequested { state, .. } => input(state, "requested"),
        EventKind::InputAnswered { state, .. } => input(state, "answered"),
        EventKind::InputRefused { state, .. } => input(state, "refused"),
        EventKind::InputTimedOut { state, .. } => input(state, "timed_out"),
        EventKind::InputWithdrawn { state, .. } => input(state, "withdrawn"),
        EventKind::StateBlocked { .. } | EventKind::RunPaused | EventKind::RunResumed => {}
    }
}
