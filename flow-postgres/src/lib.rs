//! PostgreSQL for fluffy-flow: one database shared by every process of a deployment, as the
//! checkpoint store ([`PgStore`]) and the run queue that [`Worker`]s in many processes claim
//! runs from, under leases with fencing tokens ([`PgBackend::submit`]).
//!
//! ```no_run
//! # async fn example() -> Result<(), flow_core::FlowError> {
//! let backend = flow_postgres::PgBackend::connect("postgres://flows@db/flows").await?;
//! backend.migrate().await?;
//! let store = flow_postgres::PgStore::new(&backend);
//! # let _ = store;
//! # Ok(())
//! # }
//! ```
//!
//! Tests, benchmarks and examples start a throwaway server with [`TempCluster`].

#![warn(missing_docs)]

mod backend;
pub mod cluster;
mod coordination;
mod listen;
mod migrations;
mod queue;
mod sql;
mod store;
mod tasks;
mod worker;

pub use backend::PgBackend;
pub use cluster::TempCluster;
pub use coordination::{DEFAULT_PERMIT_TTL, PgPermit, PgRateLimit, PgSemaphore};
pub use queue::{QueueStatus, QueuedRun, Submitted};
pub use store::PgStore;
pub use worker::{
    DEFAULT_HEARTBEAT, DEFAULT_LEASE, DEFAULT_MAX_LAPSES, FencedStore, Worker, WorkerReport,
};

/// What stops a [`Worker`] (tokio-util's, re-exported so that a worker program needs no
/// other import).
pub use tokio_util::sync::CancellationToken;
