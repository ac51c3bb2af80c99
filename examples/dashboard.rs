//! A live dashboard of a batch of 300 states on a pool of 4 CPUs: a progress bar of completed
//! states with throughput, p95 duration, failed attempts and CPU in use, refreshed every
//! second from a `Monitor`; the final figures are printed at the end.

#[path = "support/progress.rs"]
mod progress;

use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{MetricType, Monitor, ResourcePool, ResourceRequirements, RetryPolicy};

const STATES: u64 = 300;

#[tokio::main]
async fn main() -> Result<(), FlowError> {
    let one_cpu = ResourceRequirements {
        cpu: 1.0,
        ..ResourceRequirements::NONE
    };
    let mut agent = Agent::new("batch");
    let names: Vec<String> = (0..STATES).map(|i| format!("item{i}")).collect();
    let targets = names.clone();
    agent
        .add_state("split", move |_ctx: Context| {
            let targets = targets.clone();
            async move { Ok(Next::parallel(targets)) }
        })
        .successors(names.clone());
    for (i, name) in names.iter().enumerate() {
        agent
            .add_state(name.as_str(), move |ctx: Context| async move {
                // 5 to 25 ms of work; every 25th item fails its first attempt.
                tokio::time::sleep(Duration::from_millis(5 + (i as u64 * 7) % 21)).await;
                if i % 25 == 0 && ctx.attempt() == Some(1) {
                    return Err("flaky upstream".into());
                }
                Ok(Next::End)
            })
            .resources(one_cpu)
            .retry(RetryPolicy {
                max_retries: 1,
                initial_delay: Duration::from_millis(5),
                ..RetryPolicy::DEFAULT
            })
            .terminal();
    }
    agent.resource_pool(ResourcePool::new(ResourceRequirements {
        cpu: 4.0,
        ..ResourceRequirements::NONE
    }));

    let monitor = Monitor::new(MetricType::ALL);
    monitor.attach(&agent)?;
    let (bar, updates) = progress::show(&monitor, "batch", STATES + 1, Duration::from_secs(1));
    let report = agent.run().await?;
    drop(updates);
    // Let the monitor read the run's last events, then show the final figures.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let last = progress::Progress::of(&monitor.snapshot(), "batch");
    bar.set_position(last.completed);
    bar.finish_with_message(last.line());
    println!(
        "done: {} of {} states completed in {:.2} s; {}",
        last.completed,
        STATES + 1,
        report.duration.as_secs_f64(),
        last.line()
    );
    assert_eq!(last.completed, STATES + 1);
    Ok(())
}
