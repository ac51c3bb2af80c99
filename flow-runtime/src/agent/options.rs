//! The options of one state, set on what `Agent::add_state` returns.

use super::*;

/// The options of one state, returned by [`Agent::add_state`].
pub struct StateOptions<'a> {
    pub(super) state: &'a mut StateDef,
}

impl StateOptions<'_> {
    /// Which ready state starts first when slots are short (default `Normal`).
    pub fn priority(self, priority: Priority) -> Self {
        self.state.priority = priority;
        self
    }

    /// A run of this state that takes longer fails with [`FlowError::StateTimedOut`] and status
    /// `Timeout`.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.state.timeout = Some(timeout);
        self
    }

    /// How this state is retried when an attempt fails (returns an error, panics or times out):
    /// see [`RetryPolicy`]. Without one, the agent's [`Agent::default_retry`] applies.
    pub fn retry(self, policy: RetryPolicy) -> Self {
        self.state.retry = Some(policy);
        self
    }

    /// Retries an error this state returns only if `retryable` says so (a 503 yes, a 400
    /// no); an error it refuses is final at once, as if the retries were spent. It sees the
    /// state's error as returned (`error.downcast_ref::<MyError>()` gives the typed one back).
    /// Panics, timeouts and refusals are not errors the state returned: the policy's
    /// [`RetryPolicy::on`] says whether they are retried. A predicate that panics refuses.
    pub fn retry_if(self, retryable: impl Fn(&StateError) -> bool + Send + Sync + 'static) -> Self {
        self.state.retry_if = Some(Arc::new(retryable));
        self
    }

    /// What this state needs from the agent's resource pool: it starts only when the pool can
    /// grant all of it at once, and gives it back when its attempt ends, however it ends.
    pub fn resources(self, needs: ResourceRequirements) -> Self {
        self.state.resources = needs;
        self
    }

    /// How long this state may wait, once ready, for the pool to grant its resources: longer,
    /// and the attempt fails with [`FlowError::ResourceTimeout`] and status `Timeout` (retries
    /// and `on_error` apply as for any failure).
    pub fn acquire_timeout(self, timeout: Duration) -> Self {
        self.state.acquire_timeout = Some(timeout);
        self
    }

    /// Lets a higher-priority state of the same run stop this one when the pool (if it has
    /// preemption, see [`ResourcePool::with_preemption`]) cannot grant it otherwise: this
    /// state's attempt is aborted, its resources go back at once, and it is queued to run again
    /// from the start later. Mark only states that can safely run twice.
    pub fn preemptible(self) -> Self {
        self.state.preemptible = true;
        self
    }

    /// Lets this state's attempts run on any worker of a distributed deployment (the
    /// `flow-postgres` workers, or any [`crate::remote::Dispatch`]): the attempt is sent out
    /// with the context as the state's branch sees it, and its writes and its transition come
    /// back to the run, which goes on as if the state had run here. A fan-out to such a state
    /// spreads over every worker. In a run that is not dispatched (`agent.run(..)`), the state
    /// runs here like any other.
    ///
    /// The state's body must not hold what lives only in the run's process: asking for human
    /// input or running a subgraph fails with [`FlowError::RemoteState`], and what it emits to
    /// a stream stays on the worker that ran it. Its attempt may run more than once (a
    /// worker that dies mid-attempt): make its side effects idempotent (key them by
    /// [`Context::run_key`], [`Context::state`], [`Context::visit`]).
    pub fn remote(self) -> Self {
        if self.state.subgraph.is_some() {
            let problem = FlowError::RemoteState {
                state: self.state.spec.name.clone(),
                what: "a subgraph's run (it is part of the parent run's process)".into(),
                fix: "mark the states that do the work `remote` in this workflow, or submit the subgraph's workflow as a run of its own".into(),
            };
            self.state.declared_problems.push(problem);
        }
        self.state.remote = true;
        self
    }

    /// Protects what this state calls with a circuit breaker (share one breaker between the
    /// states, and agents, that call the same service). See [`CircuitBreaker`].
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        // One breaker per state: a second call replaces the first.
        self.state
            .gates
            .retain(|(gate, _)| !matches!(gate, Gate::Breaker(_)));
        self.push_gate(Gate::Breaker(breaker), 1);
        self
    }

    /// Runs this state's attempts through a bulkhead (shared by every state given the same
    /// one). See [`Bulkhead`].
    pub fn bulkhead(mut self, bulkhead: Bulkhead) -> Self {
        self.push_gate(Gate::from(bulkhead), 1);
        self
    }

    /// Adds a coordination gate (see `coordination::attach` for the public options); one
    /// primitive given twice counts once, with the later amount.
    pub(crate) fn push_gate(&mut self, gate: Gate, amount: u64) {
        match self.state.gates.iter_mut().find(|(g, _)| g.same(&gate)) {
            Some(existing) => existing.1 = amount,
            None => self.state.gates.push((gate, amount)),
        }
    }

    /// Records a problem found while declaring the state, reported when the definition is
    /// validated.
    pub(crate) fn declared_problem(&mut self, problem: FlowError) {
        self.state.declared_problems.push(problem);
    }

    /// The state that runs when this one has failed its last attempt: the branch goes there
    /// instead of failing the run, and the handler reads the failure with
    /// [`Context::failure`]. The failure is still recorded as a dead letter.
    pub fn on_error(self, handler: impl Into<String>) -> Self {
        self.state.spec.on_error = Some(handler.into());
        self
    }

    /// Makes this state depend on `state`: a [`DependencyType`](flow_core::DependencyType) or a
    /// full [`DependencyConfig`] (lifecycle, expiry, interval, timeout, condition). See
    /// [`DependencyConfig`] for what each kind waits for. Checked when a run starts: an unknown
    /// state, a second dependency on the same state and a cycle of required dependencies are
    /// errors.
    ///
    /// ```
    /// use flow_core::{DependencyType, FlowError, Next};
    /// use flow_runtime::{Agent, Context, DependencyConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), FlowError> {
    /// let mut agent = Agent::new("etl");
    /// agent.add_state("extract", |_ctx: Context| async { Ok(Next::to("load")) });
    /// agent.add_state("load", |ctx: Context| async move {
    ///     ctx.set_state("rows", 3u32);
    ///     Ok(Next::End)
    /// });
    /// // Nothing transitions to `report`: it starts once `load` completed.
    /// agent
    ///     .add_state("report", |ctx: Context| async move {
    ///         let rows: u32 = ctx.get_state("rows")?;
    ///         ctx.set_state("summary", format!("{rows} rows"));
    ///         Ok(Next::End)
    ///     })
    ///     .depends_on("load", DependencyType::Required)
    ///     .depends_on("extract", DependencyConfig::sequential());
    /// let report = agent.run().await?;
    /// assert_eq!(report.context.get_state::<String>("summary")?, "3 rows");
    /// # Ok(())
    /// # }
    /// ```
    pub fn depends_on(
        self,
        state: impl Into<String>,
        dependency: impl Into<DependencyConfig>,
    ) -> Self {
        let dependency = dependency.into();
        let state = state.into();
        self.state
            .spec
            .dependencies
            .push((state.clone(), dependency.kind));
        self.state.dependencies.push((state, dependency));
        self
    }

    /// Makes this an entry state: the run starts here (with several, they start in parallel).
    pub fn entry(self) -> Self {
        self.state.spec.entry = true;
        self
    }

    /// Declares every state this one may transition to. Optional, but it lets the scheduler
    /// release a join as soon as no sibling branch can still reach it; and a transition outside
    /// the list fails the run with [`FlowError::UndeclaredTransition`]. For a state that
    /// always ends its branch, use [`StateOptions::terminal`].
    pub fn successors<I, S>(self, states: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.state.spec.successors = Some(states.into_iter().map(Into::into).collect());
        self
    }

    /// Declares that this state always ends its branch: it has no successors (what
    /// `.successors([])` would say, if an empty list could name its element type). A
    /// transition from it fails the run with [`FlowError::UndeclaredTransition`].
    pub fn terminal(self) -> Self {
        self.state.spec.successors = Some(Vec::new());
        self
    }
}
