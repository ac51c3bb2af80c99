//! Worker processes on the PostgreSQL run queue (feature `postgres`): three processes run 200
//! durable runs with fan-outs and retries; one is killed with SIGKILL mid-run and another is
//! stopped with SIGSTOP until its leases lapse, then continued. Every run completes with the
//! context of the same run in one process, each run's end is recorded once (a trigger in the
//! test's database counts them), the killed worker's runs are taken over, and the stopped
//! worker's late writes are refused (it counts them as lost). The four branches are remote
//! states: their attempts go to any of the processes, die with the killed one, lapse with
//! the stopped one, and are taken again.
//!
//! The worker processes are this test binary again, running `worker_process` with the
//! database's URL in its environment.

#[path = "common/postgres.rs"]
mod postgres;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fluffy_flow::RetryPolicy;
use fluffy_flow::postgres::{CancellationToken, PgBackend, QueueStatus, Worker};
use fluffy_flow::prelude::*;
use serde_json::json;

const URL_VAR: &str = "FLUFFY_PG_WORKER_URL";
const NAME_VAR: &str = "FLUFFY_PG_WORKER_NAME";
const RUNS: u64 = 200;

/// `n` → `load` (fails its first attempt) → four remote branches writing `n * k`, each
/// taking `delay` → `sum`.
fn pipeline(delay: Duration) -> Agent {
    let mut agent = Agent::new("pipeline");
    agent
        .add_state("load", |ctx: Context| async move {
            if ctx.attempt() == Some(1) {
                return Err("the source was busy".into());
            }
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
                    tokio::time::sleep(delay).await;
                    let n: u64 = ctx.get_state("n")?;
                    ctx.set_state(key, n * k);
                    Ok(Next::to("sum"))
                }
            })
            .successors(["sum"])
            .remote();
    }
    agent.add_state("sum", move |ctx: Context| async move {
        tokio::time::sleep(delay).await;
        let total: u64 = (1..=4)
            .map(|k| ctx.get_state::<u64>(&format!("k{k}")))
            .sum::<Result<u64, _>>()?;
        ctx.set_state("total", total);
        Ok(Next::End)
    });
    agent
}

/// The worker process (a no-op when run as a test): runs until its stdin closes, then
/// prints its report as one JSON line.
#[test]
fn worker_process() {
    let Ok(url) = std::env::var(URL_VAR) else {
        return;
    };
    let name = std::env::var(NAME_VAR).unwrap_or_else(|_| "worker".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let backend = PgBackend::connect(&url).await.unwrap();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {}
            stop.cancel();
        });
        println!("ready");
        let report = Worker::new(&backend)
            .name(name)
            .register(&pipeline(Duration::from_millis(20)))
            .concurrency(8)
            .lease(Duration::from_secs(1))
            .heartbeat(Duration::from_millis(250))
            .run(shutdown)
            .await
            .unwrap();
        println!(
            "{}",
            json!({
                "claimed": report.claimed,
                "finished": report.finished,
                "lost": report.lost,
                "released": report.released,
                "remote_attempts": report.remote_attempts,
            })
        );
    });
}

fn spawn_worker(url: &str, name: &str) -> Child {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "worker_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(URL_VAR, url)
        .env(NAME_VAR, name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: only an async-signal-safe call between fork and exec. A worker dies with the
    // test's thread that started it, even when the test fails half-way (stopped or not).
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    // Wait for its "ready" line.
    let stdout = child.stdout.as_mut().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 && !line.contains("ready") {
        line.clear();
    }
    child
}

/// Closes the worker's stdin (it stops, giving its runs back) and reads its report.
fn stop_worker(mut child: Child) -> serde_json::Value {
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|line| line.starts_with('{'))
        .unwrap_or_else(|| panic!("no report in {text:?}"));
    serde_json::from_str(line).unwrap()
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: signals a child process this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_stopped_worker_processes_lose_no_run_and_record_each_end_once() {
    let Some(backend) = postgres::backend("failover").await else {
        return;
    };
    let url = postgres::url("failover");
    let client = postgres::client(&url).await;
    // Every recorded end, counted by the database itself.
    client
        .batch_execute(
            "CREATE TABLE test_endings (run_id bigint NOT NULL, status text NOT NULL);
             CREATE FUNCTION test_record_ending() RETURNS trigger AS $$
             BEGIN
                 INSERT INTO test_endings VALUES (NEW.id, NEW.status);
                 RETURN NEW;
             END $$ LANGUAGE plpgsql;
             CREATE TRIGGER test_endings AFTER UPDATE OF status ON fluffy_runs
             FOR EACH ROW WHEN (NEW.status NOT IN ('queued', 'running'))
             EXECUTE FUNCTION test_record_ending();
             CREATE TABLE test_replies (task_id bigint NOT NULL, worker text NOT NULL);
             CREATE FUNCTION test_record_reply() RETURNS trigger AS $$
             BEGIN
                 INSERT INTO test_replies VALUES (NEW.id, NEW.worker);
                 RETURN NEW;
             END $$ LANGUAGE plpgsql;
             CREATE TRIGGER test_replies AFTER UPDATE OF status ON fluffy_tasks
             FOR EACH ROW WHEN (NEW.status = 'done')
             EXECUTE FUNCTION test_record_reply();",
        )
        .await
        .unwrap();
    for i in 0..RUNS {
        let context = Context::new();
        context.set_state("n", i);
        backend
            .submit("pipeline", &format!("run-{i}"), &context)
            .await
            .unwrap();
    }
    let killed = spawn_worker(&url, "killed");
    let stopped = spawn_worker(&url, "stopped");
    let steady = spawn_worker(&url, "steady");

    // (Every wait below fails the test after a minute rather than hanging.)
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let in_time = |what: &str| {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not happen within a minute"
        );
    };
    // Mid-run: some ended, the first two workers hold runs.
    loop {
        in_time("both workers holding runs");
        let ended = count(&client, "SELECT count(*) FROM test_endings").await;
        let held = count(
            &client,
            "SELECT count(DISTINCT worker) FROM fluffy_runs
             WHERE status = 'running' AND worker IN ('killed', 'stopped')",
        )
        .await;
        if ended >= 20 && held == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stopped while it holds runs (it may have finished those it held a moment ago).
    loop {
        in_time("stopping a worker that holds runs");
        signal(&stopped, libc::SIGSTOP);
        let holds = count(
            &client,
            "SELECT count(*) FROM fluffy_runs WHERE status = 'running' AND worker = 'stopped'",
        )
        .await;
        if holds > 0 {
            break;
        }
        signal(&stopped, libc::SIGCONT);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut killed = killed;
    killed.kill().unwrap(); // SIGKILL
    killed.wait().unwrap();
    let taken_over = count(
        &client,
        "SELECT count(*) FROM fluffy_runs WHERE status = 'running' AND worker IN ('killed', 'stopped')",
    )
    .await;
    assert!(taken_over > 0);

    // The stopped worker stays stopped until every run it held is someone else's.
    loop {
        in_time("the lost workers' runs taken over");
        let still = count(
            &client,
            "SELECT count(*) FROM fluffy_runs WHERE status = 'running' AND worker IN ('killed', 'stopped')",
        )
        .await;
        if still == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&stopped, libc::SIGCONT);

    for i in 0..RUNS {
        let run = backend
            .wait_for("pipeline", &format!("run-{i}"), Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(
            run.status,
            QueueStatus::Completed,
            "run-{i}: {:?}",
            run.error
        );
        let alone = pipeline(Duration::ZERO)
            .run_with({
                let context = Context::new();
                context.set_state("n", i);
                context
            })
            .await
            .unwrap()
            .context
            .snapshot()
            .unwrap();
        assert_eq!(run.context.as_ref(), Some(&alone), "run-{i}");
    }
    // Each end recorded once, all of them completions.
    let endings = count(&client, "SELECT count(*) FROM test_endings").await;
    let distinct = count(&client, "SELECT count(DISTINCT run_id) FROM test_endings").await;
    assert_eq!((endings, distinct), (RUNS as i64, RUNS as i64));
    let reclaimed = count(&client, "SELECT count(*) FROM fluffy_runs WHERE claims > 1").await;
    assert!(
        // (Not every run counted as held then is claimed again: an end the killed worker
        // sent just before it died may commit after that count.)
        reclaimed > 0,
        "{reclaimed} runs claimed again, {taken_over} held by the lost workers"
    );

    // Every remote attempt's reply was taken, once per attempt, by workers of every kind.
    assert_eq!(count(&client, "SELECT count(*) FROM fluffy_tasks").await, 0);
    let (replies, attempts) = (
        count(&client, "SELECT count(*) FROM test_replies").await,
        count(&client, "SELECT count(DISTINCT task_id) FROM test_replies").await,
    );
    assert_eq!(replies, attempts, "one reply per attempt");
    assert!(attempts >= 4 * RUNS as i64, "{attempts} attempts");
    let repliers = count(&client, "SELECT count(DISTINCT worker) FROM test_replies").await;
    assert!(repliers >= 2, "attempts answered by {repliers} workers");

    let stopped_report = stop_worker(stopped);
    let steady_report = stop_worker(steady);
    // The stopped worker's runs were taken over: lost, whether it found out when it woke (what
    // they wrote was refused) or as it stopped (what it gave back was not its own).
    assert!(
        stopped_report["lost"].as_u64().unwrap() >= 1,
        "{stopped_report}"
    );
    assert!(
        steady_report["finished"].as_u64().unwrap() >= 1,
        "{steady_report}"
    );
}
