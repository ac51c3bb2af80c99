use fluffy_flow::prelude::*;

struct Payments;

#[workflow]
impl Payments {
    #[state(on_error = refnd)]
    async fn charge(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    #[state]
    async fn refund(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
