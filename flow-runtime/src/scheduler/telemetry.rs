//! The results written on the run's and each attempt's tracing span, named after
//! OpenTelemetry's CI/CD pipeline conventions (`cicd.pipeline.result`,
//! `cicd.pipeline.task.run.result`), and, with the `opentelemetry` feature, the spans'
//! OpenTelemetry status. A span nobody records costs a branch.

use flow_core::{AgentStatus, FlowError};
use tracing::Span;

use super::task::Outcome;

/// The span of one attempt of a state, a child of the run's span.
pub(super) fn attempt_span(
    run_key: &str,
    state: &str,
    (run, attempt, visit): (u32, u32, u32),
) -> Span {
    tracing::debug_span!(
        "state",
        cicd.pipeline.task.name = state,
        cicd.pipeline.task.run.id = %format_args!("{run_key}/{state}/{visit}/{attempt}"),
        // (As i64: OpenTelemetry's integers are signed; unsigned ones arrive as text.)
        fluffy_flow.state.run = i64::from(run),
        fluffy_flow.state.attempt = i64::from(attempt),
        cicd.pipeline.task.run.result = tracing::field::Empty,
    )
}

/// How an attempt ended, on its span: `success`, `failure` (an error), `error` (a panic),
/// `timeout`, `skip` (refused at admission: not called) or `cancellation`.
pub(super) fn attempt_ended(span: &Span, outcome: &Outcome) {
    if span.is_disabled() {
        return;
    }
    let (result, problem) = match outcome {
        Outcome::Finished(Ok(_)) => ("success", None),
        Outcome::Finished(Err(error)) => ("failure", Some(error.to_string())),
        Outcome::Panicked(message) => ("error", Some(format!("panicked: {message}"))),
        Outcome::TimedOut(limit) => ("timeout", Some(format!("timed out after {limit:?}"))),
        Outcome::Refused(error) => ("skip", Some(error.to_string())),
    };
    span.record("cicd.pipeline.task.run.result", result);
    status(span, problem);
}

/// An attempt stopped because its run stopped.
pub(super) fn attempt_cancelled(span: &Span) {
    if span.is_disabled() {
        return;
    }
    span.record("cicd.pipeline.task.run.result", "cancellation");
    status(span, Some("cancelled: the run stopped".to_owned()));
}

/// How the run ended, on its span: `success`, `failure`, `timeout` or `cancellation`
/// (`cicd.pipeline.result`), and its status (`fluffy_flow.run.status`, which also says
/// `awaiting_input` for a run that suspended).
pub(super) fn run_ended(span: &Span, status_now: AgentStatus, error: Option<&FlowError>) {
    if span.is_disabled() {
        return;
    }
    let result = match (status_now, error) {
        (AgentStatus::Completed, _) => Some("success"),
        // Some of its work failed: the CI/CD conventions have no partial success.
        (AgentStatus::CompletedWithFailures, _) => Some("failure"),
        (AgentStatus::Cancelled, _) => Some("cancellation"),
        (AgentStatus::Failed, Some(FlowError::RunTimedOut { .. })) => Some("timeout"),
        (AgentStatus::Failed, _) => Some("failure"),
        _ => None,
    };
    if let Some(result) = result {
        span.record("cicd.pipeline.result", result);
    }
    span.record("fluffy_flow.run.status", tracing::field::debug(status_now));
    status(span, error.map(ToString::to_string));
}

#[cfg(feature = "opentelemetry")]
fn status(span: &Span, problem: Option<String>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    span.set_status(match problem {
        Some(message) => opentelemetry::trace::Status::error(message),
        None => opentelemetry::trace::Status::Ok,
    });
}

#[cfg(not(feature = "opentelemetry"))]
fn status(_span: &Span, _problem: Option<String>) {}
