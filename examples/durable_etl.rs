//! A durable ETL run: checkpointed in a redb file after every state, so that running it again
//! after a failure (or a crash) continues where it stopped instead of starting over.
//!
//! The first attempt meets a warehouse outage in `load`; the second attempt, with the same run
//! key, skips what had completed (`extract` and the three shards) and finishes. `report` has
//! no transition leading to it: it starts by itself once `load` has completed.
//!
//! `cargo run --example durable_etl [DIR]` (DIR defaults to a fresh temporary directory).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use fluffy_flow::prelude::*;
use fluffy_flow::{DependencyType, RedbStore, RetryPolicy};

/// Counts of how many times each step ran in this process, to show what was skipped.
#[derive(Default)]
struct Runs {
    extract: AtomicU32,
    shards: AtomicU32,
    load: AtomicU32,
}

fn pipeline(runs: Arc<Runs>, warehouse_up: Arc<AtomicBool>) -> Agent {
    let mut agent = Agent::new("nightly_etl");
    let counted = Arc::clone(&runs);
    agent
        .add_state("extract", move |ctx: Context| {
            let runs = Arc::clone(&counted);
            async move {
                runs.extract.fetch_add(1, Ordering::SeqCst);
                ctx.set_state("orders", vec![120u32, 80, 45, 300, 15, 60]);
                Ok(Next::parallel(["shard_a", "shard_b", "shard_c"]))
            }
        })
        .successors(["shard_a", "shard_b", "shard_c"]);
    for (index, shard) in ["shard_a", "shard_b", "shard_c"].into_iter().enumerate() {
        let counted = Arc::clone(&runs);
        agent
            .add_state(shard, move |ctx: Context| {
                let runs = Arc::clone(&counted);
                async move {
                    runs.shards.fetch_add(1, Ordering::SeqCst);
                    let orders: Vec<u32> = ctx.get_state("orders")?;
                    let total: u32 = orders.iter().skip(index * 2).take(2).sum();
                    ctx.set_state(format!("total_{shard}"), total);
                    Ok(Next::to("load"))
                }
            })
            .successors(["load"]);
    }
    let counted = Arc::clone(&runs);
    agent
        .add_state("load", move |ctx: Context| {
            let (runs, up) = (Arc::clone(&counted), Arc::clone(&warehouse_up));
            async move {
                runs.load.fetch_add(1, Ordering::SeqCst);
                if !up.load(Ordering::SeqCst) {
                    return Err("the warehouse is down".into());
                }
                let mut loaded = 0;
                for shard in ["shard_a", "shard_b", "shard_c"] {
                    loaded += ctx.get_state::<u32>(&format!("total_{shard}"))?;
                }
                ctx.set_state("loaded", loaded);
                Ok(Next::End)
            }
        })
        .terminal()
        .retry(RetryPolicy::NONE);
    agent
        .add_state("report", |ctx: Context| async move {
            let loaded: u32 = ctx.get_state("loaded")?;
            ctx.set_state("report", format!("{loaded} order units loaded"));
            Ok(Next::End)
        })
        .terminal()
        .depends_on("load", DependencyType::Required);
    agent
}

#[tokio::main]
async fn main() -> Result<(), FlowError> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("fluffy-durable-etl-{}", std::process::id()))
        });
    std::fs::create_dir_all(&dir).map_err(|error| FlowError::CheckpointStore {
        store: dir.display().to_string(),
        action: "creating the directory".into(),
        message: error.to_string(),
    })?;
    let database = dir.join("flows.redb");
    let warehouse_up = Arc::new(AtomicBool::new(false));

    let runs = Arc::new(Runs::default());
    let first = pipeline(Arc::clone(&runs), Arc::clone(&warehouse_up))
        .run_durable(RedbStore::open(&database)?, "2026-11-24")
        .await;
    println!(
        "attempt 1: {}",
        first.err().map_or("completed".into(), |e| e.to_string())
    );
    println!(
        "  ran: extract {}, shards {}, load {}",
        runs.extract.load(Ordering::SeqCst),
        runs.shards.load(Ordering::SeqCst),
        runs.load.load(Ordering::SeqCst)
    );

    warehouse_up.store(true, Ordering::SeqCst);
    let runs = Arc::new(Runs::default());
    let report = pipeline(Arc::clone(&runs), warehouse_up)
        .run_durable(RedbStore::open(&database)?, "2026-11-24")
        .await?;
    println!("attempt 2: {:?}", report.status);
    println!(
        "  ran: extract {}, shards {}, load {}",
        runs.extract.load(Ordering::SeqCst),
        runs.shards.load(Ordering::SeqCst),
        runs.load.load(Ordering::SeqCst)
    );
    println!("  {}", report.context.get_state::<String>("report")?);
    assert_eq!(
        runs.extract.load(Ordering::SeqCst),
        0,
        "extract had completed"
    );
    assert_eq!(
        runs.shards.load(Ordering::SeqCst),
        0,
        "the shards had completed"
    );
    assert_eq!(report.context.get_state::<u32>("loaded")?, 620);
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
