//! An LLM pipeline: generate a text, then check its quality and extract entities in parallel;
//! a low-confidence answer is regenerated, and `publish` runs once, after both checks of the
//! final answer, however many rounds it took.
//!
//! Because the macros declare every transition, the scheduler knows that `check_quality` can
//! lead back to `extract_entities` (through `regenerate_text`): the first extraction waits, and
//! merges with the next round's, so entities are extracted once, from the accepted answer.
//!
//! The model is a trait: plug in a real client; this example ships a scripted one so it runs
//! anywhere, offline and deterministic.
//!
//! ```text
//! cargo run --example llm_pipeline
//! ```

use std::sync::Mutex;
use std::time::Duration;

use fluffy_flow::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LlmResponse {
    text: String,
    confidence: f64,
    tokens_used: u32,
    model: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("the model `{0}` has no more scripted answers")]
    Exhausted(String),
}

/// What the pipeline needs from a language model.
pub trait LanguageModel: Send + Sync + 'static {
    fn complete(
        &self,
        prompt: &str,
    ) -> impl std::future::Future<Output = Result<LlmResponse, ModelError>> + Send;
}

/// A model that answers from a script, with a little latency.
struct ScriptedModel {
    answers: Mutex<Vec<(&'static str, f64)>>,
}

impl LanguageModel for ScriptedModel {
    async fn complete(&self, prompt: &str) -> Result<LlmResponse, ModelError> {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let next = self
            .answers
            .lock()
            .expect("the script lock is never poisoned")
            .pop();
        let (text, confidence) = next.ok_or_else(|| ModelError::Exhausted("scripted".into()))?;
        Ok(LlmResponse {
            text: format!("{text} (prompt: {prompt})"),
            confidence,
            tokens_used: 40 + text.len() as u32,
            model: "scripted-1".into(),
        })
    }
}

#[context]
pub struct Conversation {
    prompt: String,
    response: LlmResponse,
    rounds: u32,
    entities: Vec<String>,
    quality_ok: bool,
    published: String,
}

struct LlmPipeline<M> {
    model: M,
    min_confidence: f64,
}

#[workflow(name = "llm_processor")]
impl LlmPipeline<ScriptedModel> {
    #[state(
        entry,
        retry(max = 3, initial_delay = "200ms"),
        timeout = "30s",
        resources(network = 1.0)
    )]
    async fn generate_text(&self, ctx: &Context) -> Result<Next, ModelError> {
        let response = self
            .model
            .complete(&ctx.prompt().unwrap_or_default())
            .await?;
        ctx.set_response(response);
        let _ = ctx.update_rounds(|r| *r += 1);
        parallel!(check_quality, extract_entities)
    }

    #[state]
    async fn check_quality(&self, ctx: &Context) -> StateResult {
        let response = ctx.response()?;
        if response.confidence < self.min_confidence {
            ctx.set_quality_ok(false);
            next!(regenerate_text)
        } else {
            ctx.set_quality_ok(true);
            next!(publish)
        }
    }

    #[state]
    async fn regenerate_text(&self, ctx: &Context) -> StateResult {
        let prompt = ctx.prompt()?;
        ctx.set_prompt(format!("{prompt} Be more precise."));
        next!(generate_text)
    }

    #[state(resources(cpu = 0.5))]
    async fn extract_entities(&self, ctx: &Context) -> StateResult {
        let response = ctx.response()?;
        let entities = response
            .text
            .split_whitespace()
            .filter(|w| w.chars().next().is_some_and(char::is_uppercase))
            .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_string())
            .collect();
        ctx.set_entities(entities);
        next!(publish)
    }

    #[state(priority = high)]
    async fn publish(&self, ctx: &Context) -> StateResult {
        let response = ctx.response()?;
        ctx.set_published(format!(
            "{} | confidence {:.2} | entities {:?} | {} rounds",
            response.text,
            response.confidence,
            ctx.entities()?,
            ctx.rounds()?
        ));
        end!()
    }
}

#[tokio::main]
async fn main() -> Result<(), FlowError> {
    let model = ScriptedModel {
        // Popped from the end: a weak first answer, then a good one.
        answers: Mutex::new(vec![
            ("Rust and Tokio power Fluffy Flow.", 0.95),
            ("Maybe something about Rust?", 0.62),
        ]),
    };
    let agent = LlmPipeline {
        model,
        min_confidence: 0.9,
    }
    .agent();
    let context = Context::new();
    context.set_prompt("Describe the stack.".into());
    context.set_rounds(0);
    let report = agent.run_with(context).await?;
    println!("{}", report.context.published()?);
    for state in &report.states {
        println!(
            "{:>17}: ran {}x, {:?}",
            state.name, state.runs, state.total_time
        );
    }
    println!("{}", LlmPipeline::<ScriptedModel>::GRAPH.to_mermaid());
    Ok(())
}
