//! Semaphores, mutexes, leases and quotas: enforced by the scheduler at admission (held while
//! the attempt runs), usable directly as guards, with deadlocks refused as they close.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::starts;

use fluffy_flow::prelude::*;
use fluffy_flow::{
    EventKind, FailureKind, FlowMutex, FlowSemaphore, Lease, PrimitiveKind, Quota, RetryPolicy,
};
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A fork into `names`, each sleeping `work` ms, each configured by `attach`.
fn fan(
    names: &[&str],
    work: u64,
    attach: impl Fn(fluffy_flow::StateOptions<'_>) -> fluffy_flow::StateOptions<'_>,
) -> Agent {
    let mut agent = Agent::new("fan");
    let targets: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    agent.add_state("fork", move |_ctx: Context| {
        let targets = targets.clone();
        async move { Ok(Next::parallel(targets)) }
    });
    for name in names {
        let options = agent.add_state(*name, move |_ctx: Context| async move {
            tokio::time::sleep(ms(work)).await;
            Ok(Next::End)
        });
        attach(options.terminal());
    }
    agent
}

fn at(started: &[(String, u64)]) -> Vec<u64> {
    started.iter().map(|(_, at)| *at).collect()
}

#[tokio::test(start_paused = true)]
async fn a_semaphore_lets_its_permits_through_and_the_rest_wait_in_order() {
    let gpu = FlowSemaphore::new("gpu", 2);
    let names = ["a", "b", "c", "d", "e", "f"];
    let agent = fan(&names, 10, |o| o.semaphore(gpu.clone()));
    let (report, started) = starts(&agent).await;
    assert!(report.is_success());
    assert_eq!(at(&started), [0, 0, 10, 10, 20, 20]);
    let order: Vec<&str> = started.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(order, names);
    assert_eq!(report.max_concurrency, 2);
    assert_eq!(gpu.status().in_use, "0");
    assert_eq!(gpu.status().granted, 6);
}

#[tokio::test(start_paused = true)]
async fn a_state_waiting_for_a_permit_holds_no_slot_and_delays_no_other_state() {
    let db = FlowSemaphore::new("db", 1);
    let mut agent = Agent::new("mixed");
    agent.max_concurrent(2);
    agent.add_state("fork", |_ctx: Context| async {
        Ok(Next::parallel(["a", "b", "free"]))
    });
    for name in ["a", "b"] {
        agent
            .add_state(name, |_ctx: Context| async {
                tokio::time::sleep(ms(10)).await;
                Ok(Next::End)
            })
            .semaphore(db.clone());
    }
    agent.add_state("free", |_ctx: Context| async { Ok(Next::End) });
    let (report, started) = starts(&agent).await;
    assert!(report.is_success());
    assert_eq!(
        started,
        [
            ("a".to_string(), 0),
            ("free".to_string(), 0),
            ("b".to_string(), 10)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn one_semaphore_is_shared_by_runs_given_clones() {
    let one = FlowSemaphore::new("one", 1);
    let agent = fan(&["a", "b"], 10, |o| o.semaphore(one.clone()));
    let other = fan(&["c"], 10, |o| o.semaphore(one.clone()));
    let start = Instant::now();
    let (x, y, z) = tokio::join!(agent.run(), agent.run(), other.run());
    assert!(x.is_ok() && y.is_ok() && z.is_ok());
    // Five states of 10 ms through one permit.
    assert_eq!(start.elapsed(), ms(50));
}

#[tokio::test(start_paused = true)]
async fn a_mutex_held_past_its_ttl_goes_to_the_next_waiter_and_cancels_the_holder() {
    let lock = FlowMutex::with_ttl("db", ms(50));
    let mut agent = Agent::new("slow");
    agent.add_state("fork", |_ctx: Context| async {
        Ok(Next::parallel(["slow", "next"]))
    });
    agent
        .add_state("slow", |_ctx: Context| async {
            tokio::time::sleep(ms(200)).await;
            Ok(Next::End)
        })
        .mutex(lock.clone())
        .on_error("recover");
    agent
        .add_state("next", |_ctx: Context| async {
            tokio::time::sleep(ms(10)).await;
            Ok(Next::End)
        })
        .mutex(lock.clone())
        .terminal();
    agent
        .add_state("recover", |_ctx: Context| async { Ok(Next::End) })
        .terminal();
    let (report, started) = starts(&agent).await;
    assert!(report.is_success(), "{:?}", report.error);
    assert_eq!(
        started,
        [
            ("slow".to_string(), 0),
            ("next".to_string(), 50),
            ("recover".to_string(), 50)
        ]
    );
    let letter = &report.dead_letters[0];
    assert_eq!(letter.kind, FailureKind::Coordination);
    assert!(letter.timed_out);
    assert!(
        letter
            .error
            .contains("state `slow` held mutex `db` longer than its TTL of 50ms"),
        "{}",
        letter.error
    );
    assert_eq!(report.state("slow").unwrap().status, StateStatus::Timeout);
    assert_eq!(lock.status().granted, 2);
}

#[tokio::test(start_paused = true)]
async fn a_lease_guard_is_told_when_it_is_lost_and_can_be_renewed() {
    let lease = Lease::new("batch", ms(100));
    let first = lease.acquire().await.unwrap();
    tokio::time::advance(ms(60)).await;
    assert!(first.renew()); // good for 100 ms from now
    tokio::time::advance(ms(60)).await;
    assert!(!first.is_lost());
    assert!(lease.try_acquire().is_none());
    // Past the renewed TTL, the next asker takes it; the first guard learns it lost it.
    let start = Instant::now();
    let second = lease.acquire().await.unwrap();
    assert_eq!(start.elapsed(), ms(40));
    assert!(first.is_lost());
    assert!(!first.renew());
    assert!(!second.is_lost());
    drop(first); // gives nothing back: it had lost the lease
    assert!(lease.try_acquire().is_none());
    assert_eq!(lease.status().revoked, 1);
}

#[tokio::test(start_paused = true)]
async fn a_quota_with_a_period_waits_for_the_next_and_one_without_fails_when_spent() {
    let tokens = Quota::per("tokens", 3.0, ms(1000));
    let agent = fan(&["a", "b", "c", "d", "e"], 0, |o| {
        o.quota(tokens.clone(), 1.0)
    });
    let (report, started) = starts(&agent).await;
    assert!(report.is_success());
    assert_eq!(at(&started), [0, 0, 0, 1000, 1000]);

    let budget = Quota::new("budget", 2.5);
    let agent = fan(&["a", "b", "c"], 0, |o| o.quota(budget.clone(), 1.0));
    let report = agent.start().unwrap().wait().await;
    match report.error {
        Some(FlowError::QuotaExhausted {
            ref who,
            ref quota,
            ref amount,
            ref limit,
        }) => {
            assert_eq!(
                (
                    who.as_str(),
                    quota.as_str(),
                    amount.as_str(),
                    limit.as_str()
                ),
                ("state `c`", "budget", "1", "2.5")
            );
        }
        ref other => panic!("unexpected {other:?}"),
    }
    assert_eq!(report.dead_letters[0].kind, FailureKind::Coordination);

    // Directly: a take waits for the next period.
    let quota = Quota::per("direct", 2.0, ms(500));
    let start = Instant::now();
    quota.take(1.5).await.unwrap();
    assert!(!quota.try_take(1.0));
    quota.take(1.0).await.unwrap();
    assert_eq!(start.elapsed(), ms(500));
    assert!(matches!(
        quota.take(2.5).await,
        Err(FlowError::CoordinationRequestTooLarge { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_the_primitive_is_refused_before_the_run() {
    let gpu = FlowSemaphore::new("gpu", 2);
    let mut agent = Agent::new("greedy");
    agent
        .add_state("train", |_ctx: Context| async { Ok(Next::End) })
        .semaphore_permits(gpu, 3);
    let error = agent.run().await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("state `train` asks semaphore `gpu` for 3, more than its 2"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn waiting_is_visible_counted_and_bounded_by_acquire_timeout() {
    let gpu = FlowSemaphore::new("gpu", 1);
    let mut agent = Agent::new("visible");
    agent.add_state("fork", |_ctx: Context| async {
        Ok(Next::parallel(["holder", "waiter"]))
    });
    agent
        .add_state("holder", |_ctx: Context| async {
            tokio::time::sleep(ms(500)).await;
            Ok(Next::End)
        })
        .semaphore(gpu.clone());
    agent
        .add_state("waiter", |_ctx: Context| async { Ok(Next::End) })
        .semaphore(gpu.clone())
        .acquire_timeout(ms(200));
    let handle = agent.start().unwrap();
    tokio::time::sleep(ms(100)).await;
    let blocked = handle.blocked().await;
    assert_eq!(blocked.len(), 1);
    assert_eq!(
        blocked[0].waits_for,
        ["semaphore `gpu`: it waits for a release, or behind others of this run"]
    );
    let status = agent.coordination_status().unwrap();
    assert_eq!(status.primitives.len(), 1);
    let gpu_status = &status.primitives[0];
    assert_eq!(gpu_status.kind, PrimitiveKind::Semaphore);
    assert_eq!((gpu_status.in_use.as_str(), gpu_status.waiting), ("1", 1));
    assert_eq!(gpu_status.holders.len(), 1);
    assert!(
        gpu_status.holders[0]
            .holder
            .starts_with("state `holder` of run 1"),
        "{:?}",
        gpu_status.holders
    );
    assert_eq!(gpu_status.holders[0].held_for, ms(100));
    let report = handle.wait().await;
    match &report.error {
        Some(FlowError::AdmissionTimeout {
            state,
            gate,
            waited,
            ..
        }) => {
            assert_eq!(
                (state.as_str(), gate.as_str(), *waited),
                ("waiter", "semaphore `gpu`", ms(200))
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(gpu.status().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn reset_coordination_releases_what_is_held_and_wakes_the_waiters() {
    let lock = FlowMutex::new("stuck");
    let mut agent = Agent::new("recovery");
    agent
        .add_state("wait", |_ctx: Context| async { Ok(Next::End) })
        .mutex(lock.clone());
    // Something outside the agent holds the mutex and never gives it back.
    let stuck = lock.lock().await.unwrap();
    let handle = agent.start().unwrap();
    tokio::time::sleep(ms(1000)).await;
    assert_eq!(handle.status(), AgentStatus::Running);
    agent.reset_coordination().unwrap();
    let report = handle.wait().await;
    assert!(report.is_success());
    assert!(stuck.is_lost());
}

/// Two states that each hold one mutex through the scheduler and take the other inside.
fn crossing(first_wait: u64, second_wait: u64) -> (Agent, FlowMutex, FlowMutex) {
    let (left, right) = (FlowMutex::new("left"), FlowMutex::new("right"));
    let mut agent = Agent::new("crossing");
    agent.add_state("fork", |_ctx: Context| async {
        Ok(Next::parallel(["a", "b"]))
    });
    let (l, r) = (left.clone(), right.clone());
    agent
        .add_state_with("a", Arc::new(r), move |right, _ctx: Context| async move {
            tokio::time::sleep(ms(first_wait)).await;
            let _other = right.lock().await?;
            tokio::time::sleep(ms(5)).await;
            Ok(Next::End)
        })
        .mutex(left.clone())
        .retry(RetryPolicy {
            max_retries: 1,
            initial_delay: ms(100),
            ..RetryPolicy::DEFAULT
        });
    agent
        .add_state_with("b", Arc::new(l), move |left, _ctx: Context| async move {
            tokio::time::sleep(ms(second_wait)).await;
            let _other = left.lock().await?;
            tokio::time::sleep(ms(5)).await;
            Ok(Next::End)
        })
        .mutex(right.clone())
        .retry(RetryPolicy {
            max_retries: 1,
            initial_delay: ms(100),
            ..RetryPolicy::DEFAULT
        });
    (agent, left, right)
}

#[tokio::test(start_paused = true)]
async fn a_deadlock_is_refused_when_it_closes_and_the_retry_gets_through() {
    // Under several orderings: whichever state waits second closes the cycle and is refused.
    for (first_wait, second_wait, refused) in [(10, 20, "b"), (20, 10, "a"), (1, 30, "b")] {
        let (agent, left, right) = crossing(first_wait, second_wait);
        let (handle, mut events) = agent.start_watched(Context::new()).unwrap();
        let mut retried = Vec::new();
        while let Some(event) = events.next().await {
            if let EventKind::StateRetrying { state, error, .. } = event.unwrap().kind {
                retried.push((state.to_string(), error));
            }
        }
        let report = handle.wait().await;
        assert!(report.is_success(), "{:?}", report.error);
        assert_eq!(retried.len(), 1, "{retried:?}");
        let (state, error) = &retried[0];
        assert_eq!(state, refused);
        let holder = if refused == "a" { "b" } else { "a" };
        assert!(error.starts_with("state `"), "{error}");
        assert!(error.contains("deadlock refused"), "{error}");
        assert!(
            error.contains(&format!(
                "state `{holder}` of run 1 (workflow `crossing`) holds mutex"
            )),
            "{error}"
        );
        assert!(
            error.contains(&format!(
                "state `{refused}` of run 1 (workflow `crossing`) holds mutex"
            )),
            "{error}"
        );
        assert!(
            error.contains("mutex `left`") && error.contains("mutex `right`"),
            "{error}"
        );
        assert_eq!(report.state(refused).unwrap().attempts, 2);
        assert!(left.try_lock().is_some() && right.try_lock().is_some());
    }
}

/// Runs `agent`, returning its report and the errors of the attempts that were retried, by
/// state.
async fn run_noting_retries(agent: &Agent) -> (RunReport, Vec<(String, String)>) {
    let (handle, mut events) = agent.start_watched(Context::new()).unwrap();
    let mut retried = Vec::new();
    while let Some(event) = events.next().await {
        if let EventKind::StateRetrying { state, error, .. } = event.unwrap().kind {
            retried.push((state.to_string(), error));
        }
    }
    (handle.wait().await, retried)
}

#[tokio::test(start_paused = true)]
async fn a_deadlock_among_guards_taken_inside_states_names_the_states() {
    // No primitive is attached to the states: each takes both inside its body, in opposite
    // orders. Whichever waits second closes the cycle and is refused, and the message names
    // both states (not the tasks they happen to run on).
    for (first_wait, second_wait, refused) in [(10, 20, "b"), (20, 10, "a")] {
        let (left, right) = (FlowMutex::new("left"), FlowMutex::new("right"));
        let mut agent = Agent::new("inside");
        agent.add_state("fork", |_ctx: Context| async {
            Ok(Next::parallel(["a", "b"]))
        });
        let retry = RetryPolicy {
            max_retries: 1,
            initial_delay: ms(100),
            ..RetryPolicy::DEFAULT
        };
        for (name, wait, first, second) in [
            ("a", first_wait, left.clone(), right.clone()),
            ("b", second_wait, right.clone(), left.clone()),
        ] {
            agent
                .add_state_with(
                    name,
                    Arc::new((first, second)),
                    move |locks, _ctx: Context| async move {
                        let _first = locks.0.lock().await?;
                        tokio::time::sleep(ms(wait)).await;
                        let _second = locks.1.lock().await?;
                        tokio::time::sleep(ms(5)).await;
                        Ok(Next::End)
                    },
                )
                .retry(retry);
        }
        let (report, retried) = run_noting_retries(&agent).await;
        assert!(report.is_success(), "{:?}", report.error);
        assert_eq!(report.state(refused).unwrap().attempts, 2);
        assert_eq!(retried.len(), 1, "{retried:?}");
        let (state, error) = &retried[0];
        assert_eq!(state, refused);
        let holder = if refused == "a" { "b" } else { "a" };
        for state in [holder, refused] {
            assert!(
                error.contains(&format!(
                    "state `{state}` of run 1 (workflow `inside`) holds mutex"
                )),
                "{error}"
            );
        }
        assert!(!error.contains("task "), "{error}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_guard_taken_in_a_first_poll_on_the_coordinator_stays_with_its_state() {
    // `a` is the only ready state, so its first poll runs on the run's coordinator: the
    // mutex it takes there is held by the attempt, not by the coordinator's task, and a cycle
    // through it (with a task outside any run) is found when `a` moves to a task of its own.
    let (left, right) = (FlowMutex::new("left"), FlowMutex::new("right"));
    let outside = tokio::spawn({
        let (left, right) = (left.clone(), right.clone());
        async move {
            let _right = right.lock().await.unwrap();
            tokio::time::sleep(ms(10)).await;
            let _left = left.lock().await.unwrap();
            tokio::time::Instant::now()
        }
    });
    let mut agent = Agent::new("solo");
    agent
        .add_state_with(
            "a",
            Arc::new((left.clone(), right.clone())),
            |locks, _ctx: Context| async move {
                let _left = locks.0.lock().await?;
                tokio::time::sleep(ms(20)).await;
                let _right = locks.1.lock().await?;
                Ok(Next::End)
            },
        )
        .retry(RetryPolicy {
            max_retries: 1,
            initial_delay: ms(100),
            ..RetryPolicy::DEFAULT
        });
    let start = tokio::time::Instant::now();
    let (report, retried) = run_noting_retries(&agent).await;
    assert!(report.is_success(), "{:?}", report.error);
    assert_eq!(report.state("a").unwrap().attempts, 2);
    assert_eq!(retried.len(), 1, "{retried:?}");
    let error = &retried[0].1;
    assert!(error.contains("deadlock refused"), "{error}");
    assert!(
        error.contains(
            "state `a` of run 1 (workflow `solo`) holds mutex `left` and waits for mutex `right`"
        ),
        "{error}"
    );
    assert!(
        error.contains("holds mutex `right` and waits for mutex `left`"),
        "{error}"
    );
    // The refusal let `left` go at 20 ms: the outside task got it then.
    assert_eq!(outside.await.unwrap() - start, ms(20));
}

struct Trainer;

#[workflow]
impl Trainer {
    #[state(entry)]
    async fn start(&self, _ctx: &Context) -> StateResult {
        parallel!(train_a, train_b, train_c, report)
    }

    #[state(semaphore(name = "gpu", permits = 2))]
    async fn train_a(&self, _ctx: &Context) -> StateResult {
        tokio::time::sleep(Duration::from_millis(100)).await;
        end!()
    }

    #[state(semaphore(name = "gpu", permits = 2))]
    async fn train_b(&self, _ctx: &Context) -> StateResult {
        tokio::time::sleep(Duration::from_millis(100)).await;
        end!()
    }

    #[state(semaphore(name = "gpu", permits = 2, take = 2))]
    async fn train_c(&self, _ctx: &Context) -> StateResult {
        tokio::time::sleep(Duration::from_millis(100)).await;
        end!()
    }

    #[state(mutex = "report", quota(name = "pages", limit = 1, amount = 1))]
    async fn report(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

#[tokio::test(start_paused = true)]
async fn macro_primitives_are_enforced_and_shared_by_name() {
    let agent = Trainer.agent();
    let start = Instant::now();
    let report = agent.run().await.unwrap();
    // a and b share the two GPU permits, then c takes both.
    assert_eq!(start.elapsed(), ms(200));
    assert_eq!(report.max_concurrency, 3); // a, b and report at once
    let status = agent.coordination_status().unwrap();
    let names: Vec<(&str, PrimitiveKind, &str)> = status
        .primitives
        .iter()
        .map(|p| (&*p.name, p.kind, p.capacity.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("gpu", PrimitiveKind::Semaphore, "2"),
            ("report", PrimitiveKind::Mutex, "1"),
            ("pages", PrimitiveKind::Quota, "1")
        ]
    );
    assert_eq!(status.primitives[0].granted, 3);
    // The quota of one page is spent: a second run fails at `report`.
    let second = agent.start().unwrap().wait().await;
    assert!(
        matches!(second.error, Some(FlowError::QuotaExhausted { .. })),
        "{:?}",
        second.error
    );
}

#[tokio::test(start_paused = true)]
async fn nothing_is_consumed_for_a_state_that_then_waits() {
    // 10 runs × 4 calls through a sliding window of 20 per second and 4 permits, 20 ms each:
    // 20 calls in the first 100 ms, the other 20 from 1 s on, all done at 1.1 s: no admission
    // of the window is lost to a state that then waited for a permit.
    let window = fluffy_flow::RateLimit::sliding_window(20, ms(1000)).unwrap();
    let permits = FlowSemaphore::new("in_flight", 4);
    let agent = fan(&["a", "b", "c", "d"], 20, |o| {
        o.rate_limit(window.clone()).semaphore(permits.clone())
    });
    let start = Instant::now();
    let runs: Vec<_> = (0..10).map(|_| agent.start().unwrap()).collect();
    for run in runs {
        assert!(run.wait().await.is_success());
    }
    assert_eq!(start.elapsed(), ms(1100));

    // Two quotas: a state admitted by the first and made to wait by the second gives the
    // first back, so the first counts only the starts that happened.
    let calls = Quota::new("calls", 10.0);
    let per_second = Quota::per("per_second", 1.0, ms(1000));
    let agent = fan(&["x", "y", "z"], 0, |o| {
        o.quota(calls.clone(), 1.0).quota(per_second.clone(), 1.0)
    });
    let (report, started) = starts(&agent).await;
    assert!(report.is_success());
    assert_eq!(at(&started), [0, 1000, 2000]);
    assert_eq!(calls.status().in_use, "3");
}

#[test]
fn runs_on_several_threads_lose_no_admission_either() {
    // The same gateway load on a multi-thread runtime, on the real clock: runs on different
    // threads count and give back admissions of one window in between each other. A lost
    // admission costs a whole window (this took 2.0 s when a give-back could miss); the
    // bound leaves room for a slow machine.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let window = fluffy_flow::RateLimit::sliding_window(20, ms(1000)).unwrap();
        let permits = FlowSemaphore::new("in_flight", 4);
        let agent = fan(&["a", "b", "c", "d"], 20, |o| {
            o.rate_limit(window.clone()).semaphore(permits.clone())
        });
        let start = std::time::Instant::now();
        let runs: Vec<_> = (0..10).map(|_| agent.start().unwrap()).collect();
        for run in runs {
            assert!(run.wait().await.is_success());
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= ms(1000) && elapsed < ms(1800), "{elapsed:?}");
    });
}

#[tokio::test(start_paused = true)]
async fn a_barrier_starts_its_parties_together() {
    use fluffy_flow::FlowBarrier;
    // Three branches reach the barrier at different times; all start when the last arrives.
    let merge = FlowBarrier::new("merge", 3, ms(1000));
    let mut agent = Agent::new("phases");
    agent.add_state("fork", |_ctx: Context| async {
        Ok(Next::parallel(["prep_a", "prep_b", "prep_c"]))
    });
    for (prep, work, phase) in [
        ("prep_a", 10, "go_a"),
        ("prep_b", 50, "go_b"),
        ("prep_c", 30, "go_c"),
    ] {
        agent
            .add_state(prep, move |_ctx: Context| async move {
                tokio::time::sleep(ms(work)).await;
                Ok(Next::to(phase))
            })
            .successors([phase]);
        agent
            .add_state(phase, |_ctx: Context| async { Ok(Next::End) })
            .barrier(merge.clone())
            .terminal();
    }
    let (report, started) = starts(&agent).await;
    assert!(report.is_success(), "{:?}", report.error);
    let phases: Vec<(String, u64)> = started
        .into_iter()
        .filter(|(n, _)| n.starts_with("go"))
        .collect();
    assert_eq!(
        phases,
        [
            ("go_a".to_string(), 50),
            ("go_b".to_string(), 50),
            ("go_c".to_string(), 50)
        ]
    );
    assert_eq!(merge.counts(), (1, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_barrier_round_not_complete_in_time_fails_every_waiter() {
    use fluffy_flow::FlowBarrier;
    let merge = FlowBarrier::new("merge", 3, ms(100));
    let agent = fan(&["a", "b"], 0, |o| {
        o.barrier(merge.clone()).on_error("handled")
    });
    let mut agent = agent;
    agent.add_state("handled", |_ctx: Context| async { Ok(Next::End) });
    let (report, started) = starts(&agent).await;
    assert!(report.is_success(), "{:?}", report.error);
    // Both failed at the barrier's timeout and went to their handler (where the two branches
    // join: it runs once).
    let handled: Vec<u64> = started
        .iter()
        .filter(|(n, _)| n == "handled")
        .map(|(_, at)| *at)
        .collect();
    assert_eq!(handled, [100]);
    assert_eq!(report.dead_letters.len(), 2);
    for letter in &report.dead_letters {
        assert!(
            letter
                .error
                .contains("waited at barrier `merge` for 100ms and not all 3 parties arrived"),
            "{}",
            letter.error
        );
    }
    assert_eq!(merge.counts(), (0, 1, 0));

    // Directly: two tasks and a third that comes late.
    let direct = FlowBarrier::new("direct", 2, ms(100));
    let (first, second) = tokio::join!(direct.wait(), async {
        tokio::time::sleep(ms(60)).await;
        direct.wait().await
    });
    assert!(first.is_ok() && second.is_ok());
    let alone = direct.wait().await;
    assert!(
        matches!(alone, Err(FlowError::BarrierTimeout { parties: 2, .. })),
        "{alone:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_state_let_out_of_one_gate_and_parked_at_another_asks_at_the_right_instant() {
    // The semaphore is asked first, then the rate limit: the second state gets the permit
    // when the first ends (10 ms), is refused by the limit until 1 s, and must ask the limit
    // at 1 s, not at 10 ms again (which once made the scheduler spin at 1 s).
    let permit = FlowSemaphore::new("one", 1);
    let limit = fluffy_flow::RateLimit::token_bucket(1.0, 1).unwrap();
    let agent = fan(&["a", "b", "c"], 10, |o| {
        o.semaphore(permit.clone()).rate_limit(limit.clone())
    });
    let (report, started) = starts(&agent).await;
    assert!(report.is_success());
    assert_eq!(at(&started), [0, 1000, 2000]);
    assert_eq!(permit.status().in_use, "0");
}

#[tokio::test(start_paused = true)]
async fn a_task_waiting_for_a_quota_period_is_not_taken_for_a_deadlock() {
    let quota = Quota::per("per_second", 2.0, ms(1000));
    let task = tokio::spawn({
        let quota = quota.clone();
        async move {
            quota.take(2.0).await?;
            // Waits for the next period: the quota is not "held" by this task.
            quota.take(1.0).await?;
            Ok::<_, FlowError>(Instant::now())
        }
    });
    let start = Instant::now();
    let finished = task.await.unwrap().unwrap();
    assert_eq!(finished - start, ms(1000));
}

#[tokio::test(start_paused = true)]
async fn a_state_waiting_for_the_resource_pool_is_listed_by_blocked() {
    use fluffy_flow::{ResourcePool, ResourceRequirements};
    let one_cpu = ResourceRequirements {
        cpu: 1.0,
        ..ResourceRequirements::NONE
    };
    let mut agent = fan(&["first", "second"], 100, move |o| o.resources(one_cpu));
    agent.resource_pool(ResourcePool::new(one_cpu));
    let handle = agent.start().unwrap();
    tokio::time::sleep(ms(30)).await;
    let blocked = handle.blocked().await;
    assert_eq!(blocked.len(), 1, "{blocked:?}");
    assert_eq!(&*blocked[0].state, "second");
    assert_eq!(blocked[0].waits_for, ["the resource pool: short of cpu"]);
    assert_eq!(blocked[0].waited, ms(30));
    assert!(handle.wait().await.is_success());
}
