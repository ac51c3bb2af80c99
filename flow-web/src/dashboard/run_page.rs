//! A run's page: its controls, its graph coloured by status, a form per waiting request, its
//! timeline, states, failures, answered requests and context.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Response};
use flow_runtime::{Checkpoint, InputOutcome};

use super::html::{badge, escape, page, run_link};
use super::{App, blocking, control, failure_page, form, gantt, load, mark, svg};
use crate::cli::runs::{pending, shown_status};
use crate::cli::{Failure, status_name, time};

pub(super) async fn run_page(
    State(app): State<App>,
    Path((workflow, key)): Path<(String, String)>,
) -> Response {
    let store = Arc::clone(&app.store);
    let (workflow_, key_) = (workflow.clone(), key.clone());
    let posted = blocking(move || {
        store
            .posted_answers(&workflow_, &key_)
            .map_err(Failure::from)
    });
    match (load(&app, workflow, key).await, posted.await) {
        (Ok(checkpoint), Ok(posted)) => {
            Html(render_run(&app, &checkpoint, &posted, None)).into_response()
        }
        (Err(failure), _) | (_, Err(failure)) => failure_page(failure),
    }
}

/// The run's graph with each state's status: its workflow's transitions when it is
/// registered, else its states in order.
fn picture(app: &App, checkpoint: &Checkpoint) -> String {
    let graph = app
        .registry
        .get(&checkpoint.agent)
        .and_then(|agent| agent.graph().ok());
    match graph {
        Some(graph) => {
            let statuses: HashMap<String, String> = checkpoint
                .states
                .iter()
                .map(|state| (state.name.clone(), shown_status(checkpoint, state)))
                .collect();
            crate::graph::svg(&graph, &statuses)
        }
        None => svg::states(checkpoint),
    }
}

/// A refused answer, shown in its form.
pub(super) struct Refused<'a> {
    pub(super) id: &'a str,
    pub(super) given: &'a HashMap<String, String>,
    pub(super) reason: &'a str,
}

pub(super) fn render_run(
    app: &App,
    checkpoint: &Checkpoint,
    posted: &[flow_runtime::PostedAnswer],
    refused: Option<Refused<'_>>,
) -> String {
    let status = status_name(checkpoint.status);
    let link = run_link(&checkpoint.agent, &checkpoint.run_key);
    let mut body = format!(
        "<h1>Run {key} {badge}</h1><p>workflow <strong>{workflow}</strong> · checkpoint {sequence} · updated {updated} · run time {elapsed}</p>",
        key = escape(&checkpoint.run_key),
        badge = badge(&status),
        workflow = escape(&checkpoint.agent),
        sequence = checkpoint.sequence,
        updated = escape(&time(checkpoint.created_at)),
        elapsed = escape(&crate::cli::runs::millis(checkpoint.elapsed.as_millis())),
    );
    body.push_str(&control::controls(app, checkpoint));
    body.push_str(&picture(app, checkpoint));
    // Pending requests first: what someone has to do.
    let empty = HashMap::new();
    for record in pending(checkpoint) {
        let id = record.request.id.to_string();
        // Answered here or elsewhere, not yet taken by the run: said, not asked again.
        if let Some(answer) = posted.iter().rev().find(|a| a.id == record.request.id) {
            let _ = write!(
                body,
                "<div class=\"input left\" data-request=\"{id}\"><p><strong>{prompt}</strong> <span class=\"muted\">({id})</span></p><p>Answer left by {by}: <code>{value}</code>. The run takes it when it next looks (a waiting run within its poll interval, a suspended one when it continues).</p></div>",
                id = escape(&id),
                prompt = escape(&record.request.prompt),
                by = escape(&answer.by),
                value = escape(&answer.value.to_string()),
            );
            continue;
        }
        let (given, reason) = match &refused {
            Some(refused) if refused.id == id => (refused.given, Some(refused.reason)),
            _ => (&empty, None),
        };
        body.push_str(&form::render(
            &record.request,
            &link,
            &app.csrf,
            given,
            reason,
        ));
    }
    let now_ms = flow_runtime::epoch_ms(std::time::SystemTime::now());
    body.push_str("<h2>Timeline</h2><p class=\"muted\">Each attempt: waiting for its turn (grey), for resources, rate limits or primitives (amber), and running, in its outcome's colour.</p>");
    body.push_str(&gantt::chart(&checkpoint.attempts, now_ms));
    body.push_str("<h2>States</h2><table class=\"states\"><tr><th>state</th><th>status</th><th>runs</th><th>attempts</th><th>completions</th><th>time</th><th>last error</th></tr>");
    for state in &checkpoint.states {
        let status = shown_status(checkpoint, state);
        let _ = write!(
            body,
            "<tr data-state=\"{n}\"><td>{n}</td><td>{b}</td><td>{r}</td><td>{a}</td><td>{c}</td><td>{t}</td><td>{e}</td></tr>",
            n = escape(&state.name),
            b = badge(&status),
            r = state.runs,
            a = state.attempts,
            c = state.completions,
            t = escape(&crate::cli::runs::millis(state.total_time.as_millis())),
            e = escape(state.last_error.as_deref().unwrap_or("")),
        );
    }
    body.push_str("</table>");
    if !checkpoint.dead_letters.is_empty() {
        body.push_str(
            "<h2>Failures</h2><table><tr><th>state</th><th>attempts</th><th>error</th></tr>",
        );
        for letter in &checkpoint.dead_letters {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&letter.state),
                letter.attempts,
                escape(&letter.error)
            );
        }
        body.push_str("</table>");
    }
    let answered: Vec<_> = checkpoint
        .inputs
        .iter()
        .filter(|record| {
            !matches!(record.outcome, InputOutcome::Pending) || !record.refusals.is_empty()
        })
        .collect();
    if !answered.is_empty() {
        body.push_str(
            "<h2>Inputs</h2><table><tr><th>request</th><th>prompt</th><th>outcome</th></tr>",
        );
        for record in answered {
            let mut outcome = match &record.outcome {
                InputOutcome::Answered { value, by, .. } => format!("answered by {by}: {value}"),
                InputOutcome::Pending => "waiting".to_owned(),
                other => format!("{other:?}"),
            };
            for refusal in &record.refusals {
                let _ = write!(
                    outcome,
                    "; refused {} from {}: {}",
                    refusal.value, refusal.by, refusal.reason
                );
            }
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&record.request.id.to_string()),
                escape(&record.request.prompt),
                escape(&outcome)
            );
        }
        body.push_str("</table>");
    }
    body.push_str("<h2>Context</h2><table class=\"context\"><tr><th>key</th><th>value</th></tr>");
    for key in checkpoint.context.keys() {
        let value = checkpoint.context.raw(key).unwrap_or("");
        let shown: String = if value.chars().count() > 300 {
            value.chars().take(300).chain("…".chars()).collect()
        } else {
            value.to_owned()
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td><code>{}</code></td></tr>",
            escape(key),
            escape(&shown)
        );
    }
    body.push_str("</table>");
    let api = format!("/api{link}");
    page(
        &checkpoint.run_key,
        &body,
        Some((&api, &mark(app, checkpoint))),
    )
}
