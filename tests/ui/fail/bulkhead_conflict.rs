use fluffy_flow::prelude::*;

struct Queries;

#[workflow]
impl Queries {
    #[state(bulkhead(name = "db", max_concurrent = 4))]
    async fn read(&self, _ctx: &Context) -> StateResult {
        next!(write)
    }

    #[state(bulkhead(name = "db", max_concurrent = 8), circuit_breaker(failures = 0))]
    async fn write(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
