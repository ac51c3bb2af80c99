//! Transitions, concurrency of parallel branches, loops and entry semantics.

mod common;

use std::time::Duration;

use common::{Log, scripted};
use fluffy_flow::prelude::*;
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn a_thousand_parallel_branches_really_run_concurrently() {
    let n = 1000;
    let mut agent = Agent::new("concurrent");
    agent.add_state("start", move |_ctx: Context| async move {
        Ok(Next::parallel((0..n).map(|i| format!("b{i}"))))
    });
    for i in 0..n {
        agent.add_state(format!("b{i}"), move |ctx: Context| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            ctx.set_state(format!("b{i}"), i);
            Ok(Next::End)
        });
    }
    let started = Instant::now();
    let report = agent.run().await.unwrap();
    // On the paused clock, sequential branches would take 1000 x 10 ms.
    assert_eq!(started.elapsed(), Duration::from_millis(10));
    assert_eq!(report.max_concurrency, n);
    assert_eq!(report.context.len(), n);
    assert_eq!(report.transitions, n as u64 + 1);
}

#[tokio::test(start_paused = true)]
async fn max_concurrent_caps_running_states() {
    let mut agent = Agent::new("capped");
    agent.max_concurrent(3);
    agent.add_state("start", |_ctx: Context| async {
        Ok(Next::parallel((0..9).map(|i| format!("b{i}"))))
    });
    for i in 0..9 {
        agent.add_state(format!("b{i}"), |_ctx: Context| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(Next::End)
        });
    }
    let started = Instant::now();
    let report = agent.run().await.unwrap();
    assert_eq!(report.max_concurrency, 3);
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(30),
        "three waves of three"
    );
}

#[tokio::test]
async fn a_loop_runs_a_thousand_times() {
    let mut agent = Agent::new("loop");
    agent.add_state("tick", |ctx: Context| async move {
        let count = ctx.update_typed::<u32, _>("count", |count| {
            *count += 1;
            *count
        })?;
        Ok(if count < 1000 {
            Next::to("tick")
        } else {
            Next::to("done")
        })
    });
    agent.add_state("done", |_ctx: Context| async { Ok(Next::End) });
    let context = Context::new();
    context.set_state("count", 0u32);
    let report = agent.run_with(context).await.unwrap();
    assert_eq!(report.context.get_state::<u32>("count").unwrap(), 1000);
    assert_eq!(report.state("tick").unwrap().runs, 1000);
    assert_eq!(report.state("done").unwrap().runs, 1);
    assert_eq!(report.transitions, 1001);
}

async fn branch_loop(declare: bool) {
    // start -> [count, other]; count loops 100 times, then both meet at merge.
    let mut agent = Agent::new("branch loop");
    let start = agent.add_state("start", |_ctx: Context| async {
        Ok(Next::parallel(["count", "other"]))
    });
    if declare {
        start.successors(["count", "other"]);
    }
    let count = agent.add_state("count", |ctx: Context| async move {
        let n = ctx.update_typed::<u32, _>("n", |n| {
            *n += 1;
            *n
        })?;
        tokio::task::yield_now().await;
        Ok(if n < 100 {
            Next::to("count")
        } else {
            Next::to("merge")
        })
    });
    if declare {
        count.successors(["count", "merge"]);
    }
    let other = agent.add_state("other", |_ctx: Context| async { Ok(Next::to("merge")) });
    if declare {
        other.successors(["merge"]);
    }
    agent.add_state("merge", |ctx: Context| async move {
        ctx.set_state("n_at_merge", ctx.get_state::<u32>("n")?);
        Ok(Next::End)
    });
    let context = Context::new();
    context.set_state("n", 0u32);
    let report = agent.run_with(context).await.unwrap();
    assert_eq!(report.state("merge").unwrap().runs, 1);
    assert_eq!(report.state("count").unwrap().runs, 100);
    assert_eq!(
        report.context.get_state::<u32>("n_at_merge").unwrap(),
        100,
        "merge waited for the loop"
    );
}

#[tokio::test]
async fn a_loop_inside_a_branch_then_a_join() {
    branch_loop(true).await;
    branch_loop(false).await;
}

#[tokio::test]
async fn the_first_state_added_is_the_entry_and_unreferenced_states_never_start() {
    let log = Log::default();
    let mut agent = Agent::new("entry");
    scripted(&mut agent, &log, "first", 0, Next::to("second"), false);
    scripted(&mut agent, &log, "orphan", 0, Next::End, false);
    scripted(&mut agent, &log, "second", 0, Next::End, false);
    let report = agent.run().await.unwrap();
    assert_eq!(log.names(), ["first", "second"]);
    assert_eq!(report.state("orphan").unwrap().status, StateStatus::Pending);
    assert_eq!(report.state("orphan").unwrap().runs, 0);
}

#[tokio::test(start_paused = true)]
async fn marked_entries_start_together_and_replace_the_default() {
    let log = Log::default();
    let mut agent = Agent::new("entries");
    scripted(&mut agent, &log, "not_entry", 0, Next::End, false);
    scripted(&mut agent, &log, "a", 10, Next::to("merge"), false);
    scripted(&mut agent, &log, "b", 20, Next::to("merge"), false);
    scripted(&mut agent, &log, "merge", 0, Next::End, false);
    agent.set_entry("a").set_entry("b");
    let origin = Instant::now();
    agent.run().await.unwrap();
    assert_eq!(log.count("not_entry"), 0);
    assert_eq!(log.started("a", origin), Duration::ZERO);
    assert_eq!(log.started("b", origin), Duration::ZERO);
    assert_eq!(
        log.count("merge"),
        1,
        "entries converging on a state join like a fork"
    );
    assert_eq!(log.started("merge", origin), Duration::from_millis(20));
}

#[tokio::test]
async fn an_entry_can_be_marked_on_the_state() {
    let log = Log::default();
    let mut agent = Agent::new("marked");
    scripted(&mut agent, &log, "first", 0, Next::End, false);
    let entry_log = log.clone();
    agent
        .add_state("real_start", move |_ctx: Context| {
            let log = entry_log.clone();
            async move {
                log.push("real_start");
                Ok(Next::End)
            }
        })
        .entry();
    agent.run().await.unwrap();
    assert_eq!(log.names(), ["real_start"]);
}

#[tokio::test]
async fn an_empty_parallel_ends_the_branch() {
    let mut agent = Agent::new("empty parallel");
    agent.add_state("a", |_ctx: Context| async {
        Ok(Next::parallel(Vec::<String>::new()))
    });
    let report = agent.run().await.unwrap();
    assert_eq!(report.transitions, 1);
}
