//! `[history]`: the messages kept for `Last-Event-ID` replay.

use serde::{Deserialize, Serialize};

use super::reload::{live, restart, Key};
use super::{invalid, ConfigError};

const DEFAULT_ENABLED: bool = true;
const DEFAULT_SIZE: u64 = 100;
const DEFAULT_TTL_SECS: u64 = 300;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    pub enabled: bool,
    pub size: u64,
    pub ttl_secs: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            enabled: DEFAULT_ENABLED,
            size: DEFAULT_SIZE,
            ttl_secs: DEFAULT_TTL_SECS,
        }
    }
}

impl HistoryConfig {
    /// Whether messages are kept decides how ids are made, which the
    /// engine fixes at start; how many and how long apply to each send and
    /// replay.
    pub(super) const KEYS: &'static [Key] = &[
        restart!(history.enabled),
        live!(history.size),
        live!(history.ttl_secs),
    ];

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.size == 0 {
            return Err(invalid("history.size", "must be at least 1"));
        }
        if self.ttl_secs == 0 {
            return Err(invalid("history.ttl_secs", "must be at least 1"));
        }
        Ok(())
    }
}
