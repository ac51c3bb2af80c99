//! The workflow whose checkpoints the damage tests and the fuzz target restore (shared by
//! `tests/checkpoint_fuzz.rs` and `fuzz/fuzz_targets/checkpoint.rs`).

use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{DependencyType, RetryPolicy};

/// start -> [slow, flaky, waiter], each -> merge; `flaky` fails twice (retries 100 ms apart),
/// `waiter` needs `slow`, `broken` (reached from `slow`'s error handler) never runs.
pub fn agent() -> Agent {
    let mut agent = Agent::new("fuzzed");
    agent
        .add_state("start", |ctx: Context| async move {
            ctx.set_state("started", true);
            Ok(Next::parallel(["slow", "flaky", "waiter"]))
        })
        .successors(["slow", "flaky", "waiter"]);
    agent
        .add_state("slow", |_ctx: Context| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(Next::to("merge"))
        })
        .successors(["merge"]);
    agent
        .add_state_with_error("flaky", |ctx: Context| async move {
            let n = ctx.update_typed::<u32, _>("tries", |n| {
                *n += 1;
                *n
            })?;
            if n < 3 {
                return Err(FlowError::Cancelled {
                    agent: format!("try {n}"),
                });
            }
            Ok(Next::to("merge"))
        })
        .retry(RetryPolicy {
            max_retries: 3,
            initial_delay: Duration::from_millis(100),
            ..RetryPolicy::default()
        })
        .successors(["merge"]);
    agent
        .add_state("waiter", |_ctx: Context| async { Ok(Next::to("merge")) })
        .depends_on("slow", DependencyType::Required)
        .successors(["merge"]);
    agent
        .add_state("merge", |_ctx: Context| async { Ok(Next::End) })
        .terminal();
    agent
}
