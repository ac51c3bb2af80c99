use fluffy_flow::prelude::*;

struct Train;

#[workflow]
impl Train {
    #[state(resources(cpu = "two"))]
    async fn fit(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
