//! Resource-aware scheduling: admission against a pool, priority and aging, release on every
//! exit path, shared pools, observability, and a property test over random requirements.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{ResourcePool, ResourceRequirements};
use proptest::prelude::*;
use tokio::time::{Instant, sleep};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn cpus(n: f64) -> ResourceRequirements {
    ResourceRequirements {
        cpu: n,
        ..ResourceRequirements::NONE
    }
}

/// Counts what the states themselves hold (in thousandths of a CPU), independently of the pool.
#[derive(Clone, Default)]
struct Meter {
    now: Arc<AtomicU64>,
    peak: Arc<AtomicU64>,
}

impl Meter {
    fn enter(&self, milli: u64) {
        let now = self.now.fetch_add(milli, Ordering::SeqCst) + milli;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self, milli: u64) {
        self.now.fetch_sub(milli, Ordering::SeqCst);
    }
}

fn fan_of_workers(name: &str, n: usize, need: f64, work: Duration, meter: &Meter) -> Agent {
    let mut agent = Agent::new(name);
    agent.add_state("start", move |_ctx: Context| async move {
        Ok(Next::parallel((0..n).map(|i| format!("w{i}"))))
    });
    for i in 0..n {
        let meter = meter.clone();
        agent
            .add_state(format!("w{i}"), move |_ctx: Context| {
                let meter = meter.clone();
                async move {
                    let milli = (need * 1000.0) as u64;
                    meter.enter(milli);
                    sleep(work).await;
                    meter.leave(milli);
                    Ok(Next::End)
                }
            })
            .resources(cpus(need));
    }
    agent
}

#[tokio::test(start_paused = true)]
async fn a_state_starts_only_when_the_pool_can_grant_it() {
    let meter = Meter::default();
    let mut agent = fan_of_workers("cpu bound", 12, 1.0, ms(10), &meter);
    let pool = ResourcePool::new(cpus(4.0));
    agent.resource_pool(pool.clone());
    let start = Instant::now();
    let report = agent.run().await.unwrap();
    assert_eq!(
        start.elapsed(),
        ms(30),
        "twelve 10 ms states, four at a time"
    );
    assert_eq!(meter.peak.load(Ordering::SeqCst), 4000);
    assert_eq!(report.max_concurrency, 4);
    let cpu = pool.usage_stats()[0];
    assert_eq!(
        (cpu.capacity, cpu.in_use, cpu.peak, cpu.grants),
        (4.0, 0.0, 4.0, 12)
    );
    assert!(cpu.waits >= 1);
    assert!(pool.allocations().is_empty() && pool.waiting().is_empty());
}

#[tokio::test]
async fn a_request_larger_than_the_pool_is_an_error_before_anything_runs() {
    let mut agent = Agent::new("greedy");
    agent.resource_pool(ResourcePool::new(ResourceRequirements {
        cpu: 2.0,
        gpu: 0.0,
        ..cpus(2.0)
    }));
    agent
        .add_state("train", |_ctx: Context| async { Ok(Next::End) })
        .resources(ResourceRequirements {
            cpu: 4.0,
            gpu: 1.0,
            ..ResourceRequirements::NONE
        });
    let error = agent.validate().unwrap_err();
    assert!(
        matches!(&error, FlowError::ResourceRequestTooLarge { state, kinds, .. } if state == "train" && kinds == &["cpu", "gpu"]),
        "{error}"
    );
    assert!(error.to_string().starts_with(
        "state `train` of workflow `greedy` needs more cpu, gpu than the resource pool has"
    ));
}

#[tokio::test(start_paused = true)]
async fn higher_priority_goes_first_when_the_pool_is_short() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut agent = Agent::new("priorities");
    agent.resource_pool(ResourcePool::new(cpus(1.0)));
    agent.add_state("start", |_ctx: Context| async {
        Ok(Next::parallel(["low", "normal", "critical", "high"]))
    });
    for (name, priority) in [
        ("low", Priority::Low),
        ("normal", Priority::Normal),
        ("critical", Priority::Critical),
        ("high", Priority::High),
    ] {
        let order = Arc::clone(&order);
        agent
            .add_state(name, move |_ctx: Context| {
                let order = Arc::clone(&order);
                async move {
                    order.lock().unwrap().push(name);
                    sleep(ms(5)).await;
                    Ok(Next::End)
                }
            })
            .priority(priority)
            .resources(cpus(1.0));
    }
    agent.run().await.unwrap();
    assert_eq!(
        *order.lock().unwrap(),
        ["critical", "high", "normal", "low"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_low_priority_state_is_not_starved_by_a_stream_of_high_ones() {
    let starts = Arc::new(Mutex::new(Vec::new()));
    let mut agent = Agent::new("aging");
    agent
        .resource_pool(ResourcePool::new(cpus(1.0)))
        .priority_aging(ms(250));
    agent.add_state("start", |_ctx: Context| async {
        Ok(Next::parallel(["low", "h0"]))
    });
    let log = Arc::clone(&starts);
    agent
        .add_state("low", move |_ctx: Context| {
            let log = Arc::clone(&log);
            async move {
                log.lock()
                    .unwrap()
                    .push(("low".to_string(), Instant::now()));
                sleep(ms(100)).await;
                Ok(Next::End)
            }
        })
        .priority(Priority::Low)
        .resources(cpus(1.0))
        .terminal();
    for i in 0..10 {
        let log = Arc::clone(&starts);
        agent
            .add_state(format!("h{i}"), move |_ctx: Context| {
                let log = Arc::clone(&log);
                async move {
                    log.lock().unwrap().push((format!("h{i}"), Instant::now()));
                    sleep(ms(100)).await;
                    Ok(if i < 9 {
                        Next::to(format!("h{}", i + 1))
                    } else {
                        Next::End
                    })
                }
            })
            .priority(Priority::High)
            .resources(cpus(1.0))
            // Declared, so that the join rule does not hold each `h` for the `low` branch.
            .successors(if i < 9 {
                vec![format!("h{}", i + 1)]
            } else {
                vec![]
            });
    }
    let origin = Instant::now();
    agent.run().await.unwrap();
    let starts = starts.lock().unwrap();
    let low = starts.iter().position(|(name, _)| name == "low").unwrap();
    // Every High state gets a 500 ms head start; the Low one, ready at 0, goes ahead of any
    // High state that became ready after 500 ms.
    let seen: Vec<(String, Duration)> = starts
        .iter()
        .map(|(n, t)| (n.clone(), *t - origin))
        .collect();
    assert_eq!(starts[low].1 - origin, ms(500), "{seen:?}");
    assert_eq!(low, 5, "after h0..h4, before h5..h9");
}

#[tokio::test(start_paused = true)]
async fn grants_come_back_after_a_panic_a_timeout_and_a_cancellation() {
    let pool = ResourcePool::new(cpus(1.0));
    let mut agent = Agent::new("unlucky");
    agent.resource_pool(pool.clone());
    agent
        .add_state("panics", |_ctx: Context| async {
            sleep(ms(5)).await;
            if true {
                panic!("boom");
            }
            Ok(Next::End)
        })
        .resources(cpus(1.0));
    let _ = agent.start().unwrap().wait().await;
    assert_eq!(pool.usage_stats()[0].in_use, 0.0, "after a panic");

    let mut agent = Agent::new("slow");
    agent.resource_pool(pool.clone());
    agent
        .add_state("sleeps", |_ctx: Context| async {
            sleep(Duration::from_secs(10)).await;
            Ok(Next::End)
        })
        .timeout(ms(20))
        .resources(cpus(1.0));
    let _ = agent.start().unwrap().wait().await;
    assert_eq!(pool.usage_stats()[0].in_use, 0.0, "after a timeout");

    let handle = agent.start().unwrap();
    sleep(ms(5)).await;
    assert_eq!(pool.allocations().len(), 1);
    assert_eq!(&*pool.allocations()[0].state, "sleeps");
    handle.cancel();
    let _ = handle.wait().await;
    assert_eq!(pool.usage_stats()[0].in_use, 0.0, "after a cancellation");
}

#[tokio::test(start_paused = true)]
async fn one_pool_shared_by_two_agents_running_at_once() {
    let meter = Meter::default();
    let pool = ResourcePool::new(cpus(2.0));
    let mut first = fan_of_workers("first", 4, 1.0, ms(10), &meter);
    let mut second = fan_of_workers("second", 4, 1.0, ms(10), &meter);
    first.resource_pool(pool.clone());
    second.resource_pool(pool.clone());
    let start = Instant::now();
    let (a, b) = tokio::join!(first.run(), second.run());
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(
        meter.peak.load(Ordering::SeqCst),
        2000,
        "never more than the pool"
    );
    assert_eq!(start.elapsed(), ms(40), "eight 10 ms states, two at a time");
}

#[tokio::test(start_paused = true)]
async fn the_pool_reports_who_waits_and_for_how_long() {
    let pool = ResourcePool::new(cpus(1.0));
    let meter = Meter::default();
    let mut agent = fan_of_workers("observed", 2, 1.0, ms(30), &meter);
    agent.resource_pool(pool.clone());
    let handle = agent.start().unwrap();
    sleep(ms(10)).await;
    let waiting = pool.waiting();
    assert_eq!(waiting.len(), 1);
    assert_eq!(
        (&*waiting[0].agent, waiting[0].waited),
        ("observed", ms(10))
    );
    assert_eq!(waiting[0].needs, cpus(1.0));
    handle.wait().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random needs and priorities on a small pool: at no instant do the states hold more than
    /// the pool (measured by the states), every state runs exactly once, the run completes.
    #[test]
    fn the_pool_is_never_exceeded(
        needs in proptest::collection::vec((1u64..=4, 0u64..=2048, 0usize..4, 1u64..20), 1..24),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        let capacity = (4000u64, 2048u64);
        let held = Arc::new(Mutex::new((0u64, 0u64, 0u64, 0u64)));
        let runs = Arc::new(AtomicU64::new(0));
        let mut agent = Agent::new("random");
        agent.resource_pool(ResourcePool::new(ResourceRequirements { cpu: 4.0, memory_mb: 2048, ..ResourceRequirements::NONE }));
        let n = needs.len();
        agent.add_state("start", move |_ctx: Context| async move {
            Ok(Next::parallel((0..n).map(|i| format!("s{i}"))))
        });
        for (i, &(cpu_quarters, memory, priority, work)) in needs.iter().enumerate() {
            let (held, runs) = (Arc::clone(&held), Arc::clone(&runs));
            let cpu_milli = cpu_quarters * 1000 / 2; // 0.5 to 2 CPUs
            let priority = [Priority::Low, Priority::Normal, Priority::High, Priority::Critical][priority];
            agent
                .add_state(format!("s{i}"), move |_ctx: Context| {
                    let (held, runs) = (Arc::clone(&held), Arc::clone(&runs));
                    async move {
                        {
                            let mut h = held.lock().unwrap();
                            h.0 += cpu_milli;
                            h.1 += memory;
                            h.2 = h.2.max(h.0);
                            h.3 = h.3.max(h.1);
                        }
                        sleep(ms(work)).await;
                        {
                            let mut h = held.lock().unwrap();
                            h.0 -= cpu_milli;
                            h.1 -= memory;
                        }
                        runs.fetch_add(1, Ordering::SeqCst);
                        Ok(Next::End)
                    }
                })
                .priority(priority)
                .resources(ResourceRequirements { cpu: cpu_milli as f64 / 1000.0, memory_mb: memory, ..ResourceRequirements::NONE });
        }
        let report = runtime.block_on(agent.run()).unwrap();
        prop_assert_eq!(report.status, AgentStatus::Completed);
        prop_assert_eq!(runs.load(Ordering::SeqCst), n as u64);
        let h = held.lock().unwrap();
        prop_assert!(h.2 <= capacity.0, "cpu peak {} over 4000", h.2);
        prop_assert!(h.3 <= capacity.1, "memory peak {} over 2048", h.3);
        for state in report.states.iter().filter(|s| s.name.starts_with('s')) {
            prop_assert_eq!(state.runs, 1);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn waiting_past_the_acquisition_timeout_fails_the_attempt() {
    let mut agent = Agent::new("impatient");
    agent.resource_pool(ResourcePool::new(cpus(1.0)));
    agent
        .add_state("start", |_ctx: Context| async {
            Ok(Next::parallel(["hog", "quick"]))
        })
        .successors(["hog", "quick"]);
    agent
        .add_state("hog", |_ctx: Context| async {
            sleep(ms(100)).await;
            Ok(Next::End)
        })
        .priority(Priority::High)
        .resources(cpus(1.0))
        .terminal();
    agent
        .add_state("quick", |_ctx: Context| async { Ok(Next::End) })
        .resources(cpus(1.0))
        .acquire_timeout(ms(30))
        .terminal();
    let start = Instant::now();
    let report = agent.start().unwrap().wait().await;
    assert_eq!(
        start.elapsed(),
        ms(30),
        "the run fails when the wait times out"
    );
    assert_eq!(
        report.error,
        Some(FlowError::ResourceTimeout {
            state: "quick".into(),
            attempts: 1,
            waited: ms(30)
        })
    );
    assert_eq!(report.state("quick").unwrap().status, StateStatus::Timeout);
    assert_eq!(report.state("quick").unwrap().runs, 0, "it never started");
    assert_eq!(
        report.dead_letters[0].kind,
        fluffy_flow::FailureKind::ResourceTimeout
    );
    assert_eq!(report.state("hog").unwrap().status, StateStatus::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn quotas_cap_an_agent_and_a_state_below_the_pool() {
    let pool = ResourcePool::new(cpus(8.0));
    pool.limit_agent("capped", cpus(3.0));
    let meter = Meter::default();
    let mut agent = fan_of_workers("capped", 6, 1.0, ms(10), &meter);
    agent.resource_pool(pool.clone());
    let start = Instant::now();
    agent.run().await.unwrap();
    assert_eq!(
        meter.peak.load(Ordering::SeqCst),
        3000,
        "the agent's quota, not the pool's 8"
    );
    assert_eq!(start.elapsed(), ms(20));

    pool.limit_state("capped", "w0", cpus(0.5));
    let error = fan_of_workers("capped", 1, 1.0, ms(1), &meter)
        .resource_pool(pool.clone())
        .validate()
        .unwrap_err();
    assert!(
        matches!(error, FlowError::ResourceRequestTooLarge { ref state, .. } if state == "w0"),
        "{error}"
    );

    // A state quota below the agent's: two runs of one state share it.
    let pool = ResourcePool::new(cpus(8.0));
    pool.limit_state("per state", "w0", cpus(1.0));
    let meter = Meter::default();
    let mut first = fan_of_workers("per state", 1, 1.0, ms(10), &meter);
    first.resource_pool(pool.clone());
    let second = first.clone();
    let start = Instant::now();
    let (a, b) = tokio::join!(first.run(), second.run());
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(meter.peak.load(Ordering::SeqCst), 1000);
    assert_eq!(start.elapsed(), ms(20), "the two runs of w0 took turns");
}

#[tokio::test(start_paused = true)]
async fn a_critical_state_preempts_a_preemptible_low_one_which_runs_again_later() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut agent = Agent::new("preempting");
    agent.resource_pool(ResourcePool::new(cpus(1.0)).with_preemption());
    agent
        .add_state("start", |_ctx: Context| async {
            Ok(Next::parallel(["batch", "wait"]))
        })
        .successors(["batch", "wait"]);
    let l = Arc::clone(&log);
    agent
        .add_state("batch", move |_ctx: Context| {
            let log = Arc::clone(&l);
            async move {
                log.lock().unwrap().push(("batch starts", Instant::now()));
                sleep(ms(1000)).await;
                log.lock().unwrap().push(("batch done", Instant::now()));
                Ok(Next::End)
            }
        })
        .priority(Priority::Low)
        .resources(cpus(1.0))
        .preemptible()
        .terminal();
    agent
        .add_state("wait", |_ctx: Context| async {
            sleep(ms(10)).await;
            Ok(Next::to("urgent"))
        })
        .successors(["urgent"]);
    let l = Arc::clone(&log);
    agent
        .add_state("urgent", move |_ctx: Context| {
            let log = Arc::clone(&l);
            async move {
                log.lock().unwrap().push(("urgent starts", Instant::now()));
                sleep(ms(50)).await;
                Ok(Next::End)
            }
        })
        .priority(Priority::Critical)
        .resources(cpus(1.0))
        .terminal();
    let origin = Instant::now();
    let report = agent.run().await.unwrap();
    let log: Vec<(&str, Duration)> = log
        .lock()
        .unwrap()
        .iter()
        .map(|(e, t)| (*e, *t - origin))
        .collect();
    assert_eq!(
        log,
        [
            ("batch starts", ms(0)),
            ("urgent starts", ms(10)),
            ("batch starts", ms(60)),
            ("batch done", ms(1060))
        ]
    );
    assert_eq!(
        report.state("batch").unwrap().runs,
        2,
        "preempted, then run again from the start"
    );
    assert_eq!(
        report.state("batch").unwrap().status,
        StateStatus::Completed
    );

    // Without preemption the urgent state waits for the batch.
    let mut patient = agent.clone();
    patient.resource_pool(ResourcePool::new(cpus(1.0)));
    let report = patient.run().await.unwrap();
    assert_eq!(report.state("batch").unwrap().runs, 1);
    assert_eq!(report.duration, ms(1050));
}

#[tokio::test(start_paused = true)]
async fn a_quota_set_after_a_run_is_checked_when_the_next_run_starts() {
    let pool = ResourcePool::new(cpus(4.0));
    let meter = Meter::default();
    let mut agent = fan_of_workers("later", 2, 2.0, ms(1), &meter);
    agent.resource_pool(pool.clone());
    assert!(agent.run().await.is_ok());
    pool.limit_agent("later", cpus(1.0));
    // Two CPUs per state can never fit a one-CPU quota: an error, not a run that waits forever.
    assert!(
        matches!(agent.run().await, Err(FlowError::Invalid { errors, .. }) if errors.len() == 2)
    );
}

/// A workflow whose `start` forks `order`; each branch records when it started (ms since the
/// run began), needs `cpu` CPUs and works `work` ms; `then` names a state it goes to next.
fn timed_branches(
    order: &[&'static str],
    branches: &[(&'static str, f64, u64, Priority, Option<&'static str>)],
    starts: &Arc<Mutex<Vec<(&'static str, u64)>>>,
) -> Agent {
    let mut agent = Agent::new("timed");
    let origin = Instant::now();
    let forked: Vec<&'static str> = order.to_vec();
    agent.add_state("start", move |_ctx: Context| {
        let forked = forked.clone();
        async move { Ok(Next::parallel(forked)) }
    });
    for &(name, cpu, work, priority, then) in branches {
        let starts = Arc::clone(starts);
        let options = agent.add_state(name, move |_ctx: Context| {
            let starts = Arc::clone(&starts);
            async move {
                let at = (Instant::now() - origin).as_millis() as u64;
                starts.lock().unwrap().push((name, at));
                sleep(ms(work)).await;
                Ok(then.map_or(Next::End, Next::to))
            }
        });
        // Declared successors: the scheduler knows at once that `then` is no join of the
        // fork, and starts it without waiting for the other branches.
        let options = options.priority(priority).successors(then);
        if cpu > 0.0 {
            options.resources(cpus(cpu));
        }
    }
    agent
}

fn started_at(starts: &Mutex<Vec<(&'static str, u64)>>) -> Vec<(&'static str, u64)> {
    let mut starts = starts.lock().unwrap().clone();
    starts.sort();
    starts
}

#[tokio::test(start_paused = true)]
async fn a_state_needing_nothing_from_the_pool_is_not_held_behind_one_that_waits_for_it() {
    use Priority::Normal;
    // `big` cannot be granted while `hog` runs; `small` would fit but waits behind it (a
    // large request is not overtaken by small ones of its run); `free` needs nothing from the
    // pool and starts at once, wherever it stands in the fork.
    let branches = [
        ("hog", 1.0, 100, Normal, None),
        ("big", 2.0, 100, Normal, None),
        ("small", 1.0, 10, Normal, None),
        ("free", 0.0, 10, Normal, None),
    ];
    for order in [
        ["hog", "big", "small", "free"],
        ["free", "hog", "big", "small"],
        ["hog", "free", "big", "small"],
        ["hog", "big", "free", "small"],
    ] {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let mut agent = timed_branches(&order, &branches, &starts);
        let pool = ResourcePool::new(cpus(2.0));
        agent.resource_pool(pool.clone());
        let handle = agent.start().unwrap();
        sleep(ms(5)).await;
        let mut blocked = handle.blocked().await;
        blocked.sort_by(|a, b| a.state.cmp(&b.state));
        let blocked: Vec<(&str, &str)> = blocked
            .iter()
            .map(|b| (&*b.state, b.waits_for[0].as_str()))
            .collect();
        assert_eq!(
            blocked,
            [
                ("big", "the resource pool: short of cpu"),
                (
                    "small",
                    "the resource pool: behind a larger request of its run"
                ),
            ],
            "{order:?}"
        );
        // The pool lists only the one that asked it.
        let waiting = pool.waiting();
        assert_eq!(waiting.len(), 1, "{order:?}");
        assert_eq!(&*waiting[0].state, "big");
        assert!(handle.wait().await.is_success());
        assert_eq!(
            started_at(&starts),
            [("big", 100), ("free", 0), ("hog", 0), ("small", 200)],
            "{order:?}"
        );
        assert!(pool.waiting().is_empty() && pool.allocations().is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn a_higher_priority_request_that_fits_starts_past_one_waiting_for_the_pool() {
    use Priority::{Critical, Normal};
    // At 10 ms `urgent` (critical, one CPU) becomes ready while `big` (normal, two CPUs)
    // waits for `hog`: it goes before `big` in the ready order, asks the pool at once, and
    // fits. `small` (normal) keeps waiting behind `big`.
    let branches = [
        ("hog", 1.0, 100, Normal, None),
        ("big", 2.0, 100, Normal, None),
        ("small", 1.0, 10, Normal, None),
        ("delay", 0.0, 10, Normal, Some("urgent")),
        ("urgent", 1.0, 50, Critical, None),
    ];
    for order in [
        ["hog", "big", "small", "delay"],
        ["delay", "hog", "big", "small"],
    ] {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let mut agent = timed_branches(&order, &branches, &starts);
        agent.resource_pool(ResourcePool::new(cpus(2.0)));
        let report = agent.run().await.unwrap();
        assert_eq!(report.status, AgentStatus::Completed);
        assert_eq!(
            started_at(&starts),
            [
                ("big", 100),
                ("delay", 0),
                ("hog", 0),
                ("small", 200),
                ("urgent", 10)
            ],
            "{order:?}"
        );
    }
}
