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
    // No workflow to run.
    #[state(subgraph(input(text = draft)))]
    async fn first(&self, _ctx: &Context) -> StateResult {
        next!(second)
    }

    // An option subgraphs do not have, and a key that is neither a name nor a string.
    #[state(subgraph(workflow = Inner, mapping = all))]
    async fn second(&self, _ctx: &Context) -> StateResult {
        next!(third)
    }

    #[state(subgraph(workflow = Inner, output(score = 1 + 2)))]
    async fn third(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
