//! `PgStore` (feature `postgres`) against a throwaway PostgreSQL cluster that the tests start
//! themselves: the conformance suite every store passes, retention in the database, answers,
//! migrations, durable runs, and errors that name the database.
//!
//! Without PostgreSQL's server binaries the tests say how to install them and pass; under CI
//! (`CI=true`) they must run.

mod common;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/store_conformance.rs"]
mod store_conformance;

use std::time::{Duration, SystemTime};

use common::Log;
use fluffy_flow::postgres::{PgBackend, PgStore};
use fluffy_flow::prelude::*;
use fluffy_flow::{CheckpointStore, InputId, PostedAnswer};
use store_conformance::{chain, conformance, sample_checkpoint};

#[tokio::test(start_paused = true)]
async fn the_postgres_store_conforms() {
    let Some(backend) = postgres::backend("conforms").await else {
        return;
    };
    let store = PgStore::new(&backend);
    let raw = store.clone();
    conformance(&store, &|agent, run, seq, bytes| {
        raw.insert_raw(agent, run, seq, bytes).unwrap()
    })
    .await;
    // A second backend on the same database sees the same checkpoints.
    let other = PgStore::new(
        &PgBackend::connect(&postgres::url("conforms"))
            .await
            .unwrap(),
    );
    assert_eq!(other.sequences("chain", "r2").unwrap(), [9]);
    assert!(store.describe().starts_with("postgres store 127.0.0.1:"));
}

#[tokio::test(start_paused = true)]
async fn retention_runs_in_the_database() {
    let Some(backend) = postgres::backend("retention").await else {
        return;
    };
    let store = PgStore::new(&backend);
    let mut template = sample_checkpoint().await;
    let run = template.run_key.clone();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    for (sequence, at) in [(1, 0), (2, 10), (3, 20), (4, 30), (5, 30)] {
        template.sequence = sequence;
        template.created_at = t0 + Duration::from_secs(at);
        store.save(&template).unwrap();
    }
    // By age: 15 s at t0 + 30 s deletes those 30 and 20 s old, then stops at the first
    // younger one.
    let now = t0 + Duration::from_secs(30);
    store
        .prune_older_than("chain", &run, Duration::from_secs(15), now)
        .unwrap();
    assert_eq!(store.sequences("chain", &run).unwrap(), [3, 4, 5]);
    // Exactly as old as the limit counts as old (as every store has it).
    store
        .prune_older_than("chain", &run, Duration::from_secs(10), now)
        .unwrap();
    assert_eq!(store.sequences("chain", &run).unwrap(), [4, 5]);
    // However old, the latest stays.
    store
        .prune_older_than(
            "chain",
            &run,
            Duration::ZERO,
            now + Duration::from_secs(3600),
        )
        .unwrap();
    assert_eq!(store.sequences("chain", &run).unwrap(), [5]);
    // By count.
    for sequence in 6..=9 {
        template.sequence = sequence;
        store.save(&template).unwrap();
    }
    store.prune("chain", &run, 3).unwrap();
    assert_eq!(store.sequences("chain", &run).unwrap(), [7, 8, 9]);
    store.prune("chain", &run, 10).unwrap();
    assert_eq!(store.sequences("chain", &run).unwrap(), [7, 8, 9]);
    store.prune("chain", &run, 0).unwrap();
    assert_eq!(store.sequences("chain", &run).unwrap(), [7, 8, 9]);
    // A sequence PostgreSQL cannot hold is refused, naming it.
    template.sequence = u64::MAX;
    let error = store.save(&template).unwrap_err().to_string();
    assert!(error.contains(&u64::MAX.to_string()), "{error}");
}

#[tokio::test(start_paused = true)]
async fn answers_the_latest_per_request_oldest_first_and_gone_with_the_run() {
    let Some(backend) = postgres::backend("answers").await else {
        return;
    };
    let store = PgStore::new(&backend);
    let id = |n: u32| InputId {
        run_key: "r1".into(),
        state: "review".into(),
        visit: 1,
        index: n,
    };
    let answer = |n: u32, value: &str| PostedAnswer::new(id(n), serde_json::json!(value), "ann");
    store
        .post_answer("chain", "r1", &answer(1, "first"))
        .unwrap();
    store
        .post_answer("chain", "r1", &answer(2, "second"))
        .unwrap();
    store
        .post_answer("chain", "r1", &answer(1, "again"))
        .unwrap();
    store
        .post_answer("chain", "r2", &answer(1, "elsewhere"))
        .unwrap();
    let posted = store.posted_answers("chain", "r1").unwrap();
    let values: Vec<_> = posted
        .iter()
        .map(|a| (a.id.index, a.value.clone()))
        .collect();
    assert_eq!(
        values,
        [
            (2, serde_json::json!("second")),
            (1, serde_json::json!("again"))
        ]
    );
    store.clear_answers("chain", "r1").unwrap();
    assert!(store.posted_answers("chain", "r1").unwrap().is_empty());
    assert_eq!(store.posted_answers("chain", "r2").unwrap().len(), 1);
    store.delete_run("chain", "r2").unwrap();
    assert!(store.posted_answers("chain", "r2").unwrap().is_empty());
}

#[tokio::test]
async fn migrations_apply_once_even_when_workers_start_together() {
    let Some(url) = postgres::database("migrations") else {
        return;
    };
    let (a, b) = tokio::join!(PgBackend::connect(&url), PgBackend::connect(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    let (first, second) = tokio::join!(a.migrate(), b.migrate());
    let applied = first.unwrap() + second.unwrap();
    assert_eq!(applied, 7, "each migration applies once in all");
    assert_eq!(a.migrate().await.unwrap(), 0);
}

#[tokio::test]
async fn a_database_without_the_schema_or_a_wrong_address_is_a_clear_error() {
    let Some(url) = postgres::database("unmigrated") else {
        return;
    };
    let backend = PgBackend::connect(&url).await.unwrap();
    let store = PgStore::new(&backend);
    let error = tokio::task::spawn_blocking(move || store.latest("chain", "r1"))
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(error.contains("has `migrate` been run?"), "{error}");
    assert!(error.contains("/unmigrated"), "{error}");

    // Nothing listens on port 1; the password never appears in the message.
    let error = PgBackend::connect("postgres://ann:s3cret@127.0.0.1:1/flows")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("127.0.0.1:1/flows"), "{error}");
    assert!(!error.contains("s3cret"), "{error}");
    let error = PgBackend::connect("postgres://ann:s3cret@[bad")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("not a PostgreSQL URL") && !error.contains("s3cret"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_durable_run_continues_from_postgres_and_is_not_run_twice() {
    let Some(backend) = postgres::backend("durable").await else {
        return;
    };
    let store = PgStore::new(&backend);
    // A first process got as far as `b` and died (here: its checkpoint is written by hand).
    let mut checkpoint = sample_checkpoint().await;
    checkpoint.run_key = "nightly".into();
    store.save(&checkpoint).unwrap();

    let resumed = Log::default();
    let report = chain(&resumed)
        .run_durable(store.clone(), "nightly")
        .await
        .unwrap();
    assert_eq!(resumed.names(), ["b", "c"]);
    assert!(report.context.get_state::<bool>("c").unwrap());
    // The run's own checkpoints went to the database (the policy keeps the latest 3).
    let kept = store.sequences("chain", "nightly").unwrap();
    assert!((1..=3).contains(&kept.len()), "{kept:?}");

    // Asked again, the completed run answers from its last checkpoint.
    let again = Log::default();
    let report = chain(&again)
        .run_durable(store.clone(), "nightly")
        .await
        .unwrap();
    assert!(again.names().is_empty());
    assert_eq!(report.status, AgentStatus::Completed);
}
