use fluffy_flow::prelude::*;

struct Limited;

#[workflow]
impl Limited {
    #[state(entry, rate_limit(token_bucket(rate = 0, burst = 5)))]
    async fn zero_rate(&self, _ctx: &Context) -> StateResult {
        next!(no_burst)
    }

    #[state(rate_limit(token_bucket(rate = 10, burst = 0)))]
    async fn no_burst(&self, _ctx: &Context) -> StateResult {
        next!(unknown_strategy)
    }

    #[state(rate_limit(gcra(rate = 10)))]
    async fn unknown_strategy(&self, _ctx: &Context) -> StateResult {
        next!(bad_window)
    }

    #[state(rate_limit(sliding_window(max = 10, window = "a minute")))]
    async fn bad_window(&self, _ctx: &Context) -> StateResult {
        next!(missing)
    }

    #[state(rate_limit(fixed_window(max = 10)))]
    async fn missing(&self, _ctx: &Context) -> StateResult {
        next!(shared_a)
    }

    #[state(rate_limit(token_bucket(rate = 10, burst = 5), name = "api"))]
    async fn shared_a(&self, _ctx: &Context) -> StateResult {
        next!(shared_b)
    }

    #[state(rate_limit(token_bucket(rate = 20, burst = 5), name = "api"))]
    async fn shared_b(&self, _ctx: &Context) -> StateResult {
        next!(wrong_key)
    }

    #[state(rate_limit(leaky_bucket(rate = 10, burst = 3)))]
    async fn wrong_key(&self, _ctx: &Context) -> StateResult {
        next!(no_strategy)
    }

    #[state(rate_limit(name = "lonely"))]
    async fn no_strategy(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
