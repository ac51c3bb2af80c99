use fluffy_flow::prelude::*;

struct Returns;

#[workflow]
impl Returns {
    #[state]
    async fn nothing(&self, _ctx: &Context) {}

    #[state]
    async fn number(&self, _ctx: &Context) -> u32 {
        1
    }
}

fn main() {}
