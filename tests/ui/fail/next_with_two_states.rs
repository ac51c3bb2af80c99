use fluffy_flow::prelude::*;

struct Fork;

#[workflow]
impl Fork {
    #[state]
    async fn split(&self, _ctx: &Context) -> StateResult {
        next!(left, right)
    }

    #[state]
    async fn left(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    #[state]
    async fn right(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
