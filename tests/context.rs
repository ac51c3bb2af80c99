//! The context store: plain and typed access, errors, sharing between parallel states.

use std::sync::Arc;

use fluffy_flow::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UserProfile {
    name: String,
    age: u32,
    scores: Vec<f64>,
}

fn alice() -> UserProfile {
    UserProfile {
        name: "Alice".into(),
        age: 28,
        scores: vec![95.0, 87.5],
    }
}

#[test]
fn basic_operations() {
    let ctx = Context::new();
    assert!(ctx.is_empty());
    ctx.set_state("user_name", "Alice".to_string());
    ctx.set_state("scores", vec![95, 87, 92]);
    assert_eq!(ctx.get_state::<String>("user_name").unwrap(), "Alice");
    assert_eq!(ctx.get_state::<Vec<i32>>("scores").unwrap(), [95, 87, 92]);
    assert!(ctx.has_state("scores"));
    assert_eq!(ctx.keys(), ["scores", "user_name"]);
    assert_eq!(ctx.len(), 2);
    assert!(ctx.remove_state("user_name"));
    assert!(!ctx.remove_state("user_name"));
    assert!(!ctx.has_state("user_name"));
    assert_eq!(ctx.keys(), ["scores"]);
    ctx.set_state("scores", "replaced".to_string());
    assert_eq!(ctx.get_state::<String>("scores").unwrap(), "replaced");
}

#[test]
fn missing_and_wrong_type_are_different_errors() {
    let ctx = Context::new();
    ctx.set_state("count", 3u32);
    assert_eq!(
        ctx.get_state::<u32>("nope").unwrap_err(),
        FlowError::MissingKey { key: "nope".into() }
    );
    assert_eq!(
        ctx.get_state::<String>("count").unwrap_err(),
        FlowError::WrongType {
            key: "count".into(),
            expected: "alloc::string::String".into(),
            found: "u32".into()
        }
    );
    assert_eq!(ctx.get_state_or("nope", 7u32).unwrap(), 7);
    assert_eq!(ctx.get_state_or("count", 7u32).unwrap(), 3);
    assert!(matches!(
        ctx.get_state_or("count", String::new()),
        Err(FlowError::WrongType { .. })
    ));
}

#[test]
fn typed_values_are_shared_and_updated_in_place() {
    let ctx = Context::new();
    ctx.set_typed("user", alice());
    let before: Arc<UserProfile> = ctx.get_typed("user").unwrap();
    let age = ctx.update_typed::<UserProfile, _>("user", |user| {
        user.age += 1;
        user.age
    });
    assert_eq!(age.unwrap(), 29);
    // The handle taken before keeps the old value; the store has the new one.
    assert_eq!(before.age, 28);
    assert_eq!(ctx.get_typed::<UserProfile>("user").unwrap().age, 29);
    assert_eq!(
        ctx.get_state::<UserProfile>("user").unwrap(),
        UserProfile { age: 29, ..alice() }
    );
    assert!(matches!(
        ctx.update_typed::<u32, _>("user", |_| ()),
        Err(FlowError::WrongType { .. })
    ));
    assert_eq!(
        ctx.get_typed::<UserProfile>("user").unwrap().age,
        29,
        "a failed update changes nothing"
    );
    assert!(matches!(
        ctx.update_typed::<u32, _>("nobody", |_| ()),
        Err(FlowError::MissingKey { .. })
    ));
}

#[test]
fn a_panicking_update_removes_the_key_instead_of_leaving_half_a_value() {
    let ctx = Context::new();
    ctx.set_state("n", 1u32);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ctx.update_typed::<u32, _>("n", |_| panic!("boom")).unwrap();
    }));
    assert!(result.is_err());
    assert!(!ctx.has_state("n"));
    ctx.set_state("n", 2u32);
    assert_eq!(
        ctx.get_state::<u32>("n").unwrap(),
        2,
        "the store still works"
    );
}

#[test]
fn snapshots_and_json_contexts_round_trip_typed_values() {
    let ctx = Context::new();
    ctx.set_typed("user", alice());
    ctx.set_state("count", 3u64);
    let snapshot = ctx.snapshot().unwrap();
    assert_eq!(
        serde_json::Value::Object(snapshot.clone()),
        json!({"count": 3, "user": {"name": "Alice", "age": 28, "scores": [95.0, 87.5]}})
    );
    let restored = Context::from_json(snapshot);
    assert_eq!(restored.get_state::<UserProfile>("user").unwrap(), alice());
    assert_eq!(restored.get_state::<u64>("count").unwrap(), 3);
    // Once decoded, the value is native: another type is a type error.
    assert!(matches!(
        restored.get_state::<String>("count"),
        Err(FlowError::WrongType { .. })
    ));
    let undecodable = Context::from_json(
        json!({"user": "not a profile"})
            .as_object()
            .unwrap()
            .clone(),
    );
    let error = undecodable.get_state::<UserProfile>("user").unwrap_err();
    assert!(
        matches!(&error, FlowError::WrongType { found, .. } if found.starts_with("JSON string that does not decode as it")),
        "{error}"
    );
    assert_eq!(
        undecodable.get_state::<String>("user").unwrap(),
        "not a profile",
        "the value is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_states_update_one_value_without_losing_writes() {
    let n = 500;
    let mut agent = Agent::new("counter");
    agent.add_state("start", move |_ctx: Context| async move {
        Ok(Next::parallel((0..n).map(|i| format!("w{i}"))))
    });
    for i in 0..n {
        agent.add_state(format!("w{i}"), move |ctx: Context| async move {
            ctx.update_typed::<u64, _>("total", |total| *total += i as u64)?;
            ctx.set_state(format!("w{i}"), i);
            Ok(Next::End)
        });
    }
    let initial = Context::new();
    initial.set_state("total", 0u64);
    initial.set_state("given", "by the caller".to_string());
    let report = agent.run_with(initial.clone()).await.unwrap();
    assert_eq!(
        report.context.get_state::<u64>("total").unwrap(),
        (0..n as u64).sum::<u64>()
    );
    assert_eq!(report.context.len(), n + 2);
    assert_eq!(
        report.context.get_state::<String>("given").unwrap(),
        "by the caller"
    );
    // The caller's handle is the same store.
    assert_eq!(initial.len(), n + 2);
}

#[tokio::test(start_paused = true)]
async fn a_state_knows_its_run_state_attempt_and_visit_across_a_restore() {
    use std::sync::{Arc, Mutex};
    type Seen = Arc<Mutex<Vec<(String, String, u32, u32)>>>;
    fn agent(seen: &Seen) -> Agent {
        let mut agent = Agent::new("aware");
        let seen = Arc::clone(seen);
        agent
            .add_state("step", move |ctx: Context| {
                let seen = Arc::clone(&seen);
                async move {
                    let (attempt, visit) = (ctx.attempt().unwrap(), ctx.visit().unwrap());
                    seen.lock().unwrap().push((
                        ctx.run_key().unwrap().to_owned(),
                        ctx.state().unwrap().to_owned(),
                        attempt,
                        visit,
                    ));
                    assert!(ctx.run_id().is_some());
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    if visit == 1 && attempt == 1 {
                        return Err("first try fails".into());
                    }
                    Ok(if visit < 3 {
                        Next::to("step")
                    } else {
                        Next::End
                    })
                }
            })
            .retry(fluffy_flow::RetryPolicy {
                max_retries: 1,
                initial_delay: std::time::Duration::from_millis(5),
                ..fluffy_flow::RetryPolicy::default()
            })
            .successors(["step"]);
        agent
    }
    let seen: Seen = Arc::default();
    let caller = Context::new();
    let handle = agent(&seen).start_with(caller.clone()).unwrap();
    // Visit 1 fails (10 ms), retries after 5 ms, succeeds at 25 ms; visit 2 runs 25..35.
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let checkpoint = handle.pause().await.unwrap();
    let key = handle.run_key().to_owned();
    handle.cancel();
    assert_eq!(
        caller.run_key(),
        None,
        "the caller's handle belongs to no run"
    );
    assert_eq!(caller.state(), None);
    let restored = agent(&seen).restore_from_checkpoint(checkpoint).unwrap();
    assert_eq!(restored.wait().await.status, AgentStatus::Completed);
    let seen = seen.lock().unwrap().clone();
    let expected: Vec<(String, String, u32, u32)> = [(1, 1), (2, 1), (1, 2), (1, 3)]
        .into_iter()
        .map(|(attempt, visit)| (key.clone(), "step".to_owned(), attempt, visit))
        .collect();
    assert_eq!(seen, expected, "visit 3 ran after the restore, counted on");
}
