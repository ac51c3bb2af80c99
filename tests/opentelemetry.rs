//! The run and attempt spans exported through `tracing-opentelemetry` (feature
//! `opentelemetry`): their names, OpenTelemetry CI/CD attribute names, parentage, results and
//! statuses, read back from an in-memory exporter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fluffy_flow::RetryPolicy;
use fluffy_flow::prelude::*;
use opentelemetry::trace::{Status, TracerProvider as _};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|KeyValue { key: k, .. }| k.as_str() == key)
        .map(|kv| &kv.value)
}

fn text(span: &SpanData, key: &str) -> String {
    attribute(span, key)
        .map(|v| v.as_str().into_owned())
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn runs_and_attempts_are_spans_with_ci_cd_attributes_results_and_statuses() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("fluffy-flow-test")));
    // (The test's runtime has one thread: every task of the runs sees this subscriber.)
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut agent = Agent::new("otel");
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    agent
        .add_state("a", move |_ctx: Context| {
            let calls = Arc::clone(&c);
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err("flaky upstream".into());
                }
                Ok(Next::to("b"))
            }
        })
        .successors(["b"])
        .retry(RetryPolicy {
            max_retries: 1,
            initial_delay: Duration::from_millis(5),
            ..RetryPolicy::DEFAULT
        });
    agent.add_state("b", |_ctx: Context| async { Ok(Next::End) });
    let report = agent.run().await.unwrap();

    let mut broken = Agent::new("broken");
    broken.add_state("only", |_ctx: Context| async { Err("bad input".into()) });
    let failed = broken.run().await;
    assert!(failed.is_err());

    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let runs: Vec<&SpanData> = spans.iter().filter(|s| s.name == "run").collect();
    assert_eq!(runs.len(), 2, "{spans:#?}");
    let run = runs
        .iter()
        .find(|s| text(s, "cicd.pipeline.name") == "otel")
        .unwrap();
    assert_eq!(text(run, "cicd.pipeline.run.id"), &*report.run_key);
    assert_eq!(text(run, "cicd.pipeline.result"), "success");
    assert_eq!(text(run, "fluffy_flow.run.status"), "Completed");
    assert_eq!(run.status, Status::Ok);

    // Each attempt is a span under its run's, in order.
    let mut attempts: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "state" && s.parent_span_id == run.span_context.span_id())
        .collect();
    attempts.sort_by_key(|s| s.start_time);
    let seen: Vec<(String, String, String)> = attempts
        .iter()
        .map(|s| {
            (
                text(s, "cicd.pipeline.task.name"),
                text(s, "cicd.pipeline.task.run.id"),
                text(s, "cicd.pipeline.task.run.result"),
            )
        })
        .collect();
    let key = &*report.run_key;
    assert_eq!(
        seen,
        [
            ("a".into(), format!("{key}/a/1/1"), "failure".into()),
            ("a".into(), format!("{key}/a/1/2"), "success".into()),
            ("b".into(), format!("{key}/b/1/1"), "success".into()),
        ]
    );
    assert_eq!(
        attempts[0].status,
        Status::error("flaky upstream".to_owned())
    );
    assert_eq!(
        attribute(attempts[0], "fluffy_flow.state.attempt"),
        Some(&Value::I64(1))
    );
    assert_eq!(
        attribute(attempts[1], "fluffy_flow.state.attempt"),
        Some(&Value::I64(2))
    );
    assert_eq!(attempts[2].status, Status::Ok);

    let broken_run = runs
        .iter()
        .find(|s| text(s, "cicd.pipeline.name") == "broken")
        .unwrap();
    assert_eq!(text(broken_run, "cicd.pipeline.result"), "failure");
    match &broken_run.status {
        Status::Error { description } => {
            assert!(description.contains("bad input"), "{description}")
        }
        other => panic!("a failed run's span has status {other:?}"),
    }
}
