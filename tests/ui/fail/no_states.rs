use fluffy_flow::prelude::*;

struct Empty;

#[workflow]
impl Empty {
    async fn helper(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
