use fluffy_flow::prelude::*;

struct Names;

#[workflow]
impl Names {
    #[state(entry, name = "first")]
    async fn one(&self, _ctx: &Context) -> StateResult {
        next!(second)
    }

    #[state(name = "second")]
    async fn two(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    #[state(name = "first")]
    async fn three(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    #[state(name = "not a name")]
    async fn four(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
