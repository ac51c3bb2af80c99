//! Workers on the PostgreSQL run queue (feature `postgres`): runs claimed once each across
//! workers, leases that lapse and pass on with the old holder's writes refused, a worker cut
//! off from the database, idempotent submits, failures recorded, a stopping worker giving
//! its runs back, and a worker that never claims again what it still runs. Each test starts its workers in this process, each with a backend
//! (connections) of its own, against a throwaway cluster.
//!
//! Leases are judged by the database's clock, so these tests run on the real clock, with
//! leases of a second or two.

#[path = "common/postgres.rs"]
mod postgres;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fluffy_flow::postgres::{FencedStore, PgBackend, PgStore, QueueStatus, Worker, WorkerReport};
use fluffy_flow::prelude::*;
use fluffy_flow::{
    CheckpointPolicy, CheckpointStore, EventKind, MemoryStore, PostedAnswer, RetryPolicy,
};
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_millis(50);

/// `future`, or a failure naming `what` after a minute (a test that would hang fails).
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within a minute"))
}

/// `n` → four branches that each write `n * k` → a join that sums them; `load` fails its
/// first attempt and is retried.
fn etl() -> Agent {
    let mut agent = Agent::new("etl");
    agent
        .add_state("load", |ctx: Context| async move {
            if ctx.attempt() == Some(1) {
                return Err("the source was busy".into());
            }
            ctx.set_state("loaded", true);
            Ok(Next::parallel(["k1", "k2", "k3", "k4"]))
        })
        .retry(RetryPolicy {
            max_retries: 2,
            initial_delay: Duration::from_millis(5),
            ..RetryPolicy::DEFAULT
        })
        .successors(["k1", "k2", "k3", "k4"]);
    for k in 1..=4u64 {
        let name = format!("k{k}");
        let key = name.clone();
        agent
            .add_state(name, move |ctx: Context| {
                let key = key.clone();
                async move {
                    let n: u64 = ctx.get_state("n")?;
                    ctx.set_state(key, n * k);
                    Ok(Next::to("sum"))
                }
            })
            .successors(["sum"]);
    }
    agent.add_state("sum", |ctx: Context| async move {
        let total: u64 = (1..=4)
            .map(|k| ctx.get_state::<u64>(&format!("k{k}")))
            .sum::<Result<u64, _>>()?;
        ctx.set_state("total", total);
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

/// A worker of `backend` running in the background until its token is cancelled.
fn spawn_worker(worker: Worker) -> (CancellationToken, JoinHandle<WorkerReport>) {
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { worker.run(token).await.unwrap() });
    (shutdown, task)
}

async fn stop(worker: (CancellationToken, JoinHandle<WorkerReport>)) -> WorkerReport {
    worker.0.cancel();
    worker.1.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_run_200_runs_each_once_with_the_context_of_a_single_process_run() {
    let Some(backend) = postgres::backend("three_workers").await else {
        return;
    };
    for i in 0..200u64 {
        let submitted = backend
            .submit("etl", &format!("run-{i}"), &context(json!({ "n": i })))
            .await
            .unwrap();
        assert!(submitted.new);
    }
    let mut workers = Vec::new();
    for w in 0..3 {
        let own = PgBackend::connect(&postgres::url("three_workers"))
            .await
            .unwrap();
        workers.push(spawn_worker(
            Worker::new(&own)
                .name(format!("w{w}"))
                .register(&etl())
                .concurrency(16)
                .lease(Duration::from_secs(5))
                .heartbeat(Duration::from_millis(500)),
        ));
    }
    let mut by_worker = BTreeMap::new();
    for i in 0..200u64 {
        let run = backend
            .wait_for("etl", &format!("run-{i}"), WAIT)
            .await
            .unwrap();
        assert_eq!(
            run.status,
            QueueStatus::Completed,
            "run-{i}: {:?}",
            run.error
        );
        assert_eq!(run.claims, 1, "run-{i} was claimed once");
        *by_worker.entry(run.worker.clone().unwrap()).or_insert(0) += 1;
        // The same values as the run in one process.
        let alone = etl()
            .run_with(context(json!({ "n": i })))
            .await
            .unwrap()
            .context
            .snapshot()
            .unwrap();
        assert_eq!(run.context.as_ref(), Some(&alone), "run-{i}");
        assert_eq!(run.context.unwrap()["total"], json!(10 * i));
    }
    let mut finished = 0;
    for worker in workers {
        let report = stop(worker).await;
        assert_eq!(report.lost, 0);
        assert_eq!(report.claimed, report.finished);
        finished += report.finished;
    }
    assert_eq!(finished, 200, "every run recorded once: {by_worker:?}");
    assert_eq!(by_worker.values().sum::<u32>(), 200);
}

/// `a` → `b` (waits for a permit of `gate`, then writes who ran it) → `c`.
fn gated(by: &'static str, gate: Arc<Semaphore>) -> Agent {
    let mut agent = Agent::new("gated");
    agent
        .add_state("a", |ctx: Context| async move {
            ctx.set_state("a", true);
            Ok(Next::to("b"))
        })
        .successors(["b"]);
    agent
        .add_state("b", move |ctx: Context| {
            let gate = Arc::clone(&gate);
            async move {
                gate.acquire().await.unwrap().forget();
                ctx.set_state("b_by", by.to_owned());
                Ok(Next::to("c"))
            }
        })
        .successors(["c"]);
    agent.add_state("c", |ctx: Context| async move {
        ctx.set_state("c", true);
        Ok(Next::End)
    });
    agent
}

/// Waits until `key`'s run has a checkpoint (its first state done).
async fn first_checkpoint(store: &PgStore, workflow: &str, key: &str) {
    within(
        "a first checkpoint",
        first_checkpoint_unbounded(store, workflow, key),
    )
    .await
}

async fn first_checkpoint_unbounded(store: &PgStore, workflow: &str, key: &str) {
    loop {
        let (store, workflow, key) = (store.clone(), workflow.to_owned(), key.to_owned());
        let saved = tokio::task::spawn_blocking(move || store.sequences(&workflow, &key))
            .await
            .unwrap()
            .unwrap();
        if !saved.is_empty() {
            return;
        }
        tokio::time::sleep(WAIT).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_lease_passes_on_and_the_old_holders_writes_are_refused() {
    let Some(backend) = postgres::backend("lapsed").await else {
        return;
    };
    let url = postgres::url("lapsed");
    let store = PgStore::new(&backend);
    backend
        .submit("gated", "order-7", &Context::new())
        .await
        .unwrap();
    // Worker A claims it, runs `a`, and waits in `b`. Its heartbeat is slow, so it does not
    // notice for a while that its lease is gone.
    let gate_a = Arc::new(Semaphore::new(0));
    let agent_a = gated("A", Arc::clone(&gate_a));
    let mut events_a = agent_a.subscribe();
    let a = spawn_worker(
        Worker::new(&PgBackend::connect(&url).await.unwrap())
            .name("A")
            .register(&agent_a)
            .lease(Duration::from_secs(30))
            .heartbeat(Duration::from_secs(29)),
    );
    first_checkpoint(&store, "gated", "order-7").await;
    let before = backend
        .queued_run("gated", "order-7")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (before.status, before.worker.as_deref(), before.claims),
        (QueueStatus::Running, Some("A"), 1)
    );

    // The lease lapses (as if A had stopped renewing it): worker B claims the run and
    // continues it from A's checkpoint, to the end.
    lapse(&url, "order-7").await;
    let gate_b = Arc::new(Semaphore::new(1));
    let b = spawn_worker(
        Worker::new(&PgBackend::connect(&url).await.unwrap())
            .name("B")
            .register(&gated("B", gate_b))
            .lease(Duration::from_secs(30))
            .heartbeat(Duration::from_secs(1)),
    );
    let done = backend.wait_for("gated", "order-7", WAIT).await.unwrap();
    assert_eq!(done.status, QueueStatus::Completed);
    assert_eq!(
        (done.worker.as_deref(), done.claims, done.fence),
        (Some("B"), 2, 2)
    );
    let values = done.context.unwrap();
    assert_eq!(values["b_by"], json!("B"));

    // A goes on now: its `b` ends, and its checkpoint is refused, which ends its run.
    gate_a.add_permits(1);
    let mut a_states = Vec::new();
    let a_status = within("A's run ending", async {
        loop {
            match events_a.next().await.unwrap().map(|e| e.kind) {
                Ok(EventKind::StateCompleted { state, .. }) => a_states.push(state.to_string()),
                Ok(EventKind::RunFinished { status, .. }) => break status,
                _ => {}
            }
        }
    })
    .await;
    // A ran `b` (and may have gone on: checkpoints are written beside the run, not in its
    // way), but its run fails at the refused checkpoint and nothing of it is kept.
    assert!(a_states.contains(&"b".to_string()), "{a_states:?}");
    assert_eq!(a_status, AgentStatus::Failed);
    let report_a = stop(a).await;
    assert_eq!((report_a.claimed, report_a.finished), (1, 0));
    let latest = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.latest("gated", "order-7"))
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    };
    assert_eq!(latest.status, AgentStatus::Completed);
    assert_eq!(latest.context.get::<String>("b_by").unwrap(), "B");
    let after = backend
        .queued_run("gated", "order-7")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (after.status, after.worker.as_deref(), after.fence),
        (QueueStatus::Completed, Some("B"), 2)
    );

    // A store fenced with A's token writes nothing, and says why.
    let fenced = FencedStore::new(store.clone(), done.id, 1, "A", "gated", "order-7");
    let mut stale = latest.clone();
    stale.sequence += 100;
    let error = tokio::task::spawn_blocking(move || fenced.save(&stale))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(error, FlowError::LeaseLost { fence: 1, .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("worker `A` no longer holds the lease"),
        "{error}"
    );
    stop(b).await;
}

/// A worker that stops holding a run another worker took over meanwhile (it had not noticed
/// yet) reports that run lost: it can give back only what is still its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopping_with_a_run_taken_over_reports_it_lost() {
    let Some(backend) = postgres::backend("stop_lost").await else {
        return;
    };
    let url = postgres::url("stop_lost");
    let store = PgStore::new(&backend);
    for key in ["kept", "taken"] {
        backend.submit("gated", key, &Context::new()).await.unwrap();
    }
    let a = spawn_worker(
        Worker::new(&PgBackend::connect(&url).await.unwrap())
            .name("A")
            .register(&gated("A", Arc::new(Semaphore::new(0))))
            .lease(Duration::from_secs(30))
            .heartbeat(Duration::from_secs(29)),
    );
    first_checkpoint(&store, "gated", "kept").await;
    first_checkpoint(&store, "gated", "taken").await;
    lapse(&url, "taken").await;
    // B may take only `taken` (its lease lapsed); it finishes it.
    let b = spawn_worker(
        Worker::new(&PgBackend::connect(&url).await.unwrap())
            .name("B")
            .register(&gated("B", Arc::new(Semaphore::new(2)))),
    );
    let done = within(
        "B's end of the run",
        backend.wait_for("gated", "taken", WAIT),
    )
    .await
    .unwrap();
    assert_eq!(
        (done.status, done.worker.as_deref()),
        (QueueStatus::Completed, Some("B"))
    );
    let report_a = stop(a).await;
    assert_eq!(
        (
            report_a.claimed,
            report_a.finished,
            report_a.released,
            report_a.lost
        ),
        (2, 0, 1, 1)
    );
    // `kept` went back to the queue, and B finishes it too.
    let kept = within(
        "B's end of the other run",
        backend.wait_for("gated", "kept", WAIT),
    )
    .await
    .unwrap();
    assert_eq!(
        (kept.status, kept.worker.as_deref(), kept.claims),
        (QueueStatus::Completed, Some("B"), 2)
    );
    stop(b).await;
}

/// Ends the lease on run `key` now, as a worker that stopped renewing it would see it end.
async fn lapse(url: &str, key: &str) {
    let client = postgres::client(url).await;
    client
        .execute(
            "UPDATE fluffy_runs SET lease_until = clock_timestamp() - interval '1 second' WHERE run_key = $1",
            &[&key],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitting_a_key_twice_keeps_the_first_and_failures_are_recorded_once() {
    let Some(backend) = postgres::backend("submits").await else {
        return;
    };
    let first = backend
        .submit("etl", "r1", &context(json!({ "n": 2 })))
        .await
        .unwrap();
    let again = backend
        .submit("etl", "r1", &context(json!({ "n": 99 })))
        .await
        .unwrap();
    assert!(first.new && !again.new);
    assert_eq!(first.id, again.id);
    // A run whose context lacks `n` fails in its branches.
    backend.submit("etl", "r2", &Context::new()).await.unwrap();
    let worker = spawn_worker(Worker::new(&backend).register(&etl()));
    let r1 = backend.wait_for("etl", "r1", WAIT).await.unwrap();
    assert_eq!(r1.context.unwrap()["total"], json!(20));
    let r2 = backend.wait_for("etl", "r2", WAIT).await.unwrap();
    assert_ne!(r2.status, QueueStatus::Completed);
    assert!(r2.status.is_finished());
    let report = stop(worker).await;
    assert_eq!((report.claimed, report.finished), (2, 2));
    let error = backend
        .wait_for("etl", "never-submitted", WAIT)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("no run `never-submitted`"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_gives_its_runs_back_and_another_finishes_them() {
    let Some(backend) = postgres::backend("handover").await else {
        return;
    };
    let url = postgres::url("handover");
    let store = PgStore::new(&backend);
    backend
        .submit("gated", "job", &Context::new())
        .await
        .unwrap();
    let a = spawn_worker(
        Worker::new(&PgBackend::connect(&url).await.unwrap())
            .name("A")
            .register(&gated("A", Arc::new(Semaphore::new(0)))),
    );
    first_checkpoint(&store, "gated", "job").await;
    let report = stop(a).await;
    assert_eq!((report.claimed, report.released), (1, 1));
    assert_eq!(
        backend
            .queued_run("gated", "job")
            .await
            .unwrap()
            .unwrap()
            .status,
        QueueStatus::Queued
    );
    let b = spawn_worker(
        Worker::new(&PgBackend::connect(&url).await.unwrap())
            .name("B")
            .register(&gated("B", Arc::new(Semaphore::new(1)))),
    );
    let done = backend.wait_for("gated", "job", WAIT).await.unwrap();
    assert_eq!((done.status, done.claims), (QueueStatus::Completed, 2));
    let values: Map<String, Value> = done.context.unwrap();
    assert_eq!(
        (values["a"].clone(), values["b_by"].clone()),
        (json!(true), json!("B"))
    );
    stop(b).await;
}

/// `a` → `b` (remote: notes the run's `n` in `entered`, then waits for a permit of `gate`)
/// → `c`.
fn gated_remote(entered: Arc<std::sync::Mutex<Vec<u64>>>, gate: Arc<Semaphore>) -> Agent {
    let mut agent = Agent::new("gated_remote");
    agent
        .add_state("a", |_ctx: Context| async move { Ok(Next::to("b")) })
        .successors(["b"]);
    agent
        .add_state("b", move |ctx: Context| {
            let (entered, gate) = (Arc::clone(&entered), Arc::clone(&gate));
            async move {
                entered.lock().unwrap().push(ctx.get_state::<u64>("n")?);
                gate.acquire().await.unwrap().forget();
                Ok(Next::to("c"))
            }
        })
        .successors(["c"])
        .remote();
    agent.add_state("c", |ctx: Context| async move {
        ctx.set_state("c", true);
        Ok(Next::End)
    });
    agent
}

/// A worker whose own leases lapsed before its heartbeat renewed them (a slow machine) does
/// not claim its run, or take its remote attempt, again while it still runs them: each ran
/// twice in one process before, and the first to end took the other's lease away with it
/// (CI saw a run fail with "not coordinated by worker").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_does_not_claim_again_what_it_still_runs_under_a_lapsed_lease() {
    let Some(backend) = postgres::backend("own_lapse").await else {
        return;
    };
    let url = postgres::url("own_lapse");
    let entered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let gate = Arc::new(Semaphore::new(0));
    backend
        .submit("gated_remote", "first", &context(json!({ "n": 1 })))
        .await
        .unwrap();
    let worker = spawn_worker(
        Worker::new(&PgBackend::connect(&url).await.unwrap())
            .name("A")
            .register(&gated_remote(Arc::clone(&entered), Arc::clone(&gate)))
            .lease(Duration::from_secs(30))
            .heartbeat(Duration::from_secs(20)),
    );
    let has_entered = |n: u64| {
        let entered = Arc::clone(&entered);
        async move {
            while !entered.lock().unwrap().contains(&n) {
                tokio::time::sleep(WAIT).await;
            }
        }
    };
    within("the first run's remote attempt", has_entered(1)).await;
    // Both of the first run's leases lapse; the worker's next renewal is 20 s away.
    let client = postgres::client(&url).await;
    client
        .batch_execute(
            "UPDATE fluffy_runs SET lease_until = clock_timestamp() - interval '1 second';
             UPDATE fluffy_tasks SET lease_until = clock_timestamp() - interval '1 second';",
        )
        .await
        .unwrap();
    // A second run wakes the worker to claim, and its attempt wakes it to take attempts.
    backend
        .submit("gated_remote", "second", &context(json!({ "n": 2 })))
        .await
        .unwrap();
    within("the second run's remote attempt", has_entered(2)).await;
    // (More permits than attempts: a run twice here shows in the counts, it does not hang.)
    gate.add_permits(10);
    for key in ["first", "second"] {
        let done = within("the run's end", backend.wait_for("gated_remote", key, WAIT))
            .await
            .unwrap();
        assert_eq!(
            (done.status, done.claims, done.fence),
            (QueueStatus::Completed, 1, 1),
            "{key}: {:?}",
            done.error
        );
    }
    // Each attempt's body ran once.
    assert_eq!(*entered.lock().unwrap(), [1, 2]);
    let report = stop(worker).await;
    assert_eq!(
        (
            report.claimed,
            report.finished,
            report.lost,
            report.remote_attempts
        ),
        (2, 2, 0, 2)
    );
}

/// A TCP proxy to the database that can be cut: every connection through it closed, and
/// new ones refused.
struct Proxy {
    port: u16,
    cut: CancellationToken,
}

impl Proxy {
    async fn to(upstream: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = CancellationToken::new();
        let stop = cut.clone();
        tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        connections.spawn(async move {
                            if let Ok(mut server) =
                                tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                            {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                    }
                }
            }
            // Dropping the listener refuses new connections; aborting closes the open ones.
            connections.abort_all();
        });
        Self { port, cut }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_the_database_gives_up_its_run_and_another_takes_it() {
    let Some(backend) = postgres::backend("cut").await else {
        return;
    };
    let url = postgres::url("cut");
    let store = PgStore::new(&backend);
    backend
        .submit("gated", "job", &Context::new())
        .await
        .unwrap();
    let port: u16 = url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let proxy = Proxy::to(port).await;
    let through_proxy = url.replace(&format!(":{port}/"), &format!(":{}/", proxy.port));
    let agent_a = gated("A", Arc::new(Semaphore::new(0)));
    let mut events_a = agent_a.subscribe();
    let a = spawn_worker(
        Worker::new(&PgBackend::connect(&through_proxy).await.unwrap())
            .name("A")
            .register(&agent_a)
            .lease(Duration::from_secs(1))
            .heartbeat(Duration::from_millis(250)),
    );
    first_checkpoint(&store, "gated", "job").await;
    proxy.cut.cancel();
    // B, connected directly, takes the run once A's lease has lapsed, and finishes it (with
    // a lease of its own long enough for a loaded machine).
    let b = spawn_worker(
        Worker::new(&PgBackend::connect(&url).await.unwrap())
            .name("B")
            .register(&gated("B", Arc::new(Semaphore::new(1))))
            .lease(Duration::from_secs(10))
            .heartbeat(Duration::from_millis(250)),
    );
    let done = backend.wait_for("gated", "job", WAIT).await.unwrap();
    assert_eq!(
        (done.status, done.worker.as_deref(), done.claims),
        (QueueStatus::Completed, Some("B"), 2)
    );
    // A, unable to renew for a whole lease, stopped its run by itself.
    let status = within("A giving its run up", async {
        loop {
            if let Ok(EventKind::RunFinished { status, .. }) =
                events_a.next().await.unwrap().map(|e| e.kind)
            {
                break status;
            }
        }
    })
    .await;
    // (Cancelled, or failed at the last checkpoint a stopped run tries to save.)
    assert!(
        matches!(status, AgentStatus::Cancelled | AgentStatus::Failed),
        "{status:?}"
    );
    let report_a = stop(a).await;
    assert_eq!(
        (
            report_a.claimed,
            report_a.finished,
            report_a.lost,
            report_a.released
        ),
        (1, 0, 1, 0)
    );
    stop(b).await;
}

#[tokio::test]
async fn a_heartbeat_as_long_as_the_lease_is_refused() {
    let Some(backend) = postgres::backend("config").await else {
        return;
    };
    let error = Worker::new(&backend)
        .register(&etl())
        .lease(Duration::from_secs(2))
        .heartbeat(Duration::from_secs(2))
        .run(CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("must be shorter than the lease"), "{error}");
    let error = Worker::new(&backend)
        .run(CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("no workflow is registered"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_left_in_the_database_wakes_the_waiting_run_at_once() {
    let Some(backend) = postgres::backend("answers_wake").await else {
        return;
    };
    let mut agent = Agent::new("approval");
    agent.add_state("review", |ctx: Context| async move {
        let decision = ctx.human_input("Publish? (yes/no)").no_timeout().await?;
        ctx.set_state("decision", decision);
        Ok(Next::End)
    });
    // Polling alone would take a minute: only the notification can make it quick.
    agent.input_poll_interval(Duration::from_secs(60));
    backend
        .submit("approval", "q4", &Context::new())
        .await
        .unwrap();
    let worker = spawn_worker(Worker::new(&backend).register(&agent));
    // Another process (another backend) finds the pending request in the run's latest
    // checkpoint and leaves its answer in the database.
    let elsewhere = PgStore::new(
        &PgBackend::connect(&postgres::url("answers_wake"))
            .await
            .unwrap(),
    );
    let request = within("a pending request", async {
        loop {
            let store = elsewhere.clone();
            let latest = tokio::task::spawn_blocking(move || store.latest("approval", "q4"))
                .await
                .unwrap()
                .unwrap();
            if let Some(record) = latest.and_then(|c| c.inputs.into_iter().next()) {
                break record.request;
            }
            tokio::time::sleep(WAIT).await;
        }
    })
    .await;
    let answered = std::time::Instant::now();
    let posted = PostedAnswer::new(request.id.clone(), json!("yes"), "ops");
    let store = elsewhere.clone();
    tokio::task::spawn_blocking(move || store.post_answer("approval", "q4", &posted))
        .await
        .unwrap()
        .unwrap();
    let done = tokio::time::timeout(
        Duration::from_secs(20),
        backend.wait_for("approval", "q4", WAIT),
    )
    .await
    .expect("woken by the notification, not by its one-minute poll")
    .unwrap();
    assert_eq!(done.status, QueueStatus::Completed, "{:?}", done.error);
    assert_eq!(done.context.unwrap()["decision"], json!("yes"));
    assert!(answered.elapsed() < Duration::from_secs(20));
    stop(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_run_suspended_on_input_continues_when_answered() {
    let Some(backend) = postgres::backend("suspended").await else {
        return;
    };
    let mut agent = Agent::new("approval");
    agent.add_state("review", |ctx: Context| async move {
        let decision = ctx.human_input("Publish? (yes/no)").no_timeout().await?;
        ctx.set_state("decision", decision);
        Ok(Next::End)
    });
    agent.suspend_on_input();
    backend
        .submit("approval", "q5", &Context::new())
        .await
        .unwrap();
    let worker = spawn_worker(Worker::new(&backend).register(&agent));
    let suspended = within(
        "the run suspending",
        backend.wait_for("approval", "q5", WAIT),
    )
    .await
    .unwrap();
    assert_eq!(suspended.status, QueueStatus::AwaitingInput);
    // The answer, left from anywhere, puts the run back in the queue; a worker continues it.
    let store = PgStore::new(&backend);
    let id = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.latest("approval", "q5"))
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .inputs[0]
            .request
            .id
            .clone()
    };
    tokio::task::spawn_blocking(move || {
        store.post_answer(
            "approval",
            "q5",
            &PostedAnswer::new(id, json!("yes"), "ops"),
        )
    })
    .await
    .unwrap()
    .unwrap();
    let done = within("the run continuing", async {
        loop {
            let run = backend.wait_for("approval", "q5", WAIT).await.unwrap();
            if run.status != QueueStatus::AwaitingInput {
                break run;
            }
            tokio::time::sleep(WAIT).await;
        }
    })
    .await;
    assert_eq!(
        (done.status, done.claims),
        (QueueStatus::Completed, 2),
        "{:?}",
        done.error
    );
    assert_eq!(done.context.unwrap()["decision"], json!("yes"));
    stop(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_the_database_fails_under_goes_back_to_the_queue_and_continues() {
    let Some(backend) = postgres::backend("give_back").await else {
        return;
    };
    let url = postgres::url("give_back");
    // The worker connects as a role of its own, whose right to write checkpoints the test
    // takes away for a while: the database failing under a run, deterministically.
    let admin = postgres::client(&url).await;
    admin
        .batch_execute(
            "CREATE ROLE fluffy_give_back LOGIN;
             GRANT ALL ON ALL TABLES IN SCHEMA public TO fluffy_give_back;
             GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO fluffy_give_back;
             GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO fluffy_give_back;",
        )
        .await
        .unwrap();
    let as_worker = url.replace("postgres://postgres@", "postgres://fluffy_give_back@");
    let store = PgStore::new(&backend);
    backend
        .submit("gated", "job", &Context::new())
        .await
        .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let worker = spawn_worker(
        Worker::new(&PgBackend::connect(&as_worker).await.unwrap())
            .name("W")
            .register(&gated("W", Arc::clone(&gate))),
    );
    first_checkpoint(&store, "gated", "job").await;
    admin
        .batch_execute("REVOKE INSERT, UPDATE ON fluffy_checkpoints FROM fluffy_give_back")
        .await
        .unwrap();
    // `b` ends; its checkpoint is refused by the database: the run goes back to the queue,
    // is claimed again, continues from `a`'s checkpoint and waits in `b` again.
    gate.add_permits(1);
    within("the run claimed again", async {
        loop {
            let run = backend.queued_run("gated", "job").await.unwrap().unwrap();
            if run.claims == 2 && run.status == QueueStatus::Running {
                break;
            }
            tokio::time::sleep(WAIT).await;
        }
    })
    .await;
    admin
        .batch_execute("GRANT INSERT, UPDATE ON fluffy_checkpoints TO fluffy_give_back")
        .await
        .unwrap();
    gate.add_permits(1);
    let done = within("the run ending", backend.wait_for("gated", "job", WAIT))
        .await
        .unwrap();
    assert_eq!(
        (done.status, done.claims),
        (QueueStatus::Completed, 2),
        "{:?}",
        done.error
    );
    let report = stop(worker).await;
    assert_eq!(
        (report.claimed, report.released, report.finished),
        (2, 1, 1)
    );
}

/// One state that counts its runs.
fn counted(name: &str, ran: &Arc<std::sync::atomic::AtomicU32>) -> Agent {
    let mut agent = Agent::new(name);
    let ran = Arc::clone(ran);
    agent.add_state("work", move |ctx: Context| {
        let ran = Arc::clone(&ran);
        async move {
            ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            ctx.set_state("done", true);
            Ok(Next::end())
        }
    });
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_workers_keep_dying_fails_instead_of_running_again() {
    let Some(backend) = postgres::backend("lapses").await else {
        return;
    };
    let ran = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let agent = counted("crashy", &ran);
    for key in ["five", "again"] {
        backend
            .submit("crashy", key, &Context::new())
            .await
            .unwrap();
    }
    // As if five workers had died holding each, one after the other: its lease lapsed.
    let client = postgres::client(&postgres::url("lapses")).await;
    client
        .execute(
            "UPDATE fluffy_runs SET status = 'running', worker = 'dead', fence = 5, claims = 5,
                 lapses = 5, lease_until = clock_timestamp() - interval '1 second'",
            &[],
        )
        .await
        .unwrap();
    // The sixth takeover is over the default limit of 5: failed, not run.
    let worker = spawn_worker(Worker::new(&backend).register(&agent));
    let run = within("the run's end", backend.wait_for("crashy", "five", WAIT))
        .await
        .unwrap();
    assert_eq!(run.status, QueueStatus::Failed);
    assert_eq!((run.lapses, run.claims), (6, 6));
    let error = run.error.unwrap();
    assert!(
        error.contains("taken over 6 times") && error.contains("limit of 5"),
        "{error}"
    );
    let run = within(
        "the other run's end",
        backend.wait_for("crashy", "again", WAIT),
    )
    .await
    .unwrap();
    assert_eq!(run.status, QueueStatus::Failed);
    assert_eq!(
        ran.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "never run"
    );
    let report = stop(worker).await;
    assert_eq!((report.claimed, report.finished), (2, 2));

    // A worker allowing more runs such a run.
    backend
        .submit("crashy", "six", &Context::new())
        .await
        .unwrap();
    client
        .execute(
            "UPDATE fluffy_runs SET status = 'running', worker = 'dead', fence = 5, lapses = 5,
                 lease_until = clock_timestamp() - interval '1 second' WHERE run_key = 'six'",
            &[],
        )
        .await
        .unwrap();
    let worker = spawn_worker(Worker::new(&backend).register(&agent).max_lapses(6));
    let run = within("the run's end", backend.wait_for("crashy", "six", WAIT))
        .await
        .unwrap();
    assert_eq!(run.status, QueueStatus::Completed, "{:?}", run.error);
    assert_eq!(run.lapses, 6);
    assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 1);
    stop(worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_submits_is_one_statement_that_keeps_earlier_keys_and_order() {
    let Some(backend) = postgres::backend("batches").await else {
        return;
    };
    let before = backend
        .submit("etl", "b3", &context(json!({ "n": 1000 })))
        .await
        .unwrap();
    let runs: Vec<(String, Context)> = (0..40)
        .map(|i| (format!("b{i}"), context(json!({ "n": i }))))
        .collect();
    let submitted = backend.submit_batch("etl", &runs).await.unwrap();
    assert_eq!(submitted.len(), 40);
    for (i, run) in submitted.iter().enumerate() {
        assert_eq!(run.new, i != 3, "b{i}");
    }
    assert_eq!(submitted[3].id, before.id, "the earlier run stands");
    let mut ids: Vec<i64> = submitted.iter().filter(|s| s.new).map(|s| s.id).collect();
    let in_order = ids.clone();
    ids.sort_unstable();
    assert_eq!(ids, in_order, "inserted in the order given");
    // Again: nothing new.
    let again = backend.submit_batch("etl", &runs[..5]).await.unwrap();
    assert!(again.iter().all(|s| !s.new));
    assert_eq!(
        again.iter().map(|s| s.id).collect::<Vec<_>>(),
        submitted[..5].iter().map(|s| s.id).collect::<Vec<_>>()
    );
    let twice = vec![
        ("x".to_owned(), Context::new()),
        ("x".to_owned(), Context::new()),
    ];
    let error = backend
        .submit_batch("etl", &twice)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("`x` is given twice"), "{error}");
    assert!(
        backend.queued_run("etl", "x").await.unwrap().is_none(),
        "nothing submitted"
    );
    // They run with their own contexts (b3 with the first one's).
    let worker = spawn_worker(Worker::new(&backend).register(&etl()));
    for (i, n) in [(0, 0), (3, 1000), (39, 39)] {
        let run = within(
            "a run's end",
            backend.wait_for("etl", &format!("b{i}"), WAIT),
        )
        .await
        .unwrap();
        assert_eq!(run.context.unwrap()["total"], json!(n * 10), "b{i}");
    }
    stop(worker).await;
}

/// `n` through five steps that each take a moment (so each is saved: a save that finds a
/// newer checkpoint waiting takes only the newer) and add their number.
fn steps() -> Agent {
    let mut agent = Agent::new("steps");
    for step in 1..=5u64 {
        let next = if step == 5 {
            Next::End
        } else {
            Next::to(format!("step{}", step + 1))
        };
        agent.add_state(format!("step{step}"), move |ctx: Context| {
            let next = next.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let n: u64 = ctx.get_state("n")?;
                ctx.set_state("n", n + step);
                Ok(next)
            }
        });
    }
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_saving_together_keep_their_own_latest_checkpoints() {
    let Some(backend) = postgres::backend("saving_together").await else {
        return;
    };
    // Forty runs at once on one worker: their saves go to the database in shared statements,
    // each pruned to its own run's latest two.
    let mut kept_two = steps();
    kept_two.checkpoints(
        MemoryStore::new(),
        CheckpointPolicy {
            keep: 2,
            ..CheckpointPolicy::after_each_state()
        },
    );
    let runs: Vec<(String, Context)> = (0..40u64)
        .map(|i| (format!("s{i}"), context(json!({ "n": i }))))
        .collect();
    backend.submit_batch("steps", &runs).await.unwrap();
    let worker = spawn_worker(Worker::new(&backend).register(&kept_two).concurrency(40));
    for i in 0..40u64 {
        let run = within(
            "a run's end",
            backend.wait_for("steps", &format!("s{i}"), WAIT),
        )
        .await
        .unwrap();
        assert_eq!(run.context.unwrap()["n"], json!(i + 15), "s{i}");
    }
    stop(worker).await;
    let store = PgStore::new(&backend);
    let (mut saved, mut pruned) = (0, 0);
    for i in 0..40u64 {
        let key = format!("s{i}");
        let (store_, key_) = (store.clone(), key.clone());
        let (kept, latest) = tokio::task::spawn_blocking(move || {
            (
                store_.sequences("steps", &key_).unwrap(),
                store_.latest("steps", &key_).unwrap().unwrap(),
            )
        })
        .await
        .unwrap();
        assert_eq!(kept.len(), 2, "{key}: {kept:?}");
        assert_eq!(latest.sequence, kept[1], "{key}");
        assert_eq!(latest.status, AgentStatus::Completed, "{key}");
        assert_eq!(latest.context.get::<u64>("n").unwrap(), i + 15, "{key}");
        saved += latest.sequence;
        pruned += u32::from(latest.sequence > 2);
    }
    // A checkpoint is asked for after each step and at the end (six per run), but those asked
    // for while a save is in progress collapse into one (the writer keeps the newest), so how
    // many a run saved depends on the database's speed: under load it was three on average.
    // Each kept two (above); those that saved more pruned the older in shared statements.
    assert!(
        pruned > 0,
        "no run saved more than the two it keeps: {saved} saves"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_claimed_by_priority_then_age_lapsed_leases_among_them() {
    let Some(backend) = postgres::backend("claim_order").await else {
        return;
    };
    let mut order = Agent::new("order");
    let started = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&started);
    order.add_state("only", move |ctx: Context| {
        let log = Arc::clone(&log);
        async move {
            let name: String = ctx.get_state("name")?;
            log.lock().unwrap().push(name);
            Ok(Next::End)
        }
    });
    for (key, priority) in [
        ("low-old", 0),
        ("lapsed", 1),
        ("mid", 1),
        ("high", 5),
        ("low-new", 0),
    ] {
        backend
            .submit_with_priority("order", key, &context(json!({ "name": key })), priority)
            .await
            .unwrap();
    }
    // `lapsed` was claimed by a worker that died: its lease has ended.
    let client = postgres::client(&postgres::url("claim_order")).await;
    client
        .execute(
            "UPDATE fluffy_runs SET status = 'running', worker = 'gone', fence = 1,
                 lease_until = clock_timestamp() - interval '1 second'
             WHERE run_key = 'lapsed'",
            &[],
        )
        .await
        .unwrap();
    // One at a time: each claim takes the front of the queue.
    let worker = spawn_worker(Worker::new(&backend).register(&order).concurrency(1));
    within(
        "the last run's end",
        backend.wait_for("order", "low-new", WAIT),
    )
    .await
    .unwrap();
    stop(worker).await;
    assert_eq!(
        *started.lock().unwrap(),
        ["high", "lapsed", "mid", "low-old", "low-new"]
    );
    let lapsed = backend
        .queued_run("order", "lapsed")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((lapsed.status, lapsed.fence), (QueueStatus::Completed, 2));
}
