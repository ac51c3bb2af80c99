use fluffy_flow::prelude::*;

struct Etl;

#[workflow]
impl Etl {
    #[state]
    async fn extract(&self, _ctx: &Context) -> StateResult {
        next!(load)
    }

    #[state(deps(extract = required, extract = optional, load = required))]
    async fn load(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
