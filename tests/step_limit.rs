//! The step limit: a run that would take more state runs than `max_steps` fails with
//! `FlowError::StepLimit`, naming the state; retries do not count; what was due is reported
//! cancelled; the macro form; the default.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{DEFAULT_MAX_STEPS, RetryPolicy, StateStatus};

fn endless(name: &str) -> Agent {
    let mut agent = Agent::new(name);
    agent
        .add_state("think", |_ctx: Context| async { Ok(Next::to("think")) })
        .successors(["think"]);
    agent
}

#[tokio::test]
async fn a_loop_that_never_ends_fails_at_the_limit_naming_its_state() {
    let mut agent = endless("agent_loop");
    agent.max_steps(50);
    let report = agent.start().unwrap().wait().await;
    match &report.error {
        Some(FlowError::StepLimit {
            agent,
            limit,
            state,
        }) => assert_eq!(
            (agent.as_str(), *limit, state.as_str()),
            ("agent_loop", 50, "think")
        ),
        other => panic!("expected a step limit, got {other:?}"),
    }
    assert_eq!(report.status, AgentStatus::Failed);
    assert_eq!(report.state("think").unwrap().runs, 50);
    let message = report.error.unwrap().to_string();
    assert!(
        message.contains("step limit of 50") && message.contains("max_steps"),
        "{message}"
    );
}

#[tokio::test]
async fn the_default_limit_stops_a_runaway_loop() {
    assert_eq!(DEFAULT_MAX_STEPS, 100_000);
    let report = endless("runaway").start().unwrap().wait().await;
    assert!(matches!(
        report.error,
        Some(FlowError::StepLimit { limit: 100_000, .. })
    ));
    assert_eq!(report.state("think").unwrap().runs, 100_000);
}

#[tokio::test(start_paused = true)]
async fn retries_are_not_steps() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let mut agent = Agent::new("flaky");
    agent
        .add_state("fetch", move |_ctx: Context| {
            let calls = Arc::clone(&c);
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Err("not yet".into());
                }
                Ok(Next::to("store"))
            }
        })
        .successors(["store"])
        .retry(RetryPolicy {
            max_retries: 2,
            initial_delay: Duration::from_millis(1),
            ..RetryPolicy::DEFAULT
        });
    agent.add_state("store", |_ctx: Context| async { Ok(Next::End) });
    agent.max_steps(2);
    let report = agent.run().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(report.state("fetch").unwrap().attempts, 3);
    assert_eq!(report.state("store").unwrap().runs, 1);
}

#[tokio::test(start_paused = true)]
async fn branches_past_the_limit_are_reported_cancelled_not_lost() {
    let mut agent = Agent::new("fan");
    agent
        .add_state("start", |_ctx: Context| async {
            Ok(Next::parallel(["a", "b", "c"]))
        })
        .successors(["a", "b", "c"]);
    for name in ["a", "b", "c"] {
        agent.add_state(name, |_ctx: Context| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(Next::End)
        });
    }
    agent.max_steps(3);
    let report = agent.start().unwrap().wait().await;
    assert!(
        matches!(&report.error, Some(FlowError::StepLimit { limit: 3, state, .. }) if state == "c"),
        "{:?}",
        report.error
    );
    // `a` and `b` had started: stopped with the run; `c` never ran.
    for (name, runs) in [("start", 1), ("a", 1), ("b", 1), ("c", 0)] {
        let state = report.state(name).unwrap();
        assert_eq!(state.runs, runs, "{name}");
        if name != "start" {
            assert_eq!(state.status, StateStatus::Cancelled, "{name}");
        }
    }
}

struct Planner;

#[workflow(max_steps = 5)]
impl Planner {
    #[state(entry)]
    async fn plan(&self, _ctx: &Context) -> StateResult {
        next!(plan)
    }
}

#[tokio::test]
async fn the_macro_form_sets_the_limit() {
    let report = Planner.agent().start().unwrap().wait().await;
    assert!(matches!(
        report.error,
        Some(FlowError::StepLimit { limit: 5, .. })
    ));
    assert_eq!(report.state("plan").unwrap().runs, 5);
}

#[test]
fn a_limit_of_zero_is_refused() {
    let mut agent = endless("none");
    agent.max_steps(0);
    let error = agent.validate().unwrap_err();
    assert!(error.to_string().contains("`max_steps` is 0"), "{error}");
}
