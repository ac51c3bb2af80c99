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
    let cluster = match TempCluster::start() {
        Ok(cluster) => cluster,
        Err(error) if std::env::var_os("CI").is_none() && cluster::server_bindir().is_none() => {
            eprintln!("skipping the PostgreSQL CLI test: {error}");
            return;
        }
        Err(error) => panic!("cannot start a PostgreSQL cluster for the test: {error}"),
    };
    let url = cluster.create_database("cli").unwrap();
    let backend = PgBackend::connect(&url).await.unwrap();
    backend.migrate().await.unwrap();
    let store = PgStore::new(&backend);
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
