use fluffy_flow::prelude::*;

struct Flaky;

#[workflow]
impl Flaky {
    #[state(retries = 3)]
    async fn call(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
