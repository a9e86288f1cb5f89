//! `[limits]`: how many streams, per user and per node, and how fast they
//! may open (README "Limits").

use serde::{Deserialize, Serialize};

use super::reload::{live, Key};
use super::{invalid, ConfigError};

const DEFAULT_MAX_CONNECTIONS_PER_USER: usize = 32;
const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
const DEFAULT_MAX_CONNECT_RATE: u64 = 20_000;
const DEFAULT_MAX_TOPICS_PER_STREAM: usize = 32;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_connections_per_user: usize,
    pub max_connections: usize,
    /// New streams per second on this node; 0 for no cap.
    pub max_connect_rate: u64,
    /// Topics one stream may follow.
    pub max_topics_per_stream: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections_per_user: DEFAULT_MAX_CONNECTIONS_PER_USER,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connect_rate: DEFAULT_MAX_CONNECT_RATE,
            max_topics_per_stream: DEFAULT_MAX_TOPICS_PER_STREAM,
        }
    }
}

impl LimitsConfig {
    /// For streams opened afterwards.
    pub(super) const KEYS: &'static [Key] = &[
        live!(limits.max_connections_per_user),
        live!(limits.max_connections),
        live!(limits.max_connect_rate),
        live!(limits.max_topics_per_stream),
    ];

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections_per_user == 0 {
            return Err(invalid(
                "limits.max_connections_per_user",
                "must be at least 1",
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if self.max_topics_per_stream == 0 {
            return Err(invalid(
                "limits.max_topics_per_stream",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
