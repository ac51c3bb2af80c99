//! Any bytes read as a checkpoint and restored into a workflow with a fan-out, a join, a retry
//! and a dependency: an error, or a run that ends within a day of paused time. Never a panic,
//! never a hang.
//!
//! `cargo +nightly fuzz run checkpoint` (seed the corpus with real checkpoints for depth:
//! `tests/checkpoint_fuzz.rs` makes some).

#![no_main]

use std::time::Duration;

use fluffy_flow::Checkpoint;
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_agent/mod.rs"]
mod fuzz_agent;

use fuzz_agent::agent;

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
