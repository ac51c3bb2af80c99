use fluffy_flow::prelude::*;

struct Slow;

#[workflow]
impl Slow {
    #[state(timeout = "1s", priority = high, timeout = "2s")]
    async fn fetch(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
