//! Running: reports, live status, failures, cancellation, timeouts, concurrent runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fluffy_flow::RunCounts;
use fluffy_flow::prelude::*;
use tokio::time::{Instant, sleep};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn sleeper(agent: &mut Agent, name: &str, millis: u64, next: Next) {
    agent.add_state(name, move |_ctx: Context| {
        let next = next.clone();
        async move {
            sleep(ms(millis)).await;
            Ok(next)
        }
    });
}

#[tokio::test(start_paused = true)]
async fn the_report_has_status_context_and_per_state_metadata() {
    let mut agent = Agent::new("report");
    sleeper(&mut agent, "a", 30, Next::to("b"));
    agent.add_state("b", |ctx: Context| async move {
        sleep(ms(20)).await;
        ctx.set_state("done", true);
        Ok(Next::End)
    });
    agent.add_state("never", |_ctx: Context| async { Ok(Next::End) });
    let start = Instant::now();
    let report = agent.run().await.unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
    assert!(report.is_success());
    assert_eq!(report.error, None);
    assert_eq!(report.agent.as_ref(), "report");
    assert!(report.context.get_state::<bool>("done").unwrap());
    assert_eq!(report.duration, ms(50));
    assert_eq!(report.transitions, 2);
    let a = report.state("a").unwrap();
    assert_eq!(
        (a.status, a.runs, a.attempts, a.total_time),
        (StateStatus::Completed, 1, 1, ms(30))
    );
    assert_eq!(a.first_started, Some(start));
    assert_eq!(a.last_finished, Some(start + ms(30)));
    let b = report.state("b").unwrap();
    assert_eq!(b.first_started, Some(start + ms(30)));
    assert_eq!(b.total_time, ms(20));
    let never = report.state("never").unwrap();
    assert_eq!(
        (never.status, never.runs, never.first_started),
        (StateStatus::Pending, 0, None)
    );
    assert_eq!(report.states.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn status_and_counts_are_readable_while_the_run_goes_on() {
    let mut agent = Agent::new("live");
    agent.add_state("start", |_ctx: Context| async {
        Ok(Next::parallel(["fast", "slow"]))
    });
    sleeper(&mut agent, "fast", 10, Next::to("merge"));
    sleeper(&mut agent, "slow", 100, Next::to("merge"));
    sleeper(&mut agent, "merge", 10, Next::End);
    let observer = agent.clone();
    assert_eq!(observer.status(), AgentStatus::Idle);
    assert_eq!(observer.state_status("slow"), None);

    let handle = agent.start().unwrap();
    sleep(ms(50)).await;
    assert_eq!(handle.status(), AgentStatus::Running);
    assert_eq!(
        observer.status(),
        AgentStatus::Running,
        "a clone sees the latest run"
    );
    assert_eq!(handle.state_status("start"), Some(StateStatus::Completed));
    assert_eq!(handle.state_status("fast"), Some(StateStatus::Completed));
    assert_eq!(handle.state_status("slow"), Some(StateStatus::Running));
    assert_eq!(
        handle.state_status("merge"),
        Some(StateStatus::Blocked),
        "held at the join"
    );
    assert_eq!(handle.state_status("nope"), None);
    assert_eq!(
        handle.counts(),
        RunCounts {
            completed: 2,
            running: 1,
            pending: 1
        }
    );
    assert_eq!(observer.counts(), handle.counts());

    sleep(ms(55)).await;
    assert_eq!(handle.state_status("merge"), Some(StateStatus::Running));
    assert_eq!(
        handle.counts(),
        RunCounts {
            completed: 3,
            running: 1,
            pending: 0
        }
    );

    let report = handle.wait().await;
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!(observer.status(), AgentStatus::Completed);
    assert_eq!(
        observer.counts(),
        RunCounts {
            completed: 4,
            running: 0,
            pending: 0
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_state_fails_the_run_and_cancels_its_siblings() {
    let finished = Arc::new(AtomicBool::new(false));
    let mut agent = Agent::new("failing");
    agent.add_state("start", |_ctx: Context| async {
        Ok(Next::parallel(["bad", "long"]))
    });
    agent.add_state_with_error("bad", |_ctx: Context| async {
        sleep(ms(5)).await;
        Err::<Next, _>(std::io::Error::other("connection reset"))
    });
    let flag = Arc::clone(&finished);
    agent.add_state("long", move |_ctx: Context| {
        let flag = Arc::clone(&flag);
        async move {
            sleep(ms(1000)).await;
            flag.store(true, Ordering::SeqCst);
            Ok(Next::End)
        }
    });
    let report = agent.start().unwrap().wait().await;
    assert_eq!(report.status, AgentStatus::Failed);
    assert_eq!(
        report.error.as_ref().unwrap().to_string(),
        "state `bad` failed after 1 attempt(s): connection reset"
    );
    assert_eq!(report.state("bad").unwrap().status, StateStatus::Failed);
    assert_eq!(
        report.state("bad").unwrap().last_error.as_deref(),
        Some("state `bad` failed after 1 attempt(s): connection reset")
    );
    assert_eq!(report.state("long").unwrap().status, StateStatus::Cancelled);
    assert_eq!(report.duration, ms(5));
    sleep(ms(2000)).await;
    assert!(
        !finished.load(Ordering::SeqCst),
        "the sibling was aborted, not left running"
    );
}

#[tokio::test]
async fn a_panic_is_reported_and_the_runtime_survives() {
    let mut agent = Agent::new("panicky");
    agent.add_state("explode", |ctx: Context| async move {
        let items: Vec<u32> = ctx.get_state_or("items", vec![])?;
        if items.is_empty() {
            panic!("no items to process");
        }
        Ok(Next::End)
    });
    let error = agent.run().await.unwrap_err();
    assert_eq!(
        error,
        FlowError::StatePanicked {
            state: "explode".into(),
            attempts: 1,
            message: "no items to process".into()
        }
    );
    // The same runtime and agent still work.
    let context = Context::new();
    context.set_state("items", vec![1u32]);
    assert!(agent.run_with(context).await.is_ok());

    let mut eager = Agent::new("eager");
    eager.add_state(
        "sync_panic",
        |_ctx: Context| -> std::future::Ready<StateResult> { panic!("before any future") },
    );
    let error = eager.run().await.unwrap_err();
    assert!(
        matches!(error, FlowError::StatePanicked { message, .. } if message == "before any future")
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_timeout_fails_the_run_and_aborts_running_states() {
    let mut agent = Agent::new("timed");
    agent.timeout(ms(1000));
    sleeper(&mut agent, "forever", 60_000, Next::End);
    let start = Instant::now();
    let report = agent.start().unwrap().wait().await;
    assert_eq!(start.elapsed(), ms(1000));
    assert_eq!(
        report.error,
        Some(FlowError::RunTimedOut {
            agent: "timed".into(),
            timeout: ms(1000),
            running: vec!["forever".into()],
        })
    );
    assert_eq!(report.status, AgentStatus::Failed);
    assert_eq!(
        report.state("forever").unwrap().status,
        StateStatus::Cancelled
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_stops_the_run() {
    let mut agent = Agent::new("cancelled");
    sleeper(&mut agent, "a", 10, Next::to("b"));
    sleeper(&mut agent, "b", 10_000, Next::End);
    let handle = agent.start().unwrap();
    sleep(ms(20)).await;
    handle.cancel();
    let report = handle.wait().await;
    assert_eq!(report.status, AgentStatus::Cancelled);
    assert_eq!(
        report.error,
        Some(FlowError::Cancelled {
            agent: "cancelled".into()
        })
    );
    assert_eq!(report.state("a").unwrap().status, StateStatus::Completed);
    assert_eq!(report.state("b").unwrap().status, StateStatus::Cancelled);
    assert_eq!(report.duration, ms(20));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_run_future_cancels_the_run() {
    let mut agent = Agent::new("dropped");
    sleeper(&mut agent, "slow", 10_000, Next::End);
    let outcome = tokio::time::timeout(ms(100), agent.run()).await;
    assert!(outcome.is_err(), "the caller gave up");
    sleep(ms(1)).await;
    assert_eq!(agent.status(), AgentStatus::Cancelled);
    assert_eq!(agent.state_status("slow"), Some(StateStatus::Cancelled));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_serves_many_concurrent_runs_each_with_its_own_context() {
    let mut agent = Agent::new("per request");
    agent.add_state("double", |ctx: Context| async move {
        let input: u64 = ctx.get_state("input")?;
        tokio::task::yield_now().await;
        ctx.set_state("output", input * 2);
        Ok(Next::End)
    });
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let agent = agent.clone();
        tasks.push(tokio::spawn(async move {
            let context = Context::new();
            context.set_state("input", i);
            let report = agent.run_with(context).await.unwrap();
            (
                i,
                report.run_id,
                report.context.get_state::<u64>("output").unwrap(),
            )
        }));
    }
    let mut run_ids = Vec::new();
    for task in tasks {
        let (input, run_id, output) = task.await.unwrap();
        assert_eq!(output, input * 2);
        run_ids.push(run_id);
    }
    run_ids.sort_unstable();
    run_ids.dedup();
    assert_eq!(run_ids.len(), 200, "every run has its own id");
}

#[test]
fn starting_outside_a_runtime_is_an_error_not_a_panic() {
    let mut agent = Agent::new("no runtime");
    agent.add_state("a", |_ctx: Context| async { Ok(Next::End) });
    assert!(matches!(agent.start(), Err(FlowError::NoRuntime { agent }) if agent == "no runtime"));
}

#[tokio::test]
async fn a_loop_of_instant_states_yields_and_can_be_cancelled() {
    // Each run of `spin` finishes on its first poll, so the coordinator runs it inline; it
    // must still yield to other tasks (this test's) and notice the cancellation.
    let mut agent = Agent::new("spinner");
    agent.add_state("spin", |_ctx: Context| async { Ok(Next::to("spin")) });
    let handle = agent.start().unwrap();
    while handle.counts().completed < 5_000 {
        tokio::task::yield_now().await;
    }
    handle.cancel();
    let report = handle.wait().await;
    assert_eq!(report.status, AgentStatus::Cancelled);
    assert!(report.state("spin").unwrap().runs >= 5_000);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_too_long_for_the_clock_means_no_deadline() {
    let mut agent = Agent::new("patient");
    agent.timeout(Duration::MAX);
    sleeper(&mut agent, "a", 10, Next::End);
    assert!(agent.run().await.is_ok());
}

#[tokio::test]
async fn a_state_of_a_dropped_run_is_not_polled_again() {
    // A state that keeps working, yielding between steps. Once the caller drops the run's
    // future, the state must not take another step, even though the run's coordinator has
    // not yet had a turn to hear of it.
    let steps = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut agent = Agent::new("dropped");
    let counter = Arc::clone(&steps);
    agent.add_state("busy", move |_ctx: Context| {
        let counter = Arc::clone(&counter);
        async move {
            loop {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                if counter.load(Ordering::SeqCst) == u64::MAX {
                    return Ok(Next::End);
                }
            }
        }
    });
    let mut run = Box::pin(agent.run());
    std::future::poll_fn(|cx| {
        let _ = run.as_mut().poll(cx);
        if steps.load(Ordering::SeqCst) >= 3 {
            std::task::Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
    drop(run);
    let at_drop = steps.load(Ordering::SeqCst);
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        steps.load(Ordering::SeqCst),
        at_drop,
        "the state ran on after the drop"
    );
    assert_eq!(agent.status(), AgentStatus::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn the_callers_context_reports_the_runs_cancellation() {
    let mut agent = Agent::new("observed");
    sleeper(&mut agent, "slow", 10_000, Next::End);
    let context = Context::new();
    let handle = agent.start_with(context.clone()).unwrap();
    sleep(ms(10)).await;
    assert!(!context.is_cancelled());
    handle.cancel();
    assert!(
        context.is_cancelled(),
        "the caller's handle sees the run stop"
    );
    // `cancelled()` completes on the caller's handle too.
    tokio::time::timeout(ms(1), context.cancelled())
        .await
        .expect("cancelled() completes");
    handle.wait().await;
    // A context never given to a run is never cancelled.
    assert!(!Context::new().is_cancelled());
}

#[tokio::test]
async fn an_event_capacity_rounds_up_to_a_power_of_two() {
    let mut agent = Agent::new("events");
    for i in 0..20 {
        let next = if i < 19 {
            Next::to(format!("s{}", i + 1))
        } else {
            Next::End
        };
        agent.add_state(format!("s{i}"), move |_ctx: Context| {
            let next = next.clone();
            async move { Ok(next) }
        });
    }
    agent.event_capacity(5);
    let mut events = agent.subscribe();
    agent.run().await.unwrap();
    let kept = events.drain();
    // 8 events kept (5 rounded up), the rest reported as missed.
    match kept {
        Err(fluffy_flow::EventStreamError::Lagged(missed)) => assert!(missed > 0),
        other => panic!("{other:?}"),
    }
    let mut count = 0;
    while let Some(Ok(_)) = events.try_recv() {
        count += 1;
    }
    assert_eq!(count, 8);
}

#[test]
fn a_retry_policy_past_the_limit_is_refused_by_the_builder_too() {
    let mut agent = Agent::new("retries");
    agent
        .add_state("a", |_ctx: Context| async { Ok(Next::End) })
        .retry(fluffy_flow::RetryPolicy {
            max_retries: 5000,
            ..fluffy_flow::RetryPolicy::default()
        });
    let error = agent.validate().unwrap_err();
    let text = error.to_string();
    assert!(text.contains("state `a`"), "{text}");
    assert!(
        text.contains("`max_retries` is 5000; at most 1000"),
        "{text}"
    );
    let mut agent = Agent::new("shrinking");
    agent.add_state("a", |_ctx: Context| async { Ok(Next::End) });
    agent.default_retry(fluffy_flow::RetryPolicy {
        exponential_base: 0.5,
        ..fluffy_flow::RetryPolicy::default()
    });
    let text = agent.validate().unwrap_err().to_string();
    assert!(
        text.contains("`exponential_base` must be at least 1.0"),
        "{text}"
    );
}
