//! `[api]`: the admin listener's REST API: its token, body and batch
//! sizes, request deadline, connection cap, and the origins and host names
//! browsers may use (README "Browser safety").

use serde::{Deserialize, Serialize};

use super::addr::{is_host_name, is_origin};
use super::reload::{live, Key};
use super::secret::Secret;
use super::{invalid, ConfigError};

const DEFAULT_MAX_BODY_BYTES: usize = 65536;
const DEFAULT_MAX_BATCH: usize = 1000;
/// A bigger batch is a mistake, not a use: its body alone could reach
/// gigabytes.
const MAX_BATCH: usize = 100_000;
/// A whole admin request, head and body.
const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;
/// Admin connections open at once.
const DEFAULT_MAX_CONNECTIONS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub token: Secret,
    pub max_body_bytes: usize,
    /// Messages one `send/batch/` request may carry.
    pub max_batch: usize,
    /// Origins (`scheme://host[:port]`) besides the admin listener's own
    /// whose browser requests are served; any other `Origin` gets 403.
    pub allowed_origins: Vec<String>,
    /// Host names (no port) a request's `Host` may name besides IP
    /// addresses and `localhost`; any other gets 421 (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// A whole request (head and body) must arrive within this; else 408.
    pub request_timeout_secs: u64,
    /// Admin connections open at once; beyond it, 503.
    pub max_connections: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            token: Secret::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_batch: DEFAULT_MAX_BATCH,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            request_timeout_secs: DEFAULT_REQUEST_TIMEOUT_SECS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl ApiConfig {
    /// For the next request; the deadline for connections accepted
    /// afterwards, the cap at the next connection.
    pub(super) const KEYS: &'static [Key] = &[
        live!(api.token),
        live!(api.max_body_bytes),
        live!(api.max_batch),
        live!(api.allowed_origins),
        live!(api.allowed_hosts),
        live!(api.request_timeout_secs),
        live!(api.max_connections),
    ];

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_body_bytes == 0 {
            return Err(invalid("api.max_body_bytes", "must be at least 1"));
        }
        if !(1..=MAX_BATCH).contains(&self.max_batch) {
            return Err(invalid(
                "api.max_batch",
                format!("must be 1 to {MAX_BATCH}"),
            ));
        }
        if self.request_timeout_secs == 0 {
            return Err(invalid("api.request_timeout_secs", "must be at least 1"));
        }
        if self.max_connections == 0 {
            return Err(invalid("api.max_connections", "must be at least 1"));
        }
        for origin in &self.allowed_origins {
            if !is_origin(origin) {
                return Err(invalid(
                    "api.allowed_origins",
                    format!("{origin:?} is not an origin like \"https://console.example.com\" or \"http://127.0.0.1:8091\" (scheme://host[:port], no path)"),
                ));
            }
        }
        for host in &self.allowed_hosts {
            if !is_host_name(host) {
                return Err(invalid(
                    "api.allowed_hosts",
                    format!("{host:?} is not a host name like \"sse-admin.internal\" (no scheme, no port)"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    #[test]
    fn admin_origins_and_hosts_are_checked() {
        let mut c = Config::default();
        c.api.allowed_origins = vec![
            "https://console.example.com".into(),
            "http://127.0.0.1:8091".into(),
            "http://[::1]:8091".into(),
        ];
        c.api.allowed_hosts = vec!["sse-admin.internal".into(), "Node-1".into()];
        c.validate().expect("valid origins and hosts");
        for bad in [
            "null",
            "console.example.com",
            "https://console.example.com/",
            "https://console.example.com/admin",
            "https://user@console.example.com",
            "https://console.example.com:99999",
            "https://console.example.com:",
            "https://[nope]:1",
            "*",
        ] {
            let mut c = Config::default();
            c.api.allowed_origins = vec![bad.into()];
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("api.allowed_origins"), "{bad}: {err}");
        }
        for bad in ["", "host:8091", "http://host", "a b", "*"] {
            let mut c = Config::default();
            c.api.allowed_hosts = vec![bad.into()];
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("api.allowed_hosts"), "{bad:?}: {err}");
        }
    }
}
