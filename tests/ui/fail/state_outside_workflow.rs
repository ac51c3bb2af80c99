use fluffy_flow::prelude::*;

struct Loose;

impl Loose {
    #[state]
    async fn step(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
