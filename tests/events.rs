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
        EventKind::StateFailed { state, error, .. } => format!("failed {state}: {error}"),
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

/// A workflow whose two branches take `left` and `right` milliseconds.
fn timed_fork(name: &str, left: u64, right: u64) -> Agent {
    let mut agent = Agent::new(name);
    agent.add_state("fork", |_ctx: Context| async {
        Ok(Next::parallel(["left", "right"]))
    });
    agent.add_state("left", move |_ctx: Context| async move {
        tokio::time::sleep(Duration::from_millis(left)).await;
        Ok(Next::to("join"))
    });
    agent.add_state("right", move |_ctx: Context| async move {
        tokio::time::sleep(Duration::from_millis(right)).await;
        Ok(Next::to("join"))
    });
    agent.add_state("join", |_ctx: Context| async { Ok(Next::End) });
    agent
}

async fn read_all(events: &mut fluffy_flow::RunEvents) -> Vec<fluffy_flow::Event> {
    let mut read = Vec::new();
    while let Some(event) = events.next().await {
        read.push(event.unwrap());
    }
    read
}

#[tokio::test(start_paused = true)]
async fn a_watched_run_streams_its_own_events_and_the_stream_ends_with_it() {
    // Under both orders of the branches, and with another run of the same agent going at the
    // same time: the stream holds exactly its run's events, from start to finish, then ends.
    for (left, right) in [(5, 10), (10, 5), (7, 7)] {
        let agent = timed_fork("watched", left, right);
        let other = agent.start().unwrap();
        let (handle, mut events) = agent.start_watched(Context::new()).unwrap();
        assert_eq!(events.run_id(), handle.run_id());
        let read = read_all(&mut events).await;
        assert!(read.iter().all(|e| e.run_id == handle.run_id()));
        let described: Vec<String> = read.iter().map(|e| describe(&e.kind)).collect();
        let (first, second) = if left <= right {
            ("left", "right")
        } else {
            ("right", "left")
        };
        assert_eq!(
            described[..4],
            [
                "run_started watched",
                "ready fork",
                "started fork #1",
                "completed fork"
            ]
        );
        assert_eq!(described.len(), 15, "{described:?}");
        let completed: Vec<&String> = described
            .iter()
            .filter(|d| d.starts_with("completed"))
            .collect();
        assert_eq!(
            completed,
            [
                "completed fork",
                &format!("completed {first}"),
                &format!("completed {second}"),
                "completed join"
            ]
        );
        assert_eq!(described.last().unwrap(), "run_finished Completed");
        assert_eq!(
            read.last().unwrap().at - read[0].at,
            Duration::from_millis(left.max(right))
        );
        // Ended for good, and the run's report agrees.
        assert!(events.next().await.is_none());
        assert!(handle.wait().await.is_success());
        assert!(other.wait().await.is_success());
    }
}

#[tokio::test(start_paused = true)]
async fn the_events_of_a_started_run_begin_at_the_call_and_end_with_the_run() {
    let agent = timed_fork("late", 10, 20);
    let handle = agent.start().unwrap();
    tokio::time::sleep(Duration::from_millis(15)).await;
    let mut events = handle.events();
    let described: Vec<String> = read_all(&mut events)
        .await
        .iter()
        .map(|e| describe(&e.kind))
        .collect();
    assert_eq!(
        described,
        [
            "completed right",
            "ready join",
            "started join #1",
            "completed join",
            "run_finished Completed"
        ]
    );
    // A subscription made once the run has finished ends at once instead of waiting forever.
    let mut after = handle.events();
    assert!(after.next().await.is_none());
    assert!(handle.wait().await.is_success());
}

#[tokio::test(start_paused = true)]
async fn a_run_stream_that_fell_behind_says_so_and_still_ends() {
    let mut agent = timed_fork("lagging", 1, 2);
    agent.event_capacity(4);
    let (first, mut events) = agent.start_watched(Context::new()).unwrap();
    assert!(first.wait().await.is_success());
    // A second run overwrites the ring, the first run's `RunFinished` with it.
    assert!(agent.start().unwrap().wait().await.is_success());
    let mut lagged = 0;
    let mut kept = 0;
    while let Some(event) = events.next().await {
        match event {
            Err(EventStreamError::Lagged(n)) => lagged += n,
            Ok(event) => {
                assert_eq!(event.run_id, events.run_id());
                kept += 1;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    // 15 events of the first run and 15 of the second, 4 of them still in the ring (all the
    // second run's): the subscriber is told of 26 missed, and the stream ends.
    assert_eq!((lagged, kept), (26, 0));
}

#[tokio::test(start_paused = true)]
async fn run_events_are_a_stream_for_stream_combinators() {
    use tokio_stream::StreamExt;
    let agent = timed_fork("combinators", 3, 4);
    let (handle, events) = agent.start_watched(Context::new()).unwrap();
    let started: Vec<String> = events
        .filter_map(|event| match event.unwrap().kind {
            EventKind::StateStarted { state, .. } => Some(state.to_string()),
            _ => None,
        })
        .collect()
        .await;
    assert_eq!(started[0], "fork");
    assert_eq!(started[3], "join");
    assert_eq!(started.len(), 4);
    let mut all = agent.subscribe();
    let next = agent.start().unwrap();
    assert!(matches!(
        all.next().await,
        Some(Ok(fluffy_flow::Event {
            kind: EventKind::RunStarted { .. },
            ..
        }))
    ));
    assert!(handle.wait().await.is_success());
    assert!(next.wait().await.is_success());
}
