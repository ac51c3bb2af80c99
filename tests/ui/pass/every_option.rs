//! Every option of `#[workflow]` and `#[state]`, recorded in `GRAPH`.

use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{
    BreakerSpec, BulkheadSpec, CoordinationDecl, DependencyDecl, DependencyLifecycle, DependencyType, Jitter,
    RateLimitSpec, ResourceRequirements, RetryOn, RetryPolicy,
};

struct Pipeline {
    model: String,
}

#[workflow(name = "text_processor", max_concurrent = 8, timeout = "5m", cleanup_timeout = "2s")]
impl Pipeline {
    #[state(entry, priority = critical)]
    async fn clean_text(&self, ctx: &Context) -> StateResult {
        ctx.set_state("model", self.model.clone());
        next!(analyze_text)
    }

    #[state(
        resources(cpu = 2.0, memory_mb = 512, io = 1.5, network = 1, gpu = 0.5),
        priority = high,
        timeout = "30s",
        retry(max = 3, initial_delay = "100ms", max_delay = "10s", base = 3.0, jitter = true, on = [timeout, error]),
        deps(
            clean_text(required, periodic = "5m", timeout = "1m", condition = is_ready),
            audit = optional,
            warm_up(parallel, always),
            prepare(sequential, expiry = "1h")
        ),
        on_error = recover
    )]
    async fn analyze_text(&self, _ctx: &Context) -> Result<Next, FlowError> {
        parallel!(summarize, audit)
    }

    #[state(
        priority = low,
        acquire_timeout = "5s",
        preemptible,
        circuit_breaker(failures = 3, recovery = "10s", half_open = 2),
        bulkhead(name = "llm", max_concurrent = 2, max_queued = 8),
        rate_limit(token_bucket(rate = 10, burst = 5), name = "llm_api")
    )]
    async fn summarize(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    #[state(
        priority = normal,
        bulkhead(name = "llm", max_concurrent = 2, max_queued = 8),
        rate_limit(leaky_bucket(rate = 0.5, capacity = 3))
    )]
    async fn audit(&self, _ctx: &Context) -> anyhow::Result<Next> {
        end!()
    }

    #[state(
        rate_limit(sliding_window(max = 100, window = "1m")),
        semaphore(name = "gpu", permits = 3, take = 2),
        mutex = "db",
        lease(name = "batch", ttl = "10m"),
        quota(name = "tokens", limit = 1000, reset = "1h", amount = 10.5),
        barrier(name = "phase", parties = 2, timeout = "30s")
    )]
    async fn warm_up(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    #[state(
        rate_limit(name = "llm_api", token_bucket(burst = 5, rate = 10.0)),
        semaphore(name = "gpu", permits = 3),
        mutex(name = "cache", ttl = "30s"),
        quota(name = "budget", limit = 2.5, amount = 0.5)
    )]
    async fn prepare(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    #[state(successors(summarize, audit), rate_limit(fixed_window(max = 3, window = "1s")))]
    async fn recover(&self, _ctx: &Context) -> StateResult {
        // A fork chosen at run time, among the listed successors.
        Ok(Next::parallel(["audit"]))
    }

    /// A dependency's condition: a method taking the context.
    fn is_ready(&self, ctx: &Context) -> bool {
        ctx.get_state::<String>("model").is_ok_and(|model| model == self.model)
    }

    /// Not a state: ordinary methods may live in the same block.
    fn helper(&self) -> usize {
        self.model.len()
    }
}

const _: () = {
    assert!(Pipeline::GRAPH.states.len() == 7);
    assert!(matches!(Pipeline::GRAPH.max_concurrent, Some(8)));
};

fn main() {
    let graph = Pipeline::GRAPH;
    assert_eq!(graph.name, "text_processor");
    assert_eq!(graph.timeout, Some(Duration::from_secs(300)));
    assert_eq!(graph.cleanup_timeout, Some(Duration::from_secs(2)));
    let analyze = graph.state("analyze_text").unwrap();
    assert_eq!(analyze.priority, Priority::High);
    assert_eq!(analyze.timeout, Some(Duration::from_secs(30)));
    assert_eq!(
        analyze.resources,
        ResourceRequirements { cpu: 2.0, memory_mb: 512, io: 1.5, network: 1.0, gpu: 0.5 }
    );
    assert_eq!(
        analyze.retry,
        Some(RetryPolicy {
            max_retries: 3,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            exponential_base: 3.0,
            jitter: Jitter::Full,
            on: RetryOn::TIMEOUT | RetryOn::ERROR,
        })
    );
    assert_eq!(
        analyze.dependencies,
        &[
            DependencyDecl {
                lifecycle: DependencyLifecycle::Periodic,
                interval: Some(Duration::from_secs(300)),
                timeout: Some(Duration::from_secs(60)),
                condition: Some("is_ready"),
                ..DependencyDecl::new("clean_text", DependencyType::Required)
            },
            DependencyDecl::new("audit", DependencyType::Optional),
            DependencyDecl {
                lifecycle: DependencyLifecycle::Always,
                ..DependencyDecl::new("warm_up", DependencyType::Parallel)
            },
            DependencyDecl {
                expiry: Some(Duration::from_secs(3600)),
                ..DependencyDecl::new("prepare", DependencyType::Sequential)
            },
        ]
    );
    assert_eq!(analyze.on_error, Some("recover"));
    assert_eq!(analyze.successors, Some(&["summarize", "audit"][..]));
    assert!(graph.state("clean_text").unwrap().entry);
    assert_eq!(
        graph.state("recover").unwrap().successors,
        Some(&["summarize", "audit"][..])
    );
    let summarize = graph.state("summarize").unwrap();
    assert_eq!(
        summarize.circuit_breaker,
        Some(BreakerSpec { failures: 3, recovery: Duration::from_secs(10), half_open: 2 })
    );
    let llm = BulkheadSpec { name: "llm", max_concurrent: 2, max_queued: 8 };
    assert_eq!(summarize.bulkhead, Some(llm));
    assert_eq!(summarize.acquire_timeout, Some(Duration::from_secs(5)));
    assert!(summarize.preemptible);
    assert_eq!(graph.state("audit").unwrap().bulkhead, Some(llm));
    let api = CoordinationDecl::RateLimit {
        name: Some("llm_api"),
        limit: RateLimitSpec::TokenBucket { rate: 10.0, burst: 5 },
    };
    assert_eq!(summarize.coordination, [api]);
    assert_eq!(
        graph.state("prepare").unwrap().coordination,
        [
            api,
            CoordinationDecl::Semaphore { name: "gpu", permits: 3, take: 1 },
            CoordinationDecl::Mutex { name: "cache", ttl: Some(Duration::from_secs(30)) },
            CoordinationDecl::Quota { name: "budget", limit: 2.5, reset_every: None, amount: 0.5 },
        ]
    );
    assert_eq!(
        graph.state("audit").unwrap().coordination,
        [CoordinationDecl::RateLimit {
            name: None,
            limit: RateLimitSpec::LeakyBucket { rate: 0.5, capacity: 3 }
        }]
    );
    assert_eq!(
        graph.state("warm_up").unwrap().coordination,
        [
            CoordinationDecl::RateLimit {
                name: None,
                limit: RateLimitSpec::SlidingWindow { max: 100, window: Duration::from_secs(60) }
            },
            CoordinationDecl::Semaphore { name: "gpu", permits: 3, take: 2 },
            CoordinationDecl::Mutex { name: "db", ttl: None },
            CoordinationDecl::Lease { name: "batch", ttl: Duration::from_secs(600) },
            CoordinationDecl::Quota {
                name: "tokens",
                limit: 1000.0,
                reset_every: Some(Duration::from_secs(3600)),
                amount: 10.5
            },
            CoordinationDecl::Barrier { name: "phase", parties: 2, timeout: Duration::from_secs(30) },
        ]
    );
    assert_eq!(
        graph.state("recover").unwrap().coordination,
        [CoordinationDecl::RateLimit {
            name: None,
            limit: RateLimitSpec::FixedWindow { max: 3, window: Duration::from_secs(1) }
        }]
    );
    let pipeline = Pipeline { model: "m".into() };
    assert_eq!(pipeline.helper(), 1);
    let _agent: Agent = pipeline.agent();
}
