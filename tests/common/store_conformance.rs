//! The conformance suite every checkpoint store passes (included by `checkpoints.rs` and,
//! with the `postgres` feature, `postgres_store.rs`), and the workflow it checkpoints.

use std::time::Duration;

use crate::common::{Log, step};
use fluffy_flow::prelude::*;
use fluffy_flow::{Checkpoint, CheckpointStore, StoredRun};
use tokio::time::sleep;

const MS: Duration = Duration::from_millis(1);

pub fn chain(log: &Log) -> Agent {
    let mut agent = Agent::new("chain");
    step(&mut agent, log, "a", 10, Next::to("b"));
    step(&mut agent, log, "b", 100, Next::to("c"));
    step(&mut agent, log, "c", 10, Next::End);
    agent
}

pub async fn sample_checkpoint() -> Checkpoint {
    let log = Log::default();
    let handle = chain(&log).start().unwrap();
    sleep(MS * 50).await;
    let checkpoint = handle.create_checkpoint().await.unwrap();
    handle.cancel();
    checkpoint
}

/// Writes raw bytes into a store as checkpoint `sequence` of (`agent`, `run`).
pub type Corrupt<'a> = &'a dyn Fn(&str, &str, u64, &[u8]);

/// Every store behaves the same: save, latest, list, load, prune, delete, isolation between
/// workflows and runs, damaged data reported with the store and run named.
pub async fn conformance(store: &dyn CheckpointStore, corrupt: Corrupt<'_>) {
    let base = sample_checkpoint().await;
    let with = |run: &str, sequence: u64| {
        let mut c = base.clone();
        c.run_key = run.to_owned();
        c.sequence = sequence;
        c
    };
    assert!(store.latest("chain", "r1").unwrap().is_none());
    assert!(store.sequences("chain", "r1").unwrap().is_empty());
    for sequence in [1, 2, 3] {
        store.save(&with("r1", sequence)).unwrap();
    }
    store.save(&with("r2", 9)).unwrap();
    let mut other = with("r1", 7);
    other.agent = "another".into();
    store.save(&other).unwrap();

    let latest = store.latest("chain", "r1").unwrap().unwrap();
    assert_eq!((latest.run_key.as_str(), latest.sequence), ("r1", 3));
    assert_eq!(latest.context, base.context);
    assert_eq!(latest.states, base.states);
    assert_eq!(latest.queue, base.queue);
    assert_eq!(store.sequences("chain", "r1").unwrap(), [1, 2, 3]);
    assert_eq!(store.sequences("chain", "r2").unwrap(), [9]);
    assert_eq!(store.sequences("another", "r1").unwrap(), [7]);
    assert_eq!(store.load("chain", "r1", 2).unwrap().unwrap().sequence, 2);
    assert_eq!(
        store.runs().unwrap(),
        [
            StoredRun::new("another", "r1"),
            StoredRun::new("chain", "r1"),
            StoredRun::new("chain", "r2"),
        ]
    );
    assert!(store.load("chain", "r1", 5).unwrap().is_none());

    // Saving the same sequence again replaces it.
    let mut replaced = with("r1", 3);
    replaced.elapsed = Duration::from_secs(42);
    store.save(&replaced).unwrap();
    assert_eq!(
        store.latest("chain", "r1").unwrap().unwrap().elapsed,
        Duration::from_secs(42)
    );

    store.prune("chain", "r1", 2).unwrap();
    assert_eq!(store.sequences("chain", "r1").unwrap(), [2, 3]);
    store.delete("chain", "r1", 3).unwrap();
    assert_eq!(store.latest("chain", "r1").unwrap().unwrap().sequence, 2);
    store.delete_run("chain", "r1").unwrap();
    assert!(store.latest("chain", "r1").unwrap().is_none());
    assert_eq!(
        store.runs().unwrap(),
        [
            StoredRun::new("another", "r1"),
            StoredRun::new("chain", "r2")
        ],
        "a deleted run is not listed"
    );
    assert_eq!(
        store.sequences("chain", "r2").unwrap(),
        [9],
        "other runs untouched"
    );

    // A restored run from what the store gave back completes.
    let resumed = Log::default();
    let checkpoint = store.latest("chain", "r2").unwrap().unwrap();
    chain(&resumed)
        .restore_from_checkpoint(checkpoint)
        .unwrap()
        .result()
        .await
        .unwrap();
    assert_eq!(resumed.names(), ["b", "c"]);

    // An automatic checkpoint's save keeps the latest `keep` with it (0: all).
    for sequence in [1, 2, 3] {
        store.save(&with("r3", sequence)).unwrap();
    }
    store.save_pruned(&with("r3", 4), 2).unwrap();
    assert_eq!(store.sequences("chain", "r3").unwrap(), [3, 4]);
    store.save_pruned(&with("r3", 5), 1).unwrap();
    assert_eq!(store.sequences("chain", "r3").unwrap(), [5]);
    store.save_pruned(&with("r3", 6), 0).unwrap();
    store.save_pruned(&with("r3", 7), 5).unwrap();
    assert_eq!(store.sequences("chain", "r3").unwrap(), [5, 6, 7]);
    assert_eq!(store.latest("chain", "r3").unwrap().unwrap().sequence, 7);

    // Damaged data is an error naming the store and the run.
    let json = base.to_json().unwrap();
    corrupt("chain", "bad", 1, &json[..json.len() - 10]);
    let error = store.latest("chain", "bad").unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, FlowError::CorruptCheckpoint { .. }),
        "{message}"
    );
    assert!(message.contains(&store.describe()), "{message}");
    assert!(
        message.contains("run `bad` of workflow `chain`"),
        "{message}"
    );
}
