//! `[server]`: the two listeners, the route prefix, the node's name,
//! shutdown grace and worker threads.

use serde::{Deserialize, Serialize};

use super::addr::parse_addr;
use super::reload::{restart, Key};
use super::{invalid, ConfigError};

const DEFAULT_LISTEN: &str = "127.0.0.1:8090";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8091";
const DEFAULT_BASE_PATH: &str = "/notifications";
const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
/// One per CPU core.
const DEFAULT_WORKER_THREADS: usize = 0;
/// More threads than any machine this runs on has cores; a larger value
/// is a typo.
const MAX_WORKER_THREADS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub admin_listen: String,
    pub base_path: String,
    /// Empty: the hostname.
    pub node_id: String,
    pub shutdown_grace_secs: u64,
    /// Threads running the node; 0 means one per CPU core.
    pub worker_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.into(),
            admin_listen: DEFAULT_ADMIN_LISTEN.into(),
            base_path: DEFAULT_BASE_PATH.into(),
            node_id: String::new(),
            shutdown_grace_secs: DEFAULT_SHUTDOWN_GRACE_SECS,
            worker_threads: DEFAULT_WORKER_THREADS,
        }
    }
}

impl ServerConfig {
    /// All need a restart: the listeners are bound, the routes built, the
    /// node named in the registry and the runtime sized at start.
    pub(super) const KEYS: &'static [Key] = &[
        restart!(server.listen),
        restart!(server.admin_listen),
        restart!(server.base_path),
        restart!(server.node_id),
        restart!(server.shutdown_grace_secs),
        restart!(server.worker_threads),
    ];

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        parse_addr("server.listen", &self.listen)?;
        parse_addr("server.admin_listen", &self.admin_listen)?;
        let base = &self.base_path;
        if !base.is_empty()
            && (!base.starts_with('/') || base.ends_with('/') || base.contains(['?', '#', ' ']))
        {
            return Err(invalid(
                "server.base_path",
                format!("{base:?} must start with '/' and not end with '/' (e.g. \"/notifications\", or \"\" for the root)"),
            ));
        }
        if self.shutdown_grace_secs == 0 {
            return Err(invalid("server.shutdown_grace_secs", "must be at least 1"));
        }
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err(invalid(
                "server.worker_threads",
                format!("must be at most {MAX_WORKER_THREADS} (0 = one per CPU core)"),
            ));
        }
        if self.node_id.chars().any(|c| c.is_control()) {
            return Err(invalid(
                "server.node_id",
                "must not contain control characters",
            ));
        }
        Ok(())
    }

    /// `server.node_id`, or the hostname when empty.
    pub(super) fn node_id(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "sse-notify".into())
    }
}
