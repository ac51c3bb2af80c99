//! Teams: several agents run together, side by side or one after another, their reports
//! collected.

use std::sync::Arc;

use flow_core::FlowError;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::context::Context;
use crate::run::RunReport;

/// Several agents run as one piece of work: [`Team::run_parallel`] runs them side by side, each
/// on its own copy of a context; [`Team::run_pipeline`] runs them one after another on one
/// context, each continuing where the one before left it. Either way the [`TeamReport`]
/// holds every run's report, in the order the agents were added.
///
/// ```
/// use flow_core::Next;
/// use flow_runtime::{Agent, Context, Team};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), flow_core::FlowError> {
/// let mut fetch = Agent::new("fetch");
/// fetch.add_state("fetch", |ctx: Context| async move {
///     ctx.set_state("rows", vec![3, 1, 2]);
///     Ok(Next::End)
/// });
/// let mut sort = Agent::new("sort");
/// sort.add_state("sort", |ctx: Context| async move {
///     let mut rows: Vec<i32> = ctx.get_state("rows")?;
///     rows.sort();
///     ctx.set_state("rows", rows);
///     Ok(Next::End)
/// });
/// let team = Team::new().with(&fetch).with(&sort);
/// let report = team.run_pipeline(Context::new()).await;
/// assert!(report.is_success());
/// let context = report.context().expect("the pipeline ran");
/// assert_eq!(context.get_state::<Vec<i32>>("rows")?, vec![1, 2, 3]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Team {
    agents: Vec<Agent>,
    fail_fast: bool,
}

impl Team {
    /// A team of no agents.
    pub fn new() -> Self {
        Self::default()
    }

    /// The team with `agent` added (a clone: the definition is shared).
    pub fn with(mut self, agent: &Agent) -> Self {
        self.agents.push(agent.clone());
        self
    }

    /// Adds `agent`.
    pub fn add(&mut self, agent: &Agent) -> &mut Self {
        self.agents.push(agent.clone());
        self
    }

    /// In [`Team::run_parallel`]: the first run that does not complete cancels the others
    /// (off by default: every run goes to its end).
    pub fn fail_fast(mut self, fail_fast: bool) -> Self {
        self.fail_fast = fail_fast;
        self
    }

    /// The agents' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.agents.iter().map(Agent::name).collect()
    }

    /// Runs every agent at once, each on its own copy of `context` (they do not see each
    /// other's writes). Dropping the returned future cancels the runs.
    pub async fn run_parallel(&self, context: Context) -> TeamReport {
        let mut reports: Vec<Option<RunReport>> = self.agents.iter().map(|_| None).collect();
        let mut not_started = Vec::new();
        let mut cancels: Vec<CancellationToken> = Vec::new();
        let mut runs = JoinSet::new();
        let mut tasks = Vec::new();
        for (index, agent) in self.agents.iter().enumerate() {
            match agent.start_with(context.detached_copy()) {
                Ok(handle) => {
                    cancels.push(handle.cancel_token());
                    let task = runs.spawn(async move { (index, handle.wait().await) });
                    tasks.push((task.id(), index));
                }
                Err(error) => not_started.push((Arc::from(agent.name()), error)),
            }
        }
        // Dropped with this future: the runs stop too.
        let stop: Vec<_> = cancels
            .iter()
            .map(|token| token.clone().drop_guard())
            .collect();
        let mut failed = self.fail_fast && !not_started.is_empty();
        if failed {
            cancels.iter().for_each(CancellationToken::cancel);
        }
        // The run whose failure cancelled the others: its error is the team's.
        let mut first_failure = None;
        while let Some(joined) = runs.join_next().await {
            let (index, report) = match joined {
                Ok(done) => done,
                Err(error) => {
                    // Waiting for a report does not panic; should the task be lost anyway,
                    // its agent is listed as not run rather than left out.
                    if let Some(&(_, index)) = tasks.iter().find(|(id, _)| *id == error.id()) {
                        let agent = self.agents[index].name();
                        let lost = FlowError::RunLost {
                            agent: agent.to_owned(),
                        };
                        not_started.push((Arc::from(agent), lost));
                    }
                    continue;
                }
            };
            if self.fail_fast && !failed && !report.is_success() {
                failed = true;
                first_failure = Some(Arc::clone(&report.agent));
                cancels.iter().for_each(CancellationToken::cancel);
            }
            reports[index] = Some(report);
        }
        stop.into_iter().for_each(|guard| {
            guard.disarm();
        });
        TeamReport {
            reports: reports.into_iter().flatten().collect(),
            not_started,
            pipeline: false,
            first_failure,
        }
    }

    /// Runs the agents one after another on `context`: each sees what the ones before it
    /// wrote. The first run that does not complete stops the pipeline; the agents after it
    /// are listed in [`TeamReport::not_started`] with the error that stopped it.
    pub async fn run_pipeline(&self, context: Context) -> TeamReport {
        let mut reports = Vec::with_capacity(self.agents.len());
        let mut not_started = Vec::new();
        let mut stopped: Option<FlowError> = None;
        for agent in &self.agents {
            if let Some(error) = &stopped {
                not_started.push((Arc::from(agent.name()), error.clone()));
                continue;
            }
            match agent.start_with(context.clone()) {
                Ok(handle) => {
                    let guard = handle.cancel_token().drop_guard();
                    let report = handle.wait().await;
                    guard.disarm();
                    if !report.is_success() {
                        stopped = Some(report.error.clone().unwrap_or(FlowError::RunLost {
                            agent: agent.name().to_owned(),
                        }));
                    }
                    reports.push(report);
                }
                Err(error) => {
                    stopped = Some(error.clone());
                    not_started.push((Arc::from(agent.name()), error));
                }
            }
        }
        TeamReport {
            reports,
            not_started,
            pipeline: true,
            first_failure: None,
        }
    }
}

/// What a [`Team`] run did: the report of every run, in the order the agents were added.
#[derive(Debug)]
#[non_exhaustive]
pub struct TeamReport {
    /// The report of each run that started, in the team's order.
    pub reports: Vec<RunReport>,
    /// Agents that did not run, with why: their definition was invalid, or (in a pipeline)
    /// an earlier run did not complete.
    pub not_started: Vec<(Arc<str>, FlowError)>,
    pipeline: bool,
    /// With fail-fast: the agent whose run failed first and cancelled the others.
    first_failure: Option<Arc<str>>,
}

impl TeamReport {
    /// Whether every agent ran and completed all its work.
    pub fn is_success(&self) -> bool {
        self.not_started.is_empty() && self.reports.iter().all(RunReport::is_success)
    }

    /// The report of the run of the agent named `agent`.
    pub fn report(&self, agent: &str) -> Option<&RunReport> {
        self.reports.iter().find(|report| &*report.agent == agent)
    }

    /// For a pipeline, the context the last run left (every run's writes); for parallel
    /// runs, `None` (each has its own: see [`TeamReport::reports`]).
    pub fn context(&self) -> Option<&Context> {
        if !self.pipeline {
            return None;
        }
        self.reports.last().map(|report| &report.context)
    }

    /// Every report when all completed; else an error: with fail-fast, that of the run whose
    /// failure cancelled the others; otherwise the first, in the team's order.
    pub fn into_result(self) -> Result<Vec<RunReport>, FlowError> {
        if let Some(first) = &self.first_failure
            && let Some(report) = self.reports.iter().find(|r| &r.agent == first)
            && let Some(error) = &report.error
        {
            return Err(error.clone());
        }
        if let Some((_, error)) = self.not_started.into_iter().next() {
            return Err(error);
        }
        self.reports
            .into_iter()
            .map(RunReport::into_result)
            .collect()
    }
}
