//! A ReAct agent: a model that thinks, calls tools in parallel, reads their results and
//! answers, with its answer streamed token by token. Written twice, with the builder and with
//! the macros, and run both ways.
//!
//! - The model asks for several tool calls at once; `Next::map` (`map!`) runs one `tool`
//!   branch per call, each reading its call with `ctx.input()`.
//! - Each tool appends its result to `messages`, a key with an append reducer: the results
//!   come back in the order the model asked for them, though the fast tool finishes first.
//! - The model's final answer goes out through `ctx.emit`, read here from `start_streaming`.
//! - A step limit stops a model that never stops calling tools.
//!
//! The model is scripted so that the example runs anywhere, offline and deterministic.
//!
//! ```text
//! cargo run --example react_agent
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{StreamMode, StreamPart};
use serde::{Deserialize, Serialize};

/// A tool the model asks to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    tool: String,
    argument: String,
}

/// One entry of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    User(String),
    /// The model asked for these calls.
    Calls(Vec<ToolCall>),
    /// A tool's answer to one call.
    Result {
        tool: String,
        output: String,
    },
    Answer(String),
}

/// What the model decides after reading the conversation.
enum Decision {
    Call(Vec<ToolCall>),
    Answer(String),
}

/// A scripted model: each turn answers with the next step of its script. `endless` calls a
/// tool forever (to show the step limit).
struct FakeModel {
    endless: bool,
}

impl FakeModel {
    async fn think(&self, messages: &[Message]) -> Decision {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let turn = messages
            .iter()
            .filter(|m| matches!(m, Message::Calls(_)))
            .count();
        let call = |tool: &str, argument: &str| ToolCall {
            tool: tool.into(),
            argument: argument.into(),
        };
        match (self.endless, turn) {
            (true, _) => Decision::Call(vec![call("search", "more")]),
            (false, 0) => Decision::Call(vec![
                call("search", "fork order"),
                call("calculator", "6 * 7"),
            ]),
            (false, 1) => Decision::Call(vec![call("search", "reducers")]),
            (false, _) => {
                let results: Vec<&str> = messages
                    .iter()
                    .filter_map(|m| match m {
                        Message::Result { output, .. } => Some(output.as_str()),
                        _ => None,
                    })
                    .collect();
                Decision::Answer(format!("Found: {}.", results.join("; ")))
            }
        }
    }
}

/// Runs one tool call: the search is slow, the calculator fast.
async fn run_tool(call: &ToolCall) -> String {
    match call.tool.as_str() {
        "search" => {
            tokio::time::sleep(Duration::from_millis(60)).await;
            format!("3 pages on {}", call.argument)
        }
        "calculator" => {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let product: i64 = call
                .argument
                .split('*')
                .map(|n| n.trim().parse::<i64>().unwrap_or(0))
                .product();
            product.to_string()
        }
        other => format!("no tool named {other}"),
    }
}

/// The agent's step: think, then call tools (a map) or answer.
async fn think(model: &FakeModel, ctx: &Context) -> Result<Next, FlowError> {
    let messages: Vec<Message> = ctx.get_state_or("messages", Vec::new())?;
    match model.think(&messages).await {
        Decision::Call(calls) => {
            ctx.set_state("messages", Message::Calls(calls.clone()));
            Ok(Next::map("tool", calls))
        }
        Decision::Answer(answer) => {
            ctx.set_state("answer", answer);
            Ok(Next::to("respond"))
        }
    }
}

/// One tool call, on a branch of its own.
async fn tool(ctx: &Context) -> Result<Next, FlowError> {
    let call: ToolCall = ctx.input()?;
    let output = run_tool(&call).await;
    ctx.set_state(
        "messages",
        Message::Result {
            tool: call.tool,
            output,
        },
    );
    Ok(Next::to("agent"))
}

/// Streams the answer, a word at a time.
async fn respond(ctx: &Context) -> Result<Next, FlowError> {
    let answer: String = ctx.get_state("answer")?;
    for word in answer.split_inclusive(' ') {
        tokio::time::sleep(Duration::from_millis(2)).await;
        ctx.emit(word).await?;
    }
    ctx.set_state("messages", Message::Answer(answer));
    Ok(Next::End)
}

// ---- The builder form --------------------------------------------------------------------

fn builder_agent(model: FakeModel) -> Agent {
    let model = Arc::new(model);
    let mut agent = Agent::new("react_agent");
    agent.reducer("messages", Reducer::append::<Message>());
    agent.max_steps(20);
    agent
        .add_state("agent", move |ctx: Context| {
            let model = Arc::clone(&model);
            async move { Ok(think(&model, &ctx).await?) }
        })
        .successors(["tool", "respond"]);
    agent
        .add_state("tool", |ctx: Context| async move { Ok(tool(&ctx).await?) })
        .successors(["agent"]);
    agent.add_state(
        "respond",
        |ctx: Context| async move { Ok(respond(&ctx).await?) },
    );
    agent
}

// ---- The macro form ----------------------------------------------------------------------

#[context]
#[derive(Debug, Clone)]
pub struct Conversation {
    #[reduce(append)]
    messages: Vec<Message>,
    answer: String,
}

struct ReactAgent {
    model: FakeModel,
}

#[workflow(name = "react_agent", context = Conversation, max_steps = 20)]
impl ReactAgent {
    #[state(entry, name = "agent")]
    async fn reason(&self, ctx: &Context) -> StateResult {
        let messages = ctx.messages().unwrap_or_default();
        match self.model.think(&messages).await {
            Decision::Call(calls) => {
                ctx.add_messages(Message::Calls(calls.clone()));
                map!(tool, calls)
            }
            Decision::Answer(answer) => {
                ctx.set_answer(answer);
                next!(respond)
            }
        }
    }

    #[state]
    async fn tool(&self, ctx: &Context) -> StateResult {
        tool(ctx).await?;
        next!(agent)
    }

    #[state]
    async fn respond(&self, ctx: &Context) -> StateResult {
        respond(ctx).await?;
        end!()
    }
}

/// Runs `agent` with the user's question, printing the answer as it streams; returns the
/// conversation and the streamed text.
async fn converse(agent: &Agent, form: &str) -> Result<(Vec<Message>, String), FlowError> {
    let ctx = Context::new();
    ctx.set_state(
        "messages",
        vec![Message::User("What do fork order and 6 * 7 give?".into())],
    );
    let (handle, mut stream) = agent.start_streaming(ctx, StreamMode::CUSTOM)?;
    print!("{form}: ");
    let streamed = Mutex::new(String::new());
    while let Some(part) = stream.next().await {
        if let StreamPart::Custom { value, .. } = part {
            let word = value.as_str().unwrap_or_default().to_owned();
            print!("{word}");
            streamed.lock().expect("not poisoned").push_str(&word);
        }
    }
    println!();
    let report = handle.result().await?;
    let messages: Vec<Message> = report.context.get_state("messages")?;
    let streamed = streamed.into_inner().expect("not poisoned");
    Ok((messages, streamed))
}

#[tokio::main]
async fn main() -> Result<(), FlowError> {
    let built = builder_agent(FakeModel { endless: false });
    let (messages, streamed) = converse(&built, "builder").await?;
    let macro_agent = ReactAgent {
        model: FakeModel { endless: false },
    }
    .agent();
    let (macro_messages, macro_streamed) = converse(&macro_agent, "macros ").await?;

    let expected_answer = "Found: 3 pages on fork order; 42; 3 pages on reducers.";
    assert_eq!(streamed, expected_answer);
    assert_eq!(macro_streamed, expected_answer);
    assert_eq!(
        messages, macro_messages,
        "both forms hold the same conversation"
    );
    // The calculator finished long before the search, yet its result comes second: the
    // order the model asked in.
    assert_eq!(
        messages[2],
        Message::Result {
            tool: "search".into(),
            output: "3 pages on fork order".into()
        }
    );
    assert_eq!(
        messages[3],
        Message::Result {
            tool: "calculator".into(),
            output: "42".into()
        }
    );
    println!("{} messages, in the order asked:", messages.len());
    for message in &messages {
        println!("  {message:?}");
    }

    // A model that never stops calling tools meets the step limit.
    let runaway = builder_agent(FakeModel { endless: true });
    let report = runaway.start()?.wait().await;
    match &report.error {
        Some(FlowError::StepLimit { limit, state, .. }) => {
            println!("runaway model stopped after {limit} steps, before `{state}` ran again");
        }
        other => panic!("expected the step limit, got {other:?}"),
    }
    Ok(())
}
