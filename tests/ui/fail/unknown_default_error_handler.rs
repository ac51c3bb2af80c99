use fluffy_flow::prelude::*;

struct Charge;

#[workflow(on_error = refnd)]
impl Charge {
    #[state]
    async fn charge(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    #[state]
    async fn refund(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
