//! `[startup]`: what a node does to the registry when it starts.

use serde::{Deserialize, Serialize};

use super::reload::{at_start, Key};

/// The records a previous run left go at start; other live nodes
/// re-register theirs.
const DEFAULT_CLEAR: bool = true;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StartupConfig {
    pub clear: bool,
}

impl Default for StartupConfig {
    fn default() -> Self {
        Self {
            clear: DEFAULT_CLEAR,
        }
    }
}

impl StartupConfig {
    pub(super) const KEYS: &'static [Key] = &[at_start!(startup.clear)];
}
