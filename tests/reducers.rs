//! Reducers and maps over data: the writes of parallel branches to a key with a reducer
//! combine in fork order under every timing; a branch sees its own writes and not its
//! siblings' before the join; `Next::map` gives each branch its item and isolates every write;
//! nested forks, loops, checkpoints, and the errors.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{CheckpointPolicy, CheckpointStore, MemoryStore};

const MS: Duration = Duration::from_millis(1);

/// The six orders of three durations.
const TIMINGS: [[u64; 3]; 6] = [
    [10, 20, 30],
    [30, 20, 10],
    [20, 10, 30],
    [10, 30, 20],
    [30, 10, 20],
    [20, 30, 10],
];

/// `start → [a, b, c] → merge`: each branch appends its name after its delay, reading the list
/// before and after; `merge` reads it.
fn fan_in(delays: [u64; 3], seen: Arc<Mutex<BTreeMap<String, Vec<String>>>>) -> Agent {
    let mut agent = Agent::new("fan_in");
    agent.reducer("log", Reducer::append::<String>());
    agent
        .add_state("start", |ctx: Context| async move {
            ctx.set_state("log", "start".to_string());
            Ok(Next::parallel(["a", "b", "c"]))
        })
        .successors(["a", "b", "c"]);
    for (name, delay) in ["a", "b", "c"].into_iter().zip(delays) {
        let seen = Arc::clone(&seen);
        agent
            .add_state(name, move |ctx: Context| {
                let seen = Arc::clone(&seen);
                async move {
                    tokio::time::sleep(MS * delay as u32).await;
                    ctx.set_state("log", name.to_string());
                    let mine = ctx.get_state::<Vec<String>>("log")?;
                    seen.lock().unwrap().insert(name.to_string(), mine);
                    Ok(Next::to("merge"))
                }
            })
            .successors(["merge"]);
    }
    agent.add_state("merge", move |ctx: Context| {
        let seen = Arc::clone(&seen);
        async move {
            let log = ctx.get_state::<Vec<String>>("log")?;
            seen.lock().unwrap().insert("merge".into(), log);
            ctx.set_state("log", "merge".to_string());
            Ok(Next::End)
        }
    });
    agent
}

#[tokio::test(start_paused = true)]
async fn a_join_sees_contributions_in_fork_order_under_every_timing() {
    for delays in TIMINGS {
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let report = fan_in(delays, Arc::clone(&seen)).run().await.unwrap();
        assert_eq!(report.status, AgentStatus::Completed, "{:?}", report.error);
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen["merge"],
            ["start", "a", "b", "c"],
            "durations {delays:?}"
        );
        // Each branch saw what the fork's branch wrote, and its own write, never a sibling's.
        for name in ["a", "b", "c"] {
            assert_eq!(seen[name], ["start", name], "durations {delays:?}");
        }
        assert_eq!(
            report.context.get_state::<Vec<String>>("log").unwrap(),
            ["start", "a", "b", "c", "merge"]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn every_reducer_folds_in_fork_order() {
    // One value per branch, branches finishing in reverse order.
    async fn fold(reducer: Reducer, values: [serde_json::Value; 3]) -> serde_json::Value {
        let mut agent = Agent::new("fold");
        agent.reducer("x", reducer);
        agent
            .add_state("start", |_ctx: Context| async {
                Ok(Next::parallel(["v0", "v1", "v2"]))
            })
            .successors(["v0", "v1", "v2"]);
        for (i, value) in values.into_iter().enumerate() {
            agent
                .add_state(format!("v{i}"), move |ctx: Context| {
                    let value = value.clone();
                    async move {
                        tokio::time::sleep(MS * (30 - 10 * i as u32)).await;
                        match value {
                            serde_json::Value::Number(n) if n.is_i64() => {
                                ctx.set_state("x", n.as_i64().unwrap())
                            }
                            serde_json::Value::String(s) => ctx.set_state("x", s),
                            serde_json::Value::Array(items) => ctx.set_state(
                                "x",
                                items
                                    .iter()
                                    .map(|i| i.as_str().unwrap().to_string())
                                    .collect::<Vec<_>>(),
                            ),
                            serde_json::Value::Object(map) => ctx.set_state(
                                "x",
                                map.into_iter()
                                    .map(|(k, v)| (k, v.as_i64().unwrap()))
                                    .collect::<BTreeMap<String, i64>>(),
                            ),
                            other => panic!("{other}"),
                        }
                        Ok(Next::to("join"))
                    }
                })
                .successors(["join"]);
        }
        agent.add_state("join", |_ctx: Context| async { Ok(Next::End) });
        let report = agent.run().await.unwrap();
        assert_eq!(report.status, AgentStatus::Completed, "{:?}", report.error);
        report.context.snapshot().unwrap()["x"].clone()
    }
    use serde_json::json;
    let n = |a: i64, b: i64, c: i64| [json!(a), json!(b), json!(c)];
    assert_eq!(fold(Reducer::sum::<i64>(), n(1, 20, 300)).await, json!(321));
    assert_eq!(fold(Reducer::min::<i64>(), n(5, -2, 9)).await, json!(-2));
    assert_eq!(fold(Reducer::max::<i64>(), n(5, -2, 9)).await, json!(9));
    assert_eq!(
        fold(
            Reducer::extend::<String>(),
            [json!(["a", "b"]), json!(["c"]), json!(["d"])]
        )
        .await,
        json!(["a", "b", "c", "d"])
    );
    // A later branch in fork order wins a key both write, whichever finished last.
    assert_eq!(
        fold(
            Reducer::merge_map::<i64>(),
            [json!({"k": 1, "a": 1}), json!({"k": 2}), json!({"b": 3})]
        )
        .await,
        json!({"a": 1, "b": 3, "k": 2})
    );
    // Not commutative: the fold sees the fork's order.
    let concat = Reducer::custom(|text: &mut String, part: String| {
        if !text.is_empty() {
            text.push('>');
        }
        text.push_str(&part);
    });
    assert_eq!(
        fold(concat, [json!("x"), json!("y"), json!("z")]).await,
        json!("x>y>z")
    );
}

#[tokio::test(start_paused = true)]
async fn a_write_of_the_whole_value_replaces_and_a_wrong_type_fails_the_state() {
    let mut agent = Agent::new("types");
    agent.reducer("log", Reducer::append::<String>());
    agent
        .add_state("start", |ctx: Context| async move {
            ctx.set_state("log", "dropped".to_string());
            // The whole value: replaces.
            ctx.set_state("log", vec!["kept".to_string()]);
            ctx.set_state("log", "added".to_string());
            assert_eq!(ctx.get_state::<Vec<String>>("log")?, ["kept", "added"]);
            Ok(Next::to("wrong"))
        })
        .successors(["wrong"]);
    agent.add_state("wrong", |ctx: Context| async move {
        ctx.set_state("log", 7u32);
        Ok(Next::End)
    });
    let report = agent.start().unwrap().wait().await;
    assert_eq!(report.status, AgentStatus::Failed);
    let message = report.error.unwrap().to_string();
    assert!(
        message.contains("`wrong`")
            && message.contains("a `u32` to context key `log`, whose reducer takes")
            && message.contains("to its `append` reducer"),
        "{message}"
    );
    assert_eq!(
        report.context.get_state::<Vec<String>>("log").unwrap(),
        ["kept", "added"]
    );
}

/// `agent → [tool_a, tool_b] → agent` for three turns, tools finishing in either order.
#[tokio::test(start_paused = true)]
async fn a_loop_appends_each_turns_branches_in_fork_order() {
    for (slow_a, slow_b) in [(30, 10), (10, 30)] {
        let mut agent = Agent::new("agent_loop");
        agent.reducer("calls", Reducer::append::<String>());
        agent
            .add_state("agent", |ctx: Context| async move {
                let turn = ctx.visit().unwrap();
                ctx.set_state("calls", format!("think{turn}"));
                Ok(if turn <= 3 {
                    Next::parallel(["tool_a", "tool_b"])
                } else {
                    Next::End
                })
            })
            .successors(["tool_a", "tool_b"]);
        for (name, delay) in [("tool_a", slow_a), ("tool_b", slow_b)] {
            agent
                .add_state(name, move |ctx: Context| async move {
                    tokio::time::sleep(MS * delay).await;
                    ctx.set_state("calls", format!("{name}{}", ctx.visit().unwrap()));
                    Ok(Next::to("agent"))
                })
                .successors(["agent"]);
        }
        let report = agent.run().await.unwrap();
        assert_eq!(report.status, AgentStatus::Completed, "{:?}", report.error);
        assert_eq!(
            report.context.get_state::<Vec<String>>("calls").unwrap(),
            [
                "think1", "tool_a1", "tool_b1", "think2", "tool_a2", "tool_b2", "think3",
                "tool_a3", "tool_b3", "think4"
            ],
            "tool_a {slow_a} ms, tool_b {slow_b} ms"
        );
    }
}

/// `start → [a, b]`, `a → [a1, a2] → am → merge`, `b → merge`: nested forks fold depth first.
#[tokio::test(start_paused = true)]
async fn nested_forks_fold_depth_first_in_fork_order() {
    for delays in TIMINGS {
        let mut agent = Agent::new("nested");
        agent.reducer("log", Reducer::append::<String>());
        let step = |agent: &mut Agent, name: &'static str, delay: u64, next: Next| {
            let successors: Vec<String> = match &next {
                Next::To(t) => vec![t.to_string()],
                Next::Parallel(ts) => ts.iter().map(|t| t.to_string()).collect(),
                _ => vec![],
            };
            agent
                .add_state(name, move |ctx: Context| {
                    let next = next.clone();
                    async move {
                        tokio::time::sleep(MS * delay as u32).await;
                        ctx.set_state("log", name.to_string());
                        Ok(next)
                    }
                })
                .successors(successors);
        };
        step(&mut agent, "start", 1, Next::parallel(["a", "b"]));
        step(&mut agent, "a", delays[0], Next::parallel(["a1", "a2"]));
        step(&mut agent, "a1", delays[1], Next::to("am"));
        step(&mut agent, "a2", delays[2], Next::to("am"));
        step(&mut agent, "am", delays[0], Next::to("merge"));
        step(&mut agent, "b", delays[1] * 2, Next::to("merge"));
        step(&mut agent, "merge", 1, Next::End);
        let report = agent.run().await.unwrap();
        assert_eq!(report.status, AgentStatus::Completed, "{:?}", report.error);
        assert_eq!(
            report.context.get_state::<Vec<String>>("log").unwrap(),
            ["start", "a", "a1", "a2", "am", "b", "merge"],
            "durations {delays:?}"
        );
    }
}

/// `split → map(work) → gather`: each branch gets its item, keeps its writes to itself until
/// the join, and the join sees them in item order.
fn mapper(items: Vec<u64>, peeks: Arc<Mutex<Vec<String>>>) -> Agent {
    let mut agent = Agent::new("mapper");
    agent.reducer("results", Reducer::append::<u64>());
    agent
        .add_state("split", move |ctx: Context| {
            let items = items.clone();
            async move {
                ctx.set_state("config", "shared".to_string());
                Ok(Next::map("work", items))
            }
        })
        .successors(["work"]);
    agent
        .add_state("work", move |ctx: Context| {
            let peeks = Arc::clone(&peeks);
            async move {
                let item: u64 = ctx.input()?;
                // Sleep longer for smaller items: they finish last.
                tokio::time::sleep(MS * (100 - item as u32)).await;
                // What the branch that mapped wrote is visible; a sibling's write is not.
                let config = ctx.get_state::<String>("config")?;
                let last = ctx.get_state::<u64>("last").ok();
                peeks
                    .lock()
                    .unwrap()
                    .push(format!("{item}:{config}:{last:?}"));
                ctx.set_state("last", item);
                ctx.set_state("results", item * 10);
                assert_eq!(ctx.get_state::<u64>("last")?, item);
                Ok(Next::to("gather"))
            }
        })
        .successors(["gather"]);
    agent.add_state("gather", |ctx: Context| async move {
        let results = ctx.get_state::<Vec<u64>>("results")?;
        ctx.set_state("gathered", results);
        Ok(Next::End)
    });
    agent
}

#[tokio::test(start_paused = true)]
async fn a_map_runs_each_item_on_an_isolated_branch_and_joins_in_item_order() {
    let peeks = Arc::new(Mutex::new(Vec::new()));
    let report = mapper(vec![1, 2, 3, 4, 5], Arc::clone(&peeks))
        .run()
        .await
        .unwrap();
    assert_eq!(report.status, AgentStatus::Completed, "{:?}", report.error);
    assert_eq!(report.state("work").unwrap().runs, 5);
    assert_eq!(report.state("gather").unwrap().runs, 1, "one join for all");
    let ctx = &report.context;
    assert_eq!(
        ctx.get_state::<Vec<u64>>("gathered").unwrap(),
        [10, 20, 30, 40, 50]
    );
    // The last item in map order wins a plain key every branch wrote, though it finished first.
    assert_eq!(ctx.get_state::<u64>("last").unwrap(), 5);
    let mut peeks = peeks.lock().unwrap().clone();
    peeks.sort();
    assert_eq!(
        peeks,
        [
            "1:shared:None",
            "2:shared:None",
            "3:shared:None",
            "4:shared:None",
            "5:shared:None"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn maps_of_no_item_and_of_one_item() {
    let peeks = Arc::new(Mutex::new(Vec::new()));
    let report = mapper(vec![], Arc::clone(&peeks)).run().await.unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!(report.state("work").unwrap().runs, 0);
    assert!(!report.context.has_state("gathered"));

    let report = mapper(vec![7], Arc::clone(&peeks)).run().await.unwrap();
    assert_eq!(report.status, AgentStatus::Completed, "{:?}", report.error);
    assert_eq!(
        report.context.get_state::<Vec<u64>>("gathered").unwrap(),
        [70]
    );
    assert_eq!(report.context.get_state::<u64>("last").unwrap(), 7);
}

#[tokio::test(start_paused = true)]
async fn reading_an_input_off_a_map_and_an_item_that_does_not_serialize_are_errors() {
    let mut agent = Agent::new("no_input");
    agent.add_state("plain", |ctx: Context| async move {
        let _: u32 = ctx.input()?;
        Ok(Next::End)
    });
    let report = agent.start().unwrap().wait().await;
    let message = report.error.unwrap().to_string();
    assert!(
        message.contains("`plain`") && message.contains("Next::map"),
        "{message}"
    );

    let mut agent = Agent::new("bad_item");
    agent
        .add_state("split", |_ctx: Context| async {
            // JSON object keys must be strings.
            let bad: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
            Ok(Next::map("work", [BTreeMap::new(), bad]))
        })
        .successors(["work"]);
    agent.add_state("work", |_ctx: Context| async { Ok(Next::End) });
    let report = agent.start().unwrap().wait().await;
    assert_eq!(report.status, AgentStatus::Failed);
    let message = report.error.as_ref().unwrap().to_string();
    assert!(
        message.contains("item 1") && message.contains("`split`"),
        "{message}"
    );
    assert_eq!(report.state("work").unwrap().runs, 0);
}

/// A map inside parallel branches, with a reducer written at every level: restored from
/// each of its checkpoints (through JSON), the run ends with what the uninterrupted run had.
#[tokio::test(start_paused = true)]
async fn a_run_restored_from_any_checkpoint_ends_as_the_uninterrupted_one() {
    fn build() -> Agent {
        let mut agent = Agent::new("restored");
        agent.reducer("log", Reducer::append::<String>());
        agent
            .add_state("start", |ctx: Context| async move {
                ctx.set_state("log", "start".to_string());
                Ok(Next::parallel(["left", "right"]))
            })
            .successors(["left", "right"]);
        agent
            .add_state("left", |ctx: Context| async move {
                tokio::time::sleep(MS * 5).await;
                ctx.set_state("log", "left".to_string());
                Ok(Next::map("item", ["x", "y", "z"]))
            })
            .successors(["item"]);
        agent
            .add_state("item", |ctx: Context| async move {
                let item: String = ctx.input()?;
                let delay = match item.as_str() {
                    "x" => 30,
                    "y" => 10,
                    _ => 20,
                };
                tokio::time::sleep(MS * delay).await;
                ctx.set_state("log", format!("item {item}"));
                ctx.set_state(format!("seen {item}"), true);
                Ok(Next::to("end"))
            })
            .successors(["end"]);
        agent
            .add_state("right", |ctx: Context| async move {
                tokio::time::sleep(MS * 25).await;
                ctx.set_state("log", "right".to_string());
                Ok(Next::to("end"))
            })
            .successors(["end"]);
        agent.add_state("end", |ctx: Context| async move {
            ctx.set_state("log", "end".to_string());
            Ok(Next::End)
        });
        agent
    }
    let expected = [
        "start", "left", "item x", "item y", "item z", "right", "end",
    ];
    let store = MemoryStore::new();
    let mut agent = build();
    agent.checkpoints(
        store.clone(),
        CheckpointPolicy {
            keep: 0,
            ..CheckpointPolicy::after_each_state()
        },
    );
    let report = agent.run().await.unwrap();
    assert_eq!(report.status, AgentStatus::Completed, "{:?}", report.error);
    assert_eq!(
        report.context.get_state::<Vec<String>>("log").unwrap(),
        expected
    );
    let run = report.run_key.to_string();
    let sequences = store.sequences("restored", &run).unwrap();
    assert_eq!(sequences.len(), 7, "one per completed state: {sequences:?}");
    let mut with_overlays = 0;
    for sequence in sequences {
        let checkpoint = store.load("restored", &run, sequence).unwrap().unwrap();
        let json = checkpoint.to_json().unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        with_overlays += usize::from(text.contains("\"nodes\":[{"));
        let checkpoint =
            fluffy_flow::Checkpoint::from_json(&json, "test", "restored", &run).unwrap();
        let report = build()
            .restore_from_checkpoint(checkpoint)
            .unwrap()
            .wait()
            .await;
        assert_eq!(report.status, AgentStatus::Completed, "{:?}", report.error);
        assert_eq!(
            report.context.get_state::<Vec<String>>("log").unwrap(),
            expected,
            "restored from checkpoint {sequence}"
        );
        for item in ["x", "y", "z"] {
            assert!(
                report
                    .context
                    .get_state::<bool>(&format!("seen {item}"))
                    .unwrap()
            );
        }
    }
    assert!(
        with_overlays >= 3,
        "checkpoints holding branch overlays: {with_overlays}"
    );
}

mod macro_form {
    use super::*;

    fn longest() -> Reducer {
        Reducer::custom(|best: &mut String, candidate: String| {
            if candidate.len() > best.len() {
                *best = candidate;
            }
        })
    }

    #[context]
    #[derive(Debug, Clone)]
    struct Research {
        #[reduce(append)]
        findings: Vec<String>,
        #[reduce(sum)]
        tokens: u64,
        #[reduce(with = longest)]
        longest: String,
        topic: String,
    }

    struct Researcher;

    #[workflow(context = Research, max_steps = 20)]
    impl Researcher {
        #[state]
        async fn plan(&self, ctx: &Context) -> StateResult {
            ctx.set_topic("joins".into());
            map!(search, ["docs", "issues", "code"])
        }

        #[state]
        async fn search(&self, ctx: &Context) -> StateResult {
            let source: String = ctx.input()?;
            // The first item finishes last.
            tokio::time::sleep(MS * (10 - source.len() as u32)).await;
            ctx.add_findings(format!("{source} on {}", ctx.topic()?));
            ctx.add_tokens(source.len() as u64);
            ctx.add_longest(source);
            next!(report)
        }

        #[state]
        async fn report(&self, ctx: &Context) -> StateResult {
            let research = Research::load(ctx)?;
            ctx.set_state(
                "summary",
                format!(
                    "{} | {} tokens | longest {}",
                    research.findings.join(", "),
                    research.tokens,
                    research.longest
                ),
            );
            end!()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_context_struct_declares_reducers_and_a_macro_workflow_maps() {
        assert_eq!(
            Research::reducers()
                .into_iter()
                .map(|(key, _)| key)
                .collect::<Vec<_>>(),
            ["findings", "tokens", "longest"]
        );
        let report = Researcher.agent().run().await.unwrap();
        assert_eq!(report.status, AgentStatus::Completed, "{:?}", report.error);
        assert_eq!(report.state("search").unwrap().runs, 3);
        assert_eq!(
            report.context.get_state::<String>("summary").unwrap(),
            "docs on joins, issues on joins, code on joins | 14 tokens | longest issues"
        );
    }
}

mod review_fixes {
    use super::*;
    use fluffy_flow::StreamMode;

    #[tokio::test(start_paused = true)]
    async fn replace_state_resets_a_sum_and_applies_in_fork_order() {
        let mut agent = Agent::new("reset");
        agent.reducer("total", Reducer::sum::<u64>());
        agent
            .add_state("start", |ctx: Context| async move {
                ctx.set_state("total", 7u64);
                ctx.replace_state("total", 0u64);
                ctx.set_state("total", 5u64);
                assert_eq!(ctx.get_state::<u64>("total")?, 5);
                Ok(Next::parallel(["a", "b"]))
            })
            .successors(["a", "b"]);
        agent
            .add_state("a", |ctx: Context| async move {
                tokio::time::sleep(MS * 20).await;
                ctx.replace_state("total", 100u64);
                Ok(Next::to("join"))
            })
            .successors(["join"]);
        agent
            .add_state("b", |ctx: Context| async move {
                ctx.set_state("total", 1u64);
                Ok(Next::to("join"))
            })
            .successors(["join"]);
        agent.add_state("join", |_ctx: Context| async { Ok(Next::End) });
        let report = agent.run().await.unwrap();
        // Fork order: a's replacement, then b's contribution, though b finished first.
        assert_eq!(report.context.get_state::<u64>("total").unwrap(), 101);
    }

    #[tokio::test(start_paused = true)]
    async fn update_typed_on_a_reducer_key_is_refused_on_a_parallel_branch_only() {
        let mut agent = Agent::new("updates");
        agent.reducer("log", Reducer::append::<String>());
        agent
            .add_state("start", |ctx: Context| async move {
                ctx.set_state("log", "start".to_string());
                // Alone in the run: an update is fine.
                ctx.update_typed::<Vec<String>, _>("log", |log| log.push("edited".into()))?;
                Ok(Next::parallel(["a", "b"]))
            })
            .successors(["a", "b"]);
        agent.add_state("a", |ctx: Context| async move {
            ctx.update_typed::<Vec<String>, _>("log", |log| log.clear())?;
            Ok(Next::End)
        });
        agent.add_state("b", |_ctx: Context| async { Ok(Next::End) });
        let report = agent.start().unwrap().wait().await;
        assert_eq!(report.status, AgentStatus::Failed);
        let message = report.error.unwrap().to_string();
        assert!(
            message.contains("`a`")
                && message.contains("update_typed")
                && message.contains("`log`"),
            "{message}"
        );
        assert_eq!(
            report.context.get_state::<Vec<String>>("log").unwrap(),
            ["start", "edited"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fold_that_panics_at_a_join_fails_the_run_naming_the_key() {
        let mut agent = Agent::new("panicky");
        agent.reducer(
            "n",
            Reducer::custom(|total: &mut u8, n: u8| {
                *total = total.checked_add(n).expect("no overflow, says the fold");
            }),
        );
        agent
            .add_state("start", |_ctx: Context| async {
                Ok(Next::parallel(["a", "b"]))
            })
            .successors(["a", "b"]);
        for name in ["a", "b"] {
            agent
                .add_state(name, |ctx: Context| async move {
                    ctx.set_state("n", 200u8);
                    Ok(Next::to("join"))
                })
                .successors(["join"]);
        }
        agent.add_state("join", |_ctx: Context| async { Ok(Next::End) });
        let report = agent.start().unwrap().wait().await;
        assert_eq!(report.status, AgentStatus::Failed);
        let message = report.error.unwrap().to_string();
        assert!(
            message.contains("key `n`") && message.contains("no overflow, says the fold"),
            "{message}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_values_stream_sees_a_contribution_after_the_state_that_made_it() {
        let mut agent = Agent::new("seen");
        agent.reducer("log", Reducer::append::<String>());
        agent
            .add_state("a", |ctx: Context| async move {
                ctx.set_state("log", "a".to_string());
                Ok(Next::to("b"))
            })
            .successors(["b"]);
        agent.add_state("b", |ctx: Context| async move {
            ctx.set_state("log", "b".to_string());
            Ok(Next::End)
        });
        let (handle, mut stream) = agent
            .start_streaming(Context::new(), StreamMode::VALUES)
            .unwrap();
        let mut lists = Vec::new();
        while let Some(part) = stream.next().await {
            if let fluffy_flow::StreamPart::Values { values, .. } = part {
                lists.push(values["log"].clone());
            }
        }
        assert_eq!(
            lists,
            [serde_json::json!(["a"]), serde_json::json!(["a", "b"])]
        );
        handle.wait().await;
    }

    /// A branch that ends without writes of its own hands nothing to the result: the one left
    /// runs alone again, its contributions reaching the store (and the values stream) as it
    /// goes.
    #[tokio::test(start_paused = true)]
    async fn a_branch_that_ends_without_writing_lets_the_run_go_back_to_the_store() {
        let mut agent = Agent::new("back_to_the_store");
        agent.reducer("log", Reducer::append::<String>());
        agent
            .add_state("start", |ctx: Context| async move {
                ctx.set_state("log", "start".to_string());
                Ok(Next::parallel(["quiet", "busy"]))
            })
            .successors(["quiet", "busy"]);
        agent.add_state("quiet", |_ctx: Context| async { Ok(Next::End) });
        agent
            .add_state("busy", |ctx: Context| async move {
                tokio::time::sleep(MS * 10).await;
                ctx.set_state("log", "busy".to_string());
                Ok(Next::to("after"))
            })
            .successors(["after"]);
        agent.add_state("after", |ctx: Context| async move {
            ctx.set_state("log", "after".to_string());
            Ok(Next::End)
        });
        let (handle, mut stream) = agent
            .start_streaming(Context::new(), StreamMode::VALUES)
            .unwrap();
        let mut after = None;
        while let Some(part) = stream.next().await {
            if let fluffy_flow::StreamPart::Values {
                after: state,
                values,
            } = part
                && &*state == "after"
            {
                after = Some(values["log"].clone());
            }
        }
        // `after` ran alone: its view and its own contribution were in the store at once.
        assert_eq!(after, Some(serde_json::json!(["start", "busy", "after"])));
        let report = handle.wait().await;
        assert_eq!(
            report.context.get_state::<Vec<String>>("log").unwrap(),
            ["start", "busy", "after"]
        );
    }

    /// A checkpoint taken by an agent without reducers, restored into one with them: the
    /// branches get ids of their own, and every contribution after the restore lands.
    #[tokio::test(start_paused = true)]
    async fn a_checkpoint_from_before_reducers_restores_into_an_agent_with_them() {
        fn build(reducer: bool) -> Agent {
            let mut agent = Agent::new("late_reducer");
            if reducer {
                agent.reducer("log", Reducer::append::<String>());
            }
            agent
                .add_state("start", |_ctx: Context| async {
                    Ok(Next::parallel(["a", "b"]))
                })
                .successors(["a", "b"]);
            for (name, delay) in [("a", 20), ("b", 10)] {
                agent
                    .add_state(name, move |ctx: Context| async move {
                        tokio::time::sleep(MS * delay).await;
                        ctx.set_state("log", name.to_string());
                        Ok(Next::to("merge"))
                    })
                    .successors(["merge"]);
            }
            agent.add_state("merge", |ctx: Context| async move {
                ctx.set_state("log", "merge".to_string());
                Ok(Next::End)
            });
            agent
        }
        let store = MemoryStore::new();
        let mut plain = build(false);
        plain.checkpoints(
            store.clone(),
            CheckpointPolicy {
                keep: 0,
                ..CheckpointPolicy::after_each_state()
            },
        );
        let report = plain.run().await.unwrap();
        let after_start = store
            .load("late_reducer", &report.run_key, 1)
            .unwrap()
            .unwrap();
        let restored = build(true)
            .restore_from_checkpoint(after_start)
            .unwrap()
            .wait()
            .await;
        assert_eq!(
            restored.status,
            AgentStatus::Completed,
            "{:?}",
            restored.error
        );
        assert_eq!(
            restored.context.get_state::<Vec<String>>("log").unwrap(),
            ["a", "b", "merge"]
        );
    }
}
