//! Helpers shared by the integration tests: scripted states that record when they ran.

#![allow(dead_code)] // each test binary uses a different subset

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluffy_flow::StateOptions;
use fluffy_flow::prelude::*;
use tokio::time::Instant;

/// Which states started, in order, and when (on tokio's clock).
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<(String, Instant)>>>);

impl Log {
    pub fn push(&self, name: &str) {
        self.0
            .lock()
            .unwrap()
            .push((name.to_owned(), Instant::now()));
    }

    pub fn names(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn count(&self, name: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .count()
    }

    /// When `name` started, relative to `origin` (its first run).
    pub fn started(&self, name: &str, origin: Instant) -> Duration {
        let log = self.0.lock().unwrap();
        let (_, at) = log
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} never ran"));
        *at - origin
    }

    pub fn position(&self, name: &str) -> usize {
        self.names()
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("{name} never ran"))
    }
}

/// The states a `Next` goes to.
pub fn targets(next: &Next) -> Vec<String> {
    match next {
        Next::End => vec![],
        Next::To(t) => vec![t.to_string()],
        Next::Parallel(ts) => ts.iter().map(|t| t.to_string()).collect(),
        Next::Map(fanout) => vec![fanout.state().to_string()],
    }
}

/// A state that records its start, takes `delay` (paused clock), writes `ctx[name] = true`
/// and goes to `next`. With `declare`, its successors are declared from `next`.
pub fn scripted(
    agent: &mut Agent,
    log: &Log,
    name: &str,
    delay_ms: u64,
    next: Next,
    declare: bool,
) {
    if declare {
        step(agent, log, name, delay_ms, next);
    } else {
        step_undeclared(agent, log, name, delay_ms, next);
    }
}

/// [`scripted`] with declared successors (so joins and self-starting states are exact),
/// returning the state's options for more.
pub fn step<'a>(
    agent: &'a mut Agent,
    log: &Log,
    name: &str,
    delay_ms: u64,
    next: Next,
) -> StateOptions<'a> {
    let declared = targets(&next);
    step_undeclared(agent, log, name, delay_ms, next).successors(declared)
}

/// [`scripted`] without declared successors, returning the state's options.
pub fn step_undeclared<'a>(
    agent: &'a mut Agent,
    log: &Log,
    name: &str,
    delay_ms: u64,
    next: Next,
) -> StateOptions<'a> {
    let log = log.clone();
    let key = name.to_owned();
    agent.add_state(name, move |ctx: Context| {
        let (log, key, next) = (log.clone(), key.clone(), next.clone());
        async move {
            log.push(&key);
            if delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            ctx.set_state(key, true);
            Ok(next)
        }
    })
}

/// The path of every field of a JSON value, depth-first, looking into at most `per_array`
/// items of each array.
pub fn json_fields(
    value: &serde_json::Value,
    per_array: usize,
    at: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                at.push(key.clone());
                out.push(at.clone());
                json_fields(inner, per_array, at, out);
                at.pop();
            }
        }
        serde_json::Value::Array(items) => {
            for (i, inner) in items.iter().enumerate().take(per_array) {
                at.push(i.to_string());
                json_fields(inner, per_array, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

/// Runs `agent` watched; returns the report and each state's start instants (ms after the run
/// started), without a state named `fork`, sorted by (instant, name).
pub async fn starts(agent: &Agent) -> (RunReport, Vec<(String, u64)>) {
    let (handle, mut events) = agent.start_watched(Context::new()).unwrap();
    let mut origin = None;
    let mut started = Vec::new();
    while let Some(event) = events.next().await {
        let event = event.unwrap();
        match event.kind {
            fluffy_flow::EventKind::RunStarted { .. } => origin = Some(event.at),
            fluffy_flow::EventKind::StateStarted { state, .. } if &*state != "fork" => {
                let at = event.at - origin.expect("the run starts first");
                started.push((state.to_string(), at.as_millis() as u64));
            }
            _ => {}
        }
    }
    started.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    (handle.wait().await, started)
}
