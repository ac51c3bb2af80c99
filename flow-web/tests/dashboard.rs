//! The web dashboard's router, requested without a socket: the runs list and its filters, a
//! run's page (states coloured by status, a form per waiting request), answers checked on the
//! server (a refusal shown in the refilled form, the CSRF token required), Prometheus
//! metrics, the token, and every string from a run escaped.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use flow_core::{AgentStatus, Next};
use flow_runtime::{Agent, CheckpointStore, Context, FileStore};
use flow_web::dashboard::{DashboardOptions, router, serve};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

const XSS: &str = "<script>alert(1)</script>";

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct Budget {
    amount: u32,
    approved: bool,
    team: Team,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Team {
    Ml,
    Data,
}

/// `plan` writes a hostile value, `review` asks (a hostile prompt) and suspends.
fn budget() -> Agent {
    let mut agent = Agent::new("budget");
    agent.add_state("plan", |ctx: Context| async move {
        ctx.set_state("note", XSS.to_owned());
        Ok(Next::to("review"))
    });
    agent.add_state("review", |ctx: Context| async move {
        let budget: Budget = ctx.ask(format!("Budget? {XSS}")).no_timeout().await?;
        ctx.set_state("amount", budget.amount);
        Ok(Next::to("spend"))
    });
    agent.add_state("spend", |_ctx: Context| async move { Ok(Next::End) });
    agent.suspend_on_input();
    agent
}

fn failing() -> Agent {
    let mut agent = Agent::new("etl");
    agent.add_state("load", |_ctx: Context| async move {
        Err(format!("bad row {XSS}").into())
    });
    agent
}

async fn populate(store: &FileStore) {
    let report = budget().run_durable(store.clone(), XSS).await.unwrap();
    assert_eq!(report.status, AgentStatus::AwaitingInput);
    let _ = failing().run_durable(store.clone(), "nightly").await;
}

async fn get(app: &Router, uri: &str) -> (StatusCode, String) {
    send(app, Request::get(uri).body(Body::empty()).unwrap()).await
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn post_form(uri: &str, fields: &[(&str, &str)]) -> Request<Body> {
    let body = fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap()
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What no page may contain: the hostile text unescaped.
fn assert_escaped(page: &str) {
    assert!(!page.contains(XSS), "unescaped: {page}");
    assert!(!page.contains("<script>alert"), "unescaped: {page}");
}

/// The `value` of the hidden input `name` in `page`, as a browser submits it.
fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker).unwrap() + marker.len();
    let escaped = page[start..].split('"').next().unwrap();
    escaped
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_forms_and_metrics_escape_everything_and_answer_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path());
    populate(&store).await;
    let app = router(Arc::new(store.clone()), DashboardOptions::new()).unwrap();

    // The runs, newest first, with a filter per status.
    let (status, page) = get(&app, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_escaped(&page);
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(
        page.contains("<tr data-status=\"awaiting_input\">"),
        "{page}"
    );
    assert!(page.contains("<tr data-status=\"failed\">"), "{page}");
    let link = "/runs/budget/%3Cscript%3Ealert%281%29%3C%2Fscript%3E";
    assert!(page.contains(&format!("href=\"{link}\"")), "{page}");
    let (_, filtered) = get(&app, "/?status=failed").await;
    assert!(
        filtered.contains("nightly") && !filtered.contains("<tr data-status=\"awaiting_input\">"),
        "{filtered}"
    );
    let (status, _) = get(&app, "/?status=done").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A filtered list polls the mark of the same filtered list (else it would reload forever).
    assert!(
        filtered.contains("fetch(\"/api/runs?status=failed\")"),
        "{filtered}"
    );
    let now = filtered
        .split("const now=")
        .nth(1)
        .unwrap()
        .split(";setInterval")
        .next()
        .unwrap();
    let (_, polled) = get(&app, "/api/runs?status=failed").await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(now).unwrap(),
        serde_json::from_str::<serde_json::Value>(&polled).unwrap()
    );

    // The run's page: states coloured by status, the request as a form.
    let (status, page) = get(&app, link).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_escaped(&page);
    for (state, status, colour) in [
        ("plan", "completed", "#2e7d32"),
        ("review", "running", "#1565c0"),
        ("spend", "pending", "#9e9e9e"),
    ] {
        let node = format!("data-state=\"{state}\" data-status=\"{status}\">");
        let at = page
            .find(&node)
            .unwrap_or_else(|| panic!("{node} in {page}"));
        let rect = &page[at..at + 400];
        assert!(
            rect.contains(&format!("fill=\"{colour}\"")),
            "{state}: {rect}"
        );
    }
    assert!(page.contains("Budget? &lt;script&gt;"), "{page}");
    assert!(page.contains("name=\"field.amount\""), "{page}");
    assert!(
        page.contains("type=\"checkbox\" name=\"field.approved\""),
        "{page}"
    );
    assert!(page.contains("<option value=\"ml\">ml</option>"), "{page}");
    let csrf = hidden(&page, "csrf");
    let id = hidden(&page, "id");
    // (The id's text form writes a `/` in the key as %2F.)
    assert_eq!(id, "<script>alert(1)<%2Fscript>/review/1/0");

    // Without the CSRF token: refused, nothing left.
    let (status, _) = send(&app, post_form(link, &[("id", &id), ("field.amount", "5")])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A value that does not fit: the form again, refilled, with the reason.
    let (status, page) = send(
        &app,
        post_form(
            link,
            &[
                ("csrf", &csrf),
                ("id", &id),
                ("field.amount", "-5"),
                ("field.team", "ml"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("class=\"refusal\">refused: "), "{page}");
    assert!(
        page.contains("at /amount: -5 is less than the minimum of 0"),
        "{page}"
    );
    assert!(
        page.contains("name=\"field.amount\" value=\"-5\""),
        "{page}"
    );
    assert_escaped(&page);
    let (status, page) = send(
        &app,
        post_form(
            link,
            &[
                ("csrf", &csrf),
                ("id", &id),
                ("field.amount", "lots"),
                ("field.team", "ml"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.contains("amount: `lots` is not a whole number"),
        "{page}"
    );
    assert!(store.posted_answers("budget", XSS).unwrap().is_empty());

    // A fitting answer is left for the run, which continues with it.
    let (status, _) = send(
        &app,
        post_form(
            link,
            &[
                ("csrf", &csrf),
                ("id", &id),
                ("field.amount", "1200"),
                ("field.approved", "true"),
                ("field.team", "data"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    // Left, not yet taken: said on the page instead of the form.
    let (_, page) = get(&app, link).await;
    assert!(
        page.contains("Answer left by dashboard: <code>{&quot;amount&quot;:1200"),
        "{page}"
    );
    assert!(!page.contains("<form class=\"input\""), "{page}");
    let report = budget().run_durable(store.clone(), XSS).await.unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!(report.context.get_state::<u32>("amount").unwrap(), 1200);
    let (_, page) = get(&app, link).await;
    assert!(page.contains("answered by dashboard"), "{page}");
    // The time line: every attempt, `review` twice (stopped when the run suspended, then
    // run again with the answer).
    assert!(page.contains("<h2>Timeline</h2>"), "{page}");
    for (state, attempt, outcome) in [
        ("plan", 1, "completed"),
        ("review", 1, "cancelled"),
        ("review", 1, "completed"),
        ("spend", 1, "completed"),
    ] {
        let bar = format!(
            "<g class=\"attempt\" data-state=\"{state}\" data-attempt=\"{attempt}\" data-outcome=\"{outcome}\">"
        );
        assert!(page.contains(&bar), "{bar}: {page}");
    }
    assert!(
        page.contains("data-state=\"spend\" data-status=\"completed\""),
        "{page}"
    );
    assert!(
        !page.contains("<form class=\"input\""),
        "no request waits: {page}"
    );
    assert_escaped(&page);

    // Metrics in Prometheus text.
    let (status, text) = get(&app, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains("fluffy_runs{workflow=\"budget\",status=\"completed\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("fluffy_runs{workflow=\"etl\",status=\"failed\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("fluffy_input_requests_waiting{workflow=\"budget\"} 0\n"),
        "{text}"
    );

    // Live updates: the JSON a page polls.
    let (status, mark) = get(&app, &format!("/api{link}")).await;
    assert_eq!(status, StatusCode::OK);
    let mark: serde_json::Value = serde_json::from_str(&mark).unwrap();
    assert_eq!(mark[1], "completed");
    let (status, _) = get(&app, "/runs/budget/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_when_set_and_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path());
    populate(&store).await;
    let app = router(
        Arc::new(store.clone()),
        DashboardOptions::new().token("s3cret"),
    )
    .unwrap();
    let (status, page) = get(&app, "/").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!page.contains("nightly"), "{page}");
    let (status, _) = get(&app, "/metrics").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let wrong = Request::get("/")
        .header(header::AUTHORIZATION, "Bearer nope")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, wrong).await.0, StatusCode::UNAUTHORIZED);
    let right = Request::get("/")
        .header(header::AUTHORIZATION, "Bearer s3cret")
        .body(Body::empty())
        .unwrap();
    let (status, page) = send(&app, right).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("nightly"), "{page}");
    // A first visit with the token sets a cookie that later requests carry.
    let response = app
        .clone()
        .oneshot(Request::get("/?token=s3cret").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cookie = response.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.starts_with("fluffy_token=s3cret;") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let with_cookie = Request::get("/")
        .header(header::COOKIE, "fluffy_token=s3cret")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, with_cookie).await.0, StatusCode::OK);

    // A token given in the address is read as the address encodes it.
    let odd = router(
        Arc::new(store.clone()),
        DashboardOptions::new().token("a+b%c"),
    )
    .unwrap();
    let response = odd
        .clone()
        .oneshot(
            Request::get("/?token=a%2Bb%25c")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    // Tokens a cookie cannot carry, or none at all, are refused.
    for bad in ["", "a;b", "two words"] {
        let error =
            router(Arc::new(store.clone()), DashboardOptions::new().token(bad)).unwrap_err();
        assert!(
            error.to_string().contains("visible ASCII"),
            "{bad}: {error}"
        );
    }
    assert!(!format!("{:?}", DashboardOptions::new().token("s3cret")).contains("s3cret"));

    // Without a token, only this machine's names are answered (DNS rebinding).
    let local = router(
        Arc::new(store.clone()),
        DashboardOptions::new().local_only(),
    )
    .unwrap();
    for (host, expected) in [
        ("localhost:8080", StatusCode::OK),
        ("127.0.0.1:8080", StatusCode::OK),
        ("[::1]:8080", StatusCode::OK),
        ("evil.example", StatusCode::MISDIRECTED_REQUEST),
        ("127.0.0.1.evil.example", StatusCode::MISDIRECTED_REQUEST),
    ] {
        let request = Request::get("/")
            .header(header::HOST, host)
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&local, request).await.0, expected, "{host}");
    }

    // Beyond loopback without a token: refused before it listens.
    let error = serve(
        Arc::new(store) as Arc<dyn CheckpointStore>,
        "0.0.0.0:0".parse().unwrap(),
        DashboardOptions::new(),
        async {},
    )
    .await
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("not a loopback address: give a token"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_workflow_is_drawn_with_its_transitions() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path());
    let mut agent = Agent::new("fanout");
    agent
        .add_state("split", |_ctx: Context| async move {
            Ok(Next::parallel(["left", "right"]))
        })
        .successors(["left", "right"]);
    agent
        .add_state("left", |_ctx: Context| async move {
            // (Still running when `right` fails the run: stopped with it.)
            std::future::pending::<()>().await;
            Ok(Next::to("join"))
        })
        .successors(["join"]);
    agent
        .add_state("right", |_ctx: Context| async move {
            Err("the right side broke".into())
        })
        .successors(["join"]);
    agent.add_state("join", |_ctx: Context| async move { Ok(Next::End) });
    let _failed = agent.run_durable(store.clone(), "f1").await;
    let registry = flow_web::Registry::new().register(&agent);
    let app = router(Arc::new(store), DashboardOptions::new().registry(registry)).unwrap();
    let (status, page) = get(&app, "/runs/fanout/f1").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    // Four transitions as arrows, the states in layers with their statuses.
    assert_eq!(
        page.matches("marker-end=\"url(#arrow)\"").count(),
        4,
        "{page}"
    );
    for (state, status) in [
        ("split", "completed"),
        ("left", "cancelled"),
        ("right", "failed"),
        ("join", "pending"),
    ] {
        assert!(
            page.contains(&format!("data-state=\"{state}\" data-status=\"{status}\"")),
            "{state}: {page}"
        );
    }
    // Unregistered, the same run is its states in order, without arrows.
    let plain = router(
        Arc::new(FileStore::new(dir.path())),
        DashboardOptions::new(),
    )
    .unwrap();
    let (_, page) = get(&plain, "/runs/fanout/f1").await;
    assert_eq!(page.matches("marker-end").count(), 0);
    assert_eq!(page.matches("<g class=\"state\"").count(), 4);
}

/// The latest checkpoint of `key`, once `done` says it is what the test waits for (a resumed
/// run goes on in the dashboard's process).
async fn until(
    store: &FileStore,
    workflow: &str,
    key: &str,
    done: impl Fn(&flow_runtime::Checkpoint) -> bool,
) -> flow_runtime::Checkpoint {
    for _ in 0..500 {
        if let Some(checkpoint) = store.latest(workflow, key).unwrap()
            && done(&checkpoint)
        {
            return checkpoint;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("run `{key}` never got there");
}

/// Cancel and resume buttons: POSTs with the CSRF token; a cancelled run shows who and why
/// (escaped) and is not cancelled twice; resumed, a registered run goes on in the dashboard's
/// process to its end, and one that fails again shows its error; what cannot be done is
/// refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_resume_buttons_steer_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path());
    populate(&store).await;
    let registry = flow_web::Registry::new()
        .register(&budget())
        .register(&failing());
    let app = router(
        Arc::new(store.clone()),
        DashboardOptions::new().registry(registry),
    )
    .unwrap();
    let waiting = format!("/runs/budget/{}", encode(XSS));

    // A waiting run offers both buttons.
    let (status, page) = get(&app, &waiting).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(&format!("action=\"{waiting}/cancel\"")),
        "{page}"
    );
    assert!(
        page.contains(&format!("action=\"{waiting}/resume\"")),
        "{page}"
    );
    let csrf = hidden(&page, "csrf");

    // Without the CSRF token: refused, nothing changed.
    let (status, _) = send(
        &app,
        post_form(&format!("{waiting}/cancel"), &[("reason", "x")]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, page) = send(&app, post_form(&format!("{waiting}/resume"), &[])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("CSRF token is missing"), "{page}");
    assert_eq!(
        store.latest("budget", XSS).unwrap().unwrap().status,
        AgentStatus::AwaitingInput
    );

    // Cancelled, with a hostile reason: kept, shown escaped, the cancel button gone.
    let (status, _) = send(
        &app,
        post_form(
            &format!("{waiting}/cancel"),
            &[("csrf", &csrf), ("reason", XSS)],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cancelled = store.latest("budget", XSS).unwrap().unwrap();
    assert_eq!(cancelled.status, AgentStatus::Cancelled);
    let record = cancelled.cancelled.clone().unwrap();
    assert_eq!(
        (record.by.as_str(), record.reason.as_str()),
        ("dashboard", XSS)
    );
    let (_, page) = get(&app, &waiting).await;
    assert_escaped(&page);
    assert!(page.contains("cancelled by dashboard at "), "{page}");
    assert!(!page.contains(&format!("{waiting}/cancel")), "{page}");
    assert!(page.contains(&format!("{waiting}/resume")), "{page}");

    // Answered, then resumed: it goes on here to its end.
    store
        .answer(
            "budget",
            XSS,
            &cancelled.inputs[0].request.id,
            "test",
            serde_json::json!({ "amount": 7, "approved": true, "team": "ml" }),
        )
        .unwrap();
    let (status, page) = send(
        &app,
        post_form(&format!("{waiting}/resume"), &[("csrf", &csrf)]),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
    let done = until(&store, "budget", XSS, |c| {
        c.status == AgentStatus::Completed
    })
    .await;
    assert_eq!(done.cancelled, None);
    let (_, page) = get(&app, &waiting).await;
    assert!(!page.contains("<form method=\"post\""), "{page}");
    // A completed run is not resumed.
    let (status, page) = send(
        &app,
        post_form(&format!("{waiting}/resume"), &[("csrf", &csrf)]),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("it has completed"), "{page}");
    let (status, page) = send(
        &app,
        post_form(&format!("{waiting}/cancel"), &[("csrf", &csrf)]),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("it has completed"), "{page}");

    // A failed run resumed fails again: its error is on its page.
    let before = store.latest("etl", "nightly").unwrap().unwrap().sequence;
    let (status, _) = send(
        &app,
        post_form("/runs/etl/nightly/resume", &[("csrf", &csrf)]),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    until(&store, "etl", "nightly", |c| c.sequence > before).await;
    let mut shown = String::new();
    for _ in 0..500 {
        shown = get(&app, "/runs/etl/nightly").await.1;
        if shown.contains("resume-error") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        shown.contains("Resumed here, it ended: state `load` failed"),
        "{shown}"
    );
    assert_escaped(&shown);

    // Not registered: no resume button, and a POST is refused with how to register.
    let bare = router(Arc::new(store.clone()), DashboardOptions::new()).unwrap();
    let (_, page) = get(&bare, "/runs/etl/nightly").await;
    assert!(!page.contains("/resume\""), "{page}");
    assert!(page.contains("DashboardOptions::registry"), "{page}");
    let csrf = hidden(&page, "csrf");
    let (status, page) = send(
        &bare,
        post_form("/runs/etl/nightly/resume", &[("csrf", &csrf)]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("is not registered"), "{page}");
}
