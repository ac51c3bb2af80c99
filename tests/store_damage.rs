//! A damaged redb store file is an error naming the file, never a panic and never an empty
//! store that silently starts every run over.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{Checkpoint, CheckpointStore, RedbStore};

const PAGE: usize = 4096;

/// A real checkpoint: a run paused in the middle of a fan-out.
async fn checkpoint() -> Checkpoint {
    let mut agent = Agent::new("damage");
    agent
        .add_state("start", |ctx: Context| async move {
            ctx.set_state("payload", "x".repeat(2000));
            Ok(Next::parallel(["a", "b"]))
        })
        .successors(["a", "b"]);
    for name in ["a", "b"] {
        agent
            .add_state(name, |_ctx: Context| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(Next::to("merge"))
            })
            .successors(["merge"]);
    }
    agent.add_state("merge", |_ctx: Context| async { Ok(Next::End) });
    let handle = agent.start().unwrap();
    let checkpoint = handle.pause().await.unwrap();
    handle.cancel();
    checkpoint
}

/// What using a store file does, every call guarded: `None` if a panic got out.
fn use_store(path: &std::path::Path) -> Option<&'static str> {
    catch_unwind(AssertUnwindSafe(|| {
        let store = match RedbStore::open(path) {
            Ok(store) => store,
            Err(FlowError::CorruptStore { store, .. }) => {
                assert!(store.contains(&path.display().to_string()), "{store}");
                return "refused at open";
            }
            Err(other) => panic!("unexpected error kind: {other}"),
        };
        let mut outcome = "opened and read";
        for run in ["r0", "r1", "r2"] {
            match store.latest("damage", run) {
                Ok(_) => {}
                Err(FlowError::CorruptStore { .. } | FlowError::CorruptCheckpoint { .. }) => {
                    outcome = "refused on read"
                }
                Err(other) => panic!("unexpected error kind: {other}"),
            }
            let _ = store.sequences("damage", run);
        }
        drop(store);
        outcome
    }))
    .ok()
}

#[tokio::test]
async fn every_damaged_page_is_an_error_or_a_readable_store_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("flows.redb");
    {
        let store = RedbStore::open(&original).unwrap();
        let mut checkpoint = checkpoint().await;
        for (i, run) in ["r0", "r1", "r2"].iter().enumerate() {
            checkpoint.run_key = run.to_string();
            for sequence in 1..=2 {
                checkpoint.sequence = sequence + i as u64;
                store.save(&checkpoint).unwrap();
            }
        }
    }
    let bytes = std::fs::read(&original).unwrap();
    let pages = bytes.len().div_ceil(PAGE);
    assert!(pages >= 4, "a store of {} bytes", bytes.len());
    let (mut panics, mut refused, mut readable) = (0, 0, 0);
    for page in 0..pages {
        let mut damaged = bytes.clone();
        let end = ((page + 1) * PAGE).min(damaged.len());
        damaged[page * PAGE..end].fill(0);
        let path = dir.path().join(format!("page{page}.redb"));
        std::fs::write(&path, &damaged).unwrap();
        match use_store(&path) {
            None => panics += 1,
            Some("opened and read") => readable += 1,
            Some(_) => refused += 1,
        }
    }
    eprintln!("{pages} pages damaged: {refused} refused, {readable} readable, {panics} panics");
    assert_eq!(
        panics, 0,
        "{pages} pages damaged: {refused} refused, {readable} readable"
    );
    assert!(
        refused > 0,
        "damage went unnoticed on every one of {pages} pages"
    );
}

#[test]
fn an_empty_or_foreign_file_is_refused_not_taken_as_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.redb");
    std::fs::write(&empty, b"").unwrap();
    let Err(FlowError::CorruptStore { store, message }) = RedbStore::open(&empty) else {
        panic!("an empty file opened as a store");
    };
    assert!(store.contains("empty.redb"), "{store}");
    assert!(message.contains("empty"), "{message}");
    let error = RedbStore::open(&empty).err().unwrap().to_string();
    assert!(error.contains("restore the file from a backup"), "{error}");

    let foreign = dir.path().join("notes.redb");
    std::fs::write(&foreign, "these are not checkpoints\n".repeat(500)).unwrap();
    assert!(matches!(
        RedbStore::open(&foreign),
        Err(FlowError::CorruptStore { .. })
    ));

    // A file the store creates itself starts empty, and opens again.
    let fresh = dir.path().join("fresh.redb");
    RedbStore::open(&fresh).unwrap();
    let store = RedbStore::open(&fresh).unwrap();
    assert!(store.latest("any", "run").unwrap().is_none());
}

#[test]
fn a_store_opened_twice_says_to_clone_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.redb");
    let first = RedbStore::open(&path).unwrap();
    let Err(error @ FlowError::StoreInUse { .. }) = RedbStore::open(&path) else {
        panic!("a second open of one file succeeded or failed otherwise");
    };
    assert!(error.to_string().contains("clone the store"), "{error}");
    assert!(error.to_string().contains("flows.redb"), "{error}");
    // The clone works.
    let second = first.clone();
    assert!(second.latest("any", "run").unwrap().is_none());
}
