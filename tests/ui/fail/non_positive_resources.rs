use fluffy_flow::prelude::*;

struct Train;

#[workflow]
impl Train {
    #[state(resources(cpu = 0, memory_mb = 0, gpu = -1.0))]
    async fn fit(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
