//! `[sweep]`: how often, and after how long without a heartbeat, records
//! of connections that are gone are removed from the registry.

use serde::{Deserialize, Serialize};

use super::reload::{live, Key};
use super::stream::StreamConfig;
use super::{invalid, ConfigError};

const DEFAULT_INTERVAL_SECS: u64 = 60;
const DEFAULT_STALE_TIMEOUT_SECS: u64 = 300;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SweepConfig {
    pub interval_secs: u64,
    pub stale_timeout_secs: u64,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            interval_secs: DEFAULT_INTERVAL_SECS,
            stale_timeout_secs: DEFAULT_STALE_TIMEOUT_SECS,
        }
    }
}

impl SweepConfig {
    /// The interval from the next tick, the timeout at the next sweep.
    pub(super) const KEYS: &'static [Key] =
        &[live!(sweep.interval_secs), live!(sweep.stale_timeout_secs)];

    /// `stream` is checked first: the stale timeout is measured against
    /// its heartbeat.
    pub(super) fn validate(&self, stream: &StreamConfig) -> Result<(), ConfigError> {
        if self.interval_secs == 0 {
            return Err(invalid("sweep.interval_secs", "must be at least 1"));
        }
        if self.stale_timeout_secs <= 2 * stream.heartbeat_secs {
            return Err(invalid(
                "sweep.stale_timeout_secs",
                format!(
                    "{} must be above twice stream.heartbeat_secs ({}), or live connections would be swept",
                    self.stale_timeout_secs,
                    2 * stream.heartbeat_secs
                ),
            ));
        }
        Ok(())
    }
}
