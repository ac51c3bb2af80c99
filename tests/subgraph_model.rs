//! A workflow run as a subgraph does what it does on its own: random programs of the join
//! model (loops, forks, joins, an append reducer) run standalone, as a subgraph of a parent,
//! and two levels down, on the paused clock. Each must give the same reducer list (in the same
//! order), the same runs and arrivals of every state (the nested ones read from the parent's
//! report under their path), and the same view of the list at the start of every run.

mod model;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluffy_flow::SubgraphMapping;
use fluffy_flow::prelude::*;
use model::programs::{Mix, program};
use model::{Program, RunId};
use proptest::prelude::*;

type Views = BTreeMap<RunId, Vec<(usize, u32)>>;

fn name(i: usize) -> String {
    format!("s{i}")
}

/// The program as an agent: each run records what it read of `log`, sleeps its duration,
/// contributes `(state, visit)` to `log` (even states) and goes where the program says.
fn agent(program: &Program, views: &Arc<Mutex<Views>>) -> Agent {
    let n = program.states.len();
    let program = Arc::new(program.clone());
    let visits = Arc::new(Mutex::new(vec![0u32; n]));
    let mut agent = Agent::new("model");
    agent.reducer("log", Reducer::append::<(usize, u32)>());
    for i in 0..n {
        let (program_, views_, visits_) =
            (Arc::clone(&program), Arc::clone(views), Arc::clone(&visits));
        let options = agent.add_state(name(i), move |ctx: Context| {
            let (program, views, visits) = (
                Arc::clone(&program_),
                Arc::clone(&views_),
                Arc::clone(&visits_),
            );
            async move {
                let view: Vec<(usize, u32)> = ctx.get_state_or("log", Vec::new())?;
                let visit = {
                    let mut visits = visits.lock().unwrap();
                    visits[i] += 1;
                    visits[i] - 1
                };
                views.lock().unwrap().insert((i, visit), view);
                tokio::time::sleep(Duration::from_millis(program.states[i].duration_ms)).await;
                if i % 2 == 0 {
                    ctx.set_state("log", (i, visit));
                }
                Ok(match program.next(i, visit) {
                    [] => Next::End,
                    [to] => Next::to(name(*to)),
                    targets => Next::parallel(targets.iter().map(|&t| name(t))),
                })
            }
        });
        if program.states[i].declared {
            options.successors(program.successors(i).into_iter().map(name));
        }
    }
    agent
}

/// What a run did: its list, and each state's runs and arrivals.
#[derive(Debug, PartialEq)]
struct Outcome {
    log: Vec<(usize, u32)>,
    counts: Vec<(u32, u32)>,
    views: Views,
}

/// Runs the program `depth` subgraphs down (0: on its own).
fn run(program: &Program, depth: usize) -> Outcome {
    let views = Arc::new(Mutex::new(Views::new()));
    let mut top = agent(program, &views);
    let mut prefix = String::new();
    for level in 0..depth {
        let mut parent = Agent::new(format!("parent{level}"));
        parent.add_subgraph("sub", &top, SubgraphMapping::new().outputs(["log"]));
        top = parent;
        prefix.insert_str(0, "sub/");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let report = runtime.block_on(top.run()).expect("the program completes");
    let log: Vec<(usize, u32)> = report.context.get_state_or("log", Vec::new()).unwrap();
    let counts = (0..program.states.len())
        .map(|i| {
            report
                .state(&format!("{prefix}{}", name(i)))
                .map_or((0, 0), |s| (s.runs, s.arrivals))
        })
        .collect();
    let views = std::mem::take(&mut *views.lock().unwrap());
    Outcome { log, counts, views }
}

fn cases() -> u32 {
    let scale: u32 = std::env::var("JOIN_MODEL_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    64u32.saturating_mul(scale)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn a_program_does_the_same_as_a_subgraph_one_and_two_levels_down(
        program in prop_oneof![program(Mix::Declared), program(Mix::Undeclared), program(Mix::Mixed)]
    ) {
        let alone = run(&program, 0);
        prop_assert!(alone.counts[0].0 >= 1, "the entry ran");
        let nested = run(&program, 1);
        prop_assert_eq!(&nested, &alone);
        let deeper = run(&program, 2);
        prop_assert_eq!(&deeper, &alone);
    }
}
