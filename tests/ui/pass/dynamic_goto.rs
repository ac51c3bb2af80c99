//! `goto!` takes a name computed at run time; the state then has no declared successors.

use fluffy_flow::prelude::*;

struct Router {
    shards: usize,
}

#[workflow]
impl Router {
    #[state]
    async fn route(&self, ctx: &Context) -> StateResult {
        let shard = ctx.get_state_or("key", 0usize)? % self.shards;
        if shard == 0 { next!(shard_0) } else { goto!(format!("shard_{shard}")) }
    }

    #[state]
    async fn shard_0(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    #[state]
    async fn shard_1(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

fn main() {
    assert_eq!(Router::GRAPH.state("route").unwrap().successors, None);
    assert_eq!(Router::GRAPH.state("shard_0").unwrap().successors, Some(&[][..]));
    let _ = Router { shards: 2 }.agent();
}
