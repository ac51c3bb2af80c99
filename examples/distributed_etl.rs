//! Two processes, one PostgreSQL database: this process submits nightly ETL runs and works on
//! them, and a second worker process (this program again, `distributed_etl worker URL`)
//! works beside it. Each run extracts a day's rows, transforms four partitions in parallel
//! and loads the total; every state is checkpointed in the database, and each run's end is
//! recorded once in the queue.
//!
//! ```text
//! cargo run --features postgres --example distributed_etl            # its own throwaway cluster
//! DATABASE_URL=postgres://... cargo run --features postgres --example distributed_etl
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use fluffy_flow::postgres::{CancellationToken, PgBackend, QueueStatus, TempCluster, Worker};
use fluffy_flow::prelude::*;

/// The nightly ETL: `extract` → four `transform_*` in parallel → `load`.
fn etl() -> Agent {
    let mut agent = Agent::new("nightly_etl");
    let partitions = ["transform_a", "transform_b", "transform_c", "transform_d"];
    agent
        .add_state("extract", move |ctx: Context| async move {
            let day: u32 = ctx.get_state("day")?;
            // A day's rows: 100 values derived from the day.
            let rows: Vec<u64> = (0..100).map(|i| u64::from(day) * 1000 + i).collect();
            ctx.set_state("rows", rows);
            Ok(Next::parallel(partitions))
        })
        .successors(partitions);
    for (index, name) in partitions.into_iter().enumerate() {
        agent
            .add_state(name, move |ctx: Context| async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let rows: Vec<u64> = ctx.get_state("rows")?;
                let sum: u64 = rows.iter().skip(index * 25).take(25).sum();
                ctx.set_state(format!("partition_{index}"), sum);
                Ok(Next::to("load"))
            })
            .successors(["load"]);
    }
    agent.add_state("load", |ctx: Context| async move {
        let total: u64 = (0..4)
            .map(|i| ctx.get_state::<u64>(&format!("partition_{i}")))
            .sum::<Result<u64, _>>()?;
        ctx.set_state("total", total);
        Ok(Next::End)
    });
    agent
}

fn worker(backend: &PgBackend, name: &str) -> Worker {
    Worker::new(backend)
        .name(name)
        .register(&etl())
        .concurrency(4)
        .lease(Duration::from_secs(4))
        .heartbeat(Duration::from_secs(1))
}

#[tokio::main]
async fn main() -> Result<(), FlowError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, url] = args.as_slice()
        && mode == "worker"
    {
        // The second process: works until its stdin closes.
        let backend = PgBackend::connect(url).await?;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {}
            stop.cancel();
        });
        println!("ready");
        let report = worker(&backend, "second-process").run(shutdown).await?;
        println!("second process: {} runs finished", report.finished);
        return Ok(());
    }

    let (_cluster, url) = match std::env::var("DATABASE_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let cluster = TempCluster::start()?;
            let url = cluster.create_database("etl")?;
            (Some(cluster), url)
        }
    };
    let backend = PgBackend::connect(&url).await?;
    backend.migrate().await?;

    // The second worker process.
    let mut second = Command::new(std::env::current_exe().expect("this program"))
        .args(["worker", &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("a second process");
    let mut output = BufReader::new(second.stdout.take().expect("its output"));
    let mut line = String::new();
    while output.read_line(&mut line).expect("its output") > 0 && !line.contains("ready") {
        line.clear();
    }

    let shared = share_the_month(&backend).await;
    // However that went, the second process stops (its stdin closes) and is waited for.
    drop(second.stdin.take());
    let mut rest = String::new();
    while output.read_line(&mut rest).expect("its output") > 0 {}
    second.wait().expect("the second process");
    let (grand_total, by_worker, finished) = shared?;

    println!("30 nightly runs completed, each recorded once; grand total {grand_total}");
    for (worker, runs) in &by_worker {
        println!("  {worker}: {runs} runs");
    }
    println!("first process: {finished} runs finished");
    print!("{rest}");
    Ok(())
}

/// Submits a month of nightly runs, works on them in this process, and waits for every one:
/// the grand total, runs per worker, and how many this process finished.
async fn share_the_month(
    backend: &PgBackend,
) -> Result<(u64, BTreeMap<String, u32>, u64), FlowError> {
    // This process works too.
    let shutdown = CancellationToken::new();
    let here = tokio::spawn(worker(backend, "first-process").run(shutdown.clone()));

    // A month of nightly runs, submitted once each (submitting a day again does nothing).
    for day in 1..=30u32 {
        let context = Context::new();
        context.set_state("day", day);
        backend
            .submit("nightly_etl", &format!("2026-11-{day:02}"), &context)
            .await?;
    }
    let again = backend
        .submit("nightly_etl", "2026-11-01", &Context::new())
        .await?;
    assert!(!again.new);

    let mut by_worker = BTreeMap::new();
    let mut grand_total = 0u64;
    for day in 1..=30u32 {
        let run = backend
            .wait_for(
                "nightly_etl",
                &format!("2026-11-{day:02}"),
                Duration::from_millis(200),
            )
            .await?;
        assert_eq!(run.status, QueueStatus::Completed, "{:?}", run.error);
        let total = run
            .context
            .as_ref()
            .and_then(|values| values.get("total"))
            .and_then(|total| total.as_u64())
            .expect("a total");
        // 100 rows of day * 1000 + 0..99.
        assert_eq!(total, u64::from(day) * 100_000 + 4950);
        grand_total += total;
        *by_worker.entry(run.worker.unwrap_or_default()).or_insert(0) += 1;
    }
    shutdown.cancel();
    let report = here.await.expect("the worker task")?;
    Ok((grand_total, by_worker, report.finished))
}
