//! Timeouts hold against states that block their thread or never yield (on a multi-thread
//! runtime with a worker free): the run and state deadlines are kept by the coordinator, not by
//! the state's own task. Real time: a blocked thread cannot be faked on the paused clock. Four
//! workers, since an abandoned state keeps its thread until it returns (each test blocks two).

use std::time::{Duration, Instant};

use fluffy_flow::prelude::*;

const BLOCK: Duration = Duration::from_millis(1500);

fn blocker<'a>(agent: &'a mut Agent, name: &str, spin: bool) -> fluffy_flow::StateOptions<'a> {
    agent.add_state(name, move |_ctx: Context| async move {
        if spin {
            // Busy, never yielding (bounded, so that the test's runtime can shut down).
            let until = Instant::now() + BLOCK;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        } else {
            std::thread::sleep(BLOCK);
        }
        Ok(Next::End)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_timeout_holds_against_a_state_that_blocks_its_thread() {
    for spin in [false, true] {
        let mut agent = Agent::new("blocked");
        blocker(&mut agent, "stuck", spin);
        agent.timeout(Duration::from_millis(100));
        let started = Instant::now();
        let error = agent.run().await.unwrap_err();
        let took = started.elapsed();
        let FlowError::RunTimedOut { running, .. } = &error else {
            panic!("spin {spin}: {error}");
        };
        assert_eq!(running, &["stuck"], "the abandoned state is named");
        assert!(error.to_string().contains("spawn_blocking"), "{error}");
        assert!(
            took < Duration::from_millis(1000),
            "spin {spin}: returned after {took:?}"
        );
        assert_eq!(agent.state_status("stuck"), Some(StateStatus::Cancelled));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_state_timeout_holds_against_a_state_that_blocks_its_thread() {
    for spin in [false, true] {
        let mut agent = Agent::new("blocked");
        blocker(&mut agent, "stuck", spin).timeout(Duration::from_millis(100));
        let started = Instant::now();
        let error = agent.run().await.unwrap_err();
        let took = started.elapsed();
        let FlowError::StateTimedOut { state, .. } = &error else {
            panic!("spin {spin}: {error}");
        };
        assert_eq!(state, "stuck");
        assert!(
            took < Duration::from_millis(1000),
            "spin {spin}: returned after {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_state_that_holds_its_thread_is_reported() {
    let mut agent = Agent::new("blocky");
    agent
        .add_state("start", |_ctx: Context| async {
            // Polled on the coordinator (the run's only ready state): blocks there.
            std::thread::sleep(Duration::from_millis(400));
            Ok(Next::parallel(["blocks", "awaits"]))
        })
        .successors(["blocks", "awaits"]);
    agent
        .add_state("blocks", |_ctx: Context| async {
            std::thread::sleep(Duration::from_millis(400));
            Ok(Next::End)
        })
        .terminal();
    agent
        .add_state("awaits", |_ctx: Context| async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok(Next::End)
        })
        .terminal();
    agent.warn_blocking(Duration::from_millis(200));
    let report = agent.run().await.unwrap();
    let mut blocked: Vec<(String, Duration)> = report
        .warnings
        .iter()
        .filter_map(|w| match w {
            fluffy_flow::RunWarning::BlockingState {
                state, held_for, ..
            } => Some((state.to_string(), *held_for)),
            _ => None,
        })
        .collect();
    blocked.sort();
    let names: Vec<&str> = blocked.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(names, ["blocks", "start"], "{:?}", report.warnings);
    assert!(
        blocked
            .iter()
            .all(|(_, held)| *held >= Duration::from_millis(400))
    );
    assert!(report.warnings[0].to_string().contains("spawn_blocking"));
}
