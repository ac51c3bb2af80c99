use fluffy_flow::prelude::*;

struct Inner;

#[workflow]
impl Inner {
    #[state]
    async fn work(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

struct Outer;

#[workflow]
impl Outer {
    // A subgraph's run lives in its parent's process: it cannot be remote, in either order.
    #[state(remote, subgraph(workflow = Inner))]
    async fn first(&self, _ctx: &Context) -> StateResult {
        next!(second)
    }

    #[state(subgraph(workflow = Inner), remote)]
    async fn second(&self, _ctx: &Context) -> StateResult {
        next!(third)
    }

    // `remote` is a flag.
    #[state(remote = true)]
    async fn third(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
