//! Every join case of the design and every shape the joins issue found, each under several
//! timings (which branch is slow) and, where it makes sense, with and without declared
//! successors: run counts, arrivals, that a join starts after its last arrival and sees every
//! branch's writes, and that the branches of one loop turn overlap. Without declarations a
//! shape may be ambiguous: then the run must say so (a warning), never be silently wrong.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluffy_flow::prelude::*;
use fluffy_flow::{FAILURE_KEY, RunWarning};
use tokio::time::Instant;

/// What to do on visit `v` of a state.
type Plan = Arc<dyn Fn(u32) -> Next + Send + Sync>;

/// One run of a state: when it started and ended (ms from the run's start), and the write
/// counters of every state it saw when it started.
#[derive(Clone, Debug)]
struct Run {
    state: String,
    start: u64,
    end: Option<u64>,
    saw: HashMap<String, u32>,
}

#[derive(Clone, Default)]
struct Trace(Arc<Mutex<Vec<Run>>>);

impl Trace {
    fn runs(&self, state: &str) -> Vec<Run> {
        let runs = self.0.lock().unwrap();
        runs.iter().filter(|r| r.state == state).cloned().collect()
    }

    /// The latest end of any run of `state` that started before `at`.
    fn last_end_before(&self, state: &str, at: u64) -> u64 {
        self.runs(state)
            .iter()
            .filter(|r| r.start <= at)
            .filter_map(|r| r.end)
            .max()
            .unwrap_or_else(|| panic!("{state} never ended before {at}"))
    }
}

/// A workflow under test: states with plans, declared successors and per-timing delays.
struct Shape {
    states: Vec<(&'static str, Plan, Vec<&'static str>)>,
    /// `on_error` handlers, by state.
    handlers: HashMap<&'static str, &'static str>,
}

fn plan(f: impl Fn(u32) -> Next + Send + Sync + 'static) -> Plan {
    Arc::new(f)
}

fn always(next: Next) -> Plan {
    plan(move |_| next.clone())
}

fn to(s: &'static str) -> Next {
    Next::to(s)
}

fn par(states: &[&'static str]) -> Next {
    Next::parallel(states.iter().copied())
}

impl Shape {
    fn new() -> Self {
        Self {
            states: Vec::new(),
            handlers: HashMap::new(),
        }
    }

    fn state(mut self, name: &'static str, plan: Plan, successors: &[&'static str]) -> Self {
        self.states.push((name, plan, successors.to_vec()));
        self
    }

    fn on_error(mut self, state: &'static str, handler: &'static str) -> Self {
        self.handlers.insert(state, handler);
        self
    }

    /// The agent, with `delays` (ms, 1 when not named) and declared successors if `declare`.
    fn agent(&self, delays: &[(&str, u64)], declare: bool, origin: Instant) -> (Agent, Trace) {
        let trace = Trace::default();
        let delays: HashMap<String, u64> =
            delays.iter().map(|(s, d)| (s.to_string(), *d)).collect();
        let names: Vec<String> = self.states.iter().map(|s| s.0.to_string()).collect();
        let mut agent = Agent::new("shape");
        for (name, plan, successors) in &self.states {
            let (trace_, plan_, names_) = (trace.clone(), Arc::clone(plan), names.clone());
            let delay = Duration::from_millis(delays.get(*name).copied().unwrap_or(1));
            let name = name.to_string();
            let key = name.clone();
            let options = agent.add_state(name.clone(), move |ctx: Context| {
                let (trace, plan, names, key) = (
                    trace_.clone(),
                    Arc::clone(&plan_),
                    names_.clone(),
                    key.clone(),
                );
                async move {
                    let saw: HashMap<String, u32> = names
                        .iter()
                        .map(|n| (n.clone(), ctx.get_state_or::<u32>(n, 0).unwrap_or(0)))
                        .collect();
                    // The visit number is kept in the context (so a restored run goes on
                    // counting); the trace keeps this process's runs.
                    let visit = saw[&key];
                    let index = {
                        let mut runs = trace.0.lock().unwrap();
                        runs.push(Run {
                            state: key.clone(),
                            start: (Instant::now() - origin).as_millis() as u64,
                            end: None,
                            saw,
                        });
                        runs.len() - 1
                    };
                    tokio::time::sleep(delay).await;
                    ctx.set_state(key.clone(), visit + 1);
                    trace.0.lock().unwrap()[index].end =
                        Some((Instant::now() - origin).as_millis() as u64);
                    Ok(plan(visit))
                }
            });
            let options = match self.handlers.get(name.as_str()) {
                Some(handler) => options.on_error(*handler),
                None => options,
            };
            if declare {
                options.successors(successors.iter().copied());
            }
        }
        (agent, trace)
    }

    /// Runs it to completion.
    async fn run(&self, delays: &[(&str, u64)], declare: bool) -> (RunReport, Trace) {
        let origin = Instant::now();
        let (agent, trace) = self.agent(delays, declare, origin);
        let report = agent.run().await.expect("the definition is valid");
        assert_eq!(report.status, AgentStatus::Completed, "{:?}", report.error);
        (report, trace)
    }
}

fn runs(report: &RunReport, state: &str) -> u32 {
    report.state(state).unwrap().runs
}

fn arrivals(report: &RunReport, state: &str) -> u32 {
    report.state(state).unwrap().arrivals
}

/// `join`'s first run started after every run of `preds` before it ended, and saw each of
/// them written at least once.
fn joined_after(trace: &Trace, join: &str, preds: &[&str]) {
    let first = &trace.runs(join)[0];
    for p in preds {
        assert!(
            first.start >= trace.last_end_before(p, first.start),
            "{join} started at {} before {p} ended",
            first.start
        );
        assert!(first.saw[*p] >= 1, "{join} did not see {p}'s write");
    }
}

/// Without declared successors a shape may be ambiguous: the run is exact, or it says so.
fn exact_or_warned(report: &RunReport, exact: bool, what: &str) {
    assert!(
        exact || !report.warnings.is_empty(),
        "{what}: an inexact result without a warning"
    );
}

#[tokio::test(start_paused = true)]
async fn three_branches_join_once_after_the_last() {
    let shape = Shape::new()
        .state("start", always(par(&["a", "b", "c"])), &["a", "b", "c"])
        .state("a", always(to("merge")), &["merge"])
        .state("b", always(to("merge")), &["merge"])
        .state("c", always(to("merge")), &["merge"])
        .state("merge", always(Next::End), &[]);
    for slow in ["a", "b", "c"] {
        for declare in [true, false] {
            let (report, trace) = shape.run(&[(slow, 30)], declare).await;
            assert_eq!(runs(&report, "merge"), 1);
            assert_eq!(arrivals(&report, "merge"), 3);
            joined_after(&trace, "merge", &["a", "b", "c"]);
            assert!(report.warnings.is_empty());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_longer_branch_is_waited_for() {
    let shape = Shape::new()
        .state("start", always(par(&["a", "b"])), &["a", "b"])
        .state("a", always(to("merge")), &["merge"])
        .state("b", always(to("x")), &["x"])
        .state("x", always(to("merge")), &["merge"])
        .state("merge", always(Next::End), &[]);
    for slow in ["a", "b", "x"] {
        let (report, trace) = shape.run(&[(slow, 30)], true).await;
        assert_eq!((runs(&report, "x"), runs(&report, "merge")), (1, 1));
        joined_after(&trace, "merge", &["a", "x"]);
        let (report, _) = shape.run(&[(slow, 30)], false).await;
        exact_or_warned(&report, runs(&report, "merge") == 1, slow);
    }
}

#[tokio::test(start_paused = true)]
async fn an_ended_branch_never_blocks_a_join() {
    let shape = Shape::new()
        .state("start", always(par(&["a", "b"])), &["a", "b"])
        .state("a", always(Next::End), &[])
        .state("b", always(to("merge")), &["merge"])
        .state("merge", always(Next::End), &[]);
    for (a, b) in [(1, 10), (10, 1), (5, 5)] {
        for declare in [true, false] {
            let (report, trace) = shape.run(&[("a", a), ("b", b)], declare).await;
            assert_eq!(runs(&report, "merge"), 1);
            let merge = &trace.runs("merge")[0];
            let b_end = trace.last_end_before("b", merge.start);
            if declare {
                assert_eq!(merge.start, b_end, "merge waits for nothing but b");
            } else {
                assert_eq!(merge.start, b_end.max(trace.runs("a")[0].end.unwrap()));
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn branches_that_never_meet_each_run_once() {
    let shape = Shape::new()
        .state("start", always(par(&["a", "b"])), &["a", "b"])
        .state("a", always(to("p")), &["p"])
        .state("b", always(to("q")), &["q"])
        .state("p", always(Next::End), &[])
        .state("q", always(Next::End), &[]);
    for slow in ["a", "b", "p"] {
        for declare in [true, false] {
            let (report, trace) = shape.run(&[(slow, 30)], declare).await;
            assert_eq!((runs(&report, "p"), runs(&report, "q")), (1, 1));
            if declare {
                // Neither waits for the other.
                assert_eq!(trace.runs("p")[0].start, trace.runs("a")[0].end.unwrap());
                assert_eq!(trace.runs("q")[0].start, trace.runs("b")[0].end.unwrap());
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn nested_fan_outs_join_inside_out_whichever_side_is_slow() {
    let shape = Shape::new()
        .state("start", always(par(&["a", "b"])), &["a", "b"])
        .state("a", always(par(&["a1", "a2"])), &["a1", "a2"])
        .state("a1", always(to("am")), &["am"])
        .state("a2", always(to("am")), &["am"])
        .state("am", always(to("merge")), &["merge"])
        .state("b", always(to("merge")), &["merge"])
        .state("merge", always(Next::End), &[]);
    for slow in ["a1", "a2", "b", "am"] {
        let (report, trace) = shape.run(&[(slow, 40)], true).await;
        assert_eq!(
            (runs(&report, "am"), runs(&report, "merge")),
            (1, 1),
            "{slow}"
        );
        joined_after(&trace, "am", &["a1", "a2"]);
        joined_after(&trace, "merge", &["am", "b"]);
        let (report, _) = shape.run(&[(slow, 40)], false).await;
        exact_or_warned(
            &report,
            runs(&report, "am") == 1 && runs(&report, "merge") == 1,
            slow,
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_fork_target_that_is_also_the_join_runs_at_once_and_after_the_join() {
    // a -> [b, c, qa], b, c -> qa: qa at once, and once more after b and c.
    let shape = Shape::new()
        .state("a", always(par(&["b", "c", "qa"])), &["b", "c", "qa"])
        .state("b", always(to("qa")), &["qa"])
        .state("c", always(to("qa")), &["qa"])
        .state("qa", always(Next::End), &[]);
    for slow in ["b", "c", "qa"] {
        let (report, trace) = shape.run(&[(slow, 30)], true).await;
        assert_eq!(runs(&report, "qa"), 2);
        assert_eq!(arrivals(&report, "qa"), 3);
        let qa = trace.runs("qa");
        assert_eq!(qa[0].start, trace.runs("a")[0].end.unwrap(), "at once");
        assert!(qa[1].start >= trace.runs("b")[0].end.unwrap());
        assert!(qa[1].start >= trace.runs("c")[0].end.unwrap());
        assert_eq!((qa[1].saw["b"], qa[1].saw["c"]), (1, 1));
    }
}

#[tokio::test(start_paused = true)]
async fn a_fork_naming_one_state_twice_runs_it_twice_and_joins_both() {
    let shape = Shape::new()
        .state("start", always(par(&["w", "w"])), &["w"])
        .state("w", always(to("merge")), &["merge"])
        .state("merge", always(Next::End), &[]);
    for declare in [true, false] {
        let (report, trace) = shape.run(&[("w", 5)], declare).await;
        assert_eq!(runs(&report, "w"), 2);
        assert_eq!(
            trace.runs("w")[0].start,
            trace.runs("w")[1].start,
            "both at once"
        );
        assert_eq!((runs(&report, "merge"), arrivals(&report, "merge")), (1, 2));
    }
}

/// The agent loop: agent -> [tool_a, tool_b], both tools -> agent, for three turns.
fn agent_loop() -> Shape {
    Shape::new()
        .state(
            "agent",
            plan(|v| {
                if v < 2 {
                    par(&["tool_a", "tool_b"])
                } else {
                    Next::End
                }
            }),
            &["tool_a", "tool_b"],
        )
        .state("tool_a", always(to("agent")), &["agent"])
        .state("tool_b", always(to("agent")), &["agent"])
}

#[tokio::test(start_paused = true)]
async fn an_agent_loop_runs_its_tools_concurrently_every_turn() {
    let shape = agent_loop();
    for delays in [
        [("tool_a", 30), ("tool_b", 5)],
        [("tool_a", 5), ("tool_b", 30)],
        [("tool_a", 10), ("tool_b", 10)],
    ] {
        for declare in [true, false] {
            let (report, trace) = shape.run(&delays, declare).await;
            assert_eq!(runs(&report, "agent"), 3);
            assert_eq!((runs(&report, "tool_a"), runs(&report, "tool_b")), (2, 2));
            let (a, b, agent) = (
                trace.runs("tool_a"),
                trace.runs("tool_b"),
                trace.runs("agent"),
            );
            for turn in 0..2 {
                // The tools of one turn overlap.
                assert_eq!(a[turn].start, b[turn].start);
                // The next turn sees both tools' results of this one.
                let next = &agent[turn + 1];
                assert!(next.start >= a[turn].end.unwrap().max(b[turn].end.unwrap()));
                assert_eq!(
                    (next.saw["tool_a"], next.saw["tool_b"]),
                    (turn as u32 + 1, turn as u32 + 1)
                );
            }
            assert!(report.warnings.is_empty());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_producer_loop_works_once_per_pass() {
    // poll -> [poll, work] for four passes, then poll ends.
    let shape = Shape::new()
        .state(
            "poll",
            plan(|v| {
                if v < 4 {
                    par(&["poll", "work"])
                } else {
                    Next::End
                }
            }),
            &["poll", "work"],
        )
        .state("work", always(Next::End), &[]);
    for work in [1, 10, 100] {
        for declare in [true, false] {
            let (report, trace) = shape.run(&[("poll", 5), ("work", work)], declare).await;
            assert_eq!((runs(&report, "poll"), runs(&report, "work")), (5, 4));
            // Each pass's work starts with its poll's fork.
            let (poll, w) = (trace.runs("poll"), trace.runs("work"));
            for pass in 0..4 {
                assert_eq!(w[pass].start, poll[pass].end.unwrap());
            }
        }
    }
}

/// top -> [x, y], x, y -> merge, then `after` (merge -> top, or merge -> decide -> top).
fn fork_join_loop(decider: bool) -> Shape {
    let mut shape = Shape::new()
        .state("top", always(par(&["x", "y"])), &["x", "y"])
        .state("x", always(to("merge")), &["merge"])
        .state("y", always(to("merge")), &["merge"]);
    let again = |v: u32| if v < 2 { to("top") } else { Next::End };
    if decider {
        shape = shape
            .state("merge", always(to("decide")), &["decide"])
            .state("decide", plan(again), &["top"]);
    } else {
        shape = shape.state("merge", plan(again), &["top"]);
    }
    shape
}

#[tokio::test(start_paused = true)]
async fn a_fork_join_loop_joins_once_per_round() {
    for decider in [false, true] {
        let shape = fork_join_loop(decider);
        for slow in ["x", "y", "top"] {
            for declare in [true, false] {
                let (report, trace) = shape.run(&[(slow, 20)], declare).await;
                assert_eq!(
                    (
                        runs(&report, "x"),
                        runs(&report, "y"),
                        runs(&report, "merge")
                    ),
                    (3, 3, 3),
                    "decider {decider}, {slow} slow, declared {declare}"
                );
                for (round, m) in trace.runs("merge").iter().enumerate() {
                    assert_eq!(
                        (m.saw["x"], m.saw["y"]),
                        (round as u32 + 1, round as u32 + 1)
                    );
                }
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_fire_and_forget_branch_in_a_loop_runs_every_round() {
    // top -> [x, y], y -> check -> top, three rounds; x ends.
    let shape = Shape::new()
        .state(
            "top",
            plan(|v| if v < 3 { par(&["x", "y"]) } else { Next::End }),
            &["x", "y"],
        )
        .state("x", always(Next::End), &[])
        .state("y", always(to("check")), &["check"])
        .state("check", always(to("top")), &["top"]);
    for x in [1, 10, 100] {
        for declare in [true, false] {
            let (report, trace) = shape.run(&[("x", x)], declare).await;
            assert_eq!((runs(&report, "top"), runs(&report, "x")), (4, 3));
            if declare {
                // A slow x never holds the next round back.
                let top = trace.runs("top");
                assert_eq!(top[1].start, trace.runs("check")[0].end.unwrap());
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_join_after_a_loop_with_overlapping_passes_absorbs_every_arrival() {
    // top -> [x, y], x -> j, y -> top (three rounds), then top -> j. Each round's x and the
    // loop's exit reach j, a join around the loop: every arrival is absorbed by a j run, the
    // last after the last x. (The passes overlap: whether a round's x meets the later rounds
    // at j or runs j alone depends on whether it arrived before the next round started: see
    // the README.)
    let shape = Shape::new()
        .state(
            "top",
            plan(|v| if v < 3 { par(&["x", "y"]) } else { to("j") }),
            &["x", "y", "j"],
        )
        .state("x", always(to("j")), &["j"])
        .state("y", always(to("top")), &["top"])
        .state("j", always(Next::End), &[]);
    for (x, y) in [(1, 10), (10, 1), (50, 5)] {
        let (report, trace) = shape.run(&[("x", x), ("y", y)], true).await;
        assert_eq!((runs(&report, "x"), arrivals(&report, "j")), (3, 4));
        let j = trace.runs("j");
        assert_eq!(j.len() as u32, runs(&report, "j"));
        let last_x = trace.runs("x").iter().filter_map(|r| r.end).max().unwrap();
        assert!(
            j.iter().map(|r| r.start).max().unwrap() >= last_x,
            "a j after every x"
        );
        assert!(report.warnings.is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn a_loop_back_edge_never_holds_a_branch_of_the_current_pass() {
    // rewrite -> [analyze, r2], analyze -> r1, r1, r2 -> qa, qa -> decide -> rewrite.
    let shape = Shape::new()
        .state(
            "rewrite",
            always(par(&["analyze", "r2"])),
            &["analyze", "r2"],
        )
        .state("analyze", always(to("r1")), &["r1"])
        .state("r1", always(to("qa")), &["qa"])
        .state("r2", always(to("qa")), &["qa"])
        .state("qa", always(to("decide")), &["decide"])
        .state(
            "decide",
            plan(|v| if v < 1 { to("rewrite") } else { Next::End }),
            &["rewrite"],
        );
    for r2 in [1, 30, 100] {
        let (report, trace) = shape.run(&[("r2", r2)], true).await;
        assert_eq!((runs(&report, "r1"), runs(&report, "qa")), (2, 2));
        let r1 = trace.runs("r1");
        assert_eq!(
            r1[0].start,
            trace.runs("analyze")[0].end.unwrap(),
            "r1 not held"
        );
        joined_after(&trace, "qa", &["r1", "r2"]);
    }
}

#[tokio::test(start_paused = true)]
async fn an_error_handler_upstream_of_a_fork_does_not_serialize_it() {
    // s -> [a, b], a.on_error(recover), recover -> s: nothing fails, a and b run together.
    let origin = Instant::now();
    let (agent, trace) = Shape::new()
        .state(
            "s",
            plan(|v| if v < 1 { par(&["a", "b"]) } else { Next::End }),
            &["a", "b"],
        )
        .state("a", always(to("join")), &["join"])
        .state("b", always(to("join")), &["join"])
        .state("join", always(Next::End), &[])
        .state("recover", always(to("s")), &["s"])
        .on_error("a", "recover")
        .agent(&[("a", 20), ("b", 20)], true, origin);
    let report = agent.run().await.unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!(trace.runs("a")[0].start, trace.runs("b")[0].start);
    assert_eq!(report.max_concurrency, 2);
    assert_eq!(runs(&report, "join"), 1);
    assert!(
        report
            .context
            .get_state::<serde_json::Value>(FAILURE_KEY)
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn a_join_in_a_loop_inside_one_branch_of_a_fan_out() {
    // start -> [loopy, other]; loopy -> [l1, l2] -> lj, lj -> loopy (three rounds) -> merge;
    // other -> merge.
    let shape = Shape::new()
        .state(
            "start",
            always(par(&["loopy", "other"])),
            &["loopy", "other"],
        )
        .state("loopy", always(par(&["l1", "l2"])), &["l1", "l2"])
        .state("l1", always(to("lj")), &["lj"])
        .state("l2", always(to("lj")), &["lj"])
        .state(
            "lj",
            plan(|v| if v < 2 { to("loopy") } else { to("merge") }),
            &["loopy", "merge"],
        )
        .state("other", always(to("merge")), &["merge"])
        .state("merge", always(Next::End), &[]);
    for slow in ["l1", "l2", "other"] {
        let (report, trace) = shape.run(&[(slow, 25)], true).await;
        assert_eq!(
            (runs(&report, "lj"), runs(&report, "merge")),
            (3, 1),
            "{slow}"
        );
        for (round, lj) in trace.runs("lj").iter().enumerate() {
            assert_eq!(
                (lj.saw["l1"], lj.saw["l2"]),
                (round as u32 + 1, round as u32 + 1)
            );
        }
        joined_after(&trace, "merge", &["lj", "other"]);
        assert_eq!(trace.runs("merge")[0].saw["lj"], 3);
    }
}

#[tokio::test(start_paused = true)]
async fn three_levels_of_nested_forks_inside_a_loop() {
    // top -> [a, b]; a -> [a1, a2]; a1 -> [a11, a12] -> a1j; a1j, a2 -> aj; aj, b -> tj;
    // tj -> top, three rounds.
    let shape = Shape::new()
        .state("top", always(par(&["a", "b"])), &["a", "b"])
        .state("a", always(par(&["a1", "a2"])), &["a1", "a2"])
        .state("a1", always(par(&["a11", "a12"])), &["a11", "a12"])
        .state("a11", always(to("a1j")), &["a1j"])
        .state("a12", always(to("a1j")), &["a1j"])
        .state("a1j", always(to("aj")), &["aj"])
        .state("a2", always(to("aj")), &["aj"])
        .state("b", always(to("tj")), &["tj"])
        .state("aj", always(to("tj")), &["tj"])
        .state(
            "tj",
            plan(|v| if v < 2 { to("top") } else { Next::End }),
            &["top"],
        );
    for slow in ["a11", "a2", "b", "a12"] {
        let (report, trace) = shape.run(&[(slow, 30)], true).await;
        for join in ["a1j", "aj", "tj"] {
            assert_eq!(runs(&report, join), 3, "{join} with {slow} slow");
        }
        for (round, tj) in trace.runs("tj").iter().enumerate() {
            let r = round as u32 + 1;
            for s in ["a11", "a12", "a1j", "a2", "aj", "b"] {
                assert_eq!(tj.saw[s], r, "round {r}: tj saw {s}");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_loop_inside_one_branch_is_waited_for() {
    let shape = Shape::new()
        .state("start", always(par(&["a", "b"])), &["a", "b"])
        .state(
            "a",
            plan(|v| if v < 2 { to("a") } else { to("merge") }),
            &["a", "merge"],
        )
        .state("b", always(to("merge")), &["merge"])
        .state("merge", always(Next::End), &[]);
    for (a, b) in [(1, 50), (20, 1), (5, 5)] {
        for declare in [true, false] {
            let (report, trace) = shape.run(&[("a", a), ("b", b)], declare).await;
            assert_eq!(runs(&report, "a"), 3);
            if !declare {
                exact_or_warned(&report, runs(&report, "merge") == 1, "undeclared");
                continue;
            }
            assert_eq!(runs(&report, "merge"), 1);
            assert_eq!(trace.runs("merge")[0].saw["a"], 3);
            joined_after(&trace, "merge", &["a", "b"]);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_branch_a_join_waits_for_releases_the_join() {
    let origin = Instant::now();
    let (agent, trace) = Shape::new()
        .state("start", always(par(&["a", "slow"])), &["a", "slow"])
        .state("a", always(to("merge")), &["merge"])
        .state("slow", always(to("merge")), &["merge"])
        .state("merge", always(Next::End), &[])
        .agent(&[("slow", 10_000)], true, origin);
    let handle = agent.start().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(handle.state_status("merge"), Some(StateStatus::Blocked));
    assert_eq!(handle.cancel_state("slow").await.unwrap(), 1);
    let report = handle.wait().await;
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!((runs(&report, "merge"), arrivals(&report, "merge")), (1, 1));
    assert_eq!(trace.runs("merge")[0].start, 50);
    assert_eq!(report.state("slow").unwrap().status, StateStatus::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn pausing_and_restoring_a_looping_fork_keeps_its_counts() {
    let shape = agent_loop();
    let delays = [("tool_a", 30), ("tool_b", 5), ("agent", 2)];
    let (expected, _) = shape.run(&delays, true).await;
    for at in [1, 20, 33, 50] {
        let origin = Instant::now();
        let (agent, _) = shape.agent(&delays, true, origin);
        let handle = agent.start().unwrap();
        tokio::time::sleep(Duration::from_millis(at)).await;
        let checkpoint = handle.pause().await.unwrap();
        handle.cancel();
        let json = checkpoint.to_json().unwrap();
        let checkpoint = fluffy_flow::Checkpoint::from_json(&json, "test", "shape", "r").unwrap();
        let (fresh, _) = shape.agent(&delays, true, origin);
        let report = fresh
            .restore_from_checkpoint(checkpoint)
            .unwrap()
            .wait()
            .await;
        assert_eq!(report.status, AgentStatus::Completed, "paused at {at}");
        for s in ["agent", "tool_a", "tool_b"] {
            assert_eq!(runs(&report, s), runs(&expected, s), "{s}, paused at {at}");
            assert_eq!(
                arrivals(&report, s),
                arrivals(&expected, s),
                "{s}, paused at {at}"
            );
        }
    }
}

/// start -> [a, b], a -> x -> merge, b (slow) -> merge, nothing declared.
fn ambiguous() -> Shape {
    Shape::new()
        .state("start", always(par(&["a", "b"])), &["a", "b"])
        .state("a", always(to("x")), &["x"])
        .state("x", always(to("merge")), &["merge"])
        .state("b", always(to("merge")), &["merge"])
        .state("merge", always(Next::End), &[])
}

#[tokio::test(start_paused = true)]
async fn an_ambiguous_join_is_reported_and_strict_joins_refuse_it() {
    let (report, _) = ambiguous().run(&[("b", 30)], false).await;
    let [
        RunWarning::AmbiguousJoin {
            fork,
            held,
            released,
            declare,
            times,
        },
    ] = report.warnings.as_slice()
    else {
        panic!("one warning expected: {:?}", report.warnings);
    };
    assert_eq!(fork.as_deref(), Some("start"));
    let held: Vec<&str> = held.iter().map(|s| &**s).collect();
    assert_eq!(held, ["x", "merge"]);
    assert_eq!(&**released, "merge", "the set held last goes first");
    let declare: Vec<&str> = declare.iter().map(|s| &**s).collect();
    assert_eq!(declare, ["x", "merge"]);
    assert_eq!(*times, 1);
    let text = report.warnings[0].to_string();
    assert!(
        text.contains("declare the successors of `x`, `merge`"),
        "{text}"
    );

    let origin = Instant::now();
    let (mut agent, _) = ambiguous().agent(&[("b", 30)], false, origin);
    agent.strict_joins(true);
    let error = agent.run().await.unwrap_err();
    let FlowError::AmbiguousJoin {
        fork,
        held,
        declare,
        ..
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!(fork.as_deref(), Some("start"));
    assert_eq!(held, &["x", "merge"]);
    assert_eq!(declare, &["x", "merge"]);
    assert!(
        error
            .to_string()
            .contains("declare the successors of `x`, `merge`"),
        "{error}"
    );

    // Declared, the same shape is exact and quiet, strict or not.
    let (mut agent, _) = ambiguous().agent(&[("b", 30)], true, origin);
    agent.strict_joins(true);
    let report = agent.run().await.unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
    assert_eq!(runs(&report, "merge"), 1);
    assert!(report.warnings.is_empty());
}
