//! An API gateway: each incoming request is a run that calls four upstream services in
//! parallel and merges their answers. The runs share the coordination primitives, as workers
//! of one process would:
//!
//! - the upstream provider allows 20 calls in any second (a sliding-window rate limit),
//! - at most 4 calls are in flight at once (a semaphore),
//! - the response cache is written by one merge at a time (a mutex),
//! - and the day's budget is 1000 tokens, 20 per request (a quota).
//!
//! ```text
//! cargo run --example api_gateway
//! ```

use std::time::{Duration, Instant};

use fluffy_flow::RunHandle;
use fluffy_flow::prelude::*;

/// The simulated upstream services: each answers after `latency`.
struct Gateway {
    latency: Duration,
}

impl Gateway {
    async fn call_upstream(&self, ctx: &Context, service: &str) -> StateResult {
        let request: u32 = ctx.get_state("request")?;
        tokio::time::sleep(self.latency).await;
        ctx.set_state(service, format!("{service} answer for request {request}"));
        end!()
    }
}

#[workflow(name = "api_gateway")]
impl Gateway {
    #[state(
        entry,
        quota(name = "tokens", limit = 1000, reset = "24h", amount = 20)
    )]
    async fn authenticate(&self, ctx: &Context) -> StateResult {
        let request: u32 = ctx.get_state("request")?;
        ctx.set_state("caller", format!("client-{}", request % 3));
        parallel!(search, pricing, inventory, reviews)
    }

    #[state(
        rate_limit(sliding_window(max = 20, window = "1s"), name = "upstream"),
        semaphore(name = "in_flight", permits = 4)
    )]
    async fn search(&self, ctx: &Context) -> StateResult {
        self.call_upstream(ctx, "search").await?;
        next!(merge)
    }

    #[state(
        rate_limit(sliding_window(max = 20, window = "1s"), name = "upstream"),
        semaphore(name = "in_flight", permits = 4)
    )]
    async fn pricing(&self, ctx: &Context) -> StateResult {
        self.call_upstream(ctx, "pricing").await?;
        next!(merge)
    }

    #[state(
        rate_limit(sliding_window(max = 20, window = "1s"), name = "upstream"),
        semaphore(name = "in_flight", permits = 4)
    )]
    async fn inventory(&self, ctx: &Context) -> StateResult {
        self.call_upstream(ctx, "inventory").await?;
        next!(merge)
    }

    #[state(
        rate_limit(sliding_window(max = 20, window = "1s"), name = "upstream"),
        semaphore(name = "in_flight", permits = 4)
    )]
    async fn reviews(&self, ctx: &Context) -> StateResult {
        self.call_upstream(ctx, "reviews").await?;
        next!(merge)
    }

    #[state(mutex(name = "cache", ttl = "5s"))]
    async fn merge(&self, ctx: &Context) -> StateResult {
        let mut parts = Vec::new();
        for service in ["search", "pricing", "inventory", "reviews"] {
            parts.push(ctx.get_state::<String>(service)?);
        }
        ctx.set_state("response", parts.join(" | "));
        end!()
    }
}

#[tokio::main]
async fn main() -> Result<(), FlowError> {
    let agent = Gateway {
        latency: Duration::from_millis(20),
    }
    .agent();
    let requests = 10u32;
    let started = Instant::now();
    let handles: Vec<RunHandle> = (0..requests)
        .map(|request| {
            let context = Context::new();
            context.set_state("request", request);
            agent.start_with(context)
        })
        .collect::<Result<_, _>>()?;
    // While they run: who holds what.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for primitive in agent.coordination_status()?.primitives {
        println!(
            "{:?} `{}`: {} of {} in use, {} waiting",
            primitive.kind, primitive.name, primitive.in_use, primitive.capacity, primitive.waiting
        );
    }
    let mut answered = 0;
    for handle in handles {
        let report = handle.result().await?;
        assert!(
            report
                .context
                .get_state::<String>("response")?
                .contains("reviews answer")
        );
        answered += 1;
    }
    let elapsed = started.elapsed();
    // 40 upstream calls at 20 per second: the last 20 wait for the first second to pass.
    println!("{answered} requests, 40 upstream calls, in {elapsed:.2?}");
    assert!(
        elapsed >= Duration::from_secs(1),
        "the rate limit held: {elapsed:?}"
    );
    let status = agent.coordination_status()?;
    let tokens = status
        .primitives
        .iter()
        .find(|p| &*p.name == "tokens")
        .expect("the quota is listed");
    println!(
        "tokens spent today: {} of {}",
        tokens.in_use, tokens.capacity
    );
    assert_eq!(tokens.in_use, "200");
    Ok(())
}
