//! The validated form of a definition, built once and shared by every run started from it.

use super::*;
use crate::coordination::WaitRule;

/// A validated definition, shared by every run started from it.
pub(crate) struct Compiled {
    pub(crate) name: Arc<str>,
    pub(crate) graph: Arc<StateGraph>,
    pub(crate) states: Box<[CompiledState]>,
    pub(crate) max_concurrent: usize,
    /// The most state runs one run may take.
    pub(crate) max_steps: u64,
    pub(crate) timeout: Option<Duration>,
    pub(crate) cleanup_timeout: Duration,
    /// An ambiguous join fails the run rather than being guessed.
    pub(crate) strict_joins: bool,
    /// Polls of a state longer than this are reported (see [`Agent::warn_blocking`]).
    pub(crate) blocking_threshold: Option<Duration>,
    /// The pool states draw from; `None` when no state needs anything.
    pub(crate) pool: Option<ResourcePool>,
    /// Every distinct rate limit the states use (a state names them by index).
    pub(crate) gates: Box<[Gate]>,
    /// For each gate, how the entries waiting there take turns (see `WaitRule`).
    pub(crate) wait_rules: Box<[WaitRule]>,
    pub(crate) priority_aging: Duration,
    /// How often a checkpointed run waiting for input reads its store's answers.
    pub(crate) input_poll_interval: Duration,
    /// Whether a checkpointed run suspends when it only waits for input.
    pub(crate) suspend_on_input: bool,
    /// Where runs write automatic checkpoints, and when.
    pub(crate) checkpoints: Option<(Arc<dyn CheckpointStore>, CheckpointPolicy)>,
    /// What a checkpoint of this definition is stamped with (see `checkpoint::fingerprint`),
    /// computed the first time one is taken or restored.
    fingerprint: OnceLock<u64>,
    /// For each state, the states that depend on it.
    pub(crate) dependents: Box<[Box<[StateId]>]>,
    /// The states that start by themselves once their dependencies let them (see
    /// [`DependencyConfig`]).
    pub(crate) self_starting: Box<[StateId]>,
    /// How writes to a key combine, by key.
    pub(crate) reducers: Arc<crate::context::Reducers>,
    /// A failure with no handler ends its branch only (`BranchFailure::Continue`).
    pub(crate) keep_going: bool,
    /// Some state runs a subgraph (its runs keep records of them: see `crate::subgraph`).
    pub(crate) has_subgraphs: bool,
}

impl Compiled {
    /// The definition's fingerprint (see `checkpoint::fingerprint`).
    pub(crate) fn fingerprint(&self) -> u64 {
        *self
            .fingerprint
            .get_or_init(|| crate::checkpoint::fingerprint(&self.graph))
    }
}

/// One dependency of a compiled state.
pub(crate) struct CompiledDependency {
    pub(crate) on: StateId,
    pub(crate) config: DependencyConfig,
}

pub(crate) struct CompiledState {
    pub(crate) func: Arc<dyn StateFn>,
    pub(crate) priority: Priority,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: RetryPolicy,
    /// Which of its errors are retried (all when `None`).
    pub(crate) retry_if: Option<super::RetryIf>,
    /// What the state needs from the pool, in exact units (all zero: nothing).
    pub(crate) needs: Amounts,
    /// How long it may wait for the pool before the attempt fails.
    pub(crate) acquire_timeout: Option<Duration>,
    /// Whether a higher-priority state of its run may stop it to take its resources.
    pub(crate) preemptible: bool,
    /// Its admission gates (indexes into [`Compiled::gates`]) and the amount it asks of
    /// each, asked in this order.
    pub(crate) gates: Box<[(usize, u64)]>,
    /// What it waits for before it starts.
    pub(crate) dependencies: Box<[CompiledDependency]>,
}

pub(super) fn compile(definition: &Definition) -> Result<Arc<Compiled>, FlowError> {
    let agent = &*definition.name;
    let mut specs: Vec<StateSpec> = definition.states.iter().map(|s| s.spec.clone()).collect();
    if let Some(handler) = &definition.default_on_error {
        if !specs.iter().any(|spec| spec.name == *handler) {
            let hint = flow_core::closest_name(handler, specs.iter().map(|s| s.name.as_str()))
                .map(|name| format!("; did you mean `{name}`?"))
                .unwrap_or_default();
            return Err(FlowError::InvalidConfig {
                agent: agent.to_owned(),
                message: format!(
                    "`default_on_error` names `{handler}`, but this workflow has no state of that name{hint}"
                ),
            });
        }
        // Every state without a handler of its own, but the handler itself, goes there.
        for spec in &mut specs {
            if spec.on_error.is_none() && spec.name != *handler {
                spec.on_error = Some(handler.clone());
            }
        }
    }
    let graph = StateGraph::build(agent, &specs, &definition.entries)?;
    let invalid = |message: String| FlowError::InvalidConfig {
        agent: agent.to_owned(),
        message,
    };
    if definition.max_concurrent == Some(0) {
        return Err(invalid(
            "`max_concurrent` is 0, so no state could ever run; use at least 1".into(),
        ));
    }
    if definition.max_steps == 0 {
        return Err(invalid(
            "`max_steps` is 0, so no state could ever run; use at least 1 (u64::MAX for no limit)"
                .into(),
        ));
    }
    if definition.timeout == Some(Duration::ZERO) {
        return Err(invalid(
            "the run `timeout` is zero; use a positive duration or none".into(),
        ));
    }
    if let Some(state) = definition
        .states
        .iter()
        .find(|s| s.timeout == Some(Duration::ZERO))
    {
        return Err(invalid(format!(
            "state `{}` has a zero `timeout`; use a positive duration or none",
            state.spec.name
        )));
    }
    let mut timing = Vec::new();
    for state in &definition.states {
        timing.extend(state.declared_problems.iter().cloned());
        let retry = state.retry.unwrap_or(definition.default_retry);
        timing.extend(retry.problems().into_iter().map(|problem| {
            invalid(format!(
                "state `{}` has a retry policy that cannot be used: {problem}",
                state.spec.name
            ))
        }));
        for (dependency, config) in &state.dependencies {
            timing.extend(
                config
                    .problems(&state.spec.name, dependency)
                    .into_iter()
                    .map(invalid),
            );
        }
    }
    FlowError::from_problems(agent, timing)?;
    for state in &definition.states {
        if let Some(workflow) = &state.subgraph {
            let invalid = |error: FlowError| FlowError::InvalidSubgraph {
                state: state.spec.name.clone(),
                error: Box::new(error),
            };
            let compiled = workflow.compiled().map_err(invalid)?;
            if compiled.suspend_on_input {
                // Its run would stop, waiting, in the middle of the parent's state.
                return Err(invalid(FlowError::InvalidConfig {
                    agent: workflow.name().to_owned(),
                    message: "a subgraph cannot `suspend_on_input`: its requests wait inside the parent's state; remove it: a subgraph's requests are answered through the parent's handle or input provider".into(),
                }));
            }
        }
    }
    let needs_any = definition
        .states
        .iter()
        .any(|s| amounts(&s.resources) != [0; 5]);
    let pool = match &definition.pool {
        Some(pool) => Some(pool.clone()),
        None if needs_any => Some(ResourcePool::detect()),
        None => None,
    };
    // Every distinct limit once; each state names its own by index. Nothing is built for an
    // agent whose states use none. The pool is a gate of every state that needs resources
    // (the amounts it asks are the state's `needs`).
    let mut gates: Vec<Gate> = Vec::new();
    let mut state_gates: Vec<Box<[(usize, u64)]>> = Vec::new();
    if needs_any || definition.states.iter().any(|s| !s.gates.is_empty()) {
        let mut too_large = Vec::new();
        for state in &definition.states {
            let mut own = Vec::with_capacity(state.gates.len() + 1);
            let pool_gate = pool
                .as_ref()
                .filter(|_| amounts(&state.resources) != [0; 5])
                .map(|pool| (Gate::Pool(pool.clone()), 0));
            for (gate, amount) in pool_gate.iter().chain(&state.gates) {
                if let Some(error) = gate.too_large(*amount, &state.spec.name) {
                    too_large.push(error);
                }
                let index = match gates.iter().position(|g| g.same(gate)) {
                    Some(index) => index,
                    None => {
                        gates.push(gate.clone());
                        gates.len() - 1
                    }
                };
                own.push((index, *amount));
            }
            // The pool first, then holds, then rate limits, then quotas (see `Gate::rank`);
            // stable, so the declared order stands within each.
            own.sort_by_key(|&(index, _)| gates[index].rank());
            state_gates.push(own.into());
        }
        FlowError::from_problems(agent, too_large)?;
    }
    let states = definition
        .states
        .iter()
        .enumerate()
        .map(|(index, s)| CompiledState {
            func: Arc::clone(&s.func),
            priority: s.priority,
            timeout: s.timeout,
            retry: s.retry.unwrap_or(definition.default_retry),
            retry_if: s.retry_if.clone(),
            needs: amounts(&s.resources),
            acquire_timeout: s.acquire_timeout,
            preemptible: s.preemptible,
            gates: state_gates.get(index).cloned().unwrap_or_default(),
            // The graph resolved and checked the names, in the same order.
            dependencies: graph
                .dependencies(StateId::new(index as u32))
                .iter()
                .zip(&s.dependencies)
                .map(|(&(on, _), (_, config))| CompiledDependency {
                    on,
                    config: config.clone(),
                })
                .collect(),
        })
        .collect();
    let (dependents, self_starting) = dependency_tables(&graph);
    if let Some((_, policy)) = &definition.checkpoints
        && !policy.is_active()
    {
        return Err(invalid(
            "the checkpoint policy asks for no checkpoint; use `CheckpointPolicy::after_each_state()`, `CheckpointPolicy::every(interval)` with a positive interval, or both".into(),
        ));
    }
    for state in &definition.states {
        let r = &state.resources;
        if [r.cpu, r.io, r.network, r.gpu]
            .iter()
            .any(|v| !v.is_finite() || *v < 0.0)
        {
            return Err(invalid(format!(
                "state `{}` asks for {:?}: resource amounts must be finite and not negative",
                state.spec.name, r
            )));
        }
        if state.acquire_timeout == Some(Duration::ZERO) {
            return Err(invalid(format!(
                "state `{}` has a zero `acquire_timeout`; use a positive duration or none",
                state.spec.name
            )));
        }
    }
    check_requests(definition, pool.as_ref())?;
    Ok(Arc::new(Compiled {
        name: Arc::clone(&definition.name),
        graph: Arc::new(graph),
        states,
        max_concurrent: definition.max_concurrent.unwrap_or(usize::MAX),
        max_steps: definition.max_steps,
        reducers: Arc::clone(&definition.reducers),
        keep_going: definition.on_branch_failure == crate::BranchFailure::Continue,
        has_subgraphs: definition.states.iter().any(|s| s.subgraph.is_some()),
        timeout: definition.timeout,
        cleanup_timeout: definition.cleanup_timeout,
        strict_joins: definition.strict_joins,
        blocking_threshold: definition.blocking_threshold,
        pool,
        wait_rules: gates.iter().map(Gate::wait_rule).collect(),
        gates: gates.into(),
        priority_aging: definition.priority_aging,
        input_poll_interval: definition.input_poll_interval,
        suspend_on_input: definition.suspend_on_input,
        checkpoints: definition.checkpoints.clone(),
        fingerprint: OnceLock::new(),
        dependents,
        self_starting,
    }))
}

/// Who depends on each state, and which states start by themselves: those with a required
/// dependency that are not entries and that no declared transition leads to.
/// For each state, a list of states.
type PerState = Box<[Box<[StateId]>]>;

fn dependency_tables(graph: &StateGraph) -> (PerState, Box<[StateId]>) {
    let mut dependents = vec![Vec::new(); graph.len()];
    let mut self_starting = Vec::new();
    let mut handles_errors = vec![false; graph.len()];
    for index in 0..graph.len() {
        if let Some(handler) = graph.error_handler(StateId::new(index as u32)) {
            handles_errors[handler.index()] = true;
        }
    }
    for (index, &handles_errors) in handles_errors.iter().enumerate() {
        let state = StateId::new(index as u32);
        for &(on, _) in graph.dependencies(state) {
            dependents[on.index()].push(state);
        }
        let required = graph
            .dependencies(state)
            .iter()
            .any(|(_, kind)| *kind == DependencyType::Required);
        if required
            && !graph.entries().contains(&state)
            && graph.predecessors(state).is_empty()
            && !handles_errors
        {
            self_starting.push(state);
        }
    }
    (
        dependents.into_iter().map(Vec::into_boxed_slice).collect(),
        self_starting.into_boxed_slice(),
    )
}

/// Every state's request must fit the pool and its quotas, or it would wait forever.
pub(super) fn check_requests(
    definition: &Definition,
    pool: Option<&ResourcePool>,
) -> Result<(), FlowError> {
    let Some(pool) = pool else { return Ok(()) };
    let agent = &*definition.name;
    let mut too_large = Vec::new();
    for s in &definition.states {
        let kinds = pool.oversized(agent, &s.spec.name, &amounts(&s.resources));
        if !kinds.is_empty() {
            too_large.push(FlowError::ResourceRequestTooLarge {
                agent: agent.to_owned(),
                state: s.spec.name.clone(),
                kinds: kinds
                    .iter()
                    .map(|k| format!("{k:?}").to_lowercase())
                    .collect(),
                needs: format!("{:?}", s.resources),
                capacity: format!("{:?}", pool.capacity()),
            });
        }
    }
    FlowError::from_problems(agent, too_large)
}
