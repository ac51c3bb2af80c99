use fluffy_flow::prelude::*;

struct Params;

#[workflow]
impl Params {
    #[state]
    async fn by_value(self, _ctx: &Context) -> StateResult {
        end!()
    }

    #[state]
    async fn owned_context(&self, _ctx: Context) -> StateResult {
        end!()
    }

    #[state]
    async fn extra(&self, _ctx: &Context, _n: u32) -> StateResult {
        end!()
    }
}

fn main() {}
