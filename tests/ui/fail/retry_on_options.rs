use fluffy_flow::prelude::*;

struct Fetch;

#[workflow]
impl Fetch {
    #[state(retry(max = 2, on = [timout, error, error]))]
    async fn get(&self, _ctx: &Context) -> StateResult {
        next!(parse)
    }

    #[state(retry(max = 2, on = []))]
    async fn parse(&self, _ctx: &Context) -> StateResult {
        next!(store)
    }

    #[state(retry(on = timeout))]
    async fn store(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
