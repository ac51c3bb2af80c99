//! The macro form: the generated graph, its rendering, and that a macro workflow behaves
//! exactly like the same workflow built by hand.

use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{DependencyType, RunReport};

struct Review {
    reviewers: usize,
}

#[workflow(name = "review", max_concurrent = 4)]
impl Review {
    #[state(entry)]
    async fn draft(&self, ctx: &Context) -> StateResult {
        tokio::time::sleep(Duration::from_millis(5)).await;
        ctx.set_state("draft", "text".to_string());
        parallel!(grammar, facts)
    }

    #[state(priority = high, deps(draft = required))]
    async fn grammar(&self, ctx: &Context) -> StateResult {
        tokio::time::sleep(Duration::from_millis(10)).await;
        ctx.set_state("grammar", self.reviewers);
        next!(publish)
    }

    #[state(timeout = "1s", on_error = retract)]
    async fn facts(&self, ctx: &Context) -> StateResult {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ctx.set_state("facts", true);
        next!(publish)
    }

    #[state]
    async fn retract(&self, ctx: &Context) -> StateResult {
        ctx.set_state("retracted", true);
        end!()
    }

    #[state]
    async fn publish(&self, ctx: &Context) -> StateResult {
        let grammar: usize = ctx.get_state("grammar")?;
        let facts: bool = ctx.get_state("facts")?;
        ctx.update_typed::<u32, _>("published", |n| *n += 1)?;
        ctx.set_state(
            "summary",
            format!("{grammar} reviewers, facts checked: {facts}"),
        );
        end!()
    }
}

#[test]
fn the_generated_graph_has_every_edge_dependency_and_entry() {
    let graph = Review::GRAPH;
    assert_eq!(graph.name, "review");
    assert_eq!(graph.max_concurrent, Some(4));
    assert_eq!(graph.entries(), ["draft"]);
    assert_eq!(
        graph.edges(),
        [
            ("draft", "grammar"),
            ("draft", "facts"),
            ("grammar", "publish"),
            ("facts", "publish")
        ]
    );
    assert_eq!(
        graph.dependency_edges(),
        [("draft", "grammar", DependencyType::Required)]
    );
    assert_eq!(graph.state("facts").unwrap().on_error, Some("retract"));
    assert_eq!(
        graph.state("facts").unwrap().timeout,
        Some(Duration::from_secs(1))
    );
    assert_eq!(graph.state("grammar").unwrap().priority, Priority::High);
    assert_eq!(
        graph.to_mermaid(),
        "flowchart TD
    draft([draft])
    grammar[grammar]
    facts[facts]
    retract[retract]
    publish[publish]
    draft --> grammar
    draft --> facts
    grammar --> publish
    facts --> publish
    draft -.->|required| grammar
    facts -->|on error| retract
"
    );
    assert!(graph.to_dot().contains("    \"draft\" -> \"grammar\";\n"));
}

/// The same workflow, by hand.
fn hand_built(reviewers: usize) -> Agent {
    let mut agent = Agent::new("review");
    agent.max_concurrent(4);
    agent
        .add_state("draft", |ctx: Context| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            ctx.set_state("draft", "text".to_string());
            Ok(Next::parallel(["grammar", "facts"]))
        })
        .entry()
        .successors(["grammar", "facts"]);
    agent
        .add_state("grammar", move |ctx: Context| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            ctx.set_state("grammar", reviewers);
            Ok(Next::to("publish"))
        })
        .priority(Priority::High)
        .successors(["publish"]);
    agent
        .add_state("facts", |ctx: Context| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            ctx.set_state("facts", true);
            Ok(Next::to("publish"))
        })
        .timeout(Duration::from_secs(1))
        .on_error("retract")
        .successors(["publish"]);
    agent
        .add_state("retract", |ctx: Context| async move {
            ctx.set_state("retracted", true);
            Ok(Next::End)
        })
        .terminal();
    agent
        .add_state("publish", |ctx: Context| async move {
            let grammar: usize = ctx.get_state("grammar")?;
            let facts: bool = ctx.get_state("facts")?;
            ctx.update_typed::<u32, _>("published", |n| *n += 1)?;
            ctx.set_state(
                "summary",
                format!("{grammar} reviewers, facts checked: {facts}"),
            );
            Ok(Next::End)
        })
        .terminal();
    agent
}

async fn run(agent: &Agent) -> RunReport {
    let context = Context::new();
    context.set_state("published", 0u32);
    agent.run_with(context).await.expect("the review completes")
}

#[tokio::test(start_paused = true)]
async fn a_macro_workflow_and_its_hand_built_twin_report_the_same() {
    let from_macro = run(&Review { reviewers: 2 }.agent()).await;
    let by_hand = run(&hand_built(2)).await;
    assert_eq!(from_macro.status, AgentStatus::Completed);
    assert_eq!(from_macro.agent, by_hand.agent);
    assert_eq!(from_macro.transitions, by_hand.transitions);
    assert_eq!(from_macro.max_concurrency, by_hand.max_concurrency);
    assert_eq!(from_macro.duration, by_hand.duration);
    assert_eq!(from_macro.duration, Duration::from_millis(25));
    let strip = |report: &RunReport| {
        report
            .states
            .iter()
            .map(|s| {
                (
                    s.name.to_string(),
                    s.status,
                    s.runs,
                    s.attempts,
                    s.total_time,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&from_macro), strip(&by_hand));
    assert_eq!(
        from_macro.context.snapshot().unwrap(),
        by_hand.context.snapshot().unwrap()
    );
    assert_eq!(
        from_macro.context.get_state::<u32>("published").unwrap(),
        1,
        "the join ran once"
    );
    assert_eq!(
        from_macro.context.get_state::<String>("summary").unwrap(),
        "2 reviewers, facts checked: true"
    );
    // The macro declares every successor, exactly as the twin does.
    let graph = Review { reviewers: 2 }.agent().graph().unwrap();
    let twin = hand_built(2).graph().unwrap();
    for name in ["draft", "grammar", "facts", "retract", "publish"] {
        let (a, b) = (graph.id(name).unwrap(), twin.id(name).unwrap());
        assert_eq!(graph.successors(a), twin.successors(b), "{name}");
    }
}

struct Sharded;

#[workflow]
impl Sharded {
    #[state]
    async fn route(&self, ctx: &Context) -> StateResult {
        let shard: u32 = ctx.get_state("shard")?;
        goto!(format!("shard_{shard}"))
    }

    #[state]
    async fn shard_0(&self, ctx: &Context) -> StateResult {
        ctx.set_state("handled_by", 0u32);
        end!()
    }
}

#[tokio::test]
async fn goto_is_checked_when_it_happens() {
    let agent = Sharded.agent();
    let context = Context::new();
    context.set_state("shard", 0u32);
    let report = agent.run_with(context).await.unwrap();
    assert_eq!(report.context.get_state::<u32>("handled_by").unwrap(), 0);

    let context = Context::new();
    context.set_state("shard", 7u32);
    let error = agent.run_with(context).await.unwrap_err();
    assert!(
        matches!(&error, FlowError::UnknownTransition { from, to, .. } if from == "route" && to == "shard_7"),
        "{error}"
    );
}

#[context]
#[derive(Debug, Clone, PartialEq)]
struct Counter {
    hits: u64,
    label: String,
}

struct Counting;

#[workflow]
impl Counting {
    #[state]
    async fn start(&self, ctx: &Context) -> StateResult {
        ctx.set_hits(0);
        ctx.set_label("visits".into());
        parallel!(a, b, c)
    }

    #[state]
    async fn a(&self, ctx: &Context) -> StateResult {
        ctx.update_hits(|h| *h += 1)?;
        next!(done)
    }

    #[state]
    async fn b(&self, ctx: &Context) -> StateResult {
        ctx.update_hits(|h| *h += 10)?;
        next!(done)
    }

    #[state]
    async fn c(&self, ctx: &Context) -> StateResult {
        ctx.update_hits(|h| *h += 100)?;
        next!(done)
    }

    #[state]
    async fn done(&self, ctx: &Context) -> StateResult {
        let counter = Counter::load(ctx)?;
        ctx.set_label(format!("{}: {}", counter.label, counter.hits));
        end!()
    }
}

#[tokio::test]
async fn typed_context_fields_share_the_store() {
    let report = Counting.agent().run().await.unwrap();
    assert_eq!(report.context.hits().unwrap(), 111);
    assert_eq!(report.context.label().unwrap(), "visits: 111");
    assert_eq!(
        report.context.get_state::<u64>("hits").unwrap(),
        111,
        "untyped access sees it"
    );
    assert_eq!(report.state("done").unwrap().runs, 1);
}

struct Slow;

#[workflow]
impl Slow {
    #[state(timeout = "50ms")]
    async fn wait(&self, _ctx: &Context) -> StateResult {
        tokio::time::sleep(Duration::from_secs(1)).await;
        end!()
    }
}

#[tokio::test(start_paused = true)]
async fn options_from_the_attribute_reach_the_runtime() {
    let error = Slow.agent().run().await.unwrap_err();
    assert_eq!(
        error,
        FlowError::StateTimedOut {
            state: "wait".into(),
            attempts: 1,
            timeout: Duration::from_millis(50)
        }
    );
}

struct Indirect;

#[workflow]
impl Indirect {
    /// Not a state: a helper in the same block, whose transitions count for the states that
    /// call it.
    async fn decide(&self, ctx: &Context) -> StateResult {
        if ctx.get_state_or("fast", false)? {
            next!(fast_path)
        } else {
            next!(slow_path)
        }
    }

    #[state(entry)]
    async fn start(&self, ctx: &Context) -> StateResult {
        let first = tokio::time::sleep(Duration::from_millis(5));
        let second = tokio::time::sleep(Duration::from_millis(10));
        tokio::select! {
            _ = first => { ctx.set_state("fast", true); }
            _ = second => { return next!(slow_path); }
        }
        next!(route)
    }

    #[state]
    async fn route(&self, ctx: &Context) -> StateResult {
        self.decide(ctx).await
    }

    #[state]
    async fn fast_path(&self, ctx: &Context) -> StateResult {
        ctx.set_state("path", "fast".to_string());
        end!()
    }

    #[state]
    async fn slow_path(&self, ctx: &Context) -> StateResult {
        ctx.set_state("path", "slow".to_string());
        end!()
    }
}

#[tokio::test(start_paused = true)]
async fn transitions_in_other_macros_and_in_helpers_are_declared() {
    let graph = Indirect::GRAPH;
    assert_eq!(
        graph.state("start").unwrap().successors,
        Some(&["slow_path", "route"][..])
    );
    assert_eq!(
        graph.state("route").unwrap().successors,
        Some(&["fast_path", "slow_path"][..])
    );
    let report = Indirect.agent().run().await.unwrap();
    assert_eq!(report.context.get_state::<String>("path").unwrap(), "fast");
}

/// A macro workflow whose report starts by itself once `load` completed and the condition
/// (a method of the workflow) holds.
struct Etl {
    min_rows: u32,
}

#[workflow(name = "etl")]
impl Etl {
    #[state(entry)]
    async fn extract(&self, ctx: &Context) -> StateResult {
        ctx.set_state("order", vec!["extract".to_string()]);
        next!(load)
    }

    #[state]
    async fn load(&self, ctx: &Context) -> StateResult {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ctx.update_typed::<Vec<String>, _>("order", |o| o.push("load".into()))?;
        ctx.set_state("rows", 7u32);
        end!()
    }

    #[state(deps(load(required, timeout = "1s", condition = enough_rows), extract = sequential))]
    async fn report(&self, ctx: &Context) -> StateResult {
        ctx.update_typed::<Vec<String>, _>("order", |o| o.push("report".into()))?;
        end!()
    }

    fn enough_rows(&self, ctx: &Context) -> bool {
        ctx.get_state::<u32>("rows")
            .is_ok_and(|rows| rows >= self.min_rows)
    }
}

#[tokio::test(start_paused = true)]
async fn macro_dependencies_and_conditions_are_enforced() {
    let report = Etl { min_rows: 5 }.agent().run().await.expect("completes");
    let order: Vec<String> = report.context.get_state("order").unwrap();
    assert_eq!(order, ["extract", "load", "report"]);
    assert_eq!(report.state("report").unwrap().runs, 1);

    // The condition never holds: the dependency's timeout fails `report`, naming `load`.
    let error = Etl { min_rows: 50 }.agent().run().await.unwrap_err();
    assert!(
        matches!(&error, FlowError::DependencyTimeout { state, dependency, waiting_for, .. }
            if state == "report" && dependency == "load" && waiting_for == "its condition does not hold"),
        "{error}"
    );
}

/// An agent that calls a run-time choice of its tools each turn, for three turns.
struct ToolAgent;

#[workflow(name = "tool_agent")]
impl ToolAgent {
    #[state(entry, successors(search, calculator, weather))]
    async fn think(&self, ctx: &Context) -> StateResult {
        let turn = ctx.update_typed::<u32, _>("turn", |t| {
            *t += 1;
            *t
        })?;
        // The tools of the last turn have all reported.
        let reported: u32 = ["search", "calculator", "weather"]
            .iter()
            .map(|t| ctx.get_state_or::<u32>(t, 0).unwrap_or(0))
            .sum();
        ctx.set_state(format!("seen_{turn}"), reported);
        if turn > 3 {
            return end!();
        }
        // Turn 1 calls one tool, turn 2 two, turn 3 all three.
        let chosen: Vec<&str> = ["search", "calculator", "weather"][..turn as usize].to_vec();
        Ok(Next::parallel(chosen))
    }

    #[state]
    async fn search(&self, ctx: &Context) -> StateResult {
        tokio::time::sleep(Duration::from_millis(30)).await;
        ctx.update_typed::<u32, _>("search", |n| *n += 1)?;
        next!(think)
    }

    #[state]
    async fn calculator(&self, ctx: &Context) -> StateResult {
        tokio::time::sleep(Duration::from_millis(10)).await;
        ctx.update_typed::<u32, _>("calculator", |n| *n += 1)?;
        next!(think)
    }

    #[state]
    async fn weather(&self, ctx: &Context) -> StateResult {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ctx.update_typed::<u32, _>("weather", |n| *n += 1)?;
        next!(think)
    }
}

#[test]
fn listed_successors_are_edges_of_the_compile_time_graph() {
    let graph = ToolAgent::GRAPH;
    let agent = graph.states.iter().find(|s| s.name == "think").unwrap();
    assert_eq!(
        agent.successors,
        Some(&["search", "calculator", "weather"][..])
    );
    let mermaid = graph.to_mermaid();
    for tool in ["search", "calculator", "weather"] {
        assert!(mermaid.contains(&format!("think --> {tool}")), "{mermaid}");
        assert!(mermaid.contains(&format!("{tool} --> think")), "{mermaid}");
    }
    assert!(!mermaid.contains("(dynamic)"), "{mermaid}");
}

#[tokio::test(start_paused = true)]
async fn a_run_time_choice_of_listed_successors_joins_exactly() {
    let context = Context::new();
    for counter in ["turn", "search", "calculator", "weather"] {
        context.set_state(counter, 0u32);
    }
    let report = ToolAgent.agent().run_with(context).await.unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!(report.state("think").unwrap().runs, 4);
    // Each turn ran after every tool of the turn before: 1, then 1 + 2, then 3 + 3.
    for (turn, seen) in [(2, 1u32), (3, 3), (4, 6)] {
        assert_eq!(
            report
                .context
                .get_state::<u32>(&format!("seen_{turn}"))
                .unwrap(),
            seen
        );
    }
    assert_eq!(report.state("search").unwrap().runs, 3);
    assert_eq!(report.state("weather").unwrap().runs, 1);
    assert!(report.warnings.is_empty());
}

struct Strict;

#[workflow(name = "strict")]
impl Strict {
    #[state(entry, successors(a))]
    async fn pick(&self, _ctx: &Context) -> StateResult {
        Ok(Next::parallel(["a", "b"]))
    }

    #[state]
    async fn a(&self, _ctx: &Context) -> StateResult {
        end!()
    }

    #[state]
    async fn b(&self, _ctx: &Context) -> StateResult {
        end!()
    }
}

#[tokio::test]
async fn a_run_time_choice_outside_the_listed_successors_is_an_error() {
    let error = Strict.agent().run().await.unwrap_err();
    let FlowError::UndeclaredTransition {
        from, to, declared, ..
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!((from.as_str(), to.as_str()), ("pick", "b"));
    assert_eq!(declared, &["a"]);
}

/// LangGraph's usual node name, on a method of another name.
struct Named;

#[workflow(name = "named")]
impl Named {
    #[state(entry, name = "agent")]
    async fn think(&self, ctx: &Context) -> StateResult {
        let turn = ctx.update_typed::<u32, _>("turn", |t| {
            *t += 1;
            *t
        })?;
        if turn > 2 {
            return end!();
        }
        parallel!(search, calc)
    }

    #[state]
    async fn search(&self, _ctx: &Context) -> StateResult {
        next!(agent)
    }

    #[state(name = "calc")]
    async fn calculator(&self, _ctx: &Context) -> StateResult {
        next!(agent)
    }
}

#[tokio::test]
async fn a_state_may_be_named_apart_from_its_method() {
    let graph = Named::GRAPH;
    let names: Vec<&str> = graph.states.iter().map(|s| s.name).collect();
    assert_eq!(names, ["agent", "search", "calc"]);
    assert!(graph.to_mermaid().contains("agent --> calc"));
    let context = Context::new();
    context.set_state("turn", 0u32);
    let report = Named.agent().run_with(context).await.unwrap();
    assert_eq!(report.state("agent").unwrap().runs, 3);
    assert_eq!(report.state("calc").unwrap().runs, 2);
    assert!(report.state("think").is_none());
}
