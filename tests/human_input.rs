//! Human input: requests made inside states, answered from code, a channel or a terminal;
//! validation before recording, timeouts with and without defaults, parallel and looping
//! requests, cancellation, and the audit in events, reports and checkpoints.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::schemars::JsonSchema;
use fluffy_flow::{
    ChannelProvider, CheckpointPolicy, CheckpointStore, EventKind, FailureKind, InputAnswerer,
    InputId, InputOutcome, InputProvider, InputRequest, MemoryStore, RetryPolicy, RunHandle,
    TerminalProvider,
};
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, sleep};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Waits (on the paused clock) until the run has `n` pending requests; returns them.
async fn pending(handle: &RunHandle, n: usize) -> Vec<InputRequest> {
    for _ in 0..1000 {
        let pending = handle.pending_inputs();
        if pending.len() >= n {
            return pending;
        }
        sleep(ms(1)).await;
    }
    panic!(
        "{n} requests never became pending: {:?}",
        handle.pending_inputs()
    );
}

/// One state that asks for approval and stores the answer under "decision".
fn review(
    configure: impl Fn(&Context) -> fluffy_flow::HumanInput<'_> + Send + Sync + 'static,
) -> Agent {
    let configure = Arc::new(configure);
    let mut agent = Agent::new("review");
    agent.add_state("review", move |ctx: Context| {
        let configure = Arc::clone(&configure);
        async move {
            let decision = configure(&ctx).await?;
            ctx.set_state("decision", decision);
            Ok(Next::End)
        }
    });
    agent
}

fn approve_or_reject(answer: &str) -> Result<(), String> {
    match answer {
        "approve" | "reject" => Ok(()),
        other => Err(format!("`{other}` is neither approve nor reject")),
    }
}

#[tokio::test(start_paused = true)]
async fn an_answer_is_validated_before_it_is_recorded() {
    let agent = review(|ctx| {
        ctx.human_input("Approve?")
            .validator(approve_or_reject)
            .timeout(Duration::from_secs(60))
    });
    let (handle, mut events) = agent.start_watched(Context::new()).unwrap();
    let requests = pending(&handle, 1).await;
    let id = requests[0].id.clone();
    assert_eq!(
        (id.run_key.as_str(), id.state.as_str(), id.visit, id.index),
        (handle.run_key(), "review", 1, 0)
    );
    assert_eq!(requests[0].prompt, "Approve?");
    assert_eq!(requests[0].schema, serde_json::json!({ "type": "string" }));
    assert_eq!(requests[0].timeout, Some(Duration::from_secs(60)));

    let refused = handle.answer_as("ann", &id, "maybe").unwrap_err();
    assert!(
        matches!(&refused, FlowError::InvalidAnswer { reason, .. } if reason == "`maybe` is neither approve nor reject"),
        "{refused}"
    );
    assert!(refused.to_string().contains("still pending"), "{refused}");
    let wrong_type = handle.answer(&id, 42).unwrap_err();
    assert!(
        wrong_type.to_string().contains("must be text"),
        "{wrong_type}"
    );
    assert_eq!(
        handle.pending_inputs().len(),
        1,
        "refusals leave it pending"
    );

    handle.answer_as("bob", &id, "approve").unwrap();
    let again = handle.answer(&id, "reject").unwrap_err();
    assert!(
        matches!(&again, FlowError::InputClosed { how, .. } if how == "answered by bob"),
        "{again}"
    );
    let report = handle.wait().await;
    assert!(report.is_success(), "{:?}", report.error);
    assert_eq!(
        report.context.get_state::<String>("decision").unwrap(),
        "approve"
    );

    let record = &report.inputs[0];
    assert_eq!(record.refusals.len(), 2);
    assert_eq!(
        (
            record.refusals[0].by.as_str(),
            record.refusals[0].value.clone()
        ),
        ("ann", serde_json::json!("maybe"))
    );
    assert!(
        matches!(&record.outcome, InputOutcome::Answered { value, by, .. } if value == "approve" && by == "bob")
    );

    let mut kinds = Vec::new();
    while let Some(event) = events.next().await {
        match event.unwrap().kind {
            EventKind::InputRequested { prompt, .. } => kinds.push(format!("requested {prompt}")),
            EventKind::InputRefused { by, .. } => kinds.push(format!("refused {by}")),
            EventKind::InputAnswered { by, .. } => kinds.push(format!("answered {by}")),
            _ => {}
        }
    }
    assert_eq!(
        kinds,
        [
            "requested Approve?",
            "refused ann",
            "refused code",
            "answered bob"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_unknown_request_is_an_error() {
    let agent = review(|ctx| ctx.human_input("Approve?"));
    let handle = agent.start().unwrap();
    let id = pending(&handle, 1).await[0].id.clone();
    let unknown = InputId {
        index: 7,
        ..id.clone()
    };
    let error = handle.answer(&unknown, "approve").unwrap_err();
    assert!(matches!(error, FlowError::UnknownInput { .. }), "{error}");
    assert!(error.to_string().contains(&unknown.to_string()), "{error}");
    // Through the agent, for its latest run, and by the id's text.
    let by_text: InputId = id.to_string().parse().unwrap();
    agent.answer(&by_text, "approve").unwrap();
    assert!(handle.wait().await.is_success());
}

#[tokio::test(start_paused = true)]
async fn on_timeout_the_default_is_used_or_the_attempt_fails() {
    // With a default: the run goes on with it after exactly the timeout.
    let agent = review(|ctx| {
        ctx.human_input("Approve?")
            .timeout(ms(500))
            .default("reject")
    });
    let start = Instant::now();
    let report = agent.run().await.unwrap();
    assert_eq!(start.elapsed(), ms(500));
    assert_eq!(
        report.context.get_state::<String>("decision").unwrap(),
        "reject"
    );
    assert!(matches!(
        &report.inputs[0].outcome,
        InputOutcome::TimedOut { default: Some(value) } if value == "reject"
    ));

    // Without one: the attempt fails with `InputTimeout`, a timeout of its own kind, and a
    // retry asks the same request again.
    let mut agent = review(|ctx| ctx.human_input("Approve?").timeout(ms(500)));
    agent.default_retry(RetryPolicy {
        max_retries: 1,
        initial_delay: ms(100),
        ..RetryPolicy::DEFAULT
    });
    let (handle, mut events) = agent.start_watched(Context::new()).unwrap();
    let mut asked = Vec::new();
    let mut answered = false;
    while let Some(event) = events.next().await {
        match event.unwrap().kind {
            EventKind::InputRequested { id, .. } => {
                asked.push((id.clone(), Instant::now() - start));
                if asked.len() == 2 {
                    handle.answer(&id, "approve").unwrap();
                    answered = true;
                }
            }
            EventKind::StateRetrying { error, .. } => {
                assert!(
                    error.contains("waited 500ms for an answer to \"Approve?\""),
                    "{error}"
                );
            }
            _ => {}
        }
    }
    assert!(answered);
    assert_eq!(asked[0].0, asked[1].0, "the retry asks the same request");
    assert_eq!(asked[1].1 - asked[0].1, ms(600));
    let report = handle.wait().await;
    assert!(report.is_success());
    assert_eq!(
        report.context.get_state::<String>("decision").unwrap(),
        "approve"
    );

    // With no retry left, the run fails and the dead letter says why.
    let agent = review(|ctx| ctx.human_input("Approve?").timeout(ms(500)));
    let report = agent.run_with(Context::new()).await.unwrap_err();
    assert!(report.to_string().contains("gave up"), "{report}");
    let letters = agent.dead_letters();
    assert_eq!(letters[0].kind, FailureKind::InputTimeout);
    assert!(letters[0].timed_out);
}

#[tokio::test(start_paused = true)]
async fn without_a_timeout_the_default_hour_applies_and_no_timeout_waits_on() {
    let agent = review(|ctx| ctx.human_input("Approve?").default("reject"));
    let start = Instant::now();
    agent.run().await.unwrap();
    assert_eq!(start.elapsed(), fluffy_flow::DEFAULT_INPUT_TIMEOUT);

    let agent = review(|ctx| ctx.human_input("Approve?").no_timeout().default("reject"));
    let handle = agent.start().unwrap();
    let id = pending(&handle, 1).await[0].id.clone();
    sleep(Duration::from_secs(10 * 24 * 3600)).await;
    assert_eq!(
        handle.pending_inputs().len(),
        1,
        "still waiting after ten days"
    );
    assert_eq!(pending(&handle, 1).await[0].timeout, None);
    handle.answer(&id, "approve").unwrap();
    let report = handle.wait().await;
    assert_eq!(
        report.context.get_state::<String>("decision").unwrap(),
        "approve"
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "fluffy_flow::schemars")]
struct Budget {
    approved: bool,
    amount: u32,
}

#[tokio::test(start_paused = true)]
async fn a_typed_request_carries_its_schema_and_refuses_other_types() {
    let mut agent = Agent::new("budget");
    agent.add_state("ask", |ctx: Context| async move {
        let budget: Budget = ctx
            .ask::<Budget>("Approve the budget?")
            .validator(|b: &Budget| {
                if b.amount <= 1000 {
                    Ok(())
                } else {
                    Err(format!("{} is over the limit of 1000", b.amount))
                }
            })
            .await?;
        ctx.set_state("budget", budget);
        Ok(Next::End)
    });
    let handle = agent.start().unwrap();
    let request = pending(&handle, 1).await.remove(0);
    let schema = &request.schema;
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["properties"]["approved"]["type"], "boolean");
    assert_eq!(schema["properties"]["amount"]["type"], "integer");

    let wrong = handle.answer(&request.id, "yes").unwrap_err();
    assert!(wrong.to_string().contains("not a `"), "{wrong}");
    let over = handle
        .answer(
            &request.id,
            Budget {
                approved: true,
                amount: 5000,
            },
        )
        .unwrap_err();
    assert!(
        over.to_string().contains("5000 is over the limit"),
        "{over}"
    );
    handle
        .answer(
            &request.id,
            serde_json::json!({ "approved": true, "amount": 800 }),
        )
        .unwrap();
    let report = handle.wait().await;
    assert_eq!(
        report.context.get_state::<Budget>("budget").unwrap(),
        Budget {
            approved: true,
            amount: 800
        }
    );
    assert_eq!(report.inputs[0].refusals.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn parallel_requests_are_answered_in_any_order() {
    for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
        let mut agent = Agent::new("panel");
        agent.add_state("fork", |_ctx: Context| async {
            Ok(Next::parallel(["legal", "finance", "security"]))
        });
        for name in ["legal", "finance", "security"] {
            agent.add_state(name, move |ctx: Context| async move {
                let first = ctx.human_input(format!("{name}: first?")).await?;
                let second = ctx.human_input(format!("{name}: second?")).await?;
                ctx.set_state(name, format!("{first}+{second}"));
                Ok(Next::End)
            });
        }
        let handle = agent.start().unwrap();
        let requests = pending(&handle, 3).await;
        let mut states: Vec<&str> = requests.iter().map(|r| r.id.state.as_str()).collect();
        states.sort_unstable();
        assert_eq!(states, ["finance", "legal", "security"]);
        for &at in &order {
            let id = &requests[at].id;
            assert_eq!(id.index, 0);
            handle.answer(id, format!("{}-1", id.state)).unwrap();
        }
        // Each state's second request is index 1 of its attempt.
        let seconds = pending(&handle, 3).await;
        for request in seconds.iter().rev() {
            assert_eq!(request.id.index, 1);
            handle
                .answer(&request.id, format!("{}-2", request.id.state))
                .unwrap();
        }
        let report = handle.wait().await;
        assert!(report.is_success());
        for name in ["legal", "finance", "security"] {
            assert_eq!(
                report.context.get_state::<String>(name).unwrap(),
                format!("{name}-1+{name}-2"),
                "{order:?}"
            );
        }
        assert_eq!(report.inputs.len(), 6);
    }
}

#[tokio::test(start_paused = true)]
async fn a_loop_makes_a_new_request_per_visit() {
    let mut agent = Agent::new("edit");
    agent.add_state("draft", |ctx: Context| async move {
        let verdict = ctx.human_input("Good enough?").await?;
        let rounds = ctx.get_state_or::<u32>("rounds", 0)? + 1;
        ctx.set_state("rounds", rounds);
        Ok(if verdict == "yes" {
            Next::End
        } else {
            Next::to("draft")
        })
    });
    let (provider, mut requests) = ChannelProvider::new();
    agent.input_provider(provider);
    let handle = agent.start().unwrap();
    let mut visits = Vec::new();
    while let Some(request) = requests.recv().await {
        visits.push(request.request.id.visit);
        let answer = if visits.len() == 3 { "yes" } else { "no" };
        request.answer("editor", answer).unwrap();
        if visits.len() == 3 {
            break;
        }
    }
    let report = handle.wait().await;
    assert_eq!(visits, [1, 2, 3]);
    assert_eq!(report.context.get_state::<u32>("rounds").unwrap(), 3);
    assert!(
        report
            .inputs
            .iter()
            .all(|r| matches!(&r.outcome, InputOutcome::Answered { by, .. } if by == "editor"))
    );
}

/// Records what it is told.
#[derive(Clone, Default)]
struct Recorder {
    requested: Arc<Mutex<Vec<InputId>>>,
    closed: Arc<Mutex<Vec<InputId>>>,
}

impl InputProvider for Recorder {
    fn requested(&self, request: InputRequest, _answerer: InputAnswerer) {
        self.requested.lock().unwrap().push(request.id);
    }
    fn closed(&self, id: &InputId) {
        self.closed.lock().unwrap().push(id.clone());
    }
}

#[tokio::test(start_paused = true)]
async fn cancelling_withdraws_pending_requests_and_tells_the_provider() {
    let mut agent = Agent::new("cancel");
    agent.add_state("fork", |_ctx: Context| async {
        Ok(Next::parallel(["a", "b"]))
    });
    for name in ["a", "b"] {
        agent.add_state(name, move |ctx: Context| async move {
            ctx.human_input(format!("{name}?")).await?;
            Ok(Next::End)
        });
    }
    let recorder = Recorder::default();
    agent.input_provider(recorder.clone());
    let (handle, mut events) = agent.start_watched(Context::new()).unwrap();
    let requests = pending(&handle, 2).await;
    assert_eq!(handle.cancel_state("a").await.unwrap(), 1);
    sleep(ms(1)).await;
    let left: Vec<String> = handle
        .pending_inputs()
        .iter()
        .map(|r| r.id.state.clone())
        .collect();
    assert_eq!(left, ["b"]);
    let a = requests.iter().find(|r| r.id.state == "a").unwrap();
    let closed = handle.answer(&a.id, "late").unwrap_err();
    assert!(closed.to_string().contains("withdrawn"), "{closed}");
    handle.cancel();
    let report = handle.wait().await;
    assert_eq!(report.status, AgentStatus::Cancelled);
    assert!(
        report
            .inputs
            .iter()
            .all(|r| r.outcome == InputOutcome::Withdrawn)
    );
    let mut closed = recorder.closed.lock().unwrap().clone();
    closed.sort_by(|x, y| x.state.cmp(&y.state));
    let mut requested = recorder.requested.lock().unwrap().clone();
    requested.sort_by(|x, y| x.state.cmp(&y.state));
    assert_eq!(closed, requested);
    let mut withdrawn = 0;
    while let Some(event) = events.next().await {
        if let EventKind::InputWithdrawn { .. } = event.unwrap().kind {
            withdrawn += 1;
        }
    }
    assert_eq!(withdrawn, 2);
}

#[tokio::test(start_paused = true)]
async fn a_paused_run_still_accepts_answers() {
    let mut agent = Agent::new("review then publish");
    agent.add_state("review", |ctx: Context| async move {
        ctx.human_input("Approve?").await?;
        Ok(Next::to("publish"))
    });
    agent.add_state("publish", |_ctx: Context| async { Ok(Next::End) });
    let handle = agent.start().unwrap();
    let id = pending(&handle, 1).await[0].id.clone();
    // The pause completes when nothing runs: once the waiting state has its answer.
    let pausing = tokio::spawn(handle.pause());
    sleep(ms(10)).await;
    assert!(!pausing.is_finished());
    handle.answer(&id, "approve").unwrap();
    let checkpoint = pausing.await.unwrap().unwrap();
    assert_eq!(checkpoint.completed().collect::<Vec<_>>(), ["review"]);
    handle.resume();
    assert!(handle.wait().await.is_success());
}

#[tokio::test(start_paused = true)]
async fn the_terminal_provider_says_why_it_refused_and_asks_again() {
    let agent_input = std::io::Cursor::new(b"maybe\napprove\n".to_vec());
    let output = SharedBuffer::default();
    let mut agent = review(|ctx| {
        // (No timeout: the paused clock would otherwise jump to it while the terminal's
        // thread reads.)
        ctx.human_input("Review this content (approve/reject):")
            .validator(approve_or_reject)
            .default("reject")
            .no_timeout()
    });
    agent
        .input_provider(TerminalProvider::with_io(agent_input, output.clone()).answering_as("tty"));
    let report = agent.run().await.unwrap();
    assert_eq!(
        report.context.get_state::<String>("decision").unwrap(),
        "approve"
    );
    assert_eq!(
        output.text(),
        "Review this content (approve/reject): (default: reject) > refused: `maybe` is neither approve nor reject; try again\n\
         Review this content (approve/reject): (default: reject) > "
    );
    assert!(matches!(&report.inputs[0].outcome, InputOutcome::Answered { by, .. } if by == "tty"));
}

/// A writer tests can read back.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for SharedBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn an_answer_recorded_before_a_restore_is_not_asked_again() {
    let store = MemoryStore::new();
    let asked = Arc::new(Mutex::new(0u32));
    let before = Arc::new(Mutex::new(0u32));
    let mut agent = Agent::new("durable review");
    let (a, b) = (Arc::clone(&asked), Arc::clone(&before));
    agent.add_state("review", move |ctx: Context| {
        let (asked, before) = (Arc::clone(&a), Arc::clone(&b));
        async move {
            *before.lock().unwrap() += 1;
            let decision = ctx.human_input("Approve?").await?;
            *asked.lock().unwrap() += 1;
            // Still running after the answer: a crash now loses the state's run, not the answer.
            sleep(Duration::from_secs(3600)).await;
            ctx.set_state("decision", decision);
            Ok(Next::End)
        }
    });
    agent.checkpoints(store.clone(), CheckpointPolicy::after_each_state());
    let handle = agent.start().unwrap();
    let id = pending(&handle, 1).await[0].id.clone();
    handle.answer(&id, "approve").unwrap();
    sleep(ms(10)).await;
    // The answer was saved at once, though no state has completed.
    let saved = store
        .latest("durable review", handle.run_key())
        .unwrap()
        .unwrap();
    assert!(
        matches!(&saved.inputs[0].outcome, InputOutcome::Answered { value, .. } if value == "approve")
    );
    handle.cancel();
    handle.wait().await;

    // Restored, the state runs again from its start and gets the recorded answer at once.
    let restored = agent.restore_from_checkpoint(saved).unwrap();
    let report = restored.wait().await;
    assert!(report.is_success(), "{:?}", report.error);
    assert_eq!(
        report.context.get_state::<String>("decision").unwrap(),
        "approve"
    );
    assert_eq!(
        *before.lock().unwrap(),
        2,
        "the code before the request ran again"
    );
    assert_eq!(*asked.lock().unwrap(), 2);
    assert_eq!(report.inputs.len(), 1);
}

#[tokio::test]
async fn asking_outside_a_state_is_an_error() {
    let ctx = Context::new();
    let error = ctx.human_input("Approve?").await.unwrap_err();
    assert!(
        matches!(&error, FlowError::InputOutsideState { prompt } if prompt == "Approve?"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_keeps_its_own_visit_while_another_run_of_the_state_waits() {
    // start -> [a, b], a -> b: `b` runs twice at once (visits 1 and 2). Visit 1 times out and
    // is retried while visit 2 has been answered: the retry asks its own request again (it
    // does not take visit 2's answer).
    let mut agent = Agent::new("twice");
    agent
        .add_state("start", |_ctx: Context| async {
            Ok(Next::parallel(["a", "b"]))
        })
        .successors(["a", "b"]);
    agent
        .add_state("a", |_ctx: Context| async {
            sleep(ms(5)).await;
            Ok(Next::to("b"))
        })
        .successors(["b"]);
    agent
        .add_state("b", |ctx: Context| async move {
            let answer = ctx.human_input("b?").timeout(ms(100)).await?;
            ctx.set_state(format!("b{}", ctx.visit().unwrap()), answer);
            Ok(Next::End)
        })
        .terminal()
        .retry(RetryPolicy {
            max_retries: 1,
            initial_delay: ms(10),
            ..RetryPolicy::DEFAULT
        });
    let handle = agent.start().unwrap();
    let requests = pending(&handle, 2).await;
    let visits: Vec<u32> = requests.iter().map(|r| r.id.visit).collect();
    assert_eq!(visits, [1, 2]);
    handle.answer(&requests[1].id, "second").unwrap();
    // Visit 1 times out at 100 ms and asks again at 110 ms, as visit 1.
    sleep(ms(150)).await;
    let again = pending(&handle, 1).await;
    assert_eq!(again[0].id, requests[0].id);
    handle.answer(&again[0].id, "first").unwrap();
    let report = handle.wait().await;
    assert!(report.is_success(), "{:?}", report.error);
    assert_eq!(report.context.get_state::<String>("b1").unwrap(), "first");
    assert_eq!(report.context.get_state::<String>("b2").unwrap(), "second");
    assert_eq!(report.state("b").unwrap().visits, 2);
    assert_eq!(report.state("b").unwrap().runs, 2);
}
