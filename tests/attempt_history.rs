//! A checkpointed run keeps its attempts with their times (checkpoint format 5): when each
//! became ready, started and ended, and how it ended; on the paused clock, to the millisecond.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{AttemptOutcome, CheckpointStore, Jitter, MemoryStore, RetryPolicy};
use tokio::time::sleep;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `load` (10 ms) → `check` fails its first attempt after 5 ms, retried 20 ms later, then
/// passes after 5 ms → `left` and `right` in parallel, 30 ms each, one at a time.
fn pipeline(checks: &Arc<AtomicU32>) -> Agent {
    let mut agent = Agent::new("pipeline");
    agent.max_concurrent(1);
    agent.add_state("load", |_ctx: Context| async move {
        sleep(ms(10)).await;
        Ok(Next::to("check"))
    });
    let checks = Arc::clone(checks);
    agent
        .add_state("check", move |_ctx: Context| {
            let checks = Arc::clone(&checks);
            async move {
                sleep(ms(5)).await;
                if checks.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err("the source was busy".into());
                }
                Ok(Next::parallel(["left", "right"]))
            }
        })
        .retry(RetryPolicy {
            max_retries: 2,
            initial_delay: ms(20),
            jitter: Jitter::None,
            ..RetryPolicy::DEFAULT
        });
    for side in ["left", "right"] {
        agent.add_state(side, |_ctx: Context| async move {
            sleep(ms(30)).await;
            Ok(Next::End)
        });
    }
    agent
}

#[tokio::test(start_paused = true)]
async fn a_checkpointed_run_keeps_its_attempts_and_their_times() {
    let store = MemoryStore::new();
    let checks = Arc::new(AtomicU32::new(0));
    let report = pipeline(&checks)
        .run_durable(store.clone(), "nightly")
        .await
        .unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
    let checkpoint = store.latest("pipeline", "nightly").unwrap().unwrap();
    let origin = checkpoint.attempts[0].ready_at_ms;
    // (state, attempt, outcome, ready, started, ended) in ms from the first one's readiness.
    let seen: Vec<(&str, u32, AttemptOutcome, u64, u64, u64)> = checkpoint
        .attempts
        .iter()
        .map(|a| {
            (
                a.state.as_str(),
                a.attempt,
                a.outcome,
                a.ready_at_ms - origin,
                a.started_at_ms - origin,
                a.ended_at_ms.unwrap() - origin,
            )
        })
        .collect();
    // `right` waited for the one slot while `left` ran (or the other way round).
    let (first, second) = if seen[3].0 == "left" {
        ("left", "right")
    } else {
        ("right", "left")
    };
    assert_eq!(
        seen,
        [
            ("load", 1, AttemptOutcome::Completed, 0, 0, 10),
            ("check", 1, AttemptOutcome::Failed, 10, 10, 15),
            ("check", 2, AttemptOutcome::Completed, 35, 35, 40),
            (first, 1, AttemptOutcome::Completed, 40, 40, 70),
            (second, 1, AttemptOutcome::Completed, 40, 70, 100),
        ]
    );
    assert_eq!(
        checkpoint.attempts[1].error.as_deref(),
        Some("the source was busy")
    );
    assert_eq!(checkpoint.attempts[1].visit, checkpoint.attempts[2].visit);
    assert!(checkpoint.attempts[0].error.is_none());
}

/// `load` → `check`, which fails (no retry) while `broken` is set.
fn flaky(broken: &Arc<std::sync::atomic::AtomicBool>) -> Agent {
    let mut agent = Agent::new("flaky");
    agent.add_state("load", |_ctx: Context| async move {
        sleep(ms(10)).await;
        Ok(Next::to("check"))
    });
    let broken = Arc::clone(broken);
    agent.add_state("check", move |_ctx: Context| {
        let broken = Arc::clone(&broken);
        async move {
            sleep(ms(5)).await;
            if broken.load(Ordering::SeqCst) {
                return Err("the source was busy".into());
            }
            Ok(Next::End)
        }
    });
    agent
}

#[tokio::test(start_paused = true)]
async fn a_run_continued_goes_on_with_its_history_and_a_plain_run_keeps_none() {
    let store = MemoryStore::new();
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let agent = flaky(&broken);
    // It fails at `check`: its history so far is in its last checkpoint.
    agent.run_durable(store.clone(), "k").await.unwrap_err();
    let failed = store.latest("flaky", "k").unwrap().unwrap();
    let seen: Vec<(&str, AttemptOutcome)> = failed
        .attempts
        .iter()
        .map(|a| (a.state.as_str(), a.outcome))
        .collect();
    assert_eq!(
        seen,
        [
            ("load", AttemptOutcome::Completed),
            ("check", AttemptOutcome::Failed)
        ]
    );
    // Continued, it runs `check` again and adds it to what it had.
    broken.store(false, Ordering::SeqCst);
    let report = agent.run_durable(store.clone(), "k").await.unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
    let done = store.latest("flaky", "k").unwrap().unwrap();
    let seen: Vec<(&str, AttemptOutcome)> = done
        .attempts
        .iter()
        .map(|a| (a.state.as_str(), a.outcome))
        .collect();
    assert_eq!(
        seen,
        [
            ("load", AttemptOutcome::Completed),
            ("check", AttemptOutcome::Failed),
            ("check", AttemptOutcome::Completed),
        ]
    );
    // (Times are wall clock, from each process's own reading: here, with the paused clock,
    // two runs' times are not comparable.)
    assert!(done.attempts[2].ended_at_ms.unwrap() >= done.attempts[2].started_at_ms);

    // Without checkpoints, no history is kept.
    let plain = flaky(&Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let handle = plain.start().unwrap();
    sleep(ms(12)).await;
    let checkpoint = handle.create_checkpoint().await.unwrap();
    assert!(checkpoint.attempts.is_empty());
    handle.result().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_format_4_checkpoint_reads_with_no_attempts() {
    let store = MemoryStore::new();
    pipeline(&Arc::new(AtomicU32::new(0)))
        .run_durable(store.clone(), "old")
        .await
        .unwrap();
    let json = store
        .latest("pipeline", "old")
        .unwrap()
        .unwrap()
        .to_json()
        .unwrap();
    // As format 4 wrote it: no `attempts` (nor format 6's `cancelled`).
    let mut value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(value["format"], 6);
    assert!(value.get("cancelled").is_none(), "not written when none");
    assert_eq!(value["attempts"].as_array().unwrap().len(), 5);
    value["format"] = 4.into();
    value.as_object_mut().unwrap().remove("attempts");
    value.as_object_mut().unwrap().remove("cancelled");
    let old = serde_json::to_vec(&value).unwrap();
    let checkpoint = fluffy_flow::Checkpoint::from_json(&old, "s", "pipeline", "old").unwrap();
    assert_eq!(checkpoint.format, fluffy_flow::CHECKPOINT_FORMAT);
    assert!(checkpoint.attempts.is_empty());
    assert_eq!(checkpoint.status, AgentStatus::Completed);
}

/// The wait before an attempt is split: for its turn (a free slot) and for its resources (it
/// waited at the pool): `split` → `a`, `b` (one CPU each, a pool of one, 10 ms) and `c`, `d`
/// (nothing, 5 ms), two at a time. `a` and `c` start at once; `b` waits at the pool until `a`
/// ends; `d` waits for `c`'s slot.
#[tokio::test(start_paused = true)]
async fn the_wait_for_a_turn_and_the_wait_for_resources_are_told_apart() {
    let one_cpu = fluffy_flow::ResourceRequirements {
        cpu: 1.0,
        ..Default::default()
    };
    let mut agent = Agent::new("shared");
    agent.max_concurrent(2);
    agent.resource_pool(fluffy_flow::ResourcePool::new(one_cpu));
    agent.add_state("split", |_ctx: Context| async move {
        Ok(Next::parallel(["a", "b", "c", "d"]))
    });
    for (name, busy, needs) in [
        ("a", 10, Some(one_cpu)),
        ("b", 10, Some(one_cpu)),
        ("c", 5, None),
        ("d", 5, None),
    ] {
        let options = agent.add_state(name, move |_ctx: Context| async move {
            sleep(ms(busy)).await;
            Ok(Next::End)
        });
        if let Some(needs) = needs {
            options.resources(needs);
        }
    }
    let store = MemoryStore::new();
    agent.run_durable(store.clone(), "k").await.unwrap();
    let checkpoint = store.latest("shared", "k").unwrap().unwrap();
    let origin = checkpoint.attempts[0].ready_at_ms;
    let mut seen: Vec<(String, u64, u64, u64, u64)> = checkpoint
        .attempts
        .iter()
        .map(|a| {
            let times = fluffy_flow::attempt_times(a, 0);
            (
                a.state.clone(),
                a.started_at_ms - origin,
                times.queued.as_millis() as u64,
                times.gated.as_millis() as u64,
                times.ran.as_millis() as u64,
            )
        })
        .collect();
    seen.sort();
    let expected: Vec<(String, u64, u64, u64, u64)> = [
        ("a", 0, 0, 0, 10),
        ("b", 10, 0, 10, 10),
        ("c", 0, 0, 0, 5),
        ("d", 5, 5, 0, 5),
        ("split", 0, 0, 0, 0),
    ]
    .into_iter()
    .map(|(s, start, queued, gated, ran)| (s.to_owned(), start, queued, gated, ran))
    .collect();
    assert_eq!(seen, expected);
    let b = checkpoint.attempts.iter().find(|a| a.state == "b").unwrap();
    assert_eq!(b.gated_at_ms, Some(origin));
    let d = checkpoint.attempts.iter().find(|a| a.state == "d").unwrap();
    assert_eq!(d.gated_at_ms, None);
}
