use fluffy_flow::prelude::*;

struct Outer;

#[workflow]
impl Outer {
    // A value that is neither an `Agent` nor a `#[workflow]` type.
    #[state(subgraph(workflow = 42))]
    async fn review(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
