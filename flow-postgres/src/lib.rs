//! PostgreSQL for fluffy-flow: one database shared by every process of a deployment, as the
//! checkpoint store ([`PgStore`]).
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
mod migrations;
mod sql;
mod store;

pub use backend::PgBackend;
pub use cluster::TempCluster;
pub use store::PgStore;
