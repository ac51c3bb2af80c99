//! Scheduling priority of a state.

use serde::{Deserialize, Serialize};

/// Which ready state starts first when more are ready than may run.
///
/// Higher priorities start first; among equal priorities, the state that became ready first
/// starts first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Background work.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Ahead of normal work.
    High,
    /// Ahead of everything else.
    Critical,
}
