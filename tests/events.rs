//! The event subscription: every lifecycle event, in order, with tokio timestamps.

use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{EventKind, EventStreamError};
use tokio::time::Instant;

fn describe(kind: &EventKind) -> String {
    match kind {
        EventKind::RunStarted { agent } => format!("run_started {agent}"),
        EventKind::RunFinished { status, .. } => format!("run_finished {status:?}"),
        EventKind::StateReady { state } => format!("ready {state}"),
        EventKind::StateBlocked { state } => format!("blocked {state}"),
        EventKind::StateStarted {
            state,
            run,
            attempt: 1,
        } => format!("started {state} #{run}"),
        EventKind::StateStarted {
            state,
            run,
            attempt,
        } => format!("started {state} #{run}.{attempt}"),
        EventKind::StateRetrying {
            state,
            attempt,
            delay,
            ..
        } => format!("retrying {state} #{attempt} in {delay:?}"),
        EventKind::RunPaused => "paused".into(),
        EventKind::RunResumed => "resumed".into(),
        EventKind::StateCompleted { state, .. } => format!("completed {state}"),
        EventKind::StateFailed { state, error } => format!("failed {state}: {error}"),
        EventKind::StateCancelled { state } => format!("cancelled {state}"),
        other => format!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn every_lifecycle_event_is_published_in_order() {
    let mut agent = Agent::new("observed");
    agent.add_state("fetch", |_ctx: Context| async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(Next::parallel(["left", "right"]))
    });
    agent.add_state("left", |_ctx: Context| async { Ok(Next::to("join")) });
    agent.add_state("right", |_ctx: Context| async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(Next::to("join"))
    });
    agent.add_state("join", |_ctx: Context| async { Ok(Next::End) });
    let mut events = agent.subscribe();
    let start = Instant::now();
    let report = agent.run().await.unwrap();
    let events = events.drain().unwrap();
    let described: Vec<String> = events.iter().map(|e| describe(&e.kind)).collect();
    assert_eq!(
        described,
        [
            "run_started observed",
            "ready fetch",
            "started fetch #1",
            "completed fetch",
            "ready left",
            "ready right",
            "started left #1",
            "started right #1",
            "completed left",
            "blocked join",
            "completed right",
            "ready join",
            "started join #1",
            "completed join",
            "run_finished Completed",
        ]
    );
    assert!(events.iter().all(|e| e.run_id == report.run_id));
    let at = |text: &str| events[described.iter().position(|d| d == text).unwrap()].at - start;
    assert_eq!(at("completed fetch"), Duration::from_millis(10));
    assert_eq!(at("completed right"), Duration::from_millis(15));
    assert_eq!(at("run_finished Completed"), Duration::from_millis(15));
    match &events.last().unwrap().kind {
        EventKind::RunFinished { duration, .. } => assert_eq!(*duration, Duration::from_millis(15)),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn failures_are_published_and_slow_subscribers_learn_what_they_missed() {
    let mut agent = Agent::new("noisy");
    agent.event_capacity(4);
    agent.add_state("a", |_ctx: Context| async { Ok(Next::to("b")) });
    agent.add_state_with_error("b", |_ctx: Context| async {
        Err::<Next, _>(FlowError::MissingKey {
            key: "input".into(),
        })
    });
    let mut events = agent.subscribe();
    let _ = agent.run().await;
    // 8 events were published into a buffer of 4.
    assert_eq!(events.try_recv(), Some(Err(EventStreamError::Lagged(4))));
    let rest: Vec<String> = events
        .drain()
        .unwrap()
        .iter()
        .map(|e| describe(&e.kind))
        .collect();
    assert_eq!(
        rest,
        [
            "ready b",
            "started b #1",
            "failed b: state `b` failed after 1 attempt(s): the context has no key `input`; set it before reading it, or read it with `get_state_or`",
            "run_finished Failed",
        ]
    );
}

#[tokio::test]
async fn each_run_is_told_apart_by_its_id() {
    let mut agent = Agent::new("twice");
    agent.add_state("only", |_ctx: Context| async { Ok(Next::End) });
    let mut events = agent.subscribe();
    let first = agent.run().await.unwrap().run_id;
    let second = agent.run().await.unwrap().run_id;
    assert_ne!(first, second);
    let ids: Vec<u64> = events.drain().unwrap().iter().map(|e| e.run_id).collect();
    assert_eq!(
        ids,
        [
            first, first, first, first, first, second, second, second, second, second
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn stopping_a_run_publishes_a_cancellation_for_every_unfinished_state() {
    let mut agent = Agent::new("stopped");
    agent.max_concurrent(1);
    agent.add_state("start", |_ctx: Context| async {
        Ok(Next::parallel(["slow", "queued"]))
    });
    agent.add_state("slow", |_ctx: Context| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok(Next::End)
    });
    agent.add_state("queued", |_ctx: Context| async { Ok(Next::End) });
    let mut events = agent.subscribe();
    let handle = agent.start().unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    handle.cancel();
    let report = handle.wait().await;
    assert_eq!(
        report.state("queued").unwrap().status,
        StateStatus::Cancelled
    );
    let cancelled: Vec<String> = events
        .drain()
        .unwrap()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StateCancelled { state } => Some(state.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(cancelled, ["slow", "queued"]);
}

#[tokio::test]
async fn the_stream_closes_when_the_agent_is_gone() {
    let mut agent = Agent::new("short-lived");
    agent.add_state("only", |_ctx: Context| async { Ok(Next::End) });
    let mut events = agent.subscribe();
    agent.run().await.unwrap();
    drop(agent);
    let mut received = 0;
    loop {
        match events.recv().await {
            Ok(_) => received += 1,
            Err(error) => {
                assert_eq!(error, EventStreamError::Closed);
                break;
            }
        }
    }
    assert_eq!(received, 5);
}
