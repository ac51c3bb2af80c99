//! Attaching coordination primitives to states: the builder's options, and what
//! `#[state(...)]` declares.

use std::collections::HashMap;
use std::sync::Arc;

use flow_core::{CoordinationDecl, FlowError};

use super::primitives::units;
use super::{FlowBarrier, FlowMutex, FlowSemaphore, Gate, Lease, Quota, RateLimit};
use crate::agent::StateOptions;

impl StateOptions<'_> {
    /// Starts this state only as often as `limit` allows (see [`RateLimit`]): a ready state
    /// the limit refuses waits without holding a slot or delaying other ready states, and
    /// starts at the instant the limit names (one timer per run, no polling). Give clones of
    /// one limit to several states, runs or agents to share it; call this again to add
    /// another limit (the state starts when every one admits it). The wait counts against
    /// [`StateOptions::acquire_timeout`].
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.push_gate(Gate::Rate(limit), 1);
        self
    }

    /// Starts this state only with a permit of `semaphore`, held while its attempt runs.
    pub fn semaphore(self, semaphore: FlowSemaphore) -> Self {
        self.semaphore_permits(semaphore, 1)
    }

    /// Starts this state only with `permits` permits of `semaphore` at once.
    pub fn semaphore_permits(mut self, semaphore: FlowSemaphore, permits: u32) -> Self {
        self.push_gate(Gate::from(semaphore), u64::from(permits));
        self
    }

    /// Starts this state only holding `mutex`, until its attempt ends. With a TTL, an attempt
    /// that holds it longer is cancelled ([`FlowError::HoldExpired`]; retries apply) and the
    /// mutex goes to the next waiter.
    pub fn mutex(mut self, mutex: FlowMutex) -> Self {
        self.push_gate(Gate::from(mutex), 1);
        self
    }

    /// Starts this state only holding `lease`; an attempt that outlasts the lease's TTL is
    /// cancelled ([`FlowError::HoldExpired`]) and the lease goes to the next waiter.
    pub fn lease(mut self, lease: Lease) -> Self {
        self.push_gate(Gate::from(lease), 1);
        self
    }

    /// Starts this state only together with the other parties of `barrier`: when as many
    /// states sharing it have arrived, all start; a round not complete within the barrier's
    /// timeout fails every waiting attempt with [`FlowError::BarrierTimeout`] (retries apply).
    pub fn barrier(mut self, barrier: FlowBarrier) -> Self {
        self.push_gate(Gate::from(barrier), 1);
        self
    }

    /// Each start of this state consumes `amount` of `quota` (not given back). When the
    /// current period has too little left, the state waits for the next; a quota without a
    /// period that has too little left fails the attempt with [`FlowError::QuotaExhausted`].
    pub fn quota(mut self, quota: Quota, amount: f64) -> Self {
        self.push_gate(Gate::from(quota), units(amount));
        self
    }

    /// Starts this state only with `amount` of `gate`, a primitive kept outside the process
    /// (a database's semaphore or rate limit, shared by every worker of a deployment: see
    /// `flow-postgres`). The state waits for it like for a primitive of its own (out of the
    /// ready queue, counted against [`StateOptions::acquire_timeout`]), while the acquisition
    /// runs in the background; what it took is held until the attempt ends. Give one gate to
    /// several states to share it.
    pub fn shared_gate(mut self, gate: Arc<dyn super::SharedGate>, amount: u64) -> Self {
        self.push_gate(Gate::Shared(Arc::new(super::SharedSlot::new(gate))), amount);
        self
    }

    /// Applies what `#[state(...)]` declared for coordination. Unnamed rate limits are the
    /// state's own; named ones, and every named primitive, are shared through `shared` by the
    /// states of one agent.
    #[doc(hidden)]
    pub fn __coordination(
        mut self,
        declared: &'static [CoordinationDecl],
        shared: &mut DeclaredPrimitives,
    ) -> Self {
        for declaration in declared {
            let gate = match *declaration {
                CoordinationDecl::RateLimit {
                    name: Some(name),
                    limit,
                } => named(shared, ("rate_limit", name), || {
                    RateLimit::from_spec(limit).map(|limit| Gate::Rate(limit.named(name)))
                })
                .map(|gate| (gate, 1)),
                CoordinationDecl::RateLimit { name: None, limit } => {
                    RateLimit::from_spec(limit).map(|limit| (Gate::Rate(limit), 1))
                }
                CoordinationDecl::Semaphore {
                    name,
                    permits,
                    take,
                } => named(shared, ("semaphore", name), || {
                    Ok(Gate::from(FlowSemaphore::new(name, permits)))
                })
                .map(|gate| (gate, u64::from(take))),
                CoordinationDecl::Mutex { name, ttl } => named(shared, ("mutex", name), || {
                    Ok(Gate::from(match ttl {
                        Some(ttl) => FlowMutex::with_ttl(name, ttl),
                        None => FlowMutex::new(name),
                    }))
                })
                .map(|gate| (gate, 1)),
                CoordinationDecl::Barrier {
                    name,
                    parties,
                    timeout,
                } => named(shared, ("barrier", name), || {
                    Ok(Gate::from(FlowBarrier::new(name, parties, timeout)))
                })
                .map(|gate| (gate, 1)),
                CoordinationDecl::Lease { name, ttl } => named(shared, ("lease", name), || {
                    Ok(Gate::from(Lease::new(name, ttl)))
                })
                .map(|gate| (gate, 1)),
                CoordinationDecl::Quota {
                    name,
                    limit,
                    reset_every,
                    amount,
                } => named(shared, ("quota", name), || {
                    Ok(Gate::from(match reset_every {
                        Some(period) => Quota::per(name, limit, period),
                        None => Quota::new(name, limit),
                    }))
                })
                .map(|gate| (gate, units(amount))),
                // Declarations this runtime does not know yet (a newer flow-core).
                _ => continue,
            };
            match gate {
                Ok((gate, amount)) => self.push_gate(gate, amount),
                Err(error) => self.declared_problem(error),
            }
        }
        self
    }
}

/// The primitives `#[state(...)]` declared by name, shared by the states of one agent (made
/// by the macro's generated code; not a public API).
#[doc(hidden)]
#[derive(Default)]
pub struct DeclaredPrimitives(HashMap<(&'static str, &'static str), Gate>);

/// The primitive of this kind and name shared by the agent's states, made on first use.
fn named(
    shared: &mut DeclaredPrimitives,
    key: (&'static str, &'static str),
    make: impl FnOnce() -> Result<Gate, FlowError>,
) -> Result<Gate, FlowError> {
    if let Some(gate) = shared.0.get(&key) {
        return Ok(gate.clone());
    }
    let gate = make()?;
    shared.0.insert(key, gate.clone());
    Ok(gate)
}
