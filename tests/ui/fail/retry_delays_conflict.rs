use fluffy_flow::prelude::*;

struct Flaky;

#[workflow]
impl Flaky {
    #[state(retry(initial_delay = "10s", max_delay = "1s"))]
    async fn call(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
