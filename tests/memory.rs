//! Nothing of a run outlives it: after 10 000 concurrent runs of one agent end, the memory the
//! process holds (counted by a global allocator, not the RSS, which the system allocator keeps
//! high) is back to where it was, but for what is documented and bounded.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use fluffy_flow::prelude::*;

/// The system allocator, counting the bytes held.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let held = HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        PEAK.fetch_max(held + layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn agent() -> Agent {
    let mut agent = Agent::new("per_request");
    agent
        .add_state("split", |ctx: Context| async move {
            ctx.set_state("input", vec![1u64; 16]);
            Ok(Next::parallel(["left", "right"]))
        })
        .successors(["left", "right"]);
    for side in ["left", "right"] {
        agent
            .add_state(side, move |ctx: Context| async move {
                tokio::task::yield_now().await;
                ctx.set_state(side, side.len());
                Ok(Next::to("join"))
            })
            .successors(["join"]);
    }
    agent.add_state("join", |ctx: Context| async move {
        let total = ctx.get_state::<usize>("left")? + ctx.get_state::<usize>("right")?;
        ctx.set_state("total", total);
        Ok(Next::End)
    });
    agent
}

async fn runs(agent: &Agent, n: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let agent = agent.clone();
        tasks.spawn(async move { agent.run().await.map(|r| r.state("join").unwrap().runs) });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.unwrap().unwrap(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_runs_leave_nothing_behind() {
    let agent = agent();
    // Warm up: the compiled definition, the runtime's own buffers, the latest run's record.
    runs(&agent, 1000).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let before = HELD.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    runs(&agent, 10_000).await;
    let peak = PEAK.load(Ordering::Relaxed);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let after = HELD.load(Ordering::Relaxed);
    let grown = after - before;
    eprintln!(
        "held before {before} bytes, at the peak {peak} ({} per concurrent run), after {after}",
        (peak - before) / 10_000
    );
    assert!(
        grown < 256 * 1024,
        "10 000 runs left {grown} bytes behind ({before} before, {after} after)"
    );
}
