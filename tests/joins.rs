//! The five join cases of the design, each with declared successors (graph knowledge) and
//! without (the conservative rule), plus the timing difference between the two.

mod common;

use common::{Log, scripted};
use fluffy_flow::prelude::*;
use tokio::time::Instant;

fn to(s: &'static str) -> Next {
    Next::to(s)
}

fn par(states: &[&'static str]) -> Next {
    Next::parallel(states.iter().copied())
}

async fn run(agent: &Agent) -> RunReport {
    let report = agent.run().await.expect("run completes");
    assert_eq!(report.status, AgentStatus::Completed);
    report
}

async fn case_1(declare: bool) {
    let log = Log::default();
    let mut agent = Agent::new("case1");
    scripted(&mut agent, &log, "start", 0, par(&["a", "b", "c"]), declare);
    scripted(&mut agent, &log, "a", 30, to("merge"), declare);
    scripted(&mut agent, &log, "b", 10, to("merge"), declare);
    scripted(&mut agent, &log, "c", 20, to("merge"), declare);
    let merge_log = log.clone();
    let mut merge = agent.add_state("merge", move |ctx: Context| {
        let log = merge_log.clone();
        async move {
            log.push("merge");
            // Every branch's write is visible.
            for key in ["a", "b", "c"] {
                assert!(ctx.get_state::<bool>(key)?, "merge ran before {key} wrote");
            }
            Ok(Next::End)
        }
    });
    if declare {
        merge = merge.terminal();
    }
    let _ = merge;
    let origin = Instant::now();
    let report = run(&agent).await;
    assert_eq!(log.count("merge"), 1);
    assert_eq!(log.names().last().map(String::as_str), Some("merge"));
    assert_eq!(
        log.started("merge", origin).as_millis(),
        30,
        "merge starts when the slowest branch ends"
    );
    assert_eq!(report.state("merge").unwrap().runs, 1);
    assert_eq!(report.transitions, 5);
}

#[tokio::test(start_paused = true)]
async fn case_1_three_branches_join_once_after_the_last() {
    case_1(true).await;
    case_1(false).await;
}

async fn case_2(declare: bool) {
    let log = Log::default();
    let mut agent = Agent::new("case2");
    scripted(&mut agent, &log, "start", 0, par(&["a", "b"]), declare);
    scripted(&mut agent, &log, "a", 5, to("merge"), declare);
    scripted(&mut agent, &log, "b", 10, to("x"), declare);
    scripted(&mut agent, &log, "x", 10, to("merge"), declare);
    scripted(&mut agent, &log, "merge", 0, Next::End, declare);
    let origin = Instant::now();
    run(&agent).await;
    assert_eq!(log.count("merge"), 1);
    assert_eq!(log.count("x"), 1);
    assert!(log.position("x") < log.position("merge"));
    assert_eq!(log.started("merge", origin).as_millis(), 20);
}

#[tokio::test(start_paused = true)]
async fn case_2_a_longer_branch_is_waited_for() {
    case_2(true).await;
    case_2(false).await;
}

async fn case_3(declare: bool, a_delay: u64) {
    let log = Log::default();
    let mut agent = Agent::new("case3");
    scripted(&mut agent, &log, "start", 0, par(&["a", "b"]), declare);
    scripted(&mut agent, &log, "a", a_delay, Next::End, declare);
    scripted(&mut agent, &log, "b", 10, to("merge"), declare);
    scripted(&mut agent, &log, "merge", 0, Next::End, declare);
    let origin = Instant::now();
    run(&agent).await;
    assert_eq!(log.count("merge"), 1);
    let merge_at = log.started("merge", origin).as_millis();
    if declare {
        // `a` declares no successors: it can never reach `merge`, so `merge` does not wait.
        assert_eq!(merge_at, 10);
    } else {
        // Without graph knowledge `a` might still go to `merge` until it ends.
        assert_eq!(merge_at, 10u128.max(a_delay as u128));
    }
}

#[tokio::test(start_paused = true)]
async fn case_3_an_ended_branch_never_blocks_a_join() {
    for declare in [true, false] {
        case_3(declare, 1).await;
        case_3(declare, 50).await;
    }
}

async fn case_4(declare: bool) {
    let log = Log::default();
    let mut agent = Agent::new("case4");
    scripted(&mut agent, &log, "start", 0, par(&["a", "b"]), declare);
    scripted(&mut agent, &log, "a", 1, to("p"), declare);
    scripted(&mut agent, &log, "b", 50, to("q"), declare);
    scripted(&mut agent, &log, "p", 0, Next::End, declare);
    scripted(&mut agent, &log, "q", 50, Next::End, declare);
    let origin = Instant::now();
    run(&agent).await;
    assert_eq!((log.count("p"), log.count("q")), (1, 1));
    let p_at = log.started("p", origin).as_millis();
    if declare {
        assert_eq!(p_at, 1, "b cannot reach p, so p runs at once");
    } else {
        // Held until every sibling waits or ends: q was released first (latest first) and ended.
        assert_eq!(p_at, 100);
    }
}

#[tokio::test(start_paused = true)]
async fn case_4_branches_that_never_meet_each_run_once() {
    case_4(true).await;
    case_4(false).await;
}

async fn case_5(declare: bool) {
    let log = Log::default();
    let mut agent = Agent::new("case5");
    scripted(&mut agent, &log, "start", 0, par(&["a", "b"]), declare);
    scripted(&mut agent, &log, "a", 1, par(&["a1", "a2"]), declare);
    scripted(&mut agent, &log, "a1", 10, to("am"), declare);
    scripted(&mut agent, &log, "a2", 20, to("am"), declare);
    scripted(&mut agent, &log, "am", 5, to("merge"), declare);
    scripted(&mut agent, &log, "b", 2, to("merge"), declare);
    scripted(&mut agent, &log, "merge", 0, Next::End, declare);
    let origin = Instant::now();
    let report = run(&agent).await;
    assert_eq!(log.count("am"), 1);
    assert_eq!(log.count("merge"), 1);
    assert!(log.position("am") < log.position("merge"));
    assert_eq!(log.started("am", origin).as_millis(), 21);
    assert_eq!(log.started("merge", origin).as_millis(), 26);
    assert_eq!(report.transitions, 7);
}

#[tokio::test(start_paused = true)]
async fn case_5_nested_fan_outs_join_inside_out() {
    case_5(true).await;
    case_5(false).await;
}

#[tokio::test(start_paused = true)]
async fn a_fork_target_starts_at_once_even_when_a_sibling_leads_to_it() {
    // start -> [a, b], a -> b: the fork's own `b` starts at once (a branch is never held at
    // its start); `a`'s arrival runs `b` again, since nothing else may still reach it.
    for declare in [true, false] {
        let log = Log::default();
        let mut agent = Agent::new("dag");
        scripted(&mut agent, &log, "start", 0, par(&["a", "b"]), declare);
        scripted(&mut agent, &log, "a", 5, to("b"), declare);
        scripted(&mut agent, &log, "b", 0, Next::End, declare);
        let report = run(&agent).await;
        assert_eq!(log.names(), vec!["start", "a", "b", "b"]);
        assert_eq!(report.state("b").unwrap().runs, 2);
    }
}

#[tokio::test(start_paused = true)]
async fn a_wide_fan_out_joins_once_with_every_write() {
    for declare in [true, false] {
        let n = 1000;
        let mut agent = Agent::new("wide");
        let names: Vec<String> = (0..n).map(|i| format!("branch_{i}")).collect();
        let targets = names.clone();
        let mut start = agent.add_state("start", move |_ctx: Context| {
            let targets = targets.clone();
            async move { Ok(Next::parallel(targets)) }
        });
        if declare {
            start = start.successors(names.clone());
        }
        let _ = start;
        for (i, name) in names.iter().enumerate() {
            let key = name.clone();
            let mut branch = agent.add_state(name.clone(), move |ctx: Context| {
                let key = key.clone();
                async move {
                    tokio::time::sleep(std::time::Duration::from_millis((i % 7) as u64)).await;
                    ctx.set_state(key, i);
                    Ok(Next::to("join"))
                }
            });
            if declare {
                branch = branch.successors(["join"]);
            }
            let _ = branch;
        }
        agent.add_state("join", move |ctx: Context| async move {
            let mut sum = 0;
            for i in 0..n {
                sum += ctx.get_state::<usize>(&format!("branch_{i}"))?;
            }
            ctx.update_typed::<usize, _>("joins", |count| *count += 1)
                .or_else(|_| {
                    ctx.set_state("joins", 1usize);
                    Ok::<_, FlowError>(())
                })?;
            ctx.set_state("sum", sum);
            Ok(Next::End)
        });
        let report = run(&agent).await;
        assert_eq!(report.context.get_state::<usize>("joins").unwrap(), 1);
        assert_eq!(
            report.context.get_state::<usize>("sum").unwrap(),
            n * (n - 1) / 2
        );
        assert_eq!(report.state("join").unwrap().runs, 1);
        assert_eq!(report.max_concurrency, n, "all branches ran at once");
    }
}

#[tokio::test(start_paused = true)]
async fn an_undeclared_branch_that_jumps_up_the_graph_still_blocks_the_join() {
    // `w` declares nothing and jumps to `x`, which was added last (so it sorts above the
    // other positions): the join must still wait for it.
    let log = Log::default();
    let mut agent = Agent::new("mixed");
    scripted(&mut agent, &log, "start", 0, par(&["s", "w"]), true);
    scripted(&mut agent, &log, "s", 0, to("j"), true);
    scripted(&mut agent, &log, "w", 10, to("x"), false);
    scripted(&mut agent, &log, "j", 0, Next::End, true);
    scripted(&mut agent, &log, "x", 0, to("j"), true);
    let origin = Instant::now();
    run(&agent).await;
    assert_eq!(log.count("j"), 1);
    assert_eq!(log.started("j", origin).as_millis(), 10);
    assert!(log.position("x") < log.position("j"));
}

#[tokio::test(start_paused = true)]
async fn a_loop_that_forks_every_round_neither_nests_nor_overflows() {
    // The producer pattern without declared successors: each round of `poll` forks itself and a
    // slow `work`, so thousands of forks are alive at once.
    let rounds = 3000u32;
    let mut agent = Agent::new("producer");
    agent.add_state("poll", move |ctx: Context| async move {
        let round = ctx.update_typed::<u32, _>("round", |r| {
            *r += 1;
            *r
        })?;
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        Ok(if round < rounds {
            Next::parallel(["poll", "work"])
        } else {
            Next::End
        })
    });
    agent.add_state("work", |ctx: Context| async move {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        ctx.update_typed::<u32, _>("done", |d| *d += 1)?;
        Ok(Next::End)
    });
    let context = Context::new();
    context.set_state("round", 0u32);
    context.set_state("done", 0u32);
    let report = agent.run_with(context).await.unwrap();
    assert_eq!(report.state("poll").unwrap().runs, rounds);
    assert_eq!(report.state("work").unwrap().runs, rounds - 1);
    assert_eq!(report.context.get_state::<u32>("done").unwrap(), rounds - 1);
}
