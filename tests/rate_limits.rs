//! Rate limits: exact admission instants for each strategy on the paused clock, enforced by
//! the scheduler without holding slots or delaying other states, shared across runs.

mod common;

use std::time::Duration;

use common::starts;

use fluffy_flow::prelude::*;
use fluffy_flow::{FailureKind, RateLimit};
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A workflow whose entry forks into `branches` states `w0`, `w1`, ..., each limited by
/// `limit` and taking `work(i)` to run.
fn limited_fan(limit: &RateLimit, branches: usize, work: fn(usize) -> Duration) -> Agent {
    let names: Vec<String> = (0..branches).map(|i| format!("w{i}")).collect();
    let mut agent = Agent::new("limited");
    let targets = names.clone();
    agent.add_state("fork", move |_ctx: Context| {
        let targets = targets.clone();
        async move { Ok(Next::parallel(targets)) }
    });
    for (i, name) in names.iter().enumerate() {
        agent
            .add_state(name, move |_ctx: Context| async move {
                tokio::time::sleep(work(i)).await;
                Ok(Next::End)
            })
            .rate_limit(limit.clone());
    }
    agent
}

fn instants(starts: &[(String, u64)]) -> Vec<u64> {
    let mut at: Vec<u64> = starts.iter().map(|(_, at)| *at).collect();
    at.sort_unstable();
    at
}

#[tokio::test(start_paused = true)]
async fn token_bucket_admits_the_burst_then_one_per_interval() {
    // Whatever the states take to run, admissions follow the bucket: 10/s, burst 5.
    for work in
        [|_| ms(0), |i| ms(7 * i as u64), |i| ms(250 - 20 * i as u64)] as [fn(usize) -> Duration; 3]
    {
        let limit = RateLimit::token_bucket(10.0, 5).unwrap();
        let (report, started) = starts(&limited_fan(&limit, 8, work)).await;
        assert!(report.is_success());
        assert_eq!(instants(&started), [0, 0, 0, 0, 0, 100, 200, 300]);
        // In the fork's order: the limit never lets a later branch overtake an earlier one.
        let mut sorted = started.clone();
        sorted.sort_by_key(|(name, at)| (*at, name[1..].parse::<u32>().unwrap()));
        let order: Vec<&str> = sorted.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(order, ["w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7"]);
    }
}

#[tokio::test(start_paused = true)]
async fn token_bucket_refills_while_idle_up_to_its_burst() {
    let limit = RateLimit::token_bucket(10.0, 3).unwrap();
    let start = Instant::now();
    for _ in 0..3 {
        limit.acquire().await.unwrap();
    }
    assert_eq!(start.elapsed(), ms(0));
    assert_eq!(limit.try_acquire(), Err(start + ms(100)));
    // Idle for a second: the bucket is full again, but holds no more than 3.
    tokio::time::advance(ms(1000)).await;
    for _ in 0..3 {
        assert_eq!(limit.try_acquire(), Ok(()));
    }
    assert_eq!(limit.try_acquire(), Err(start + ms(1100)));
    limit.acquire().await.unwrap();
    assert_eq!(start.elapsed(), ms(1100));
}

#[tokio::test(start_paused = true)]
async fn leaky_bucket_spaces_admissions_and_refuses_beyond_its_capacity() {
    let limit = RateLimit::leaky_bucket(10.0, 3).unwrap().named("smtp");
    // Four branches: one goes, three wait (the capacity), all at exact 100 ms spacing.
    let (report, started) = starts(&limited_fan(&limit, 4, |_| ms(0))).await;
    assert!(report.is_success());
    assert_eq!(instants(&started), [0, 100, 200, 300]);

    // Six branches: one goes, three wait, the fifth is refused at once.
    let limit = RateLimit::leaky_bucket(10.0, 3).unwrap().named("smtp");
    let (report, started) = starts(&limited_fan(&limit, 6, |_| ms(0))).await;
    match report.error {
        Some(FlowError::RateLimited {
            state: Some(ref state),
            ref limit,
            capacity: 3,
        }) => {
            assert_eq!(state, "w4");
            assert_eq!(limit, "smtp");
        }
        ref other => panic!("unexpected {other:?}"),
    }
    assert_eq!(report.dead_letters[0].kind, FailureKind::RateLimited);
    let message = report.error.unwrap().to_string();
    assert!(
        message.contains("state `w4` was not called: leaky bucket `smtp` already holds 3 waiting"),
        "{message}"
    );
    // The refusal stopped the run at t = 0: the first branch ran, the three waiting never
    // started (the refused ones count an attempt that did not call them, as a breaker does).
    let names: Vec<&str> = started.iter().map(|(name, _)| name.as_str()).collect();
    assert!(names.contains(&"w0"));
    assert!(
        !names.iter().any(|name| ["w1", "w2", "w3"].contains(name)),
        "{names:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn leaky_bucket_used_directly_counts_its_waiters() {
    let limit = RateLimit::leaky_bucket(10.0, 1).unwrap();
    let start = Instant::now();
    limit.acquire().await.unwrap();
    let waiting = tokio::spawn({
        let limit = limit.clone();
        async move {
            limit.acquire().await.unwrap();
            start.elapsed()
        }
    });
    tokio::task::yield_now().await;
    // One waits already: a second waiter is refused.
    assert!(matches!(
        limit.acquire().await,
        Err(FlowError::RateLimited {
            state: None,
            capacity: 1,
            ..
        })
    ));
    assert_eq!(waiting.await.unwrap(), ms(100));
    // The waiter has left: waiting is possible again.
    limit.acquire().await.unwrap();
    assert_eq!(start.elapsed(), ms(200));
}

#[tokio::test(start_paused = true)]
async fn fixed_window_resets_at_each_window_and_doubles_up_at_its_edge() {
    let limit = RateLimit::fixed_window(2, ms(1000)).unwrap();
    let start = Instant::now();
    let mut at = Vec::new();
    limit.acquire().await.unwrap(); // opens window [0, 1000)
    at.push(start.elapsed().as_millis());
    tokio::time::advance(ms(900)).await;
    for _ in 0..5 {
        limit.acquire().await.unwrap();
        at.push(start.elapsed().as_millis());
    }
    // Three within 100 ms around the edge (900, 1000, 1000): the known cost of fixed windows.
    assert_eq!(at, [0, 900, 1000, 1000, 2000, 2000]);
}

#[tokio::test(start_paused = true)]
async fn sliding_window_never_admits_more_than_max_in_any_window() {
    let limit = RateLimit::sliding_window(2, ms(1000)).unwrap();
    let start = Instant::now();
    let mut at = Vec::new();
    limit.acquire().await.unwrap();
    at.push(start.elapsed().as_millis());
    tokio::time::advance(ms(900)).await;
    for _ in 0..5 {
        limit.acquire().await.unwrap();
        at.push(start.elapsed().as_millis());
    }
    assert_eq!(at, [0, 900, 1000, 1900, 2000, 2900]);
    for window in at.windows(3) {
        assert!(window[2] - window[0] >= 1000, "{at:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiting_state_holds_no_slot_and_delays_no_other_state() {
    let limit = RateLimit::token_bucket(1.0, 1).unwrap();
    let mut agent = Agent::new("mixed");
    agent.max_concurrent(1);
    agent.add_state("fork", |_ctx: Context| async {
        Ok(Next::parallel(["a", "b", "free"]))
    });
    for name in ["a", "b"] {
        agent
            .add_state(name, |_ctx: Context| async { Ok(Next::End) })
            .rate_limit(limit.clone());
    }
    agent.add_state("free", |_ctx: Context| async {
        tokio::time::sleep(ms(10)).await;
        Ok(Next::End)
    });
    let (report, started) = starts(&agent).await;
    assert!(report.is_success());
    // With one slot: `a` at 0, `free` right after it (b waits for the limit, not for a slot),
    // `b` at 1 s.
    assert_eq!(
        started,
        [
            ("a".to_string(), 0),
            ("free".to_string(), 0),
            ("b".to_string(), 1000)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn one_limit_is_shared_by_runs_and_agents_given_clones() {
    let limit = RateLimit::token_bucket(10.0, 1).unwrap();
    let first = limited_fan(&limit, 3, |_| ms(0));
    let second = limited_fan(&limit, 3, |_| ms(0));
    let (a, b, c) = tokio::join!(starts(&first), starts(&first), starts(&second));
    let mut all: Vec<(String, u64)> = Vec::new();
    for (report, started) in [a, b, c] {
        assert!(report.is_success());
        all.extend(started);
    }
    assert_eq!(instants(&all), [0, 100, 200, 300, 400, 500, 600, 700, 800]);
}

#[tokio::test(start_paused = true)]
async fn the_wait_counts_against_acquire_timeout_and_is_visible_in_blocked() {
    let limit = RateLimit::token_bucket(1.0, 1).unwrap().named("api");
    let mut agent = Agent::new("patient");
    agent.add_state("fork", |_ctx: Context| async {
        Ok(Next::parallel(["w0", "w1"]))
    });
    agent
        .add_state("w0", |_ctx: Context| async { Ok(Next::End) })
        .rate_limit(limit.clone());
    agent
        .add_state("w1", |_ctx: Context| async { Ok(Next::End) })
        .rate_limit(limit.clone())
        .acquire_timeout(ms(300));
    let handle = agent.start().unwrap();
    tokio::time::sleep(ms(100)).await;
    let blocked = handle.blocked().await;
    assert_eq!(blocked.len(), 1);
    assert_eq!(&*blocked[0].state, "w1");
    assert_eq!(blocked[0].waited, ms(100));
    assert_eq!(
        blocked[0].waits_for,
        ["rate limit `api`: it may ask again in 900ms"]
    );
    let report = handle.wait().await;
    match &report.error {
        Some(FlowError::AdmissionTimeout {
            state,
            waited,
            gate,
            ..
        }) => {
            assert_eq!(
                (state.as_str(), *waited, gate.as_str()),
                ("w1", ms(300), "rate limit `api`")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(report.state("w1").unwrap().status, StateStatus::Timeout);
    assert_eq!(report.dead_letters[0].kind, FailureKind::AdmissionTimeout);
}

#[test]
fn limits_that_cannot_work_are_refused_with_the_reason() {
    let cases = [
        (
            RateLimit::token_bucket(0.0, 5).unwrap_err(),
            "token_bucket(rate = 0, burst = 5): the rate must be a positive number",
        ),
        (
            RateLimit::token_bucket(f64::NAN, 5).unwrap_err(),
            "the rate must be a positive number",
        ),
        (
            RateLimit::token_bucket(10.0, 0).unwrap_err(),
            "a burst of 0 admits nothing",
        ),
        (
            RateLimit::token_bucket(1e12, 1).unwrap_err(),
            "the rate is out of range",
        ),
        (
            RateLimit::leaky_bucket(10.0, 0).unwrap_err(),
            "a capacity of 0",
        ),
        (
            RateLimit::fixed_window(0, ms(10)).unwrap_err(),
            "a max of 0 admits nothing",
        ),
        (
            RateLimit::sliding_window(3, Duration::ZERO).unwrap_err(),
            "the window must be a positive duration",
        ),
    ];
    for (error, expected) in cases {
        assert!(matches!(error, FlowError::InvalidRateLimit { .. }));
        assert!(error.to_string().contains(expected), "{error}");
    }
}

#[tokio::test(start_paused = true)]
async fn waiting_adds_no_drift_when_the_interval_is_not_a_whole_millisecond() {
    // 3 per second: one every 333.33 ms. tokio's timers fire on whole milliseconds, so each
    // wait ends up to 1 ms late; admissions are still counted at the instants the limit named,
    // so the 31st comes at 10 s, not 10 s plus 30 roundings.
    let limit = RateLimit::token_bucket(3.0, 1).unwrap();
    let (report, started) = starts(&limited_fan(&limit, 31, |_| ms(0))).await;
    assert!(report.is_success());
    let last = *instants(&started).last().unwrap();
    assert!((10_000..=10_001).contains(&last), "{last}");

    let direct = RateLimit::token_bucket(3.0, 1).unwrap();
    let start = Instant::now();
    for _ in 0..31 {
        direct.acquire().await.unwrap();
    }
    let elapsed = start.elapsed();
    assert!(elapsed >= ms(9_999) && elapsed <= ms(10_001), "{elapsed:?}");
}

struct Crawler;

#[workflow]
impl Crawler {
    #[state(entry)]
    async fn start(&self, _ctx: &Context) -> StateResult {
        parallel!(fetch_a, fetch_b, parse)
    }

    #[state(rate_limit(token_bucket(rate = 10, burst = 1), name = "site"))]
    async fn fetch_a(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    #[state(rate_limit(token_bucket(rate = 10, burst = 1), name = "site"))]
    async fn fetch_b(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    // Its own limit, not the shared one: not delayed by the fetches.
    #[state(rate_limit(token_bucket(rate = 10, burst = 1)))]
    async fn parse(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

#[tokio::test(start_paused = true)]
async fn macro_limits_are_enforced_and_shared_by_name() {
    let agent = Crawler.agent();
    // Twice: the limit belongs to the agent, so the second run meets the budget the first used.
    let (first, started) = starts(&agent).await;
    assert!(first.is_success());
    let mut started: Vec<(String, u64)> = started
        .into_iter()
        .filter(|(name, _)| name != "start")
        .collect();
    started.sort();
    assert_eq!(
        started,
        [
            ("fetch_a".to_string(), 0),
            ("fetch_b".to_string(), 100),
            ("parse".to_string(), 0)
        ]
    );
    let (second, started) = starts(&agent).await;
    assert!(second.is_success());
    let fetches: Vec<u64> = started
        .iter()
        .filter(|(name, _)| name.starts_with("fetch"))
        .map(|(_, at)| *at)
        .collect();
    // The second run starts at 100 ms (when the first ended); the shared bucket's next token
    // is at 200 ms, i.e. 100 ms into this run.
    assert_eq!(
        instants(
            &fetches
                .iter()
                .map(|&at| (String::new(), at))
                .collect::<Vec<_>>()
        ),
        [100, 200]
    );
}
