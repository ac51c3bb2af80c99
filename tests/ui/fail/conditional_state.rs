use fluffy_flow::prelude::*;

struct Optional;

#[workflow]
impl Optional {
    #[state]
    #[cfg(debug_assertions)]
    async fn extra(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
