//! Coordination between states, runs and agents: what may start, how often and together with
//! what. Each primitive is a gate of the scheduler's admission (see `scheduler::admission`)
//! and is usable on its own.

mod rate_limit;

pub use rate_limit::RateLimit;
pub(crate) use rate_limit::{NotBefore, WaitTicket};
