use fluffy_flow::prelude::*;

struct Patient;

#[workflow]
impl Patient {
    #[state(retry(initial_delay = "1m"))]
    async fn call(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
