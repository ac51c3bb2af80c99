//! The builder: error types a user would write, per-state options, validation errors.

use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{BoxError, StateError};

#[derive(Debug, thiserror::Error)]
enum PaymentError {
    #[error("card {0} was declined")]
    Declined(u32),
}

async fn failing_run(agent: &Agent) -> FlowError {
    agent.run().await.expect_err("the run fails")
}

fn cause_of(error: &FlowError) -> &StateError {
    match error {
        FlowError::StateFailed { cause, .. } => cause,
        other => panic!("expected StateFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn states_may_use_any_error_type() {
    let mut agent = Agent::new("errors");
    agent.add_state_with_error("thiserror", |_ctx: Context| async {
        Err::<Next, _>(PaymentError::Declined(42))
    });
    let error = failing_run(&agent).await;
    assert_eq!(
        error.to_string(),
        "state `thiserror` failed after 1 attempt(s): card 42 was declined"
    );
    assert!(matches!(
        cause_of(&error).downcast_ref::<PaymentError>(),
        Some(PaymentError::Declined(42))
    ));

    let mut agent = Agent::new("errors");
    agent.add_state_with_error("anyhow", |_ctx: Context| async {
        let inner = anyhow::anyhow!("disk full");
        Err::<Next, _>(inner.context("could not write the report"))
    });
    let error = failing_run(&agent).await;
    assert_eq!(
        cause_of(&error).message(),
        "could not write the report: disk full"
    );

    let mut agent = Agent::new("errors");
    agent.add_state("boxed", |_ctx: Context| async {
        let error: BoxError = "plain message".into();
        Err::<Next, _>(error)
    });
    assert_eq!(
        cause_of(&failing_run(&agent).await).message(),
        "plain message"
    );

    let mut agent = Agent::new("errors");
    agent.add_state("flow", |ctx: Context| async move {
        let value: u32 = ctx.get_state("absent")?;
        Ok(Next::to(format!("s{value}")))
    });
    let error = failing_run(&agent).await;
    assert!(
        cause_of(&error)
            .message()
            .contains("the context has no key `absent`"),
        "{error}"
    );

    async fn named(_ctx: Context) -> StateResult {
        Ok(Next::End)
    }
    let mut agent = Agent::new("fn item");
    agent.add_state("named", named);
    assert!(agent.run().await.is_ok());
}

#[tokio::test]
async fn validation_names_the_states_involved() {
    let mut agent = Agent::new("dup");
    agent.add_state("a", |_ctx: Context| async { Ok(Next::End) });
    agent.add_state("a", |_ctx: Context| async { Ok(Next::End) });
    assert_eq!(
        agent.run().await.unwrap_err(),
        FlowError::DuplicateState {
            agent: "dup".into(),
            state: "a".into()
        }
    );

    let mut agent = Agent::new("entry");
    agent.add_state("start", |_ctx: Context| async { Ok(Next::End) });
    agent.set_entry("strat");
    let error = agent.run().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "workflow `entry` names `strat` as its entry state, but has no state of that name (did you mean `start`?)"
    );

    let agent = Agent::new("empty");
    assert_eq!(
        agent.run().await.unwrap_err(),
        FlowError::NoStates {
            agent: "empty".into()
        }
    );

    let mut agent = Agent::new("successor");
    agent
        .add_state("a", |_ctx: Context| async { Ok(Next::End) })
        .successors(["b", "c"]);
    agent.add_state("b", |_ctx: Context| async { Ok(Next::End) });
    let error = agent.validate().unwrap_err();
    assert!(
        matches!(&error, FlowError::UnknownSuccessor { state, target, .. } if state == "a" && target == "c")
    );

    let mut agent = Agent::new("zero");
    agent.add_state("a", |_ctx: Context| async { Ok(Next::End) });
    agent.max_concurrent(0);
    assert!(
        matches!(agent.validate().unwrap_err(), FlowError::InvalidConfig { message, .. } if message.contains("max_concurrent"))
    );
}

#[tokio::test]
async fn a_transition_to_an_unknown_state_fails_the_run_with_both_names() {
    let mut agent = Agent::new("typo");
    agent.add_state("load", |_ctx: Context| async { Ok(Next::to("proces")) });
    agent.add_state("process", |_ctx: Context| async { Ok(Next::End) });
    let report = agent.start().unwrap().wait().await;
    assert_eq!(report.status, AgentStatus::Failed);
    assert_eq!(
        report.error,
        Some(FlowError::UnknownTransition {
            agent: "typo".into(),
            from: "load".into(),
            to: "proces".into(),
            suggestion: Some("process".into()),
        })
    );
    assert_eq!(report.state("process").unwrap().runs, 0);

    let mut agent = Agent::new("declared");
    agent
        .add_state("a", |_ctx: Context| async {
            Ok(Next::parallel(["b", "c"]))
        })
        .successors(["b"]);
    agent.add_state("b", |_ctx: Context| async { Ok(Next::End) });
    agent.add_state("c", |_ctx: Context| async { Ok(Next::End) });
    let error = agent.run().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "state `a` of workflow `declared` returned a transition to `c`, which is not among its declared successors [b]; declare it with `successors(...)` or return one of those"
    );
}

#[tokio::test(start_paused = true)]
async fn priority_orders_ready_states_when_slots_are_short() {
    let mut agent = Agent::new("priorities");
    agent.max_concurrent(1);
    agent.add_state("start", |_ctx: Context| async {
        Ok(Next::parallel(["low", "normal", "critical", "high"]))
    });
    for (name, priority) in [
        ("low", Priority::Low),
        ("normal", Priority::Normal),
        ("critical", Priority::Critical),
        ("high", Priority::High),
    ] {
        agent
            .add_state(name, move |ctx: Context| async move {
                ctx.update_typed::<Vec<String>, _>("order", |order| order.push(name.to_owned()))?;
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok(Next::End)
            })
            .priority(priority);
    }
    let context = Context::new();
    context.set_state("order", Vec::<String>::new());
    let report = agent.run_with(context).await.unwrap();
    assert_eq!(
        report.context.get_state::<Vec<String>>("order").unwrap(),
        ["critical", "high", "normal", "low"]
    );
    assert_eq!(report.max_concurrency, 1);
}

#[tokio::test(start_paused = true)]
async fn a_state_timeout_fails_the_run_with_status_timeout() {
    let mut agent = Agent::new("slow");
    agent
        .add_state("fetch", |_ctx: Context| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(Next::End)
        })
        .timeout(Duration::from_millis(250));
    let started = tokio::time::Instant::now();
    let report = agent.start().unwrap().wait().await;
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    assert_eq!(
        report.error,
        Some(FlowError::StateTimedOut {
            state: "fetch".into(),
            attempts: 1,
            timeout: Duration::from_millis(250)
        })
    );
    assert_eq!(report.state("fetch").unwrap().status, StateStatus::Timeout);
}

#[tokio::test]
async fn states_can_be_added_in_a_loop() {
    let mut agent = Agent::new("dynamic");
    let chunks: usize = 50;
    agent.add_state("split", move |_ctx: Context| async move {
        Ok(Next::parallel((0..chunks).map(|i| format!("chunk_{i}"))))
    });
    for i in 0..chunks {
        agent.add_state(format!("chunk_{i}"), move |ctx: Context| async move {
            ctx.set_state(format!("result_{i}"), i * i);
            Ok(Next::to("merge"))
        });
    }
    agent.add_state("merge", move |ctx: Context| async move {
        let total: usize = (0..chunks)
            .map(|i| ctx.get_state::<usize>(&format!("result_{i}")))
            .sum::<Result<_, _>>()?;
        ctx.set_state("total", total);
        Ok(Next::End)
    });
    let report = agent.run().await.unwrap();
    assert_eq!(
        report.context.get_state::<usize>("total").unwrap(),
        (0..50).map(|i| i * i).sum::<usize>()
    );
    assert_eq!(report.state("merge").unwrap().runs, 1);
    assert_eq!(report.transitions, 52);
}

#[tokio::test]
async fn states_share_a_service_without_cloning_it_by_hand() {
    struct Service {
        calls: std::sync::atomic::AtomicU32,
    }
    let service = std::sync::Arc::new(Service {
        calls: std::sync::atomic::AtomicU32::new(0),
    });
    let mut agent = Agent::new("shared");
    for (name, next) in [("first", Next::to("second")), ("second", Next::End)] {
        agent.add_state_with(
            name,
            std::sync::Arc::clone(&service),
            move |service, _ctx| {
                let next = next.clone();
                async move {
                    service
                        .calls
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok(next)
                }
            },
        );
    }
    agent.run().await.unwrap();
    agent.run().await.unwrap();
    assert_eq!(service.calls.load(std::sync::atomic::Ordering::SeqCst), 4);
}
