//! A durable approval that does not hold a process while it waits: the run suspends with its
//! request in a redb store, another process answers through the store, and the run is
//! continued with the answer.
//!
//! `cargo run --example approval` plays all three steps, each as a process of its own:
//! - `approval start DB`: runs until the approval is asked for, then suspends (status
//!   `AwaitingInput`) and prints the request;
//! - `approval answer DB ID VALUE`: answers it through the store (checked against the run's
//!   checkpoint);
//! - `approval continue DB`: continues the run; the review state runs again from its start
//!   and gets the answer without asking.

use std::process::Command;

use fluffy_flow::prelude::*;
use fluffy_flow::{CheckpointStore, InputId, RedbStore};

const RUN: &str = "q3-report";

fn agent() -> Agent {
    let mut agent = Agent::new("approval");
    agent
        .add_state("prepare", |ctx: Context| async move {
            println!("prepare: drafting the Q3 report");
            ctx.set_state("report", "Q3 revenue up 12%".to_owned());
            Ok(Next::to("review"))
        })
        .successors(["review"]);
    agent
        .add_state("review", |ctx: Context| async move {
            let report: String = ctx.get_state("report")?;
            let approved = ctx
                .ask::<bool>(format!("Publish \"{report}\"?"))
                .no_timeout()
                .await?;
            ctx.set_state("approved", approved);
            Ok(Next::to("publish"))
        })
        .successors(["publish"]);
    agent
        .add_state("publish", |ctx: Context| async move {
            let approved: bool = ctx.get_state("approved")?;
            println!(
                "publish: {}",
                if approved { "published" } else { "withheld" }
            );
            Ok(Next::End)
        })
        .terminal();
    agent.suspend_on_input();
    agent
}

async fn start(db: &str) -> Result<(), FlowError> {
    let report = agent().run_durable(RedbStore::open(db)?, RUN).await?;
    println!("status: {:?}", report.status);
    for record in &report.inputs {
        println!("waiting: {} {}", record.request.id, record.request.prompt);
    }
    Ok(())
}

fn answer(db: &str, id: &str, value: &str) -> Result<(), FlowError> {
    let id: InputId = id.parse()?;
    let value: serde_json::Value =
        serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.into()));
    RedbStore::open(db)?.answer("approval", RUN, &id, "approval example", value)?;
    println!("answered {id}");
    Ok(())
}

async fn resume(db: &str) -> Result<(), FlowError> {
    let report = agent().run_durable(RedbStore::open(db)?, RUN).await?;
    println!("status: {:?}", report.status);
    Ok(())
}

/// Runs this example again as a separate process, returning what it printed.
fn step(args: &[&str]) -> String {
    let output = Command::new(std::env::current_exe().expect("this example"))
        .args(args)
        .output()
        .expect("run a step");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("$ approval {}\n{text}", args.join(" "));
    assert!(
        output.status.success(),
        "step {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

#[tokio::main]
async fn main() -> Result<(), FlowError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["start", db] => start(db).await,
        ["answer", db, id, value] => answer(db, id, value),
        ["continue", db] => resume(db).await,
        [] => {
            let dir =
                std::env::temp_dir().join(format!("fluffy-flow-approval-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("a temporary directory");
            let db = dir.join("approvals.redb");
            let db = db.to_str().expect("a UTF-8 path");
            let started = step(&["start", db]);
            let id = started
                .lines()
                .find_map(|line| line.strip_prefix("waiting: "))
                .and_then(|rest| rest.split_whitespace().next())
                .expect("the run waits for the approval");
            step(&["answer", db, id, "true"]);
            let finished = step(&["continue", db]);
            assert!(finished.contains("published") && finished.contains("Completed"));
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        }
        _ => {
            eprintln!("usage: approval [start DB | answer DB ID VALUE | continue DB]");
            std::process::exit(2);
        }
    }
}
