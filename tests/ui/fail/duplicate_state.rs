use fluffy_flow::prelude::*;

struct Twice;

#[workflow]
impl Twice {
    #[state]
    async fn step(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    #[state]
    async fn step(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
