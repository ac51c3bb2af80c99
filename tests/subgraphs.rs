//! Subgraphs (a workflow as one state of another) and teams: key mapping, names in events,
//! reports and streams, retries, timeouts and `on_error` on the subgraph state as a whole,
//! progress inside the parent's checkpoints, three levels deep; and teams of agents.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::Log;
use fluffy_flow::prelude::*;
use fluffy_flow::{
    CheckpointPolicy, CheckpointStore, EventKind, MemoryStore, RetryPolicy, StreamMode, StreamPart,
    SubgraphMapping, Team,
};
use tokio::time::sleep;

const MS: Duration = Duration::from_millis(1);

/// `review`: `judge` reads `text`, waits 10 ms, writes `verdict` (short texts pass) and goes
/// to `note`, which writes `note`.
fn review(log: &Log) -> Agent {
    let mut agent = Agent::new("review");
    let l = log.clone();
    agent.add_state("judge", move |ctx: Context| {
        let l = l.clone();
        async move {
            l.push("judge");
            let text: String = ctx.get_state("text")?;
            sleep(MS * 10).await;
            ctx.set_state("verdict", text.len() < 20);
            Ok(Next::to("note"))
        }
    });
    let l = log.clone();
    agent.add_state("note", move |ctx: Context| {
        let l = l.clone();
        async move {
            l.push("note");
            ctx.set_state("note", "reviewed".to_string());
            Ok(Next::End)
        }
    });
    agent
}

/// `blog`: `write` sets `draft`, the subgraph `review` judges it, `publish` records the
/// verdict.
fn blog(log: &Log) -> Agent {
    let mut agent = Agent::new("blog");
    let l = log.clone();
    agent.add_state("write", move |ctx: Context| {
        let l = l.clone();
        async move {
            l.push("write");
            ctx.set_state("draft", "Short and sweet.".to_string());
            Ok(Next::to("review"))
        }
    });
    agent.add_subgraph(
        "review",
        &review(log),
        SubgraphMapping::new()
            .input("draft", "text")
            .output("verdict", "approved")
            .outputs(["note"])
            .then("publish"),
    );
    let l = log.clone();
    agent.add_state("publish", move |ctx: Context| {
        let l = l.clone();
        async move {
            l.push("publish");
            let approved: bool = ctx.get_state("approved")?;
            ctx.set_state("published", approved);
            Ok(Next::End)
        }
    });
    agent
}

#[tokio::test(start_paused = true)]
async fn a_subgraph_maps_keys_in_and_out_and_goes_on() {
    let log = Log::default();
    let report = blog(&log).run().await.unwrap();
    assert_eq!(log.names(), ["write", "judge", "note", "publish"]);
    assert!(report.context.get_state::<bool>("published").unwrap());
    assert_eq!(
        report.context.get_state::<String>("note").unwrap(),
        "reviewed"
    );
    // Only mapped keys cross: the child's `text` and `verdict` stay in its own context.
    assert!(!report.context.has_state("text"));
    assert!(!report.context.has_state("verdict"));
    // The child's states are in the report under `review/`, after the parent's own.
    let names: Vec<&str> = report.states.iter().map(|s| &*s.name).collect();
    assert_eq!(
        names,
        ["write", "review", "publish", "review/judge", "review/note"]
    );
    let judge = report.state("review/judge").unwrap();
    assert_eq!((judge.runs, judge.attempts), (1, 1));
    assert_eq!(judge.status, StateStatus::Completed);
    assert_eq!(judge.total_time, MS * 10);
    assert_eq!(report.state("review").unwrap().total_time, MS * 10);
}

#[tokio::test(start_paused = true)]
async fn its_states_are_in_the_parents_events_under_its_name() {
    let log = Log::default();
    let agent = blog(&log);
    let (handle, mut events) = agent.start_watched(Context::new()).unwrap();
    let run_id = handle.run_id();
    let mut seen = Vec::new();
    while let Some(event) = events.next().await {
        let event = event.expect("kept up");
        assert_eq!(
            event.run_id, run_id,
            "child events carry the parent's run id"
        );
        match event.kind {
            EventKind::RunStarted { .. } => seen.push("run started".to_string()),
            EventKind::RunFinished { .. } => seen.push("run finished".to_string()),
            EventKind::StateStarted { state, .. } => seen.push(format!("start {state}")),
            EventKind::StateCompleted { state, .. } => seen.push(format!("done {state}")),
            _ => {}
        }
    }
    handle.result().await.unwrap();
    assert_eq!(
        seen,
        [
            "run started",
            "start write",
            "done write",
            "start review",
            "start review/judge",
            "done review/judge",
            "start review/note",
            "done review/note",
            "done review",
            "start publish",
            "done publish",
            "run finished",
        ]
    );
}

/// A leaf workflow that emits a token and appends its name to `trail`, an inner one that runs
/// it as `leaf`, a middle one that runs the inner one as `inner`, and the outer one that runs
/// the middle one as `mid`.
fn three_levels(log: &Log) -> Agent {
    fn step(agent: &mut Agent, log: &Log, name: &'static str, next: Option<&'static str>) {
        let l = log.clone();
        agent.add_state(name, move |ctx: Context| {
            let l = l.clone();
            async move {
                l.push(name);
                let mut trail: Vec<String> = ctx.get_state_or("trail", Vec::new())?;
                trail.push(name.to_owned());
                ctx.set_state("trail", trail);
                ctx.emit(name).await?;
                sleep(MS).await;
                Ok(next.map_or(Next::End, Next::to))
            }
        });
    }
    let trail = || SubgraphMapping::new().inputs(["trail"]).outputs(["trail"]);
    let mut leaf = Agent::new("leaf_flow");
    step(&mut leaf, log, "leaf", None);
    let mut inner = Agent::new("inner_flow");
    step(&mut inner, log, "before_leaf", Some("leaf"));
    inner.add_subgraph("leaf", &leaf, trail());
    let mut middle = Agent::new("middle_flow");
    step(&mut middle, log, "before_inner", Some("inner"));
    middle.add_subgraph("inner", &inner, trail().then("after_inner"));
    step(&mut middle, log, "after_inner", None);
    let mut outer = Agent::new("outer_flow");
    step(&mut outer, log, "start", Some("mid"));
    outer.add_subgraph("mid", &middle, trail().then("end"));
    step(&mut outer, log, "end", None);
    outer
}

#[tokio::test(start_paused = true)]
async fn three_levels_deep_name_events_reports_and_streams_by_path() {
    let log = Log::default();
    let agent = three_levels(&log);
    let (handle, mut stream) = agent
        .start_streaming(Context::new(), StreamMode::CUSTOM | StreamMode::EVENTS)
        .unwrap();
    let mut emitted = Vec::new();
    let mut started = Vec::new();
    let mut run_events = 0;
    while let Some(part) = stream.next().await {
        match part {
            StreamPart::Custom { state, value } => {
                assert_eq!(value.as_str(), state.rsplit('/').next());
                emitted.push(state.to_string());
            }
            StreamPart::Event(event) => match event.kind {
                EventKind::StateStarted { state, .. } => started.push(state.to_string()),
                EventKind::RunStarted { .. } | EventKind::RunFinished { .. } => run_events += 1,
                _ => {}
            },
            other => panic!("not asked for: {other:?}"),
        }
    }
    let report = handle.result().await.unwrap();
    let trail: Vec<String> = report.context.get_state("trail").unwrap();
    assert_eq!(
        trail,
        [
            "start",
            "before_inner",
            "before_leaf",
            "leaf",
            "after_inner",
            "end"
        ]
    );
    assert_eq!(
        emitted,
        [
            "start",
            "mid/before_inner",
            "mid/inner/before_leaf",
            "mid/inner/leaf/leaf",
            "mid/after_inner",
            "end"
        ]
    );
    assert_eq!(
        started,
        [
            "start",
            "mid",
            "mid/before_inner",
            "mid/inner",
            "mid/inner/before_leaf",
            "mid/inner/leaf",
            "mid/inner/leaf/leaf",
            "mid/after_inner",
            "end"
        ]
    );
    // Only the outer run's start and end: the inner runs are states of it.
    assert_eq!(run_events, 2);
    let names: Vec<&str> = report.states.iter().map(|s| &*s.name).collect();
    assert_eq!(
        names,
        [
            "start",
            "mid",
            "end",
            "mid/before_inner",
            "mid/inner",
            "mid/after_inner",
            "mid/inner/before_leaf",
            "mid/inner/leaf",
            "mid/inner/leaf/leaf",
        ]
    );
    assert!(report.states.iter().all(|s| s.runs == 1));
}

/// A child whose `flaky` state fails the first `failures` times it runs (over all runs).
fn flaky_child(calls: &Arc<AtomicU32>, failures: u32) -> Agent {
    let mut child = Agent::new("flaky_flow");
    let calls = Arc::clone(calls);
    child.add_state("flaky", move |ctx: Context| {
        let calls = Arc::clone(&calls);
        async move {
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            sleep(MS * 5).await;
            if call <= failures {
                return Err(format!("flaky call {call} failed").into());
            }
            ctx.set_state("result", call);
            Ok(Next::End)
        }
    });
    child
}

#[tokio::test(start_paused = true)]
async fn a_retry_runs_the_whole_subgraph_again() {
    let calls = Arc::new(AtomicU32::new(0));
    let mut parent = Agent::new("parent");
    parent
        .add_subgraph(
            "work",
            &flaky_child(&calls, 2),
            SubgraphMapping::new().outputs(["result"]),
        )
        .retry(RetryPolicy {
            max_retries: 2,
            initial_delay: MS * 100,
            ..RetryPolicy::default()
        });
    let report = parent.run().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(report.context.get_state::<u32>("result").unwrap(), 3);
    let work = report.state("work").unwrap();
    assert_eq!((work.runs, work.attempts), (1, 3));
    // The child's state, over the three child runs: the last one's outcome.
    let flaky = report.state("work/flaky").unwrap();
    assert_eq!(flaky.runs, 3);
    assert_eq!(flaky.status, StateStatus::Completed);
    assert_eq!(flaky.total_time, MS * 15);
}

#[tokio::test(start_paused = true)]
async fn a_failed_subgraph_fails_the_state_with_the_childs_error() {
    let calls = Arc::new(AtomicU32::new(0));
    let mut parent = Agent::new("parent");
    parent.add_subgraph("work", &flaky_child(&calls, 1), SubgraphMapping::new());
    let report = parent.start().unwrap().wait().await;
    assert_eq!(report.status, AgentStatus::Failed);
    let message = report.error.as_ref().unwrap().to_string();
    assert!(
        message.contains("subgraph state `work` ran workflow `flaky_flow`"),
        "{message}"
    );
    assert!(message.contains("flaky call 1 failed"), "{message}");
    assert_eq!(
        report.state("work/flaky").unwrap().status,
        StateStatus::Failed
    );
}

#[tokio::test(start_paused = true)]
async fn a_timeout_cancels_the_subgraph_and_on_error_takes_over() {
    let log = Log::default();
    let mut child = Agent::new("slow_flow");
    let l = log.clone();
    child.add_state("slow", move |_ctx: Context| {
        let l = l.clone();
        async move {
            l.push("slow started");
            sleep(Duration::from_secs(10)).await;
            l.push("slow finished");
            Ok(Next::End)
        }
    });
    let mut parent = Agent::new("parent");
    parent
        .add_subgraph("work", &child, SubgraphMapping::new().then("done"))
        .timeout(MS * 100)
        .on_error("fallback");
    let l = log.clone();
    parent.add_state("fallback", move |ctx: Context| {
        let l = l.clone();
        async move {
            l.push("fallback");
            let failure = ctx.failure().expect("the handler sees the failure");
            assert_eq!(&*failure.state, "work");
            Ok(Next::End)
        }
    });
    parent.add_state("done", |_ctx: Context| async move { Ok(Next::End) });
    let started = tokio::time::Instant::now();
    let report = parent.run().await.unwrap();
    assert_eq!(started.elapsed(), MS * 100);
    // Long after: the child's state never finishes, its run was cancelled with the attempt.
    sleep(Duration::from_secs(20)).await;
    assert_eq!(log.names(), ["slow started", "fallback"]);
    assert_eq!(report.state("work").unwrap().status, StateStatus::Timeout);
    assert_eq!(report.state("done").unwrap().runs, 0);
}

#[tokio::test(start_paused = true)]
async fn a_missing_mapped_key_is_an_error_naming_it() {
    let log = Log::default();
    let mut parent = Agent::new("parent");
    parent.add_subgraph(
        "review",
        &review(&log),
        SubgraphMapping::new().input("draft", "text"),
    );
    let error = parent.run().await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("subgraph state `review` maps input key `draft`"),
        "{message}"
    );
    assert!(log.names().is_empty());

    let mut parent = Agent::new("parent");
    parent.add_subgraph(
        "review",
        &review(&log),
        SubgraphMapping::new().inputs(["text"]).outputs(["missing"]),
    );
    let context = Context::new();
    context.set_state("text", "hello".to_string());
    let error = parent.run_with(context).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("maps output key `missing`, but the subgraph's context does not hold it"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_invalid_subgraph_is_refused_when_the_parent_is_validated() {
    let mut child = Agent::new("child");
    child.add_state("a", |_ctx: Context| async move { Ok(Next::End) });
    child.set_entry("nowhere");
    let mut parent = Agent::new("parent");
    parent.add_subgraph("sub", &child, SubgraphMapping::new());
    let error = parent.validate().unwrap_err();
    assert!(
        error
            .to_string()
            .contains("subgraph state `sub` holds an invalid workflow"),
        "{error}"
    );
    let mut parent = Agent::new("parent");
    parent.add_subgraph(
        "sub",
        &Agent::new("empty"),
        SubgraphMapping::new().then("nope"),
    );
    parent.add_state("other", |_ctx: Context| async move { Ok(Next::End) });
    assert!(parent.validate().is_err());
}

#[tokio::test(start_paused = true)]
async fn subgraphs_run_on_each_branch_of_a_map_and_their_reports_fold_in_item_order() {
    let mut child = Agent::new("square_flow");
    child.add_state("square", |ctx: Context| async move {
        let n: u64 = ctx.get_state("n")?;
        // Later items finish first.
        sleep(MS * (10 - n as u32)).await;
        ctx.set_state("squares", n * n);
        Ok(Next::End)
    });
    let mut parent = Agent::new("parent");
    parent.reducer("squares", Reducer::append::<u64>());
    parent.add_state("fan", |_ctx: Context| async move {
        Ok(Next::map("square", [1u64, 2, 3, 4]))
    });
    // Each branch's item becomes the child's `n`.
    parent.add_subgraph(
        "square",
        &child,
        SubgraphMapping::new().input_item("n").outputs(["squares"]),
    );
    let report = parent.run().await.unwrap();
    let squares: Vec<u64> = report.context.get_state("squares").unwrap();
    assert_eq!(squares, [1, 4, 9, 16]);
    let square = report.state("square/square").unwrap();
    assert_eq!((square.runs, square.status), (4, StateStatus::Completed));
}

/// A child `a -> b -> c`; `b` waits for `release` (first process) or runs at once.
fn resumable_child(log: &Log, hold_b: bool) -> Agent {
    let mut child = Agent::new("steps");
    for (name, next) in [("a", Some("b")), ("b", Some("c")), ("c", None)] {
        let l = log.clone();
        child.add_state(name, move |ctx: Context| {
            let l = l.clone();
            async move {
                l.push(name);
                if name == "b" && hold_b {
                    // The first process dies here.
                    std::future::pending::<()>().await;
                }
                let mut seen: Vec<String> = ctx.get_state_or("seen", Vec::new())?;
                seen.push(name.to_owned());
                ctx.set_state("seen", seen);
                Ok(next.map_or(Next::End, Next::to))
            }
        });
    }
    child
}

fn resumable_parent(log: &Log, hold_b: bool) -> Agent {
    let mut parent = Agent::new("outer");
    let l = log.clone();
    parent.add_state("first", move |_ctx: Context| {
        let l = l.clone();
        async move {
            l.push("first");
            Ok(Next::to("steps"))
        }
    });
    parent.add_subgraph(
        "steps",
        &resumable_child(log, hold_b),
        SubgraphMapping::new().outputs(["seen"]),
    );
    parent
}

/// Runs `build(log, true)` checkpointed until the child's `b` runs (it never ends there),
/// stops it, checks what its latest checkpoint holds, and continues the run in
/// `build(log, false)`: the child's `a` does not run again. `path`: the child's path.
async fn crash_in_b_and_resume(build: impl Fn(&Log, bool) -> Agent, path: &str) -> Log {
    let store = MemoryStore::new();
    let log = Log::default();
    let mut first = build(&log, true);
    first.checkpoints(store.clone(), CheckpointPolicy::after_each_state());
    let handle = first.start().unwrap();
    let key = handle.run_key().to_owned();
    while log.count("b") == 0 {
        sleep(MS).await;
    }
    // The parent's latest checkpoint holds the child's progress (`a` done, `b` due), as JSON
    // within its own, not as an escaped string.
    let saved = store.latest(first.name(), &key).unwrap().unwrap();
    let json = String::from_utf8(saved.to_json().unwrap()).unwrap();
    assert!(json.contains(r#""agent":"steps""#), "{json}");
    assert!(json.contains(r#""context":{"seen":["a"]}"#), "{json}");
    handle.cancel();
    assert_eq!(handle.wait().await.status, AgentStatus::Cancelled);

    let resumed = Log::default();
    let report = build(&resumed, false)
        .run_durable(store.clone(), &key)
        .await
        .unwrap();
    assert_eq!(resumed.names(), ["b", "c"]);
    let seen: Vec<String> = report.context.get_state("seen").unwrap();
    assert_eq!(seen, ["a", "b", "c"]);
    let a = report.state(&format!("{path}/a")).unwrap();
    assert_eq!((a.runs, a.restored_runs), (1, 1));
    assert_eq!(report.state(&format!("{path}/c")).unwrap().runs, 1);
    log
}

#[tokio::test(start_paused = true)]
async fn a_restored_parent_continues_its_subgraph_where_it_was() {
    let first = crash_in_b_and_resume(resumable_parent, "steps").await;
    // The parent's `first` does not run again either.
    assert_eq!(first.names(), ["first", "a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn a_completed_subgraph_in_a_checkpoint_is_not_run_again() {
    // The parent stops after the subgraph completed but before its next state ran.
    let store = MemoryStore::new();
    let log = Log::default();
    let build = |log: &Log, hold: bool| {
        let mut parent = Agent::new("outer");
        let l = log.clone();
        parent.add_state("first", move |_ctx: Context| {
            let l = l.clone();
            async move {
                l.push("first");
                Ok(Next::to("steps"))
            }
        });
        parent.add_subgraph(
            "steps",
            &resumable_child(log, false),
            SubgraphMapping::new().outputs(["seen"]).then("last"),
        );
        parent.add_state("last", move |_ctx: Context| async move {
            if hold {
                std::future::pending::<()>().await;
            }
            Ok(Next::End)
        });
        parent
    };
    let mut first = build(&log, true);
    first.checkpoints(store.clone(), CheckpointPolicy::after_each_state());
    let handle = first.start().unwrap();
    let key = handle.run_key().to_owned();
    sleep(MS * 10).await;
    handle.cancel();
    handle.wait().await;
    assert_eq!(log.names(), ["first", "a", "b", "c"]);

    let resumed = Log::default();
    let report = build(&resumed, false)
        .run_durable(store.clone(), &key)
        .await
        .unwrap();
    assert!(resumed.names().is_empty(), "{:?}", resumed.names());
    let seen: Vec<String> = report.context.get_state("seen").unwrap();
    assert_eq!(seen, ["a", "b", "c"]);
    assert_eq!(report.state("steps/c").unwrap().runs, 1);

    // Asked again, the completed run answers from its last checkpoint, subgraph states too.
    let again = Log::default();
    let report = build(&again, false)
        .run_durable(store.clone(), &key)
        .await
        .unwrap();
    assert!(again.names().is_empty());
    let names: Vec<&str> = report.states.iter().map(|s| &*s.name).collect();
    assert_eq!(
        names,
        ["first", "steps", "last", "steps/a", "steps/b", "steps/c"]
    );
    assert_eq!(
        report.state("steps/b").unwrap().status,
        StateStatus::Completed
    );
}

fn adder(name: &str, add: i64, fail: bool) -> Agent {
    let mut agent = Agent::new(name);
    agent.add_state("add", move |ctx: Context| async move {
        sleep(MS * add.unsigned_abs() as u32).await;
        if fail {
            return Err("refused".into());
        }
        let total: i64 = ctx.get_state_or("total", 0)?;
        ctx.set_state("total", total + add);
        Ok(Next::End)
    });
    agent
}

#[tokio::test(start_paused = true)]
async fn a_team_runs_agents_side_by_side_on_copies_of_the_context() {
    let team = Team::new()
        .with(&adder("plus_five", 5, false))
        .with(&adder("plus_two", 2, false));
    assert_eq!(team.names(), ["plus_five", "plus_two"]);
    let context = Context::new();
    context.set_state("total", 10i64);
    let started = tokio::time::Instant::now();
    let report = team.run_parallel(context.clone()).await;
    assert!(report.is_success());
    // Side by side: as long as the slower one.
    assert_eq!(started.elapsed(), MS * 5);
    assert!(report.context().is_none());
    let totals: Vec<i64> = report
        .reports
        .iter()
        .map(|r| r.context.get_state("total").unwrap())
        .collect();
    assert_eq!(totals, [15, 12]);
    // The caller's context is untouched.
    assert_eq!(context.get_state::<i64>("total").unwrap(), 10);
    assert_eq!(
        report.report("plus_two").unwrap().status,
        AgentStatus::Completed
    );
}

#[tokio::test(start_paused = true)]
async fn a_team_pipeline_passes_the_context_on_and_stops_at_a_failure() {
    let team = Team::new()
        .with(&adder("plus_five", 5, false))
        .with(&adder("plus_two", 2, false));
    let report = team.run_pipeline(Context::new()).await;
    assert!(report.is_success());
    assert_eq!(
        report.context().unwrap().get_state::<i64>("total").unwrap(),
        7
    );

    let team = Team::new()
        .with(&adder("plus_five", 5, false))
        .with(&adder("broken", 1, true))
        .with(&adder("plus_two", 2, false));
    let report = team.run_pipeline(Context::new()).await;
    assert!(!report.is_success());
    assert_eq!(report.reports.len(), 2);
    assert_eq!(report.reports[1].status, AgentStatus::Failed);
    assert_eq!(report.not_started.len(), 1);
    assert_eq!(&*report.not_started[0].0, "plus_two");
    let error = report.into_result().unwrap_err();
    assert!(error.to_string().contains("refused"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_fail_fast_team_cancels_the_others_at_the_first_failure() {
    let team = Team::new()
        .with(&adder("slow", 100, false))
        .with(&adder("broken", 1, true))
        .fail_fast(true);
    let started = tokio::time::Instant::now();
    let report = team.run_parallel(Context::new()).await;
    assert_eq!(started.elapsed(), MS);
    let statuses: Vec<AgentStatus> = report.reports.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [AgentStatus::Cancelled, AgentStatus::Failed]);
    // The team's error is the failure that cancelled the others, not their cancellation.
    let error = report.into_result().unwrap_err();
    assert!(error.to_string().contains("refused"), "{error}");

    // Without fail-fast, the slow one finishes.
    let team = Team::new()
        .with(&adder("slow", 100, false))
        .with(&adder("broken", 1, true));
    let report = team.run_parallel(Context::new()).await;
    let statuses: Vec<AgentStatus> = report.reports.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [AgentStatus::Completed, AgentStatus::Failed]);
}

#[tokio::test(start_paused = true)]
async fn a_subgraphs_input_request_is_pending_in_the_parent_and_answered_through_it() {
    let mut approval = Agent::new("approval");
    approval.add_state("ask", |ctx: Context| async move {
        let decision: String = ctx.human_input("Publish?").await?;
        ctx.set_state("decision", decision);
        Ok(Next::End)
    });
    let mut parent = Agent::new("parent");
    parent.add_subgraph(
        "approve",
        &approval,
        SubgraphMapping::new().outputs(["decision"]),
    );
    let (handle, mut events) = parent.start_watched(Context::new()).unwrap();
    let mut pending = handle.pending_inputs();
    while pending.is_empty() {
        sleep(MS).await;
        pending = handle.pending_inputs();
    }
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].prompt, "Publish?");
    // The child's own request: its state, under the child run's key.
    assert_eq!(pending[0].id.state, "ask");
    assert!(
        pending[0].id.run_key.ends_with("/approve#1.1"),
        "{}",
        pending[0].id
    );
    handle.answer(&pending[0].id, "yes").unwrap();
    let report = handle.result().await.unwrap();
    assert_eq!(
        report.context.get_state::<String>("decision").unwrap(),
        "yes"
    );
    let mut asked = Vec::new();
    while let Some(event) = events.next().await {
        match event.unwrap().kind {
            EventKind::InputRequested { state, .. } => asked.push(format!("asked {state}")),
            EventKind::InputAnswered { state, .. } => asked.push(format!("answered {state}")),
            _ => {}
        }
    }
    assert_eq!(asked, ["asked approve/ask", "answered approve/ask"]);
}

/// The macro form: `#[state(subgraph(..))]`, the method's body routing afterwards.
mod macro_form {
    use super::*;

    /// Scores a text: `score` = its length times the workflow's factor.
    struct Scorer {
        factor: usize,
    }

    #[workflow(name = "scorer")]
    impl Scorer {
        #[state]
        async fn score(&self, ctx: &Context) -> StateResult {
            let text: String = ctx.get_state("text")?;
            ctx.set_state("score", text.len() * self.factor);
            Ok(Next::End)
        }
    }

    struct Editor {
        factor: usize,
        threshold: usize,
    }

    #[workflow(name = "editor")]
    impl Editor {
        #[state(entry)]
        async fn draft(&self, ctx: &Context) -> StateResult {
            ctx.set_state("draft", "abcd".to_string());
            ctx.set_state("doc", "unused".to_string());
            next!(review)
        }

        /// Runs `scorer` on the draft; routes on the score it hands back.
        #[state(
            subgraph(
                workflow = Scorer { factor: self.factor },
                input(text = draft),
                output(review_score = score)
            ),
            retry(max = 1),
            timeout = "1s"
        )]
        async fn review(&self, ctx: &Context) -> StateResult {
            let score: usize = ctx.get_state("review_score")?;
            if score >= self.threshold {
                next!(publish)
            } else {
                next!(reject)
            }
        }

        #[state]
        async fn publish(&self, ctx: &Context) -> StateResult {
            ctx.set_state("outcome", "published".to_string());
            Ok(Next::End)
        }

        #[state]
        async fn reject(&self, ctx: &Context) -> StateResult {
            ctx.set_state("outcome", "rejected".to_string());
            Ok(Next::End)
        }
    }

    /// Squares `n`.
    struct Square;

    #[workflow(name = "square")]
    impl Square {
        #[state]
        async fn square(&self, ctx: &Context) -> StateResult {
            let n: u64 = ctx.get_state("n")?;
            ctx.set_state("squares", n * n);
            Ok(Next::End)
        }
    }

    /// Maps a subgraph over items; a reducer gathers what each run hands back.
    #[context]
    #[derive(Debug, Clone)]
    struct Squares {
        #[reduce(append)]
        squares: Vec<u64>,
    }

    struct Fleet;

    #[workflow(name = "fleet", context = Squares)]
    impl Fleet {
        #[state(entry)]
        async fn split(&self, _ctx: &Context) -> StateResult {
            map!(each, vec![3u64, 1, 2])
        }

        #[state(subgraph(workflow = Square, item = n, output(squares)))]
        async fn each(&self, _ctx: &Context) -> StateResult {
            next!(total)
        }

        #[state]
        async fn total(&self, ctx: &Context) -> StateResult {
            let squares: Vec<u64> = ctx.get_state("squares")?;
            ctx.set_state("total", squares.iter().sum::<u64>());
            Ok(Next::End)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_macro_subgraph_runs_once_per_map_item() {
        let report = Fleet.agent().run().await.unwrap();
        assert_eq!(
            report.context.get_state::<Vec<u64>>("squares").unwrap(),
            [9, 1, 4]
        );
        assert_eq!(report.context.get_state::<u64>("total").unwrap(), 14);
        assert_eq!(report.state("each/square").unwrap().runs, 3);
        assert_eq!(report.state("total").unwrap().runs, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_macro_subgraph_maps_keys_and_its_body_routes() {
        for (factor, outcome) in [(3, "published"), (1, "rejected")] {
            let report = Editor {
                factor,
                threshold: 10,
            }
            .agent()
            .run()
            .await
            .unwrap();
            assert_eq!(
                report.context.get_state::<String>("outcome").unwrap(),
                outcome
            );
            assert_eq!(
                report.context.get_state::<usize>("review_score").unwrap(),
                4 * factor
            );
            assert_eq!(report.state("review/score").unwrap().runs, 1);
            assert!(!report.context.has_state("score"));
        }
    }
}

/// The map of subgraphs under every order of three durations: the same values and the same
/// report whatever finished first.
#[tokio::test(start_paused = true)]
async fn mapped_subgraphs_give_one_result_under_every_timing() {
    let orders = [
        [1u32, 2, 3],
        [1, 3, 2],
        [2, 1, 3],
        [2, 3, 1],
        [3, 1, 2],
        [3, 2, 1],
    ];
    let mut outcomes = Vec::new();
    for durations in orders {
        let mut child = Agent::new("label_flow");
        child.add_state("label", move |ctx: Context| async move {
            let item: usize = ctx.get_state("item")?;
            sleep(MS * durations[item]).await;
            ctx.set_state("labels", format!("item {item}"));
            Ok(Next::End)
        });
        let mut parent = Agent::new("parent");
        parent.reducer("labels", Reducer::append::<String>());
        parent.add_state("fan", |_ctx: Context| async move {
            Ok(Next::map("label", [0usize, 1, 2]))
        });
        parent.add_subgraph(
            "label",
            &child,
            SubgraphMapping::new()
                .input_item("item")
                .outputs(["labels"])
                .then("done"),
        );
        parent.add_state("done", |ctx: Context| async move {
            let labels: Vec<String> = ctx.get_state("labels")?;
            ctx.replace_state("seen_at_join", labels);
            Ok(Next::End)
        });
        let report = parent.run().await.unwrap();
        let seen: Vec<String> = report.context.get_state("seen_at_join").unwrap();
        let label = report.state("label/label").unwrap();
        outcomes.push((
            seen,
            label.runs,
            label.status,
            label.total_time,
            report.state("done").unwrap().runs,
        ));
    }
    for outcome in &outcomes {
        assert_eq!(outcome, &outcomes[0]);
    }
    assert_eq!(outcomes[0].0, ["item 0", "item 1", "item 2"]);
    assert_eq!(outcomes[0].1, 3);
    assert_eq!(outcomes[0].3, MS * 6);
    assert_eq!(outcomes[0].4, 1);
}

#[tokio::test(start_paused = true)]
async fn a_restore_continues_a_subgraph_two_levels_down() {
    let build = |log: &Log, hold: bool| {
        let mut middle = Agent::new("middle");
        middle.add_subgraph(
            "inner",
            &resumable_child(log, hold),
            SubgraphMapping::new().outputs(["seen"]),
        );
        let mut outer = Agent::new("outer3");
        outer.add_subgraph("mid", &middle, SubgraphMapping::new().outputs(["seen"]));
        outer
    };
    let first = crash_in_b_and_resume(build, "mid/inner").await;
    assert_eq!(first.names(), ["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn a_monitor_on_the_parent_sees_the_subgraphs_runs_as_their_workflows() {
    let log = Log::default();
    let agent = blog(&log);
    let monitor = fluffy_flow::Monitor::new(fluffy_flow::MetricType::ALL);
    monitor.attach(&agent).unwrap();
    agent.run().await.unwrap();
    let snapshot = monitor.snapshot();
    let review = &snapshot.workflows["review"];
    assert_eq!((review.runs.started, review.runs.completed), (1, 1));
    assert_eq!(review.states["judge"].completed, 1);
    let blog = &snapshot.workflows["blog"];
    assert_eq!((blog.runs.started, blog.runs.completed), (1, 1));
    assert_eq!(blog.states["review"].completed, 1);
}

#[tokio::test(start_paused = true)]
async fn a_subgraph_that_completed_with_failures_makes_the_parent_say_so() {
    let mut child = Agent::new("batch");
    child.on_branch_failure(fluffy_flow::BranchFailure::Continue);
    child.add_state("fan", |_ctx: Context| async move {
        Ok(Next::parallel(["good", "bad"]))
    });
    child.add_state("good", |ctx: Context| async move {
        ctx.set_state("good", true);
        Ok(Next::End)
    });
    child.add_state(
        "bad",
        |_ctx: Context| async move { Err("bad input".into()) },
    );
    let mut parent = Agent::new("parent");
    parent.add_subgraph(
        "batch",
        &child,
        SubgraphMapping::new().outputs(["good"]).then("after"),
    );
    parent.add_state("after", |_ctx: Context| async move { Ok(Next::End) });
    let report = parent.start().unwrap().wait().await;
    // The subgraph state completed and the run went on, but not all its work was done.
    assert_eq!(report.status, AgentStatus::CompletedWithFailures);
    assert!(!report.is_success());
    assert!(report.context.get_state::<bool>("good").unwrap());
    assert_eq!(report.state("after").unwrap().runs, 1);
    let failed: Vec<&str> = report.failed_branches().map(|l| l.state.as_str()).collect();
    assert_eq!(failed, ["batch/bad"]);
    assert_eq!(
        report.state("batch/bad").unwrap().status,
        StateStatus::Failed
    );
}

#[tokio::test(start_paused = true)]
async fn stopped_subgraph_runs_are_in_the_report_and_their_events_come_first() {
    let mut child = Agent::new("slow_flow");
    child.add_state("slow", |_ctx: Context| async move {
        sleep(Duration::from_secs(10)).await;
        Ok(Next::End)
    });
    // A timed-out attempt, then a retry that is cancelled with the run.
    let mut parent = Agent::new("parent");
    parent
        .add_subgraph("work", &child, SubgraphMapping::new())
        .timeout(MS * 100)
        .retry(RetryPolicy {
            max_retries: 1,
            initial_delay: MS,
            ..RetryPolicy::default()
        });
    let (handle, mut events) = parent.start_watched(Context::new()).unwrap();
    sleep(MS * 150).await;
    handle.cancel();
    let mut seen = Vec::new();
    while let Some(event) = events.next().await {
        match event.unwrap().kind {
            EventKind::StateCancelled { state } => seen.push(format!("cancelled {state}")),
            EventKind::StateFailed { state, .. } => seen.push(format!("failed {state}")),
            EventKind::RunFinished { .. } => seen.push("run finished".into()),
            _ => {}
        }
    }
    let report = handle.wait().await;
    assert_eq!(report.status, AgentStatus::Cancelled);
    assert_eq!(
        seen,
        [
            "cancelled work/slow",
            "cancelled work",
            "cancelled work/slow",
            "run finished"
        ]
    );
    let slow = report.state("work/slow").unwrap();
    assert_eq!((slow.runs, slow.status), (2, StateStatus::Cancelled));
    assert_eq!(report.state("work").unwrap().attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn a_durable_run_that_failed_in_a_subgraph_reports_its_rerun_last() {
    let store = MemoryStore::new();
    let calls = Arc::new(AtomicU32::new(0));
    let build = |calls: &Arc<AtomicU32>| {
        let mut parent = Agent::new("parent");
        parent.add_subgraph(
            "work",
            &flaky_child(calls, 1),
            SubgraphMapping::new().outputs(["result"]),
        );
        parent
    };
    let failed = build(&calls)
        .run_durable(store.clone(), "nightly")
        .await
        .unwrap_err();
    assert!(
        failed.to_string().contains("flaky call 1 failed"),
        "{failed}"
    );
    let report = build(&calls)
        .run_durable(store.clone(), "nightly")
        .await
        .unwrap();
    assert_eq!(report.context.get_state::<u32>("result").unwrap(), 2);
    // Both runs of the child, the rerun's outcome last.
    let flaky = report.state("work/flaky").unwrap();
    assert_eq!((flaky.runs, flaky.restored_runs), (2, 1));
    assert_eq!((flaky.status, flaky.attempts), (StateStatus::Completed, 1));
    assert_eq!(flaky.last_error, None);
}

#[tokio::test(start_paused = true)]
async fn a_subgraph_that_would_suspend_on_input_is_refused() {
    let mut child = Agent::new("asker");
    child.add_state("ask", |_ctx: Context| async move { Ok(Next::End) });
    child.suspend_on_input();
    let mut parent = Agent::new("parent");
    parent.add_subgraph("ask", &child, SubgraphMapping::new());
    let error = parent.validate().unwrap_err();
    assert!(
        error
            .to_string()
            .contains("a subgraph cannot `suspend_on_input`"),
        "{error}"
    );
}

/// A child of three 10 ms steps, logged.
fn steps_child(log: &Log) -> Agent {
    let mut child = Agent::new("steps3");
    for (name, next) in [
        ("one", Some("two")),
        ("two", Some("three")),
        ("three", None),
    ] {
        let l = log.clone();
        child.add_state(name, move |_ctx: Context| {
            let l = l.clone();
            async move {
                l.push(name);
                sleep(MS * 10).await;
                Ok(next.map_or(Next::End, Next::to))
            }
        });
    }
    child
}

#[tokio::test(start_paused = true)]
async fn pausing_the_parent_lets_a_running_subgraph_finish_first() {
    let log = Log::default();
    let mut parent = Agent::new("parent");
    parent.add_subgraph(
        "work",
        &steps_child(&log),
        SubgraphMapping::new().then("after"),
    );
    let l = log.clone();
    parent.add_state("after", move |_ctx: Context| {
        let l = l.clone();
        async move {
            l.push("after");
            Ok(Next::End)
        }
    });
    let handle = parent.start().unwrap();
    sleep(MS * 5).await;
    let started = tokio::time::Instant::now();
    let checkpoint = handle.pause().await.unwrap();
    // The pause returned once the subgraph state (its whole run) had finished.
    assert_eq!(started.elapsed(), MS * 25);
    assert_eq!(log.names(), ["one", "two", "three"]);
    assert!(checkpoint.queue.iter().any(|q| q.state == "after"));
    sleep(MS * 100).await;
    assert_eq!(log.count("after"), 0, "nothing starts while paused");
    handle.resume();
    let report = handle.result().await.unwrap();
    assert_eq!(log.names(), ["one", "two", "three", "after"]);
    assert_eq!(report.state("work/three").unwrap().runs, 1);
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_subgraph_state_cancels_its_run() {
    let log = Log::default();
    let mut parent = Agent::new("parent");
    parent
        .add_subgraph("work", &steps_child(&log), SubgraphMapping::new())
        .on_error("recover");
    parent.add_state("recover", |_ctx: Context| async move { Ok(Next::End) });
    let handle = parent.start().unwrap();
    sleep(MS * 15).await;
    assert_eq!(handle.cancel_state("work").await.unwrap(), 1);
    let report = handle.wait().await;
    sleep(MS * 100).await;
    // `three` never started: the subgraph's run stopped with its state.
    assert_eq!(log.names(), ["one", "two"]);
    assert_eq!(report.state("work").unwrap().status, StateStatus::Cancelled);
    let two = report.state("work/two").unwrap();
    assert_eq!((two.runs, two.status), (1, StateStatus::Cancelled));
    assert_eq!(report.state("work/three").unwrap().runs, 0);
    // A cancelled state's branch ends: it did not fail, so its handler does not run.
    assert_eq!(report.state("recover").unwrap().runs, 0);
}
