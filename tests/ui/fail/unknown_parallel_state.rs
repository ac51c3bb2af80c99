use fluffy_flow::prelude::*;

struct Fan;

#[workflow]
impl Fan {
    #[state]
    async fn split(&self, _ctx: &Context) -> StateResult {
        parallel!(left, rigth)
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
