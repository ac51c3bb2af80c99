use fluffy_flow::prelude::*;

struct Pipeline;

#[workflow]
impl Pipeline {
    #[state(entry)]
    async fn clean_text(&self, _ctx: &Context) -> StateResult {
        next!(analyse_text)
    }

    #[state]
    async fn analyze_text(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {
    let _ = Pipeline.agent();
}
