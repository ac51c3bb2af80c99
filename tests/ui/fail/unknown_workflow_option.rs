use fluffy_flow::prelude::*;

struct Capped;

#[workflow(max_concurent = 4)]
impl Capped {
    #[state]
    async fn only(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
