//! Shared gates (`StateOptions::shared_gate`, `Agent::sharing`): a primitive kept outside the
//! process, acquired in the background while the state waits at its gate. Checked here with a
//! stand-in kept in this process (a semaphore whose acquisitions take a random time, as a
//! database round trip would) on the paused clock: several runs of two agents never hold more
//! than its permits, every acquisition is given back, an acquisition that fails fails the
//! attempt, and a state that stops waiting leaves nothing held. (The PostgreSQL gates across
//! processes: `postgres_coordination`.)

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{FlowError, NamedPrimitive, SharedAcquire, SharedGate, SharedHold};
use proptest::prelude::*;

/// A semaphore whose acquisitions each take `delay` (a round trip), counting what it gave.
struct Remote {
    permits: Arc<tokio::sync::Semaphore>,
    total: u32,
    delay: Duration,
    acquisitions: AtomicU32,
}

impl Remote {
    fn new(permits: u32, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(tokio::sync::Semaphore::new(permits as usize)),
            total: permits,
            delay,
            acquisitions: AtomicU32::new(0),
        })
    }

    fn free(&self) -> u32 {
        self.permits.available_permits() as u32
    }
}

impl SharedGate for Remote {
    fn describe(&self) -> String {
        "semaphore `remote` (a stand-in)".into()
    }

    fn acquire(&self, amount: u64) -> SharedAcquire {
        let (permits, delay, total) = (Arc::clone(&self.permits), self.delay, self.total);
        self.acquisitions.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if amount > u64::from(total) {
                return Err(FlowError::InvalidConfig {
                    agent: "remote".into(),
                    message: format!("{amount} units of a semaphore of {total}"),
                });
            }
            tokio::time::sleep(delay).await;
            let permit = permits
                .acquire_many_owned(amount as u32)
                .await
                .expect("never closed");
            Ok(Box::new(permit) as SharedHold)
        })
    }
}

/// Counts how many states run at once, and the most ever.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    most: AtomicUsize,
}

/// `fan` maps `durations` to `work`, which passes `gate` (one permit each) and takes its
/// item's milliseconds.
fn fan(name: &str, gate: &Arc<Remote>, gauge: &Arc<Gauge>, durations: Vec<u64>) -> Agent {
    let mut agent = Agent::new(name);
    agent
        .add_state("fan", move |_ctx: Context| {
            let durations = durations.clone();
            async move { Ok(Next::map("work", durations)) }
        })
        .entry();
    let gauge = Arc::clone(gauge);
    agent
        .add_state("work", move |ctx: Context| {
            let gauge = Arc::clone(&gauge);
            async move {
                let ms: u64 = ctx.input()?;
                let now = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
                gauge.most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                gauge.now.fetch_sub(1, Ordering::SeqCst);
                Ok(Next::end())
            }
        })
        .shared_gate(Arc::clone(gate) as Arc<dyn SharedGate>, 1);
    agent
}

fn paused<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(future)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Two agents, two runs each, share one gate: never more holders than permits, every
    /// item runs, every acquisition is given back.
    #[test]
    fn shared_permits_are_never_exceeded_and_all_come_back(
        permits in 1u32..4,
        delay in 0u64..20,
        a in proptest::collection::vec(1u64..50, 1..12),
        b in proptest::collection::vec(1u64..50, 1..12),
    ) {
        let gate = Remote::new(permits, Duration::from_millis(delay));
        let gauge = Arc::new(Gauge::default());
        let first = fan("first", &gate, &gauge, a.clone());
        let second = fan("second", &gate, &gauge, b.clone());
        let reports = paused(async {
            tokio::join!(first.run(), second.run(), first.run(), second.run())
        });
        for report in [reports.0, reports.1, reports.2, reports.3] {
            let report = report.unwrap();
            prop_assert_eq!(report.status, AgentStatus::Completed);
        }
        let most = gauge.most.load(Ordering::SeqCst);
        prop_assert!(most <= permits as usize, "{} at once over {} permits", most, permits);
        prop_assert!(most >= 1);
        prop_assert_eq!(gate.free(), permits, "every permit came back");
        // One acquisition per attempt admitted (a run asks one at a time).
        prop_assert_eq!(gate.acquisitions.load(Ordering::SeqCst) as usize, 2 * (a.len() + b.len()));
    }
}

#[test]
fn an_acquisition_that_fails_fails_the_attempt_with_its_error() {
    let gate = Remote::new(2, Duration::from_millis(5));
    let mut agent = Agent::new("greedy");
    agent
        .add_state("work", |_ctx: Context| async move { Ok(Next::end()) })
        .shared_gate(Arc::clone(&gate) as Arc<dyn SharedGate>, 3);
    let error = paused(agent.run()).unwrap_err().to_string();
    assert!(error.contains("3 units of a semaphore of 2"), "{error}");
}

#[test]
fn a_state_that_stops_waiting_leaves_nothing_held() {
    // One permit, held by `hold` for a minute; `late` gives up after a second.
    let gate = Remote::new(1, Duration::from_millis(10));
    let mut agent = Agent::new("timeout");
    agent
        .add_state("start", |_ctx: Context| async move {
            Ok(Next::parallel(["hold", "late"]))
        })
        .entry();
    // `hold` then goes on to `tail`, which keeps the run going without the gate.
    agent.add_state("tail", |_ctx: Context| async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok(Next::end())
    });
    for (name, wait) in [("hold", 60_000), ("late", 0)] {
        agent
            .add_state(name, move |_ctx: Context| async move {
                tokio::time::sleep(Duration::from_millis(wait)).await;
                Ok(if name == "hold" {
                    Next::to("tail")
                } else {
                    Next::end()
                })
            })
            .shared_gate(Arc::clone(&gate) as Arc<dyn SharedGate>, 1)
            .acquire_timeout(Duration::from_secs(1));
    }
    agent.on_branch_failure(fluffy_flow::BranchFailure::Continue);
    let gate_ = Arc::clone(&gate);
    let report = paused(async move {
        let handle = agent.start().unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        // `late` gave up: its acquisition, queued behind `hold`, is dropped.
        let free_while_hold_runs = gate_.free();
        // `hold` ended, `tail` runs: had `late`'s acquisition stayed, it would hold the
        // permit now.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let free_while_tail_runs = gate_.free();
        (
            Ok::<_, FlowError>(handle.wait().await),
            free_while_hold_runs,
            free_while_tail_runs,
        )
    });
    let (report, free_while_hold_runs, free_while_tail_runs) = report;
    let report = report.unwrap();
    assert_eq!(free_while_hold_runs, 0, "`hold` holds the only permit");
    assert_eq!(free_while_tail_runs, 1, "nobody holds it for `late`");
    assert_eq!(gate.acquisitions.load(Ordering::SeqCst), 2);
    assert_eq!(report.status, AgentStatus::CompletedWithFailures);
    let failed: Vec<_> = report.failed_branches().collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].state, "late");
    assert!(
        failed[0].error.contains("remote"),
        "the wait names the gate: {}",
        failed[0].error
    );
    assert_eq!(gate.free(), 1, "nothing held once the run ended");
}

struct Gpu;

#[workflow(name = "gpu")]
impl Gpu {
    #[state(entry)]
    async fn start(&self, _ctx: &Context) -> StateResult {
        parallel!(train, eval)
    }

    #[state(
        semaphore(name = "gpu", permits = 2, take = 1),
        rate_limit(token_bucket(rate = 5, burst = 2), name = "api")
    )]
    async fn train(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    #[state(
        semaphore(name = "gpu", permits = 2, take = 2),
        quota(name = "budget", limit = 10.0, amount = 1.0)
    )]
    async fn eval(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

#[test]
fn named_primitives_are_listed_and_can_be_kept_elsewhere() {
    let agent = Gpu.agent();
    let named = agent.named_primitives();
    assert_eq!(
        named,
        [
            NamedPrimitive::Semaphore {
                key: "semaphore/gpu".into(),
                permits: 2,
                ttl: None
            },
            NamedPrimitive::TokenBucket {
                key: "rate_limit/api".into(),
                rate: 5.0,
                burst: 2
            },
            NamedPrimitive::Local {
                key: "quota/budget".into()
            },
        ]
    );
    // The semaphore kept elsewhere: both states ask the shared gate, with their amounts.
    let gate = Remote::new(2, Duration::from_millis(3));
    let gates: HashMap<String, Arc<dyn SharedGate>> = HashMap::from([(
        "semaphore/gpu".to_owned(),
        Arc::clone(&gate) as Arc<dyn SharedGate>,
    )]);
    let shared = agent.sharing(&gates);
    let report = paused(shared.run()).unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!(gate.acquisitions.load(Ordering::SeqCst), 2);
    assert_eq!(gate.free(), 2);
    // The original still uses its own.
    paused(agent.run()).unwrap();
    assert_eq!(gate.acquisitions.load(Ordering::SeqCst), 2);
}
