//! The `fluffy` command line on stores that real runs wrote: listing with filters, showing a
//! run, answering input requests (refused answers with the reason, then one the run continues
//! with), exit codes, and JSON for scripts.

use std::path::Path;

use flow_core::{AgentStatus, Next};
use flow_runtime::{Agent, CheckpointStore, Context, FileStore, RedbStore};
use flow_web::Registry;
use flow_web::cli::{exit, run, run_with};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What the `budget` workflow asks for.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct Budget {
    amount: u32,
    approved: bool,
}

/// `plan`, then `review` asks for a budget (a typed request) and suspends; `spend` records it.
fn budget() -> Agent {
    let mut agent = Agent::new("budget");
    agent.add_state("plan", |ctx: Context| async move {
        ctx.set_state("item", "GPUs".to_owned());
        Ok(Next::to("review"))
    });
    agent.add_state("review", |ctx: Context| async move {
        let budget: Budget = ctx
            .ask("Budget for <script>alert(1)</script>?")
            .no_timeout()
            .await?;
        ctx.set_state("amount", budget.amount);
        ctx.set_state("approved", budget.approved);
        Ok(Next::to("spend"))
    });
    agent.add_state("spend", |_ctx: Context| async move { Ok(Next::End) });
    agent.suspend_on_input();
    agent
}

/// One state that completes, or fails (no retry) when the context says so.
fn etl() -> Agent {
    let mut agent = Agent::new("etl");
    agent.add_state("load", |ctx: Context| async move {
        if ctx.get_state::<bool>("broken").unwrap_or(false) {
            return Err("the source table is gone".into());
        }
        ctx.set_state("rows", 42u64);
        Ok(Next::End)
    });
    agent
}

fn context(values: Value) -> Context {
    let Value::Object(map) = values else {
        panic!("an object")
    };
    Context::from_json(map)
}

/// Three runs: `q3` waits for its budget, `nightly` completed, `broken` failed.
async fn populate(store: impl CheckpointStore + Clone) {
    let waiting = budget()
        .run_durable_with(store.clone(), "q3", Context::new())
        .await
        .unwrap();
    assert_eq!(waiting.status, AgentStatus::AwaitingInput);
    let done = etl()
        .run_durable_with(store.clone(), "nightly", Context::new())
        .await
        .unwrap();
    assert_eq!(done.status, AgentStatus::Completed);
    // (A failed run is an error, and its checkpoint says so.)
    let failed = etl()
        .run_durable_with(store, "broken", context(json!({ "broken": true })))
        .await
        .unwrap_err();
    assert!(
        failed.to_string().contains("the source table is gone"),
        "{failed}"
    );
}

/// `fluffy --store <store> args…`: (exit code, stdout, stderr).
fn fluffy(store: &Path, args: &[&str]) -> (u8, String, String) {
    let mut full = vec!["fluffy", "--store", store.to_str().unwrap()];
    full.extend_from_slice(args);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run(full, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_shows_and_answers_runs_of_a_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path());
    populate(store.clone()).await;
    let path = dir.path();

    // Every run, with its status and what it waits on.
    let (code, text, _) = fluffy(path, &["runs", "list", "--json"]);
    assert_eq!(code, exit::OK);
    let listed = json_of(&text);
    let mut rows: Vec<(String, String, String, u64)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|run| {
            (
                run["workflow"].as_str().unwrap().to_owned(),
                run["key"].as_str().unwrap().to_owned(),
                run["status"].as_str().unwrap().to_owned(),
                run["pending_inputs"].as_u64().unwrap(),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            ("budget".into(), "q3".into(), "awaiting_input".into(), 1),
            ("etl".into(), "broken".into(), "failed".into(), 0),
            ("etl".into(), "nightly".into(), "completed".into(), 0),
        ]
    );
    let broken = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|run| run["key"] == "broken")
        .unwrap();
    assert_eq!(
        broken["error"],
        "state `load` failed after 1 attempt(s): the source table is gone"
    );

    // Filters: by status (two of them), by workflow, by age.
    let (code, text, _) = fluffy(
        path,
        &[
            "runs",
            "list",
            "--status",
            "failed",
            "--status",
            "awaiting_input",
        ],
    );
    assert_eq!(code, exit::OK);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("WORKFLOW  KEY     STATUS"), "{text}");
    assert!(
        text.contains("awaiting_input") && text.contains("failed"),
        "{text}"
    );
    assert!(!text.contains("nightly"), "{text}");
    let (_, text, _) = fluffy(path, &["runs", "list", "--workflow", "etl", "--json"]);
    assert_eq!(json_of(&text).as_array().unwrap().len(), 2);
    let (_, text, _) = fluffy(path, &["runs", "list", "--since", "1h", "--json"]);
    assert_eq!(json_of(&text).as_array().unwrap().len(), 3);

    // One run: its states, and the request it waits on (the prompt as it was given).
    let (code, text, _) = fluffy(path, &["runs", "show", "q3"]);
    assert_eq!(code, exit::OK, "{text}");
    assert!(text.contains("q3   budget    awaiting_input"), "{text}");
    let plan = text.lines().find(|l| l.starts_with("plan")).unwrap();
    assert!(plan.contains("completed"), "{plan}");
    assert!(text.contains("q3/review/1/0"), "{text}");
    assert!(
        text.contains("Budget for <script>alert(1)</script>?"),
        "{text}"
    );
    assert!(text.contains("object: amount, approved"), "{text}");
    let (_, text, _) = fluffy(path, &["runs", "show", "broken", "--json"]);
    let shown = json_of(&text);
    assert_eq!(shown["status"], "failed");
    assert_eq!(
        shown["last_error"],
        "state `load` failed after 1 attempt(s): the source table is gone"
    );
    assert_eq!(shown["states"][0]["name"], "load");
    assert_eq!(shown["states"][0]["attempts"], 1);

    // Waiting requests, from every run.
    let (code, text, _) = fluffy(path, &["inputs", "list", "--json"]);
    assert_eq!(code, exit::OK);
    let waiting = json_of(&text);
    assert_eq!(waiting.as_array().unwrap().len(), 1, "{text}");
    assert_eq!(waiting[0]["id"], "q3/review/1/0");
    assert_eq!(waiting[0]["state"], "review");
    assert_eq!(
        waiting[0]["schema"]["required"],
        json!(["amount", "approved"])
    );

    // Answers that do not fit are refused, with the reason, and nothing is left.
    let (code, _, err) = fluffy(path, &["inputs", "answer", "q3", "review/1/0", "yes"]);
    assert_eq!(code, exit::REFUSED);
    assert!(err.contains("refused: `yes` is not JSON"), "{err}");
    let (code, _, err) = fluffy(
        path,
        &[
            "inputs",
            "answer",
            "q3",
            "q3/review/1/0",
            r#"{"amount": -5}"#,
        ],
    );
    assert_eq!(code, exit::REFUSED);
    assert!(err.contains("\"approved\" is a required property"), "{err}");
    assert!(err.contains("at /amount"), "{err}");
    assert!(store.posted_answers("budget", "q3").unwrap().is_empty());
    let (code, _, err) = fluffy(path, &["inputs", "answer", "q3", "review/2/0", "{}"]);
    assert_eq!(code, exit::NOT_FOUND);
    assert!(err.contains("waiting: q3/review/1/0"), "{err}");

    // A fitting answer is left for the run, which continues with it.
    let (code, text, err) = fluffy(
        path,
        &[
            "inputs",
            "answer",
            "q3",
            "review/1/0",
            r#"{"amount": 1200, "approved": true}"#,
            "--by",
            "ana",
        ],
    );
    assert_eq!(code, exit::OK, "{err}");
    assert!(
        text.starts_with("answered `q3/review/1/0` of run `q3` (budget)"),
        "{text}"
    );
    let report = budget()
        .run_durable_with(store.clone(), "q3", Context::new())
        .await
        .unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!(report.context.get_state::<u32>("amount").unwrap(), 1200);
    let (_, text, _) = fluffy(path, &["runs", "show", "q3", "--json"]);
    let shown = json_of(&text);
    assert_eq!(shown["status"], "completed");
    assert_eq!(shown["inputs"][0]["outcome"]["Answered"]["by"], "ana");
    let (code, _, err) = fluffy(
        path,
        &[
            "inputs",
            "answer",
            "q3",
            "review/1/0",
            r#"{"amount": 1, "approved": false}"#,
        ],
    );
    assert_eq!(code, exit::REFUSED);
    assert!(err.contains("already answered by ana"), "{err}");
    let (_, text, _) = fluffy(path, &["inputs", "list"]);
    assert_eq!(text, "no input requests waiting\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redb_store_lists_the_same_and_errors_have_their_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flows.redb");
    populate(RedbStore::open(&file).unwrap()).await;
    let (code, text, _) = fluffy(&file, &["runs", "list", "--status", "completed", "--json"]);
    assert_eq!(code, exit::OK);
    let listed = json_of(&text);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["key"], "nightly");

    // A key of two workflows needs --workflow.
    etl()
        .run_durable_with(RedbStore::open(&file).unwrap(), "q3", Context::new())
        .await
        .unwrap();
    let (code, _, err) = fluffy(&file, &["runs", "show", "q3"]);
    assert_eq!(code, exit::USAGE);
    assert!(
        err.contains("`q3` is a run of 2 workflows (budget, etl)"),
        "{err}"
    );
    let (code, text, _) = fluffy(
        &file,
        &["runs", "show", "q3", "--workflow", "etl", "--json"],
    );
    assert_eq!(code, exit::OK);
    assert_eq!(json_of(&text)["status"], "completed");

    // Held open by another program: said so, with what to do.
    let held = RedbStore::open(&file).unwrap();
    let (code, _, err) = fluffy(&file, &["runs", "list"]);
    assert_eq!(code, exit::FAILED);
    assert!(err.contains("open in one process at a time"), "{err}");
    drop(held);

    let (code, _, err) = fluffy(&file, &["runs", "show", "nope"]);
    assert_eq!(code, exit::NOT_FOUND);
    assert!(err.contains("no run `nope`"), "{err}");
    let (code, _, err) = fluffy(&dir.path().join("missing.redb"), &["runs", "list"]);
    assert_eq!(code, exit::NOT_FOUND);
    assert!(err.contains("no store at"), "{err}");
    assert!(!dir.path().join("missing.redb").exists(), "nothing created");
    let (code, _, err) = fluffy(&file, &["runs", "list", "--status", "done"]);
    assert_eq!(code, exit::USAGE);
    assert!(err.contains("`done` is not a run status"), "{err}");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(
        run(["fluffy", "runs", "list"], &mut out, &mut err),
        exit::USAGE
    );
    assert!(String::from_utf8(err).unwrap().contains("no store"));
}

#[test]
fn the_binary_exits_with_the_codes() {
    let dir = tempfile::tempdir().unwrap();
    let fluffy = env!("CARGO_BIN_EXE_fluffy");
    let help = std::process::Command::new(fluffy)
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("runs"));
    let missing = std::process::Command::new(fluffy)
        .args([
            "--store",
            dir.path().to_str().unwrap(),
            "runs",
            "show",
            "q3",
        ])
        .env_remove("FLUFFY_STORE")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(i32::from(exit::NOT_FOUND)));
    assert!(String::from_utf8_lossy(&missing.stderr).starts_with("fluffy: no run `q3`"));
}

/// `a` → `b` → `c`, each logging its name.
fn chain(log: &std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>) -> Agent {
    let mut agent = Agent::new("chain");
    for (name, next) in [("a", Some("b")), ("b", Some("c")), ("c", None)] {
        let log = std::sync::Arc::clone(log);
        agent.add_state(name, move |_ctx: Context| {
            let log = std::sync::Arc::clone(&log);
            async move {
                log.lock().unwrap().push(name);
                Ok(next.map_or(Next::End, Next::to))
            }
        });
    }
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_continues_from_its_checkpoint_and_leaves_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path());
    let path = dir.path();

    // A waiting run forked: the fork has requests of its own, answered apart.
    budget().run_durable(store.clone(), "q3").await.unwrap();
    let (code, text, err) = fluffy(path, &["runs", "fork", "q3", "--to", "q3-b"]);
    assert_eq!(code, exit::OK, "{err}");
    assert!(
        text.starts_with("forked run `q3` (budget) at checkpoint"),
        "{text}"
    );
    let (_, text, _) = fluffy(path, &["inputs", "list", "--json"]);
    let mut ids: Vec<String> = json_of(&text)
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["q3-b/review/1/0", "q3/review/1/0"]);
    let (code, _, err) = fluffy(
        path,
        &[
            "inputs",
            "answer",
            "q3-b",
            "review/1/0",
            r#"{"amount": 7, "approved": false}"#,
        ],
    );
    assert_eq!(code, exit::OK, "{err}");
    let report = budget().run_durable(store.clone(), "q3-b").await.unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!(report.context.get_state::<u32>("amount").unwrap(), 7);
    let (_, text, _) = fluffy(path, &["runs", "show", "q3", "--json"]);
    assert_eq!(
        json_of(&text)["status"],
        "awaiting_input",
        "the original waits still"
    );

    // A completed run forked at an earlier checkpoint runs again what was still to do there.
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    chain(&log)
        .run_durable(store.clone(), "first")
        .await
        .unwrap();
    assert_eq!(*log.lock().unwrap(), ["a", "b", "c"]);
    let (_, text, _) = fluffy(path, &["runs", "show", "first", "--json"]);
    let kept: Vec<u64> = json_of(&text)["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    assert!(kept.len() >= 2, "{kept:?}");
    let earliest = store.load("chain", "first", kept[0]).unwrap().unwrap();
    let still_to_do: Vec<String> = earliest
        .states
        .iter()
        .filter(|s| s.status != flow_core::StateStatus::Completed)
        .map(|s| s.name.clone())
        .collect();
    assert!(!still_to_do.is_empty(), "{kept:?}");
    let from = kept[0].to_string();
    let (code, _, err) = fluffy(
        path,
        &["runs", "fork", "first", "--from", &from, "--to", "again"],
    );
    assert_eq!(code, exit::OK, "{err}");
    log.lock().unwrap().clear();
    let report = chain(&log)
        .run_durable(store.clone(), "again")
        .await
        .unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!(*log.lock().unwrap(), still_to_do);

    // Refusals: its own key, a key in use, a checkpoint not kept.
    let (code, _, err) = fluffy(path, &["runs", "fork", "first", "--to", "first"]);
    assert_eq!(code, exit::USAGE, "{err}");
    let (code, _, err) = fluffy(path, &["runs", "fork", "first", "--to", "again"]);
    assert_eq!(code, exit::USAGE);
    assert!(err.contains("`again` already has checkpoints"), "{err}");
    let (code, _, err) = fluffy(
        path,
        &["runs", "fork", "first", "--from", "999", "--to", "x"],
    );
    assert_eq!(code, exit::NOT_FOUND);
    assert!(err.contains("no checkpoint 999; it keeps"), "{err}");

    // The store's runs as Prometheus text.
    let (code, text, _) = fluffy(path, &["metrics"]);
    assert_eq!(code, exit::OK);
    assert!(
        text.contains("fluffy_runs{workflow=\"budget\",status=\"awaiting_input\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("fluffy_runs{workflow=\"budget\",status=\"completed\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("fluffy_runs{workflow=\"chain\",status=\"completed\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("fluffy_input_requests_waiting{workflow=\"budget\"} 1\n"),
        "{text}"
    );
}

/// `extract` → `clean` and `enrich` in parallel → `load`; `load` fails while the context
/// says so.
fn pipeline() -> Agent {
    let mut agent = Agent::new("pipeline");
    agent
        .add_state("extract", |_ctx: Context| async move {
            Ok(Next::parallel(["clean", "enrich"]))
        })
        .successors(["clean", "enrich"]);
    for name in ["clean", "enrich"] {
        agent
            .add_state(name, |_ctx: Context| async move { Ok(Next::to("load")) })
            .successors(["load"]);
    }
    agent
        .add_state("load", |ctx: Context| async move {
            if ctx.get_state::<bool>("broken").unwrap_or(false) {
                return Err("the warehouse is down".into());
            }
            Ok(Next::End)
        })
        .successors(Vec::<&str>::new());
    agent
}

/// `fluffy` with `registry`: (exit code, stdout, stderr).
fn fluffy_with(registry: &Registry, args: &[&str]) -> (u8, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut full = vec!["fluffy"];
    full.extend_from_slice(args);
    let code = run_with(registry, full, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn a_program_with_its_workflows_draws_them_and_resumes_their_runs() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path());
    let path = dir.path().to_str().unwrap();
    let registry = Registry::new().register(&pipeline()).register(&budget());

    // Graphs: Mermaid, DOT, SVG.
    let (code, text, err) = fluffy_with(&registry, &["graph", "pipeline"]);
    assert_eq!(code, exit::OK, "{err}");
    assert_eq!(
        text,
        "flowchart TD\n    s0([\"extract\"])\n    s1[\"clean\"]\n    s2[\"enrich\"]\n    s3[\"load\"]\n    s0 --> s1\n    s0 --> s2\n    s1 --> s3\n    s2 --> s3\n"
    );
    let (_, text, _) = fluffy_with(&registry, &["graph", "pipeline", "--format", "dot"]);
    assert!(
        text.contains("s0 [label=\"extract\", shape=oval];\n"),
        "{text}"
    );
    assert!(text.contains("    s2 -> s3;\n"), "{text}");
    let (_, text, _) = fluffy_with(&registry, &["graph", "pipeline", "--format", "svg"]);
    assert!(text.starts_with("<svg"), "{text}");
    assert_eq!(text.matches("<g class=\"state\"").count(), 4);
    assert_eq!(text.matches("marker-end=\"url(#arrow)\"").count(), 4);
    let (code, _, err) = fluffy_with(&Registry::new(), &["graph", "pipeline"]);
    assert_eq!(code, exit::USAGE);
    assert!(
        err.contains("is not registered") && err.contains("main_with"),
        "{err}"
    );

    // A run that waits, answered, then resumed here: its steps as they run.
    runtime.block_on(async {
        budget().run_durable(store.clone(), "q3").await.unwrap();
        let broken = Context::new();
        broken.set_state("broken", true);
        let _ = pipeline()
            .run_durable_with(store.clone(), "nightly", broken)
            .await;
    });
    let (code, _, err) = fluffy_with(
        &registry,
        &[
            "--store",
            path,
            "inputs",
            "answer",
            "q3",
            "review/1/0",
            r#"{"amount": 3, "approved": true}"#,
        ],
    );
    assert_eq!(code, exit::OK, "{err}");
    let (code, text, err) = fluffy_with(&registry, &["--store", path, "runs", "resume", "q3"]);
    assert_eq!(code, exit::OK, "{err}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "▶ review", "{text}");
    assert!(lines[1].starts_with("✓ review "), "{text}");
    assert_eq!(lines[2], "▶ spend", "{text}");
    assert!(lines[3].starts_with("✓ spend "), "{text}");
    assert!(
        lines[4].starts_with("run `q3` (budget): completed in "),
        "{text}"
    );
    assert_eq!(lines.len(), 5, "{text}");
    let (_, text, _) = fluffy(dir.path(), &["runs", "show", "q3", "--json"]);
    assert_eq!(json_of(&text)["status"], "completed");

    // A run that fails again says so, with exit code 1; an unregistered one needs its code.
    let (code, text, err) = fluffy_with(&registry, &["--store", path, "runs", "resume", "nightly"]);
    assert_eq!(code, exit::FAILED, "{text}");
    assert!(text.starts_with("▶ load\n✗ load: "), "{text}");
    assert!(text.contains("the warehouse is down"), "{text}");
    assert!(err.contains("run `nightly` failed"), "{err}");
    let (code, _, err) = fluffy_with(&Registry::new(), &["--store", path, "runs", "resume", "q3"]);
    assert_eq!(code, exit::USAGE);
    assert!(err.contains("workflow `budget` is not registered"), "{err}");

    // A run whose latest checkpoint says it runs may run elsewhere: only with --force.
    runtime
        .block_on(budget().run_durable(store.clone(), "live"))
        .unwrap();
    let mut checkpoint = store.latest("budget", "live").unwrap().unwrap();
    checkpoint.status = AgentStatus::Running;
    checkpoint.sequence += 1;
    store.save(&checkpoint).unwrap();
    let (code, _, err) = fluffy_with(&registry, &["--store", path, "runs", "resume", "live"]);
    assert_eq!(code, exit::USAGE);
    assert!(err.contains("may still run in another process"), "{err}");
    let (code, text, err) = fluffy_with(
        &registry,
        &["--store", path, "runs", "resume", "live", "--force"],
    );
    assert_eq!(code, exit::OK, "{err}");
    assert!(text.contains("? review asks: Budget for"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_show_each_attempt_with_its_wait_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path());
    let tries = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut agent = Agent::new("fetching");
    let counted = std::sync::Arc::clone(&tries);
    agent
        .add_state("fetch", move |_ctx: Context| {
            let counted = std::sync::Arc::clone(&counted);
            async move {
                if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    return Err("timed out talking to the API".into());
                }
                Ok(Next::to("store"))
            }
        })
        .retry(flow_core::RetryPolicy {
            max_retries: 1,
            initial_delay: std::time::Duration::from_millis(1),
            ..flow_core::RetryPolicy::DEFAULT
        });
    agent.add_state("store", |_ctx: Context| async move { Ok(Next::End) });
    agent.run_durable(store.clone(), "f1").await.unwrap();

    let (code, text, err) = fluffy(dir.path(), &["runs", "steps", "f1", "--json"]);
    assert_eq!(code, exit::OK, "{err}");
    let attempts = json_of(&text);
    let seen: Vec<(String, u64, String)> = attempts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["state"].as_str().unwrap().to_owned(),
                a["attempt"].as_u64().unwrap(),
                a["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("fetch".into(), 1, "failed".into()),
            ("fetch".into(), 2, "completed".into()),
            ("store".into(), 1, "completed".into()),
        ]
    );
    assert_eq!(attempts[0]["error"], "timed out talking to the API");
    let (code, text, _) = fluffy(dir.path(), &["runs", "steps", "f1"]);
    assert_eq!(code, exit::OK);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("STATE  ATTEMPT  OUTCOME"), "{text}");
    assert!(
        lines[1].starts_with("fetch  1        failed     +0ms"),
        "{text}"
    );
    assert!(lines[1].ends_with("timed out talking to the API"), "{text}");
    assert!(lines[2].starts_with("fetch  2        completed"), "{text}");
    assert_eq!(lines.len(), 4, "{text}");
}

/// `runs cancel`: a waiting run cancelled (who and why shown by `runs show`, kept when asked
/// twice), a completed run refused (exit 4), an unknown key not found (exit 3); the cancelled
/// run is not continued by `run_durable`, and `runs resume` (registered) continues it.
#[test]
fn cancel_stops_a_run_for_good_until_it_is_resumed() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path());
    runtime.block_on(populate(store.clone()));
    let path = dir.path();

    let (code, text, err) = fluffy(
        path,
        &[
            "runs",
            "cancel",
            "q3",
            "--reason",
            "budget frozen",
            "--by",
            "alice",
        ],
    );
    assert_eq!(code, exit::OK, "{err}");
    let sequence = store.latest("budget", "q3").unwrap().unwrap().sequence;
    assert_eq!(
        text,
        format!(
            "cancelled run `q3` (budget) by alice (budget frozen): checkpoint {sequence}; `fluffy runs resume q3` continues it\n"
        )
    );
    let (code, text, _) = fluffy(path, &["runs", "show", "q3"]);
    assert_eq!(code, exit::OK);
    assert!(text.contains("q3   budget    cancelled"), "{text}");
    let line = text
        .lines()
        .find(|line| line.starts_with("cancelled by alice at "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.ends_with(": budget frozen"), "{line}");
    let (_, text, _) = fluffy(path, &["--json", "runs", "show", "q3"]);
    let shown = json_of(&text);
    assert_eq!(shown["status"], "cancelled");
    assert_eq!(shown["cancelled"]["by"], "alice");
    assert_eq!(shown["cancelled"]["reason"], "budget frozen");

    // Asked again: the first request stands.
    let (code, text, _) = fluffy(path, &["--json", "runs", "cancel", "q3", "--by", "bob"]);
    assert_eq!(code, exit::OK);
    let again = json_of(&text);
    assert_eq!(again["outcome"], "already_cancelled");
    assert_eq!(again["by"], "alice");
    assert_eq!(
        store.latest("budget", "q3").unwrap().unwrap().sequence,
        sequence
    );

    let (code, _, err) = fluffy(path, &["runs", "cancel", "nightly"]);
    assert_eq!(code, exit::REFUSED, "{err}");
    assert!(err.contains("it has completed"), "{err}");
    let (code, _, err) = fluffy(path, &["runs", "cancel", "nowhere"]);
    assert_eq!(code, exit::NOT_FOUND, "{err}");

    // Not continued by run_durable; resumed from the command line, it asks again.
    let error = runtime
        .block_on(budget().run_durable(store.clone(), "q3"))
        .unwrap_err();
    assert!(error.to_string().contains("cancelled by alice"), "{error}");
    let registry = Registry::new().register(&budget());
    let (code, text, err) = fluffy_with(
        &registry,
        &["--store", path.to_str().unwrap(), "runs", "resume", "q3"],
    );
    assert_eq!(code, exit::OK, "{err}");
    assert!(text.contains("run `q3` (budget): awaiting_input"), "{text}");
    let latest = store.latest("budget", "q3").unwrap().unwrap();
    assert_eq!(latest.status, AgentStatus::AwaitingInput);
    assert_eq!(latest.cancelled, None);
}
