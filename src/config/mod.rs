//! The configuration file (README "Configuration"): one TOML file of
//! sections, every key optional. Each section lives in its own file with
//! its schema, named defaults, validation, and how a reload (SIGHUP) treats
//! each of its keys:
//!
//! | section | file | what it sets |
//! |---|---|---|
//! | `[server]` | `server.rs` | the listeners, the route prefix, the node's name, shutdown grace, threads |
//! | `[redis]` | `redis.rs` | the engine, and where the Redis engine connects ([`RedisTarget`]: a URL or Sentinel) |
//! | `[stream]` | `stream.rs` | heartbeat, retry, queue, write deadline and CORS of a stream |
//! | `[sweep]` | `sweep.rs` | the removal of stale registry records |
//! | `[startup]` | `startup.rs` | the registry clear at start |
//! | `[history]` | `history.rs` | the messages kept for replay |
//! | `[auth]` | `auth.rs` | who opens a stream |
//! | `[api]` | `api.rs` | the admin API: token, sizes, deadline, connections, browser safety |
//! | `[topics]` | `topics.rs` | join and leave events of topics |
//! | `[limits]` | `limits.rs` | streams per user and per node, connect rate, topics per stream |
//! | `[log]` | `log.rs` | filter and format |
//!
//! Beside them: `addr.rs` (listener addresses and the `Host` and `Origin`
//! syntax, which the admin API's guards use too), `secret.rs` (secrets
//! kept out of `Debug` and output), `reload.rs` (how a section declares
//! what a reload does with a key), and `tests.rs` (the sample file and the
//! README's key table checked against the schema).
//!
//! Unknown keys are rejected by serde (`deny_unknown_fields`) and bad
//! values by [`Config::validate`], section by section, both with a message
//! naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

mod addr;
mod api;
mod auth;
mod history;
mod limits;
mod log;
mod redis;
mod reload;
mod secret;
mod server;
mod startup;
mod stream;
mod sweep;
#[cfg(test)]
mod tests;
mod topics;

pub use addr::{split_host_port, ListenAddr};
pub use api::ApiConfig;
pub use auth::{AuthConfig, AuthMode, DEFAULT_TOKEN_MAX_LIFETIME_SECS};
pub use history::HistoryConfig;
pub use limits::LimitsConfig;
pub use log::{LogConfig, LogFormat};
pub use redis::{RedisConfig, RedisTarget};
pub use secret::{mask_url_password, Secret};
pub use server::ServerConfig;
pub use startup::StartupConfig;
pub use stream::StreamConfig;
pub use sweep::SweepConfig;
pub use topics::TopicsConfig;

use reload::{Key, OnReload};

/// Where the config file is looked for when `-c` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sse-notify/sse-notify.toml";
/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "SSE_NOTIFY_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// A bad value, named by its key (`section.key`).
fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// The sections in file order: `check-config` prints them so, and serde
/// lists them so when it names an unknown one.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub redis: RedisConfig,
    pub stream: StreamConfig,
    pub sweep: SweepConfig,
    pub startup: StartupConfig,
    pub history: HistoryConfig,
    pub auth: AuthConfig,
    pub topics: TopicsConfig,
    pub api: ApiConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
}

/// Every key of every section with how a reload treats it. The order is
/// the one a reload has always named the keys waiting for a restart in.
const KEYS: [&[Key]; 11] = [
    ServerConfig::KEYS,
    RedisConfig::KEYS,
    LogConfig::KEYS,
    HistoryConfig::KEYS,
    StreamConfig::KEYS,
    SweepConfig::KEYS,
    StartupConfig::KEYS,
    AuthConfig::KEYS,
    TopicsConfig::KEYS,
    ApiConfig::KEYS,
    LimitsConfig::KEYS,
];

fn keys() -> impl Iterator<Item = &'static Key> {
    KEYS.iter().flat_map(|section| section.iter())
}

/// Which file to read: `-c`, else `$SSE_NOTIFY_CONFIG`, else the default path
/// if it exists, else none (built-in defaults).
pub fn resolve_path(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    // Only a file that is certainly absent means "defaults": one we may not
    // read is named, so that loading it reports the permission error.
    let default = Path::new(DEFAULT_CONFIG_PATH);
    match default.try_exists() {
        Ok(false) => None,
        Ok(true) | Err(_) => Some(default.to_path_buf()),
    }
}

impl Config {
    /// Reads, parses and validates; `None` gives the built-in defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let config = match path {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Config::parse(&text).map_err(|message| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message,
                })?
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text without validating; the error names the key and line.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
    }

    /// The first bad value, in file order.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.redis.validate()?;
        self.stream.validate()?;
        self.sweep.validate(&self.stream)?;
        self.history.validate()?;
        self.auth.validate()?;
        self.api.validate()?;
        self.limits.validate()?;
        self.log.validate()
    }

    pub fn listen_addr(&self) -> SocketAddr {
        addr::parse_addr("server.listen", &self.server.listen).expect("validated")
    }

    /// `server.admin_listen`: a TCP address or a Unix socket file.
    pub fn admin_listen(&self) -> ListenAddr {
        self.server.admin_listen().expect("validated")
    }

    pub fn trusted_proxies(&self) -> Result<Vec<IpNet>, ConfigError> {
        self.auth.trusted_proxies()
    }

    /// `server.node_id`, or the hostname when empty.
    pub fn node_id(&self) -> String {
        self.server.node_id()
    }

    /// Whether `redis.url` selects the Redis engine (empty: the embedded
    /// engine).
    pub fn uses_redis(&self) -> bool {
        self.redis.uses_redis()
    }

    /// Where the Redis engine connects (`validate` already checked it).
    pub fn redis_target(&self) -> Result<RedisTarget, ConfigError> {
        self.redis.target()
    }

    /// Whether `redis.url` names a Redis Cluster.
    fn is_cluster(&self) -> bool {
        self.uses_redis() && matches!(self.redis.target(), Ok(RedisTarget::Cluster { .. }))
    }

    /// The engine `redis.url` selects, as logs and `/healthz` name it.
    pub fn engine(&self) -> &'static str {
        if self.is_cluster() {
            "redis-cluster"
        } else if self.uses_redis() {
            "redis"
        } else {
            "memory"
        }
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.stream.heartbeat_secs)
    }

    pub fn sweep_interval(&self) -> Duration {
        Duration::from_secs(self.sweep.interval_secs)
    }

    /// Renders the effective config as TOML with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.api.token.is_empty() {
            shown.api.token = Secret("********".into());
        }
        shown.redis.url = Secret(mask_url_password(self.redis.url.expose()));
        toml::to_string_pretty(&shown).unwrap_or_default()
    }

    /// Keys whose change a reload cannot apply, named for the log.
    pub fn restart_required_changes(&self, new: &Config) -> Vec<&'static str> {
        keys()
            .filter(|key| match key.on_reload {
                OnReload::Restart { differs, .. } => differs(self, new),
                OnReload::Live | OnReload::AtStart => false,
            })
            .map(|key| key.name)
            .collect()
    }

    /// Puts back `old`'s value of every key a reload cannot apply: what the
    /// node keeps running with until a restart.
    pub fn keep_restart_values(&mut self, old: &Config) {
        for key in keys() {
            if let OnReload::Restart { keep, .. } = key.on_reload {
                keep(self, old);
            }
        }
    }
}
