//! Editing a run's context in its checkpoint before it continues (LangGraph's
//! `update_state`), and forking a run at one of its checkpoints under a new key (time travel),
//! the original untouched.

use fluffy_flow::prelude::*;
use fluffy_flow::{CheckpointPolicy, CheckpointStore, MemoryStore};

/// `load → price → ship`: `price` fails on a unit price of 0.
fn shop(unit: u32) -> Agent {
    let mut agent = Agent::new("shop");
    agent.checkpoints(
        MemoryStore::new(),
        CheckpointPolicy {
            keep: 0,
            ..CheckpointPolicy::after_each_state()
        },
    );
    agent
        .add_state("load", move |ctx: Context| async move {
            ctx.set_state("qty", 3u32);
            ctx.set_state("unit", unit);
            Ok(Next::to("price"))
        })
        .successors(["price"]);
    agent
        .add_state("price", |ctx: Context| async move {
            let unit: u32 = ctx.get_state("unit")?;
            if unit == 0 {
                return Err("the unit price is 0".into());
            }
            ctx.set_state("total", unit * ctx.get_state::<u32>("qty")?);
            Ok(Next::to("ship"))
        })
        .successors(["ship"]);
    agent.add_state("ship", |ctx: Context| async move {
        let total: u32 = ctx.get_state("total")?;
        ctx.set_state("shipped", format!("shipped for {total}"));
        Ok(Next::End)
    });
    agent
}

#[tokio::test]
async fn an_edited_checkpoint_continues_with_the_edited_values() {
    let store = MemoryStore::new();
    let failed = shop(0).run_durable(store.clone(), "order-7").await;
    assert!(failed.is_err(), "the price of 0 fails the run");
    let before = store.sequences("shop", "order-7").unwrap();
    let sequence = store
        .edit_latest("shop", "order-7", &mut |context| {
            assert_eq!(context.get::<u32>("unit")?, 0);
            context.set("unit", 12u32)?;
            context.set("note", "fixed by hand")?;
            assert!(!context.remove("missing")?);
            Ok(())
        })
        .unwrap();
    assert_eq!(sequence, before.last().unwrap() + 1);
    // The earlier checkpoints are as they were.
    let earlier = store
        .load("shop", "order-7", *before.last().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(earlier.context.get::<u32>("unit").unwrap(), 0);

    let report = shop(0).run_durable(store.clone(), "order-7").await.unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!(report.context.get_state::<u32>("total").unwrap(), 36);
    assert_eq!(
        report.context.get_state::<String>("note").unwrap(),
        "fixed by hand"
    );
    assert_eq!(
        report.state("load").unwrap().runs,
        1,
        "load did not run again"
    );
}

#[tokio::test]
async fn a_fork_runs_on_from_an_old_checkpoint_and_the_original_is_untouched() {
    let store = MemoryStore::new();
    let original = shop(10)
        .run_durable(store.clone(), "order-8")
        .await
        .unwrap();
    assert_eq!(original.context.get_state::<u32>("total").unwrap(), 30);
    let sequences = store.sequences("shop", "order-8").unwrap();
    let latest = store.latest("shop", "order-8").unwrap().unwrap();

    // Back to the checkpoint after `load`, under a new key, with another price.
    store
        .fork_run("shop", "order-8", 1, "order-8-what-if")
        .unwrap();
    store
        .edit_latest("shop", "order-8-what-if", &mut |context| {
            context.set("unit", 20u32)
        })
        .unwrap();
    let fork = shop(10)
        .run_durable(store.clone(), "order-8-what-if")
        .await
        .unwrap();
    assert_eq!(fork.status, AgentStatus::Completed);
    assert_eq!(fork.context.get_state::<u32>("total").unwrap(), 60);
    assert_eq!(fork.run_key.as_ref(), "order-8-what-if");
    assert_eq!(fork.state("load").unwrap().runs, 1, "forked after load");
    assert_eq!(fork.state("price").unwrap().runs, 1);

    // The original: the same checkpoints, the same result.
    assert_eq!(store.sequences("shop", "order-8").unwrap(), sequences);
    let again = store.latest("shop", "order-8").unwrap().unwrap();
    assert_eq!(again.sequence, latest.sequence);
    assert_eq!(again.context.get::<u32>("total").unwrap(), 30);
    let report = shop(10)
        .run_durable(store.clone(), "order-8")
        .await
        .unwrap();
    assert_eq!(report.context.get_state::<u32>("total").unwrap(), 30);

    // Forking onto a key in use, or from a checkpoint that is not there, is refused.
    let taken = store
        .fork_run("shop", "order-8", 1, "order-8-what-if")
        .unwrap_err();
    assert!(
        taken.to_string().contains("already has checkpoints"),
        "{taken}"
    );
    let missing = store.fork_run("shop", "order-8", 99, "other").unwrap_err();
    assert!(
        matches!(missing, FlowError::NoCheckpoint { ref what, .. } if what == "checkpoint 99"),
        "{missing}"
    );
}
