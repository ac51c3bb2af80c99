//! Failure handling: retries (counts, delays, jitter), timeouts, on_error handlers, dead
//! letters, and run control (pause, resume, cancel_state, cancel_all, cleanup).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{FailureKind, Jitter, RetryPolicy};
use tokio::time::{Instant, sleep};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn policy(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        initial_delay: ms(100),
        max_delay: ms(1000),
        exponential_base: 2.0,
        jitter: Jitter::None,
        ..RetryPolicy::DEFAULT
    }
}

/// A state that fails its first `failures` attempts, recording when each attempt started.
fn flaky(
    agent: &mut Agent,
    failures: u32,
    retry: RetryPolicy,
) -> (Arc<AtomicU32>, Arc<Mutex<Vec<Instant>>>) {
    let calls = Arc::new(AtomicU32::new(0));
    let starts = Arc::new(Mutex::new(Vec::new()));
    let (c, st) = (Arc::clone(&calls), Arc::clone(&starts));
    agent
        .add_state("call_api", move |ctx: Context| {
            let (calls, starts) = (Arc::clone(&c), Arc::clone(&st));
            async move {
                starts.lock().unwrap().push(Instant::now());
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n <= failures {
                    return Err(std::io::Error::other(format!("attempt {n} refused")).into());
                }
                ctx.set_state("answer", n);
                Ok(Next::End)
            }
        })
        .retry(retry);
    (calls, starts)
}

#[tokio::test(start_paused = true)]
async fn an_always_failing_state_runs_exactly_one_plus_max_retries_times() {
    for max_retries in [0, 1, 3] {
        let mut agent = Agent::new("always failing");
        let (calls, _) = flaky(&mut agent, u32::MAX, policy(max_retries));
        let report = agent.start().unwrap().wait().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1 + max_retries);
        assert_eq!(report.status, AgentStatus::Failed);
        let attempts = 1 + max_retries;
        assert_eq!(
            report.error.as_ref().unwrap().to_string(),
            format!(
                "state `call_api` failed after {attempts} attempt(s): attempt {attempts} refused"
            )
        );
        let record = report.state("call_api").unwrap();
        assert_eq!(
            (record.runs, record.attempts, record.status),
            (1, attempts, StateStatus::Failed)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn delays_grow_exponentially_up_to_the_cap() {
    let mut agent = Agent::new("backoff");
    let retry = RetryPolicy {
        max_retries: 5,
        max_delay: ms(500),
        ..policy(0)
    };
    let (calls, starts) = flaky(&mut agent, 5, retry);
    let report = agent.run().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    assert_eq!(report.context.get_state::<u32>("answer").unwrap(), 6);
    let starts = starts.lock().unwrap();
    let gaps: Vec<u128> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(gaps, [100, 200, 400, 500, 500]);
    assert_eq!(report.state("call_api").unwrap().attempts, 6);
}

#[tokio::test(start_paused = true)]
async fn jittered_delays_stay_within_their_bounds() {
    for (jitter, low, high) in [(Jitter::Full, 0, 400), (Jitter::Bounded(0.25), 300, 400)] {
        let mut agent = Agent::new("jitter");
        let retry = RetryPolicy {
            max_retries: 3,
            jitter,
            ..policy(0)
        };
        let (_, starts) = flaky(&mut agent, 3, retry);
        agent.run().await.unwrap();
        let starts = starts.lock().unwrap();
        let third_gap = (starts[3] - starts[2]).as_millis();
        assert!(
            (low..=high).contains(&third_gap),
            "{jitter:?}: {third_gap} ms"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_timeout_then_a_retry_then_success() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let mut agent = Agent::new("slow then fast");
    agent
        .add_state("fetch", move |ctx: Context| {
            let calls = Arc::clone(&c);
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    sleep(Duration::from_secs(60)).await;
                }
                ctx.set_state("fetched", true);
                Ok(Next::End)
            }
        })
        .timeout(ms(200))
        .retry(policy(2));
    let mut events = agent.subscribe();
    let start = Instant::now();
    let report = agent.run().await.unwrap();
    assert_eq!(start.elapsed(), ms(300), "200 ms timeout + 100 ms delay");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(report.state("fetch").unwrap().attempts, 2);
    assert!(report.dead_letters.is_empty());
    let retrying: Vec<_> = events
        .drain()
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.kind {
            fluffy_flow::EventKind::StateRetrying {
                attempt,
                delay,
                error,
                ..
            } => Some((attempt, delay, error)),
            _ => None,
        })
        .collect();
    assert_eq!(
        retrying,
        [(2, ms(100), "state `fetch` timed out after 200ms on attempt 1; raise its `timeout` or make it faster".to_string())]
    );
}

#[tokio::test(start_paused = true)]
async fn on_error_runs_once_with_the_failure_and_a_dead_letter_is_kept() {
    let mut agent = Agent::new("payments");
    agent
        .add_state_with_error("charge", |ctx: Context| async move {
            ctx.set_state("order", 42u32);
            Err::<Next, _>(std::io::Error::other("card declined"))
        })
        .retry(policy(1))
        .on_error("refund")
        .successors(["receipt"]);
    agent.add_state("receipt", |_ctx: Context| async { Ok(Next::End) });
    agent.add_state("refund", |ctx: Context| async move {
        let failure = ctx.failure().expect("the handler sees the failure");
        ctx.update_typed::<u32, _>("refunds", |n| *n += 1)?;
        ctx.set_state(
            "refunded",
            format!(
                "{} after {} attempts: {}",
                failure.state, failure.attempts, failure.error
            ),
        );
        Ok(Next::End)
    });
    let context = Context::new();
    context.set_state("refunds", 0u32);
    let report = agent
        .run_with(context)
        .await
        .expect("the handler recovers the run");
    assert_eq!(report.context.get_state::<u32>("refunds").unwrap(), 1);
    assert_eq!(
        report.context.get_state::<String>("refunded").unwrap(),
        "charge after 2 attempts: state `charge` failed after 2 attempt(s): card declined"
    );
    assert_eq!(report.state("charge").unwrap().status, StateStatus::Failed);
    assert_eq!(report.state("receipt").unwrap().runs, 0);
    let [letter] = report.dead_letters.as_slice() else {
        panic!("one dead letter: {:?}", report.dead_letters)
    };
    assert_eq!(letter.state, "charge");
    assert_eq!(letter.kind, FailureKind::Error);
    assert_eq!(letter.attempts, 2);
    assert!(!letter.timed_out);
    assert_eq!(letter.run_id, report.run_id);
    assert_eq!(letter.context["order"], 42);
    assert_eq!(
        agent.dead_letters(),
        report.dead_letters,
        "the agent keeps them too"
    );
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_state_without_handler_fails_the_run_with_a_dead_letter() {
    let mut agent = Agent::new("slow");
    agent
        .add_state("crawl", |_ctx: Context| async {
            sleep(Duration::from_secs(10)).await;
            Ok(Next::End)
        })
        .timeout(ms(50));
    let report = agent.start().unwrap().wait().await;
    assert_eq!(report.status, AgentStatus::Failed);
    let letter = &report.dead_letters[0];
    assert_eq!(
        (letter.kind, letter.timed_out, letter.attempts),
        (FailureKind::Timeout, true, 1)
    );
    assert_eq!(report.state("crawl").unwrap().status, StateStatus::Timeout);
}

#[tokio::test(start_paused = true)]
async fn the_agent_default_retry_applies_to_states_without_their_own() {
    let mut agent = Agent::new("defaults");
    agent.default_retry(policy(2));
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    agent.add_state("panicky", move |_ctx: Context| {
        let calls = Arc::clone(&c);
        async move {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                panic!("not yet");
            }
            Ok(Next::End)
        }
    });
    let report = agent.run().await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "two panics retried, then success"
    );
    assert_eq!(report.state("panicky").unwrap().attempts, 3);
}

fn pausable() -> (Agent, Arc<Mutex<Vec<&'static str>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut agent = Agent::new("pausable");
    for (name, next) in [
        ("one", Some("two")),
        ("two", Some("three")),
        ("three", None),
    ] {
        let log = Arc::clone(&log);
        agent.add_state(name, move |_ctx: Context| {
            let log = Arc::clone(&log);
            async move {
                sleep(ms(100)).await;
                log.lock().unwrap().push(name);
                Ok(next.map_or(Next::End, Next::to))
            }
        });
    }
    (agent, log)
}

#[tokio::test(start_paused = true)]
async fn pause_lets_running_states_finish_and_resume_goes_on() {
    let (agent, log) = pausable();
    let handle = agent.start().unwrap();
    sleep(ms(50)).await;
    let start = Instant::now();
    let checkpoint = handle.pause().await.expect("the run is going");
    // The pause's checkpoint: `one` done, `two` queued, nothing running.
    assert_eq!(checkpoint.completed().collect::<Vec<_>>(), ["one"]);
    assert_eq!(checkpoint.queue.len(), 1);
    assert_eq!(checkpoint.queue[0].state, "two");
    assert_eq!(checkpoint.queue[0].place, fluffy_flow::QueuePlace::Ready);
    assert_eq!(checkpoint.status, AgentStatus::Paused);
    assert_eq!(
        start.elapsed(),
        ms(50),
        "pause returns once `one` has finished"
    );
    assert_eq!(handle.status(), AgentStatus::Paused);
    assert_eq!(*log.lock().unwrap(), ["one"]);
    assert_eq!(handle.state_status("two"), Some(StateStatus::Ready));
    sleep(Duration::from_secs(10)).await;
    assert_eq!(*log.lock().unwrap(), ["one"], "nothing starts while paused");
    handle.resume();
    let report = handle.wait().await;
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!(*log.lock().unwrap(), ["one", "two", "three"]);
}

#[tokio::test(start_paused = true)]
async fn cancel_state_ends_one_branch_and_the_run_goes_on() {
    let mut agent = Agent::new("selective");
    agent.add_state("start", |_ctx: Context| async {
        Ok(Next::parallel(["slow", "fast"]))
    });
    agent.add_state("slow", |ctx: Context| async move {
        sleep(Duration::from_secs(100)).await;
        ctx.set_state("slow_done", true);
        Ok(Next::to("merge"))
    });
    agent.add_state("fast", |_ctx: Context| async {
        sleep(ms(10)).await;
        Ok(Next::to("merge"))
    });
    agent.add_state("merge", |ctx: Context| async move {
        ctx.set_state("merged", true);
        Ok(Next::End)
    });
    let handle = agent.start().unwrap();
    sleep(ms(20)).await;
    assert_eq!(handle.state_status("merge"), Some(StateStatus::Blocked));
    assert_eq!(handle.cancel_state("slow").await.unwrap(), 1);
    assert!(
        matches!(handle.cancel_state("slwo").await, Err(FlowError::UnknownState { suggestion: Some(s), .. }) if s == "slow")
    );
    let report = handle.wait().await;
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!(report.state("slow").unwrap().status, StateStatus::Cancelled);
    assert!(
        report.context.get_state::<bool>("merged").unwrap(),
        "the join went on without it"
    );
    assert!(!report.context.has_state("slow_done"));
    assert_eq!(report.duration, ms(20));
}

#[tokio::test(start_paused = true)]
async fn cancel_all_gives_states_their_cleanup_time() {
    let mut agent = Agent::new("graceful");
    agent.cleanup_timeout(ms(500));
    agent.add_state("start", |_ctx: Context| async {
        Ok(Next::parallel(["polite", "stubborn"]))
    });
    agent.add_state("polite", |ctx: Context| async move {
        tokio::select! {
            _ = sleep(Duration::from_secs(100)) => {}
            _ = ctx.cancelled() => { sleep(ms(50)).await; ctx.set_state("saved_work", true); }
        }
        Ok(Next::End)
    });
    agent.add_state("stubborn", |ctx: Context| async move {
        sleep(Duration::from_secs(100)).await;
        ctx.set_state("stubborn_done", true);
        Ok(Next::End)
    });
    let handle = agent.start().unwrap();
    sleep(ms(10)).await;
    let start = Instant::now();
    handle.cancel_all();
    let report = handle.wait().await;
    assert_eq!(
        start.elapsed(),
        ms(500),
        "the stubborn state used up the cleanup timeout"
    );
    assert_eq!(report.status, AgentStatus::Cancelled);
    assert!(report.context.get_state::<bool>("saved_work").unwrap());
    assert_eq!(
        report.state("polite").unwrap().status,
        StateStatus::Completed
    );
    assert_eq!(
        report.state("stubborn").unwrap().status,
        StateStatus::Cancelled
    );
    assert!(!report.context.has_state("stubborn_done"));
}

struct Gateway {
    failures: AtomicU32,
}

#[workflow]
impl Gateway {
    #[state(entry, retry(max = 2, initial_delay = "50ms", max_delay = "1s"), on_error = fallback)]
    async fn primary(&self, ctx: &Context) -> StateResult {
        let n = self.failures.fetch_add(1, Ordering::SeqCst) + 1;
        ctx.set_state("primary_attempts", n);
        Err(format!("primary down ({n})").into())
    }

    #[state]
    async fn fallback(&self, ctx: &Context) -> StateResult {
        let failure = ctx.failure().expect("a failure to handle");
        ctx.set_state("served_by", format!("fallback after {}", failure.attempts));
        end!()
    }
}

#[tokio::test(start_paused = true)]
async fn retry_and_on_error_work_from_the_attribute() {
    let start = Instant::now();
    let report = Gateway {
        failures: AtomicU32::new(0),
    }
    .agent()
    .run()
    .await
    .unwrap();
    assert_eq!(start.elapsed(), ms(150), "50 ms + 100 ms of backoff");
    assert_eq!(
        report.context.get_state::<u32>("primary_attempts").unwrap(),
        3
    );
    assert_eq!(
        report.context.get_state::<String>("served_by").unwrap(),
        "fallback after 3"
    );
    assert_eq!(report.dead_letters.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_circuit_breaker_opens_fails_fast_half_opens_and_closes() {
    use fluffy_flow::{BreakerState, CircuitBreaker};
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = Arc::new(AtomicU32::new(0));
    let breaker = CircuitBreaker::new(3, Duration::from_secs(10), 1);
    let build = |breaker: &CircuitBreaker| {
        let (healthy, calls) = (Arc::clone(&healthy), Arc::clone(&calls));
        let mut agent = Agent::new("downstream");
        agent
            .add_state("call", move |_ctx: Context| {
                let (healthy, calls) = (Arc::clone(&healthy), Arc::clone(&calls));
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    if healthy.load(Ordering::SeqCst) {
                        Ok(Next::End)
                    } else {
                        Err("503 from the service".into())
                    }
                }
            })
            .circuit_breaker(breaker.clone());
        agent
    };
    let agent = build(&breaker);
    // Three failing runs open it.
    for failures in 1..=3u32 {
        let report = agent.start().unwrap().wait().await;
        assert_eq!(report.dead_letters[0].kind, FailureKind::Error);
        let expected = if failures < 3 {
            BreakerState::Closed { failures }
        } else {
            BreakerState::Open
        };
        assert_eq!(breaker.state(), expected);
    }
    // Open: fails fast, without calling the state.
    let report = agent.start().unwrap().wait().await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(report.dead_letters[0].kind, FailureKind::CircuitOpen);
    assert!(
        matches!(report.error, Some(FlowError::CircuitOpen { retry_in, .. }) if retry_in == Duration::from_secs(10))
    );
    // After the recovery timeout one trial goes through; it fails and reopens the breaker.
    sleep(Duration::from_secs(10)).await;
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    let _ = agent.start().unwrap().wait().await;
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(breaker.state(), BreakerState::Open);
    // The service recovers: the next trial succeeds and closes it.
    healthy.store(true, Ordering::SeqCst);
    sleep(Duration::from_secs(10)).await;
    let report = agent.run().await.unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!(breaker.state(), BreakerState::Closed { failures: 0 });
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn a_retry_policy_waits_out_an_open_breaker() {
    use fluffy_flow::CircuitBreaker;
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let mut agent = Agent::new("patient");
    agent
        .add_state("call", move |_ctx: Context| {
            let calls = Arc::clone(&c);
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 2 {
                    Err("flaky".into())
                } else {
                    Ok(Next::End)
                }
            }
        })
        .circuit_breaker(CircuitBreaker::new(2, ms(300), 1))
        .retry(RetryPolicy {
            max_retries: 5,
            initial_delay: ms(100),
            max_delay: ms(100),
            exponential_base: 1.0,
            jitter: Jitter::None,
            ..RetryPolicy::DEFAULT
        });
    let start = Instant::now();
    let report = agent.run().await.unwrap();
    // Two failures open the breaker at 100 ms; attempts at 200 and 300 ms fail fast; the one at
    // 400 ms is the half-open trial and succeeds.
    assert_eq!(start.elapsed(), ms(400));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(report.state("call").unwrap().attempts, 5);
}

#[tokio::test(start_paused = true)]
async fn a_bulkhead_caps_concurrency_and_rejects_beyond_its_queue() {
    use fluffy_flow::Bulkhead;
    let bulkhead = Bulkhead::new("database", 2, 3);
    let running = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let mut agent = Agent::new("queries");
    agent.add_state("start", |_ctx: Context| async {
        Ok(Next::parallel((0..5).map(|i| format!("q{i}"))))
    });
    for i in 0..5 {
        let (running, peak) = (Arc::clone(&running), Arc::clone(&peak));
        agent
            .add_state(format!("q{i}"), move |_ctx: Context| {
                let (running, peak) = (Arc::clone(&running), Arc::clone(&peak));
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    sleep(ms(100)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(Next::End)
                }
            })
            .bulkhead(bulkhead.clone());
    }
    let start = Instant::now();
    let report = agent.run().await.unwrap();
    assert_eq!(peak.load(Ordering::SeqCst), 2, "never more than two inside");
    assert_eq!(start.elapsed(), ms(300), "five queries, two at a time");
    assert!(report.dead_letters.is_empty());

    // Two inside and three queued: a sixth caller is turned away at once.
    let tight = Bulkhead::new("tight", 1, 0);
    let mut agent = Agent::new("crowded");
    agent.add_state("start", |_ctx: Context| async {
        Ok(Next::parallel(["a", "b"]))
    });
    for name in ["a", "b"] {
        agent
            .add_state(name, |_ctx: Context| async {
                sleep(ms(100)).await;
                Ok(Next::End)
            })
            .bulkhead(tight.clone());
    }
    let report = agent.start().unwrap().wait().await;
    assert_eq!(report.status, AgentStatus::Failed);
    assert!(
        matches!(&report.error, Some(FlowError::BulkheadFull { bulkhead, max_concurrent: 1, max_queued: 0, .. }) if bulkhead == "tight"),
        "{:?}",
        report.error
    );
    assert_eq!(report.dead_letters[0].kind, FailureKind::BulkheadFull);
    assert_eq!(
        (tight.in_use(), tight.queued()),
        (0, 0),
        "places are given back when the run stops"
    );
}

struct Shared {
    inside: AtomicU32,
    peak: AtomicU32,
}

impl Shared {
    async fn query(&self) {
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        sleep(ms(100)).await;
        self.inside.fetch_sub(1, Ordering::SeqCst);
    }
}

#[workflow]
impl Shared {
    #[state(entry)]
    async fn fan(&self, _ctx: &Context) -> StateResult {
        parallel!(a, b, c)
    }

    #[state(bulkhead(name = "db", max_concurrent = 1, max_queued = 4))]
    async fn a(&self, _ctx: &Context) -> StateResult {
        self.query().await;
        end!()
    }

    #[state(bulkhead(name = "db", max_concurrent = 1, max_queued = 4))]
    async fn b(&self, _ctx: &Context) -> StateResult {
        self.query().await;
        end!()
    }

    #[state(
        bulkhead(name = "db", max_concurrent = 1, max_queued = 4),
        circuit_breaker(failures = 1)
    )]
    async fn c(&self, _ctx: &Context) -> StateResult {
        self.query().await;
        end!()
    }
}

#[tokio::test(start_paused = true)]
async fn states_naming_one_bulkhead_in_the_attribute_share_it() {
    let workflow = Shared {
        inside: AtomicU32::new(0),
        peak: AtomicU32::new(0),
    };
    let shared = Arc::new(workflow);
    let start = Instant::now();
    let report = Shared::agent_shared(Arc::clone(&shared))
        .run()
        .await
        .unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!(shared.peak.load(Ordering::SeqCst), 1);
    assert_eq!(start.elapsed(), ms(300));
}

#[tokio::test(start_paused = true)]
async fn a_breaker_learns_from_states_that_run_as_tasks() {
    use fluffy_flow::{BreakerState, CircuitBreaker};
    let breaker = CircuitBreaker::new(2, Duration::from_secs(60), 1);
    let mut agent = Agent::new("slow service");
    agent
        .add_state_with_error("call", |_ctx: Context| async {
            sleep(ms(20)).await;
            Err::<Next, _>(std::io::Error::other("timeout upstream"))
        })
        .circuit_breaker(breaker.clone());
    let _ = agent.start().unwrap().wait().await;
    assert_eq!(breaker.state(), BreakerState::Closed { failures: 1 });
    let _ = agent.start().unwrap().wait().await;
    assert_eq!(breaker.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn cancel_state_reaches_a_state_waiting_for_a_retry_and_stopping_marks_it_cancelled() {
    let mut agent = Agent::new("backing off");
    agent.add_state("start", |_ctx: Context| async {
        Ok(Next::parallel(["flaky", "steady"]))
    });
    agent
        .add_state_with_error("flaky", |_ctx: Context| async {
            Err::<Next, _>(std::io::Error::other("no"))
        })
        .retry(RetryPolicy {
            max_retries: 10,
            initial_delay: Duration::from_secs(10),
            ..policy(0)
        });
    agent.add_state("steady", |_ctx: Context| async {
        sleep(ms(50)).await;
        Ok(Next::End)
    });
    let handle = agent.start().unwrap();
    sleep(ms(1)).await;
    assert_eq!(
        handle.state_status("flaky"),
        Some(StateStatus::Pending),
        "waiting for its retry"
    );
    assert_eq!(handle.cancel_state("flaky").await.unwrap(), 1);
    let report = handle.wait().await;
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!(
        report.duration,
        ms(50),
        "the retry did not keep the run alive"
    );
    assert_eq!(
        report.state("flaky").unwrap().status,
        StateStatus::Cancelled
    );

    // Stopping the run while a retry waits reports the state as cancelled, not pending.
    let handle = agent.start().unwrap();
    sleep(ms(1)).await;
    handle.cancel();
    let report = handle.wait().await;
    assert_eq!(
        report.state("flaky").unwrap().status,
        StateStatus::Cancelled
    );
}

#[tokio::test(start_paused = true)]
async fn a_pause_resumed_before_it_settles_still_returns() {
    let (agent, log) = pausable();
    let handle = agent.start().unwrap();
    sleep(ms(50)).await;
    let pausing = handle.pause();
    handle.resume();
    pausing.await.expect("the run is still going");
    let report = handle.wait().await;
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!(*log.lock().unwrap(), ["one", "two", "three"]);
}

#[tokio::test(start_paused = true)]
async fn with_a_bulkhead_the_timeout_covers_the_call_not_the_wait() {
    use fluffy_flow::Bulkhead;
    let bulkhead = Bulkhead::new("single", 1, 4);
    let mut agent = Agent::new("queued");
    agent.add_state("start", |_ctx: Context| async {
        Ok(Next::parallel(["a", "b", "c"]))
    });
    for name in ["a", "b", "c"] {
        agent
            .add_state(name, |_ctx: Context| async {
                sleep(ms(80)).await;
                Ok(Next::End)
            })
            .timeout(ms(100))
            .bulkhead(bulkhead.clone());
    }
    let start = Instant::now();
    let report = agent
        .run()
        .await
        .expect("each call fits its timeout, though c waits 160 ms");
    assert_eq!(start.elapsed(), ms(240));
    assert!(report.dead_letters.is_empty());
}
