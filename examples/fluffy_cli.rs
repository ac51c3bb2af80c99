//! The `fluffy` command line on a store that real runs wrote: a run waiting for a budget, one
//! that completed, one that failed. Lists them, shows the waiting one, refuses an answer that
//! does not fit its request, accepts one that does, and continues the run with it.
//!
//! ```text
//! cargo run --features web --example fluffy_cli
//! ```
//!
//! The same commands work from a shell with the `fluffy` binary (`cargo install --path
//! flow-web`): `fluffy --store <dir> runs list`.

use fluffy_flow::prelude::*;
use fluffy_flow::{FileStore, schemars};
use serde::{Deserialize, Serialize};

/// What `review` asks for: a form with these fields (its JSON Schema goes with the request).
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(crate = "fluffy_flow::schemars")]
struct Budget {
    amount: u32,
    approved: bool,
}

fn budget() -> Agent {
    let mut agent = Agent::new("budget");
    agent.add_state("plan", |ctx: Context| async move {
        ctx.set_state("item", "GPUs".to_owned());
        Ok(Next::to("review"))
    });
    agent.add_state("review", |ctx: Context| async move {
        let budget: Budget = ctx.ask("Budget for the GPUs?").no_timeout().await?;
        ctx.set_state("amount", budget.amount);
        ctx.set_state("approved", budget.approved);
        Ok(Next::to("spend"))
    });
    agent.add_state("spend", |_ctx: Context| async move { Ok(Next::End) });
    // Waiting for an answer, the run stops (its checkpoint lists the request) and is
    // continued later, by any process, with the answer left in the store.
    agent.suspend_on_input();
    agent
}

fn etl() -> Agent {
    let mut agent = Agent::new("etl");
    agent.add_state("load", |ctx: Context| async move {
        if ctx.get_state::<bool>("broken").unwrap_or(false) {
            return Err("the source table is gone".into());
        }
        Ok(Next::End)
    });
    agent
}

/// `fluffy --store <dir> args…`, printed as a shell would show it.
fn fluffy(dir: &std::path::Path, args: &[&str]) -> u8 {
    let shown: Vec<String> = args.iter().map(|arg| quoted(arg)).collect();
    println!("$ fluffy {}", shown.join(" "));
    let mut full = vec!["fluffy", "--store", dir.to_str().expect("a UTF-8 path")];
    full.extend_from_slice(args);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = fluffy_flow::cli::run(full, &mut out, &mut err);
    print!("{}", String::from_utf8_lossy(&out));
    print!("{}", String::from_utf8_lossy(&err));
    println!("(exit {code})\n");
    code
}

/// `arg` as a shell needs it.
fn quoted(arg: &str) -> String {
    let plain = arg
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_/.=".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{arg}'")
    }
}

#[tokio::main]
async fn main() -> Result<(), FlowError> {
    let dir = std::env::temp_dir().join(format!("fluffy-cli-{}", std::process::id()));
    let store = FileStore::new(&dir);
    budget().run_durable(store.clone(), "q3-gpus").await?;
    etl().run_durable(store.clone(), "nightly-12-02").await?;
    let broken = Context::new();
    broken.set_state("broken", true);
    let _failed = etl()
        .run_durable_with(store.clone(), "nightly-12-03", broken)
        .await;

    fluffy(&dir, &["runs", "list"]);
    fluffy(&dir, &["runs", "show", "q3-gpus"]);
    fluffy(&dir, &["inputs", "list"]);
    let refused = fluffy(
        &dir,
        &[
            "inputs",
            "answer",
            "q3-gpus",
            "review/1/0",
            r#"{"amount": 1200}"#,
        ],
    );
    assert_eq!(refused, fluffy_flow::cli::exit::REFUSED);
    let answered = fluffy(
        &dir,
        &[
            "inputs",
            "answer",
            "q3-gpus",
            "review/1/0",
            r#"{"amount": 1200, "approved": true}"#,
            "--by",
            "ana",
        ],
    );
    assert_eq!(answered, fluffy_flow::cli::exit::OK);

    // The run continues with the answer.
    let report = budget().run_durable(store.clone(), "q3-gpus").await?;
    println!(
        "q3-gpus continued: {:?}, amount {}",
        report.status,
        report.context.get_state::<u32>("amount")?
    );
    fluffy(&dir, &["runs", "list", "--status", "completed"]);
    std::fs::remove_dir_all(&dir).map_err(|e| FlowError::CheckpointStore {
        store: dir.display().to_string(),
        action: "removing the example's store".into(),
        message: e.to_string(),
    })?;
    Ok(())
}
