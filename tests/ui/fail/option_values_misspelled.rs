use fluffy_flow::prelude::*;

struct Shapes;

#[workflow]
impl Shapes {
    #[state(entry = true)]
    async fn first(&self, _ctx: &Context) -> StateResult {
        next!(second)
    }

    #[state(on_error = "first")]
    async fn second(&self, _ctx: &Context) -> StateResult {
        next!(third)
    }

    #[state(deps(first))]
    async fn third(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
