//! Checkpoints: what they hold, restoring them (completed states do not run again, in-flight
//! ones do), automatic checkpoints, durable runs, damaged data, and one conformance suite run
//! against every store.

mod common;
#[path = "common/store_conformance.rs"]
mod store_conformance;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{Log, step};
use fluffy_flow::prelude::*;
use fluffy_flow::{
    CHECKPOINT_FORMAT, Checkpoint, CheckpointPolicy, CheckpointStore, DependencyType, FileStore,
    MemoryStore, QueuePlace, RedbStore, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use store_conformance::{chain, conformance, sample_checkpoint};
use tokio::time::{Instant, sleep};

const MS: Duration = Duration::from_millis(1);

fn fan(log: &Log) -> Agent {
    let mut agent = Agent::new("fan");
    step(&mut agent, log, "start", 0, Next::parallel(["x", "y"]));
    step(&mut agent, log, "x", 10, Next::to("merge"));
    step(&mut agent, log, "y", 50, Next::to("merge"));
    step(&mut agent, log, "merge", 0, Next::End);
    agent
}

fn waits(log: &Log) -> Agent {
    let mut agent = Agent::new("waits");
    step(&mut agent, log, "a", 0, Next::parallel(["b", "c"]));
    step(&mut agent, log, "b", 100, Next::End);
    step(&mut agent, log, "c", 0, Next::to("d"));
    step(&mut agent, log, "d", 0, Next::End).depends_on("b", DependencyType::Required);
    agent
}

#[tokio::test(start_paused = true)]
async fn a_restored_run_skips_completed_states_and_reruns_the_one_in_flight() {
    let log = Log::default();
    let handle = chain(&log).start().unwrap();
    sleep(MS * 50).await;
    let checkpoint = handle.create_checkpoint().await.unwrap();
    handle.cancel();
    handle.wait().await;
    assert_eq!(checkpoint.format, CHECKPOINT_FORMAT);
    assert_eq!(checkpoint.agent, "chain");
    assert_eq!(checkpoint.status, AgentStatus::Running);
    assert_eq!(checkpoint.completed().collect::<Vec<_>>(), ["a"]);
    assert_eq!(checkpoint.queue.len(), 1);
    assert_eq!(checkpoint.queue[0].state, "b");
    assert_eq!(checkpoint.queue[0].place, QueuePlace::Running);
    assert_eq!(checkpoint.state("b").unwrap().runs, 1);
    assert_eq!(checkpoint.context.keys(), ["a"]);

    // Through JSON, into a fresh agent of the same definition.
    let json = checkpoint.to_json().unwrap();
    let checkpoint = Checkpoint::from_json(&json, "test", "chain", "1").unwrap();
    let resumed = Log::default();
    let report = chain(&resumed)
        .restore_from_checkpoint(checkpoint)
        .unwrap()
        .result()
        .await
        .unwrap();
    assert_eq!(resumed.names(), ["b", "c"], "a completed; b was in flight");
    assert_eq!(report.state("a").unwrap().runs, 1);
    assert_eq!(report.state("b").unwrap().runs, 2);
    for key in ["a", "b", "c"] {
        assert!(report.context.get_state::<bool>(key).unwrap());
    }
}

#[tokio::test(start_paused = true)]
async fn a_join_restored_mid_fan_out_still_runs_once() {
    let log = Log::default();
    let handle = fan(&log).start().unwrap();
    sleep(MS * 20).await;
    let checkpoint = handle.create_checkpoint().await.unwrap();
    handle.cancel();
    handle.wait().await;
    assert_eq!(
        checkpoint.waiting,
        ["merge"],
        "x's branch is held at the join"
    );
    let report = resume_fan(checkpoint).await;
    assert_eq!(report.state("x").unwrap().runs, 1);
}

/// Restores a checkpoint of `fan` taken while `x` is held at the join and `y` runs: `y` runs
/// again, then `merge`, once.
async fn resume_fan(checkpoint: Checkpoint) -> RunReport {
    let resumed = Log::default();
    let report = fan(&resumed)
        .restore_from_checkpoint(checkpoint)
        .unwrap()
        .result()
        .await
        .unwrap();
    assert_eq!(resumed.names(), ["y", "merge"]);
    assert_eq!(report.state("merge").unwrap().runs, 1);
    report
}

/// Rewrites a checkpoint as format 1 wrote it: groups instead of scopes, no arrivals, no
/// fields format 2 added to scopes.
fn as_format_1(json: &[u8]) -> Vec<u8> {
    let mut value: serde_json::Value = serde_json::from_slice(json).unwrap();
    value["format"] = 1.into();
    for state in value["states"].as_array_mut().unwrap() {
        state.as_object_mut().unwrap().remove("arrivals");
    }
    let joins = value["scheduler"]["joins"].as_object_mut().unwrap();
    let mut scopes = joins.remove("scopes").unwrap();
    for scope in scopes.as_array_mut().unwrap() {
        let Some(scope) = scope.as_object_mut() else {
            continue;
        };
        scope.remove("spent");
        scope.insert("live".into(), 2.into());
    }
    joins.insert("groups".into(), scopes);
    serde_json::to_vec(&value).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_format_1_checkpoint_reads_as_format_2_and_finishes_the_run() {
    let handle = fan(&Log::default()).start().unwrap();
    sleep(MS * 20).await;
    let json = handle.create_checkpoint().await.unwrap().to_json().unwrap();
    handle.cancel();
    handle.wait().await;
    let old = as_format_1(&json);
    assert!(String::from_utf8_lossy(&old).contains("\"groups\""));
    let checkpoint = Checkpoint::from_json(&old, "s", "fan", "r").unwrap();
    assert_eq!(checkpoint.format, CHECKPOINT_FORMAT);
    assert_eq!(checkpoint.states.iter().map(|s| s.arrivals).sum::<u32>(), 0);
    resume_fan(checkpoint).await;
}

/// A state that fails twice, then succeeds; 5 retries, 100 ms doubling.
fn flaky(calls: Arc<AtomicU32>) -> Agent {
    let mut agent = Agent::new("flaky");
    agent
        .add_state_with_error("call", move |ctx: Context| {
            let calls = calls.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n < 3 {
                    return Err(format!("attempt {n} failed"));
                }
                ctx.set_state("done", n);
                Ok(Next::End)
            }
        })
        .retry(RetryPolicy {
            max_retries: 5,
            initial_delay: MS * 100,
            ..RetryPolicy::default()
        });
    agent
}

#[tokio::test(start_paused = true)]
async fn a_retry_waiting_at_checkpoint_time_keeps_its_attempt_and_remaining_delay() {
    let calls = Arc::new(AtomicU32::new(0));
    let handle = flaky(calls.clone()).start().unwrap();
    sleep(MS * 30).await; // attempt 1 failed at 0; attempt 2 is due at 100 ms
    let checkpoint = handle.create_checkpoint().await.unwrap();
    handle.cancel();
    handle.wait().await;
    assert_eq!(checkpoint.queue[0].attempt, 2);
    assert_eq!(checkpoint.queue[0].place, QueuePlace::Retry(MS * 70));

    let restored_at = Instant::now();
    let report = flaky(calls.clone())
        .restore_from_checkpoint(checkpoint)
        .unwrap()
        .result()
        .await
        .unwrap();
    // Attempt 2 at +70 ms (fails), attempt 3 after 200 ms more (succeeds): the schedule goes on.
    assert_eq!(restored_at.elapsed(), MS * 270);
    assert_eq!(report.state("call").unwrap().attempts, 3);
    assert_eq!(report.context.get_state::<u32>("done").unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn numbers_a_definition_cannot_produce_are_refused_not_waited_for() {
    let calls = Arc::new(AtomicU32::new(0));
    let handle = flaky(calls.clone()).start().unwrap();
    sleep(MS * 30).await;
    let json = handle.create_checkpoint().await.unwrap().to_json().unwrap();
    handle.cancel();
    handle.wait().await;
    let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let damage = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut value = value.clone();
        change(&mut value["scheduler"]["work"][0]);
        Checkpoint::from_json(&serde_json::to_vec(&value).unwrap(), "s", "flaky", "r").unwrap()
    };
    // A retry delay of u64::MAX seconds (it used to leave the restored run waiting for ever).
    let forever = damage(&|work| {
        work["place"] = serde_json::json!({"Retry": {"secs": u64::MAX, "nanos": 0}});
    });
    let error = flaky(calls.clone())
        .restore_from_checkpoint(forever)
        .err()
        .unwrap();
    let FlowError::CorruptCheckpoint { message, .. } = &error else {
        panic!("{error:?}");
    };
    assert!(message.contains("state `call` waits"), "{message}");
    assert!(message.contains("max_delay"), "{message}");
    // An attempt beyond the policy.
    let beyond = damage(&|work| work["attempt"] = 99.into());
    let error = flaky(calls.clone())
        .restore_from_checkpoint(beyond)
        .err()
        .unwrap();
    assert!(error.to_string().contains("attempt 99"), "{error}");
    // The checkpoint as taken restores.
    let fine = damage(&|_| {});
    let report = flaky(calls)
        .restore_from_checkpoint(fine)
        .unwrap()
        .result()
        .await;
    assert_eq!(report.unwrap().state("call").unwrap().attempts, 3);
}

#[tokio::test(start_paused = true)]
async fn a_dependency_wait_is_restored() {
    let log = Log::default();
    let handle = waits(&log).start().unwrap();
    sleep(MS * 10).await;
    let checkpoint = handle.create_checkpoint().await.unwrap();
    handle.cancel();
    handle.wait().await;
    assert_eq!(checkpoint.waiting, ["d"]);
    assert_eq!(checkpoint.state("d").unwrap().status, StateStatus::Blocked);
    let resumed = Log::default();
    let agent = waits(&resumed);
    let handle = agent.restore_from_checkpoint(checkpoint).unwrap();
    sleep(MS * 50).await;
    assert_eq!(handle.blocked().await.len(), 1, "d still waits for b");
    handle.result().await.unwrap();
    assert_eq!(resumed.names(), ["b", "d"]);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Model {
    name: String,
    weights: Vec<f64>,
    tags: BTreeMap<String, u32>,
}

#[tokio::test(start_paused = true)]
async fn typed_values_come_back_as_their_types() {
    let mut agent = Agent::new("typed");
    agent.add_state("train", |ctx: Context| async move {
        ctx.set_state(
            "model",
            Model {
                name: "m".into(),
                weights: vec![0.5, -1.25],
                tags: BTreeMap::from([("epoch".into(), 3)]),
            },
        );
        ctx.set_state("scores", vec![95u8, 87, 92]);
        ctx.set_state("note", Some("ok".to_string()));
        Ok(Next::to("wait"))
    });
    agent.add_state("wait", |_ctx: Context| async {
        sleep(Duration::from_secs(1)).await;
        Ok(Next::End)
    });
    let handle = agent.start().unwrap();
    sleep(MS * 10).await;
    let checkpoint = handle.create_checkpoint().await.unwrap();
    handle.cancel();
    let json = checkpoint.to_json().unwrap();
    let checkpoint = Checkpoint::from_json(&json, "test", "typed", "1").unwrap();
    let model: Model = checkpoint.context.get("model").unwrap();
    assert_eq!(model.weights, [0.5, -1.25]);
    let report = agent
        .restore_from_checkpoint(checkpoint)
        .unwrap()
        .result()
        .await
        .unwrap();
    let model: Model = report.context.get_state("model").unwrap();
    assert_eq!(model.tags["epoch"], 3);
    assert_eq!(
        report.context.get_state::<Vec<u8>>("scores").unwrap(),
        [95, 87, 92]
    );
    assert_eq!(
        report.context.get_state::<Option<String>>("note").unwrap(),
        Some("ok".into())
    );
    assert!(report.context.get_state::<String>("scores").is_err());
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_restores_only_into_its_own_definition() {
    let log = Log::default();
    let handle = chain(&log).start().unwrap();
    sleep(MS * 50).await;
    let checkpoint = handle.create_checkpoint().await.unwrap();
    handle.cancel();

    let mut renamed = Agent::new("chain");
    step(&mut renamed, &log, "a", 10, Next::to("bb"));
    step(&mut renamed, &log, "bb", 100, Next::to("c"));
    step(&mut renamed, &log, "c", 10, Next::End);
    let error = renamed
        .restore_from_checkpoint(checkpoint.clone())
        .err()
        .unwrap();
    assert_eq!(
        error.to_string(),
        format!(
            "checkpoint of run `{}` of workflow `chain` cannot be restored into workflow `chain`: its states differ from this definition's (missing here: [b]; new here: [bb]); restore it into the definition it was taken of",
            checkpoint.run_key
        )
    );

    let mut rewired = Agent::new("chain");
    step(&mut rewired, &log, "a", 10, Next::to("c"));
    step(&mut rewired, &log, "b", 100, Next::to("c"));
    step(&mut rewired, &log, "c", 10, Next::End);
    let error = rewired
        .restore_from_checkpoint(checkpoint.clone())
        .err()
        .unwrap();
    assert!(
        matches!(&error, FlowError::CheckpointMismatch { reason, .. } if reason.contains("transitions")),
        "{error}"
    );

    let error = Agent::new("other")
        .restore_from_checkpoint(checkpoint)
        .err()
        .unwrap();
    assert!(matches!(error, FlowError::NoStates { .. }), "{error}");
}

#[tokio::test(start_paused = true)]
async fn damaged_checkpoint_data_is_an_error_naming_store_and_run_never_a_panic() {
    let json = sample_checkpoint().await.to_json().unwrap();
    let error =
        Checkpoint::from_json(&json[..json.len() / 2], "file store /x", "chain", "r7").unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with(
            "checkpoint of run `r7` of workflow `chain` in file store /x is unreadable: "
        ),
        "{message}"
    );
    // Every truncation and many byte flips: errors, or (rarely) a checkpoint that is refused
    // when restored; never a panic.
    for cut in (0..json.len()).step_by(7) {
        assert!(Checkpoint::from_json(&json[..cut], "s", "chain", "r").is_err());
    }
    let agent = chain(&Log::default());
    for position in (0..json.len()).step_by(5) {
        let mut bytes = json.clone();
        bytes[position] ^= 0x15;
        refused_or_ends(&agent, &bytes, &format!("flipping byte {position}")).await;
    }
    fuzz_numbers(&json, &agent).await;
    remove_each_field(&json, &agent).await;
    // The same over a checkpoint taken mid-fan-out (a held join), one with a dependency wait
    // and one with a retry waiting for its delay.
    fn flaky_agent(_: &Log) -> Agent {
        flaky(Arc::new(AtomicU32::new(0)))
    }
    for (build, at) in [
        (fan as fn(&Log) -> Agent, 20),
        (waits, 10),
        (flaky_agent, 30),
    ] {
        let agent = build(&Log::default());
        let handle = agent.start().unwrap();
        sleep(MS * at).await;
        let json = handle.create_checkpoint().await.unwrap().to_json().unwrap();
        handle.cancel();
        fuzz_numbers(&json, &agent).await;
        remove_each_field(&json, &agent).await;
    }
    // A field given twice is refused.
    let twice = String::from_utf8(json.clone()).unwrap().replacen(
        &format!("\"format\":{CHECKPOINT_FORMAT},"),
        &format!("\"format\":{CHECKPOINT_FORMAT},\"format\":{CHECKPOINT_FORMAT},"),
        1,
    );
    assert!(Checkpoint::from_json(twice.as_bytes(), "s", "chain", "r").is_err());
    let newer = String::from_utf8(json.clone()).unwrap().replacen(
        &format!("\"format\":{CHECKPOINT_FORMAT}"),
        "\"format\":99",
        1,
    );
    let error = Checkpoint::from_json(newer.as_bytes(), "s", "chain", "r").unwrap_err();
    assert_eq!(
        error,
        FlowError::CheckpointTooNew {
            store: "s".into(),
            agent: "chain".into(),
            run: "r".into(),
            format: 99,
            supported: CHECKPOINT_FORMAT,
        }
    );
    assert!(
        error
            .to_string()
            .ends_with("upgrade fluffy-flow to restore it"),
        "{error}"
    );
}

/// Removes each field of a checkpoint in turn (every object at every depth): each is refused
/// or restores into a run that ends normally.
async fn remove_each_field(json: &[u8], agent: &Agent) {
    let value: serde_json::Value = serde_json::from_slice(json).unwrap();
    let mut all = Vec::new();
    common::json_fields(&value, 3, &mut Vec::new(), &mut all);
    assert!(all.len() > 20, "{} fields", all.len());
    for path in all {
        let mut damaged = value.clone();
        let (last, parents) = path.split_last().unwrap();
        let mut at = &mut damaged;
        for step in parents {
            at = match at {
                serde_json::Value::Array(items) => &mut items[step.parse::<usize>().unwrap()],
                other => &mut other[step.as_str()],
            };
        }
        at.as_object_mut().unwrap().remove(last);
        let bytes = serde_json::to_vec(&damaged).unwrap();
        refused_or_ends(agent, &bytes, &format!("removing {}", path.join("."))).await;
    }
}

/// Changes each digit of a checkpoint to 0 and to 9 (still valid JSON, so the checks and the
/// rebuilt scheduler must cope): each is refused or restores into a run that ends normally.
async fn fuzz_numbers(json: &[u8], agent: &Agent) {
    for position in 0..json.len() {
        if !json[position].is_ascii_digit() {
            continue;
        }
        for digit in [b'0', b'9'] {
            let mut bytes = json.to_vec();
            bytes[position] = digit;
            let around = position.saturating_sub(60)..(position + 20).min(bytes.len());
            let what = format!(
                "a {} at byte {position} ({})",
                digit as char,
                String::from_utf8_lossy(&bytes[around])
            );
            refused_or_ends(agent, &bytes, &what).await;
        }
    }
}

/// Damaged checkpoint bytes are refused when read or restored, or restore into a run that
/// ends: its coordinator never dies. `what` says what was damaged.
async fn refused_or_ends(agent: &Agent, bytes: &[u8], what: &str) {
    if let Ok(checkpoint) = Checkpoint::from_json(bytes, "s", agent.name(), "r")
        && let Ok(handle) = agent.restore_from_checkpoint(checkpoint)
    {
        let report = tokio::time::timeout(Duration::from_secs(3600), handle.wait())
            .await
            .expect("the restored run ends");
        assert!(
            !matches!(report.error, Some(FlowError::RunLost { .. })),
            "{what} killed the coordinator"
        );
    }
}

/// A store shared behind `Arc<dyn CheckpointStore>` (chosen at run time) is a store, with the
/// shared one's own methods (its `runs`, its retention), and durable runs take it.
#[tokio::test(start_paused = true)]
async fn a_shared_store_conforms_and_runs_durably() {
    // (redb: a store that overrides the trait's defaults, answers among them, which the
    // default refuses: a method the `Arc` did not pass on would show.)
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("flows.redb")).unwrap();
    let raw = store.clone();
    let shared: std::sync::Arc<dyn CheckpointStore> = std::sync::Arc::new(store);
    conformance(&shared, &|agent, run, seq, bytes| {
        raw.insert_raw(agent, run, seq, bytes).unwrap()
    })
    .await;
    let id: fluffy_flow::InputId = "k/review/1/0".parse().unwrap();
    shared
        .post_answer(
            "chain",
            "k",
            &fluffy_flow::PostedAnswer::new(id.clone(), serde_json::json!("yes"), "ana"),
        )
        .unwrap();
    let answers = shared.posted_answers("chain", "k").unwrap();
    assert_eq!((answers.len(), answers[0].id == id), (1, true));
    let log = Log::default();
    let report = chain(&log)
        .run_durable(std::sync::Arc::clone(&shared), "shared")
        .await
        .unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!(log.names(), ["a", "b", "c"]);
    assert!(shared.latest("chain", "shared").unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn the_memory_store_conforms() {
    let store = MemoryStore::new();
    let raw = store.clone();
    conformance(&store, &|agent, run, seq, bytes| {
        raw.insert_raw(agent, run, seq, bytes)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_file_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path());
    let raw = store.clone();
    conformance(&store, &|agent, run, seq, bytes| {
        let path = raw.file_of(agent, run, seq);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    })
    .await;
    // Names that are not file names stay inside the store's directory.
    let mut odd = sample_checkpoint().await;
    odd.run_key = "../../escape me".into();
    store.save(&odd).unwrap();
    assert_eq!(store.sequences("chain", "../../escape me").unwrap(), [1]);
    assert!(
        store
            .file_of("chain", "../../escape me", 1)
            .starts_with(dir.path())
    );
    // No temporary file is left behind.
    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[tokio::test(start_paused = true)]
async fn the_redb_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("flows.redb")).unwrap();
    let raw = store.clone();
    conformance(&store, &|agent, run, seq, bytes| {
        raw.insert_raw(agent, run, seq, bytes).unwrap()
    })
    .await;
    // Reopened, it still has what was committed.
    drop(store);
    drop(raw);
    let store = RedbStore::open(dir.path().join("flows.redb")).unwrap();
    assert_eq!(store.sequences("chain", "r2").unwrap(), [9]);
}

#[tokio::test(start_paused = true)]
async fn automatic_checkpoints_follow_the_policy() {
    let log = Log::default();
    let store = MemoryStore::new();
    let mut agent = chain(&log);
    agent.checkpoints(store.clone(), CheckpointPolicy::after_each_state());
    let report = agent.run().await.unwrap();
    let run = report.run_key.to_string();
    // Three completions and the final one; the policy keeps the latest three.
    assert_eq!(store.sequences("chain", &run).unwrap(), [2, 3, 4]);
    let last = store.latest("chain", &run).unwrap().unwrap();
    assert_eq!(last.status, AgentStatus::Completed);
    assert_eq!(last.completed().count(), 3);
    let after_b = store.load("chain", &run, 2).unwrap().unwrap();
    assert_eq!(after_b.completed().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(after_b.queue[0].state, "c");

    // By interval: every 25 ms of a 120 ms run.
    let store = MemoryStore::new();
    let mut agent = chain(&Log::default());
    agent.checkpoints(
        store.clone(),
        CheckpointPolicy {
            keep: 0,
            ..CheckpointPolicy::every(MS * 25)
        },
    );
    let report = agent.run().await.unwrap();
    let sequences = store.sequences("chain", &report.run_key).unwrap();
    assert_eq!(
        sequences,
        [1, 2, 3, 4, 5],
        "at 25, 50, 75, 100 ms, and the final one"
    );
}

/// A store whose saves block until released, counting them.
#[derive(Clone, Default)]
struct GatedStore {
    inner: MemoryStore,
    open: Arc<(Mutex<bool>, Condvar)>,
    saves: Arc<AtomicUsize>,
}

impl GatedStore {
    fn release(&self) {
        *self.open.0.lock().unwrap() = true;
        self.open.1.notify_all();
    }
}

impl CheckpointStore for GatedStore {
    fn describe(&self) -> String {
        "gated store".into()
    }
    fn save(&self, checkpoint: &Checkpoint) -> Result<(), FlowError> {
        let (lock, signal) = &*self.open;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = signal.wait(open).unwrap();
        }
        self.saves.fetch_add(1, Ordering::SeqCst);
        self.inner.save(checkpoint)
    }
    fn latest(&self, agent: &str, run: &str) -> Result<Option<Checkpoint>, FlowError> {
        self.inner.latest(agent, run)
    }
    fn sequences(&self, agent: &str, run: &str) -> Result<Vec<u64>, FlowError> {
        self.inner.sequences(agent, run)
    }
    fn load(&self, agent: &str, run: &str, sequence: u64) -> Result<Option<Checkpoint>, FlowError> {
        self.inner.load(agent, run, sequence)
    }
    fn delete(&self, agent: &str, run: &str, sequence: u64) -> Result<(), FlowError> {
        self.inner.delete(agent, run, sequence)
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_store_does_not_hold_up_the_scheduler() {
    let mut agent = Agent::new("many");
    let n = 1000;
    for i in 0..n {
        let next = if i + 1 < n {
            Next::to(format!("s{}", i + 1))
        } else {
            Next::End
        };
        agent.add_state(format!("s{i}"), move |ctx: Context| {
            let next = next.clone();
            async move {
                ctx.set_state("last", i);
                Ok(next)
            }
        });
    }
    let store = GatedStore::default();
    agent.checkpoints(store.clone(), CheckpointPolicy::after_each_state());
    let handle = agent.start().unwrap();
    // Every state completes while the first save is stuck.
    while handle.counts().completed < n as u64 {
        tokio::task::yield_now().await;
    }
    assert_eq!(store.saves.load(Ordering::SeqCst), 0);
    store.release();
    let report = handle.result().await.unwrap();
    // The first image (taken after `s0`), then the final one: the completions in between
    // were merged into it, as the run ended while the first save was stuck.
    assert_eq!(store.saves.load(Ordering::SeqCst), 2);
    let last = store.latest("many", &report.run_key).unwrap().unwrap();
    assert_eq!(last.context.get::<u32>("last").unwrap(), n - 1);
}

#[tokio::test(start_paused = true)]
async fn a_durable_run_continues_from_its_store_and_is_not_run_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.redb");
    // A first process got as far as `b` and died (here: its checkpoint is written by hand).
    let log = Log::default();
    let handle = chain(&log).start().unwrap();
    sleep(MS * 50).await;
    let mut checkpoint = handle.create_checkpoint().await.unwrap();
    handle.cancel();
    checkpoint.run_key = "nightly".into();
    RedbStore::open(&path).unwrap().save(&checkpoint).unwrap();

    let resumed = Log::default();
    let report = chain(&resumed)
        .run_durable(RedbStore::open(&path).unwrap(), "nightly")
        .await
        .unwrap();
    assert_eq!(resumed.names(), ["b", "c"]);
    assert!(report.context.get_state::<bool>("c").unwrap());

    // Asked again, the completed run answers from its last checkpoint.
    let again = Log::default();
    let report = chain(&again)
        .run_durable(RedbStore::open(&path).unwrap(), "nightly")
        .await
        .unwrap();
    assert!(again.names().is_empty());
    assert_eq!(report.status, AgentStatus::Completed);
    assert!(report.context.get_state::<bool>("c").unwrap());

    // A new key starts afresh.
    let fresh = Log::default();
    chain(&fresh)
        .run_durable(RedbStore::open(&path).unwrap(), "tomorrow")
        .await
        .unwrap();
    assert_eq!(fresh.names(), ["a", "b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_durable_run_retries_the_failed_state_and_nothing_before_it() {
    fn flaky(log: &Log, up: Arc<std::sync::atomic::AtomicBool>) -> Agent {
        let mut agent = Agent::new("flaky_chain");
        step(&mut agent, log, "a", 0, Next::parallel(["b", "c"]));
        step(&mut agent, log, "b", 0, Next::to("d"));
        step(&mut agent, log, "c", 0, Next::to("d"));
        let log = log.clone();
        agent
            .add_state_with_error("d", move |ctx: Context| {
                let (log, up) = (log.clone(), up.clone());
                async move {
                    log.push("d");
                    if !up.load(Ordering::SeqCst) {
                        return Err("down".to_string());
                    }
                    ctx.set_state("d", true);
                    Ok(Next::End)
                }
            })
            .terminal();
        agent
    }
    let store = MemoryStore::new();
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let log = Log::default();
    let error = flaky(&log, up.clone())
        .run_durable(store.clone(), "r")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("state `d` failed"), "{error}");
    let last = store.latest("flaky_chain", "r").unwrap().unwrap();
    assert_eq!(last.status, AgentStatus::Failed);
    assert_eq!(last.queue.len(), 1);
    assert_eq!(
        (last.queue[0].state.as_str(), last.queue[0].attempt),
        ("d", 1)
    );

    up.store(true, Ordering::SeqCst);
    let again = Log::default();
    let report = flaky(&again, up)
        .run_durable(store.clone(), "r")
        .await
        .unwrap();
    assert_eq!(again.names(), ["d"], "a, b and c had completed");
    assert_eq!(report.state("d").unwrap().runs, 2);
    assert!(report.context.get_state::<bool>("b").unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_durable_run_continues_with_what_was_running() {
    let store = MemoryStore::new();
    let log = Log::default();
    let agent = chain(&log);
    let run = {
        let (agent, store) = (agent.clone(), store.clone());
        tokio::spawn(async move { agent.run_durable(store, "r").await })
    };
    sleep(MS * 50).await; // `b` runs
    agent.cancel_all();
    assert!(matches!(
        run.await.unwrap(),
        Err(FlowError::Cancelled { .. })
    ));
    let last = store.latest("chain", "r").unwrap().unwrap();
    assert_eq!(last.status, AgentStatus::Cancelled);
    assert_eq!(last.queue[0].place, QueuePlace::Running);

    let again = Log::default();
    chain(&again).run_durable(store, "r").await.unwrap();
    assert_eq!(again.names(), ["b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn runs_get_their_own_keys_and_a_restore_numbers_above_what_is_kept() {
    let store = MemoryStore::new();
    let mut agent = chain(&Log::default());
    agent.checkpoints(
        store.clone(),
        CheckpointPolicy {
            keep: 0,
            ..CheckpointPolicy::after_each_state()
        },
    );
    let first = agent.run().await.unwrap();
    let second = agent.run().await.unwrap();
    assert_ne!(first.run_key, second.run_key, "keys are unique per run");
    assert_eq!(
        store.sequences("chain", &first.run_key).unwrap(),
        [1, 2, 3, 4]
    );

    // Restoring the checkpoint taken after `a` (sequence 1) while 2..4 are kept: the
    // restored run's checkpoints come after them, so `latest` is the restored run's.
    let early = store.load("chain", &first.run_key, 1).unwrap().unwrap();
    let resumed = Log::default();
    let mut again = chain(&resumed);
    again.checkpoints(
        store.clone(),
        CheckpointPolicy {
            keep: 0,
            ..CheckpointPolicy::after_each_state()
        },
    );
    let report = again
        .restore_from_checkpoint(early)
        .unwrap()
        .result()
        .await
        .unwrap();
    assert_eq!(report.run_key, first.run_key);
    assert_eq!(resumed.names(), ["b", "c"]);
    assert_eq!(
        store.sequences("chain", &first.run_key).unwrap(),
        [1, 2, 3, 4, 5, 6, 7]
    );
    let latest = store.latest("chain", &first.run_key).unwrap().unwrap();
    assert_eq!(
        (latest.sequence, latest.status),
        (7, AgentStatus::Completed)
    );
}

#[tokio::test(start_paused = true)]
async fn a_restored_ready_state_keeps_its_acquisition_timeout() {
    use fluffy_flow::{ResourcePool, ResourceRequirements};
    fn pooled() -> Agent {
        let mut agent = Agent::new("pooled");
        agent.resource_pool(ResourcePool::new(ResourceRequirements {
            cpu: 1.0,
            ..ResourceRequirements::NONE
        }));
        agent
            .add_state("start", |_ctx: Context| async {
                Ok(Next::parallel(["hog", "late"]))
            })
            .successors(["hog", "late"]);
        for (name, wait) in [("hog", 1000), ("late", 0)] {
            agent
                .add_state(name, move |_ctx: Context| async move {
                    sleep(MS * wait).await;
                    Ok(Next::End)
                })
                .terminal()
                .resources(ResourceRequirements {
                    cpu: 1.0,
                    ..ResourceRequirements::NONE
                })
                .acquire_timeout(MS * 100);
        }
        agent
    }
    let handle = pooled().start().unwrap();
    sleep(MS * 10).await; // `hog` holds the CPU, `late` waits for it
    let checkpoint = handle.create_checkpoint().await.unwrap();
    handle.cancel();
    let places: Vec<(&str, QueuePlace)> = checkpoint
        .queue
        .iter()
        .map(|q| (q.state.as_str(), q.place))
        .collect();
    assert_eq!(
        places,
        [("hog", QueuePlace::Running), ("late", QueuePlace::Ready)]
    );
    let restored_at = Instant::now();
    let error = pooled()
        .restore_from_checkpoint(checkpoint)
        .unwrap()
        .result()
        .await
        .unwrap_err();
    assert!(
        matches!(&error, FlowError::ResourceTimeout { state, .. } if state == "late"),
        "{error}"
    );
    assert_eq!(restored_at.elapsed(), MS * 100);
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_of_another_workflow_or_a_policy_asking_nothing_is_refused() {
    let checkpoint = sample_checkpoint().await;
    // Same states, another name.
    let mut other = Agent::new("other");
    let log = Log::default();
    step(&mut other, &log, "a", 10, Next::to("b"));
    step(&mut other, &log, "b", 100, Next::to("c"));
    step(&mut other, &log, "c", 10, Next::End);
    let error = other.restore_from_checkpoint(checkpoint).err().unwrap();
    assert_eq!(
        error.to_string(),
        format!(
            "checkpoint of run `{}` of workflow `chain` cannot be restored into workflow `other`: it was taken of another workflow; restore it into an agent built from that workflow's definition",
            match &error {
                FlowError::CheckpointMismatch { run, .. } => run.clone(),
                _ => String::new(),
            }
        )
    );

    let mut agent = chain(&Log::default());
    agent.checkpoints(MemoryStore::new(), CheckpointPolicy::default());
    let error = agent.run().await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("the checkpoint policy asks for no checkpoint"),
        "{error}"
    );

    let error = chain(&Log::default())
        .create_checkpoint()
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "workflow `chain` has no run to checkpoint; start one with `start` or `run` first"
    );
}

#[tokio::test(start_paused = true)]
async fn a_durable_run_can_use_the_agents_own_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("flows.redb")).unwrap();
    let log = Log::default();
    let mut agent = chain(&log);
    agent.checkpoints(store.clone(), CheckpointPolicy::after_each_state());
    let first = agent.run_durable_in_agent_store("nightly").await.unwrap();
    assert_eq!(first.status, AgentStatus::Completed);
    let ran = log.names().len();
    // The same key again: the completed run's report, nothing runs.
    let again = agent.run_durable_in_agent_store("nightly").await.unwrap();
    assert_eq!(again.status, AgentStatus::Completed);
    assert_eq!(log.names().len(), ran);
    assert!(store.latest("chain", "nightly").unwrap().is_some());
    let error = chain(&Log::default())
        .run_durable_in_agent_store("nightly")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no checkpoint store"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_restored_runs_report_says_what_ran_before_it() {
    let handle = chain(&Log::default()).start().unwrap();
    sleep(MS * 15).await;
    let checkpoint = handle.pause().await.unwrap();
    handle.cancel();
    let sequence = checkpoint.sequence;
    let before: Vec<(String, u32)> = checkpoint
        .states
        .iter()
        .map(|s| (s.name.clone(), s.runs))
        .collect();
    let report = chain(&Log::default())
        .restore_from_checkpoint(checkpoint)
        .unwrap()
        .result()
        .await
        .unwrap();
    assert_eq!(report.restored_from, Some(sequence));
    for (name, runs_before) in before {
        let state = report.state(&name).unwrap();
        assert_eq!(state.restored_runs, runs_before, "{name}");
        assert!(state.runs >= runs_before, "{name}");
    }
    assert!(report.states.iter().any(|s| s.restored_runs == 1));
    assert!(
        report
            .states
            .iter()
            .any(|s| s.restored_runs == 0 && s.runs == 1)
    );
    // A fresh run was restored from nothing.
    assert_eq!(
        chain(&Log::default()).run().await.unwrap().restored_from,
        None
    );
}

#[tokio::test(start_paused = true)]
async fn checkpoints_older_than_the_policys_age_are_deleted_keeping_the_latest() {
    // By the store: checkpoints 30, 20, 10 and 0 s old; an age of 15 s deletes the first two.
    let store = MemoryStore::new();
    let mut agent = chain(&Log::default());
    agent.checkpoints(
        store.clone(),
        CheckpointPolicy {
            keep: 0,
            ..CheckpointPolicy::after_each_state()
        },
    );
    let report = agent.run().await.unwrap();
    let run = report.run_key.to_string();
    let mut template = store.latest("chain", &run).unwrap().unwrap();
    let t0 = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let store = MemoryStore::new();
    for (sequence, at) in [(1, 0), (2, 10), (3, 20), (4, 30)] {
        template.sequence = sequence;
        template.created_at = t0 + Duration::from_secs(at);
        store.save(&template).unwrap();
    }
    let now = t0 + Duration::from_secs(30);
    store
        .prune_older_than("chain", &run, Duration::from_secs(15), now)
        .unwrap();
    assert_eq!(store.sequences("chain", &run).unwrap(), [3, 4]);
    // However old, the latest stays.
    store
        .prune_older_than(
            "chain",
            &run,
            Duration::ZERO,
            now + Duration::from_secs(3600),
        )
        .unwrap();
    assert_eq!(store.sequences("chain", &run).unwrap(), [4]);

    // By the policy, after every save: with no age allowed, only the latest is left.
    let store = MemoryStore::new();
    let mut agent = chain(&Log::default());
    agent.checkpoints(
        store.clone(),
        CheckpointPolicy {
            keep: 0,
            max_age: Some(Duration::ZERO),
            ..CheckpointPolicy::after_each_state()
        },
    );
    let report = agent.run().await.unwrap();
    assert_eq!(store.sequences("chain", &report.run_key).unwrap(), [4]);
}
