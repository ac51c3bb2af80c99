//! Any bytes read as a checkpoint and restored into a workflow with a fan-out, a join, a retry
//! and a dependency: an error, or a run that ends within a day of paused time. Never a panic,
//! never a hang.
//!
//! `cargo +nightly fuzz run checkpoint` (seed the corpus with real checkpoints for depth:
//! `tests/checkpoint_fuzz.rs` makes some).

#![no_main]

use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{Checkpoint, DependencyType, RetryPolicy};
use libfuzzer_sys::fuzz_target;

fn agent() -> Agent {
    let mut agent = Agent::new("fuzzed");
    agent
        .add_state("start", |_ctx: Context| async {
            Ok::<_, FlowError>(Next::parallel(["slow", "flaky", "waiter"]))
        })
        .successors(["slow", "flaky", "waiter"]);
    agent
        .add_state("slow", |_ctx: Context| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, FlowError>(Next::to("merge"))
        })
        .successors(["merge"]);
    agent
        .add_state("flaky", |ctx: Context| async move {
            let n = ctx.update_typed::<u32, _>("tries", |n| {
                *n = n.saturating_add(1);
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
        .add_state("waiter", |_ctx: Context| async {
            Ok::<_, FlowError>(Next::to("merge"))
        })
        .depends_on("slow", DependencyType::Required)
        .successors(["merge"]);
    agent
        .add_state("merge", |_ctx: Context| async {
            Ok::<_, FlowError>(Next::End)
        })
        .successors(Vec::<String>::new());
    agent
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(checkpoint) = Checkpoint::from_json(bytes, "fuzz", "fuzzed", "r") else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let Ok(handle) = agent().restore_from_checkpoint(checkpoint) else {
            return;
        };
        tokio::time::timeout(Duration::from_secs(24 * 3600), handle.wait())
            .await
            .expect("a restored run ends within a day of paused time");
    });
});
