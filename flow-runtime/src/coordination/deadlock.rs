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

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use flow_core::{FlowError, StateId};
use tokio::task::Id;

use super::hold::Engine;
use crate::agent::Compiled;

/// Who takes part in the wait-for graph: one attempt of a state (however many tasks it is
/// polled on: its first poll may run on the coordinator), or, for code outside any attempt,
/// the tokio task it runs on.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Actor {
    /// An attempt, by its run's process-wide key and a number unique within the run.
    Attempt { run: u64, serial: u64 },
    /// A task that runs no attempt (one a state spawned, or the user's own).
    Task(Id),
}

/// Who holds or waits: an actor (when known) and a label for messages.
#[derive(Clone)]
pub(crate) struct Owner {
    pub(crate) task: Option<Actor>,
    pub(crate) label: Arc<str>,
}

impl Owner {
    /// Whoever runs now: the attempt being polled on this thread, labelled by its state,
    /// run and workflow; else the current task, labelled by its id.
    pub(crate) fn current() -> Self {
        // Taken out for the look and put back: the cell lends nothing.
        let attempt = CURRENT_ATTEMPT.with(Cell::take);
        let owner = attempt.as_ref().map(AttemptIdentity::owner);
        CURRENT_ATTEMPT.with(|current| current.set(attempt));
        if let Some(owner) = owner {
            return owner;
        }
        let task = tokio::task::try_id();
        Self {
            task: task.map(Actor::Task),
            label: match task {
                Some(task) => Arc::from(format!("task {task}")),
                None => Arc::from("code outside any task"),
            },
        }
    }
}

/// What an attempt of a state is, for the primitives it takes inside its body: set on the
/// thread for the length of each poll of its future (see [`AttemptIdentity::polling`]).
pub(crate) struct AttemptIdentity {
    pub(crate) actor: Actor,
    /// Its workflow (where its name and its states' names are).
    pub(crate) compiled: Arc<Compiled>,
    pub(crate) state: StateId,
    pub(crate) run_id: u64,
}

thread_local! {
    static CURRENT_ATTEMPT: Cell<Option<AttemptIdentity>> = const { Cell::new(None) };
}

impl AttemptIdentity {
    /// "state `fetch` of run 3 (workflow `etl`)": allocated only when a primitive is used.
    pub(crate) fn label(&self) -> Arc<str> {
        Arc::from(format!(
            "state `{}` of run {} (workflow `{}`)",
            self.compiled.graph.name(self.state),
            self.run_id,
            self.compiled.name
        ))
    }

    fn owner(&self) -> Owner {
        Owner {
            task: Some(self.actor),
            label: self.label(),
        }
    }

    /// Runs `poll` with `identity` as the current attempt of this thread, then takes it back
    /// (moved, not cloned: a poll costs two swaps). Nested polls (a run inside a state) keep
    /// their own and restore the outer one, also when `poll` panics.
    pub(crate) fn polling<R>(
        identity: &mut Option<AttemptIdentity>,
        poll: impl FnOnce() -> R,
    ) -> R {
        struct Restore<'a> {
            identity: &'a mut Option<AttemptIdentity>,
            outer: Option<AttemptIdentity>,
        }
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                let outer = self.outer.take();
                *self.identity = CURRENT_ATTEMPT.with(|current| current.replace(outer));
            }
        }
        let outer = CURRENT_ATTEMPT.with(|current| current.replace(identity.take()));
        let _restore = Restore { identity, outer };
        poll()
    }
}

#[derive(Default)]
struct WaitGraph {
    /// Primitives each actor holds (an engine's address identifies it; holds keep it alive).
    holds: HashMap<Actor, Vec<(usize, Arc<Engine>)>>,
    /// The primitive each actor waits for.
    waits: HashMap<Actor, usize>,
    /// How each holder is named in messages.
    labels: HashMap<Actor, Arc<str>>,
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

/// `task`, named `label`, now holds `engine`.
pub(crate) fn held(task: Actor, label: &Arc<str>, engine: &Arc<Engine>) {
    let mut graph = graph();
    graph
        .holds
        .entry(task)
        .or_default()
        .push((key(engine), Arc::clone(engine)));
    graph
        .labels
        .entry(task)
        .or_insert_with(|| Arc::clone(label));
}

/// `task` gave `engine` back (once per hold).
pub(crate) fn released(task: Actor, engine: &Engine) {
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
pub(crate) struct WaitEdge(Actor);

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
    fn holders_of(&self, engine: usize) -> impl Iterator<Item = Actor> + '_ {
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

    fn label(&self, task: Actor) -> String {
        match (self.labels.get(&task), task) {
            (Some(label), _) => label.to_string(),
            (None, Actor::Task(id)) => format!("task {id}"),
            (None, Actor::Attempt { run, serial }) => format!("attempt {serial} of run key {run}"),
        }
    }

    /// If `waiter` waiting for `engine` closes a cycle, the cycle in words: one line per task,
    /// what it holds that the previous one waits for, and what it waits for.
    fn cycle_through(&self, waiter: Actor, engine: usize) -> Option<Vec<String>> {
        // Breadth-first from the awaited primitive; `via` remembers how each task was reached.
        let mut via: HashMap<Actor, (usize, Option<Actor>)> = HashMap::new();
        let mut frontier = vec![(engine, None::<Actor>)];
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
        waiter: Actor,
        awaited: usize,
        via: &HashMap<Actor, (usize, Option<Actor>)>,
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
