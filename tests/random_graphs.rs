//! Property: on a random DAG with declared successors, where every state forks into all of
//! its successors, every reachable state runs exactly once, after every reachable predecessor,
//! and the run completes. Random delays (on the paused clock) vary the interleavings.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluffy_flow::prelude::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Dag {
    successors: Vec<Vec<usize>>,
    delays_ms: Vec<u64>,
    /// States whose successors are not declared to the scheduler.
    undeclared: Vec<bool>,
}

fn dag() -> impl Strategy<Value = Dag> {
    (2usize..24).prop_flat_map(|n| {
        let edges = (0..n)
            .map(move |i| proptest::collection::btree_set(i + 1..n.max(i + 2), 0..4))
            .collect::<Vec<_>>();
        let delays = proptest::collection::vec(0u64..4, n);
        (edges, delays).prop_map(move |(edges, delays_ms)| Dag {
            successors: edges
                .into_iter()
                .map(|set: BTreeSet<usize>| set.into_iter().filter(|&j| j < n).collect())
                .collect(),
            delays_ms,
            undeclared: vec![false; n],
        })
    })
}

/// A DAG where some states do not declare their successors: exactly-once is promised when every
/// edge into a join is declared, a fork's targets are reached from nowhere else (a fork's
/// targets are never held for undeclared siblings; see the join rule), and no join leaves its
/// successors undeclared. Undeclared states may
/// still sit anywhere else, making every state upstream of them "may reach anything".
fn mixed_dag() -> impl Strategy<Value = Dag> {
    (dag(), proptest::collection::vec(any::<bool>(), 24)).prop_map(|(dag, coin)| {
        let n = dag.successors.len();
        let mut taken = vec![false; n];
        let mut in_degree = vec![0usize; n];
        let mut successors = Vec::with_capacity(n);
        for raw in &dag.successors {
            let mut chosen: Vec<usize> = raw.iter().copied().filter(|&t| !taken[t]).collect();
            if chosen.len() >= 2 {
                chosen.retain(|&t| in_degree[t] == 0);
                if chosen.len() >= 2 {
                    chosen.iter().for_each(|&t| taken[t] = true);
                }
            }
            chosen.iter().for_each(|&t| in_degree[t] += 1);
            successors.push(chosen);
        }
        // An undeclared edge into a join cannot be told from a dead end; undeclared states
        // go nowhere, or to a state only they lead to. An undeclared state is not itself a
        // declared join either: when every branch is held, the fallback cannot tell it from a
        // later join it leads to, and may release that one first (a known gap, in the README).
        let undeclared = (0..n)
            .map(|i| {
                in_degree[i] < 2
                    && match successors[i].as_slice() {
                        [] => coin[i],
                        [only] => coin[i] && in_degree[*only] == 1,
                        _ => false,
                    }
            })
            .collect();
        Dag {
            successors,
            undeclared,
            ..dag
        }
    })
}

fn reachable(dag: &Dag) -> BTreeSet<usize> {
    let mut seen = BTreeSet::from([0]);
    let mut stack = vec![0];
    while let Some(v) = stack.pop() {
        for &w in &dag.successors[v] {
            if seen.insert(w) {
                stack.push(w);
            }
        }
    }
    seen
}

type Timeline = Arc<Mutex<Vec<(usize, &'static str)>>>;

fn build(dag: &Dag, timeline: &Timeline) -> Agent {
    let mut agent = Agent::new("random");
    for (i, successors) in dag.successors.iter().enumerate() {
        let names: Vec<String> = successors.iter().map(|j| format!("s{j}")).collect();
        let next = match names.len() {
            0 => Next::End,
            1 => Next::to(names[0].clone()),
            _ => Next::parallel(names.clone()),
        };
        let delay = Duration::from_millis(dag.delays_ms[i]);
        let timeline = Arc::clone(timeline);
        let options = agent.add_state(format!("s{i}"), move |_ctx: Context| {
            let next = next.clone();
            let timeline = Arc::clone(&timeline);
            async move {
                timeline.lock().unwrap().push((i, "start"));
                if delay.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(delay).await;
                }
                timeline.lock().unwrap().push((i, "end"));
                Ok::<_, FlowError>(next)
            }
        });
        if !dag.undeclared[i] {
            options.successors(names);
        }
    }
    agent
}

fn check(dag: &Dag, timeline: &Timeline, report: &RunReport) -> Result<(), TestCaseError> {
    prop_assert_eq!(report.status, AgentStatus::Completed);
    let events = timeline.lock().unwrap().clone();
    let mut starts: HashMap<usize, usize> = HashMap::new();
    let mut ends: HashMap<usize, usize> = HashMap::new();
    for (position, (state, what)) in events.iter().enumerate() {
        let table = if *what == "start" {
            &mut starts
        } else {
            &mut ends
        };
        prop_assert!(
            table.insert(*state, position).is_none(),
            "s{} {} twice",
            state,
            what
        );
    }
    let reached = reachable(dag);
    prop_assert_eq!(
        starts.keys().copied().collect::<BTreeSet<_>>(),
        reached.clone()
    );
    for (p, successors) in dag.successors.iter().enumerate() {
        if !reached.contains(&p) {
            continue;
        }
        for s in successors {
            prop_assert!(
                ends[&p] < starts[s],
                "s{} started before its predecessor s{} ended",
                s,
                p
            );
        }
    }
    prop_assert_eq!(report.transitions, reached.len() as u64);
    Ok(())
}

/// Runs the DAG's workflow on `runtime` and checks the property.
fn run_and_check(runtime: tokio::runtime::Runtime, dag: &Dag) -> Result<(), TestCaseError> {
    let timeline = Timeline::default();
    let agent = build(dag, &timeline);
    let report = runtime.block_on(agent.run()).unwrap();
    check(dag, &timeline, &report)
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_reachable_state_runs_once_after_its_predecessors(dag in dag()) {
        run_and_check(paused_runtime(), &dag)?;
    }

    #[test]
    fn the_same_holds_on_a_multi_threaded_runtime(dag in dag()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        run_and_check(runtime, &Dag { delays_ms: vec![0; dag.delays_ms.len()], ..dag })?;
    }

    #[test]
    fn the_same_holds_when_some_states_declare_nothing(dag in mixed_dag()) {
        run_and_check(paused_runtime(), &dag)?;
    }
}
