use fluffy_flow::prelude::*;

struct Sync;

#[workflow]
impl Sync {
    #[state]
    fn compute(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
