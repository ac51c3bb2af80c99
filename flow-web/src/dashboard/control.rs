//! What changes runs from the dashboard: answers to input requests, cancel and resume. Each
//! is a POST that carries the page's CSRF token; each refusal says why.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, PoisonError};

use axum::extract::{Form, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use flow_core::{AgentStatus, FlowError};
use flow_runtime::{CancelRecord, Checkpoint, runs_in_this_process};

use super::html::{escape, run_link};
use super::run_page::{Refused, render_run};
use super::{App, blocking, failure_page, form, load, same};
use crate::cli::runs::{cancelled_line, pending};
use crate::cli::{Failure, exit};

/// A run resumed from the dashboard, by workflow and key.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Resumed {
    /// Its task runs (the run itself may not have started yet).
    Starting,
    /// It ended with this error.
    Ended(String),
}

/// Who the dashboard says cancelled or answered (it knows no users).
const BY: &str = "dashboard";

/// A state-changing POST's form, its CSRF token checked against the page's: a handler that
/// takes it never runs for a request without the token (the refusal says what to do).
pub(super) struct CheckedForm(HashMap<String, String>);

impl FromRequest<App> for CheckedForm {
    type Rejection = Response;

    async fn from_request(request: Request, app: &App) -> Result<Self, Response> {
        let Form(submitted) = Form::<HashMap<String, String>>::from_request(request, app)
            .await
            .map_err(IntoResponse::into_response)?;
        if submitted
            .get("csrf")
            .is_some_and(|given| same(given, &app.csrf))
        {
            Ok(Self(submitted))
        } else {
            Err(failure_page(Failure::usage(
                "the form's CSRF token is missing or wrong: reload the run's page and try there"
                    .into(),
            )))
        }
    }
}

/// Whether a run with this checkpoint may run in a process this one cannot see: its latest
/// checkpoint says it runs, and it does not run here.
fn maybe_elsewhere(checkpoint: &Checkpoint, here: bool) -> bool {
    !here
        && matches!(
            checkpoint.status,
            AgentStatus::Running | AgentStatus::Paused | AgentStatus::Idle
        )
}

/// The run's controls: who cancelled it, cancel and resume buttons where they can act, and
/// why not where they cannot.
pub(super) fn controls(app: &App, checkpoint: &Checkpoint) -> String {
    let (workflow, key) = (&checkpoint.agent, &checkpoint.run_key);
    let link = run_link(workflow, key);
    let csrf = escape(&app.csrf);
    let here = runs_in_this_process(app.store.as_ref(), workflow, key);
    let ended = checkpoint.status.is_completed();
    let mut html = String::from("<div class=\"controls\">");
    if let Some(record) = &checkpoint.cancelled {
        let _ = write!(
            html,
            "<p class=\"cancelled\">{}</p>",
            escape(&cancelled_line(record))
        );
    }
    let resumed = app
        .resumed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&(workflow.clone(), key.clone()))
        .cloned();
    if let Some(Resumed::Ended(error)) = &resumed {
        let _ = write!(
            html,
            "<p class=\"resume-error\">Resumed here, it ended: {}</p>",
            escape(error)
        );
    }
    let here = here || resumed == Some(Resumed::Starting);
    if here {
        html.push_str("<p class=\"muted\">Running in this process.</p>");
    }
    let elsewhere = maybe_elsewhere(checkpoint, here);
    // (A run that may run elsewhere too: a store that knows its holder, PostgreSQL, asks it;
    // others refuse, saying why.)
    if !ended && checkpoint.cancelled.is_none() {
        let _ = write!(
            html,
            "<form method=\"post\" action=\"{link}/cancel\" class=\"cancel\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input name=\"reason\" placeholder=\"why (optional)\" aria-label=\"reason\"> <button type=\"submit\">Cancel run</button></form>"
        );
    }
    let resumable = !ended && !here && !elsewhere;
    if resumable && app.registry.get(workflow).is_some() {
        let _ = write!(
            html,
            "<form method=\"post\" action=\"{link}/resume\" class=\"resume\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\">Resume run</button> <span class=\"muted\">continues it in this process from checkpoint {}</span></form>",
            checkpoint.sequence
        );
    } else if resumable {
        html.push_str("<p class=\"muted\">To resume it from here, register its workflow with the dashboard (<code>DashboardOptions::registry</code>, or <code>cli::main_with</code> in your program).</p>");
    }
    if elsewhere {
        let _ = write!(
            html,
            "<p class=\"muted\">Its latest checkpoint says it is running, and it does not run in this process: it may run in another one (cancelling asks it where the store knows it, as PostgreSQL's workers; resume it there), or that process died (then <code>fluffy runs cancel --force {k}</code> or <code>fluffy runs resume --force {k}</code>).</p>",
            k = escape(key)
        );
    }
    html.push_str("</div>");
    html
}

/// Cancels the run for good (`CheckpointStore::cancel_run`): the reason from the form, the
/// dashboard as who.
pub(super) async fn cancel(
    State(app): State<App>,
    Path((workflow, key)): Path<(String, String)>,
    CheckedForm(submitted): CheckedForm,
) -> Response {
    let reason = submitted.get("reason").cloned().unwrap_or_default();
    let store = Arc::clone(&app.store);
    let (workflow_, key_) = (workflow.clone(), key.clone());
    let cancelled = blocking(move || {
        store
            .cancel_run(&workflow_, &key_, CancelRecord::new(BY, reason), false)
            .map_err(|error| match error {
                FlowError::CancelRefused { .. } => Failure::refused(error.to_string()),
                FlowError::NoCheckpoint { .. } => Failure::not_found(error.to_string()),
                error => Failure::from(error),
            })
    })
    .await;
    match cancelled {
        Ok(_) => Redirect::to(&run_link(&workflow, &key)).into_response(),
        Err(failure) => failure_page(failure),
    }
}

/// Continues the run, its workflow registered: through its store's run queue when it keeps
/// one (`requeue_resumed`: a worker continues it), else in this process
/// (`Agent::resume_durable`). The page follows it as it writes checkpoints; an error it ends
/// with here is shown there.
pub(super) async fn resume(
    State(app): State<App>,
    Path((workflow, key)): Path<(String, String)>,
    _token_checked: CheckedForm,
) -> Response {
    let Some(agent) = app.registry.get(&workflow).cloned() else {
        return failure_page(Failure::usage(format!(
            "workflow `{workflow}` is not registered with this dashboard: register it (`DashboardOptions::registry`) to resume its runs here"
        )));
    };
    let checkpoint = match load(&app, workflow.clone(), key.clone()).await {
        Ok(checkpoint) => checkpoint,
        Err(failure) => return failure_page(failure),
    };
    let run = (workflow.clone(), key.clone());
    // Marked before it starts: a second click meanwhile is refused, not a second run. (The
    // lock is let go before anything is awaited.)
    let refusal = {
        let mut resumed = app.resumed.lock().unwrap_or_else(PoisonError::into_inner);
        let here = runs_in_this_process(app.store.as_ref(), &workflow, &key)
            || resumed.get(&run) == Some(&Resumed::Starting);
        // Completion first: a run that has saved its completed checkpoint is still listed
        // here for the moment it takes to end, and its end is what the user needs to hear.
        let refusal = if checkpoint.status.is_completed() {
            Some("it has completed".to_owned())
        } else if here {
            Some("it runs in this process already".to_owned())
        } else if maybe_elsewhere(&checkpoint, here) {
            Some(format!(
                "its latest checkpoint says it is running: it may run in another process (resume it there), or `fluffy runs resume --force {key}` once that process is gone"
            ))
        } else {
            None
        };
        if refusal.is_none() {
            resumed.insert(run.clone(), Resumed::Starting);
        }
        refusal
    };
    if let Some(reason) = refusal {
        return failure_page(Failure::refused(format!(
            "run `{key}` was not resumed: {reason}"
        )));
    }
    // A run of a store's queue (PostgreSQL's) goes back to it, for a worker.
    let (store, (w, k)) = (Arc::clone(&app.store), run.clone());
    let queued = blocking(move || {
        flow_runtime::requeue_resumed(store.as_ref(), &w, &k).map_err(Failure::from)
    })
    .await;
    if !matches!(queued, Ok(false)) {
        app.resumed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&run);
        return match queued {
            Err(failure) => failure_page(failure),
            Ok(_) => Redirect::to(&run_link(&workflow, &key)).into_response(),
        };
    }
    let (store, shared) = (Arc::clone(&app.store), Arc::clone(&app));
    tokio::spawn(async move {
        let outcome = agent.resume_durable(store, &run.1).await;
        let mut resumed = shared
            .resumed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(_) => resumed.remove(&run),
            Err(error) => resumed.insert(run, Resumed::Ended(error.to_string())),
        };
    });
    Redirect::to(&run_link(&workflow, &key)).into_response()
}

/// Answers a request of the run: the CSRF token checked, the form read by the request's
/// schema, the answer checked against it; a refusal is shown in the form, refilled.
pub(super) async fn answer(
    State(app): State<App>,
    Path((workflow, key)): Path<(String, String)>,
    CheckedForm(submitted): CheckedForm,
) -> Response {
    let checkpoint = match load(&app, workflow.clone(), key.clone()).await {
        Ok(checkpoint) => checkpoint,
        Err(failure) => return failure_page(failure),
    };
    let id = submitted.get("id").cloned().unwrap_or_default();
    let Some(record) = pending(&checkpoint).find(|record| record.request.id.to_string() == id)
    else {
        return failure_page(Failure::not_found(format!(
            "run `{key}` has no input request `{id}` waiting (answered meanwhile?)"
        )));
    };
    let refuse = |reason: String| {
        let refused = Refused {
            id: &id,
            given: &submitted,
            reason: &reason,
        };
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Html(render_run(&app, &checkpoint, &[], Some(refused))),
        )
            .into_response()
    };
    let value = match form::answer(&record.request.schema, &submitted) {
        Ok(value) => value,
        Err(reason) => return refuse(format!("refused: {reason}")),
    };
    if let Err(failure) = crate::cli::inputs::check(&record.request.schema, &value) {
        return refuse(failure.message().to_owned());
    }
    let (store, request_id) = (Arc::clone(&app.store), record.request.id.clone());
    let left = blocking(move || {
        store
            .answer(&workflow, &key, &request_id, "dashboard", value)
            .map_err(|error| match error {
                FlowError::InvalidAnswer { .. } | FlowError::InputClosed { .. } => {
                    Failure::refused(error.to_string())
                }
                error => Failure::from(error),
            })
    })
    .await;
    match left {
        Ok(()) => Redirect::to(&run_link(&checkpoint.agent, &checkpoint.run_key)).into_response(),
        Err(failure) if failure.code() == exit::REFUSED => refuse(failure.message().to_owned()),
        Err(failure) => failure_page(failure),
    }
}
