//! Coordination through PostgreSQL (feature `postgres`): a semaphore shared by many backends
//! (separate connections, as separate processes would be) is never exceeded, checked with a
//! counter kept in the database on random shapes; a crashed holder's permit lapses; a
//! release wakes a waiter; a rate limit admits at its rate. Real clock (the database's).

#[path = "common/postgres.rs"]
mod postgres;

use std::time::{Duration, Instant};

use fluffy_flow::FlowError;
use fluffy_flow::postgres::{PgBackend, PgRateLimit, PgSemaphore};
use proptest::prelude::*;

/// `tasks` tasks over `backends` backends each take one permit of a semaphore of `permits`,
/// hold it for their `holds[i]` ms while a counter in the database says how many hold one;
/// returns the most it ever said.
async fn contend(url: &str, name: &str, permits: u32, backends: usize, holds: &[u64]) -> i64 {
    let setup = postgres::client(url).await;
    setup
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS test_holding (name text PRIMARY KEY, now integer NOT NULL, peak integer NOT NULL);
             INSERT INTO test_holding VALUES ('{name}', 0, 0);"
        ))
        .await
        .unwrap();
    let mut connections = Vec::new();
    for _ in 0..backends {
        connections.push(PgBackend::connect(url).await.unwrap());
    }
    PgSemaphore::create(&connections[0], name, permits)
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, &hold) in holds.iter().enumerate() {
        let backend = connections[i % backends].clone();
        let (url, name) = (url.to_owned(), name.to_owned());
        tasks.spawn(async move {
            let client = postgres::client(&url).await;
            let semaphore = PgSemaphore::open(&backend, &name).poll_interval(Duration::from_millis(20));
            let permit = semaphore.acquire(1).await.unwrap();
            client
                .execute(
                    "UPDATE test_holding SET now = now + 1, peak = greatest(peak, now + 1) WHERE name = $1",
                    &[&name],
                )
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(hold)).await;
            client
                .execute("UPDATE test_holding SET now = now - 1 WHERE name = $1", &[&name])
                .await
                .unwrap();
            assert!(permit.release().await.unwrap(), "the permit had not lapsed");
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let row = setup
        .query_one(
            "SELECT now, peak FROM test_holding WHERE name = $1",
            &[&name],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 0, "everyone let go");
    i64::from(row.get::<_, i32>(1))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn a_shared_semaphore_is_never_exceeded(
        permits in 1u32..=3,
        backends in 1usize..=3,
        holds in proptest::collection::vec(0u64..15, 4..14),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let peak = runtime.block_on(async {
            let url = postgres::database("semaphore_property")?;
            PgBackend::connect(&url).await.unwrap().migrate().await.unwrap();
            static CASE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let name = format!("s{}", CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            Some(contend(&url, &name, permits, backends, &holds).await)
        });
        if let Some(peak) = peak {
            prop_assert!(peak >= 1);
            prop_assert!(peak <= i64::from(permits), "{peak} held at once, {permits} permits");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_holders_permit_lapses_and_a_release_wakes_a_waiter() {
    let Some(backend) = postgres::backend("permits").await else {
        return;
    };
    let other = PgBackend::connect(&postgres::url("permits")).await.unwrap();
    let short = PgSemaphore::create(&backend, "gpu", 1)
        .await
        .unwrap()
        .ttl(Duration::from_millis(300));
    // A holder that dies without releasing: its permit comes back after its TTL.
    let acquired = Instant::now();
    let crashed = short.try_acquire(1).await.unwrap().unwrap();
    let first_token = crashed.token();
    assert!(short.try_acquire(1).await.unwrap().is_none());
    assert_eq!(short.in_use().await.unwrap(), 1);
    let taken = PgSemaphore::open(&other, "gpu")
        .poll_interval(Duration::from_millis(50))
        .acquire(1)
        .await
        .unwrap();
    // (Its TTL ran from a moment after `acquired`, on the database's clock.)
    assert!(
        acquired.elapsed() >= Duration::from_millis(290),
        "{:?}",
        acquired.elapsed()
    );
    assert!(taken.token() > first_token, "fencing tokens grow");
    assert!(
        !crashed.renew().await.unwrap(),
        "a lapsed permit is not renewed"
    );
    assert!(taken.renew().await.unwrap());
    std::mem::forget(crashed);

    // A release wakes a waiter at once (its poll is far longer than the test waits).
    let waiter = PgSemaphore::open(&other, "gpu")
        .ttl(Duration::from_secs(30))
        .poll_interval(Duration::from_secs(60));
    let waiting = tokio::spawn(async move { waiter.acquire(1).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished());
    assert!(taken.release().await.unwrap());
    let woken = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("woken by the release, not by its poll")
        .unwrap();
    assert_eq!(woken.units(), 1);
    drop(woken); // released in the background
    let mut free = false;
    for _ in 0..100 {
        if short.in_use().await.unwrap() == 0 {
            free = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(free, "a dropped permit is released");
    for units in [0, 2] {
        let error = short.try_acquire(units).await.err().unwrap().to_string();
        assert!(
            error.contains(&format!(
                "semaphore `gpu` has 1 permits: {units} can never be taken"
            )),
            "{error}"
        );
    }
    let error = PgSemaphore::open(&backend, "missing")
        .try_acquire(1)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("there is no semaphore `missing`"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_rate_limit_admits_at_its_rate() {
    let Some(backend) = postgres::backend("rates").await else {
        return;
    };
    let other = PgBackend::connect(&postgres::url("rates")).await.unwrap();
    // The burst at once, then a wait of at most one token's time (10 s at 0.1 a second: a
    // token comes back during these takes only if they take that long).
    let slow = PgRateLimit::create(&backend, "slow", 0.1, 5).await.unwrap();
    for _ in 0..5 {
        assert_eq!(slow.try_take(1.0).await.unwrap(), None);
    }
    let wait = slow.try_take(1.0).await.unwrap().expect("a wait");
    assert!(
        wait <= Duration::from_secs(10) && wait > Duration::from_secs(5),
        "{wait:?}"
    );
    // Two processes take 20 between them at 50 a second with a burst of 1: the 19 after the
    // first take 0.38 s at least.
    PgRateLimit::create(&backend, "api", 50.0, 1).await.unwrap();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for backend in [backend.clone(), other.clone()] {
        tasks.spawn(async move {
            let limit = PgRateLimit::open(&backend, "api");
            for _ in 0..10 {
                limit.acquire().await.unwrap();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(370), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    for cost in [0.0, -1.0, 6.0, f64::NAN] {
        let error = slow.try_take(cost).await.err().unwrap().to_string();
        assert!(error.contains("can never be taken"), "{cost}: {error}");
    }
    let error = PgRateLimit::create(&backend, "bad", 0.0, 1)
        .await
        .err()
        .unwrap();
    assert!(matches!(error, FlowError::InvalidConfig { .. }), "{error}");
}

/// `work` maps 8 items to `hold`, which passes the semaphore `gpu` (2 permits, declared as
/// the workflow's own) and counts itself in the database while it holds it. `gate`, where
/// given, holds `work` until every worker has begun a run (so that the runs are in
/// different workers however fast each connects and claims).
fn gpu_work(
    gauge: std::sync::Arc<tokio_postgres::Client>,
    gate: Option<postgres::EveryWorker>,
) -> fluffy_flow::Agent {
    use fluffy_flow::prelude::*;
    let mut agent = Agent::new("gpu_work");
    agent
        .add_state("work", move |_ctx: Context| {
            let gate = gate.clone();
            async move {
                if let Some(gate) = gate {
                    gate.begin().await;
                }
                Ok(Next::map("hold", (0..8u32).collect::<Vec<_>>()))
            }
        })
        .entry();
    agent
        .add_state("hold", move |_ctx: Context| {
            let gauge = std::sync::Arc::clone(&gauge);
            async move {
                gauge
                    .execute(
                        "UPDATE test_holding SET now = now + 1, peak = greatest(peak, now + 1) WHERE name = 'gpu'",
                        &[],
                    )
                    .await?;
                tokio::time::sleep(Duration::from_millis(30)).await;
                gauge
                    .execute("UPDATE test_holding SET now = now - 1 WHERE name = 'gpu'", &[])
                    .await?;
                Ok(Next::end())
            }
        })
        .semaphore(fluffy_flow::FlowSemaphore::new("gpu", 2));
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_sharing_gates_keep_a_workflows_semaphore_across_processes() {
    use fluffy_flow::postgres::{CancellationToken, QueueStatus, Worker};
    use fluffy_flow::prelude::*;
    let Some(url) = postgres::database("shared_gates") else {
        return;
    };
    let gauge = std::sync::Arc::new(postgres::client(&url).await);
    gauge
        .batch_execute(
            "CREATE TABLE test_holding (name text PRIMARY KEY, now integer NOT NULL, peak integer NOT NULL);
             INSERT INTO test_holding VALUES ('gpu', 0, 0);",
        )
        .await
        .unwrap();
    let agent = gpu_work(std::sync::Arc::clone(&gauge), None);
    assert_eq!(
        agent.named_primitives(),
        [fluffy_flow::NamedPrimitive::Semaphore {
            key: "semaphore/gpu".into(),
            permits: 2,
            ttl: None
        }]
    );
    let submitter = PgBackend::connect(&url).await.unwrap();
    submitter.migrate().await.unwrap();
    // Three workers, one run each at a time, so that the runs are in different workers;
    // each with a definition of its own, as separate processes have (one definition's
    // semaphore would be shared in this process anyway).
    let every_worker = postgres::EveryWorker::new(3);
    let mut workers = Vec::new();
    for i in 0..3 {
        let backend = PgBackend::connect(&url).await.unwrap();
        let shutdown = CancellationToken::new();
        let worker = Worker::new(&backend)
            .name(format!("w{i}"))
            .register(&gpu_work(
                std::sync::Arc::clone(&gauge),
                Some(every_worker.member(i)),
            ))
            .concurrency(1)
            .share_gates()
            .lease(Duration::from_secs(2))
            .heartbeat(Duration::from_millis(500));
        let token = shutdown.clone();
        workers.push((
            shutdown,
            tokio::spawn(async move { worker.run(token).await.unwrap() }),
        ));
    }
    for i in 0..6 {
        submitter
            .submit("gpu_work", &format!("run-{i}"), &Context::new())
            .await
            .unwrap();
    }
    for i in 0..6 {
        let run = tokio::time::timeout(
            Duration::from_secs(60),
            submitter.wait_for("gpu_work", &format!("run-{i}"), Duration::from_millis(100)),
        )
        .await
        .expect("within a minute")
        .unwrap();
        assert_eq!(run.status, QueueStatus::Completed, "{:?}", run.error);
    }
    let mut ran_runs = Vec::new();
    for (shutdown, task) in workers {
        shutdown.cancel();
        ran_runs.push(task.await.unwrap().finished);
    }
    assert_eq!(ran_runs.iter().sum::<u64>(), 6);
    assert!(
        ran_runs.iter().all(|&n| n > 0),
        "runs in every worker: {ran_runs:?}"
    );
    let row = gauge
        .query_one("SELECT now, peak FROM test_holding WHERE name = 'gpu'", &[])
        .await
        .unwrap();
    let (now, peak): (i32, i32) = (row.get(0), row.get(1));
    assert_eq!(now, 0);
    assert!(peak <= 2, "{peak} held the 2 permits of `gpu` at once");
    assert!(peak >= 1);
    // The permits went back.
    let semaphore = PgSemaphore::open(&submitter, "semaphore/gpu");
    let deadline = Instant::now() + Duration::from_secs(10);
    while semaphore.in_use().await.unwrap() != 0 {
        assert!(Instant::now() < deadline, "permits still held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
