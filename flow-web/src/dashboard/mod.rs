//! The web dashboard: the runs of a checkpoint store in a browser, each run's states coloured
//! by status, and forms that answer the input requests runs wait on (generated from each
//! request's JSON Schema, checked on the server).
//!
//! [`router`] is an axum `Router` a service mounts; [`serve`] runs it on an address
//! (`fluffy serve`). Everything is served from the binary: no build step, no network assets.
//! Safe by default: [`serve`] binds a loopback address unless given a token, a token (when
//! set) is required on every request, answers are POSTs that carry a CSRF token, and every
//! string from a run or a user is escaped.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use flow_core::FlowError;
use flow_runtime::{Checkpoint, CheckpointStore};
use serde::Deserialize;

use crate::Registry;
use crate::cli::runs::{ListFilter, RunSummary, find, summaries};
use crate::cli::{Failure, exit, status_name};
use html::{badge, escape, page, run_link};

mod control;
mod form;
mod gantt;
pub(crate) mod html;
mod run_page;
mod svg;

/// How the dashboard is served.
#[derive(Clone, Default)]
pub struct DashboardOptions {
    token: Option<String>,
    registry: Registry,
    local_only: bool,
}

impl std::fmt::Debug for DashboardOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // (Never the token itself.)
        f.debug_struct("DashboardOptions")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("registry", &self.registry)
            .field("local_only", &self.local_only)
            .finish()
    }
}

impl DashboardOptions {
    /// No token: for a loopback address, or behind a proxy that authenticates.
    pub fn new() -> Self {
        Self::default()
    }

    /// The workflows whose runs are drawn with their transitions (a run of a workflow not
    /// registered shows its states in the workflow's order), and can be resumed from their
    /// page (continued in the dashboard's process).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Every request must carry `token`: `Authorization: Bearer <token>`, or the cookie a
    /// first visit with `?token=<token>` sets. Visible ASCII without `;`, `,` or `"` (it
    /// goes in a cookie), at least one character; [`router`] refuses others.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Answers only requests addressed to this machine by name (`Host` is `localhost`,
    /// `127.0.0.1` or `[::1]`): a web page elsewhere that points its own name at 127.0.0.1
    /// (DNS rebinding) cannot read the dashboard. [`serve`] without a token sets it.
    pub fn local_only(mut self) -> Self {
        self.local_only = true;
        self
    }
}

struct Shared {
    store: Arc<dyn CheckpointStore>,
    /// Sent in every form and required with every POST.
    csrf: String,
    token: Option<String>,
    registry: Registry,
    local_only: bool,
    /// The runs resumed from the dashboard that run or failed (see `control::resume`).
    resumed: std::sync::Mutex<HashMap<(String, String), control::Resumed>>,
}

type App = Arc<Shared>;

/// The dashboard over `store`, to serve or to mount in a service's router.
pub fn router(
    store: Arc<dyn CheckpointStore>,
    options: DashboardOptions,
) -> Result<Router, FlowError> {
    if let Some(token) = &options.token {
        check_token(token).map_err(|message| FlowError::InvalidConfig {
            agent: "dashboard".into(),
            message,
        })?;
    }
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|error| FlowError::InvalidConfig {
        agent: "dashboard".into(),
        message: format!("no random bytes for its CSRF token from the operating system: {error}"),
    })?;
    let csrf = bytes.iter().fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    });
    let app: App = Arc::new(Shared {
        store,
        csrf,
        token: options.token,
        registry: options.registry,
        local_only: options.local_only,
        resumed: std::sync::Mutex::default(),
    });
    Ok(Router::new()
        .route("/", get(runs_page))
        .route(
            "/runs/{workflow}/{key}",
            get(run_page::run_page).post(control::answer),
        )
        .route("/runs/{workflow}/{key}/cancel", post(control::cancel))
        .route("/runs/{workflow}/{key}/resume", post(control::resume))
        .route("/api/runs", get(runs_json))
        .route("/api/runs/{workflow}/{key}", get(run_json))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(Arc::clone(&app), authorize))
        .with_state(app))
}

/// Whether `token` can be the dashboard's: visible ASCII without `;`, `,`, `"` or `\` (it is
/// sent in a cookie), not empty; the error says so.
pub(crate) fn check_token(token: &str) -> Result<(), String> {
    let usable = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b";,\"\\".contains(&b));
    if usable {
        Ok(())
    } else {
        Err("the dashboard's token must be visible ASCII characters without `;`, `,`, `\"` or `\\` (it is sent in a cookie), and not empty".into())
    }
}

/// Serves the dashboard over `store` on `addr` until `shutdown` completes. A non-loopback
/// address needs a token (the runs' contexts and answers are not for the network).
pub async fn serve(
    store: Arc<dyn CheckpointStore>,
    addr: SocketAddr,
    options: DashboardOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), FlowError> {
    let invalid = |message: String| FlowError::InvalidConfig {
        agent: "dashboard".into(),
        message,
    };
    if !addr.ip().is_loopback() && options.token.as_deref().is_none_or(str::is_empty) {
        return Err(invalid(format!(
            "{addr} is not a loopback address: give a token (--token or FLUFFY_TOKEN) to serve the dashboard beyond this machine"
        )));
    }
    let options = if options.token.is_none() {
        options.local_only()
    } else {
        options
    };
    let router = router(store, options)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| invalid(format!("cannot listen on {addr}: {error}")))?;
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|error| invalid(format!("serving on {addr}: {error}")))
}

/// With a token set, lets through requests that carry it (header or cookie), and sets the
/// cookie for a visit with `?token=`.
async fn authorize(State(app): State<App>, request: Request, next: Next) -> Response {
    if app.local_only && !local_host(request.headers()) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            Html(page(
                "not this machine",
                "<h1>Not this machine</h1><p>This dashboard answers requests to localhost only. Serve it with a token to open it under another name.</p>",
                None,
            )),
        )
            .into_response();
    }
    let Some(token) = app.token.as_deref() else {
        return next.run(request).await;
    };
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let cookie = cookie(headers, "fluffy_token");
    if bearer.is_some_and(|given| same(given, token))
        || cookie.is_some_and(|given| same(&given, token))
    {
        return next.run(request).await;
    }
    // (The query decoded as axum decodes any: percent escapes, `+` for a space.)
    let offered = Query::<HashMap<String, String>>::try_from_uri(request.uri())
        .ok()
        .and_then(|Query(query)| query.get("token").cloned())
        .is_some_and(|given| same(&given, token));
    if offered {
        let path = request.uri().path().to_owned();
        let mut response = Redirect::to(&path).into_response();
        if let Ok(value) =
            format!("fluffy_token={token}; HttpOnly; SameSite=Strict; Path=/").parse()
        {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        return response;
    }
    (
        StatusCode::UNAUTHORIZED,
        Html(page(
            "token required",
            "<h1>Token required</h1><p>Open this address with <code>?token=…</code> (the token the dashboard was started with).</p>",
            None,
        )),
    )
        .into_response()
}

/// Whether the request names this machine (`Host`: localhost, 127.0.0.1 or [::1], any port).
fn local_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        // [::1]:8080
        Some(rest) => rest.split(']').next().map(|inside| format!("[{inside}]")),
        None => host.split(':').next().map(str::to_owned),
    };
    name.is_some_and(|name| {
        matches!(
            name.to_ascii_lowercase().as_str(),
            "localhost" | "127.0.0.1" | "[::1]"
        )
    })
}

/// The value of cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then(|| value.to_owned())
        })
}

/// Equal, compared in a time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |diff, (x, y)| diff | (x ^ y))
            == 0
}

/// A failure as a page with its status code.
fn failure_page(failure: Failure) -> Response {
    let status = match failure.code() {
        exit::NOT_FOUND => StatusCode::NOT_FOUND,
        exit::USAGE => StatusCode::BAD_REQUEST,
        exit::REFUSED => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = format!(
        "<h1>{}</h1><p>{}</p>",
        status.as_u16(),
        escape(failure.message())
    );
    (status, Html(page("error", &body, None))).into_response()
}

/// Runs `read` on a blocking thread (stores block).
async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(read)
        .await
        .unwrap_or_else(|error| Err(Failure::failed(format!("reading the store: {error}"))))
}

#[derive(Deserialize)]
struct RunsQuery {
    status: Option<String>,
    workflow: Option<String>,
}

impl RunsQuery {
    /// The filters as a query string (`status=failed&workflow=etl`), encoded.
    fn encoded(&self) -> String {
        let mut pairs = Vec::new();
        for (name, value) in [("status", &self.status), ("workflow", &self.workflow)] {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                pairs.push(format!("{name}={}", html::encode_segment(value)));
            }
        }
        pairs.join("&")
    }
}

async fn all_runs(app: &App, query: &RunsQuery) -> Result<Vec<RunSummary>, Failure> {
    let statuses = match query.status.as_deref().filter(|s| !s.is_empty()) {
        Some(status) => vec![
            serde_json::from_value(serde_json::Value::String(status.to_owned()))
                .map_err(|_| Failure::usage(format!("`{status}` is not a run status")))?,
        ],
        None => Vec::new(),
    };
    let filter = ListFilter {
        workflow: query.workflow.clone().filter(|w| !w.is_empty()),
        statuses,
        since: None,
    };
    let store = Arc::clone(&app.store);
    blocking(move || summaries(store.as_ref(), &filter)).await
}

const STATUSES: [&str; 7] = [
    "running",
    "awaiting_input",
    "paused",
    "completed",
    "completed_with_failures",
    "failed",
    "cancelled",
];

async fn runs_page(State(app): State<App>, Query(query): Query<RunsQuery>) -> Response {
    let runs = match all_runs(&app, &query).await {
        Ok(runs) => runs,
        Err(failure) => return failure_page(failure),
    };
    let mut body = String::from("<h1>Runs</h1><p class=\"filters\">Status: <a href=\"/\">all</a>");
    for status in STATUSES {
        let _ = write!(body, " <a href=\"/?status={status}\">{}</a>", badge(status));
    }
    body.push_str("</p><table class=\"runs\"><tr><th>workflow</th><th>key</th><th>status</th><th>updated</th><th>inputs</th><th>error</th></tr>");
    for run in &runs {
        let status = run.status.map_or_else(|| "?".into(), status_name);
        let _ = write!(
            body,
            "<tr data-status=\"{s}\"><td>{w}</td><td><a href=\"{link}\">{k}</a></td><td>{badge}</td><td>{u}</td><td>{i}</td><td>{e}</td></tr>",
            s = escape(&status),
            w = escape(&run.workflow),
            link = escape(&run_link(&run.workflow, &run.key)),
            k = escape(&run.key),
            badge = badge(&status),
            u = escape(run.updated.as_deref().unwrap_or("")),
            i = run.pending_inputs,
            e = escape(run.error.as_deref().unwrap_or("")),
        );
    }
    body.push_str("</table>");
    if runs.is_empty() {
        body.push_str("<p class=\"muted\">No runs.</p>");
    }
    let now = fingerprint(&runs);
    // (The mark of the same filtered list: any other would differ, and reload forever.)
    let api = match query.encoded() {
        query if query.is_empty() => "/api/runs".to_owned(),
        query => format!("/api/runs?{query}"),
    };
    Html(page("runs", &body, Some((&api, &now)))).into_response()
}

/// What changes when any run changes (for live updates).
fn fingerprint(runs: &[RunSummary]) -> String {
    let marks: Vec<serde_json::Value> = runs
        .iter()
        .map(|run| serde_json::json!([run.workflow, run.key, run.checkpoint, run.status]))
        .collect();
    serde_json::Value::Array(marks).to_string()
}

async fn runs_json(State(app): State<App>, Query(query): Query<RunsQuery>) -> Response {
    match all_runs(&app, &query).await {
        Ok(runs) => (
            [(header::CONTENT_TYPE, "application/json")],
            fingerprint(&runs),
        )
            .into_response(),
        Err(failure) => failure_page(failure),
    }
}

async fn load(app: &App, workflow: String, key: String) -> Result<Checkpoint, Failure> {
    let store = Arc::clone(&app.store);
    blocking(move || find(store.as_ref(), &key, Some(&workflow)).map(|(_, checkpoint)| checkpoint))
        .await
}

/// The run's live mark: its checkpoint's number and status, and whether it runs in this
/// process (a resume starting or ending changes the page).
fn mark(app: &App, checkpoint: &Checkpoint) -> String {
    let here = flow_runtime::runs_in_this_process(
        app.store.as_ref(),
        &checkpoint.agent,
        &checkpoint.run_key,
    );
    serde_json::json!([checkpoint.sequence, checkpoint.status, here]).to_string()
}

async fn run_json(
    State(app): State<App>,
    Path((workflow, key)): Path<(String, String)>,
) -> Response {
    match load(&app, workflow, key).await {
        Ok(checkpoint) => (
            [(header::CONTENT_TYPE, "application/json")],
            mark(&app, &checkpoint),
        )
            .into_response(),
        Err(failure) => failure_page(failure),
    }
}

/// Prometheus text: runs by workflow and status, and input requests waiting, by workflow.
async fn metrics(State(app): State<App>) -> Response {
    let query = RunsQuery {
        status: None,
        workflow: None,
    };
    let runs = match all_runs(&app, &query).await {
        Ok(runs) => runs,
        Err(failure) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                failure.message().to_owned(),
            )
                .into_response();
        }
    };
    let text = crate::cli::runs::prometheus(&runs);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
