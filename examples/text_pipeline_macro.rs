//! The text pipeline of `text_pipeline.rs`, written with the macros and a typed context.
//!
//! ```text
//! cargo run --example text_pipeline_macro -- "  Hello   World!  It is   a fine day.  "
//! ```

use fluffy_flow::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TextStats {
    characters: usize,
    words: usize,
    sentences: usize,
    has_punctuation: bool,
}

/// The run's data, one typed accessor per field (`ctx.cleaned_text()`, `ctx.set_stats(..)`).
#[context]
pub struct Document {
    raw_text: String,
    cleaned_text: String,
    stats: TextStats,
    result: serde_json::Value,
}

struct TextProcessor;

#[workflow(name = "text_processor")]
impl TextProcessor {
    #[state(entry)]
    async fn clean_text(&self, ctx: &Context) -> StateResult {
        let raw = ctx.raw_text()?;
        ctx.set_cleaned_text(raw.split_whitespace().collect::<Vec<_>>().join(" "));
        next!(analyze_text)
    }

    #[state]
    async fn analyze_text(&self, ctx: &Context) -> StateResult {
        let text = ctx.cleaned_text()?;
        ctx.set_stats(TextStats {
            characters: text.chars().count(),
            words: text.split_whitespace().count(),
            sentences: text
                .split(['.', '!', '?'])
                .filter(|s| !s.trim().is_empty())
                .count(),
            has_punctuation: text.chars().any(|c| c.is_ascii_punctuation()),
        });
        next!(format_results)
    }

    #[state]
    async fn format_results(&self, ctx: &Context) -> StateResult {
        let result = serde_json::json!({ "text": ctx.cleaned_text()?, "analysis": ctx.stats()? });
        ctx.set_result(result);
        end!()
    }
}

#[tokio::main]
async fn main() -> Result<(), FlowError> {
    let input = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "  Hello   World!  Workflows in   Rust.  ".to_string());
    let context = Context::new();
    context.set_raw_text(input);
    let report = TextProcessor.agent().run_with(context).await?;
    let result = report.context.result()?;
    println!(
        "{}",
        serde_json::to_string_pretty(&result).expect("JSON values always print")
    );
    println!("{}", TextProcessor::GRAPH.to_mermaid());
    Ok(())
}
