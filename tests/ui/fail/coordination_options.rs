use fluffy_flow::prelude::*;

struct Coordinated;

#[workflow]
impl Coordinated {
    #[state(entry, semaphore(name = "gpu", permits = 0))]
    async fn no_permits(&self, _ctx: &Context) -> StateResult {
        next!(greedy)
    }

    #[state(semaphore(name = "gpu", permits = 2, take = 3))]
    async fn greedy(&self, _ctx: &Context) -> StateResult {
        next!(first)
    }

    #[state(semaphore(name = "pool", permits = 4))]
    async fn first(&self, _ctx: &Context) -> StateResult {
        next!(second)
    }

    #[state(semaphore(name = "pool", permits = 8))]
    async fn second(&self, _ctx: &Context) -> StateResult {
        next!(bad_ttl)
    }

    #[state(lease(name = "batch", ttl = "ten minutes"))]
    async fn bad_ttl(&self, _ctx: &Context) -> StateResult {
        next!(no_ttl)
    }

    #[state(lease(name = "batch"))]
    async fn no_ttl(&self, _ctx: &Context) -> StateResult {
        next!(unnamed)
    }

    #[state(mutex(ttl = "1s"))]
    async fn unnamed(&self, _ctx: &Context) -> StateResult {
        next!(quota_over)
    }

    #[state(quota(name = "tokens", limit = 10, amount = 20))]
    async fn quota_over(&self, _ctx: &Context) -> StateResult {
        next!(quota_typo)
    }

    #[state(quota(name = "tokens", limit = 10, amount = 1, period = "1h"))]
    async fn quota_typo(&self, _ctx: &Context) -> StateResult {
        next!(mutex_ttl_conflict)
    }

    #[state(mutex(name = "db", ttl = "1s"), mutex = "db")]
    async fn mutex_ttl_conflict(&self, _ctx: &Context) -> StateResult {
        next!(barrier_without_timeout)
    }

    #[state(barrier(name = "phase", parties = 3))]
    async fn barrier_without_timeout(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
