//! The `metrics` feature: a small run's metrics rendered by the Prometheus recorder, the text
//! parsed and its values asserted (on the paused clock, durations are exact).
#![cfg(feature = "metrics")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{MetricsExporter, RetryPolicy};
use metrics_exporter_prometheus::PrometheusBuilder;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `name{labels} value` lines, by `name{labels}`.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_small_runs_prometheus_text_has_the_exact_values() {
    // The only test of this binary: the recorder is global.
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();

    let calls = Arc::new(AtomicU32::new(0));
    let mut orders = Agent::new("orders");
    orders.add_state("validate", |_ctx: Context| async {
        tokio::time::sleep(ms(5)).await;
        Ok(Next::to("charge"))
    });
    orders
        .add_state("charge", move |_ctx: Context| {
            let calls = Arc::clone(&calls);
            async move {
                tokio::time::sleep(ms(10)).await;
                if calls.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                    return Err("busy".into());
                }
                Ok(Next::End)
            }
        })
        .retry(RetryPolicy {
            max_retries: 1,
            initial_delay: ms(5),
            ..RetryPolicy::DEFAULT
        });
    let mut broken = Agent::new("broken");
    broken.add_state("fail", |_ctx: Context| async { Err("never".into()) });

    let exporter = MetricsExporter::new();
    exporter.attach(&orders).unwrap();
    exporter.attach(&broken).unwrap();
    orders.run().await.unwrap();
    orders.run().await.unwrap();
    assert!(broken.run().await.is_err());
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }

    let text = handle.render();
    let values = parse(&text);
    let get = |key: &str| {
        *values
            .get(key)
            .unwrap_or_else(|| panic!("no `{key}` in:\n{text}"))
    };
    assert_eq!(
        get(r#"fluffy_flow_runs_started_total{workflow="orders"}"#),
        2.0
    );
    assert_eq!(
        get(r#"fluffy_flow_runs_total{workflow="orders",outcome="completed"}"#),
        2.0
    );
    assert_eq!(
        get(r#"fluffy_flow_runs_total{workflow="broken",outcome="failed"}"#),
        1.0
    );
    let attempts = |state: &str, outcome: &str| {
        get(&format!(
            r#"fluffy_flow_state_attempts_total{{workflow="orders",state="{state}",outcome="{outcome}"}}"#
        ))
    };
    assert_eq!(attempts("validate", "completed"), 2.0);
    assert_eq!(attempts("charge", "retried"), 2.0);
    assert_eq!(attempts("charge", "completed"), 2.0);
    assert_eq!(
        get(r#"fluffy_flow_state_failures_total{workflow="broken",state="fail",kind="error"}"#),
        1.0
    );
    // Durations on the paused clock: two completed `charge` attempts of 10 ms, runs of
    // 5 + 10 + 5 + 10 = 30 ms.
    assert_eq!(
        get(r#"fluffy_flow_state_duration_seconds_count{workflow="orders",state="charge"}"#),
        2.0
    );
    assert!(
        (get(r#"fluffy_flow_state_duration_seconds_sum{workflow="orders",state="charge"}"#)
            - 0.020)
            .abs()
            < 1e-9
    );
    assert!(
        (get(r#"fluffy_flow_run_duration_seconds_sum{workflow="orders"}"#) - 0.060).abs() < 1e-9
    );
    assert_eq!(get(r#"fluffy_flow_states_running{workflow="orders"}"#), 0.0);
    // Low cardinality: no run id anywhere.
    assert!(!text.contains("run_id") && !text.contains("run="), "{text}");
}
