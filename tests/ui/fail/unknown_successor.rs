use fluffy_flow::prelude::*;

struct Tools;

#[workflow]
impl Tools {
    #[state(entry, successors(serch, calculator))]
    async fn think(&self, _ctx: &Context) -> StateResult {
        Ok(Next::parallel(["search"]))
    }

    #[state]
    async fn search(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    #[state]
    async fn calculator(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
