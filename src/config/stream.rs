//! `[stream]`: what every SSE stream gets: heartbeat, advised retry, its
//! queue, its write deadline, and who may open it cross-origin.

use serde::{Deserialize, Serialize};

use super::reload::{live, Key};
use super::{invalid, ConfigError};

/// Well under a proxy's read timeout (nginx's default is 60 s).
const DEFAULT_HEARTBEAT_SECS: u64 = 15;
const DEFAULT_RETRY_MS: u64 = 3000;
const DEFAULT_QUEUE_SIZE: usize = 256;
/// Long enough for a phone on a bad network to take a frame, short enough
/// that a closed stream's socket is gone before an operator wonders why.
const DEFAULT_WRITE_TIMEOUT_SECS: u64 = 30;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    pub heartbeat_secs: u64,
    pub retry_ms: u64,
    pub queue_size: usize,
    pub cors_origins: Vec<String>,
    /// A stream whose writes make no progress this long is closed, and
    /// every close ends the socket within it (README "Limits").
    pub write_timeout_secs: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            heartbeat_secs: DEFAULT_HEARTBEAT_SECS,
            retry_ms: DEFAULT_RETRY_MS,
            queue_size: DEFAULT_QUEUE_SIZE,
            cors_origins: Vec::new(),
            write_timeout_secs: DEFAULT_WRITE_TIMEOUT_SECS,
        }
    }
}

impl StreamConfig {
    /// The heartbeat from its next tick; the rest for streams opened
    /// afterwards.
    pub(super) const KEYS: &'static [Key] = &[
        live!(stream.heartbeat_secs),
        live!(stream.retry_ms),
        live!(stream.queue_size),
        live!(stream.cors_origins),
        live!(stream.write_timeout_secs),
    ];

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_secs == 0 {
            return Err(invalid("stream.heartbeat_secs", "must be at least 1"));
        }
        if self.retry_ms == 0 {
            return Err(invalid("stream.retry_ms", "must be at least 1"));
        }
        if self.queue_size == 0 {
            return Err(invalid("stream.queue_size", "must be at least 1"));
        }
        if self.write_timeout_secs == 0 {
            return Err(invalid("stream.write_timeout_secs", "must be at least 1"));
        }
        for origin in &self.cors_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
            {
                return Err(invalid(
                    "stream.cors_origins",
                    format!("{origin:?} is not an origin like \"https://example.com\""),
                ));
            }
        }
        Ok(())
    }
}
