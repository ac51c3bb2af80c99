use fluffy_flow::prelude::*;

struct NotAnError;

struct Returns;

#[workflow]
impl Returns {
    #[state]
    async fn fails(&self, _ctx: &Context) -> Result<Next, NotAnError> {
        Err(NotAnError)
    }
}

fn main() {}
