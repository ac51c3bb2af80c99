//! The monitor: exact figures on the paused clock for durations and percentiles, queue waits,
//! retries apart from failures, throughput windows, concurrency, input waits, several agents,
//! live updates and reset.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{MetricType, Monitor, RetryPolicy, Snapshot, Summary};
use tokio::time::sleep;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Within the histogram's precision (2 significant digits: 1%).
fn close(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() <= expected * 0.01 + 1e-9
}

fn assert_summary(summary: &Summary, count: u64, min: f64, p50: f64, p95: f64, max: f64) {
    assert_eq!(summary.count, count, "{summary:?}");
    for (what, actual, expected) in [
        ("min", summary.min_ms, min),
        ("p50", summary.p50_ms, p50),
        ("p95", summary.p95_ms, p95),
        ("max", summary.max_ms, max),
    ] {
        assert!(
            close(actual, expected),
            "{what}: {actual} against {expected}: {summary:?}"
        );
    }
}

fn state<'a>(snapshot: &'a Snapshot, workflow: &str, state: &str) -> &'a fluffy_flow::StateMetrics {
    &snapshot.workflows[workflow].states[state]
}

#[tokio::test(start_paused = true)]
async fn ten_runs_of_10_to_100_ms_give_the_percentiles() {
    let mut agent = Agent::new("loop");
    agent.add_state("work", |ctx: Context| async move {
        let round = ctx.get_state_or::<u64>("round", 0)? + 1;
        sleep(ms(10 * round)).await;
        ctx.set_state("round", round);
        Ok(if round < 10 {
            Next::to("work")
        } else {
            Next::End
        })
    });
    let monitor = Monitor::new(MetricType::ALL);
    monitor.attach(&agent).unwrap();
    let report = agent.run().await.unwrap();
    let snapshot = monitor.snapshot();
    let work = state(&snapshot, "loop", "work");
    assert_eq!(
        (work.started, work.completed, work.failed, work.retried),
        (10, 10, 0, 0)
    );
    let duration = work.duration.as_ref().unwrap();
    assert_summary(duration, 10, 10.0, 50.0, 100.0, 100.0);
    assert!(close(duration.mean_ms, 55.0), "{duration:?}");
    // All states of the workflow together: the same ten.
    let all = snapshot.workflows["loop"].state_duration.as_ref().unwrap();
    assert_summary(all, 10, 10.0, 50.0, 100.0, 100.0);
    let runs = &snapshot.workflows["loop"];
    assert_eq!(runs.runs.started, 1);
    assert_eq!(runs.runs.completed, 1);
    let run = runs.run_duration.as_ref().unwrap();
    assert!(
        close(run.max_ms, report.duration.as_secs_f64() * 1000.0),
        "{run:?}"
    );
    assert!(close(run.max_ms, 550.0));
}

#[tokio::test(start_paused = true)]
async fn retries_are_counted_apart_from_final_failures() {
    let mut agent = Agent::new("flaky");
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    agent
        .add_state("recovers", move |_ctx: Context| {
            let calls = Arc::clone(&c);
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Err("not yet".into());
                }
                Ok(Next::to("gives_up"))
            }
        })
        .retry(RetryPolicy {
            max_retries: 2,
            initial_delay: ms(10),
            ..RetryPolicy::DEFAULT
        });
    agent
        .add_state("gives_up", |_ctx: Context| async {
            sleep(ms(5)).await;
            Err("never".into())
        })
        .retry(RetryPolicy {
            max_retries: 1,
            initial_delay: ms(10),
            ..RetryPolicy::DEFAULT
        });
    let monitor = Monitor::new(MetricType::ALL);
    monitor.attach(&agent).unwrap();
    assert!(agent.run().await.is_err());
    let snapshot = monitor.snapshot();
    let recovers = state(&snapshot, "flaky", "recovers");
    assert_eq!(
        (
            recovers.started,
            recovers.completed,
            recovers.retried,
            recovers.failed
        ),
        (3, 1, 2, 0)
    );
    let gives_up = state(&snapshot, "flaky", "gives_up");
    assert_eq!(
        (
            gives_up.started,
            gives_up.completed,
            gives_up.retried,
            gives_up.failed
        ),
        (2, 0, 1, 1)
    );
    let workflow = &snapshot.workflows["flaky"];
    assert_eq!(workflow.runs.failed, 1);
    assert_eq!(workflow.errors.as_ref().unwrap()["error"], 1);
    assert_eq!(workflow.concurrency.as_ref().unwrap().running, 0);
}

#[tokio::test(start_paused = true)]
async fn queue_waits_and_concurrency() {
    let mut agent = Agent::new("narrow");
    agent.add_state("fork", |_ctx: Context| async {
        Ok(Next::parallel(["a", "b", "c"]))
    });
    for name in ["a", "b", "c"] {
        agent.add_state(name, |_ctx: Context| async {
            sleep(ms(100)).await;
            Ok(Next::End)
        });
    }
    agent.max_concurrent(1);
    let wide = {
        let mut agent = Agent::new("wide");
        agent.add_state("fork", |_ctx: Context| async {
            Ok(Next::parallel(["a", "b", "c", "d", "e"]))
        });
        for name in ["a", "b", "c", "d", "e"] {
            agent.add_state(name, |_ctx: Context| async {
                sleep(ms(100)).await;
                Ok(Next::End)
            });
        }
        agent
    };
    let monitor = Monitor::new(MetricType::TIMING | MetricType::STATE);
    monitor.attach(&agent).unwrap();
    monitor.attach(&wide).unwrap();
    agent.run().await.unwrap();
    wide.run().await.unwrap();
    let snapshot = monitor.snapshot();
    // One at a time: the three branches waited 0, 100 and 200 ms for the slot.
    let mut waits: Vec<f64> = ["a", "b", "c"]
        .iter()
        .map(|s| {
            state(&snapshot, "narrow", s)
                .queue_wait
                .as_ref()
                .unwrap()
                .max_ms
        })
        .collect();
    waits.sort_by(f64::total_cmp);
    assert!(
        close(waits[1], 100.0) && close(waits[2], 200.0),
        "{waits:?}"
    );
    let narrow = snapshot.workflows["narrow"].concurrency.as_ref().unwrap();
    assert_eq!((narrow.running, narrow.peak, narrow.queued), (0, 1, 0));
    let wide = snapshot.workflows["wide"].concurrency.as_ref().unwrap();
    assert_eq!((wide.running, wide.peak, wide.queued), (0, 5, 0));
    // Only what was asked for.
    assert!(snapshot.workflows["wide"].throughput.is_none());
    assert!(snapshot.workflows["wide"].errors.is_none());
}

#[tokio::test(start_paused = true)]
async fn throughput_over_the_window_and_overall() {
    let mut agent = Agent::new("chain");
    agent.add_state("step", |ctx: Context| async move {
        let done = ctx.get_state_or::<u32>("done", 0)? + 1;
        sleep(ms(100)).await;
        ctx.set_state("done", done);
        Ok(if done < 20 {
            Next::to("step")
        } else {
            Next::End
        })
    });
    let monitor = Monitor::new(MetricType::THROUGHPUT).window(Duration::from_secs(1));
    monitor.attach(&agent).unwrap();
    agent.run().await.unwrap();
    // Completions at 100, 200, ... 2000 ms; now is 2000 ms.
    let snapshot = monitor.snapshot();
    let throughput = snapshot.workflows["chain"].throughput.as_ref().unwrap();
    assert!(close(throughput.states_per_s, 10.0), "{throughput:?}");
    assert!(
        close(throughput.states_per_s_window, 11.0),
        "{throughput:?}"
    );
    assert!(close(throughput.runs_per_s, 0.5), "{throughput:?}");
    assert_eq!(throughput.window_s, 1.0);
    // Two seconds later, nothing in the window.
    sleep(Duration::from_secs(2)).await;
    let later = monitor.snapshot();
    let throughput = later.workflows["chain"].throughput.as_ref().unwrap();
    assert_eq!(throughput.states_per_s_window, 0.0);
    assert!(close(throughput.states_per_s, 5.0), "{throughput:?}");
}

#[tokio::test(start_paused = true)]
async fn input_waits_are_measured() {
    let mut agent = Agent::new("review");
    agent.add_state("ask", |ctx: Context| async move {
        ctx.human_input("ok?")
            .validator(|a: &str| if a == "yes" { Ok(()) } else { Err("say yes") })
            .await?;
        Ok(Next::End)
    });
    let monitor = Monitor::new(MetricType::INPUT);
    monitor.attach(&agent).unwrap();
    let handle = agent.start().unwrap();
    sleep(ms(300)).await;
    let id = handle.pending_inputs()[0].id.clone();
    assert!(handle.answer(&id, "no").is_err());
    handle.answer(&id, "yes").unwrap();
    handle.wait().await;
    let snapshot = monitor.snapshot();
    let input = state(&snapshot, "review", "ask").input.as_ref().unwrap();
    assert_eq!(
        (
            input.requested,
            input.answered,
            input.refused,
            input.timed_out
        ),
        (1, 1, 1, 0)
    );
    assert_summary(input.wait.as_ref().unwrap(), 1, 300.0, 300.0, 300.0, 300.0);
}

#[tokio::test(start_paused = true)]
async fn live_updates_on_the_paused_clock_and_reset() {
    let mut agent = Agent::new("steps");
    agent.add_state("step", |ctx: Context| async move {
        let done = ctx.get_state_or::<u32>("done", 0)? + 1;
        sleep(ms(100)).await;
        ctx.set_state("done", done);
        Ok(if done < 5 {
            Next::to("step")
        } else {
            Next::End
        })
    });
    let monitor = Monitor::new(MetricType::ALL);
    monitor.attach(&agent).unwrap();
    let mut updates = monitor.subscribe(ms(100));
    let handle = agent.start().unwrap();
    let mut completed = Vec::new();
    for _ in 0..6 {
        let snapshot = updates.next().await.unwrap();
        completed.push(
            snapshot
                .workflows
                .get("steps")
                .and_then(|w| w.states.get("step"))
                .map_or(0, |s| s.completed),
        );
    }
    handle.wait().await;
    // A snapshot at 0, 100, ... 500 ms: each sees the steps completed before its tick (the
    // one completing at the tick's instant may be read just after).
    assert_eq!(completed.len(), 6);
    assert!(completed.windows(2).all(|w| w[0] <= w[1]), "{completed:?}");
    assert_eq!(completed[0], 0);
    assert!(completed[5] >= 4, "{completed:?}");

    // A callback gets the same.
    let seen = Arc::new(AtomicU32::new(0));
    let s = Arc::clone(&seen);
    let guard = monitor
        .on_update(ms(100), move |snapshot| {
            let done = snapshot.workflows["steps"].states["step"].completed;
            s.store(done as u32, Ordering::SeqCst);
        })
        .unwrap();
    sleep(ms(150)).await;
    assert_eq!(seen.load(Ordering::SeqCst), 5);
    drop(guard);

    monitor.reset();
    assert!(monitor.snapshot().workflows.is_empty());
}

#[tokio::test(start_paused = true)]
async fn resource_utilisation_on_a_shared_pool() {
    use fluffy_flow::{ResourcePool, ResourceRequirements};
    let cpus = |n: f64| ResourceRequirements {
        cpu: n,
        ..ResourceRequirements::NONE
    };
    let pool = ResourcePool::new(cpus(4.0));
    let make = |name: &str, need: f64, work: u64| {
        let mut agent = Agent::new(name);
        agent
            .add_state("work", move |_ctx: Context| async move {
                sleep(ms(work)).await;
                Ok(Next::End)
            })
            .resources(cpus(need));
        agent.resource_pool(pool.clone());
        agent
    };
    // Two agents on one pool of 4 CPUs: 2 CPUs for 100 ms, and 4 CPUs for 100 ms after.
    let (first, second) = (make("first", 2.0, 100), make("second", 4.0, 100));
    let monitor = Monitor::new(MetricType::RESOURCES);
    monitor.attach(&first).unwrap();
    monitor.attach(&second).unwrap();
    first.run().await.unwrap();
    second.run().await.unwrap();
    let snapshot = monitor.snapshot();
    let pools = snapshot.pools.unwrap();
    assert_eq!(pools.len(), 1, "one pool, shared");
    assert_eq!(pools[0].workflows, ["first", "second"]);
    let cpu = &pools[0].kinds[0];
    assert_eq!(cpu.kind, "cpu");
    assert_eq!(
        (cpu.capacity, cpu.in_use, cpu.peak, cpu.grants),
        (4.0, 0.0, 4.0, 2)
    );
    // 2 of 4 for 100 ms, then 4 of 4 for 100 ms: 75% over the 200 ms.
    assert!((cpu.utilisation - 0.75).abs() < 1e-9, "{cpu:?}");
    // Idle for 300 ms more: 0.6 CPU-seconds used of 4 CPUs over 500 ms.
    sleep(ms(300)).await;
    let later = monitor.snapshot().pools.unwrap();
    assert!(
        (later[0].kinds[0].utilisation - 0.3).abs() < 1e-9,
        "{:?}",
        later[0].kinds[0]
    );
}

#[tokio::test(start_paused = true)]
async fn time_blocked_on_a_dependency() {
    use fluffy_flow::DependencyType;
    // `report` starts with `extract` but depends on `load`, done at 30 ms.
    let mut agent = Agent::new("etl");
    agent
        .add_state("start", |_ctx: Context| async {
            Ok(Next::parallel(["extract", "report"]))
        })
        .successors(["extract", "report"]);
    agent
        .add_state("extract", |_ctx: Context| async {
            sleep(ms(10)).await;
            Ok(Next::to("load"))
        })
        .successors(["load"]);
    agent
        .add_state("load", |_ctx: Context| async {
            sleep(ms(20)).await;
            Ok(Next::End)
        })
        .terminal();
    agent
        .add_state("report", |_ctx: Context| async { Ok(Next::End) })
        .depends_on("load", DependencyType::Required)
        .terminal();
    let monitor = Monitor::new(MetricType::TIMING);
    monitor.attach(&agent).unwrap();
    agent.run().await.unwrap();
    let snapshot = monitor.snapshot();
    let blocked = state(&snapshot, "etl", "report").blocked.as_ref().unwrap();
    assert_summary(blocked, 1, 30.0, 30.0, 30.0, 30.0);
    assert!(state(&snapshot, "etl", "load").blocked.is_none());
}

#[tokio::test(start_paused = true)]
async fn what_each_dependent_waited_on_and_the_longest_chain() {
    use fluffy_flow::DependencyType::Required;
    // fetch (10 ms) ← parse (5 ms) ← index ← publish, and config (50 ms) ← index: index waits
    // for config last, the others for the state before them.
    let mut agent = Agent::new("docs");
    agent
        .add_state("start", |_ctx: Context| async {
            Ok(Next::parallel(["fetch", "config"]))
        })
        .successors(["fetch", "config"]);
    for (name, took) in [("fetch", 10), ("config", 50)] {
        agent
            .add_state(name, move |_ctx: Context| async move {
                sleep(ms(took)).await;
                Ok(Next::End)
            })
            .terminal();
    }
    for (name, needs) in [
        ("parse", &["fetch"][..]),
        ("index", &["parse", "config"][..]),
        ("publish", &["index"][..]),
    ] {
        let mut state = agent
            .add_state(name, |_ctx: Context| async {
                sleep(ms(5)).await;
                Ok(Next::End)
            })
            .terminal();
        for &need in needs {
            state = state.depends_on(need, Required);
        }
    }
    let monitor = Monitor::new(MetricType::ALL);
    monitor.attach(&agent).unwrap();
    agent.run().await.unwrap();
    let snapshot = monitor.snapshot();
    let on = |state_name: &str| {
        state(&snapshot, "docs", state_name)
            .blocked_on
            .iter()
            .map(|(on, b)| (on.clone(), b.times, b.waited.max_ms))
            .collect::<Vec<_>>()
    };
    assert_eq!(on("parse"), [("fetch".to_owned(), 1, 10.0)]);
    assert_eq!(on("index"), [("config".to_owned(), 1, 50.0)]);
    assert_eq!(on("publish"), [("index".to_owned(), 1, 55.0)]);
    assert!(on("fetch").is_empty() && on("config").is_empty());
    let chain = snapshot.workflows["docs"]
        .longest_dependency_chain
        .as_ref()
        .unwrap();
    assert_eq!(chain.length, 4);
    assert_eq!(chain.states, ["fetch", "parse", "index", "publish"]);
}

#[tokio::test(start_paused = true)]
async fn a_run_is_counted_whole_once_it_has_returned_and_attaching_twice_counts_once() {
    let mut agent = Agent::new("twice");
    agent
        .add_state("a", |_ctx: Context| async { Ok(Next::to("b")) })
        .successors(["b"]);
    agent.add_state("b", |_ctx: Context| async {
        sleep(ms(3)).await;
        Ok(Next::End)
    });
    let monitor = Monitor::new(MetricType::ALL);
    monitor.attach(&agent).unwrap();
    monitor.attach(&agent).unwrap();
    // A new event channel keeps the monitor.
    agent.event_capacity(16);
    for _ in 0..3 {
        agent.run().await.unwrap();
    }
    // No yield, no wait: the runs handed everything over before they returned.
    let snapshot = monitor.snapshot();
    let w = &snapshot.workflows["twice"];
    assert_eq!((w.runs.started, w.runs.completed), (3, 3));
    assert_eq!(state(&snapshot, "twice", "a").completed, 3);
    assert_eq!(state(&snapshot, "twice", "b").completed, 3);
    let concurrency = w.concurrency.as_ref().unwrap();
    assert_eq!(
        (concurrency.running, concurrency.queued, concurrency.peak),
        (0, 0, 1)
    );
    // Three values are kept exactly; the workflow-wide figure merges both states.
    assert_summary(
        state(&snapshot, "twice", "b").duration.as_ref().unwrap(),
        3,
        3.0,
        3.0,
        3.0,
        3.0,
    );
    let all = w.state_duration.as_ref().unwrap();
    assert_eq!(all.count, 6);
    assert!(close(all.max_ms, 3.0) && all.min_ms < 0.01, "{all:?}");
}

#[tokio::test(start_paused = true)]
async fn two_graphs_of_one_workflow_name_share_their_states_totals_by_name() {
    // Two agents named alike with different graphs: their runs meet in one workflow's totals,
    // each state under its name; a state that never ran is not listed.
    let sleeper = |millis: u64, next: Option<&'static str>| {
        move |_ctx: Context| async move {
            sleep(ms(millis)).await;
            Ok(next.map_or(Next::End, Next::to))
        }
    };
    let mut first = Agent::new("etl");
    first
        .add_state("extract", sleeper(2, Some("load")))
        .successors(["load", "never"]);
    first.add_state("load", sleeper(4, None));
    first.add_state("never", sleeper(1, None));
    let mut second = Agent::new("etl");
    second
        .add_state("clean", sleeper(8, Some("load")))
        .successors(["load"]);
    second.add_state("load", sleeper(6, None));
    let monitor = Monitor::new(MetricType::ALL);
    monitor.attach(&first).unwrap();
    monitor.attach(&second).unwrap();
    first.run().await.unwrap();
    second.run().await.unwrap();
    first.run().await.unwrap();
    let snapshot = monitor.snapshot();
    let etl = &snapshot.workflows["etl"];
    assert_eq!(etl.runs.completed, 3);
    let names: Vec<&str> = etl.states.keys().map(String::as_str).collect();
    assert_eq!(names, ["clean", "extract", "load"]);
    assert_eq!(state(&snapshot, "etl", "extract").completed, 2);
    assert_eq!(state(&snapshot, "etl", "clean").completed, 1);
    let load = state(&snapshot, "etl", "load");
    assert_eq!((load.started, load.completed), (3, 3));
    assert_summary(load.duration.as_ref().unwrap(), 3, 4.0, 4.0, 6.0, 6.0);
    assert_eq!(etl.state_duration.as_ref().unwrap().count, 6);
}
