//! A data-analysis pipeline with conditional routing: a large dataset is split into chunks
//! analysed in parallel and merged once; a small one takes the simple path.
//!
//! ```text
//! cargo run --example data_analysis -- 50000
//! ```

use std::time::Duration;

use fluffy_flow::prelude::*;
use serde::{Deserialize, Serialize};

const CHUNKS: usize = 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Dataset {
    values: Vec<f64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Summary {
    count: usize,
    sum: f64,
    min: f64,
    max: f64,
}

impl Summary {
    fn of(values: &[f64]) -> Self {
        Summary {
            count: values.len(),
            sum: values.iter().sum(),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }

    fn merge(self, other: Summary) -> Self {
        Summary {
            count: self.count + other.count,
            sum: self.sum + other.sum,
            min: self.min.min(other.min),
            max: self.max.max(other.max),
        }
    }
}

fn chunk_state(i: usize) -> String {
    format!("process_chunk_{i}")
}

async fn route(ctx: Context) -> StateResult {
    let dataset = ctx.get_typed::<Dataset>("dataset")?;
    if dataset.values.len() > 10_000 {
        let size = dataset.values.len().div_ceil(CHUNKS);
        for (i, chunk) in dataset.values.chunks(size).enumerate() {
            ctx.set_state(format!("chunk_{i}"), chunk.to_vec());
        }
        ctx.set_state("path", "parallel".to_string());
        Ok(Next::parallel((0..CHUNKS).map(chunk_state)))
    } else {
        ctx.set_state("path", "simple".to_string());
        Ok(Next::to("simple_process"))
    }
}

async fn process_chunk(ctx: Context, i: usize) -> StateResult {
    let chunk = ctx.get_typed::<Vec<f64>>(&format!("chunk_{i}"))?;
    // Stand-in for I/O-bound work (a database or an API call) done by each chunk.
    tokio::time::sleep(Duration::from_millis(20)).await;
    ctx.set_typed(format!("summary_{i}"), Summary::of(&chunk));
    Ok(Next::to("merge_results"))
}

async fn simple_process(ctx: Context) -> StateResult {
    let dataset = ctx.get_typed::<Dataset>("dataset")?;
    ctx.set_typed("summary", Summary::of(&dataset.values));
    Ok(Next::to("report"))
}

async fn merge_results(ctx: Context) -> StateResult {
    let mut total: Option<Summary> = None;
    for i in 0..CHUNKS {
        let part: Summary = ctx.get_state(&format!("summary_{i}"))?;
        total = Some(match total {
            Some(total) => total.merge(part),
            None => part,
        });
    }
    ctx.set_typed("summary", total.expect("CHUNKS is not zero"));
    ctx.update_typed::<u32, _>("merges", |n| *n += 1)?;
    Ok(Next::to("report"))
}

async fn report(ctx: Context) -> StateResult {
    let summary: Summary = ctx.get_state("summary")?;
    let path: String = ctx.get_state("path")?;
    ctx.set_state(
        "report",
        format!(
            "{path} path: {} values, mean {:.3}, min {:.3}, max {:.3}",
            summary.count,
            summary.sum / summary.count as f64,
            summary.min,
            summary.max
        ),
    );
    Ok(Next::End)
}

fn build() -> Agent {
    let mut agent = Agent::new("data_analysis");
    let chunks: Vec<String> = (0..CHUNKS).map(chunk_state).collect();
    let mut routes = chunks.clone();
    routes.push("simple_process".into());
    agent.add_state("route", route).successors(routes);
    for (i, name) in chunks.iter().enumerate() {
        agent
            .add_state(name.clone(), move |ctx| process_chunk(ctx, i))
            .successors(["merge_results"]);
    }
    agent
        .add_state("simple_process", simple_process)
        .successors(["report"]);
    agent
        .add_state("merge_results", merge_results)
        .successors(["report"]);
    agent.add_state("report", report).terminal();
    agent
}

#[tokio::main]
async fn main() -> Result<(), FlowError> {
    let size: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000);
    let agent = build();
    for n in [size, 500] {
        let values = (0..n).map(|i| ((i * 7919) % 1000) as f64 / 10.0).collect();
        let context = Context::new();
        context.set_typed("dataset", Dataset { values });
        context.set_state("merges", 0u32);
        let result = agent.run_with(context).await?;
        let text: String = result.context.get_state("report")?;
        let merges: u32 = result.context.get_state("merges")?;
        println!(
            "{text} (merge ran {merges}x, {} states, {:?})",
            result.transitions, result.duration
        );
    }
    Ok(())
}
