use fluffy_flow::prelude::*;

struct MyContext;

struct Typed;

#[workflow]
impl Typed {
    #[state]
    async fn step(&self, _ctx: &MyContext) -> StateResult {
        end!()
    }
}

fn main() {}
