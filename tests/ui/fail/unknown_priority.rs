use fluffy_flow::prelude::*;

struct Urgent;

#[workflow]
impl Urgent {
    #[state(priority = urgent)]
    async fn page(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
