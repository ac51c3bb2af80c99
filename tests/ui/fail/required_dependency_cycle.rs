use fluffy_flow::prelude::*;

struct Cycle;

#[workflow]
impl Cycle {
    #[state(deps(c = required))]
    async fn a(&self, _ctx: &Context) -> StateResult {
        next!(b)
    }

    #[state(deps(a = required))]
    async fn b(&self, _ctx: &Context) -> StateResult {
        next!(c)
    }

    #[state(deps(b = required))]
    async fn c(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
