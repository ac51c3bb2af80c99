use fluffy_flow::prelude::*;

struct Gate;

#[workflow]
impl Gate {
    #[state(entry)]
    async fn load(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    // The condition names a method that does not exist.
    #[state(deps(load(required, condition = is_approved)))]
    async fn publish(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    fn is_aproved(&self, _ctx: &Context) -> bool {
        true
    }
}

fn main() {}
