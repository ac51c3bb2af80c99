//! An ML training pipeline: prepare data, train epoch by epoch (a state that loops on itself,
//! with early stopping), evaluate on held-out data, then export the model and write a report
//! in parallel. The model is a real logistic regression trained by gradient descent on a
//! synthetic, seeded dataset, so the example runs anywhere and always gives the same result.
//! Progress is shown from the run's event stream as states finish.
//!
//! ```text
//! cargo run --example ml_training
//! ```

use fluffy_flow::prelude::*;
use fluffy_flow::{EventKind, ResourcePool, ResourceRequirements};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingConfig {
    model_name: String,
    epochs: u32,
    learning_rate: f64,
    target_loss: f64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Metrics {
    epoch: u32,
    loss: f64,
    accuracy: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dataset {
    features: Vec<[f64; 2]>,
    labels: Vec<f64>,
}

#[context]
pub struct Training {
    config: TrainingConfig,
    train: Dataset,
    test: Dataset,
    weights: [f64; 3],
    history: Vec<Metrics>,
    test_accuracy: f64,
    exported: String,
    report: String,
}

/// A small deterministic generator (64-bit LCG), so the data is the same on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Two Gaussian-ish blobs, labelled 0 and 1.
fn blobs(n: usize, seed: u64) -> Dataset {
    let mut rng = Lcg(seed);
    let mut features = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let label = (i % 2) as f64;
        let centre = if label == 1.0 { 1.0 } else { -1.0 };
        let noise = |rng: &mut Lcg| (0..4).map(|_| rng.next()).sum::<f64>() - 2.0;
        features.push([centre + noise(&mut rng), centre + noise(&mut rng)]);
        labels.push(label);
    }
    Dataset { features, labels }
}

fn predict(w: &[f64; 3], x: &[f64; 2]) -> f64 {
    1.0 / (1.0 + (-(w[0] * x[0] + w[1] * x[1] + w[2])).exp())
}

fn evaluate(w: &[f64; 3], data: &Dataset) -> (f64, f64) {
    let mut loss = 0.0;
    let mut correct = 0;
    for (x, &y) in data.features.iter().zip(&data.labels) {
        let p = predict(w, x).clamp(1e-12, 1.0 - 1e-12);
        loss -= y * p.ln() + (1.0 - y) * (1.0 - p).ln();
        correct += usize::from((p >= 0.5) == (y == 1.0));
    }
    (
        loss / data.labels.len() as f64,
        correct as f64 / data.labels.len() as f64,
    )
}

/// One epoch of full-batch gradient descent.
fn epoch(w: [f64; 3], data: &Dataset, learning_rate: f64) -> [f64; 3] {
    let mut gradient = [0.0; 3];
    for (x, &y) in data.features.iter().zip(&data.labels) {
        let error = predict(&w, x) - y;
        gradient[0] += error * x[0];
        gradient[1] += error * x[1];
        gradient[2] += error;
    }
    let n = data.labels.len() as f64;
    [
        w[0] - learning_rate * gradient[0] / n,
        w[1] - learning_rate * gradient[1] / n,
        w[2] - learning_rate * gradient[2] / n,
    ]
}

struct MlPipeline;

#[workflow(name = "ml_training")]
impl MlPipeline {
    #[state(entry, resources(cpu = 1.0, memory_mb = 256))]
    async fn prepare_training(&self, ctx: &Context) -> StateResult {
        ctx.set_config(TrainingConfig {
            model_name: "blobs-logistic".into(),
            epochs: 200,
            learning_rate: 0.5,
            target_loss: 0.08,
        });
        // Generating data is CPU work: off the async workers.
        let (train, test) =
            tokio::task::spawn_blocking(|| (blobs(4_000, 7), blobs(1_000, 11))).await?;
        ctx.set_train(train);
        ctx.set_test(test);
        ctx.set_weights([0.0; 3]);
        ctx.set_history(Vec::new());
        next!(train_model)
    }

    /// One epoch per run: the state loops on itself until the target accuracy or the epoch
    /// budget is reached, so progress is visible (and, later, checkpointed) epoch by epoch.
    #[state(
        resources(cpu = 4.0, memory_mb = 2048, gpu = 1.0),
        timeout = "10m",
        retry(max = 2)
    )]
    async fn train_model(&self, ctx: &Context) -> StateResult {
        let config = ctx.config()?;
        let train = ctx.get_typed::<Dataset>("train")?;
        let weights = ctx.weights()?;
        let learning_rate = config.learning_rate;
        let (weights, loss, accuracy) = tokio::task::spawn_blocking(move || {
            let weights = epoch(weights, &train, learning_rate);
            let (loss, accuracy) = evaluate(&weights, &train);
            (weights, loss, accuracy)
        })
        .await?;
        ctx.set_weights(weights);
        let done = ctx.update_history(|history| {
            history.push(Metrics {
                epoch: history.len() as u32 + 1,
                loss,
                accuracy,
            });
            loss <= config.target_loss || history.len() as u32 >= config.epochs
        })?;
        if done {
            next!(evaluate_model)
        } else {
            next!(train_model)
        }
    }

    #[state]
    async fn evaluate_model(&self, ctx: &Context) -> StateResult {
        let (_, accuracy) = evaluate(&ctx.weights()?, &*ctx.get_typed::<Dataset>("test")?);
        ctx.set_test_accuracy(accuracy);
        parallel!(export_model, write_report)
    }

    #[state(resources(io = 1.0))]
    async fn export_model(&self, ctx: &Context) -> StateResult {
        let weights = ctx.weights()?;
        ctx.set_exported(
            serde_json::json!({ "model": ctx.config()?.model_name, "weights": weights })
                .to_string(),
        );
        end!()
    }

    #[state]
    async fn write_report(&self, ctx: &Context) -> StateResult {
        let history = ctx.history()?;
        let last = history
            .last()
            .copied()
            .expect("training ran at least one epoch");
        ctx.set_report(format!(
            "{} epochs (early stop: {}), train loss {:.4}, train accuracy {:.3}, test accuracy {:.3}",
            last.epoch,
            last.epoch < ctx.config()?.epochs,
            last.loss,
            last.accuracy,
            ctx.test_accuracy()?
        ));
        end!()
    }
}

#[tokio::main]
async fn main() -> Result<(), FlowError> {
    // The machine the pipeline schedules against: training needs the GPU and four cores.
    let mut agent = MlPipeline.agent();
    agent.resource_pool(ResourcePool::new(ResourceRequirements {
        cpu: 8.0,
        memory_mb: 32_768,
        io: 10.0,
        network: 10.0,
        gpu: 1.0,
    }));
    // A progress line per finished state, read from the run's own events; the stream ends
    // with the run.
    let (handle, mut events) = agent.start_watched(Context::new())?;
    while let Some(event) = events.next().await {
        match event.map(|event| event.kind) {
            Ok(EventKind::StateCompleted { state, duration }) => {
                println!("done: {state} ({duration:.1?})");
            }
            Ok(_) => {}
            Err(missed) => println!("progress: {missed}"),
        }
    }
    let report = handle.result().await?;
    println!("{}", report.context.report()?);
    println!("exported: {}", report.context.exported()?);
    println!(
        "train_model ran {} times",
        report.state("train_model").map_or(0, |s| s.runs)
    );
    Ok(())
}
