//! Cancelling a durable run by its key (`CheckpointStore::cancel_run`): a run in this process
//! stops, one waiting in its store is marked, one that may run elsewhere is refused unless
//! forced; a cancelled run stays cancelled until `resume_durable`. On the paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{
    AttemptOutcome, CancelOutcome, CancelRecord, CheckpointStore, FileStore, MemoryStore, RedbStore,
};
use tokio::task::JoinHandle;
use tokio::time::sleep;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `agent`'s durable run `key` in `store`, started in the background.
fn spawn_run<S: CheckpointStore + Clone + 'static>(
    agent: &Agent,
    store: &S,
    key: &'static str,
) -> JoinHandle<Result<RunReport, FlowError>> {
    let (agent, store) = (agent.clone(), store.clone());
    tokio::spawn(async move { agent.run_durable(store, key).await })
}

/// Cancels run `k` of `workflow` after `yields` turns of the tokio schedule; the request
/// reaches the run (`Stopping`) or its checkpoint (`Cancelled`), never nothing.
async fn cancel_after(store: &MemoryStore, workflow: &str, yields: u32) -> CancelOutcome {
    for _ in 0..yields {
        tokio::task::yield_now().await;
    }
    let outcome = store
        .cancel_run(workflow, "k", CancelRecord::new("ops", "race"), false)
        .unwrap();
    assert!(
        matches!(
            outcome,
            CancelOutcome::Stopping | CancelOutcome::Cancelled { .. }
        ),
        "{outcome:?} after {yields} yields"
    );
    outcome
}

/// `fetch` (counted), then `train` (counted) sleeps `train_ms`, then `publish` (counted).
fn pipeline(calls: &Arc<[AtomicU32; 3]>, train_ms: u64) -> Agent {
    let mut agent = Agent::new("pipeline");
    for (index, (name, next)) in [("fetch", "train"), ("train", "publish"), ("publish", "")]
        .into_iter()
        .enumerate()
    {
        let calls = Arc::clone(calls);
        agent.add_state(name, move |ctx: Context| {
            let calls = Arc::clone(&calls);
            async move {
                calls[index].fetch_add(1, Ordering::SeqCst);
                if index == 1 {
                    sleep(ms(train_ms)).await;
                }
                ctx.set_state(name, true);
                Ok(if next.is_empty() {
                    Next::End
                } else {
                    Next::to(next)
                })
            }
        });
    }
    agent
}

fn counts(calls: &[AtomicU32; 3]) -> [u32; 3] {
    [0, 1, 2].map(|i| calls[i].load(Ordering::SeqCst))
}

/// A run of this process is stopped at once, whatever moment the request comes, and stays
/// cancelled: `run_durable` returns it as it ended, `resume_durable` finishes it.
#[tokio::test(start_paused = true)]
async fn a_run_in_this_process_stops_and_stays_cancelled_until_resumed() {
    for cancel_at in [1, 500, 999] {
        let store = MemoryStore::new();
        let calls: Arc<[AtomicU32; 3]> = Arc::default();
        let agent = pipeline(&calls, 1000);
        let run = spawn_run(&agent, &store, "nightly");
        sleep(ms(cancel_at)).await;
        let outcome = store
            .cancel_run(
                "pipeline",
                "nightly",
                CancelRecord::new("ops", "bad data"),
                false,
            )
            .unwrap();
        assert_eq!(
            outcome,
            CancelOutcome::Stopping,
            "cancelled at {cancel_at} ms"
        );
        let error = run.await.unwrap().unwrap_err();
        assert!(
            matches!(&error, FlowError::CancelledOnRequest { by, reason, .. } if by == "ops" && reason == "bad data"),
            "{error}"
        );
        assert_eq!(counts(&calls), [1, 1, 0]);

        let latest = store.latest("pipeline", "nightly").unwrap().unwrap();
        assert_eq!(latest.status, AgentStatus::Cancelled);
        let record = latest.cancelled.clone().unwrap();
        assert_eq!(
            (record.by.as_str(), record.reason.as_str()),
            ("ops", "bad data")
        );
        let train = latest.attempts.iter().find(|a| a.state == "train").unwrap();
        assert_eq!(train.outcome, AttemptOutcome::Cancelled);

        // Asked again, it is not continued.
        let again = agent
            .run_durable(store.clone(), "nightly")
            .await
            .unwrap_err();
        assert_eq!(again.to_string(), error.to_string());
        assert!(
            again.to_string().contains("fluffy runs resume nightly"),
            "{again}"
        );
        assert_eq!(counts(&calls), [1, 1, 0]);
        assert_eq!(
            store.sequences("pipeline", "nightly").unwrap().len(),
            latest.sequence as usize
        );
        // A second request finds the first one's record.
        let twice = store
            .cancel_run("pipeline", "nightly", CancelRecord::new("bob", ""), false)
            .unwrap();
        assert_eq!(twice, CancelOutcome::AlreadyCancelled(record));

        // Resumed, it runs what was left (train again, then publish), and no longer says
        // cancelled.
        let resumed = agent
            .resume_durable(store.clone(), "nightly")
            .await
            .unwrap();
        assert_eq!(resumed.status, AgentStatus::Completed);
        assert_eq!(counts(&calls), [1, 2, 1]);
        let latest = store.latest("pipeline", "nightly").unwrap().unwrap();
        assert_eq!(latest.cancelled, None);
    }
}

/// A run not running anywhere (here: one that failed, and one stopped through its handle) is
/// marked cancelled in a new checkpoint, in every store; its states are not called again.
#[tokio::test(start_paused = true)]
async fn a_stopped_run_is_marked_cancelled_in_every_store() {
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<Arc<dyn CheckpointStore>> = vec![
        Arc::new(MemoryStore::new()),
        Arc::new(FileStore::new(dir.path().join("files"))),
        Arc::new(RedbStore::open(dir.path().join("runs.redb")).unwrap()),
    ];
    for store in stores {
        let calls: Arc<[AtomicU32; 3]> = Arc::default();
        let agent = pipeline(&calls, 1000);
        // Stopped through its handle: no record, so `run_durable` would continue it.
        let run = spawn_run(&agent, &store, "weekly");
        sleep(ms(10)).await;
        agent.cancel_all();
        let error = run.await.unwrap().unwrap_err();
        assert!(matches!(error, FlowError::Cancelled { .. }), "{error}");
        let before = store.latest("pipeline", "weekly").unwrap().unwrap();
        assert_eq!(before.cancelled, None);

        let outcome = store
            .cancel_run(
                "pipeline",
                "weekly",
                CancelRecord::new("ops", "replaced"),
                false,
            )
            .unwrap();
        assert_eq!(
            outcome,
            CancelOutcome::Cancelled {
                sequence: before.sequence + 1
            },
            "{}",
            store.describe()
        );
        let error = agent
            .run_durable(Arc::clone(&store), "weekly")
            .await
            .unwrap_err();
        assert!(
            matches!(error, FlowError::CancelledOnRequest { .. }),
            "{error}"
        );
        assert_eq!(counts(&calls), [1, 1, 0], "{}", store.describe());
    }
}

/// What cannot be cancelled is refused, saying why: a completed run, a run with no
/// checkpoint, and a run whose checkpoint says running while it does not run here (it may run
/// elsewhere), unless forced; forced, what was running is recorded as cancelled.
#[tokio::test(start_paused = true)]
async fn what_cannot_be_cancelled_is_refused_with_the_reason() {
    let store = MemoryStore::new();
    let calls: Arc<[AtomicU32; 3]> = Arc::default();
    let agent = pipeline(&calls, 10);
    agent.run_durable(store.clone(), "done").await.unwrap();
    let error = store
        .cancel_run("pipeline", "done", CancelRecord::new("ops", ""), false)
        .unwrap_err();
    assert!(matches!(error, FlowError::CancelRefused { .. }), "{error}");
    assert!(error.to_string().contains("it has completed"), "{error}");

    let error = store
        .cancel_run("pipeline", "never", CancelRecord::new("ops", ""), true)
        .unwrap_err();
    assert!(matches!(error, FlowError::NoCheckpoint { .. }), "{error}");

    // A checkpoint taken while `train` ran, as a process that died would have left it.
    let mut running = store.load("pipeline", "done", 2).unwrap().unwrap();
    assert_eq!(running.status, AgentStatus::Running);
    running.run_key = "elsewhere".into();
    running.sequence = 1;
    running.attempts.retain(|a| a.state != "train");
    let mut train = running.attempts[0].clone();
    train.state = "train".into();
    train.outcome = AttemptOutcome::Running;
    train.ended_at_ms = None;
    running.attempts.push(train);
    store.save(&running).unwrap();
    let error = store
        .cancel_run("pipeline", "elsewhere", CancelRecord::new("ops", ""), false)
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("says it is running"), "{message}");
    assert!(message.contains("--force"), "{message}");
    assert_eq!(store.sequences("pipeline", "elsewhere").unwrap(), [1]);

    let outcome = store
        .cancel_run("pipeline", "elsewhere", CancelRecord::new("ops", ""), true)
        .unwrap();
    assert_eq!(outcome, CancelOutcome::Cancelled { sequence: 2 });
    let latest = store.latest("pipeline", "elsewhere").unwrap().unwrap();
    let train = latest.attempts.iter().find(|a| a.state == "train").unwrap();
    assert_eq!(train.outcome, AttemptOutcome::Cancelled);
    assert!(train.ended_at_ms.is_some());
}

/// The record is written in the checkpoint's JSON and read back.
#[test]
fn the_cancel_record_survives_the_checkpoint_format() {
    let store = MemoryStore::new();
    let calls: Arc<[AtomicU32; 3]> = Arc::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let run = tokio::spawn({
            let (agent, store) = (pipeline(&calls, 1000), store.clone());
            async move { agent.run_durable(store, "k").await }
        });
        sleep(ms(5)).await;
        store
            .cancel_run("pipeline", "k", CancelRecord::new("ops", "why"), false)
            .unwrap();
        run.await.unwrap().unwrap_err();
    });
    let latest = store.latest("pipeline", "k").unwrap().unwrap();
    let json = latest.to_json().unwrap();
    let back = fluffy_flow::Checkpoint::from_json(&json, "test", "pipeline", "k").unwrap();
    assert_eq!(back.format, fluffy_flow::CHECKPOINT_FORMAT);
    assert_eq!(back.cancelled, latest.cancelled);
    assert_eq!(back.cancelled.unwrap().reason, "why");
}

/// A store that knows who holds a run (as PostgreSQL's does) asks the holder: the outcome
/// names it and the checkpoint is left to the holder to write.
#[tokio::test(start_paused = true)]
async fn a_store_that_knows_the_holder_asks_it() {
    struct Held(MemoryStore);
    impl CheckpointStore for Held {
        fn describe(&self) -> String {
            "held store".into()
        }
        fn save(&self, checkpoint: &fluffy_flow::Checkpoint) -> Result<(), FlowError> {
            self.0.save(checkpoint)
        }
        fn latest(
            &self,
            agent: &str,
            run: &str,
        ) -> Result<Option<fluffy_flow::Checkpoint>, FlowError> {
            self.0.latest(agent, run)
        }
        fn sequences(&self, agent: &str, run: &str) -> Result<Vec<u64>, FlowError> {
            self.0.sequences(agent, run)
        }
        fn load(
            &self,
            agent: &str,
            run: &str,
            sequence: u64,
        ) -> Result<Option<fluffy_flow::Checkpoint>, FlowError> {
            self.0.load(agent, run, sequence)
        }
        fn delete(&self, agent: &str, run: &str, sequence: u64) -> Result<(), FlowError> {
            self.0.delete(agent, run, sequence)
        }
        fn ask_holder_to_cancel(
            &self,
            _agent: &str,
            run: &str,
            record: &CancelRecord,
        ) -> Result<Option<String>, FlowError> {
            Ok((run == "held" && record.by == "ops").then(|| "worker-2".to_owned()))
        }
    }
    let memory = MemoryStore::new();
    let calls: Arc<[AtomicU32; 3]> = Arc::default();
    pipeline(&calls, 10)
        .run_durable(memory.clone(), "done")
        .await
        .unwrap();
    // A checkpoint taken while `train` ran, under a key no run of this process has.
    let mut running = memory.load("pipeline", "done", 2).unwrap().unwrap();
    assert_eq!(running.status, AgentStatus::Running);
    running.run_key = "held".into();
    running.sequence = 1;
    memory.save(&running).unwrap();
    let store = Held(memory.clone());
    let before = store.latest("pipeline", "held").unwrap().unwrap();
    let outcome = store
        .cancel_run("pipeline", "held", CancelRecord::new("ops", ""), false)
        .unwrap();
    assert_eq!(
        outcome,
        CancelOutcome::Requested {
            holder: "worker-2".into()
        }
    );
    assert_eq!(
        store.latest("pipeline", "held").unwrap().unwrap().sequence,
        before.sequence
    );
}

/// A request that comes while a run starts (before, during and after it reads its checkpoint,
/// at several points of the tokio schedule) is never lost: the run ends cancelled with the
/// record, and is not continued afterwards.
#[tokio::test(start_paused = true)]
async fn a_request_while_the_run_starts_is_never_lost() {
    for yields in 0..8 {
        let store = MemoryStore::new();
        let calls: Arc<[AtomicU32; 3]> = Arc::default();
        let agent = pipeline(&calls, 1000);
        // First stopped through its handle: a checkpoint without a record, continued when
        // run again.
        let first = spawn_run(&agent, &store, "k");
        sleep(ms(10)).await;
        agent.cancel_all();
        first.await.unwrap().unwrap_err();
        let before = store.latest("pipeline", "k").unwrap().unwrap().sequence;

        let again = spawn_run(&agent, &store, "k");
        cancel_after(&store, "pipeline", yields).await;
        let error = again.await.unwrap().unwrap_err();
        assert!(
            matches!(&error, FlowError::CancelledOnRequest { reason, .. } if reason == "race"),
            "{error} after {yields} yields"
        );
        let latest = store.latest("pipeline", "k").unwrap().unwrap();
        assert!(latest.sequence > before);
        assert_eq!(
            latest.cancelled.unwrap().reason,
            "race",
            "after {yields} yields"
        );
        // `train` ran at most twice (once before, once if the second run got to it), and
        // `publish` never.
        assert_eq!(calls[2].load(Ordering::SeqCst), 0);
    }
}

/// A resumed run says so before it runs anything: its first checkpoint (running, no record)
/// is written at once, so that another process neither finds it cancelled nor resumes it too.
#[tokio::test(start_paused = true)]
async fn a_resumed_run_no_longer_says_cancelled_while_its_first_state_runs() {
    let store = MemoryStore::new();
    let calls: Arc<[AtomicU32; 3]> = Arc::default();
    let agent = pipeline(&calls, 1000);
    let run = spawn_run(&agent, &store, "k");
    sleep(ms(10)).await;
    store
        .cancel_run("pipeline", "k", CancelRecord::new("ops", ""), false)
        .unwrap();
    run.await.unwrap().unwrap_err();
    let cancelled = store.latest("pipeline", "k").unwrap().unwrap();

    let resumed = tokio::spawn({
        let (agent, store) = (agent.clone(), store.clone());
        async move { agent.resume_durable(store, "k").await }
    });
    sleep(ms(100)).await; // `train` runs for 1000 ms
    let latest = store.latest("pipeline", "k").unwrap().unwrap();
    assert_eq!(latest.sequence, cancelled.sequence + 1);
    assert_eq!(latest.status, AgentStatus::Running);
    assert_eq!(latest.cancelled, None);
    assert_eq!(calls[1].load(Ordering::SeqCst), 2, "train runs again");
    assert!(fluffy_flow::runs_in_this_process(&store, "pipeline", "k"));
    // Another memory store with the same run key is another run.
    assert!(!fluffy_flow::runs_in_this_process(
        &MemoryStore::new(),
        "pipeline",
        "k"
    ));
    assert_eq!(
        resumed.await.unwrap().unwrap().status,
        AgentStatus::Completed
    );
    assert!(!fluffy_flow::runs_in_this_process(&store, "pipeline", "k"));
}

/// A request that comes while a run ends (before, during and after it saves its last
/// checkpoint, at several points of the tokio schedule) is never lost either: the run sees it,
/// or it is made to that checkpoint. Either way the run is not continued afterwards.
#[tokio::test(start_paused = true)]
async fn a_request_while_the_run_ends_is_never_lost() {
    for yields in 0..40 {
        let store = MemoryStore::new();
        let calls = Arc::new(AtomicU32::new(0));
        let mut agent = Agent::new("failing");
        let counted = Arc::clone(&calls);
        agent.add_state("work", move |_ctx: Context| {
            let counted = Arc::clone(&counted);
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                sleep(ms(10)).await;
                Err("the source is down".into())
            }
        });
        let run = spawn_run(&agent, &store, "k");
        sleep(ms(10)).await;
        let outcome = cancel_after(&store, "failing", yields).await;
        run.await.unwrap().unwrap_err();
        let latest = store.latest("failing", "k").unwrap().unwrap();
        assert_eq!(
            latest.cancelled.map(|record| record.reason).as_deref(),
            Some("race"),
            "{outcome:?} after {yields} yields"
        );
        let error = agent.run_durable(store.clone(), "k").await.unwrap_err();
        assert!(
            matches!(&error, FlowError::CancelledOnRequest { reason, .. } if reason == "race"),
            "{error} after {yields} yields"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "after {yields} yields");
    }
}

/// Once a run's completed checkpoint is saved, a request is refused with the reason, though
/// the run is still listed here until it ends (what a dashboard sees when it cancels a run
/// whose page already says completed). The store holds the run there: its save of the
/// completed checkpoint returns only when the test lets it go.
#[tokio::test(start_paused = true)]
async fn a_run_whose_completed_checkpoint_is_saved_is_refused_at_once() {
    struct SlowToFinish {
        inner: MemoryStore,
        release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
        completed: tokio::sync::Notify,
    }
    impl CheckpointStore for SlowToFinish {
        fn describe(&self) -> String {
            "slow-to-finish store".into()
        }
        fn save(&self, checkpoint: &fluffy_flow::Checkpoint) -> Result<(), FlowError> {
            self.inner.save(checkpoint)?;
            if checkpoint.status == AgentStatus::Completed {
                self.completed.notify_one();
                let _ = self.release.lock().unwrap().recv();
            }
            Ok(())
        }
        fn latest(
            &self,
            agent: &str,
            run: &str,
        ) -> Result<Option<fluffy_flow::Checkpoint>, FlowError> {
            self.inner.latest(agent, run)
        }
        fn sequences(&self, agent: &str, run: &str) -> Result<Vec<u64>, FlowError> {
            self.inner.sequences(agent, run)
        }
        fn load(
            &self,
            agent: &str,
            run: &str,
            sequence: u64,
        ) -> Result<Option<fluffy_flow::Checkpoint>, FlowError> {
            self.inner.load(agent, run, sequence)
        }
        fn delete(&self, agent: &str, run: &str, sequence: u64) -> Result<(), FlowError> {
            self.inner.delete(agent, run, sequence)
        }
    }
    let (release, released) = std::sync::mpsc::channel();
    let store = Arc::new(SlowToFinish {
        inner: MemoryStore::new(),
        release: std::sync::Mutex::new(released),
        completed: tokio::sync::Notify::new(),
    });
    let calls: Arc<[AtomicU32; 3]> = Arc::default();
    let agent = pipeline(&calls, 10);
    let run = spawn_run(&agent, &store, "k");
    // (Waited for without the clock: it stands still while the save blocks its thread.)
    store.completed.notified().await;
    assert_eq!(
        store.latest("pipeline", "k").unwrap().unwrap().status,
        AgentStatus::Completed
    );
    assert!(fluffy_flow::runs_in_this_process(
        store.as_ref(),
        "pipeline",
        "k"
    ));
    let error = store
        .cancel_run("pipeline", "k", CancelRecord::new("ops", "late"), false)
        .unwrap_err();
    assert!(
        matches!(&error, FlowError::CancelRefused { reason, .. } if reason.contains("it has completed")),
        "{error}"
    );
    // (Let go: this and any later save return.)
    drop(release);
    run.await.unwrap().unwrap();
    assert_eq!(counts(&calls), [1, 1, 1]);
    assert_eq!(
        store.latest("pipeline", "k").unwrap().unwrap().cancelled,
        None
    );
}
