//! Remote states (`#[state(remote)]`, `StateOptions::remote`) through `LocalDispatch`: the
//! attempt goes out as a call through JSON and comes back as a reply, and the run ends as
//! it does when the state runs in place — writes, reducers, map items, retries, panics and
//! timeouts alike. (Random graphs with remote states are checked against the reference
//! model in `join_model`; workers taking calls through PostgreSQL in `postgres_workers`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::remote::{LocalDispatch, RemoteError};
use fluffy_flow::{FlowError, RetryPolicy, RunReport};

/// A map of 12 items to a remote `score` state that reads its item and a shared factor,
/// contributes to an append reducer, adds to a sum, and writes a key of its own; `total`
/// joins them. Item `i` takes `(12 - i)` ms, so branches finish in reverse fork order.
fn scoring() -> Agent {
    let mut agent = Agent::new("scoring");
    agent.reducer("scores", Reducer::append::<u64>());
    agent.reducer("sum", Reducer::sum::<u64>());
    agent
        .add_state("plan", |ctx: Context| async move {
            ctx.set_state("factor", 3u64);
            Ok(Next::map("score", (0..12u64).collect::<Vec<_>>()))
        })
        .entry();
    agent
        .add_state("score", |ctx: Context| async move {
            let item: u64 = ctx.input()?;
            let factor: u64 = ctx.get_state("factor")?;
            tokio::time::sleep(Duration::from_millis(12 - item)).await;
            ctx.set_state("scores", item * factor);
            ctx.set_state("sum", item);
            // A plain key on a map branch: the branch's own until the join.
            ctx.set_state("last", item);
            // Reads see the attempt's own writes, as in place.
            let mine: Vec<u64> = ctx.get_state("scores")?;
            assert_eq!(mine, [item * factor]);
            Ok(Next::to("total"))
        })
        .remote();
    agent.add_state("total", |ctx: Context| async move {
        let scores: Vec<u64> = ctx.get_state("scores")?;
        ctx.set_state("total", scores.iter().sum::<u64>());
        Ok(Next::end())
    });
    agent
}

fn on_paused_clock<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(future)
}

fn values(report: &RunReport) -> serde_json::Map<String, serde_json::Value> {
    report.context.snapshot().unwrap()
}

#[test]
fn a_dispatched_map_ends_with_the_context_of_a_run_in_place() {
    let agent = scoring();
    let in_place = on_paused_clock(agent.run()).unwrap();
    let dispatch = LocalDispatch::new(&agent);
    let dispatched = on_paused_clock(agent.dispatching(dispatch.clone()).run()).unwrap();
    assert_eq!(in_place.status, AgentStatus::Completed);
    assert_eq!(dispatched.status, AgentStatus::Completed);
    assert_eq!(dispatch.calls(), 12, "one call per item");
    assert_eq!(values(&dispatched), values(&in_place));
    // Contributions in fork order, whatever order the branches finished in.
    let scores: Vec<u64> = dispatched.context.get_state("scores").unwrap();
    assert_eq!(scores, (0..12).map(|i| i * 3).collect::<Vec<u64>>());
    assert_eq!(dispatched.context.get_state::<u64>("sum").unwrap(), 66);
    assert_eq!(dispatched.context.get_state::<u64>("total").unwrap(), 198);
    assert_eq!(dispatched.states[1].runs, 12);
}

#[derive(Debug, thiserror::Error)]
#[error("service answered {0}")]
struct Status(u16);

/// A remote state failing with typed errors: 503 twice, then 400. `retry_if` sees the typed
/// error where the state ran, so the run retries exactly as in place.
fn flaky(calls: Arc<AtomicU32>) -> Agent {
    let mut agent = Agent::new("flaky");
    agent
        .add_state_with_error("call", move |ctx: Context| {
            let calls = Arc::clone(&calls);
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                ctx.set_state("tried", n);
                if n < 2 {
                    return Err(Status(503));
                }
                Err(Status(400))
            }
        })
        .remote()
        .retry(RetryPolicy {
            max_retries: 5,
            initial_delay: Duration::from_millis(10),
            ..RetryPolicy::DEFAULT
        })
        .retry_if(|error| error.downcast_ref::<Status>().is_some_and(|s| s.0 >= 500));
    agent
}

#[test]
fn retry_if_decides_on_the_typed_error_where_the_state_ran() {
    let local = Arc::new(AtomicU32::new(0));
    let in_place = on_paused_clock(flaky(Arc::clone(&local)).run()).unwrap_err();
    let remote = Arc::new(AtomicU32::new(0));
    let agent = flaky(Arc::clone(&remote));
    let dispatched =
        on_paused_clock(agent.dispatching(LocalDispatch::new(&agent)).run()).unwrap_err();
    assert_eq!(
        local.load(Ordering::SeqCst),
        3,
        "503, 503, then 400 is final"
    );
    assert_eq!(remote.load(Ordering::SeqCst), 3);
    let FlowError::StateFailed { attempts, .. } = &dispatched else {
        panic!("{dispatched:?}");
    };
    assert_eq!(*attempts, 3);
    assert_eq!(dispatched.to_string(), in_place.to_string());
    assert!(
        dispatched.to_string().contains("service answered 400"),
        "{dispatched}"
    );
}

#[test]
fn a_remote_panic_is_a_panic_of_the_run() {
    let mut agent = Agent::new("panics");
    agent
        .add_state("boom", |_ctx: Context| async move {
            if true {
                panic!("remote boom");
            }
            Ok(Next::end())
        })
        .remote();
    let in_place = on_paused_clock(agent.run()).unwrap_err();
    let dispatched =
        on_paused_clock(agent.dispatching(LocalDispatch::new(&agent)).run()).unwrap_err();
    assert!(
        matches!(&dispatched, FlowError::StatePanicked { message, .. } if message == "remote boom"),
        "{dispatched:?}"
    );
    assert_eq!(dispatched.to_string(), in_place.to_string());
}

#[test]
fn a_remote_state_cannot_ask_for_input_and_says_why() {
    let mut agent = Agent::new("asks");
    agent
        .add_state("ask", |ctx: Context| async move {
            let _answer = ctx.human_input("approve?").await?;
            Ok(Next::end())
        })
        .remote();
    let error = on_paused_clock(agent.dispatching(LocalDispatch::new(&agent)).run())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("state `ask` runs on another worker") && error.contains("human input"),
        "{error}"
    );
}

/// Sets its flag when dropped (the remote attempt was stopped).
struct Dropped(Arc<AtomicU32>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_timed_out_remote_attempt_is_withdrawn() {
    let (started, stopped) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let mut agent = Agent::new("slow");
    let (started_, stopped_) = (Arc::clone(&started), Arc::clone(&stopped));
    agent
        .add_state("slow", move |_ctx: Context| {
            let (started, stopped) = (Arc::clone(&started_), Arc::clone(&stopped_));
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                let _guard = Dropped(stopped);
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Next::end())
            }
        })
        .remote()
        .timeout(Duration::from_secs(5));
    let error = on_paused_clock(async {
        let report = agent.dispatching(LocalDispatch::new(&agent)).run().await;
        // (The aborted task is dropped at its next poll.)
        tokio::task::yield_now().await;
        report
    })
    .unwrap_err();
    assert!(
        matches!(error, FlowError::StateTimedOut { .. }),
        "{error:?}"
    );
    assert_eq!(started.load(Ordering::SeqCst), 1);
    assert_eq!(
        stopped.load(Ordering::SeqCst),
        1,
        "the remote attempt was stopped"
    );
}

struct Pipeline;

#[workflow(name = "pipeline")]
impl Pipeline {
    #[state(entry)]
    async fn start(&self, ctx: &Context) -> StateResult {
        ctx.set_state("n", 1u64);
        next!(work)
    }

    /// Loops three times on a remote state.
    #[state(remote, retry(max = 2))]
    async fn work(&self, ctx: &Context) -> StateResult {
        let n: u64 = ctx.get_state("n")?;
        ctx.set_state("n", n * 10);
        ctx.update_typed::<u64, _>("n", |n| *n += ctx.visit().unwrap_or(0) as u64)?;
        if ctx.visit() == Some(3) {
            next!(finish)
        } else {
            next!(work)
        }
    }

    #[state]
    async fn finish(&self, ctx: &Context) -> StateResult {
        ctx.remove_state("unused");
        end!()
    }
}

#[test]
fn a_macro_workflow_loops_on_a_remote_state() {
    assert!(Pipeline::GRAPH.states[1].remote);
    assert!(!Pipeline::GRAPH.states[0].remote);
    let agent = Pipeline.agent();
    assert!(agent.has_remote_states());
    let dispatch = LocalDispatch::new(&agent);
    let report = on_paused_clock(agent.dispatching(dispatch.clone()).run()).unwrap();
    assert_eq!(report.status, AgentStatus::Completed, "{:?}", report.error);
    assert_eq!(dispatch.calls(), 3);
    // ((1·10 + 1)·10 + 2)·10 + 3
    assert_eq!(report.context.get_state::<u64>("n").unwrap(), 1123);
}

#[test]
fn a_call_for_a_state_that_is_not_remote_is_refused() {
    let agent = Pipeline.agent();
    let call = fluffy_flow::remote::RemoteCall {
        workflow: "pipeline".into(),
        run_key: "r".into(),
        state: "finish".into(),
        attempt: 1,
        visit: 1,
        context: serde_json::Map::new(),
        input: None,
    };
    let error = on_paused_clock(agent.execute_remote(call.clone())).unwrap_err();
    assert!(matches!(error, FlowError::RemoteState { .. }), "{error}");
    let unknown = fluffy_flow::remote::RemoteCall {
        state: "wrok".into(),
        ..call
    };
    let error = on_paused_clock(agent.execute_remote(unknown)).unwrap_err();
    assert!(
        error.to_string().contains("`work`"),
        "suggests the close name: {error}"
    );
}

#[test]
fn a_remote_subgraph_state_is_refused_when_validated() {
    let mut child = Agent::new("child");
    child.add_state("leaf", |_ctx: Context| async move { Ok(Next::end()) });
    let mut parent = Agent::new("parent");
    parent
        .add_subgraph("sub", &child, fluffy_flow::SubgraphMapping::new())
        .remote();
    let error = parent.validate().unwrap_err().to_string();
    assert!(
        error.contains("state `sub` runs on another worker"),
        "{error}"
    );
}

#[test]
fn remote_errors_show_their_message() {
    let error = RemoteError {
        message: "m".into(),
        retryable: false,
    };
    assert_eq!(error.to_string(), "m");
}
