//! The scheduler's admission gates against reference models, on random arrivals.
//!
//! Each rate-limit strategy is modelled in a different, deliberately naive form (a token count,
//! a scan of the whole admission history), so that the real meter (GCRA, window counters, a
//! ring of instants) is checked by something that shares none of its arithmetic; a semaphore
//! is modelled as a first-come-first-served queue in front of `permits` servers, the resource
//! pool as a step-by-step simulation of its head-of-queue rule. States reach
//! their gated step at random instants (and hold a semaphore for random times); every start
//! instant must be the model's. Scale the number of cases with `ADMISSION_MODEL_SCALE=N`.

use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{EventKind, FlowSemaphore, RateLimit, ResourcePool, ResourceRequirements};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Limit {
    Token { interval_ms: u64, burst: u32 },
    Leaky { interval_ms: u64 },
    Fixed { max: u32, window_ms: u64 },
    Sliding { max: u32, window_ms: u64 },
}

impl Limit {
    fn limit(self) -> RateLimit {
        match self {
            Limit::Token { interval_ms, burst } => {
                RateLimit::token_bucket(1000.0 / interval_ms as f64, burst)
            }
            // Capacity enough that nothing is refused: this model is about timing.
            Limit::Leaky { interval_ms } => {
                RateLimit::leaky_bucket(1000.0 / interval_ms as f64, 1000)
            }
            Limit::Fixed { max, window_ms } => {
                RateLimit::fixed_window(max, Duration::from_millis(window_ms))
            }
            Limit::Sliding { max, window_ms } => {
                RateLimit::sliding_window(max, Duration::from_millis(window_ms))
            }
        }
        .unwrap()
    }

    /// The model: admission instants (ms) of requests arriving at `arrivals` (ascending),
    /// served first come, first served.
    fn admissions(self, arrivals: &[u64]) -> Vec<u64> {
        let mut admitted: Vec<u64> = Vec::new();
        match self {
            Limit::Token { interval_ms, burst } => {
                // Credit in ms of refill, capped at `burst` tokens; a token costs one interval.
                let cap = interval_ms * u64::from(burst);
                let (mut credit, mut at) = (cap, 0u64);
                for &arrival in arrivals {
                    let mut t = arrival.max(at);
                    credit = (credit + (t - at)).min(cap);
                    if credit < interval_ms {
                        t += interval_ms - credit;
                        credit = interval_ms;
                    }
                    credit -= interval_ms;
                    at = t;
                    admitted.push(t);
                }
            }
            Limit::Leaky { interval_ms } => {
                for &arrival in arrivals {
                    let t = match admitted.last() {
                        Some(&last) => arrival.max(last + interval_ms),
                        None => arrival,
                    };
                    admitted.push(t);
                }
            }
            Limit::Fixed { max, window_ms } => {
                for &arrival in arrivals {
                    let epoch = admitted.first().copied().unwrap_or(arrival);
                    let mut t = arrival.max(admitted.last().copied().unwrap_or(0));
                    loop {
                        let window = (t - epoch) / window_ms;
                        let in_window = admitted
                            .iter()
                            .filter(|&&a| (a - epoch) / window_ms == window)
                            .count();
                        if in_window < max as usize {
                            break;
                        }
                        t = epoch + (window + 1) * window_ms;
                    }
                    admitted.push(t);
                }
            }
            Limit::Sliding { max, window_ms } => {
                for &arrival in arrivals {
                    let mut t = arrival.max(admitted.last().copied().unwrap_or(0));
                    // The earliest t with fewer than `max` admissions in (t - window, t].
                    while admitted.iter().filter(|&&a| a + window_ms > t).count() >= max as usize {
                        t = admitted
                            .iter()
                            .map(|&a| a + window_ms)
                            .filter(|&free| free > t)
                            .min()
                            .expect("a full window has an oldest admission");
                    }
                    admitted.push(t);
                }
            }
        }
        admitted
    }
}

/// Runs a fork into one branch per arrival: branch `i` waits `arrivals[i]` ms, then goes to
/// its gated step (configured by `gate`), which runs `service[i]` ms. Returns the gated steps'
/// start instants (ms), sorted. The agent draws from `pool`, if given.
fn run_real(
    arrivals: &[u64],
    service: &[u64],
    pool: Option<&ResourcePool>,
    gate: impl Fn(fluffy_flow::StateOptions<'_>) -> fluffy_flow::StateOptions<'_>,
) -> Vec<u64> {
    let mut agent = Agent::new("arrivals");
    if let Some(pool) = pool {
        agent.resource_pool(pool.clone());
    }
    let branches: Vec<String> = (0..arrivals.len()).map(|i| format!("arrive_{i}")).collect();
    agent.add_state("fork", move |_ctx: Context| {
        let branches = branches.clone();
        async move { Ok(Next::parallel(branches)) }
    });
    for (i, (&arrival, &busy)) in arrivals.iter().zip(service).enumerate() {
        let limited = format!("limited_{i}");
        // Declared successors: otherwise `limited_0` would wait for the other branches as a
        // possible join (see the README's joins), and arrivals would not be what they say.
        let declared = [limited.clone()];
        agent
            .add_state(format!("arrive_{i}"), move |_ctx: Context| {
                let limited = limited.clone();
                async move {
                    // (`sleep(0)` would wait for the clock's next millisecond.)
                    if arrival > 0 {
                        tokio::time::sleep(Duration::from_millis(arrival)).await;
                    }
                    Ok(Next::to(limited))
                }
            })
            .successors(declared);
        let options = agent
            .add_state(format!("limited_{i}"), move |_ctx: Context| async move {
                if busy > 0 {
                    tokio::time::sleep(Duration::from_millis(busy)).await;
                }
                Ok(Next::End)
            })
            .terminal();
        gate(options);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let (handle, mut events) = agent.start_watched(Context::new()).unwrap();
        let mut origin = None;
        let mut started = Vec::new();
        while let Some(event) = events.next().await {
            let event = event.expect("the subscriber keeps up");
            match event.kind {
                EventKind::RunStarted { .. } => origin = Some(event.at),
                EventKind::StateStarted { state, .. } if state.starts_with("limited_") => {
                    started.push((event.at - origin.unwrap()).as_millis() as u64);
                }
                _ => {}
            }
        }
        assert!(handle.wait().await.is_success());
        started.sort_unstable();
        started
    })
}

/// The semaphore model: requests in arrival order, each served by the first of `permits`
/// servers to come free (a request never overtakes an earlier one).
fn semaphore_starts(permits: usize, arrivals: &[u64], service: &[u64]) -> Vec<u64> {
    let mut free = vec![0u64; permits];
    let mut starts = Vec::new();
    let mut last_start = 0;
    for (&arrival, &busy) in arrivals.iter().zip(service) {
        let (server, &earliest) = free
            .iter()
            .enumerate()
            .min_by_key(|&(_, at)| *at)
            .expect("at least one permit");
        let start = arrival.max(earliest).max(last_start);
        free[server] = start + busy;
        last_start = start;
        starts.push(start);
    }
    starts.sort_unstable();
    starts
}

/// The pool model, simulated instant by instant: at each instant, what ends gives its CPUs
/// back, what arrives needing nothing starts, what arrives needing CPUs joins the back of one
/// queue, and the queue's front starts while it fits (nothing overtakes it). Repeated until
/// nothing changes, since a state that runs 0 ms gives back at the instant it starts.
fn pool_starts(capacity: u64, arrivals: &[u64], needs: &[u64], service: &[u64]) -> Vec<u64> {
    let n = arrivals.len();
    let mut starts = vec![None; n];
    let mut ends: Vec<Option<u64>> = vec![None; n];
    let mut queue: std::collections::VecDeque<usize> = std::collections::VecDeque::new();
    let mut queued = vec![false; n];
    let mut in_use = 0;
    while starts.iter().any(Option::is_none) {
        // The next instant something happens: an arrival not yet seen, or an end.
        let t = (0..n)
            .filter(|&i| !queued[i] && starts[i].is_none())
            .map(|i| arrivals[i])
            .chain(ends.iter().flatten().copied())
            .min()
            .expect("something is still to happen");
        loop {
            let mut changed = false;
            for i in 0..n {
                if ends[i].is_some_and(|end| end <= t) {
                    ends[i] = None;
                    in_use -= needs[i];
                    changed = true;
                }
                if arrivals[i] <= t && starts[i].is_none() && !queued[i] {
                    queued[i] = true;
                    queue.push_back(i);
                    changed = true;
                }
            }
            let mut rest = std::collections::VecDeque::new();
            let mut blocked = false;
            for i in queue.drain(..) {
                if needs[i] == 0 || (!blocked && in_use + needs[i] <= capacity) {
                    in_use += needs[i];
                    starts[i] = Some(t);
                    ends[i] = Some(t + service[i]);
                    changed = true;
                } else {
                    blocked = true;
                    rest.push_back(i);
                }
            }
            queue = rest;
            if !changed {
                break;
            }
        }
    }
    let mut starts: Vec<u64> = starts.into_iter().flatten().collect();
    starts.sort_unstable();
    starts
}

fn strategy() -> impl Strategy<Value = Limit> {
    prop_oneof![
        (1u64..=200, 1u32..=6).prop_map(|(interval_ms, burst)| Limit::Token { interval_ms, burst }),
        (1u64..=200).prop_map(|interval_ms| Limit::Leaky { interval_ms }),
        (1u32..=5, 1u64..=500).prop_map(|(max, window_ms)| Limit::Fixed { max, window_ms }),
        (1u32..=5, 1u64..=500).prop_map(|(max, window_ms)| Limit::Sliding { max, window_ms }),
    ]
}

fn cases(default: u32) -> u32 {
    let scale: u32 = std::env::var("ADMISSION_MODEL_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    default.saturating_mul(scale)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(400), ..ProptestConfig::default() })]

    #[test]
    fn every_admission_is_at_the_instant_the_model_gives(
        strategy in strategy(),
        mut arrivals in proptest::collection::vec(
            // Clustered arrivals (many at one instant) and spread ones.
            prop_oneof![Just(0u64), 0u64..50, 0u64..2000],
            1..24,
        ),
    ) {
        arrivals.sort_unstable();
        let expected = strategy.admissions(&arrivals);
        let limit = strategy.limit();
        let real = run_real(&arrivals, &vec![0; arrivals.len()], None, |o| o.rate_limit(limit.clone()));
        prop_assert_eq!(real, expected, "{:?} with arrivals {:?}", strategy, arrivals);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(300), ..ProptestConfig::default() })]

    #[test]
    fn semaphore_starts_are_the_queue_models(
        permits in 1usize..=4,
        jobs in proptest::collection::vec((1u64..40, prop_oneof![Just(0u64), 1u64..100]), 1..20),
    ) {
        // Distinct arrival instants (gaps of at least 1 ms), random holding times.
        let arrivals: Vec<u64> = jobs.iter().scan(0, |at, (gap, _)| { *at += gap; Some(*at) }).collect();
        let service: Vec<u64> = jobs.iter().map(|(_, busy)| *busy).collect();
        let expected = semaphore_starts(permits, &arrivals, &service);
        let semaphore = FlowSemaphore::new("model", permits as u32);
        let real = run_real(&arrivals, &service, None, |o| o.semaphore(semaphore.clone()));
        prop_assert_eq!(real, expected, "{} permits, arrivals {:?}, service {:?}", permits, arrivals, service);
        prop_assert_eq!(semaphore.status().in_use, "0");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(300), ..ProptestConfig::default() })]

    #[test]
    fn pool_starts_are_the_head_of_queue_models(
        jobs in proptest::collection::vec(
            (1u64..40, prop_oneof![Just(0u64), 1u64..=4], prop_oneof![Just(0u64), 1u64..100]),
            1..20,
        ),
    ) {
        // Distinct arrival instants; needs of 0 (no pool at all) to 4 CPUs of 4.
        let arrivals: Vec<u64> = jobs.iter().scan(0, |at, (gap, ..)| { *at += gap; Some(*at) }).collect();
        let needs: Vec<u64> = jobs.iter().map(|(_, need, _)| *need).collect();
        let service: Vec<u64> = jobs.iter().map(|(.., busy)| *busy).collect();
        let expected = pool_starts(4, &arrivals, &needs, &service);
        let pool = ResourcePool::new(ResourceRequirements { cpu: 4.0, ..ResourceRequirements::NONE });
        let next = std::sync::atomic::AtomicUsize::new(0);
        let real = run_real(&arrivals, &service, Some(&pool), |o| {
            let need = needs[next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)];
            if need == 0 {
                o
            } else {
                o.resources(ResourceRequirements { cpu: need as f64, ..ResourceRequirements::NONE })
            }
        });
        prop_assert_eq!(real, expected, "arrivals {:?}, needs {:?}, service {:?}", arrivals, needs, service);
        prop_assert!(pool.allocations().is_empty() && pool.waiting().is_empty());
    }
}

#[test]
fn the_model_gives_the_documented_examples() {
    let token = Limit::Token {
        interval_ms: 100,
        burst: 5,
    };
    assert_eq!(token.admissions(&[0; 8]), [0, 0, 0, 0, 0, 100, 200, 300]);
    let fixed = Limit::Fixed {
        max: 2,
        window_ms: 1000,
    };
    assert_eq!(fixed.admissions(&[0, 900, 900, 900]), [0, 900, 1000, 1000]);
    let sliding = Limit::Sliding {
        max: 2,
        window_ms: 1000,
    };
    assert_eq!(
        sliding.admissions(&[0, 900, 900, 900]),
        [0, 900, 1000, 1900]
    );
}
