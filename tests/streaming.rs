//! Streaming a run: values after each state, each write, what states emit, events; the order
//! of parts, back-pressure on `emit`, parts missed by a reader that falls behind, and the end
//! of the stream with the run.

use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{EventKind, STREAM_CAPACITY, StreamMode, StreamPart};
use serde_json::json;

const MS: Duration = Duration::from_millis(1);

fn chain() -> Agent {
    let mut agent = Agent::new("chain");
    agent
        .add_state("a", |ctx: Context| async move {
            ctx.set_state("x", 1u32);
            ctx.set_state("name", "first".to_string());
            Ok(Next::to("b"))
        })
        .successors(["b"]);
    agent
        .add_state("b", |ctx: Context| async move {
            tokio::time::sleep(MS * 5).await;
            ctx.update_typed::<u32, _>("x", |x| *x += 10)?;
            ctx.remove_state("name");
            Ok(Next::to("c"))
        })
        .successors(["c"]);
    agent.add_state("c", |ctx: Context| async move {
        ctx.emit("hello").await?;
        ctx.emit(json!({"progress": 1.0})).await?;
        Ok(Next::End)
    });
    agent
}

async fn collect(modes: StreamMode) -> Vec<StreamPart> {
    let (handle, mut stream) = chain().start_streaming(Context::new(), modes).unwrap();
    let mut parts = Vec::new();
    while let Some(part) = stream.next().await {
        parts.push(part);
    }
    assert_eq!(handle.wait().await.status, AgentStatus::Completed);
    parts
}

#[tokio::test(start_paused = true)]
async fn values_come_after_each_state_with_the_whole_context() {
    let parts = collect(StreamMode::VALUES).await;
    let values: Vec<(String, serde_json::Value)> = parts
        .into_iter()
        .map(|part| match part {
            StreamPart::Values { after, values } => (after.to_string(), values.into()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        values,
        [
            ("a".into(), json!({"x": 1, "name": "first"})),
            ("b".into(), json!({"x": 11})),
            ("c".into(), json!({"x": 11})),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn updates_are_each_write_as_it_is_made() {
    let parts = collect(StreamMode::UPDATES).await;
    let updates: Vec<(String, String, Option<serde_json::Value>)> = parts
        .into_iter()
        .map(|part| match part {
            StreamPart::Update { state, key, value } => (state.to_string(), key, value),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        updates,
        [
            ("a".into(), "x".into(), Some(json!(1))),
            ("a".into(), "name".into(), Some(json!("first"))),
            ("b".into(), "x".into(), Some(json!(11))),
            ("b".into(), "name".into(), None),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn modes_combine_in_the_order_things_happened() {
    let parts = collect(StreamMode::CUSTOM | StreamMode::VALUES | StreamMode::EVENTS).await;
    let summary: Vec<String> = parts
        .iter()
        .filter_map(|part| match part {
            StreamPart::Values { after, .. } => Some(format!("values after {after}")),
            StreamPart::Custom { state, value } => Some(format!("{state} sent {value}")),
            StreamPart::Event(event) => match &event.kind {
                EventKind::RunStarted { .. } => Some("started".into()),
                EventKind::StateCompleted { state, .. } => Some(format!("{state} completed")),
                EventKind::RunFinished { .. } => Some("finished".into()),
                _ => None,
            },
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "started",
            "a completed",
            "values after a",
            "b completed",
            "values after b",
            "c sent \"hello\"",
            "c sent {\"progress\":1.0}",
            "c completed",
            "values after c",
            "finished",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn map_branches_emit_tagged_parts_and_no_stream_costs_emit_nothing() {
    fn fanout() -> Agent {
        let mut agent = Agent::new("tokens");
        agent
            .add_state("split", |_ctx: Context| async {
                Ok(Next::map("speak", [3u32, 1, 2]))
            })
            .successors(["speak"]);
        agent.add_state("speak", |ctx: Context| async move {
            let n: u32 = ctx.input()?;
            for i in 0..n {
                tokio::time::sleep(MS * n).await;
                ctx.emit(format!("{n}.{i}")).await?;
            }
            Ok(Next::End)
        });
        agent
    }
    let (handle, mut stream) = fanout()
        .start_streaming(Context::new(), StreamMode::CUSTOM)
        .unwrap();
    let mut tokens = Vec::new();
    while let Some(part) = stream.next().await {
        match part {
            StreamPart::Custom { state, value } => {
                assert_eq!(&*state, "speak");
                tokens.push(value.as_str().unwrap().to_owned());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(handle.wait().await.status, AgentStatus::Completed);
    // By time on the paused clock: 1.0 at 1 ms, 2.0 at 2, 3.0 and 2.1 at 3 (the first to
    // start the sleep first), 3.1 at 6, 3.2 at 9.
    assert_eq!(tokens, ["1.0", "2.0", "3.0", "2.1", "3.1", "3.2"]);

    // Nobody streams: emit returns at once.
    let report = fanout().run().await.unwrap();
    assert_eq!(report.state("speak").unwrap().runs, 3);
}

#[tokio::test(start_paused = true)]
async fn emit_waits_for_a_slow_reader_and_loses_nothing() {
    let total = STREAM_CAPACITY * 3;
    let mut agent = Agent::new("firehose");
    agent.add_state("talk", move |ctx: Context| async move {
        for i in 0..total {
            ctx.emit(i).await?;
        }
        Ok(Next::End)
    });
    let (handle, mut stream) = agent
        .start_streaming(Context::new(), StreamMode::CUSTOM)
        .unwrap();
    // Not read yet: the state waits for room, the run cannot end.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(handle.status(), AgentStatus::Running);
    let mut next = 0;
    while let Some(part) = stream.next().await {
        let StreamPart::Custom { value, .. } = part else {
            panic!("{part:?}")
        };
        assert_eq!(value, json!(next));
        next += 1;
    }
    assert_eq!(next, total);
    assert_eq!(handle.wait().await.status, AgentStatus::Completed);
}

#[tokio::test(start_paused = true)]
async fn a_reader_that_falls_behind_is_told_how_many_parts_it_missed() {
    let states = STREAM_CAPACITY + 500;
    let mut agent = Agent::new("long_chain");
    for i in 0..states {
        let next = if i + 1 < states {
            Next::to(format!("s{}", i + 1))
        } else {
            Next::End
        };
        agent.add_state(format!("s{i}"), move |ctx: Context| {
            let next = next.clone();
            async move {
                ctx.set_state("i", i);
                Ok(next)
            }
        });
    }
    let (handle, mut stream) = agent
        .start_streaming(Context::new(), StreamMode::VALUES)
        .unwrap();
    // The run goes on without waiting for the reader.
    assert_eq!(handle.wait().await.status, AgentStatus::Completed);
    let (mut values, mut missed) = (0, 0);
    let mut first_missed_at = None;
    while let Some(part) = stream.next().await {
        match part {
            StreamPart::Values { .. } => values += 1,
            StreamPart::Missed { count } => {
                first_missed_at.get_or_insert(values);
                missed += count;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(values, STREAM_CAPACITY, "a full stream's worth");
    assert_eq!(missed as usize, states - STREAM_CAPACITY);
    assert_eq!(
        first_missed_at,
        Some(STREAM_CAPACITY),
        "said where they were dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_opened_on_an_ended_run_is_empty() {
    let handle = chain().start().unwrap();
    let mut late = handle.stream(StreamMode::ALL);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut after = handle.stream(StreamMode::ALL);
    assert!(after.next().await.is_none());
    // One opened before the end sees what followed, then ends.
    let mut seen = 0;
    while late.next().await.is_some() {
        seen += 1;
    }
    assert!(seen > 0);
    assert_eq!(handle.wait().await.status, AgentStatus::Completed);
}
