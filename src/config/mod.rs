//! The configuration file (README "Configuration"): schema, defaults, validation,
//! and which changes a reload (SIGHUP) can apply live.
//!
//! Every key is optional; unknown keys are rejected by serde
//! (`deny_unknown_fields`) and bad values by [`Config::validate`], both with a
//! message naming the key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

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

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"********\"")
        }
    }
}

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
    pub api: ApiConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
}

/// More threads than any machine this runs on has cores; a larger value
/// is a typo.
const MAX_WORKER_THREADS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub admin_listen: String,
    pub base_path: String,
    pub node_id: String,
    pub shutdown_grace_secs: u64,
    /// Threads running the node; 0 means one per CPU core.
    pub worker_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8090".into(),
            admin_listen: "127.0.0.1:8091".into(),
            base_path: "/notifications".into(),
            node_id: String::new(),
            shutdown_grace_secs: 10,
            worker_threads: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    pub url: Secret,
    pub key_prefix: String,
    pub connect_timeout_secs: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: Secret(String::new()),
            key_prefix: "sse".into(),
            connect_timeout_secs: 30,
        }
    }
}

/// `stream.write_timeout_secs`: long enough for a phone on a bad network
/// to take a frame, short enough that a closed stream's socket is gone
/// before an operator wonders why.
const DEFAULT_WRITE_TIMEOUT_SECS: u64 = 30;
/// `api.request_timeout_secs`: a whole admin request, head and body.
const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;
/// `api.max_connections`: admin connections open at once.
const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 1024;

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
            heartbeat_secs: 15,
            retry_ms: 3000,
            queue_size: 256,
            cors_origins: Vec::new(),
            write_timeout_secs: DEFAULT_WRITE_TIMEOUT_SECS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SweepConfig {
    pub interval_secs: u64,
    pub stale_timeout_secs: u64,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            interval_secs: 60,
            stale_timeout_secs: 300,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StartupConfig {
    pub clear: bool,
}

impl Default for StartupConfig {
    fn default() -> Self {
        Self { clear: true }
    }
}

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
            enabled: true,
            size: 100,
            ttl_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Header,
    Token,
    None,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub header: String,
    pub trusted_proxies: Vec<String>,
    pub cookie: String,
    pub token_secret_file: String,
    /// The `iss` a stream token must carry; empty: not checked.
    pub token_issuer: String,
    /// The `aud` a stream token must name; empty: a token naming any
    /// audience is refused (RFC 7519 4.1.3), one naming none is accepted.
    pub token_audience: String,
    /// Longest lifetime of a stream token (`exp - iat`, or `exp - now`
    /// without `iat`); 0 for no limit.
    pub token_max_lifetime_secs: u64,
}

/// A day: longer than any page's token needs (a stream ends at `exp` and
/// the page fetches another), short enough that a token minted never to
/// expire, or one copied from a log, is refused.
pub const DEFAULT_TOKEN_MAX_LIFETIME_SECS: u64 = 86_400;

/// Below this, tokens within the clock-skew leeway would be refused.
const MIN_TOKEN_MAX_LIFETIME_SECS: u64 = 10;

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Header,
            header: "X-Remote-User".into(),
            trusted_proxies: vec!["127.0.0.1/32".into(), "::1/128".into()],
            cookie: "sse_token".into(),
            token_secret_file: String::new(),
            token_issuer: String::new(),
            token_audience: String::new(),
            token_max_lifetime_secs: DEFAULT_TOKEN_MAX_LIFETIME_SECS,
        }
    }
}

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
            max_body_bytes: 65536,
            max_batch: 1000,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            request_timeout_secs: DEFAULT_REQUEST_TIMEOUT_SECS,
            max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_connections_per_user: usize,
    pub max_connections: usize,
    /// New streams per second on this node; 0 for no cap.
    pub max_connect_rate: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections_per_user: 32,
            max_connections: 100_000,
            max_connect_rate: 20000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
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

    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_addr("server.listen", &self.server.listen)?;
        parse_addr("server.admin_listen", &self.server.admin_listen)?;
        let base = &self.server.base_path;
        if !base.is_empty()
            && (!base.starts_with('/') || base.ends_with('/') || base.contains(['?', '#', ' ']))
        {
            return Err(invalid(
                "server.base_path",
                format!("{base:?} must start with '/' and not end with '/' (e.g. \"/notifications\", or \"\" for the root)"),
            ));
        }
        if self.server.shutdown_grace_secs == 0 {
            return Err(invalid("server.shutdown_grace_secs", "must be at least 1"));
        }
        if self.server.worker_threads > MAX_WORKER_THREADS {
            return Err(invalid(
                "server.worker_threads",
                format!("must be at most {MAX_WORKER_THREADS} (0 = one per CPU core)"),
            ));
        }
        if self.server.node_id.chars().any(|c| c.is_control()) {
            return Err(invalid(
                "server.node_id",
                "must not contain control characters",
            ));
        }
        if self.uses_redis() {
            RedisTarget::parse(self.redis.url.expose()).map_err(|e| invalid("redis.url", e))?;
        }
        if self.redis.key_prefix.is_empty()
            || self
                .redis
                .key_prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "redis.key_prefix",
                "must be non-empty, without whitespace",
            ));
        }
        if self.redis.connect_timeout_secs == 0 {
            return Err(invalid("redis.connect_timeout_secs", "must be at least 1"));
        }
        if self.stream.heartbeat_secs == 0 {
            return Err(invalid("stream.heartbeat_secs", "must be at least 1"));
        }
        if self.stream.retry_ms == 0 {
            return Err(invalid("stream.retry_ms", "must be at least 1"));
        }
        if self.stream.queue_size == 0 {
            return Err(invalid("stream.queue_size", "must be at least 1"));
        }
        if self.stream.write_timeout_secs == 0 {
            return Err(invalid("stream.write_timeout_secs", "must be at least 1"));
        }
        for origin in &self.stream.cors_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
            {
                return Err(invalid(
                    "stream.cors_origins",
                    format!("{origin:?} is not an origin like \"https://example.com\""),
                ));
            }
        }
        if self.sweep.interval_secs == 0 {
            return Err(invalid("sweep.interval_secs", "must be at least 1"));
        }
        if self.sweep.stale_timeout_secs <= 2 * self.stream.heartbeat_secs {
            return Err(invalid(
                "sweep.stale_timeout_secs",
                format!(
                    "{} must be above twice stream.heartbeat_secs ({}), or live connections would be swept",
                    self.sweep.stale_timeout_secs,
                    2 * self.stream.heartbeat_secs
                ),
            ));
        }
        if self.history.size == 0 {
            return Err(invalid("history.size", "must be at least 1"));
        }
        if self.history.ttl_secs == 0 {
            return Err(invalid("history.ttl_secs", "must be at least 1"));
        }
        if self.auth.header.is_empty()
            || warp::http::HeaderName::from_bytes(self.auth.header.as_bytes()).is_err()
        {
            return Err(invalid(
                "auth.header",
                format!("{:?} is not a valid HTTP header name", self.auth.header),
            ));
        }
        self.trusted_proxies()?;
        if self.auth.cookie.is_empty()
            || !self
                .auth
                .cookie
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(invalid(
                "auth.cookie",
                "must be a cookie name of A-Za-z0-9_-.",
            ));
        }
        if self.auth.mode == AuthMode::Token && self.auth.token_secret_file.is_empty() {
            return Err(invalid(
                "auth.token_secret_file",
                "is required when auth.mode = \"token\"",
            ));
        }
        for (key, value) in [
            ("auth.token_issuer", &self.auth.token_issuer),
            ("auth.token_audience", &self.auth.token_audience),
        ] {
            if value.trim() != value || value.chars().any(char::is_control) {
                return Err(invalid(
                    key,
                    format!("{value:?} must have no surrounding whitespace and no control characters (\"\" to not check it)"),
                ));
            }
        }
        let lifetime = self.auth.token_max_lifetime_secs;
        if lifetime != 0 && lifetime < MIN_TOKEN_MAX_LIFETIME_SECS {
            return Err(invalid(
                "auth.token_max_lifetime_secs",
                format!(
                    "{lifetime} must be 0 (no limit) or at least {MIN_TOKEN_MAX_LIFETIME_SECS}"
                ),
            ));
        }
        if self.api.max_body_bytes == 0 {
            return Err(invalid("api.max_body_bytes", "must be at least 1"));
        }
        if !(1..=100_000).contains(&self.api.max_batch) {
            return Err(invalid("api.max_batch", "must be 1 to 100000"));
        }
        if self.api.request_timeout_secs == 0 {
            return Err(invalid("api.request_timeout_secs", "must be at least 1"));
        }
        if self.api.max_connections == 0 {
            return Err(invalid("api.max_connections", "must be at least 1"));
        }
        for origin in &self.api.allowed_origins {
            if !is_origin(origin) {
                return Err(invalid(
                    "api.allowed_origins",
                    format!("{origin:?} is not an origin like \"https://console.example.com\" or \"http://127.0.0.1:8091\" (scheme://host[:port], no path)"),
                ));
            }
        }
        for host in &self.api.allowed_hosts {
            if !is_host_name(host) {
                return Err(invalid(
                    "api.allowed_hosts",
                    format!("{host:?} is not a host name like \"sse-admin.internal\" (no scheme, no port)"),
                ));
            }
        }
        if self.limits.max_connections_per_user == 0 {
            return Err(invalid(
                "limits.max_connections_per_user",
                "must be at least 1",
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", format!("{:?}: {e}", self.log.level)))?;
        Ok(())
    }

    pub fn listen_addr(&self) -> SocketAddr {
        parse_addr("server.listen", &self.server.listen).expect("validated")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        parse_addr("server.admin_listen", &self.server.admin_listen).expect("validated")
    }

    pub fn trusted_proxies(&self) -> Result<Vec<IpNet>, ConfigError> {
        self.auth
            .trusted_proxies
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        invalid(
                            "auth.trusted_proxies",
                            format!("{s:?} is not a CIDR like \"127.0.0.1/32\" or \"::1/128\""),
                        )
                    })
            })
            .collect()
    }

    /// `server.node_id`, or the hostname when empty.
    pub fn node_id(&self) -> String {
        if !self.server.node_id.is_empty() {
            return self.server.node_id.clone();
        }
        hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "sse-notify".into())
    }

    /// Whether `redis.url` selects the Redis engine (empty: the embedded
    /// engine).
    pub fn uses_redis(&self) -> bool {
        !self.redis.url.expose().trim().is_empty()
    }

    /// Where the Redis engine connects (`validate` already checked it).
    pub fn redis_target(&self) -> Result<RedisTarget, ConfigError> {
        RedisTarget::parse(self.redis.url.expose()).map_err(|e| invalid("redis.url", e))
    }

    /// The engine `redis.url` selects, as logs and `/healthz` name it.
    pub fn engine(&self) -> &'static str {
        if self.uses_redis() {
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
        let mut keys = Vec::new();
        let s = (&self.server, &new.server);
        if s.0.listen != s.1.listen {
            keys.push("server.listen");
        }
        if s.0.admin_listen != s.1.admin_listen {
            keys.push("server.admin_listen");
        }
        if s.0.base_path != s.1.base_path {
            keys.push("server.base_path");
        }
        if s.0.node_id != s.1.node_id {
            keys.push("server.node_id");
        }
        if s.0.shutdown_grace_secs != s.1.shutdown_grace_secs {
            keys.push("server.shutdown_grace_secs");
        }
        if s.0.worker_threads != s.1.worker_threads {
            keys.push("server.worker_threads");
        }
        if self.redis.connect_timeout_secs != new.redis.connect_timeout_secs {
            keys.push("redis.connect_timeout_secs");
        }
        if self.redis.url != new.redis.url {
            keys.push("redis.url");
        }
        if self.redis.key_prefix != new.redis.key_prefix {
            keys.push("redis.key_prefix");
        }
        if self.log.format != new.log.format {
            keys.push("log.format");
        }
        if self.history.enabled != new.history.enabled {
            keys.push("history.enabled");
        }
        keys
    }
}

fn parse_addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("{value:?} is not an address like \"127.0.0.1:8090\""),
        )
    })
}

/// `host[:port]` or `[v6][:port]` -> (host, port); the brackets stay on a
/// v6 host. `None` when the port is not a number or the brackets are
/// unbalanced.
pub fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

/// A DNS name as `Host` carries it: letters, digits, `-`, `.` and `_`.
fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// `scheme://host[:port]` as browsers serialize an `Origin`: no path, no
/// user, no trailing slash; `null` is none.
fn is_origin(s: &str) -> bool {
    let Some((scheme, authority)) = s.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    let host_ok = match split_host_port(authority) {
        Some((host, _)) => match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => is_host_name(host),
        },
        None => false,
    };
    scheme_ok && host_ok
}

/// `redis://user:pass@host` -> `redis://user:****@host`, for display.
pub fn mask_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let masked = match userinfo.find(':') {
                Some(colon) => format!("{}:****", &userinfo[..colon]),
                None => "****".to_string(),
            };
            format!("{}{}{}", &url[..scheme_end + 3], masked, &rest[at..])
        }
        None => url.to_string(),
    }
}

/// Where the Redis engine connects: a plain `redis://` URL, or Redis
/// Sentinel (`redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`),
/// asked for the current primary on every (re)connect.
#[derive(Debug, Clone, PartialEq)]
pub enum RedisTarget {
    Direct(String),
    Sentinel {
        /// `host:port` of each sentinel.
        sentinels: Vec<String>,
        /// The monitored primary's name (`sentinel monitor <name> ...`).
        service: String,
        /// `user:password` for the primary, if any.
        userinfo: Option<String>,
        db: i64,
    },
}

const SENTINEL_SCHEME: &str = "redis+sentinel://";

impl RedisTarget {
    pub fn parse(url: &str) -> Result<Self, String> {
        let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) else {
            redis::Client::open(url).map_err(|e| format!("not a valid Redis URL: {e}"))?;
            return Ok(RedisTarget::Direct(url.to_string()));
        };
        let (authority, path) = rest
            .split_once('/')
            .ok_or("a sentinel URL needs the service name: redis+sentinel://host:26379/mymaster")?;
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        let sentinels: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| {
                if h.rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                {
                    h.to_string()
                } else {
                    format!("{h}:26379")
                }
            })
            .collect();
        if sentinels.is_empty() {
            return Err("a sentinel URL needs at least one host:port".into());
        }
        let mut parts = path.split('/');
        let service = parts.next().unwrap_or_default().to_string();
        if service.is_empty() {
            return Err("a sentinel URL needs the service name after the hosts".into());
        }
        let db = match parts.next() {
            None | Some("") => 0,
            Some(d) => d
                .parse()
                .map_err(|_| format!("database {d:?} is not a number"))?,
        };
        Ok(RedisTarget::Sentinel {
            sentinels,
            service,
            userinfo,
            db,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sentinel_urls() {
        assert_eq!(
            RedisTarget::parse("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2/mymaster/2").unwrap(),
            RedisTarget::Sentinel {
                sentinels: vec!["10.0.0.1:26379".into(), "10.0.0.2:26379".into()],
                service: "mymaster".into(),
                userinfo: Some(":pw".into()),
                db: 2,
            }
        );
        assert!(matches!(
            RedisTarget::parse("redis://127.0.0.1:6379/0").unwrap(),
            RedisTarget::Direct(_)
        ));
        assert!(RedisTarget::parse("redis+sentinel://h:26379").is_err());
        assert!(RedisTarget::parse("redis+sentinel://h:26379/").is_err());
        assert!(RedisTarget::parse("redis+sentinel://h/svc/x").is_err());
        assert!(RedisTarget::parse("nope://x").is_err());
    }

    #[test]
    fn sample_config_parses_and_equals_defaults() {
        let text = include_str!("../../etc/sse-notify.toml");
        let parsed = Config::parse(text).expect("etc/sse-notify.toml parses");
        parsed.validate().expect("etc/sse-notify.toml is valid");
        assert_eq!(
            parsed,
            Config::default(),
            "the sample documents the defaults"
        );
    }

    #[test]
    fn sample_config_documents_every_key() {
        let text = include_str!("../../etc/sse-notify.toml");
        let defaults = toml::to_string(&Config::default()).unwrap();
        let table: toml::Table = toml::from_str(&defaults).unwrap();
        let sample: toml::Table = toml::from_str(text).unwrap();
        let mut checked = 0;
        for (section, keys) in &table {
            let keys = keys.as_table().unwrap();
            for key in keys.keys() {
                checked += 1;
                assert!(
                    sample
                        .get(section)
                        .and_then(|s| s.as_table())
                        .is_some_and(|s| s.contains_key(key)),
                    "etc/sse-notify.toml lacks {section}.{key}"
                );
            }
        }
        assert!(checked >= 30, "only {checked} keys checked");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[stream]\nheartbeat_sec = 3\n").unwrap_err();
        assert!(err.contains("heartbeat_sec"), "{err}");
        let err = Config::parse("[strem]\n").unwrap_err();
        assert!(err.contains("strem"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::parse("[stream]\nheartbeat_secs = \"x\"\n").unwrap_err();
        assert!(err.contains("heartbeat_secs"), "{err}");

        let mut c = Config::default();
        c.sweep.stale_timeout_secs = 30;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("sweep.stale_timeout_secs"), "{err}");

        let mut c = Config::default();
        c.auth.trusted_proxies = vec!["10.0.0.0/33".into()];
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("auth.trusted_proxies"), "{err}");

        let mut c = Config::default();
        c.server.listen = "nope".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("server.listen"), "{err}");

        let err = Config::parse("[auth]\nmode = \"magic\"\n").unwrap_err();
        assert!(err.contains("mode"), "{err}");

        let mut c = Config::default();
        c.stream.write_timeout_secs = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("stream.write_timeout_secs"), "{err}");

        let mut c = Config::default();
        c.api.request_timeout_secs = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("api.request_timeout_secs"), "{err}");

        let mut c = Config::default();
        c.api.max_connections = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("api.max_connections"), "{err}");
    }

    #[test]
    fn token_checks_are_named() {
        for (set, key) in [
            (
                (|c: &mut Config| c.auth.token_issuer = " https://app.example".into())
                    as fn(&mut Config),
                "auth.token_issuer",
            ),
            (
                |c: &mut Config| c.auth.token_audience = "sse\n".into(),
                "auth.token_audience",
            ),
            (
                |c: &mut Config| c.auth.token_max_lifetime_secs = 3,
                "auth.token_max_lifetime_secs",
            ),
        ] {
            let mut c = Config::default();
            set(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        let mut c = Config::default();
        c.auth.token_issuer = "https://app.example".into();
        c.auth.token_audience = "sse-notify".into();
        c.auth.token_max_lifetime_secs = 0;
        c.validate().expect("set checks and no lifetime limit");
        let err = Config::parse("[auth]\ntoken_max_lifetime_secs = -1\n").unwrap_err();
        assert!(err.contains("token_max_lifetime_secs"), "{err}");
    }

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

    #[test]
    fn host_and_port_split() {
        assert_eq!(
            split_host_port("localhost:8091"),
            Some(("localhost", Some(8091)))
        );
        assert_eq!(split_host_port("10.0.0.1"), Some(("10.0.0.1", None)));
        assert_eq!(split_host_port("[::1]:80"), Some(("[::1]", Some(80))));
        assert_eq!(split_host_port("[::1]"), Some(("[::1]", None)));
        assert_eq!(split_host_port("[::1]x"), None);
        assert_eq!(split_host_port("host:x"), None);
        assert_eq!(split_host_port("host:70000"), None);
    }

    #[test]
    fn secrets_are_masked() {
        let mut c = Config::default();
        c.api.token = Secret("hunter2".into());
        c.redis.url = Secret("redis://app:s3cret@db:6379/0".into());
        assert!(!format!("{c:?}").contains("hunter2"));
        let shown = c.to_masked_toml();
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(shown.contains("redis://app:****@db:6379/0"), "{shown}");
    }
}
