use fluffy_flow::prelude::*;

struct Risky;

#[workflow]
impl Risky {
    #[state(on_error = charge)]
    async fn charge(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
