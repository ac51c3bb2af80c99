//! The data-analysis pipeline of `data_analysis.rs` with the macros: conditional routing, four
//! chunks analysed in parallel, and one merge, every transition checked by the compiler.
//!
//! ```text
//! cargo run --example data_analysis_macro -- 50000
//! ```

use std::time::Duration;

use fluffy_flow::prelude::*;
use serde::{Deserialize, Serialize};

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

#[context]
struct Analysis {
    dataset: Vec<f64>,
    path: String,
    summary: Summary,
    merges: u32,
    report: String,
}

const CHUNKS: usize = 4;

struct DataAnalysis {
    /// Datasets larger than this are split into chunks.
    parallel_threshold: usize,
}

impl DataAnalysis {
    async fn process_chunk(&self, ctx: &Context, i: usize) -> Result<(), FlowError> {
        let data = ctx.get_typed::<Vec<f64>>("dataset")?;
        let size = data.len().div_ceil(CHUNKS);
        let chunk = &data[(i * size).min(data.len())..((i + 1) * size).min(data.len())];
        // Stand-in for I/O-bound work (a database or an API call) done by each chunk.
        tokio::time::sleep(Duration::from_millis(20)).await;
        ctx.set_state(format!("summary_{i}"), Summary::of(chunk));
        Ok(())
    }
}

#[workflow(name = "data_analysis")]
impl DataAnalysis {
    #[state(entry)]
    async fn route(&self, ctx: &Context) -> StateResult {
        if ctx.get_typed::<Vec<f64>>("dataset")?.len() > self.parallel_threshold {
            ctx.set_path("parallel".into());
            parallel!(chunk_0, chunk_1, chunk_2, chunk_3)
        } else {
            ctx.set_path("simple".into());
            next!(simple_process)
        }
    }

    #[state(resources(cpu = 1.0))]
    async fn chunk_0(&self, ctx: &Context) -> StateResult {
        self.process_chunk(ctx, 0).await?;
        next!(merge_results)
    }

    #[state(resources(cpu = 1.0))]
    async fn chunk_1(&self, ctx: &Context) -> StateResult {
        self.process_chunk(ctx, 1).await?;
        next!(merge_results)
    }

    #[state(resources(cpu = 1.0))]
    async fn chunk_2(&self, ctx: &Context) -> StateResult {
        self.process_chunk(ctx, 2).await?;
        next!(merge_results)
    }

    #[state(resources(cpu = 1.0))]
    async fn chunk_3(&self, ctx: &Context) -> StateResult {
        self.process_chunk(ctx, 3).await?;
        next!(merge_results)
    }

    #[state]
    async fn simple_process(&self, ctx: &Context) -> StateResult {
        ctx.set_summary(Summary::of(&ctx.get_typed::<Vec<f64>>("dataset")?));
        next!(report)
    }

    #[state]
    async fn merge_results(&self, ctx: &Context) -> StateResult {
        let mut total: Option<Summary> = None;
        for i in 0..CHUNKS {
            let part: Summary = ctx.get_state(&format!("summary_{i}"))?;
            total = Some(total.map_or(part, |t| t.merge(part)));
        }
        ctx.set_summary(total.expect("CHUNKS is not zero"));
        ctx.update_merges(|n| *n += 1)?;
        next!(report)
    }

    #[state]
    async fn report(&self, ctx: &Context) -> StateResult {
        let summary = ctx.summary()?;
        ctx.set_report(format!(
            "{} path: {} values, mean {:.3}, min {:.3}, max {:.3}",
            ctx.path()?,
            summary.count,
            summary.sum / summary.count as f64,
            summary.min,
            summary.max
        ));
        end!()
    }
}

#[tokio::main]
async fn main() -> Result<(), FlowError> {
    let size: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000);
    let agent = DataAnalysis {
        parallel_threshold: 10_000,
    }
    .agent();
    for n in [size, 500] {
        let context = Context::new();
        context.set_dataset((0..n).map(|i| ((i * 7919) % 1000) as f64 / 10.0).collect());
        context.set_merges(0);
        let result = agent.run_with(context).await?;
        println!(
            "{} (merge ran {}x, {} states, {:?})",
            result.context.report()?,
            result.context.merges()?,
            result.transitions,
            result.duration
        );
    }
    Ok(())
}
