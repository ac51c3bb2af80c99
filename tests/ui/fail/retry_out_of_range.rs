use fluffy_flow::prelude::*;

struct Flaky;

#[workflow]
impl Flaky {
    #[state(retry(max = 5000, base = 0.5))]
    async fn call(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
