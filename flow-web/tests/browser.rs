//! The dashboard in a real browser: headless Chromium driven through chromedriver (Debian's
//! `chromium` and `chromium-driver`; `.ci/run` installs them where missing). Opens the runs
//! list of a run waiting for input, takes screenshots, fills the run's form (one refused
//! answer, then one that fits), and sees the page update to the completed run by itself; a
//! second test checks the graph's colours, as the browser computes them, follow the states'
//! statuses; a third cancels a run with its button and resumes it with the other.
//!
//! Without chromedriver the tests say how to install it and pass; under `CI=true` they must
//! run. With `FLUFFY_SCREENSHOTS=<dir>` the screenshots are written there (the README's
//! come from `FLUFFY_SCREENSHOTS=docs`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use flow_core::{AgentStatus, Next};
use flow_runtime::{Agent, CheckpointStore, Context, FileStore};
use flow_web::dashboard::{DashboardOptions, router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

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

fn budget() -> Agent {
    let mut agent = Agent::new("budget");
    agent.add_state("plan", |ctx: Context| async move {
        ctx.set_state("item", "8 GPUs for <fine-tuning>".to_owned());
        Ok(Next::to("review"))
    });
    agent.add_state("review", |ctx: Context| async move {
        let budget: Budget = ctx.ask("Budget for the GPUs?").no_timeout().await?;
        ctx.set_state("amount", budget.amount);
        ctx.set_state("approved", budget.approved);
        Ok(Next::to("spend"))
    });
    agent.add_state("spend", |_ctx: Context| async move { Ok(Next::End) });
    agent.suspend_on_input();
    agent
}

fn etl() -> Agent {
    let mut agent = Agent::new("etl");
    agent.add_state(
        "extract",
        |_ctx: Context| async move { Ok(Next::to("load")) },
    );
    agent.add_state("load", |ctx: Context| async move {
        if ctx.get_state::<bool>("broken").unwrap_or(false) {
            return Err("the warehouse refused the connection".into());
        }
        Ok(Next::End)
    });
    agent
}

/// Whether the browser tests can run here; `None` (with the reason printed) when they are
/// skipped. Under CI they must run.
fn browser_available() -> bool {
    if Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the browser tests need {CHROMIUM} and {CHROMEDRIVER} under CI: apt-get install chromium chromium-driver"
    );
    eprintln!("skipping the browser tests: apt-get install chromium chromium-driver");
    false
}

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver on a port of its own, and a headless Chromium session through it.
struct Browser {
    driver: Child,
    client: Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let address = format!("127.0.0.1:{port}");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(&address).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    "--disable-dev-shm-usage", "--window-size=1200,860",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://{address}"))
            .await
            .unwrap();
        Self {
            driver,
            client,
            _profile: profile,
        }
    }

    async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill().await;
    }

    /// A screenshot of the page, written to `$FLUFFY_SCREENSHOTS/<name>` when that is set.
    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        assert!(
            png.len() > 5_000,
            "a page, not a blank: {} bytes",
            png.len()
        );
        if let Some(dir) = std::env::var_os("FLUFFY_SCREENSHOTS") {
            std::fs::write(Path::new(&dir).join(name), png).unwrap();
        }
    }

    /// Clicks the first element `css` finds.
    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    /// The text of the first element `css` finds, waiting for it up to 20 s.
    async fn text(&self, css: &str) -> String {
        for _ in 0..200 {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
            {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("nothing matched {css}");
    }

    /// Waits up to 20 s until the first element `css` finds has text containing `wanted`.
    async fn wait_for_text(&self, css: &str, wanted: &str) {
        let mut last = String::new();
        for _ in 0..200 {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
            {
                if text.contains(wanted) {
                    return;
                }
                last = text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("`{css}` never said `{wanted}` (last: `{last}`)");
    }
}

/// The dashboard over `store` on a free port of 127.0.0.1.
async fn dashboard(store: &FileStore) -> SocketAddr {
    dashboard_with(store, DashboardOptions::new()).await
}

/// [`dashboard`] with `options`.
async fn dashboard_with(store: &FileStore, options: DashboardOptions) -> SocketAddr {
    let app = router(Arc::new(store.clone()), options).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_run_is_answered_in_the_browser_and_seen_completing() {
    if !browser_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path());
    let waiting = budget()
        .run_durable(store.clone(), "q3-gpus")
        .await
        .unwrap();
    assert_eq!(waiting.status, AgentStatus::AwaitingInput);
    etl()
        .run_durable(store.clone(), "nightly-12-02")
        .await
        .unwrap();
    let broken = Context::new();
    broken.set_state("broken", true);
    let _failed = etl()
        .run_durable_with(store.clone(), "nightly-12-03", broken)
        .await;
    let addr = dashboard(&store).await;
    let browser = Browser::start().await;
    let client = &browser.client;

    client.goto(&format!("http://{addr}/")).await.unwrap();
    let rows = client
        .find_all(Locator::Css("table.runs tr[data-status]"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    browser.screenshot("dashboard-runs.png").await;

    client
        .find(Locator::LinkText("q3-gpus"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(browser.text("h1 .badge").await, "awaiting_input");
    browser.screenshot("dashboard-run.png").await;

    // A refused answer: the form comes back with the reason and the values given.
    let form = "form.input";
    let amount = client
        .find(Locator::Css(&format!("{form} input[name='field.amount']")))
        .await
        .unwrap();
    amount.send_keys("-5").await.unwrap();
    browser.click(&format!("{form} button")).await;
    browser
        .wait_for_text(".refusal", "-5 is less than the minimum of 0")
        .await;
    let kept = client
        .find(Locator::Css(&format!("{form} input[name='field.amount']")))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some("-5"));

    // The right one: amount, the box ticked, a team chosen.
    let amount = client
        .find(Locator::Css(&format!("{form} input[name='field.amount']")))
        .await
        .unwrap();
    amount.clear().await.unwrap();
    amount.send_keys("1200").await.unwrap();
    browser
        .click(&format!("{form} input[name='field.approved']"))
        .await;
    client
        .find(Locator::Css(&format!("{form} select[name='field.team']")))
        .await
        .unwrap()
        .select_by_value("data")
        .await
        .unwrap();
    browser.click(&format!("{form} button")).await;
    // Back on the run's page, the request answered, nothing refused.
    browser.wait_for_text("h1 .badge", "awaiting_input").await;
    let answers = store.posted_answers("budget", "q3-gpus").unwrap();
    assert_eq!(answers.len(), 1);
    assert_eq!(
        answers[0].value,
        json!({"amount": 1200, "approved": true, "team": "data"})
    );

    // The run continues with the answer (a worker would); the open page sees it by itself.
    let report = budget()
        .run_durable(store.clone(), "q3-gpus")
        .await
        .unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
    browser.wait_for_text("h1 .badge", "completed").await;
    assert!(
        client.find(Locator::Css(form)).await.is_err(),
        "no form once answered"
    );
    let states: Value = client
        .execute(
            "return [...document.querySelectorAll('g.state')].map(g => g.dataset.status)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(states, json!(["completed", "completed", "completed"]));
    browser.screenshot("dashboard-run-completed.png").await;
    browser.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_is_coloured_by_the_states_statuses() {
    if !browser_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path());
    let broken = Context::new();
    broken.set_state("broken", true);
    let _failed = etl()
        .run_durable_with(store.clone(), "failed-run", broken)
        .await;
    budget()
        .run_durable(store.clone(), "waiting-run")
        .await
        .unwrap();
    let addr = dashboard(&store).await;
    let browser = Browser::start().await;
    let colours = |status: &str| match status {
        "completed" => "rgb(46, 125, 50)",
        "failed" => "rgb(198, 40, 40)",
        "running" => "rgb(21, 101, 192)",
        "pending" => "rgb(158, 158, 158)",
        other => panic!("no colour expected for {other}"),
    };
    for (key, workflow, expected) in [
        (
            "failed-run",
            "etl",
            vec![("extract", "completed"), ("load", "failed")],
        ),
        (
            "waiting-run",
            "budget",
            vec![
                ("plan", "completed"),
                ("review", "running"),
                ("spend", "pending"),
            ],
        ),
    ] {
        browser
            .client
            .goto(&format!("http://{addr}/runs/{workflow}/{key}"))
            .await
            .unwrap();
        let seen: Value = browser
            .client
            .execute(
                "return [...document.querySelectorAll('g.state')].map(g => \
                 [g.dataset.state, g.dataset.status, getComputedStyle(g.querySelector('rect')).fill])",
                vec![],
            )
            .await
            .unwrap();
        let wanted: Vec<Value> = expected
            .iter()
            .map(|(state, status)| json!([state, status, colours(status)]))
            .collect();
        assert_eq!(seen, Value::Array(wanted), "{key}");
        // The table below agrees with the picture.
        for (state, status) in &expected {
            let cell = browser
                .text(&format!("table.states tr[data-state='{state}'] .badge"))
                .await;
            assert_eq!(cell, *status, "{key}: {state}");
        }
    }
    browser.stop().await;
}

/// The cancel and resume buttons, clicked: a waiting run cancelled with a reason shows who
/// cancelled it and why; answered, then resumed from its page, it runs on in the dashboard's
/// process and the open page turns `completed` by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_cancelled_and_resumed_with_its_buttons() {
    if !browser_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path());
    let waiting = budget()
        .run_durable(store.clone(), "q4-gpus")
        .await
        .unwrap();
    assert_eq!(waiting.status, AgentStatus::AwaitingInput);
    let registry = flow_web::Registry::new().register(&budget());
    let addr = dashboard_with(&store, DashboardOptions::new().registry(registry)).await;
    let browser = Browser::start().await;
    let client = &browser.client;
    client
        .goto(&format!("http://{addr}/runs/budget/q4-gpus"))
        .await
        .unwrap();
    assert_eq!(browser.text("h1 .badge").await, "awaiting_input");

    client
        .find(Locator::Css("form.cancel input[name='reason']"))
        .await
        .unwrap()
        .send_keys("budget frozen")
        .await
        .unwrap();
    browser.click("form.cancel button").await;
    browser.wait_for_text("h1 .badge", "cancelled").await;
    let said = browser.text("p.cancelled").await;
    assert!(
        said.starts_with("cancelled by dashboard at ") && said.ends_with(": budget frozen"),
        "{said}"
    );
    assert!(
        client.find(Locator::Css("form.cancel")).await.is_err(),
        "no cancel button on a cancelled run"
    );
    let latest = store.latest("budget", "q4-gpus").unwrap().unwrap();
    assert_eq!(latest.cancelled.unwrap().reason, "budget frozen");

    // Answered (as `fluffy inputs answer` would), then resumed with the button.
    let id = latest.inputs[0].request.id.clone();
    store
        .answer(
            "budget",
            "q4-gpus",
            &id,
            "test",
            json!({"amount": 300, "approved": true, "team": "ml"}),
        )
        .unwrap();
    browser.click("form.resume button").await;
    browser.wait_for_text("h1 .badge", "completed").await;
    let done = store.latest("budget", "q4-gpus").unwrap().unwrap();
    assert_eq!(done.status, AgentStatus::Completed);
    assert_eq!(done.cancelled, None);
    assert!(
        client.find(Locator::Css("form.resume")).await.is_err(),
        "no resume button on a completed run"
    );
    browser.stop().await;
}
