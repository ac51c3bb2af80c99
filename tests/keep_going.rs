//! Keep-going mode (`BranchFailure::Continue`): a failed branch ends, the others go on, and
//! the run ends `CompletedWithFailures` listing each failure; fail-fast stays the default.

use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{BranchFailure, DependencyConfig, FailureOutcome};

const MS: Duration = Duration::from_millis(1);

/// `start → [a, b, c]`; `b` fails; each branch goes on to its own end state.
fn fanout() -> Agent {
    let mut agent = Agent::new("fanout");
    agent
        .add_state("start", |_ctx: Context| async {
            Ok(Next::parallel(["a", "b", "c"]))
        })
        .successors(["a", "b", "c"]);
    for (name, delay) in [("a", 30), ("b", 10), ("c", 20)] {
        agent
            .add_state(name, move |ctx: Context| async move {
                tokio::time::sleep(MS * delay).await;
                if name == "b" {
                    return Err(format!("{name} broke").into());
                }
                ctx.set_state(name, true);
                Ok(Next::to(format!("{name}_done")))
            })
            .successors([format!("{name}_done")]);
        agent.add_state(format!("{name}_done"), move |ctx: Context| async move {
            ctx.set_state(format!("{name}_done"), true);
            Ok(Next::End)
        });
    }
    agent
}

#[tokio::test(start_paused = true)]
async fn by_default_a_failure_fails_the_run_and_stops_the_rest() {
    let report = fanout().start().unwrap().wait().await;
    assert_eq!(report.status, AgentStatus::Failed);
    assert!(!report.context.has_state("a_done"));
    assert_eq!(report.failed_branches().count(), 0);
    assert_eq!(report.dead_letters[0].outcome, FailureOutcome::FailedRun);
}

#[tokio::test(start_paused = true)]
async fn continue_ends_the_failed_branch_and_the_others_finish() {
    let mut agent = fanout();
    agent.on_branch_failure(BranchFailure::Continue);
    let report = agent.run().await.expect("the run goes on past the failure");
    assert_eq!(report.status, AgentStatus::CompletedWithFailures);
    assert!(!report.is_success());
    for done in ["a_done", "c_done"] {
        assert!(report.context.get_state::<bool>(done).unwrap(), "{done}");
    }
    assert!(!report.context.has_state("b_done"));
    assert_eq!(report.state("b_done").unwrap().runs, 0);
    let failed: Vec<(&str, &str)> = report
        .failed_branches()
        .map(|l| (l.state.as_str(), l.error.as_str()))
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, "b");
    assert!(failed[0].1.contains("b broke"), "{}", failed[0].1);
}

#[tokio::test(start_paused = true)]
async fn a_join_waits_for_the_branches_that_are_left_and_dependents_learn_of_the_failure() {
    // `start → [a, b] → merge`, b fails: merge runs once, after a; `report` requires b.
    let mut agent = Agent::new("join");
    agent.on_branch_failure(BranchFailure::Continue);
    agent
        .add_state("start", |_ctx: Context| async {
            Ok(Next::parallel(["a", "b"]))
        })
        .successors(["a", "b"]);
    agent
        .add_state("a", |_ctx: Context| async {
            tokio::time::sleep(MS * 20).await;
            Ok(Next::to("merge"))
        })
        .successors(["merge"]);
    agent
        .add_state("b", |_ctx: Context| async {
            tokio::time::sleep(MS * 5).await;
            Err("b failed".into())
        })
        .successors(["merge"]);
    agent.add_state("merge", |ctx: Context| async move {
        ctx.set_state("merged", true);
        Ok(Next::End)
    });
    agent
        .add_state("report", |_ctx: Context| async { Ok(Next::End) })
        .depends_on("b", DependencyConfig::required());
    let report = agent.run().await.unwrap();
    assert_eq!(report.status, AgentStatus::CompletedWithFailures);
    assert_eq!(report.state("merge").unwrap().runs, 1);
    assert!(report.context.get_state::<bool>("merged").unwrap());
    let failed: Vec<&str> = report.failed_branches().map(|l| l.state.as_str()).collect();
    assert_eq!(failed, ["b", "report"], "the dependent failed in turn");
}

#[tokio::test(start_paused = true)]
async fn a_handled_failure_is_not_a_failed_branch() {
    let mut agent = fanout();
    agent.on_branch_failure(BranchFailure::Continue);
    agent.add_state("recover", |ctx: Context| async move {
        ctx.set_state("recovered", ctx.failure().unwrap().state);
        Ok(Next::End)
    });
    agent.default_on_error("recover");
    let report = agent.run().await.unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!(report.failed_branches().count(), 0);
    assert_eq!(
        report.dead_letters[0].outcome,
        FailureOutcome::Handled {
            by: "recover".into()
        }
    );
    assert_eq!(
        report.context.get_state::<String>("recovered").unwrap(),
        "b"
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_restored_after_a_branch_failed_still_ends_with_failures() {
    use fluffy_flow::{CheckpointPolicy, CheckpointStore, MemoryStore};
    let store = MemoryStore::new();
    let mut agent = fanout();
    agent.on_branch_failure(BranchFailure::Continue);
    agent.checkpoints(
        store.clone(),
        CheckpointPolicy {
            keep: 0,
            ..CheckpointPolicy::after_each_state()
        },
    );
    let report = agent.run().await.unwrap();
    assert_eq!(report.status, AgentStatus::CompletedWithFailures);
    // The first checkpoint after b failed (at 10 ms): c and a still running.
    let run = report.run_key.to_string();
    let after_failure = store
        .sequences("fanout", &run)
        .unwrap()
        .into_iter()
        .map(|s| store.load("fanout", &run, s).unwrap().unwrap())
        .find(|c| !c.dead_letters.is_empty() && c.status != AgentStatus::CompletedWithFailures)
        .expect("a checkpoint between the failure and the end");
    let mut again = fanout();
    again.on_branch_failure(BranchFailure::Continue);
    let restored = again
        .restore_from_checkpoint(after_failure)
        .unwrap()
        .wait()
        .await;
    assert_eq!(restored.status, AgentStatus::CompletedWithFailures);
    assert_eq!(restored.failed_branches().count(), 1);
}
