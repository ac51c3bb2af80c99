//! A text-processing pipeline: clean, analyse, format. Each state reads what the previous one
//! wrote to the context.
//!
//! ```text
//! cargo run --example text_pipeline -- "  Hello   World!  It is   a fine day.  "
//! ```

use fluffy_flow::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TextStats {
    characters: usize,
    words: usize,
    sentences: usize,
    has_punctuation: bool,
}

async fn clean_text(ctx: Context) -> StateResult {
    let raw: String = ctx.get_state("raw_text")?;
    let cleaned = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    ctx.set_state("cleaned_text", cleaned);
    Ok(Next::to("analyze_text"))
}

async fn analyze_text(ctx: Context) -> StateResult {
    let text: String = ctx.get_state("cleaned_text")?;
    let stats = TextStats {
        characters: text.chars().count(),
        words: text.split_whitespace().count(),
        sentences: text
            .split(['.', '!', '?'])
            .filter(|s| !s.trim().is_empty())
            .count(),
        has_punctuation: text.chars().any(|c| c.is_ascii_punctuation()),
    };
    ctx.set_typed("stats", stats);
    Ok(Next::to("format_results"))
}

async fn format_results(ctx: Context) -> StateResult {
    let text: String = ctx.get_state("cleaned_text")?;
    let stats = ctx.get_typed::<TextStats>("stats")?;
    let result = serde_json::json!({ "text": text, "analysis": *stats });
    ctx.set_state("result", result);
    Ok(Next::End)
}

#[tokio::main]
async fn main() -> Result<(), FlowError> {
    let input = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "  Hello   World!  Workflows in   Rust.  ".to_string());

    let mut agent = Agent::new("text_processor");
    agent
        .add_state("clean_text", clean_text)
        .successors(["analyze_text"]);
    agent
        .add_state("analyze_text", analyze_text)
        .successors(["format_results"]);
    agent.add_state("format_results", format_results).terminal();

    let context = Context::new();
    context.set_state("raw_text", input);
    let report = agent.run_with(context).await?;

    let result: serde_json::Value = report.context.get_state("result")?;
    println!(
        "{}",
        serde_json::to_string_pretty(&result).expect("JSON values always print")
    );
    for state in &report.states {
        println!(
            "{:>15}: {:?} in {:?}",
            state.name, state.status, state.total_time
        );
    }
    Ok(())
}
