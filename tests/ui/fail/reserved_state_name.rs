use fluffy_flow::prelude::*;

struct Shadow;

#[workflow]
impl Shadow {
    #[state]
    async fn agent(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
