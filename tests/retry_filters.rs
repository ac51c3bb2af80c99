//! Choosing which failures retry: `retry_if` on the state's error (typed, by downcast), and
//! the policy's `on` by failure class (builder and macro). A failure not retried is final at
//! once: one attempt, a dead letter, the run's error.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{BoxError, FailureKind, RetryOn, RetryPolicy};

#[derive(Debug, thiserror::Error)]
#[error("HTTP {0}")]
struct Http(u16);

fn quick(max_retries: u32, on: RetryOn) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        initial_delay: Duration::from_millis(1),
        on,
        ..RetryPolicy::DEFAULT
    }
}

/// A workflow whose only state fails with each of `statuses` in turn, then succeeds.
fn http_agent(statuses: &'static [u16], calls: &Arc<AtomicU32>) -> Agent {
    let mut agent = Agent::new("http");
    let calls = Arc::clone(calls);
    agent
        .add_state("call", move |_ctx: Context| {
            let calls = Arc::clone(&calls);
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) as usize;
                match statuses.get(n) {
                    Some(&status) => Err(Http(status).into()),
                    None => Ok(Next::End),
                }
            }
        })
        .retry(quick(3, RetryOn::ALL))
        .retry_if(|error| {
            error
                .downcast_ref::<Http>()
                .is_some_and(|Http(s)| *s >= 500)
        });
    agent
}

#[tokio::test(start_paused = true)]
async fn retry_if_retries_what_it_accepts() {
    let calls = Arc::new(AtomicU32::new(0));
    let report = http_agent(&[503, 502], &calls).run().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(report.state("call").unwrap().attempts, 3);
}

#[tokio::test(start_paused = true)]
async fn retry_if_makes_what_it_refuses_final_at_once() {
    let calls = Arc::new(AtomicU32::new(0));
    let agent = http_agent(&[503, 400, 503], &calls);
    let error = agent.run().await.unwrap_err();
    // 503 retried, 400 final: two attempts of the three retries allowed.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(
        matches!(&error, FlowError::StateFailed { attempts: 2, .. }),
        "{error}"
    );
    let letters = agent.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].attempts, letters[0].kind),
        (2, FailureKind::Error)
    );
}

#[tokio::test(start_paused = true)]
async fn a_predicate_that_panics_refuses_and_the_run_fails_cleanly() {
    let mut agent = Agent::new("fragile");
    agent
        .add_state("only", |_ctx: Context| async { Err("boom".into()) })
        .retry(quick(3, RetryOn::ALL))
        .retry_if(|_| panic!("a bug in the predicate"));
    let error = agent.run().await.unwrap_err();
    assert!(
        matches!(error, FlowError::StateFailed { attempts: 1, .. }),
        "{error}"
    );
}

/// A state that times out on its first `slow` attempts (each sleeps past its 10 ms timeout),
/// then errors once if `then_error`, then succeeds.
fn flaky(on: RetryOn, slow: u32, then_error: bool, calls: &Arc<AtomicU32>) -> Agent {
    let mut agent = Agent::new("flaky");
    let calls = Arc::clone(calls);
    agent
        .add_state("work", move |_ctx: Context| {
            let calls = Arc::clone(&calls);
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < slow {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                } else if then_error && n == slow {
                    return Err("bad input".into());
                }
                Ok::<_, BoxError>(Next::End)
            }
        })
        .timeout(Duration::from_millis(10))
        .retry(quick(3, on));
    agent
}

#[tokio::test(start_paused = true)]
async fn a_policy_on_timeouts_only_retries_timeouts_not_errors() {
    let calls = Arc::new(AtomicU32::new(0));
    let report = flaky(RetryOn::TIMEOUT, 2, false, &calls)
        .run()
        .await
        .unwrap();
    assert_eq!(
        (
            calls.load(Ordering::SeqCst),
            report.state("work").unwrap().attempts
        ),
        (3, 3)
    );

    let calls = Arc::new(AtomicU32::new(0));
    let error = flaky(RetryOn::TIMEOUT, 1, true, &calls)
        .run()
        .await
        .unwrap_err();
    // The timeout was retried, the error that followed was not.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(
        matches!(error, FlowError::StateFailed { attempts: 2, .. }),
        "{error}"
    );

    let calls = Arc::new(AtomicU32::new(0));
    let error = flaky(RetryOn::ERROR, 1, false, &calls)
        .run()
        .await
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(matches!(error, FlowError::StateTimedOut { .. }), "{error}");
}

struct Crawl {
    calls: AtomicU32,
}

#[workflow]
impl Crawl {
    #[state(entry, timeout = "10ms", retry(max = 3, initial_delay = "1ms", on = [timeout]))]
    async fn fetch(&self, _ctx: &Context) -> StateResult {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if n == 1 {
            return Err("robots.txt says no".into());
        }
        end!()
    }
}

#[tokio::test(start_paused = true)]
async fn the_macro_names_the_failures_to_retry() {
    assert_eq!(
        Crawl::GRAPH.state("fetch").unwrap().retry.unwrap().on,
        RetryOn::TIMEOUT
    );
    let crawl = Arc::new(Crawl {
        calls: AtomicU32::new(0),
    });
    let error = Crawl::agent_shared(Arc::clone(&crawl))
        .run()
        .await
        .unwrap_err();
    assert_eq!(crawl.calls.load(Ordering::SeqCst), 2);
    assert!(
        matches!(error, FlowError::StateFailed { attempts: 2, .. }),
        "{error}"
    );
}

#[test]
fn retry_on_sets_combine_and_name_their_classes() {
    assert_eq!(RetryPolicy::DEFAULT.on, RetryOn::ALL);
    let set = RetryOn::TIMEOUT | RetryOn::ERROR;
    assert!(set.contains(RetryOn::TIMEOUT) && set.contains(RetryOn::ERROR));
    assert!(!set.contains(RetryOn::PANIC) && !set.contains(RetryOn::REFUSED));
    assert_eq!(RetryOn::named("refused"), Some(RetryOn::REFUSED));
    assert_eq!(RetryOn::named("retries"), None);
    assert_eq!(
        RetryOn::ERROR | RetryOn::PANIC | RetryOn::TIMEOUT | RetryOn::REFUSED,
        RetryOn::ALL
    );
}
