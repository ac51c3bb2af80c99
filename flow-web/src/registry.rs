//! The workflows a program knows, by name: what `fluffy` needs to resume a run or draw a
//! workflow's graph, and what lets the dashboard draw a run's transitions.

use std::collections::BTreeMap;

use flow_runtime::Agent;

/// Workflows by name. `fluffy` on its own has none (it reads stores); a program of yours
/// that calls [`crate::cli::main_with`] with its workflows registered gets the commands that
/// need their code.
///
/// ```
/// use flow_web::Registry;
/// # use flow_runtime::Agent;
/// # fn etl() -> Agent { Agent::new("etl") }
/// let registry = Registry::new().register(&etl());
/// assert!(registry.get("etl").is_some());
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    agents: BTreeMap<String, Agent>,
}

impl Registry {
    /// No workflows.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `agent` under its name (a second one of that name replaces the first).
    pub fn register(mut self, agent: &Agent) -> Self {
        self.agents.insert(agent.name().to_owned(), agent.clone());
        self
    }

    /// The workflow `name`, if registered.
    pub fn get(&self, name: &str) -> Option<&Agent> {
        self.agents.get(name)
    }

    /// The registered workflows' names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.agents.keys().map(String::as_str).collect()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("workflows", &self.names())
            .finish()
    }
}
