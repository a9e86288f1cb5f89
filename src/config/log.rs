//! `[log]`: the tracing filter and the line format.

use serde::{Deserialize, Serialize};

use super::reload::{live, restart, Key};
use super::{invalid, ConfigError};

const DEFAULT_LEVEL: &str = "info";
const DEFAULT_FORMAT: LogFormat = LogFormat::Text;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing `EnvFilter` string.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: DEFAULT_LEVEL.into(),
            format: DEFAULT_FORMAT,
        }
    }
}

impl LogConfig {
    /// The filter is swapped in place; the format is the subscriber's,
    /// set up once at start.
    pub(super) const KEYS: &'static [Key] = &[live!(log.level), restart!(log.format)];

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        tracing_subscriber::EnvFilter::try_new(&self.level)
            .map_err(|e| invalid("log.level", format!("{:?}: {e}", self.level)))?;
        Ok(())
    }
}
