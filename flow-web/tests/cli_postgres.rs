//! The `fluffy` command line on PostgreSQL (feature `postgres`): a run waiting for input is
//! listed and shown from the database, and an answer left through the CLI continues it.
//!
//! Starts a throwaway cluster (skipped with the install hint where the server binaries are
//! missing; under `CI=true` they must be there).
#![cfg(feature = "postgres")]

use flow_core::{AgentStatus, Next};
use flow_postgres::{PgBackend, PgStore, TempCluster, cluster};
use flow_runtime::{Agent, Context};
use flow_web::cli::{exit, run};
use serde_json::Value;

fn approval() -> Agent {
    let mut agent = Agent::new("approval");
    agent.add_state("review", |ctx: Context| async move {
        let decision: String = ctx.human_input("Ship it?").no_timeout().await?;
        ctx.set_state("decision", decision);
        Ok(Next::End)
    });
    agent.suspend_on_input();
    agent
}

/// A throwaway cluster; `None` (the test skipped, saying why) where the server binaries are
/// missing outside CI.
fn start_cluster() -> Option<TempCluster> {
    match TempCluster::start() {
        Ok(cluster) => Some(cluster),
        Err(error) if std::env::var_os("CI").is_none() && cluster::server_bindir().is_none() => {
            eprintln!("skipping the PostgreSQL CLI test: {error}");
            None
        }
        Err(error) => panic!("cannot start a PostgreSQL cluster for the test: {error}"),
    }
}

/// A migrated database `name` in a throwaway cluster (kept running while the first is held):
/// its URL, backend and store.
async fn database(name: &str) -> Option<(TempCluster, String, PgBackend, PgStore)> {
    let cluster = start_cluster()?;
    let url = cluster.create_database(name).unwrap();
    let backend = PgBackend::connect(&url).await.unwrap();
    backend.migrate().await.unwrap();
    let store = PgStore::new(&backend);
    Some((cluster, url, backend, store))
}

/// The latest checkpoint of run `key` of the `slow` workflow.
async fn latest_of(store: &PgStore, key: &'static str) -> Option<flow_runtime::Checkpoint> {
    use flow_runtime::CheckpointStore;
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.latest("slow", key))
        .await
        .unwrap()
        .unwrap()
}

/// `fluffy --store <url> args…` on a blocking thread: (exit code, stdout, stderr).
async fn fluffy(url: &str, args: &[&str]) -> (u8, String, String) {
    let mut full: Vec<String> = vec!["fluffy".into(), "--store".into(), url.into()];
    full.extend(args.iter().map(|arg| (*arg).to_owned()));
    tokio::task::spawn_blocking(move || {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(full, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_and_answers_runs_kept_in_postgres() {
    let Some((cluster, url, _backend, store)) = database("cli").await else {
        return;
    };
    let report = approval()
        .run_durable(store.clone(), "release-7")
        .await
        .unwrap();
    assert_eq!(report.status, AgentStatus::AwaitingInput);

    let (code, text, err) = fluffy(&url, &["runs", "list", "--json"]).await;
    assert_eq!(code, exit::OK, "{err}");
    let listed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["key"], "release-7");
    assert_eq!(listed[0]["status"], "awaiting_input");
    assert_eq!(listed[0]["pending_inputs"], 1);

    // A text request takes the text as it is.
    let (code, _, err) = fluffy(
        &url,
        &["inputs", "answer", "release-7", "review/1/0", "yes"],
    )
    .await;
    assert_eq!(code, exit::OK, "{err}");
    let report = approval().run_durable(store, "release-7").await.unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!(
        report.context.get_state::<String>("decision").unwrap(),
        "yes"
    );
    let (_, text, _) = fluffy(&url, &["runs", "show", "release-7"]).await;
    assert!(text.contains("release-7  approval  completed"), "{text}");

    // A wrong address is an error naming the database, never the password.
    let wrong = format!("postgres://fluffy:s3cret@127.0.0.1:{}/nope", cluster.port());
    let (code, _, err) = fluffy(&wrong, &["runs", "list"]).await;
    assert_eq!(code, exit::FAILED);
    assert!(!err.contains("s3cret") && err.contains("nope"), "{err}");
}

/// `prepare`, then `train` runs for a minute (stopped sooner by every test).
fn slow() -> Agent {
    let mut agent = Agent::new("slow");
    agent.add_state(
        "prepare",
        |_ctx: Context| async move { Ok(Next::to("train")) },
    );
    agent.add_state("train", |_ctx: Context| async move {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        Ok(Next::End)
    });
    agent
}

/// A run on a worker is cancelled from the command line through the database (the worker,
/// asked with `NOTIFY fluffy_cancels`, stops it and records it cancelled), or, from the
/// worker's own process, at once; a request made again finds the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_a_worker_is_cancelled_through_the_database() {
    use flow_postgres::{QueueStatus, Worker};
    use std::time::Duration;

    let Some((_cluster, url, backend, store)) = database("cancel").await else {
        return;
    };
    let shutdown = flow_postgres::CancellationToken::new();
    let worker = Worker::new(&backend).register(&slow());
    let working = tokio::spawn(worker.run(shutdown.clone()));
    for key in ["train-1", "train-2"] {
        backend.submit("slow", key, &Context::new()).await.unwrap();
    }
    // Both in `train`: checkpointed after `prepare`.
    for key in ["train-1", "train-2"] {
        let mut running = false;
        for _ in 0..400 {
            if latest_of(&store, key)
                .await
                .is_some_and(|c| c.status == AgentStatus::Running)
            {
                running = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(running, "`{key}` never started");
    }

    // As another process would: the same database under another name, so that the worker of
    // this process is not found in it, and the request goes through the database.
    let elsewhere = url.replace("127.0.0.1", "localhost");
    assert_ne!(elsewhere, url);
    let (code, text, err) = fluffy(
        &elsewhere,
        &[
            "runs",
            "cancel",
            "train-1",
            "--reason",
            "wrong data",
            "--by",
            "ops",
        ],
    )
    .await;
    assert_eq!(code, exit::OK, "{err}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("asked ") && lines[0].contains("to stop run `train-1` (slow)"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("cancelled run `train-1` (slow) by ops (wrong data), stopped by "),
        "{text}"
    );
    let ended = backend
        .wait_for("slow", "train-1", Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(ended.status, QueueStatus::Cancelled);
    let latest = latest_of(&store, "train-1").await.unwrap();
    assert_eq!(latest.status, AgentStatus::Cancelled);
    let record = latest.cancelled.unwrap();
    assert_eq!(
        (record.by.as_str(), record.reason.as_str()),
        ("ops", "wrong data")
    );

    // Asked again: the first request stands.
    let (code, text, _) = fluffy(&elsewhere, &["--json", "runs", "cancel", "train-1"]).await;
    assert_eq!(code, exit::OK);
    let again: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(again["outcome"], "already_cancelled");
    assert_eq!(again["by"], "ops");

    // Resumed from a program with the workflow registered: back in the queue, a worker
    // continues it (its checkpoint no longer says cancelled); cancelled again, it stops again.
    let registry = flow_web::Registry::new().register(&slow());
    let args: Vec<String> = ["fluffy", "--store", &elsewhere, "runs", "resume", "train-1"]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect();
    let (code, text) = tokio::task::spawn_blocking(move || {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = flow_web::cli::run_with(&registry, args, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap() + &String::from_utf8(err).unwrap(),
        )
    })
    .await
    .unwrap();
    assert_eq!(code, exit::OK, "{text}");
    assert_eq!(
        text,
        "queued run `train-1` (slow) again: a worker continues it from its latest checkpoint\n"
    );
    let mut claimed_again = false;
    for _ in 0..400 {
        let run = backend
            .queued_run("slow", "train-1")
            .await
            .unwrap()
            .unwrap();
        if run.status == QueueStatus::Running && run.claims == 2 {
            claimed_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(claimed_again, "train-1 was not claimed again");
    let latest = latest_of(&store, "train-1").await.unwrap();
    assert_eq!(latest.cancelled, None);
    let (code, text, err) = fluffy(&elsewhere, &["runs", "cancel", "train-1", "--by", "bob"]).await;
    assert_eq!(code, exit::OK, "{err}");
    assert!(
        text.contains("cancelled run `train-1` (slow) by bob, stopped by "),
        "{text}"
    );

    // From the worker's own process: stopped there at once.
    let (code, text, err) = fluffy(&url, &["runs", "cancel", "train-2"]).await;
    assert_eq!(code, exit::OK, "{err}");
    assert!(
        text.contains("runs in this process: told to stop"),
        "{text}"
    );
    let ended = backend
        .wait_for("slow", "train-2", Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(ended.status, QueueStatus::Cancelled);

    shutdown.cancel();
    let report = working.await.unwrap().unwrap();
    assert_eq!(report.claimed, 3);
}
