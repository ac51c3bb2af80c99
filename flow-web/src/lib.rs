//! See and steer fluffy-flow runs from outside their processes: the `fluffy` command line
//! ([`cli`]) and the web dashboard ([`dashboard`]) over any checkpoint store (a redb file, a file store's directory, PostgreSQL with
//! the `postgres` feature).
//!
//! ```text
//! fluffy --store flows.redb runs list --status awaiting_input
//! fluffy --store flows.redb runs show nightly-7
//! fluffy --store flows.redb inputs answer nightly-7 nightly-7/review/1/0 approve
//! ```

#![warn(missing_docs)]

pub mod cli;
pub mod dashboard;
pub mod graph;
mod registry;

pub use registry::Registry;
