use fluffy_flow::prelude::*;

struct Fanout;

#[workflow]
impl Fanout {
    #[state]
    async fn split(&self, _ctx: &Context) -> StateResult {
        map!(proces, [1, 2, 3])
    }

    #[state]
    async fn process(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
