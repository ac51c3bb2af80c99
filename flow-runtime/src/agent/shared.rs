//! The agent's side of primitives kept outside the process (see `coordination::shared`):
//! which named primitives its states use, and the workflow with some of them kept elsewhere.

use super::*;
use std::collections::HashMap;

use crate::coordination::{NamedPrimitive, SharedGate, SharedSlot};

impl Agent {
    /// The named coordination primitives its states pass (declared with
    /// `#[state(semaphore(..))]`, `mutex`, `lease`, `rate_limit(.., name = ..)`, `quota`, or
    /// attached by the builder), each once, in the order first used: what a deployment may
    /// keep in a shared backend instead (see [`Agent::sharing`]). Unnamed rate limits (each
    /// state's own) are not listed.
    pub fn named_primitives(&self) -> Vec<NamedPrimitive> {
        let mut found: Vec<NamedPrimitive> = Vec::new();
        for state in &self.definition.states {
            for (gate, _) in &state.gates {
                if let Some(named) = gate.named()
                    && !found.iter().any(|known| known.key() == named.key())
                {
                    found.push(named);
                }
            }
        }
        found
    }

    /// This workflow with the named primitives in `gates` (by [`NamedPrimitive::key`]) kept
    /// by those shared gates instead of in this process: every state that passes one passes
    /// the shared gate, asking the same amount. Other gates stay as they are. The agent
    /// shares this one's events and dead letters.
    pub fn sharing(&self, gates: &HashMap<String, Arc<dyn SharedGate>>) -> Agent {
        let mut definition = (*self.definition).clone();
        // (Compiled again, with the shared gates.)
        definition.compiled = std::sync::OnceLock::new();
        // One slot per primitive, so that its states share it as one gate.
        let slots: HashMap<&str, Gate> = gates
            .iter()
            .map(|(key, gate)| {
                let slot = Gate::Shared(Arc::new(SharedSlot::new(Arc::clone(gate))));
                (key.as_str(), slot)
            })
            .collect();
        for state in &mut definition.states {
            for (gate, _) in &mut state.gates {
                if let Some(shared) = gate
                    .named()
                    .and_then(|named| slots.get(named.key()).cloned())
                {
                    *gate = shared;
                }
            }
        }
        Agent {
            definition: Arc::new(definition),
            shared: Arc::clone(&self.shared),
            events: self.events.clone(),
        }
    }
}
