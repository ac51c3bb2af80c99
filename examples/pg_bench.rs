//! The PostgreSQL benchmarks (feature `postgres`), each on a throwaway local cluster (or the
//! database in `FLUFFY_PG_URL`), with worker processes that are this program again:
//!
//! ```text
//! cargo run --release --features postgres --example pg_bench -- runs N W
//! cargo run --release --features postgres --example pg_bench -- failover
//! cargo run --release --features postgres --example pg_bench -- fanout N W
//! ```
//!
//! `runs N W [BATCH]`: W worker processes; N durable runs of a 3-state workflow (a checkpoint
//! after each state) submitted as fast as the queue takes them (one by one, 64 in flight, or
//! `BATCH` at a time with `submit_batch`); prints runs/s (first submit to last end) and the
//! p50/p99 latency from submit to start (the database's clock).
//!
//! `fanout N W`: W worker processes; one run maps N items to a remote state (a context
//! write, no work): its attempts go through the database to every worker and back; prints
//! the run's time from submit to end, attempts/s, and how many attempts each worker ran.
//!
//! `failover`: two workers with the default lease (10 s) and heartbeat (5 s); one is killed
//! with SIGKILL while it runs a run; prints how long until another worker took the run over.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fluffy_flow::postgres::{CancellationToken, PgBackend, QueueStatus, TempCluster, Worker};
use fluffy_flow::prelude::*;
use serde_json::json;

/// `plan` maps `n` items (in the context) to the remote `item`, each contributing its item to
/// a sum; `total` reads it.
fn fanout() -> Agent {
    let mut agent = Agent::new("fanout");
    agent.reducer("sum", Reducer::sum::<u64>());
    agent
        .add_state("plan", |ctx: Context| async move {
            let n: u64 = ctx.get_state("n")?;
            Ok(Next::map("item", (0..n).collect::<Vec<_>>()))
        })
        .entry();
    agent
        .add_state("item", |ctx: Context| async move {
            let item: u64 = ctx.input()?;
            ctx.set_state("sum", item);
            Ok(Next::to("total"))
        })
        .remote();
    agent.add_state("total", |ctx: Context| async move {
        let sum: u64 = ctx.get_state("sum")?;
        ctx.set_state("total", sum);
        Ok(Next::End)
    });
    agent
}

/// Three states, a context write each.
fn three_steps(slow: Option<Duration>) -> Agent {
    let mut agent = Agent::new("three_steps");
    for (name, next) in [
        ("one", Some("two")),
        ("two", Some("three")),
        ("three", None),
    ] {
        agent
            .add_state(name, move |ctx: Context| async move {
                if let (Some(slow), "two") = (slow, name) {
                    tokio::time::sleep(slow).await;
                }
                ctx.set_state(name, true);
                Ok(next.map_or(Next::End, Next::to))
            })
            .successors(next);
    }
    agent
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let usage = "usage: pg_bench runs N W [BATCH] | pg_bench failover | pg_bench fanout N W";
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["worker", url, name, lease_ms, slow_ms] => runtime.block_on(worker(
            url,
            name,
            Duration::from_millis(lease_ms.parse().expect("a lease")),
            Duration::from_millis(slow_ms.parse().expect("a delay")),
        )),
        ["runs", n, w] | ["runs", n, w, _] => {
            let (n, w) = (
                n.parse().expect(usage),
                w.parse::<usize>().expect(usage).max(1),
            );
            let batch = args
                .get(3)
                .map_or(1, |b| b.parse::<usize>().expect(usage).max(1));
            runtime.block_on(runs(n, w, batch));
        }
        ["failover"] => runtime.block_on(failover()),
        ["fanout", n, w] => {
            let (n, w) = (
                n.parse().expect(usage),
                w.parse::<usize>().expect(usage).max(1),
            );
            runtime.block_on(fan_out(n, w));
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}

/// The worker process: runs until its stdin closes.
async fn worker(url: &str, name: &str, lease: Duration, slow: Duration) {
    let backend = PgBackend::connect(url).await.expect("the database");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {}
        stop.cancel();
    });
    let slow = (!slow.is_zero()).then_some(slow);
    println!("ready");
    let report = Worker::new(&backend)
        .name(name)
        .register(&three_steps(slow))
        .register(&fanout())
        .concurrency(64)
        .remote_concurrency(64)
        .lease(lease)
        .heartbeat(lease / 2)
        .run(shutdown)
        .await
        .expect("the worker runs");
    println!(
        "{}",
        json!({"finished": report.finished, "remote_attempts": report.remote_attempts})
    );
}

/// Closes the worker's stdin (it stops) and reads the report it prints as it ends.
fn stop_worker(mut child: Child) -> serde_json::Value {
    drop(child.stdin.take());
    let output = child.wait_with_output().expect("the worker ends");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or(serde_json::Value::Null)
}

async fn fan_out(n: u64, w: usize) {
    let (_cluster, url, backend) = database().await;
    let workers: Vec<Child> = (0..w)
        .map(|i| {
            spawn_worker(
                &url,
                &format!("w{i}"),
                Duration::from_secs(10),
                Duration::ZERO,
            )
        })
        .collect();
    let context = Context::new();
    context.set_state("n", n);
    let key = format!("fanout-{}", std::process::id());
    let started = Instant::now();
    backend
        .submit("fanout", &key, &context)
        .await
        .expect("submitted");
    let run = backend
        .wait_for("fanout", &key, Duration::from_millis(20))
        .await
        .expect("the run");
    let wall = started.elapsed();
    let expected = n * n.saturating_sub(1) / 2;
    let total = run.context.as_ref().and_then(|c| c.get("total")).cloned();
    let per_worker: Vec<serde_json::Value> = workers
        .into_iter()
        .map(|child| stop_worker(child)["remote_attempts"].clone())
        .collect();
    println!(
        "{}",
        json!({
            "bench": "pg_fanout",
            "n": n,
            "workers": w,
            "status": run.status.as_str(),
            "correct": total == Some(json!(expected)),
            "wall_s": wall.as_secs_f64(),
            "attempts_per_s": n as f64 / wall.as_secs_f64(),
            "attempts_per_worker": per_worker,
        })
    );
}

/// Starts a worker process of this program and waits until it is ready.
fn spawn_worker(url: &str, name: &str, lease: Duration, slow: Duration) -> Child {
    let mut child = Command::new(std::env::current_exe().expect("this program"))
        .args([
            "worker",
            url,
            name,
            &lease.as_millis().to_string(),
            &slow.as_millis().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("a worker process");
    let mut reader = BufReader::new(child.stdout.as_mut().expect("its stdout"));
    let mut line = String::new();
    while reader.read_line(&mut line).expect("its output") > 0 && !line.contains("ready") {
        line.clear();
    }
    child
}

/// The database: `FLUFFY_PG_URL`, or a new cluster (kept alive by the returned value).
async fn database() -> (Option<TempCluster>, String, PgBackend) {
    let (cluster, url) = match std::env::var("FLUFFY_PG_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let cluster = TempCluster::start().expect("a PostgreSQL cluster");
            let url = cluster.create_database("bench").expect("a database");
            (Some(cluster), url)
        }
    };
    let backend = PgBackend::connect(&url).await.expect("the database");
    backend.migrate().await.expect("the schema");
    (cluster, url, backend)
}

async fn runs(n: usize, w: usize, batch: usize) {
    let (_cluster, url, backend) = database().await;
    let prefix = format!("bench-{}", std::process::id());
    let workers: Vec<Child> = (0..w)
        .map(|i| {
            spawn_worker(
                &url,
                &format!("w{i}"),
                Duration::from_secs(10),
                Duration::ZERO,
            )
        })
        .collect();
    let started = Instant::now();
    // Submitted 64 at a time in flight, as many clients would (or in batches of `batch`,
    // 4 in flight, with `submit_batch`).
    let mut pending = tokio::task::JoinSet::new();
    if batch == 1 {
        for i in 0..n {
            if pending.len() >= 64 {
                pending.join_next().await;
            }
            let (backend, key) = (backend.clone(), format!("{prefix}-{i}"));
            pending.spawn(async move {
                backend
                    .submit("three_steps", &key, &Context::new())
                    .await
                    .expect("submitted");
            });
        }
    } else {
        for start in (0..n).step_by(batch) {
            if pending.len() >= 4 {
                pending.join_next().await;
            }
            let runs: Vec<(String, Context)> = (start..(start + batch).min(n))
                .map(|i| (format!("{prefix}-{i}"), Context::new()))
                .collect();
            let backend = backend.clone();
            pending.spawn(async move {
                backend
                    .submit_batch("three_steps", &runs)
                    .await
                    .expect("submitted");
            });
        }
    }
    while pending.join_next().await.is_some() {}
    let last = format!("{prefix}-{}", n - 1);
    backend
        .wait_for("three_steps", &last, Duration::from_millis(20))
        .await
        .expect("the last run");
    // All of them, from the database.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("a connection");
    tokio::spawn(connection);
    loop {
        let unfinished: i64 = client
            .query_one(
                "SELECT count(*) FROM fluffy_runs WHERE run_key LIKE $1 AND status IN ('queued', 'running')",
                &[&format!("{prefix}-%")],
            )
            .await
            .expect("a count")
            .get(0);
        if unfinished == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed();
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'completed'),
                    extract(epoch FROM max(finished_at) - min(submitted_at))::float8,
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - submitted_at))::float8,
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - submitted_at))::float8,
                    (SELECT count(*) FROM fluffy_checkpoints WHERE run_key LIKE $1)
             FROM fluffy_runs WHERE run_key LIKE $1",
            &[&format!("{prefix}-%")],
        )
        .await
        .expect("the figures");
    let completed: i64 = row.get(0);
    let span: f64 = row.get(1);
    let (p50, p99): (f64, f64) = (row.get(2), row.get(3));
    let kept: i64 = row.get(4);
    for mut child in workers {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    println!(
        "{}",
        json!({
            "bench": "pg_runs",
            "n": n,
            "workers": w,
            "submit_batch": batch,
            "completed": completed,
            "correct": completed == n as i64,
            "runs_per_s": n as f64 / span,
            "wall_s": wall.as_secs_f64(),
            "submit_to_start_p50_ms": p50 * 1e3,
            "submit_to_start_p99_ms": p99 * 1e3,
            "checkpoints_kept": kept,
        })
    );
}

async fn failover() {
    let (_cluster, url, backend) = database().await;
    let lease = fluffy_flow::postgres::DEFAULT_LEASE;
    // The run's middle state takes 60 s: the run is in flight when its worker dies.
    let slow = Duration::from_secs(60);
    let mut first = spawn_worker(&url, "first", lease, slow);
    backend
        .submit("three_steps", "failover", &Context::new())
        .await
        .expect("submitted");
    loop {
        let run = backend
            .queued_run("three_steps", "failover")
            .await
            .expect("the run")
            .expect("submitted");
        if run.status == QueueStatus::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut second = spawn_worker(&url, "second", lease, Duration::ZERO);
    first.kill().expect("SIGKILL");
    let killed = Instant::now();
    first.wait().expect("reaped");
    let run = loop {
        let run = backend
            .queued_run("three_steps", "failover")
            .await
            .expect("the run")
            .expect("submitted");
        if run.worker.as_deref() == Some("second") {
            break run;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let failover = killed.elapsed();
    let done = backend
        .wait_for("three_steps", "failover", Duration::from_millis(50))
        .await
        .expect("the end");
    drop(second.stdin.take());
    let _ = second.wait();
    println!(
        "{}",
        json!({
            "bench": "pg_failover",
            "lease_s": lease.as_secs_f64(),
            "heartbeat_s": lease.as_secs_f64() / 2.0,
            "failover_s": failover.as_secs_f64(),
            "claims": run.claims,
            "correct": done.status == QueueStatus::Completed && run.claims == 2,
        })
    );
}
