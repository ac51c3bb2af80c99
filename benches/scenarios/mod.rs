//! The fixed benchmark scenarios, shared by `examples/bench.rs` (one scenario, chosen on the
//! command line) and `benches/all.rs` (every scenario at the sizes the README reports).
//!
//! Scenarios: `chain`, `chain_macro`, `ring`, `fanout`, `fanout_io`, `build`, `runs`,
//! `checkpoint` (see the README's benchmark
//! section). Each runs a number of repetitions and reports medians; `run_s` is the run alone,
//! `build_s` is adding the states and validating the graph; `correct` says whether every
//! repetition's result was verified.

use std::time::{Duration, Instant};

use fluffy_flow::Checkpoint;
use fluffy_flow::prelude::*;
use serde_json::json;

/// Names live for the whole program: a transition to a `&'static str` allocates nothing.
fn leak_names(prefix: &str, n: usize) -> Vec<&'static str> {
    (0..n)
        .map(|i| &*Box::leak(format!("{prefix}{i}").into_boxed_str()))
        .collect()
}

struct Sample {
    build: Duration,
    run: Duration,
    transitions: u64,
    max_concurrency: usize,
    correct: bool,
}

fn chain_agent(n: usize) -> Agent {
    let names = leak_names("s", n);
    let mut agent = Agent::new("chain");
    for i in 0..n {
        let key = names[i];
        let next = names.get(i + 1).copied();
        agent
            .add_state(key, move |ctx: Context| async move {
                ctx.set_state(key, i);
                Ok(next.map_or(Next::End, Next::to))
            })
            .successors(next);
    }
    agent
}

/// Times building (`build`, which also validates) and running an agent whose run writes `n`
/// keys `s0..s{n-1}`, each `si = i`, in `n` transitions, and checks that it did.
async fn timed_writes(n: usize, build: impl FnOnce() -> Agent) -> Sample {
    let t = Instant::now();
    let agent = build();
    agent.validate().expect("a valid workflow");
    let build = t.elapsed();
    let t = Instant::now();
    let report = agent.run().await.expect("the run completes");
    let run = t.elapsed();
    let last = format!("s{}", n - 1);
    let correct = report.context.len() == n
        && report.context.get_state::<usize>(&last).ok() == Some(n - 1)
        && report.transitions == n as u64;
    Sample {
        build,
        run,
        transitions: report.transitions,
        max_concurrency: report.max_concurrency,
        correct,
    }
}

async fn chain(n: usize) -> Sample {
    timed_writes(n, || chain_agent(n)).await
}

/// `chain` with a monitor keeping every metric attached: the run folds its events as it goes
/// and hands them to the monitor in batches; every state is new to the monitor.
async fn monitored_chain(n: usize) -> Sample {
    monitored(n, "chain", || chain_agent(n)).await
}

/// `build`'s workflow (`n` transitions of workflow `name`) run under a monitor keeping every
/// metric; checks that the monitor counted the run and every state's completion once the run
/// has returned.
async fn monitored(n: usize, name: &str, build: impl FnOnce() -> Agent) -> Sample {
    use fluffy_flow::{MetricType, Monitor};
    let monitor = Monitor::new(MetricType::ALL);
    let mut sample = timed_writes(n, || {
        let agent = build();
        monitor.attach(&agent).expect("a valid agent");
        agent
    })
    .await;
    let snapshot = monitor.snapshot();
    let workflow = snapshot.workflows.get(name);
    let counted = workflow.map_or(0, |w| w.states.values().map(|s| s.completed).sum::<u64>());
    sample.correct &= workflow.is_some_and(|w| w.runs.completed == 1) && counted == n as u64;
    sample
}

/// `chain_macro`: the same work as `chain` (one context write under a distinct key per
/// transition), written with the macros as a ring of ten states that goes round until `n`
/// transitions are done.
struct Ring {
    keys: Vec<&'static str>,
    step: std::sync::atomic::AtomicUsize,
}

impl Ring {
    /// Writes this transition's value; true when it was the last.
    fn write(&self, ctx: &Context) -> bool {
        let i = self.step.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ctx.set_state(self.keys[i], i);
        i + 1 == self.keys.len()
    }
}

#[workflow(name = "chain_macro")]
impl Ring {
    #[state(entry)]
    async fn r0(&self, ctx: &Context) -> StateResult {
        if self.write(ctx) { end!() } else { next!(r1) }
    }
    #[state]
    async fn r1(&self, ctx: &Context) -> StateResult {
        if self.write(ctx) { end!() } else { next!(r2) }
    }
    #[state]
    async fn r2(&self, ctx: &Context) -> StateResult {
        if self.write(ctx) { end!() } else { next!(r3) }
    }
    #[state]
    async fn r3(&self, ctx: &Context) -> StateResult {
        if self.write(ctx) { end!() } else { next!(r4) }
    }
    #[state]
    async fn r4(&self, ctx: &Context) -> StateResult {
        if self.write(ctx) { end!() } else { next!(r5) }
    }
    #[state]
    async fn r5(&self, ctx: &Context) -> StateResult {
        if self.write(ctx) { end!() } else { next!(r6) }
    }
    #[state]
    async fn r6(&self, ctx: &Context) -> StateResult {
        if self.write(ctx) { end!() } else { next!(r7) }
    }
    #[state]
    async fn r7(&self, ctx: &Context) -> StateResult {
        if self.write(ctx) { end!() } else { next!(r8) }
    }
    #[state]
    async fn r8(&self, ctx: &Context) -> StateResult {
        if self.write(ctx) { end!() } else { next!(r9) }
    }
    #[state]
    async fn r9(&self, ctx: &Context) -> StateResult {
        if self.write(ctx) { end!() } else { next!(r0) }
    }
}

async fn chain_macro(n: usize) -> Sample {
    timed_writes(n, || {
        Ring {
            keys: leak_names("s", n),
            step: std::sync::atomic::AtomicUsize::new(0),
        }
        .agent()
    })
    .await
}

/// `ring`: `chain_macro`'s ring of ten states built by hand, to compare the two forms on the
/// same graph.
async fn ring(n: usize) -> Sample {
    timed_writes(n, ring_agent(n)).await
}

/// `ring` with a monitor keeping every metric attached: ten states that each run `n / 10`
/// times, the shape of most workflows (few states, many runs of each), where a monitor's
/// per-state figures are made once and then only updated.
async fn monitored_ring(n: usize) -> Sample {
    monitored(n, "ring", ring_agent(n)).await
}

/// Builds `ring`'s agent.
fn ring_agent(n: usize) -> impl FnOnce() -> Agent {
    move || {
        let shared = std::sync::Arc::new(Ring {
            keys: leak_names("s", n),
            step: std::sync::atomic::AtomicUsize::new(0),
        });
        let names = leak_names("r", 10);
        let mut agent = Agent::new("ring");
        for (i, &name) in names.iter().enumerate() {
            let ring = std::sync::Arc::clone(&shared);
            let next = names[(i + 1) % names.len()];
            agent
                .add_state(name, move |ctx: Context| {
                    let ring = std::sync::Arc::clone(&ring);
                    async move {
                        Ok(if ring.write(&ctx) {
                            Next::End
                        } else {
                            Next::to(next)
                        })
                    }
                })
                .successors([next]);
        }
        agent
    }
}

fn fanout_agent(n: usize, sleep: Option<Duration>) -> Agent {
    let names = leak_names("b", n);
    let mut agent = Agent::new("fanout");
    add_fork(&mut agent, &names);
    for (i, &name) in names.iter().enumerate() {
        agent
            .add_state(name, move |ctx: Context| async move {
                if let Some(sleep) = sleep {
                    tokio::time::sleep(sleep).await;
                }
                ctx.set_state(name, i);
                Ok(Next::to("join"))
            })
            .successors(["join"]);
    }
    agent
        .add_state("join", move |ctx: Context| {
            let names = names.clone();
            async move {
                let mut sum = 0usize;
                for name in &names {
                    sum += ctx.get_state::<usize>(name)?;
                }
                ctx.set_state("sum", sum);
                Ok(Next::End)
            }
        })
        .terminal();
    agent
}

async fn fanout(n: usize, sleep: Option<Duration>) -> Sample {
    let t = Instant::now();
    let agent = fanout_agent(n, sleep);
    agent.validate().expect("valid fan-out");
    let build = t.elapsed();
    let t = Instant::now();
    let report = agent.run().await.expect("fan-out completes");
    let run = t.elapsed();
    let correct = report.context.get_state::<usize>("sum").ok() == Some(n * (n - 1) / 2)
        && report.state("join").map(|s| s.runs) == Some(1)
        && report.transitions == n as u64 + 2;
    Sample {
        build,
        run,
        transitions: report.transitions,
        max_concurrency: report.max_concurrency,
        correct,
    }
}

/// `resources`: `n` states needing one CPU each and sleeping 1 ms, on a pool of 4 CPUs. The
/// sample's `run` is the run; the second value is n/4 times one such sleep measured on this
/// runtime, the ideal.
async fn resources(n: usize) -> (Sample, Duration) {
    use fluffy_flow::{ResourcePool, ResourceRequirements};
    let one_cpu = ResourceRequirements {
        cpu: 1.0,
        ..ResourceRequirements::NONE
    };
    let mut agent = Agent::new("resources");
    agent.resource_pool(ResourcePool::new(ResourceRequirements {
        cpu: 4.0,
        ..one_cpu
    }));
    four_at_a_time(agent, n, |state| state.resources(one_cpu)).await
}

/// `n` states of 1 ms added to `agent` behind a fork, each limited by `limit` to four at a
/// time: the sample, and the ideal (n/4 rounded up times one such sleep measured on this
/// runtime). Correct when every state ran once and exactly four ran at once at the peak.
async fn four_at_a_time(
    mut agent: Agent,
    n: usize,
    limit: impl Fn(fluffy_flow::StateOptions<'_>) -> fluffy_flow::StateOptions<'_>,
) -> (Sample, Duration) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let sleep_for = Duration::from_millis(1);
    let t = Instant::now();
    let names = leak_names("w", n);
    add_fork(&mut agent, &names);
    let (in_use, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    for &name in &names {
        let (in_use, peak) = (Arc::clone(&in_use), Arc::clone(&peak));
        let state = agent.add_state(name, move |_ctx: Context| {
            let (in_use, peak) = (Arc::clone(&in_use), Arc::clone(&peak));
            async move {
                peak.fetch_max(in_use.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                tokio::time::sleep(sleep_for).await;
                in_use.fetch_sub(1, Ordering::SeqCst);
                Ok(Next::End)
            }
        });
        limit(state).terminal();
    }
    agent.validate().expect("valid workflow");
    let build = t.elapsed();
    let one_sleep = measured_sleep(sleep_for).await;
    let t = Instant::now();
    let report = agent.run().await.expect("the run completes");
    let run = t.elapsed();
    let correct = report.transitions == n as u64 + 1
        && peak.load(Ordering::SeqCst) == 4
        && report.states.iter().skip(1).all(|s| s.runs == 1);
    let sample = Sample {
        build,
        run,
        transitions: report.transitions,
        max_concurrency: report.max_concurrency,
        correct,
    };
    (
        sample,
        Duration::from_secs_f64(one_sleep * n.div_ceil(4) as f64),
    )
}

async fn build(n: usize) -> Sample {
    let t = Instant::now();
    let agent = chain_agent(n);
    let valid = agent.validate().is_ok();
    let build = t.elapsed();
    let correct = valid && agent.graph().map(|g| g.len()) == Ok(n);
    Sample {
        build,
        run: Duration::ZERO,
        transitions: 0,
        max_concurrency: 0,
        correct,
    }
}

/// `subgraph`: a parent state that runs a one-state workflow as a subgraph, `n` times in a
/// loop, passing a counter in and out: what a subgraph run costs over a state run.
async fn subgraph(n: usize) -> Sample {
    let t = Instant::now();
    let mut child = Agent::new("step");
    child.add_state("add", |ctx: Context| async move {
        let count: usize = ctx.get_state("count")?;
        ctx.set_state("count", count + 1);
        Ok(Next::End)
    });
    let mut parent = Agent::new("loop");
    parent.add_subgraph_with_router(
        "step",
        &child,
        fluffy_flow::SubgraphMapping::new()
            .inputs(["count"])
            .outputs(["count"]),
        move |ctx: Context| async move {
            let count: usize = ctx.get_state("count")?;
            Ok::<_, FlowError>(if count < n {
                Next::to("step")
            } else {
                Next::End
            })
        },
    );
    parent.validate().expect("valid workflow");
    let build = t.elapsed();
    let context = Context::new();
    context.set_state("count", 0usize);
    let t = Instant::now();
    let report = parent.run_with(context).await.expect("the run completes");
    let run = t.elapsed();
    let correct = report.context.get_state::<usize>("count").ok() == Some(n)
        && report.transitions == n as u64
        && report.state("step/add").map(|s| s.runs) == Some(n as u32);
    Sample {
        build,
        run,
        transitions: report.transitions,
        max_concurrency: report.max_concurrency,
        correct,
    }
}

async fn runs(n: usize) -> Sample {
    let t = Instant::now();
    let mut agent = Agent::new("request");
    agent.add_state("parse", |ctx: Context| async move {
        ctx.set_state("parsed", 1u32);
        Ok(Next::to("handle"))
    });
    agent.add_state("handle", |ctx: Context| async move {
        let parsed: u32 = ctx.get_state("parsed")?;
        ctx.set_state("handled", parsed + 1);
        Ok(Next::to("respond"))
    });
    agent.add_state("respond", |ctx: Context| async move {
        let handled: u32 = ctx.get_state("handled")?;
        ctx.set_state("response", handled + 1);
        Ok(Next::End)
    });
    agent.validate().expect("valid workflow");
    let build = t.elapsed();
    let t = Instant::now();
    let handles: Vec<_> = (0..n).map(|_| agent.start().expect("started")).collect();
    let mut correct = true;
    let mut transitions = 0;
    for handle in handles {
        let report = handle.wait().await;
        transitions += report.transitions;
        correct &= report.context.get_state::<u32>("response").ok() == Some(3);
    }
    let run = t.elapsed();
    Sample {
        build,
        run,
        transitions,
        max_concurrency: 1,
        correct,
    }
}

/// A context of `n` small string keys (`key{i}` = `"value {i}"`): `build` times taking a
/// checkpoint of the paused run and serializing it to JSON; `run` times reading the JSON back,
/// restoring it into a fresh agent and running it to the end (one state that reads a value).
/// Also returns the checkpoint's size in bytes.
async fn checkpoint(n: usize) -> (Sample, usize) {
    use std::sync::Arc;
    use tokio::sync::{Notify, Semaphore};

    /// `fill` writes the keys, says so on `filled`, and finishes when `gate` opens: the bench
    /// pauses the run in between, so the checkpoint holds every key and `read` queued.
    fn definition(
        keys: &'static [&'static str],
        filled: Arc<Notify>,
        gate: Arc<Semaphore>,
    ) -> Agent {
        let mut agent = Agent::new("checkpointed");
        agent
            .add_state("fill", move |ctx: Context| {
                let (filled, gate) = (filled.clone(), gate.clone());
                async move {
                    for (i, key) in keys.iter().enumerate() {
                        ctx.set_state(*key, format!("value {i}"));
                    }
                    filled.notify_one();
                    let _permit = gate.acquire().await;
                    Ok(Next::to("read"))
                }
            })
            .successors(["read"]);
        agent
            .add_state("read", move |ctx: Context| async move {
                let last: String = ctx.get_state(keys[keys.len() - 1])?;
                ctx.set_state("read", last);
                Ok(Next::End)
            })
            .terminal();
        agent
    }
    let keys: &'static [&'static str] = Box::leak(leak_names("key", n).into_boxed_slice());
    let (filled, gate) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    let agent = definition(keys, filled.clone(), gate.clone());
    let handle = agent.start().expect("started");
    filled.notified().await;
    let pausing = handle.pause();
    gate.add_permits(1);
    pausing.await.expect("paused after `fill`");

    let t = Instant::now();
    let taken = handle.create_checkpoint().await.expect("a checkpoint");
    let bytes = taken.to_json().expect("serializable");
    let create = t.elapsed();
    handle.cancel();
    handle.wait().await;

    let t = Instant::now();
    let read =
        Checkpoint::from_json(&bytes, "bench", "checkpointed", &taken.run_key).expect("readable");
    let report = definition(keys, filled, gate)
        .restore_from_checkpoint(read)
        .expect("restorable")
        .result()
        .await
        .expect("the restored run completes");
    let restore = t.elapsed();
    let correct = report.context.len() == n + 1
        && report.context.get_state::<String>("read").ok() == Some(format!("value {}", n - 1))
        && report.state("fill").is_some_and(|s| s.runs == 1)
        && report.state("read").is_some_and(|s| s.runs == 1);
    (
        Sample {
            build: create,
            run: restore,
            transitions: 1,
            max_concurrency: 1,
            correct,
        },
        bytes.len(),
    )
}

/// N states of 1 ms contending for one semaphore of 4 permits; returns the sample and the
/// ideal time (N / 4 such sleeps). Correct when every state ran once and never more than 4
/// held a permit at once.
async fn coordination(n: usize) -> (Sample, Duration) {
    let permits = fluffy_flow::FlowSemaphore::new("workers", 4);
    let agent = Agent::new("coordination");
    four_at_a_time(agent, n, |state| state.semaphore(permits.clone())).await
}

/// One `sleep_for` on this runtime, measured (median of 21).
async fn measured_sleep(sleep_for: Duration) -> f64 {
    let mut sleeps = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        tokio::spawn(tokio::time::sleep(sleep_for))
            .await
            .expect("the sleep task");
        sleeps.push(t.elapsed().as_secs_f64());
    }
    median(sleeps)
}

/// The rate limit of the `rate_limit` scenario: a token bucket of 1000 per second, burst 10.
const LIMIT_RATE: f64 = 1000.0;
const LIMIT_BURST: u32 = 10;

/// N states through one token bucket (1000/s, burst 10) on the real clock; returns the sample
/// and the ideal time, (N - burst) / rate. Correct when every state ran once and no state
/// started before the bucket allowed it (the k-th start at least (k + 1 - burst) / rate after
/// the run began).
async fn rate_limit(n: usize) -> (Sample, Duration) {
    use fluffy_flow::RateLimit;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let t = Instant::now();
    let names = leak_names("w", n);
    let limit = RateLimit::token_bucket(LIMIT_RATE, LIMIT_BURST).expect("a valid limit");
    let mut agent = Agent::new("rate_limit");
    add_fork(&mut agent, &names);
    let origin = Instant::now();
    let started: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    for (i, &name) in names.iter().enumerate() {
        let started = Arc::clone(&started);
        agent
            .add_state(name, move |_ctx: Context| {
                let started = Arc::clone(&started);
                async move {
                    let at = origin.elapsed().as_nanos() as u64;
                    started[i].store(at, Ordering::Relaxed);
                    Ok(Next::End)
                }
            })
            .rate_limit(limit.clone())
            .terminal();
    }
    agent.validate().expect("valid workflow");
    let build = t.elapsed();
    let t = Instant::now();
    let run_began = origin.elapsed().as_nanos() as u64;
    let report = agent.run().await.expect("the run completes");
    let run = t.elapsed();
    let mut starts: Vec<u64> = started.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    starts.sort_unstable();
    let interval = 1e9 / LIMIT_RATE;
    let never_early = starts.iter().enumerate().all(|(k, &at)| {
        let earliest = (k as f64 + 1.0 - f64::from(LIMIT_BURST)).max(0.0) * interval;
        (at - run_began) as f64 >= earliest
    });
    let correct = report.transitions == n as u64 + 1
        && report.states.iter().skip(1).all(|s| s.runs == 1)
        && never_early;
    let sample = Sample {
        build,
        run,
        transitions: report.transitions,
        max_concurrency: report.max_concurrency,
        correct,
    };
    let ideal = (n as f64 - f64::from(LIMIT_BURST)).max(0.0) / LIMIT_RATE;
    (sample, Duration::from_secs_f64(ideal))
}

/// `n` input requests made one after another by one state and answered as they come: by a
/// channel provider in this process (`store` false: the answer goes straight to the waiting
/// state), or left in a redb store's inbox as another process would (`store` true: the run
/// reads it every poll interval). Returns, per request, the time from the answer's being
/// given to the state's having it (seconds).
async fn input(n: usize, store: bool) -> (Sample, Vec<f64>) {
    use fluffy_flow::{AnswerInbox, ChannelProvider, CheckpointPolicy, RedbStore};
    use std::sync::{Arc, Mutex};
    let t = Instant::now();
    let resumed: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let mut agent = Agent::new("input");
    let log = Arc::clone(&resumed);
    agent.add_state("ask", move |ctx: Context| {
        let log = Arc::clone(&log);
        async move {
            for i in 0..n {
                let answer = ctx.human_input(format!("q{i}")).no_timeout().await?;
                log.lock().expect("log").push((Instant::now(), answer));
            }
            Ok(Next::End)
        }
    });
    let (provider, mut requests) = ChannelProvider::new();
    agent.input_provider(provider);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("inputs.redb");
    if store {
        let redb = RedbStore::open(&path).expect("a redb store");
        agent.checkpoints(redb, CheckpointPolicy::after_each_state());
    }
    agent.validate().expect("valid workflow");
    let build = t.elapsed();
    let t = Instant::now();
    let handle = agent.start().expect("the run starts");
    let inbox = AnswerInbox::for_redb_store(&path);
    let mut given = Vec::with_capacity(n);
    for _ in 0..n {
        let pending = requests.recv().await.expect("a request");
        let value = format!("a{}", pending.request.id.index);
        let at = Instant::now();
        if store {
            let (inbox, key, id) = (
                inbox.clone(),
                handle.run_key().to_owned(),
                pending.request.id.clone(),
            );
            tokio::task::spawn_blocking(move || inbox.answer("input", &key, &id, "bench", value))
                .await
                .expect("the writer")
                .expect("the answer is left");
        } else {
            pending.answer("bench", value).expect("the answer is taken");
        }
        given.push(at);
    }
    let report = handle.wait().await;
    let run = t.elapsed();
    let resumed = resumed.lock().expect("log").clone();
    let latencies: Vec<f64> = resumed
        .iter()
        .zip(&given)
        .map(|((at, _), given)| at.duration_since(*given).as_secs_f64())
        .collect();
    let correct = report.is_success()
        && resumed.len() == n
        && resumed
            .iter()
            .enumerate()
            .all(|(i, (_, a))| *a == format!("a{i}"));
    let sample = Sample {
        build,
        run,
        transitions: report.transitions,
        max_concurrency: report.max_concurrency,
        correct,
    };
    (sample, latencies)
}

/// The entry `start`, forking into every state of `names` (declared, so joins are exact).
fn add_fork(agent: &mut Agent, names: &[&'static str]) {
    let targets = names.to_vec();
    agent
        .add_state("start", move |_ctx: Context| {
            let targets = targets.clone();
            async move { Ok(Next::parallel(targets)) }
        })
        .successors(names.iter().copied());
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The scenarios `run` knows.
pub const SCENARIOS: [&str; 16] = [
    "chain",
    "monitored_chain",
    "chain_macro",
    "ring",
    "monitored_ring",
    "fanout",
    "fanout_io",
    "resources",
    "rate_limit",
    "coordination",
    "build",
    "runs",
    "checkpoint",
    "input",
    "input_store",
    "subgraph",
];

/// The scenarios `compare` can put side by side: one workflow run per repetition, timed as
/// one number per transition.
const COMPARABLE: [&str; 6] = [
    "chain",
    "monitored_chain",
    "chain_macro",
    "ring",
    "monitored_ring",
    "subgraph",
];

async fn comparable(scenario: &str, n: usize) -> Sample {
    match scenario {
        "chain" => chain(n).await,
        "monitored_chain" => monitored_chain(n).await,
        "chain_macro" => chain_macro(n).await,
        "ring" => ring(n).await,
        "monitored_ring" => monitored_ring(n).await,
        _ => subgraph(n).await,
    }
}

/// Runs scenarios `a` and `b` (size `n`) in turn, `pairs` times each, in one process and on
/// one runtime, so that both see the same machine: on a shared machine whose speed drifts
/// from minute to minute, that is the comparison to trust. Returns both medians per
/// transition and the median of the pairs' ratios, `b` against `a`.
pub fn compare(a: &str, b: &str, n: usize, pairs: usize) -> Result<serde_json::Value, String> {
    for scenario in [a, b] {
        if !COMPARABLE.contains(&scenario) {
            return Err(format!(
                "`{scenario}` cannot be compared; comparable: {}",
                COMPARABLE.join(" ")
            ));
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    let per_transition = |sample: &Sample| sample.run.as_secs_f64() / sample.transitions as f64;
    let mut times = (Vec::new(), Vec::new());
    let mut ratios = Vec::new();
    let mut correct = true;
    for _ in 0..pairs.max(1) {
        let (first, second) =
            runtime.block_on(async { (comparable(a, n).await, comparable(b, n).await) });
        correct &= first.correct && second.correct;
        let (first, second) = (per_transition(&first), per_transition(&second));
        times.0.push(first);
        times.1.push(second);
        ratios.push(second / first);
    }
    Ok(json!({
        "compare": [a, b],
        "n": n,
        "pairs": pairs.max(1),
        "a_per_transition_us": median(times.0) * 1e6,
        "b_per_transition_us": median(times.1) * 1e6,
        "b_over_a_pct": (median(ratios) - 1.0) * 100.0,
        "correct": correct,
    }))
}

/// Runs `scenario` with size `n`, `repetitions` times, on a fresh multi-thread runtime, and
/// returns its JSON line.
pub fn run(scenario: &str, n: usize, repetitions: usize) -> Result<serde_json::Value, String> {
    if !SCENARIOS.contains(&scenario) {
        return Err(format!(
            "unknown scenario `{scenario}`; known: {}",
            SCENARIOS.join(" ")
        ));
    }
    let repetitions = repetitions.max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    let mut ideals = Vec::new();
    let mut sizes = Vec::new();
    let mut latencies = Vec::new();
    let samples: Vec<Sample> = (0..repetitions)
        .map(|_| {
            runtime.block_on(async {
                match scenario {
                    "resources" => {
                        let (sample, ideal) = resources(n).await;
                        ideals.push(ideal.as_secs_f64());
                        sample
                    }
                    "rate_limit" => {
                        let (sample, ideal) = rate_limit(n).await;
                        ideals.push(ideal.as_secs_f64());
                        sample
                    }
                    "coordination" => {
                        let (sample, ideal) = coordination(n).await;
                        ideals.push(ideal.as_secs_f64());
                        sample
                    }
                    "chain" => chain(n).await,
                    "monitored_chain" => monitored_chain(n).await,
                    "chain_macro" => chain_macro(n).await,
                    "ring" => ring(n).await,
                    "subgraph" => subgraph(n).await,
                    "monitored_ring" => monitored_ring(n).await,
                    "fanout" => fanout(n, None).await,
                    "fanout_io" => fanout(n, Some(Duration::from_millis(10))).await,
                    "build" => build(n).await,
                    "checkpoint" => {
                        let (sample, size) = checkpoint(n).await;
                        sizes.push(size);
                        sample
                    }
                    "input" | "input_store" => {
                        let (sample, each) = input(n, scenario == "input_store").await;
                        latencies.extend(each);
                        sample
                    }
                    _ => runs(n).await,
                }
            })
        })
        .collect();

    let run_s = median(samples.iter().map(|s| s.run.as_secs_f64()).collect());
    let build_s = median(samples.iter().map(|s| s.build.as_secs_f64()).collect());
    let transitions = samples[0].transitions;
    let per_transition_us = if transitions > 0 {
        Some(run_s / transitions as f64 * 1e6)
    } else {
        None
    };
    let mut line = json!({
        "scenario": scenario,
        "n": n,
        "repetitions": repetitions,
        "run_s": run_s,
        "build_s": build_s,
        "transitions": transitions,
        "per_transition_us": per_transition_us,
        "max_concurrency": samples.iter().map(|s| s.max_concurrency).max(),
        "correct": samples.iter().all(|s| s.correct),
    });
    if scenario.starts_with("fanout") {
        line["per_branch_us"] = json!(run_s / n as f64 * 1e6);
    }
    if scenario == "resources" || scenario == "coordination" {
        let ideal_s = median(ideals.clone());
        line["ideal_s"] = json!(ideal_s);
        line["over_ideal_pct"] = json!((run_s / ideal_s - 1.0) * 100.0);
    }
    if scenario == "rate_limit" {
        let ideal_s = median(ideals.clone());
        line["ideal_s"] = json!(ideal_s);
        let admitted_after_burst = n as f64 - f64::from(LIMIT_BURST);
        let achieved = admitted_after_burst / run_s;
        line["rate_error"] = json!((achieved - LIMIT_RATE).abs() / LIMIT_RATE);
    }
    if scenario == "runs" {
        line["runs_per_s"] = json!(n as f64 / run_s);
    }
    if scenario.starts_with("input") {
        let max = latencies.iter().copied().fold(0.0, f64::max);
        let mut sorted = latencies.clone();
        sorted.sort_by(f64::total_cmp);
        let p95 = sorted[(sorted.len() * 95 / 100).min(sorted.len() - 1)];
        line["answer_p50_us"] = json!(median(latencies) * 1e6);
        line["answer_p95_us"] = json!(p95 * 1e6);
        line["answer_max_us"] = json!(max * 1e6);
    }
    if scenario == "checkpoint" {
        line["create_serialize_ms"] = json!(build_s * 1e3);
        line["restore_ms"] = json!(run_s * 1e3);
        line["bytes"] = json!(sizes.first());
    }
    Ok(line)
}
