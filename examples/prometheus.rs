//! Run and state metrics in Prometheus's text format: a `MetricsExporter` sends them through
//! the `metrics` facade to `metrics-exporter-prometheus`'s recorder, which renders them.
//!
//! `cargo run --features metrics --example prometheus` runs a small workflow three times and
//! prints the text a scrape would get; add `-- --serve 127.0.0.1:9000` to serve it over HTTP
//! (any path) until interrupted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{MetricsExporter, RetryPolicy};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn orders(calls: Arc<AtomicU32>) -> Agent {
    let mut agent = Agent::new("orders");
    agent.add_state("validate", |_ctx: Context| async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(Next::to("charge"))
    });
    agent
        .add_state("charge", move |_ctx: Context| {
            let calls = Arc::clone(&calls);
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                // The payment service fails every other call: the retry gets through.
                if calls.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                    return Err("payment service busy".into());
                }
                Ok(Next::to("ship"))
            }
        })
        .retry(RetryPolicy {
            max_retries: 2,
            initial_delay: Duration::from_millis(5),
            ..RetryPolicy::DEFAULT
        });
    agent.add_state("ship", |_ctx: Context| async { Ok(Next::End) });
    agent
}

/// Answers every HTTP request on `addr` with the current metrics.
async fn serve(addr: &str, handle: PrometheusHandle) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("serving on http://{addr}/metrics");
    loop {
        let (mut socket, _) = listener.accept().await?;
        let body = handle.render();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;

    let agent = orders(Arc::default());
    let exporter = MetricsExporter::new();
    exporter.attach(&agent)?;
    for _ in 0..3 {
        agent.run().await?;
    }
    // The exporter reads the runs' events on its own task: wait until it has the last one.
    let done = "fluffy_flow_runs_total{workflow=\"orders\",outcome=\"completed\"} 3";
    for _ in 0..200 {
        if handle.render().contains(done) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    print!("{}", handle.render());

    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, addr] = args.as_slice()
        && flag == "--serve"
    {
        serve(addr, handle).await?;
    }
    Ok(())
}
