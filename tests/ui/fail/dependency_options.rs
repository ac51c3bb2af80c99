use fluffy_flow::prelude::*;

struct Etl;

#[workflow]
impl Etl {
    #[state(entry)]
    async fn load(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    // No kind; an unknown option; two lifecycles.
    #[state(deps(load(periodic = "5m")))]
    async fn report(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    #[state(deps(load(required, weekly)))]
    async fn audit(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    #[state(deps(load(required, always, periodic = "1m")))]
    async fn notify(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    // Options that would do nothing.
    #[state(deps(load(optional, expiry = "1h")))]
    async fn archive(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {}
