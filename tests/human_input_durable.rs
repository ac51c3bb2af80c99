//! Human input in durable runs: answers left in the checkpoint store (by this process or
//! another), suspension while waiting, and continuing with the answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{
    AnswerInbox, CheckpointPolicy, CheckpointStore, FileStore, InputOutcome, MemoryStore,
    RedbStore, RunHandle,
};
use tokio::time::{Instant, sleep};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `prepare` (counted), then `review` asks for approval (its runs counted), then `publish`.
fn approval(prepared: &Arc<AtomicU32>, reviews: &Arc<AtomicU32>) -> Agent {
    let mut agent = Agent::new("approval");
    let prepared = Arc::clone(prepared);
    agent.add_state("prepare", move |ctx: Context| {
        let prepared = Arc::clone(&prepared);
        async move {
            prepared.fetch_add(1, Ordering::SeqCst);
            ctx.set_state("draft", "Q3 report".to_owned());
            Ok(Next::to("review"))
        }
    });
    let reviews = Arc::clone(reviews);
    agent.add_state("review", move |ctx: Context| {
        let reviews = Arc::clone(&reviews);
        async move {
            reviews.fetch_add(1, Ordering::SeqCst);
            let draft: String = ctx.get_state("draft")?;
            let decision = ctx
                .human_input(format!("Publish {draft}? (yes/no)"))
                .validator(|answer: &str| match answer {
                    "yes" | "no" => Ok(()),
                    _ => Err("say yes or no"),
                })
                .no_timeout()
                .await?;
            ctx.set_state("decision", decision);
            Ok(Next::to("publish"))
        }
    });
    agent.add_state("publish", |_ctx: Context| async { Ok(Next::End) });
    agent
}

async fn pending(handle: &RunHandle) -> fluffy_flow::InputRequest {
    for _ in 0..1000 {
        if let Some(request) = handle.pending_inputs().pop() {
            return request;
        }
        sleep(ms(1)).await;
    }
    panic!("no request became pending");
}

#[tokio::test(start_paused = true)]
async fn a_suspended_run_is_continued_with_the_answer_left_in_the_store() {
    let store = MemoryStore::new();
    let (prepared, reviews) = (Arc::default(), Arc::default());
    let mut agent = approval(&prepared, &reviews);
    agent.suspend_on_input();

    let report = agent.run_durable(store.clone(), "q3").await.unwrap();
    assert_eq!(report.status, AgentStatus::AwaitingInput);
    assert!(report.error.is_none());
    assert_eq!(report.inputs.len(), 1);
    assert_eq!(report.inputs[0].outcome, InputOutcome::Pending);
    let id = report.inputs[0].request.id.clone();
    assert_eq!(
        report.inputs[0].request.prompt,
        "Publish Q3 report? (yes/no)"
    );
    let saved = store.latest("approval", "q3").unwrap().unwrap();
    assert_eq!(saved.status, AgentStatus::AwaitingInput);
    assert_eq!(saved.inputs[0].outcome, InputOutcome::Pending);

    // Answers are checked against the checkpoint before they are left.
    let unknown = fluffy_flow::InputId {
        index: 3,
        ..id.clone()
    };
    assert!(matches!(
        store.answer("approval", "q3", &unknown, "ann", "yes".into()),
        Err(FlowError::UnknownInput { .. })
    ));
    assert!(matches!(
        store.answer("approval", "q3", &id, "ann", serde_json::json!(1)),
        Err(FlowError::InvalidAnswer { .. })
    ));
    // Suspended again while nobody answered: nothing ran twice but the asking state.
    let report = agent.run_durable(store.clone(), "q3").await.unwrap();
    assert_eq!(report.status, AgentStatus::AwaitingInput);
    assert_eq!(prepared.load(Ordering::SeqCst), 1);
    assert_eq!(reviews.load(Ordering::SeqCst), 2);

    // A refused answer (the validator runs in the run) is in the audit; the next one counts.
    store
        .answer("approval", "q3", &id, "ann", "maybe".into())
        .unwrap();
    let report = agent.run_durable(store.clone(), "q3").await.unwrap();
    assert_eq!(report.status, AgentStatus::AwaitingInput);
    assert_eq!(report.inputs[0].refusals.len(), 1);
    assert_eq!(report.inputs[0].refusals[0].reason, "say yes or no");

    store
        .answer("approval", "q3", &id, "bob", "yes".into())
        .unwrap();
    let report = agent.run_durable(store.clone(), "q3").await.unwrap();
    assert!(report.is_success(), "{:?}", report.error);
    assert_eq!(
        report.context.get_state::<String>("decision").unwrap(),
        "yes"
    );
    assert_eq!(
        prepared.load(Ordering::SeqCst),
        1,
        "completed states do not run again"
    );
    assert_eq!(reviews.load(Ordering::SeqCst), 4);
    assert!(matches!(
        &report.inputs[0].outcome,
        InputOutcome::Answered { by, .. } if by == "bob"
    ));
    // Answered: a second answer is refused.
    assert!(matches!(
        store.answer("approval", "q3", &id, "carl", "no".into()),
        Err(FlowError::InputClosed { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn an_answer_left_through_the_store_in_this_process_arrives_at_once() {
    let store = MemoryStore::new();
    let (prepared, reviews) = (Arc::default(), Arc::default());
    let mut agent = approval(&prepared, &reviews);
    agent.checkpoints(store.clone(), CheckpointPolicy::after_each_state());
    let handle = agent.start().unwrap();
    let request = pending(&handle).await;
    let key = handle.run_key().to_owned();
    // Checked now, by the request's own validator.
    let refused = store
        .answer("approval", &key, &request.id, "ann", "maybe".into())
        .unwrap_err();
    assert!(refused.to_string().contains("say yes or no"), "{refused}");
    let before = Instant::now();
    store
        .answer("approval", &key, &request.id, "ann", "yes".into())
        .unwrap();
    let report = handle.wait().await;
    assert!(report.is_success());
    assert_eq!(before.elapsed(), Duration::ZERO, "no poll interval");
}

#[tokio::test(start_paused = true)]
async fn another_process_answers_through_a_file_store_within_the_poll_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (prepared, reviews) = (Arc::default(), Arc::default());
    let mut agent = approval(&prepared, &reviews);
    agent.input_poll_interval(ms(100));
    agent.checkpoints(
        FileStore::new(dir.path()),
        CheckpointPolicy::after_each_state(),
    );
    let handle = agent.start().unwrap();
    let request = pending(&handle).await;
    // What another process does: no store opened, no check against the run.
    let inbox = AnswerInbox::for_file_store(dir.path());
    inbox
        .answer("approval", handle.run_key(), &request.id, "ops", "yes")
        .unwrap();
    let posted = Instant::now();
    let report = handle.wait().await;
    assert!(report.is_success(), "{:?}", report.error);
    assert!(posted.elapsed() <= ms(100), "{:?}", posted.elapsed());
    assert!(matches!(
        &report.inputs[0].outcome,
        InputOutcome::Answered { by, .. } if by == "ops"
    ));
}

#[tokio::test(start_paused = true)]
async fn another_process_answers_a_run_holding_a_redb_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.redb");
    let (prepared, reviews) = (Arc::default(), Arc::default());
    let mut agent = approval(&prepared, &reviews);
    agent.checkpoints(
        RedbStore::open(&path).unwrap(),
        CheckpointPolicy::after_each_state(),
    );
    let handle = agent.start().unwrap();
    let request = pending(&handle).await;
    // The database is open (and locked) by the run's process; the inbox beside it is not.
    AnswerInbox::for_redb_store(&path)
        .answer("approval", handle.run_key(), &request.id, "ops", "maybe")
        .unwrap();
    sleep(fluffy_flow::DEFAULT_INPUT_POLL_INTERVAL).await;
    assert_eq!(handle.inputs()[0].refusals.len(), 1, "checked by the run");
    AnswerInbox::for_redb_store(&path)
        .answer("approval", handle.run_key(), &request.id, "ops", "no")
        .unwrap();
    let report = handle.wait().await;
    assert!(report.is_success(), "{:?}", report.error);
    assert_eq!(
        report.context.get_state::<String>("decision").unwrap(),
        "no"
    );
}

#[tokio::test]
async fn suspending_needs_a_store() {
    let (prepared, reviews) = (Arc::default(), Arc::default());
    let mut agent = approval(&prepared, &reviews);
    agent.suspend_on_input();
    let Err(error) = agent.start() else {
        panic!("a run that suspends on input started without a store")
    };
    assert!(
        error.to_string().contains("needs a checkpoint store"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn each_posting_is_taken_once_even_within_one_millisecond() {
    let store = MemoryStore::new();
    let (prepared, reviews) = (Arc::default(), Arc::default());
    let mut agent = approval(&prepared, &reviews);
    agent.checkpoints(store.clone(), CheckpointPolicy::after_each_state());
    let handle = agent.start().unwrap();
    let request = pending(&handle).await;
    let key = handle.run_key().to_owned();
    let posting = |value: &str, posting: &str| fluffy_flow::PostedAnswer {
        id: request.id.clone(),
        value: value.into(),
        by: "ops".into(),
        at_ms: 5,
        posting: posting.into(),
    };
    store
        .post_answer("approval", &key, &posting("maybe", "first"))
        .unwrap();
    sleep(fluffy_flow::DEFAULT_INPUT_POLL_INTERVAL).await;
    assert_eq!(handle.inputs()[0].refusals.len(), 1);
    // The same instant, another posting: taken.
    store
        .post_answer("approval", &key, &posting("yes", "second"))
        .unwrap();
    let report = handle.wait().await;
    assert!(report.is_success(), "{:?}", report.error);
    assert_eq!(
        report.inputs[0].refusals.len(),
        1,
        "the first posting was taken once"
    );

    // Deleting the run forgets its answers too.
    assert_eq!(store.posted_answers("approval", &key).unwrap().len(), 1);
    store.delete_run("approval", &key).unwrap();
    assert!(store.posted_answers("approval", &key).unwrap().is_empty());
}
