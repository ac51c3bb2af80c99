//! Content review at a terminal: a draft is written, a person approves or rejects it (a
//! validator refuses anything else and says why; nobody answering in five minutes means
//! "reject"), and the draft is published or archived. The audit of the request is printed.
//!
//! Try it: `cargo run --example content_review`, or scripted:
//! `printf 'maybe\napprove\n' | cargo run --example content_review`.

use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{InputOutcome, TerminalProvider};

async fn draft(ctx: Context) -> StateResult {
    let text = "Fluffy Flow now asks people for input, and remembers their answers.";
    println!("Draft: {text}");
    ctx.set_state("draft", text.to_owned());
    Ok(Next::to("review"))
}

async fn review(ctx: Context) -> StateResult {
    let verdict = ctx
        .human_input("Review this content (approve/reject):")
        .validator(|answer: &str| match answer.trim() {
            "approve" | "reject" => Ok(()),
            other => Err(format!("`{other}` is neither approve nor reject")),
        })
        .default("reject")
        .timeout(Duration::from_secs(300))
        .await?;
    Ok(if verdict.trim() == "approve" {
        Next::to("publish")
    } else {
        Next::to("archive")
    })
}

async fn publish(ctx: Context) -> StateResult {
    let text: String = ctx.get_state("draft")?;
    println!("Published: {text}");
    Ok(Next::End)
}

async fn archive(ctx: Context) -> StateResult {
    let text: String = ctx.get_state("draft")?;
    println!("Archived: {text}");
    Ok(Next::End)
}

#[tokio::main]
async fn main() -> Result<(), FlowError> {
    let mut agent = Agent::new("content_review");
    agent.add_state("draft", draft).successors(["review"]);
    agent
        .add_state("review", review)
        .successors(["publish", "archive"]);
    agent.add_state("publish", publish).terminal();
    agent.add_state("archive", archive).terminal();
    agent.input_provider(TerminalProvider::new().attempts(3));

    let report = agent.run().await?;
    for record in &report.inputs {
        let outcome = match &record.outcome {
            InputOutcome::Answered { value, by, .. } => format!("answered {value} by {by}"),
            InputOutcome::TimedOut { default } => format!("timed out (default {default:?})"),
            other => format!("{other:?}"),
        };
        println!(
            "Audit: \"{}\" ({}): {} refused, {outcome}",
            record.request.prompt,
            record.request.id,
            record.refusals.len()
        );
    }
    Ok(())
}
