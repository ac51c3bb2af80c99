use fluffy_flow::prelude::*;

struct Stuck;

#[workflow(max_steps = 0)]
impl Stuck {
    #[state]
    async fn only(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
