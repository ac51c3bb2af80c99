//! Dependencies: each kind and lifecycle with exact orders, counts and times (paused clock),
//! failures, conditions, timeouts, the no-progress error and validation.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Log, step, step_undeclared, targets};
use fluffy_flow::prelude::*;
use fluffy_flow::{DependencyConfig, DependencyType, FailureKind, StateOptions};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

/// A state that goes to `again` the first `times - 1` times it runs, then to `then`.
fn looping<'a>(
    agent: &'a mut Agent,
    log: &Log,
    name: &str,
    delay_ms: u64,
    times: u32,
    again: &'static str,
    then: Next,
) -> StateOptions<'a> {
    let log = log.clone();
    let key = name.to_owned();
    let runs = Arc::new(AtomicU32::new(0));
    let mut declared = targets(&then);
    declared.push(again.to_owned());
    agent
        .add_state(name, move |_ctx: Context| {
            let (log, key, then, runs) = (log.clone(), key.clone(), then.clone(), runs.clone());
            async move {
                log.push(&key);
                tokio::time::sleep(MS * delay_ms as u32).await;
                let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(if run < times { Next::to(again) } else { then })
            }
        })
        .successors(declared)
}

fn par(states: &[&'static str]) -> Next {
    Next::parallel(states.iter().copied())
}

#[tokio::test(start_paused = true)]
async fn a_required_dependency_starts_a_state_no_transition_reaches() {
    let log = Log::default();
    let mut agent = Agent::new("etl");
    step(&mut agent, &log, "extract", 10, Next::to("load"));
    step(&mut agent, &log, "load", 20, Next::End);
    step(&mut agent, &log, "report", 5, Next::End).depends_on("load", DependencyType::Required);
    let origin = Instant::now();
    let report = agent.run().await.expect("completes");
    assert_eq!(log.names(), ["extract", "load", "report"]);
    assert_eq!(log.started("report", origin), MS * 30);
    assert_eq!(report.state("report").unwrap().runs, 1);
    assert_eq!(
        report.state("report").unwrap().status,
        StateStatus::Completed
    );
}

#[tokio::test(start_paused = true)]
async fn a_transition_waits_for_a_required_dependency_on_another_branch() {
    let log = Log::default();
    let mut agent = Agent::new("wait");
    step(&mut agent, &log, "a", 0, par(&["b", "c"]));
    step(&mut agent, &log, "b", 40, Next::End);
    step(&mut agent, &log, "c", 10, Next::to("d"));
    step(&mut agent, &log, "d", 0, Next::End).depends_on("b", DependencyType::Required);
    let origin = Instant::now();
    let handle = agent.start().unwrap();
    tokio::time::sleep(MS * 20).await;
    // `d` arrived at 10 ms and waits for `b`.
    assert_eq!(handle.state_status("d"), Some(StateStatus::Blocked));
    let blocked = handle.blocked().await;
    assert_eq!(blocked.len(), 1);
    assert_eq!(&*blocked[0].state, "d");
    assert_eq!(
        blocked[0].waits_for,
        ["`b` (required): it is scheduled or running"]
    );
    assert_eq!(blocked[0].waited, MS * 10);
    let report = handle.result().await.expect("completes");
    assert_eq!(log.started("d", origin), MS * 40);
    assert_eq!(log.count("d"), 1);
    assert_eq!(report.state("d").unwrap().status, StateStatus::Completed);
}

async fn diamond(declare: bool, transitions: bool) {
    let log = Log::default();
    let mut agent = Agent::new("diamond");
    let next = if transitions {
        Next::to("d")
    } else {
        Next::End
    };
    let add = if declare { step } else { step_undeclared };
    add(&mut agent, &log, "a", 0, par(&["b", "c"]));
    add(&mut agent, &log, "b", 10, next.clone());
    add(&mut agent, &log, "c", 30, next.clone());
    add(&mut agent, &log, "d", 0, Next::End)
        .depends_on("b", DependencyType::Required)
        .depends_on("c", DependencyType::Required);
    let origin = Instant::now();
    let report = agent.run().await.expect("completes");
    assert_eq!(
        log.count("d"),
        1,
        "declare={declare} transitions={transitions}"
    );
    assert_eq!(log.started("d", origin), MS * 30);
    assert_eq!(log.names().last().map(String::as_str), Some("d"));
    assert_eq!(report.state("d").unwrap().runs, 1);
}

#[tokio::test(start_paused = true)]
async fn a_diamond_runs_its_join_once_however_it_is_written() {
    diamond(true, true).await;
    diamond(false, true).await;
    // No transition reaches `d`: it starts by itself when both have completed.
    diamond(true, false).await;
    diamond(false, false).await;
}

fn failing_upstream(agent: &mut Agent, log: &Log, handle_dependent: bool) {
    step(agent, log, "a", 0, par(&["b", "c"]));
    agent
        .add_state_with_error("b", |_ctx: Context| async {
            tokio::time::sleep(MS * 10).await;
            Err::<Next, _>("upstream is down".to_string())
        })
        .terminal()
        .on_error("cleanup");
    step(agent, log, "cleanup", 0, Next::End);
    step(agent, log, "c", 0, Next::to("d"));
    let d = step(agent, log, "d", 0, Next::End)
        .depends_on("b", DependencyType::Required)
        .retry(RetryPolicyFor::three());
    if handle_dependent {
        d.on_error("d_failed");
        let log = log.clone();
        agent
            .add_state("d_failed", move |ctx: Context| {
                let log = log.clone();
                async move {
                    log.push("d_failed");
                    ctx.set_state("why", ctx.failure().expect("a failure").error);
                    Ok(Next::End)
                }
            })
            .terminal();
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_required_dependency_fails_its_dependent_naming_both() {
    let log = Log::default();
    let mut agent = Agent::new("fails");
    failing_upstream(&mut agent, &log, true);
    let report = agent.run().await.expect("both failures are handled");
    // `d` never ran, and a dependency failure is not retried.
    assert_eq!(log.count("d"), 0);
    assert_eq!(log.count("cleanup"), 1);
    assert_eq!(log.count("d_failed"), 1);
    assert_eq!(report.state("d").unwrap().status, StateStatus::Failed);
    let why: String = report.context.get_state("why").unwrap();
    assert_eq!(
        why,
        "state `d` cannot run: its required dependency `b` failed (state `b` failed after 1 attempt(s): upstream is down); fix `b`, or make the dependency `optional` if `d` can do without it"
    );
    let letters = &report.dead_letters;
    assert_eq!(
        letters.iter().map(|l| l.state.as_str()).collect::<Vec<_>>(),
        ["b", "d"]
    );
    assert_eq!(letters[1].kind, FailureKind::Dependency);
    assert_eq!(letters[1].attempts, 0);

    // Without a handler for `d`, its failure is the run's.
    let log = Log::default();
    let mut agent = Agent::new("fails");
    failing_upstream(&mut agent, &log, false);
    let error = agent.run().await.unwrap_err();
    assert!(
        matches!(&error, FlowError::DependencyFailed { state, dependency, .. } if state == "d" && dependency == "b"),
        "{error}"
    );
    assert_eq!(log.count("d"), 0);
}

/// Retry policies used above.
struct RetryPolicyFor;

impl RetryPolicyFor {
    fn three() -> fluffy_flow::RetryPolicy {
        fluffy_flow::RetryPolicy {
            max_retries: 3,
            initial_delay: MS,
            ..fluffy_flow::RetryPolicy::default()
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_optional_dependency_waits_only_while_it_is_scheduled() {
    let log = Log::default();
    let mut agent = Agent::new("optional");
    step(&mut agent, &log, "a", 0, par(&["b", "c", "e"]));
    step(&mut agent, &log, "b", 25, Next::End);
    step(&mut agent, &log, "c", 5, Next::to("d"));
    step(&mut agent, &log, "e", 5, Next::to("f"));
    // `b` runs when `d` arrives: `d` waits for it.
    step(&mut agent, &log, "d", 0, Next::End).depends_on("b", DependencyType::Optional);
    // `never` is not scheduled when `f` arrives: `f` goes at once.
    step(&mut agent, &log, "f", 0, Next::End).depends_on("never", DependencyType::Optional);
    step(&mut agent, &log, "never", 0, Next::End);
    let origin = Instant::now();
    agent.run().await.expect("completes");
    assert_eq!(log.started("d", origin), MS * 25);
    assert_eq!(log.started("f", origin), MS * 5);
    assert_eq!(log.count("never"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_sequential_dependency_runs_after_it_if_it_runs() {
    // `b` runs later on another branch: `s` waits for it, though it was not yet scheduled.
    let log = Log::default();
    let mut agent = Agent::new("sequential");
    step(&mut agent, &log, "a", 0, par(&["x", "y"]));
    step(&mut agent, &log, "x", 0, Next::to("s"));
    step(&mut agent, &log, "y", 10, Next::to("b"));
    step(&mut agent, &log, "b", 5, Next::End);
    step(&mut agent, &log, "s", 0, Next::End).depends_on("b", DependencyType::Sequential);
    let origin = Instant::now();
    agent.run().await.expect("completes");
    assert_eq!(log.started("s", origin), MS * 15);
    assert_eq!(log.names(), ["a", "x", "y", "b", "s"]);

    // `b` never runs: `s` goes once nothing else is left to run (after `y`, at 10 ms).
    let log = Log::default();
    let mut agent = Agent::new("sequential");
    step(&mut agent, &log, "a", 0, par(&["x", "y"]));
    step(&mut agent, &log, "x", 0, Next::to("s"));
    step(&mut agent, &log, "y", 10, Next::End);
    step(&mut agent, &log, "b", 5, Next::End);
    step(&mut agent, &log, "s", 0, Next::End).depends_on("b", DependencyType::Sequential);
    let origin = Instant::now();
    agent.run().await.expect("completes");
    assert_eq!(log.started("s", origin), MS * 10);
    assert_eq!(log.count("b"), 0);

    // `b` already ran: no wait.
    let log = Log::default();
    let mut agent = Agent::new("sequential");
    step(&mut agent, &log, "b", 5, Next::to("x"));
    step(&mut agent, &log, "x", 5, Next::to("s"));
    step(&mut agent, &log, "s", 0, Next::End).depends_on("b", DependencyType::Sequential);
    let origin = Instant::now();
    agent.run().await.expect("completes");
    assert_eq!(log.started("s", origin), MS * 10);
}

#[tokio::test(start_paused = true)]
async fn a_parallel_dependency_starts_with_its_dependent_unless_its_completion_counts() {
    let log = Log::default();
    let mut agent = Agent::new("parallel");
    step(&mut agent, &log, "a", 10, Next::to("s"));
    looping(&mut agent, &log, "s", 20, 2, "t", Next::End)
        .depends_on("warm", DependencyType::Parallel);
    step(&mut agent, &log, "t", 100, Next::to("s"));
    step(&mut agent, &log, "warm", 30, Next::End);
    let origin = Instant::now();
    let report = agent.run().await.expect("completes");
    // `warm` starts with `s` the first time; its completion counts (lifecycle `once`) when
    // `s` comes back.
    assert_eq!(log.started("warm", origin), MS * 10);
    assert_eq!(log.count("warm"), 1);
    assert_eq!(log.count("s"), 2);
    assert_eq!(report.state("warm").unwrap().runs, 1);

    // With lifecycle `always`, it starts with every run of `s`.
    let log = Log::default();
    let mut agent = Agent::new("parallel");
    step(&mut agent, &log, "a", 10, Next::to("s"));
    looping(&mut agent, &log, "s", 20, 2, "t", Next::End)
        .depends_on("warm", DependencyConfig::parallel().always());
    step(&mut agent, &log, "t", 100, Next::to("s"));
    step(&mut agent, &log, "warm", 30, Next::End);
    agent.run().await.expect("completes");
    assert_eq!(log.count("warm"), 2);
    assert_eq!(log.names(), ["a", "s", "warm", "t", "s", "warm"]);
}

#[tokio::test(start_paused = true)]
async fn lifecycle_always_needs_a_fresh_completion_for_every_run() {
    // `b -> d -> b -> d`: every `d` follows a fresh `b`.
    let log = Log::default();
    let mut agent = Agent::new("always");
    step(&mut agent, &log, "b", 5, Next::to("d"));
    looping(&mut agent, &log, "d", 5, 2, "b", Next::End)
        .depends_on("b", DependencyConfig::required().always());
    agent.run().await.expect("completes");
    assert_eq!(log.names(), ["b", "d", "b", "d"]);

    // `b -> d -> x -> d`: the second `d` has no fresh `b`, and nothing left can run one.
    for (lifecycle, expect_runs) in [
        (DependencyConfig::required(), 2),
        (DependencyConfig::required().always(), 1),
    ] {
        let log = Log::default();
        let mut agent = Agent::new("always");
        step(&mut agent, &log, "b", 5, Next::to("d"));
        looping(&mut agent, &log, "d", 5, 2, "x", Next::End).depends_on("b", lifecycle.clone());
        step(&mut agent, &log, "x", 5, Next::to("d"));
        let result = agent.run().await;
        assert_eq!(log.count("d"), expect_runs);
        if expect_runs == 1 {
            let error = result.unwrap_err();
            assert_eq!(
                error,
                FlowError::DependencyUnsatisfied {
                    state: "d".into(),
                    dependency: "b".into(),
                    reason: "completed, but that completion no longer counts".into(),
                }
            );
        } else {
            result.expect("with lifecycle `once`, one completion counts for the run");
        }
    }

    // A state that starts by itself with an `always` dependency runs after each completion.
    let log = Log::default();
    let mut agent = Agent::new("always");
    looping(&mut agent, &log, "tick", 10, 3, "tick", Next::End);
    step(&mut agent, &log, "on_tick", 0, Next::End)
        .depends_on("tick", DependencyConfig::required().always());
    agent.run().await.expect("completes");
    assert_eq!(
        log.names(),
        ["tick", "tick", "on_tick", "tick", "on_tick", "on_tick"]
    );
    assert_eq!(log.count("tick"), 3);
    assert_eq!(log.count("on_tick"), 3);
}

#[tokio::test(start_paused = true)]
async fn a_periodic_dependency_runs_again_when_its_completion_is_older_than_the_interval() {
    let log = Log::default();
    let mut agent = Agent::new("periodic");
    step(&mut agent, &log, "refresh", 5, Next::End).entry();
    step(&mut agent, &log, "begin", 0, Next::to("call")).entry();
    looping(&mut agent, &log, "call", 10, 3, "idle", Next::End)
        .depends_on("refresh", DependencyConfig::required().periodic(MS * 100));
    looping(&mut agent, &log, "idle", 50, 3, "call", Next::to("call"));
    let origin = Instant::now();
    let report = agent.run().await.expect("completes");
    // refresh 0-5; call 5-15; idle 15-65; call 65-75 (refresh is 60 ms old: it counts);
    // idle 75-125; call arrives at 125 and refresh is 120 ms old: refresh runs again first,
    // 125-130; call 130.
    let names: Vec<String> = log.names().into_iter().filter(|n| n != "begin").collect();
    assert_eq!(
        names,
        ["refresh", "call", "idle", "call", "idle", "refresh", "call"]
    );
    assert_eq!(log.started("call", origin), MS * 5);
    assert_eq!(report.state("refresh").unwrap().runs, 2);
    assert_eq!(report.state("call").unwrap().runs, 3);
    assert_eq!(
        report.state("call").unwrap().last_finished.unwrap() - origin,
        MS * 140
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_completion_no_longer_counts() {
    let log = Log::default();
    let mut agent = Agent::new("expiry");
    step(&mut agent, &log, "b", 5, Next::to("d"));
    looping(&mut agent, &log, "d", 0, 2, "idle", Next::End)
        .depends_on("b", DependencyConfig::required().expiry(MS * 100));
    step(&mut agent, &log, "idle", 150, Next::to("d"));
    let error = agent.run().await.unwrap_err();
    assert_eq!(log.count("d"), 1);
    assert!(
        matches!(&error, FlowError::DependencyUnsatisfied { state, dependency, .. } if state == "d" && dependency == "b"),
        "{error}"
    );

    // Within the expiry, it counts.
    let log = Log::default();
    let mut agent = Agent::new("expiry");
    step(&mut agent, &log, "b", 5, Next::to("d"));
    looping(&mut agent, &log, "d", 0, 2, "idle", Next::End)
        .depends_on("b", DependencyConfig::required().expiry(MS * 100));
    step(&mut agent, &log, "idle", 90, Next::to("d"));
    agent.run().await.expect("completes");
    assert_eq!(log.count("d"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_condition_that_turns_true_later_releases_the_state() {
    let log = Log::default();
    let mut agent = Agent::new("condition");
    step(&mut agent, &log, "a", 0, par(&["t", "approve"]));
    step(&mut agent, &log, "t", 0, Next::End).depends_on(
        "a",
        DependencyConfig::required().when(|ctx| ctx.get_state::<bool>("approve").unwrap_or(false)),
    );
    step(&mut agent, &log, "approve", 50, Next::End);
    let origin = Instant::now();
    let handle = agent.start().unwrap();
    tokio::time::sleep(MS * 20).await;
    let blocked = handle.blocked().await;
    assert_eq!(
        blocked[0].waits_for,
        ["`a` (required): its condition does not hold"]
    );
    handle.result().await.expect("completes");
    assert_eq!(log.started("t", origin), MS * 50);
    assert_eq!(log.count("t"), 1);
}

#[tokio::test(start_paused = true)]
async fn waiting_past_a_dependency_timeout_fails_the_dependent() {
    let log = Log::default();
    let mut agent = Agent::new("timeout");
    step(&mut agent, &log, "a", 0, par(&["t", "slow"]));
    step(&mut agent, &log, "slow", 500, Next::End);
    step(&mut agent, &log, "t", 0, Next::End)
        .depends_on("slow", DependencyConfig::required().timeout(MS * 100))
        .on_error("fallback");
    let fallback_log = log.clone();
    agent.add_state("fallback", move |ctx: Context| {
        let log = fallback_log.clone();
        async move {
            log.push("fallback");
            let failure = ctx.failure().expect("the failure is there");
            ctx.set_state("why", failure.error);
            Ok(Next::End)
        }
    });
    let origin = Instant::now();
    let report = agent.run().await.expect("the handler takes over");
    assert_eq!(log.started("fallback", origin), MS * 100);
    assert_eq!(log.count("t"), 0);
    assert_eq!(report.state("t").unwrap().status, StateStatus::Timeout);
    let why: String = report.context.get_state("why").unwrap();
    assert!(
        why.contains("state `t` waited 100ms for its dependency `slow`"),
        "{why}"
    );
    let letter = &report.dead_letters[0];
    assert_eq!(
        (letter.kind, letter.timed_out),
        (FailureKind::Dependency, true)
    );
}

#[tokio::test(start_paused = true)]
async fn when_nothing_can_progress_the_run_fails_listing_who_waits_for_what() {
    let log = Log::default();
    let mut agent = Agent::new("stuck");
    step(&mut agent, &log, "a", 0, par(&["p", "q"]));
    // `p` needs `q` done; `q` waits while `p` is scheduled: neither can start.
    step(&mut agent, &log, "p", 0, Next::End).depends_on("q", DependencyType::Required);
    step(&mut agent, &log, "q", 0, Next::End).depends_on("p", DependencyType::Optional);
    let error = agent.run().await.unwrap_err();
    assert_eq!(
        error,
        FlowError::NoProgress {
            agent: "stuck".into(),
            waiting: vec![
                "p (waits for `q` (required): it is scheduled or running)".into(),
                "q (waits for `p` (optional): it is scheduled or running)".into(),
            ],
        }
    );
    assert!(error.to_string().contains("cannot make progress"));

    // A condition that never holds, with no timeout: the same error, with the reason.
    let log = Log::default();
    let mut agent = Agent::new("stuck");
    step(&mut agent, &log, "a", 0, Next::to("t"));
    step(&mut agent, &log, "t", 0, Next::End)
        .depends_on("a", DependencyConfig::required().when(|_| false));
    let error = agent.run().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "run of workflow `stuck` cannot make progress: nothing runs, and these states wait: t (waits for `a` (required): its condition does not hold); make sure what they wait for can happen (a transition to it, a condition that can turn true), or give the dependency a `timeout`"
    );
}

#[tokio::test(start_paused = true)]
async fn a_required_dependency_nothing_can_run_fails_its_dependent() {
    let log = Log::default();
    let mut agent = Agent::new("orphan");
    step(&mut agent, &log, "a", 0, Next::End);
    step(&mut agent, &log, "never", 0, Next::End);
    step(&mut agent, &log, "report", 0, Next::End).depends_on("never", DependencyType::Required);
    let error = agent.run().await.unwrap_err();
    assert_eq!(
        error,
        FlowError::DependencyUnsatisfied {
            state: "report".into(),
            dependency: "never".into(),
            reason: "has not completed in this run".into(),
        }
    );
    assert_eq!(log.names(), ["a"]);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_state_can_be_cancelled() {
    let log = Log::default();
    let mut agent = Agent::new("cancel");
    step(&mut agent, &log, "a", 0, par(&["b", "c"]));
    step(&mut agent, &log, "b", 100, Next::End);
    step(&mut agent, &log, "c", 0, Next::to("d"));
    step(&mut agent, &log, "d", 0, Next::End).depends_on("b", DependencyType::Required);
    let handle = agent.start().unwrap();
    tokio::time::sleep(MS * 10).await;
    assert_eq!(handle.cancel_state("d").await.unwrap(), 1);
    assert!(handle.blocked().await.is_empty());
    let report = handle.result().await.expect("completes");
    assert_eq!(log.count("d"), 0);
    assert_eq!(report.state("d").unwrap().status, StateStatus::Cancelled);
}

#[tokio::test]
async fn bad_dependencies_are_rejected_before_anything_runs() {
    let noop = |_ctx: Context| async { Ok(Next::End) };
    let mut agent = Agent::new("bad");
    agent
        .add_state("a", noop)
        .depends_on("b", DependencyType::Required);
    agent
        .add_state("b", noop)
        .depends_on("c", DependencyType::Required);
    agent
        .add_state("c", noop)
        .depends_on("a", DependencyType::Required);
    let error = agent.run().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "required dependencies of workflow `bad` form a cycle: a → c → b → a; none of these states could ever start — make one of these dependencies `optional` or remove it"
    );

    let mut agent = Agent::new("bad");
    agent.add_state("load", noop);
    agent
        .add_state("report", noop)
        .depends_on("lod", DependencyType::Required);
    assert_eq!(
        agent.validate().unwrap_err().to_string(),
        "state `report` of workflow `bad` depends on `lod`, but there is no state of that name (did you mean `load`?)"
    );

    let mut agent = Agent::new("bad");
    agent.add_state("load", noop);
    let mut periodic = DependencyConfig::required();
    periodic.lifecycle = fluffy_flow::DependencyLifecycle::Periodic;
    agent.add_state("report", noop).depends_on("load", periodic);
    assert_eq!(
        agent.validate().unwrap_err().to_string(),
        "invalid configuration of workflow `bad`: the dependency of `report` on `load` is periodic but has no `interval`; say how long a completion counts"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dependency_released_in_the_same_step_counts_as_scheduled() {
    // `b` is checked before `c`, which the same fork releases: `c` is on its way, so it is
    // neither started a second time (parallel) nor skipped (optional).
    let log = Log::default();
    let mut agent = Agent::new("same_step");
    step(&mut agent, &log, "a", 0, par(&["b", "c"]));
    step(&mut agent, &log, "b", 0, Next::End).depends_on("c", DependencyType::Parallel);
    step(&mut agent, &log, "c", 10, Next::End);
    agent.run().await.expect("completes");
    assert_eq!(log.count("c"), 1);

    let log = Log::default();
    let mut agent = Agent::new("same_step");
    step(&mut agent, &log, "a", 0, par(&["b", "c"]));
    step(&mut agent, &log, "b", 0, Next::End).depends_on("c", DependencyType::Optional);
    step(&mut agent, &log, "c", 10, Next::End);
    let origin = Instant::now();
    agent.run().await.expect("completes");
    assert_eq!(log.started("b", origin), MS * 10);
}

#[tokio::test(start_paused = true)]
async fn settling_a_quiet_run_may_refresh_a_periodic_dependency() {
    let log = Log::default();
    let mut agent = Agent::new("settle");
    step(&mut agent, &log, "a", 0, par(&["x", "g", "l"]));
    step(&mut agent, &log, "x", 0, Next::End);
    step(&mut agent, &log, "g", 10, Next::to("d"));
    step(&mut agent, &log, "l", 500, Next::End);
    step(&mut agent, &log, "s", 0, Next::End);
    step(&mut agent, &log, "d", 0, Next::End)
        .depends_on("x", DependencyConfig::required().periodic(MS * 100))
        .depends_on("s", DependencyType::Sequential);
    let origin = Instant::now();
    agent.run().await.expect("completes");
    // At 500 ms nothing else runs: `s` will not run, and `x` (500 ms old) runs again first.
    assert_eq!(log.count("x"), 2);
    assert_eq!(log.count("d"), 1);
    assert_eq!(log.started("d", origin), MS * 500);
    assert_eq!(log.count("s"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_state_waiting_for_its_next_fresh_completion_owes_nothing() {
    let log = Log::default();
    let mut agent = Agent::new("repark");
    step(&mut agent, &log, "load", 0, Next::End).entry();
    step(&mut agent, &log, "other", 120_000, Next::End).entry();
    step(&mut agent, &log, "report", 0, Next::End).depends_on(
        "load",
        DependencyConfig::required()
            .always()
            .timeout(Duration::from_secs(60)),
    );
    let report = agent
        .run()
        .await
        .expect("no timeout: report is not owed a second run");
    assert_eq!(log.count("report"), 1);
    assert_eq!(
        report.state("report").unwrap().status,
        StateStatus::Completed
    );
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_waiting_state_lets_its_dependents_go_on() {
    let log = Log::default();
    let mut agent = Agent::new("cancel_wait");
    step(&mut agent, &log, "a", 0, par(&["b", "c", "slow"]));
    step(&mut agent, &log, "slow", 500, Next::End);
    step(&mut agent, &log, "b", 0, Next::End).depends_on("slow", DependencyType::Required);
    step(&mut agent, &log, "c", 0, Next::to("d"));
    step(&mut agent, &log, "d", 0, Next::End).depends_on("b", DependencyType::Optional);
    let origin = Instant::now();
    let handle = agent.start().unwrap();
    tokio::time::sleep(MS * 10).await;
    assert_eq!(handle.cancel_state("b").await.unwrap(), 1);
    handle.result().await.expect("completes");
    assert_eq!(log.started("d", origin), MS * 10);
    assert_eq!(log.count("b"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_condition_that_panics_does_not_hold() {
    let log = Log::default();
    let mut agent = Agent::new("panicky");
    step(&mut agent, &log, "a", 0, Next::to("t"));
    step(&mut agent, &log, "t", 0, Next::End).depends_on(
        "a",
        DependencyConfig::required()
            .timeout(MS * 50)
            .when(|_| panic!("a bug in the condition")),
    );
    let error = agent.run().await.unwrap_err();
    assert!(
        matches!(&error, FlowError::DependencyTimeout { state, waiting_for, .. }
            if state == "t" && waiting_for == "its condition does not hold"),
        "{error}"
    );
    assert_eq!(log.count("t"), 0);
}

#[tokio::test]
async fn dependency_options_that_would_do_nothing_are_rejected() {
    let noop = |_ctx: Context| async { Ok(Next::End) };
    let cases: Vec<(DependencyConfig, &str)> = vec![
        (
            DependencyConfig {
                interval: Some(MS),
                ..DependencyConfig::required()
            },
            "the dependency of `b` on `a` has an `interval` but is not periodic; make it periodic or drop the interval",
        ),
        (
            DependencyConfig::required().expiry(Duration::ZERO),
            "the dependency of `b` on `a` has a zero `expiry`; use a positive duration or none",
        ),
        (
            DependencyConfig::required().timeout(Duration::ZERO),
            "the dependency of `b` on `a` has a zero `timeout`; use a positive duration or none",
        ),
        (
            DependencyConfig::optional().always(),
            "the dependency of `b` on `a` is optional: it waits only while the dependency is scheduled or running, so its completions do not matter and `always`, `periodic` and `expiry` would do nothing; remove them",
        ),
        (
            DependencyConfig::parallel().timeout(MS),
            "the dependency of `b` on `a` is parallel without a condition: it never waits, so its `timeout` would never fire; remove the timeout or add a condition",
        ),
    ];
    for (config, message) in cases {
        let mut agent = Agent::new("bad");
        agent.add_state("a", noop);
        agent.add_state("b", noop).depends_on("a", config);
        assert_eq!(
            agent.validate().unwrap_err().to_string(),
            format!("invalid configuration of workflow `bad`: {message}")
        );
    }
    // A parallel dependency with a condition may wait, so a timeout is meaningful there.
    let mut agent = Agent::new("fine");
    agent.add_state("a", noop);
    agent
        .add_state("b", noop)
        .depends_on("a", DependencyConfig::parallel().timeout(MS).when(|_| true));
    agent.validate().unwrap();

    let mut agent = Agent::new("twice");
    agent.add_state("a", noop);
    agent
        .add_state("b", noop)
        .depends_on("a", DependencyType::Required)
        .depends_on("a", DependencyType::Optional);
    assert_eq!(
        agent.validate().unwrap_err().to_string(),
        "invalid configuration of workflow `twice`: state `b` depends on `a` twice; keep one dependency"
    );
}
