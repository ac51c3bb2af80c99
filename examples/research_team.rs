//! A research team: reusable workflows composed as subgraphs, and agents run as a team.
//!
//! - `research` (search, then summarize) is one workflow. The `report` workflow runs it as a
//!   subgraph once per topic, through a map (`input_item`): each topic gets its own run, and
//!   an append reducer gathers the summaries in topic order, whichever finished first.
//! - A flaky search fails its first try; the subgraph state's retry runs that topic's
//!   `research` again as a whole.
//! - The summaries stream out as the subgraph's states `emit` them, named by their path.
//! - Then a team: the `report` workflow and a `publish` workflow as a pipeline (the second
//!   sees what the first wrote), and two reviewers side by side on copies of the result.
//!
//! The "search engine" is scripted so that the example runs anywhere, offline.
//!
//! ```text
//! cargo run --example research_team
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{RetryPolicy, StreamMode, StreamPart, SubgraphMapping, Team};

/// `research`: look a topic up, then summarize what was found.
fn research(flaky_searches: Arc<AtomicU32>) -> Agent {
    let mut agent = Agent::new("research");
    agent.add_state("search", move |ctx: Context| {
        let flaky = Arc::clone(&flaky_searches);
        async move {
            let topic: String = ctx.get_state("topic")?;
            // Topics take different times; "rust" fails its first search.
            tokio::time::sleep(Duration::from_millis(10 * topic.len() as u64)).await;
            if topic == "rust" && flaky.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err("search engine timed out".into());
            }
            ctx.set_state(
                "hits",
                vec![format!("{topic}: 3 papers"), format!("{topic}: 1 survey")],
            );
            Ok(Next::to("summarize"))
        }
    });
    agent.add_state("summarize", |ctx: Context| async move {
        let hits: Vec<String> = ctx.get_state("hits")?;
        let summary = format!("{} ({} sources)", hits[0], hits.len());
        ctx.emit(&summary).await?;
        ctx.set_state("summary", summary);
        Ok(Next::End)
    });
    agent
}

/// `report`: research every topic (one subgraph run each), then write the report.
fn report(research: &Agent) -> Agent {
    let mut agent = Agent::new("report");
    agent.reducer("summaries", Reducer::append::<String>());
    agent.add_state("plan", |ctx: Context| async move {
        let topics: Vec<String> = ctx.get_state("topics")?;
        Ok(Next::map("research", topics))
    });
    agent
        .add_subgraph(
            "research",
            research,
            SubgraphMapping::new()
                .input_item("topic")
                .output("summary", "summaries")
                .then("write"),
        )
        .retry(RetryPolicy {
            max_retries: 2,
            initial_delay: Duration::from_millis(5),
            ..RetryPolicy::default()
        })
        .timeout(Duration::from_secs(5));
    agent.add_state("write", |ctx: Context| async move {
        let summaries: Vec<String> = ctx.get_state("summaries")?;
        ctx.set_state("report", summaries.join("; "));
        Ok(Next::End)
    });
    agent
}

fn publish() -> Agent {
    let mut agent = Agent::new("publish");
    agent.add_state("publish", |ctx: Context| async move {
        let report: String = ctx.get_state("report")?;
        ctx.set_state("published", format!("PUBLISHED: {report}"));
        Ok(Next::End)
    });
    agent
}

fn reviewer(name: &'static str, wants: &'static str) -> Agent {
    let mut agent = Agent::new(name);
    agent.add_state("review", move |ctx: Context| async move {
        let report: String = ctx.get_state("report")?;
        ctx.set_state("approved", report.contains(wants));
        Ok(Next::End)
    });
    agent
}

#[tokio::main]
async fn main() -> Result<(), FlowError> {
    let flaky = Arc::new(AtomicU32::new(0));
    let report_agent = report(&research(Arc::clone(&flaky)));
    let topics = vec!["rust".to_string(), "tokio".to_string(), "io".to_string()];

    // 1. The report workflow alone, streaming what its subgraphs emit.
    let context = Context::new();
    context.set_state("topics", topics.clone());
    let (handle, mut stream) = report_agent.start_streaming(context, StreamMode::CUSTOM)?;
    while let Some(part) = stream.next().await {
        if let StreamPart::Custom { state, value } = part {
            println!("{state}: {value}");
        }
    }
    let run = handle.result().await?;
    let summaries: Vec<String> = run.context.get_state("summaries")?;
    assert_eq!(
        summaries,
        [
            "rust: 3 papers (2 sources)",
            "tokio: 3 papers (2 sources)",
            "io: 3 papers (2 sources)",
        ],
        "in topic order, though `io` finished first and `rust` was retried"
    );
    println!("report: {}", run.context.get_state::<String>("report")?);
    for state in &run.states {
        println!(
            "  {:<20} runs {} attempts {} {:?}",
            state.name, state.runs, state.attempts, state.status
        );
    }
    let search = run.state("research/search").expect("in the report");
    assert_eq!(search.runs, 4, "three topics, one of them twice");
    assert_eq!(flaky.load(Ordering::SeqCst), 2);

    // 2. A pipeline: research and write, then publish what was written.
    let context = Context::new();
    context.set_state("topics", topics);
    let pipeline = Team::new().with(&report_agent).with(&publish());
    let done = pipeline.run_pipeline(context).await;
    let published: String = done
        .context()
        .expect("a pipeline hands on one context")
        .get_state("published")?;
    println!("{published}");
    assert!(published.starts_with("PUBLISHED: rust"));

    // 3. Two reviewers side by side, each on its own copy of the result.
    let reviewers = Team::new()
        .with(&reviewer("strict", "5 papers"))
        .with(&reviewer("lenient", "papers"));
    let verdicts = reviewers
        .run_parallel(done.context().expect("ran").clone())
        .await
        .into_result()?;
    for verdict in &verdicts {
        println!(
            "{} approves: {}",
            verdict.agent,
            verdict.context.get_state::<bool>("approved")?
        );
    }
    let approvals: Vec<bool> = verdicts
        .iter()
        .map(|r| r.context.get_state("approved"))
        .collect::<Result<_, _>>()?;
    assert_eq!(approvals, [false, true]);
    Ok(())
}
