//! Remote states through PostgreSQL (feature `postgres`): one run's 300-branch fan-out to a
//! remote state spreads over three workers and ends with the context of the same run in one
//! process; an attempt whose run stops waiting (its timeout) is withdrawn from the database
//! and stopped where it ran. (Worker processes killed and stopped mid-attempt: see
//! `postgres_failover`.)

#[path = "common/postgres.rs"]
mod postgres;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fluffy_flow::postgres::{CancellationToken, PgBackend, QueueStatus, Worker, WorkerReport};
use fluffy_flow::prelude::*;
use tokio::task::JoinHandle;

const ITEMS: u64 = 300;

/// `plan` maps 300 items to the remote `score` (10 ms each: item × factor, appended and
/// summed), joined by `total`. `ran` counts the attempts this definition's process ran;
/// `gate`, where given, holds them until every worker has begun one (so that the spread
/// does not depend on how fast each worker connects and claims).
fn scoring(ran: Arc<AtomicU32>, gate: Option<postgres::EveryWorker>) -> Agent {
    let mut agent = Agent::new("scoring");
    agent.reducer("scores", Reducer::append::<u64>());
    agent.reducer("sum", Reducer::sum::<u64>());
    agent
        .add_state("plan", |ctx: Context| async move {
            ctx.set_state("factor", 7u64);
            Ok(Next::map("score", (0..ITEMS).collect::<Vec<_>>()))
        })
        .entry();
    agent
        .add_state("score", move |ctx: Context| {
            let ran = Arc::clone(&ran);
            let gate = gate.clone();
            async move {
                ran.fetch_add(1, Ordering::SeqCst);
                if let Some(gate) = gate {
                    gate.begin().await;
                }
                let item: u64 = ctx.input()?;
                let factor: u64 = ctx.get_state("factor")?;
                tokio::time::sleep(Duration::from_millis(10)).await;
                ctx.set_state("scores", item * factor);
                ctx.set_state("sum", item);
                Ok(Next::to("total"))
            }
        })
        .remote();
    agent.add_state("total", |ctx: Context| async move {
        let sum: u64 = ctx.get_state("sum")?;
        ctx.set_state("total", sum * 7);
        Ok(Next::end())
    });
    agent
}

fn spawn_worker(worker: Worker) -> (CancellationToken, JoinHandle<WorkerReport>) {
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    (
        shutdown,
        tokio::spawn(async move { worker.run(token).await.unwrap() }),
    )
}

async fn stop(worker: (CancellationToken, JoinHandle<WorkerReport>)) -> WorkerReport {
    worker.0.cancel();
    worker.1.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_runs_fan_out_of_remote_states_spreads_over_every_worker() {
    let Some(backend) = postgres::backend("remote_spread").await else {
        return;
    };
    let ran: Vec<Arc<AtomicU32>> = (0..3).map(|_| Arc::default()).collect();
    let every_worker = postgres::EveryWorker::new(3);
    let mut workers = Vec::new();
    for (i, ran) in ran.iter().enumerate() {
        let own = PgBackend::connect(&postgres::url("remote_spread"))
            .await
            .unwrap();
        workers.push(spawn_worker(
            Worker::new(&own)
                .name(format!("w{i}"))
                .register(&scoring(Arc::clone(ran), Some(every_worker.member(i))))
                .remote_concurrency(16)
                .lease(Duration::from_secs(2))
                .heartbeat(Duration::from_millis(500)),
        ));
    }
    backend
        .submit("scoring", "fan", &Context::new())
        .await
        .unwrap();
    let run = tokio::time::timeout(
        Duration::from_secs(60),
        backend.wait_for("scoring", "fan", Duration::from_millis(200)),
    )
    .await
    .expect("the run ends within a minute")
    .unwrap();
    assert_eq!(run.status, QueueStatus::Completed, "{:?}", run.error);
    let alone = scoring(Arc::default(), None).run().await.unwrap();
    assert_eq!(run.context, Some(alone.context.snapshot().unwrap()));
    let total: u64 = (0..ITEMS).sum::<u64>() * 7;
    assert_eq!(run.context.as_ref().unwrap()["total"], total);

    let mut reports = Vec::new();
    for worker in workers {
        reports.push(stop(worker).await);
    }
    let per_worker: Vec<u32> = ran.iter().map(|r| r.load(Ordering::SeqCst)).collect();
    assert_eq!(
        per_worker.iter().sum::<u32>(),
        ITEMS as u32,
        "{per_worker:?}"
    );
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "every worker ran some of the branches: {per_worker:?}"
    );
    let answered: u64 = reports.iter().map(|r| r.remote_attempts).sum();
    assert_eq!(answered, ITEMS);
    assert_eq!(reports.iter().map(|r| r.finished).sum::<u64>(), 1);
}

/// Counts its drops (the attempt was stopped where it ran).
struct Dropped(Arc<AtomicU32>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_the_run_stops_waiting_for_is_withdrawn_and_stopped_where_it_runs() {
    let Some(backend) = postgres::backend("remote_withdraw").await else {
        return;
    };
    let (started, stopped) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let mut agent = Agent::new("slow");
    let (started_, stopped_) = (Arc::clone(&started), Arc::clone(&stopped));
    agent
        .add_state("slow", move |_ctx: Context| {
            let (started, stopped) = (Arc::clone(&started_), Arc::clone(&stopped_));
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                let _guard = Dropped(stopped);
                tokio::time::sleep(Duration::from_secs(600)).await;
                Ok(Next::end())
            }
        })
        .remote()
        .timeout(Duration::from_secs(1));
    let worker = spawn_worker(
        Worker::new(&backend)
            .register(&agent)
            .lease(Duration::from_secs(1))
            .heartbeat(Duration::from_millis(200)),
    );
    backend.submit("slow", "s", &Context::new()).await.unwrap();
    let run = tokio::time::timeout(
        Duration::from_secs(60),
        backend.wait_for("slow", "s", Duration::from_millis(200)),
    )
    .await
    .expect("the run ends within a minute")
    .unwrap();
    assert_eq!(run.status, QueueStatus::Failed);
    assert!(
        run.error.as_deref().unwrap_or("").contains("timed out"),
        "{:?}",
        run.error
    );
    // Withdrawn: the row goes, and the worker running it stops it at its next renewal.
    let client = postgres::client(&postgres::url("remote_withdraw")).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = client
            .query_one("SELECT count(*) FROM fluffy_tasks", &[])
            .await
            .unwrap()
            .get(0);
        if left == 0 && stopped.load(Ordering::SeqCst) == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} attempts left, stopped: {stopped:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(started.load(Ordering::SeqCst), 1);
    let report = stop(worker).await;
    assert_eq!(
        report.remote_attempts, 0,
        "a withdrawn attempt is not answered"
    );
}
