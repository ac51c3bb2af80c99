//! Deadlock detection: a wait-for graph over the primitives held and awaited by tasks, across
//! every run and agent of the process.
//!
//! Edges are added as they happen, and a cycle is looked for only when a task starts to wait
//! (the only moment one can close): from the primitive it waits for, to the tasks holding it,
//! to what they wait for, and so on; reaching the waiting task again is a deadlock. The waiter
//! that closed the cycle is refused with [`FlowError::Deadlock`] (its attempt fails; retries
//! apply), which breaks the cycle.
//!
//! States admitted by the scheduler take all their primitives at once, or none, so they never
//! wait while holding; cycles come from acquisitions inside a state body (`lock().await` while
//! holding a primitive through `#[state(mutex = ..)]` or another guard). Only tasks take part:
//! nothing is recorded for a workflow that uses no primitive.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use flow_core::FlowError;
use tokio::task::Id;

use super::hold::Engine;

/// Who holds or waits: a task (when known) and a label for messages.
#[derive(Clone)]
pub(crate) struct Owner {
    pub(crate) task: Option<Id>,
    pub(crate) label: Arc<str>,
}

impl Owner {
    /// The current task, labelled by what the scheduler said of it (the state and run whose
    /// attempt it runs) or by its id.
    pub(crate) fn current() -> Self {
        let task = tokio::task::try_id();
        let label = task
            .and_then(|task| graph().labels.get(&task).cloned())
            .unwrap_or_else(|| match task {
                Some(task) => Arc::from(format!("task {task}")),
                None => Arc::from("code outside any task"),
            });
        Self { task, label }
    }
}

#[derive(Default)]
struct WaitGraph {
    /// Primitives each task holds (an engine's address identifies it; holds keep it alive).
    holds: HashMap<Id, Vec<(usize, Arc<Engine>)>>,
    /// The primitive each task waits for.
    waits: HashMap<Id, usize>,
    /// What the scheduler said of its state tasks.
    labels: HashMap<Id, Arc<str>>,
}

static GRAPH: Mutex<Option<WaitGraph>> = Mutex::new(None);
static CYCLES: AtomicU64 = AtomicU64::new(0);

struct Graph(MutexGuard<'static, Option<WaitGraph>>);

impl std::ops::Deref for Graph {
    type Target = WaitGraph;
    fn deref(&self) -> &WaitGraph {
        self.0.as_ref().expect("initialised by graph()")
    }
}

impl std::ops::DerefMut for Graph {
    fn deref_mut(&mut self) -> &mut WaitGraph {
        self.0.as_mut().expect("initialised by graph()")
    }
}

fn graph() -> Graph {
    let mut guard = GRAPH.lock().unwrap_or_else(PoisonError::into_inner);
    guard.get_or_insert_with(WaitGraph::default);
    Graph(guard)
}

fn key(engine: &Engine) -> usize {
    std::ptr::from_ref(engine) as usize
}

/// How many deadlocks were found (and refused) in this process.
pub(crate) fn cycles_found() -> u64 {
    CYCLES.load(Ordering::Relaxed)
}

/// Names the state task `task` for messages (set by the scheduler when it holds primitives).
pub(crate) fn label(task: Id, label: Arc<str>) {
    graph().labels.insert(task, label);
}

/// `task` now holds `engine`.
pub(crate) fn held(task: Id, engine: &Arc<Engine>) {
    graph()
        .holds
        .entry(task)
        .or_default()
        .push((key(engine), Arc::clone(engine)));
}

/// `task` gave `engine` back (once per hold).
pub(crate) fn released(task: Id, engine: &Engine) {
    let mut graph = graph();
    let engine = key(engine);
    if let Some(holds) = graph.holds.get_mut(&task) {
        if let Some(at) = holds.iter().position(|(held, _)| *held == engine) {
            holds.swap_remove(at);
        }
        if holds.is_empty() {
            graph.holds.remove(&task);
            graph.labels.remove(&task);
        }
    }
}

/// A wait in the graph; removed when dropped.
pub(crate) struct WaitEdge(Id);

impl Drop for WaitEdge {
    fn drop(&mut self) {
        graph().waits.remove(&self.0);
    }
}

/// `owner` starts waiting for `engine`: refused with [`FlowError::Deadlock`] if that closes a
/// cycle. Code outside a task cannot take part in one (nothing can wait for it) and is not
/// recorded.
pub(crate) fn waits(owner: &Owner, engine: &Arc<Engine>) -> Result<Option<WaitEdge>, FlowError> {
    let Some(task) = owner.task else {
        return Ok(None);
    };
    let mut graph = graph();
    if let Some(cycle) = graph.cycle_through(task, key(engine)) {
        CYCLES.fetch_add(1, Ordering::Relaxed);
        return Err(FlowError::Deadlock { cycle });
    }
    graph.waits.insert(task, key(engine));
    Ok(Some(WaitEdge(task)))
}

impl WaitGraph {
    fn holders_of(&self, engine: usize) -> impl Iterator<Item = Id> + '_ {
        self.holds
            .iter()
            .filter(move |(_, held)| held.iter().any(|(e, _)| *e == engine))
            .map(|(task, _)| *task)
    }

    fn engine(&self, engine: usize) -> Option<&Arc<Engine>> {
        self.holds
            .values()
            .flatten()
            .find(|(e, _)| *e == engine)
            .map(|(_, engine)| engine)
    }

    fn label(&self, task: Id) -> String {
        self.labels
            .get(&task)
            .map_or_else(|| format!("task {task}"), |label| label.to_string())
    }

    /// If `waiter` waiting for `engine` closes a cycle, the cycle in words: one line per task,
    /// what it holds that the previous one waits for, and what it waits for.
    fn cycle_through(&self, waiter: Id, engine: usize) -> Option<Vec<String>> {
        // Breadth-first from the awaited primitive; `via` remembers how each task was reached.
        let mut via: HashMap<Id, (usize, Option<Id>)> = HashMap::new();
        let mut frontier = vec![(engine, None::<Id>)];
        while let Some((awaited, from)) = frontier.pop() {
            for holder in self.holders_of(awaited) {
                if via.contains_key(&holder) {
                    continue;
                }
                via.insert(holder, (awaited, from));
                if holder == waiter {
                    return Some(self.describe(waiter, engine, &via));
                }
                if let Some(&next) = self.waits.get(&holder) {
                    frontier.push((next, Some(holder)));
                }
            }
        }
        None
    }

    /// The cycle as lines, from the holder of the awaited primitive round to the waiter.
    fn describe(
        &self,
        waiter: Id,
        awaited: usize,
        via: &HashMap<Id, (usize, Option<Id>)>,
    ) -> Vec<String> {
        let name = |engine: usize| {
            self.engine(engine)
                .map_or_else(|| "a primitive".to_owned(), |e| e.describe())
        };
        let mut chain = vec![waiter];
        while let Some(&(_, Some(from))) = chain.last().and_then(|task| via.get(task)) {
            chain.push(from);
        }
        chain.reverse();
        chain
            .iter()
            .map(|&task| {
                let holds = via[&task].0;
                let waits_for = if task == waiter {
                    awaited
                } else {
                    self.waits.get(&task).copied().unwrap_or(awaited)
                };
                format!(
                    "{} holds {} and waits for {}",
                    self.label(task),
                    name(holds),
                    name(waits_for)
                )
            })
            .collect()
    }
}
