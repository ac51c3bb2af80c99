//! Dependencies between states, as the builder takes them: kind, lifecycle, timing, condition.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use flow_core::{DependencyDecl, DependencyLifecycle, DependencyType, dependency_problems};

use crate::context::Context;

/// A predicate over the run's context that a dependency also needs to hold.
pub type Condition = Arc<dyn Fn(&Context) -> bool + Send + Sync>;

/// How a state depends on another, given to [`StateOptions::depends_on`].
///
/// A state waits in status `Blocked` until every dependency lets it start; a state that
/// arrives by a transition and one that starts by itself (below) are gated alike. What each
/// [`kind`](DependencyType) needs:
///
/// | kind | the dependent starts when |
/// |---|---|
/// | `Required` | the dependency's last completion *counts* (below) — if the dependency fails instead, or nothing left in the run can start it, the dependent fails with [`FlowError::DependencyFailed`] / [`FlowError::DependencyUnsatisfied`] |
/// | `Optional` | the dependency is not scheduled or running (ready, running, waiting for a retry, held at a join, or itself waiting on dependencies) |
/// | `Sequential` | the dependency is not scheduled or running, and it has run: its last completion counts (with lifecycle `always`: it completed since the dependent last started) or its last run failed — or nothing else in the run is left that could start it |
/// | `Parallel` | at once; the dependency is started alongside, unless it is scheduled or running or its last completion still counts |
///
/// A completion *counts* when it is younger than [`expiry`](Self::expiry) (if set) and, by
/// [`lifecycle`](DependencyLifecycle): `Once`, always; `Always`, when it is newer than the
/// dependent's previous start; `Periodic`, when it is younger than
/// [`interval`](Self::interval) — and when a periodic required dependency's completion has
/// gone stale, the dependency is run again first.
///
/// A [`condition`](Self::condition) must also hold; it is checked when the dependent arrives
/// and again after every state that completes (states are what change the context). A
/// [`timeout`](Self::timeout) bounds how long the dependent waits on this dependency: longer,
/// and it fails with [`FlowError::DependencyTimeout`] (its `on_error` handler runs if it has
/// one). Failures caused by dependencies are not retried: the state never started.
///
/// **Starting by itself.** A state that has at least one required dependency, is not an entry,
/// and that no declared transition leads to, starts on its own once its dependencies let it
/// (as a branch of its own), and again after fresh completions when a required dependency's
/// lifecycle is `Always`. In the builder, a state with undeclared successors may still
/// transition to it: declare successors (the macros always do) when a state is meant to run
/// only when a transition reaches it.
///
/// ```
/// use std::time::Duration;
/// use flow_core::DependencyType;
/// use flow_runtime::DependencyConfig;
///
/// let fresh = DependencyConfig::required()
///     .periodic(Duration::from_secs(300))
///     .timeout(Duration::from_secs(60))
///     .when(|ctx| ctx.get_state::<bool>("ready").unwrap_or(false));
/// assert_eq!(fresh.kind, DependencyType::Required);
/// let plain: DependencyConfig = DependencyType::Optional.into();
/// assert!(plain.condition.is_none());
/// ```
///
/// [`StateOptions::depends_on`]: crate::StateOptions::depends_on
/// [`FlowError::DependencyFailed`]: flow_core::FlowError::DependencyFailed
/// [`FlowError::DependencyUnsatisfied`]: flow_core::FlowError::DependencyUnsatisfied
/// [`FlowError::DependencyTimeout`]: flow_core::FlowError::DependencyTimeout
#[derive(Clone)]
pub struct DependencyConfig {
    /// What the dependent waits for.
    pub kind: DependencyType,
    /// Whether a completion still counts.
    pub lifecycle: DependencyLifecycle,
    /// A predicate over the context that must also hold.
    pub condition: Option<Condition>,
    /// A completion older than this no longer counts, whatever the lifecycle.
    pub expiry: Option<Duration>,
    /// How long a completion counts under [`DependencyLifecycle::Periodic`] (required there,
    /// rejected elsewhere).
    pub interval: Option<Duration>,
    /// How long the dependent may wait for this dependency.
    pub timeout: Option<Duration>,
}

impl DependencyConfig {
    /// A dependency of this kind, lifecycle `Once`, with no condition or timing.
    pub fn new(kind: DependencyType) -> Self {
        Self {
            kind,
            lifecycle: DependencyLifecycle::Once,
            condition: None,
            expiry: None,
            interval: None,
            timeout: None,
        }
    }

    /// A [`DependencyType::Required`] dependency.
    pub fn required() -> Self {
        Self::new(DependencyType::Required)
    }

    /// A [`DependencyType::Optional`] dependency.
    pub fn optional() -> Self {
        Self::new(DependencyType::Optional)
    }

    /// A [`DependencyType::Parallel`] dependency.
    pub fn parallel() -> Self {
        Self::new(DependencyType::Parallel)
    }

    /// A [`DependencyType::Sequential`] dependency.
    pub fn sequential() -> Self {
        Self::new(DependencyType::Sequential)
    }

    /// Lifecycle `Always`: each run of the dependent needs a fresh completion.
    pub fn always(mut self) -> Self {
        self.lifecycle = DependencyLifecycle::Always;
        self
    }

    /// Lifecycle `Periodic`: a completion counts for `interval`.
    pub fn periodic(mut self, interval: Duration) -> Self {
        self.lifecycle = DependencyLifecycle::Periodic;
        self.interval = Some(interval);
        self
    }

    /// A completion older than `expiry` no longer counts.
    pub fn expiry(mut self, expiry: Duration) -> Self {
        self.expiry = Some(expiry);
        self
    }

    /// Waiting longer than `timeout` for this dependency fails the dependent.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The dependent also waits until `condition` holds over the context.
    pub fn when(mut self, condition: impl Fn(&Context) -> bool + Send + Sync + 'static) -> Self {
        self.condition = Some(Arc::new(condition));
        self
    }

    /// Problems with the timing options, said for the state `state` and dependency
    /// `dependency`.
    pub(crate) fn problems(&self, state: &str, dependency: &str) -> Vec<String> {
        dependency_problems(
            self.kind,
            self.lifecycle,
            self.interval,
            self.expiry,
            self.timeout,
            self.condition.is_some(),
        )
        .into_iter()
        .map(|problem| format!("the dependency of `{state}` on `{dependency}` {problem}"))
        .collect()
    }
}

/// The options of a dependency written in `#[state(deps(...))]` (its condition, a method of
/// the workflow, is attached by the generated code).
impl From<&DependencyDecl> for DependencyConfig {
    fn from(declared: &DependencyDecl) -> Self {
        Self {
            kind: declared.kind,
            lifecycle: declared.lifecycle,
            condition: None,
            expiry: declared.expiry,
            interval: declared.interval,
            timeout: declared.timeout,
        }
    }
}

impl From<DependencyType> for DependencyConfig {
    fn from(kind: DependencyType) -> Self {
        Self::new(kind)
    }
}

impl fmt::Debug for DependencyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DependencyConfig")
            .field("kind", &self.kind)
            .field("lifecycle", &self.lifecycle)
            .field("condition", &self.condition.as_ref().map(|_| "<fn>"))
            .field("expiry", &self.expiry)
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .finish()
    }
}
