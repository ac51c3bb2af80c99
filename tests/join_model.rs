//! The real scheduler against the reference model (`tests/model`) on random programs with
//! loops, forks of random width (naming a state twice, sometimes), random mixes of declared
//! and undeclared successors and random durations on the paused clock: the same runs of every
//! state, the same arrivals, the same ambiguity warnings and, where the order of events is
//! fixed by the durations, the same inbox at the start of every run (which arrivals had come
//! in when each join ran). For fully declared programs, five duration assignments must give
//! the same counts wherever each loop's visits are causally ordered.
//!
//! Every run of an even-numbered state also contributes `(state, visit)` to a key with an append
//! reducer (odd ones write nothing, so some branches end with no writes of their own): the
//! run's final list must hold each such run exactly once, and where the five timings are
//! comparable, the lists must be equal (contributions join in fork order, never in the order
//! branches finished), and so must what each state run read of it (a branch sees what it
//! joined, never a sibling's writes that happened to come first).

mod model;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluffy_flow::prelude::*;
use model::programs::{Mix, program};
use model::{Program, RunId};
use proptest::prelude::*;

/// `default` cases, times `JOIN_MODEL_SCALE` if set (for long runs by hand:
/// `JOIN_MODEL_SCALE=100 cargo test --release --test join_model`).
fn cases(default: u32) -> u32 {
    let scale: u32 = std::env::var("JOIN_MODEL_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    default.saturating_mul(scale)
}

#[derive(Default)]
struct Shared {
    visits: Vec<u32>,
    inbox: Vec<Vec<RunId>>,
    drained: BTreeMap<RunId, Vec<RunId>>,
    /// What each run read of the reducer's list when it started.
    views: BTreeMap<RunId, Vec<(usize, u32)>>,
}

fn name(i: usize) -> String {
    format!("s{i}")
}

type Views = BTreeMap<RunId, Vec<(usize, u32)>>;

/// Runs `program` on the real scheduler (paused clock): the report, each run's inbox, and
/// what each run read of the reducer's list. The states whose bit is set in `remote` are
/// `remote`, dispatched through JSON to a task of their own (`LocalDispatch`).
fn run_real(program: &Program, remote: u32) -> (RunReport, BTreeMap<RunId, Vec<RunId>>, Views) {
    let n = program.states.len();
    let shared = Arc::new(Mutex::new(Shared {
        visits: vec![0; n],
        inbox: vec![Vec::new(); n],
        drained: BTreeMap::new(),
        views: BTreeMap::new(),
    }));
    let program = Arc::new(program.clone());
    let mut agent = Agent::new("model");
    agent.reducer("log", Reducer::append::<(usize, u32)>());
    for i in 0..n {
        let (program_, shared_) = (Arc::clone(&program), Arc::clone(&shared));
        let options = agent.add_state(name(i), move |ctx: Context| {
            let (program, shared) = (Arc::clone(&program_), Arc::clone(&shared_));
            async move {
                let view: Vec<(usize, u32)> = ctx.get_state_or("log", Vec::new())?;
                let visit = {
                    let mut s = shared.lock().unwrap();
                    let visit = s.visits[i];
                    s.visits[i] += 1;
                    let drained = std::mem::take(&mut s.inbox[i]);
                    s.drained.insert((i, visit), drained);
                    s.views.insert((i, visit), view);
                    visit
                };
                let duration = program.states[i].duration_ms;
                tokio::time::sleep(Duration::from_millis(duration)).await;
                // Odd states write nothing: branches that end without writes of their own
                // must hand nothing over, and lose nothing either.
                if i % 2 == 0 {
                    ctx.set_state("log", (i, visit));
                }
                let targets = program.next(i, visit);
                let mut s = shared.lock().unwrap();
                for &t in targets {
                    s.inbox[t].push((i, visit));
                }
                Ok(match targets {
                    [] => Next::End,
                    [to] => Next::to(name(*to)),
                    _ => Next::parallel(targets.iter().map(|&t| name(t))),
                })
            }
        });
        let options = if remote & (1 << i) != 0 {
            options.remote()
        } else {
            options
        };
        if program.states[i].declared {
            options.successors(program.successors(i).into_iter().map(name));
        }
    }
    if remote != 0 {
        agent = agent.dispatching(fluffy_flow::remote::LocalDispatch::new(&agent));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let report = runtime
        .block_on(agent.run())
        .expect("the definition is valid");
    let drained = std::mem::take(&mut shared.lock().unwrap().drained);
    let views = std::mem::take(&mut shared.lock().unwrap().views);
    (report, drained, views)
}

fn counts(report: &RunReport) -> (Vec<u32>, Vec<u32>) {
    (
        report.states.iter().map(|s| s.runs).collect(),
        report.states.iter().map(|s| s.arrivals).collect(),
    )
}

fn warnings(report: &RunReport) -> u32 {
    report
        .warnings
        .iter()
        .map(|w| match w {
            fluffy_flow::RunWarning::AmbiguousJoin { times, .. } => *times,
            _ => 0,
        })
        .sum()
}

/// Runs both and compares; returns the model's outcome and the reducer's list (None when
/// it was cut short).
fn compare(program: &Program, remote: u32) -> Result<Option<(model::Outcome, Log)>, TestCaseError> {
    let expected = model::run(program);
    if expected.truncated {
        return Ok(None);
    }
    let (report, drained, views) = run_real(program, remote);
    prop_assert_eq!(report.status, AgentStatus::Completed, "{:?}", report.error);
    // Every state run contributed once: nothing lost, nothing twice.
    let log: Vec<(usize, u32)> = report.context.get_state("log").unwrap_or_default();
    let mut contributed = log.clone();
    contributed.sort_unstable();
    let ran: Vec<(usize, u32)> = report
        .states
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .flat_map(|(i, s)| (0..s.runs).map(move |v| (i, v)))
        .collect();
    prop_assert_eq!(
        contributed,
        ran,
        "the reducer's list holds every state run once"
    );
    if expected.order_exact {
        let (runs, arrivals) = counts(&report);
        prop_assert_eq!(&runs, &expected.runs, "runs per state");
        prop_assert_eq!(&arrivals, &expected.arrivals, "arrivals per state");
        prop_assert_eq!(&drained, &expected.drained, "inbox at each run's start");
        prop_assert_eq!(
            warnings(&report),
            expected.ambiguities,
            "ambiguity warnings"
        );
    }
    Ok(Some((expected, canonical(&log, &views, &drained))))
}

/// The reducer's final list, and what each run read of it (by run), with each run named by
/// what it is rather than by its visit number (which may follow timing when runs of one
/// state are on parallel branches): its state and the names of the runs whose transitions
/// brought it, recursively.
type Log = (Vec<String>, BTreeMap<String, Vec<Vec<String>>>);

fn canonical(log: &[(usize, u32)], views: &Views, drained: &BTreeMap<RunId, Vec<RunId>>) -> Log {
    fn name(
        run: RunId,
        drained: &BTreeMap<RunId, Vec<RunId>>,
        names: &mut BTreeMap<RunId, String>,
    ) -> String {
        if let Some(known) = names.get(&run) {
            return known.clone();
        }
        let mut from: Vec<String> = drained
            .get(&run)
            .into_iter()
            .flatten()
            .map(|&p| name(p, drained, names))
            .collect();
        from.sort();
        let named = format!("s{}<{}>", run.0, from.join(","));
        names.insert(run, named.clone());
        named
    }
    let mut names = BTreeMap::new();
    let list = log.iter().map(|&r| name(r, drained, &mut names)).collect();
    let mut read: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for (&run, view) in views {
        let seen = view.iter().map(|&r| name(r, drained, &mut names)).collect();
        read.entry(name(run, drained, &mut names))
            .or_default()
            .push(seen);
    }
    for views in read.values_mut() {
        views.sort();
    }
    (list, read)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(3000), ..ProptestConfig::default() })]

    #[test]
    fn the_scheduler_does_what_the_model_does(
        program in prop_oneof![program(Mix::Declared), program(Mix::Undeclared), program(Mix::Mixed)]
    ) {
        compare(&program, 0)?;
    }

    /// The same with some states `remote`: their attempts go out as calls (through JSON) and
    /// their writes come back as replies, and nothing the model checks may differ.
    #[test]
    fn remote_states_do_what_the_model_does(
        program in prop_oneof![program(Mix::Declared), program(Mix::Undeclared), program(Mix::Mixed)],
        remote in 1u32..,
    ) {
        compare(&program, remote)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(300), ..ProptestConfig::default() })]

    #[test]
    fn declared_programs_count_the_same_under_five_timings(
        program in program(Mix::Declared),
        timings in proptest::collection::vec(proptest::collection::vec(1u64..=1_000_000, 8), 4),
    ) {
        let mut outcomes = Vec::new();
        let mut logs = Vec::new();
        let mut variant = program.clone();
        for durations in std::iter::once(None).chain(timings.iter().map(Some)) {
            if let Some(durations) = durations {
                for (state, &d) in variant.states.iter_mut().zip(durations) {
                    state.duration_ms = d;
                }
            }
            match compare(&variant, 0)? {
                Some((outcome, log)) => {
                    outcomes.push(outcome);
                    logs.push(log);
                }
                None => return Ok(()),
            }
        }
        let comparable = outcomes
            .iter()
            .all(|o| o.order_exact && o.visits_causal && o.ambiguities == 0 && !o.passes_overlap);
        if comparable {
            for o in &outcomes[1..] {
                prop_assert_eq!(&o.runs, &outcomes[0].runs, "runs under another timing");
                prop_assert_eq!(&o.arrivals, &outcomes[0].arrivals);
                prop_assert_eq!(&o.histories, &outcomes[0].histories, "join memberships");
            }
            // Where the joins took the same branches (some programs join differently under
            // different timings, though each join runs once), the writes must agree.
            let runs = |log: &Log| log.1.keys().cloned().collect::<Vec<_>>();
            if logs.iter().all(|log| runs(log) == runs(&logs[0])) {
                for (log, views) in &logs[1..] {
                    prop_assert_eq!(log, &logs[0].0, "the reducer's list under another timing");
                    prop_assert_eq!(views, &logs[0].1, "what runs read under another timing");
                }
            }
        }
    }
}

/// The generator makes the shapes the comparison is for: most cases have a fixed order of
/// events, many have joins and loops, some are ambiguous.
#[test]
fn the_generated_programs_have_joins_loops_and_ambiguities() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = prop_oneof![
        program(Mix::Declared),
        program(Mix::Undeclared),
        program(Mix::Mixed)
    ];
    let (mut exact, mut joins, mut loops, mut ambiguous) = (0, 0, 0, 0);
    let cases = 1000;
    for _ in 0..cases {
        let outcome = model::run(&strategy.new_tree(&mut runner).unwrap().current());
        exact += usize::from(outcome.order_exact);
        joins += usize::from(outcome.members.values().any(|m| m.len() >= 2));
        loops += usize::from(outcome.runs.iter().any(|&r| r >= 3));
        ambiguous += usize::from(outcome.ambiguities > 0);
    }
    assert!(exact * 2 > cases, "{exact} of {cases} with a fixed order");
    assert!(joins * 5 > cases, "{joins} of {cases} with a join");
    assert!(loops * 5 > cases, "{loops} of {cases} with a loop");
    assert!(ambiguous * 20 > cases, "{ambiguous} of {cases} ambiguous");
}
