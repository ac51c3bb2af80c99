use fluffy_flow::prelude::*;

struct Slow;

#[workflow]
impl Slow {
    #[state(timeout = "30 parsecs")]
    async fn fetch(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
