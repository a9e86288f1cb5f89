//! `[redis]`: which engine runs (README "Choosing the engine") and, for the
//! Redis engine, where it connects: [`RedisTarget`], read from `redis.url`
//! (a plain URL or Sentinel) for the engine's connections.

use serde::{Deserialize, Serialize};

use super::reload::{restart, Key};
use super::secret::Secret;
use super::{invalid, ConfigError};

/// Empty: the embedded engine.
const DEFAULT_URL: &str = "";
const DEFAULT_KEY_PREFIX: &str = "sse";
const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 30;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// The engine: empty for the embedded one, else where Redis is
    /// ([`RedisTarget`]); may hold a password.
    pub url: Secret,
    pub key_prefix: String,
    pub connect_timeout_secs: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: Secret(DEFAULT_URL.into()),
            key_prefix: DEFAULT_KEY_PREFIX.into(),
            connect_timeout_secs: DEFAULT_CONNECT_TIMEOUT_SECS,
        }
    }
}

impl RedisConfig {
    /// All need a restart: the engine and its connections are set up at
    /// start. (Listed in the order a reload has always named them.)
    pub(super) const KEYS: &'static [Key] = &[
        restart!(redis.connect_timeout_secs),
        restart!(redis.url),
        restart!(redis.key_prefix),
    ];

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.uses_redis() {
            self.target()?;
        }
        if self.key_prefix.is_empty()
            || self
                .key_prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "redis.key_prefix",
                "must be non-empty, without whitespace",
            ));
        }
        if self.connect_timeout_secs == 0 {
            return Err(invalid("redis.connect_timeout_secs", "must be at least 1"));
        }
        Ok(())
    }

    /// Whether `url` selects the Redis engine (empty: the embedded engine).
    pub(super) fn uses_redis(&self) -> bool {
        !self.url.expose().trim().is_empty()
    }

    pub(super) fn target(&self) -> Result<RedisTarget, ConfigError> {
        RedisTarget::parse(self.url.expose()).map_err(|e| invalid("redis.url", e))
    }
}

/// Where the Redis engine connects.
#[derive(Debug, Clone, PartialEq)]
pub enum RedisTarget {
    /// `redis://[user:password@]host:port/db` (and the other forms redis-rs
    /// reads): one server.
    Direct(String),
    /// `redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`:
    /// the sentinels are asked for the current primary on every
    /// (re)connect.
    Sentinel {
        /// `host:port` of each sentinel.
        sentinels: Vec<String>,
        /// The monitored primary's name (`sentinel monitor <name> ...`).
        service: String,
        /// `user:password` for the primary, if any.
        userinfo: Option<String>,
        db: i64,
    },
    /// `redis+cluster://[user:password@]host:port[,host:port...][/]`: a
    /// Redis Cluster, reached through any of these nodes (the rest is read
    /// from them), with one password for every node.
    Cluster {
        /// `host:port` of each seed node.
        seeds: Vec<String>,
        /// `user:password` for every node, if any (as written in the URL).
        userinfo: Option<String>,
    },
}

const SENTINEL_SCHEME: &str = "redis+sentinel://";
const CLUSTER_SCHEME: &str = "redis+cluster://";
/// Redis's own port, for a cluster node named without one.
const REDIS_PORT: u16 = 6379;
/// Sentinel's own port, for a sentinel named without one.
const SENTINEL_PORT: u16 = 26379;

impl RedisTarget {
    /// Reads `redis.url`; the error says what is wrong with it (the caller
    /// names the key).
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) {
            return parse_sentinel(rest);
        }
        if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
            return parse_cluster(rest);
        }
        if url.starts_with("rediss+cluster://") {
            return Err("TLS to a Redis Cluster (rediss+cluster://) is not built in; use redis+cluster:// on a private network".into());
        }
        redis::Client::open(url).map_err(|e| format!("not a valid Redis URL: {e}"))?;
        Ok(RedisTarget::Direct(url.to_string()))
    }
}

/// What follows `redis+cluster://`.
fn parse_cluster(rest: &str) -> Result<RedisTarget, String> {
    // The path starts after the userinfo: a `/` in a password must not make
    // the rest of it the "path" that the error below quotes.
    let hosts_from = rest.rfind('@').map_or(0, |at| at + 1);
    let (authority, path) = match rest[hosts_from..].find('/') {
        Some(slash) => (&rest[..hosts_from + slash], &rest[hosts_from + slash + 1..]),
        None => (rest, ""),
    };
    if !matches!(path, "" | "0") {
        return Err(format!(
            "a Redis Cluster has only database 0; remove {:?} after the hosts",
            format!("/{path}")
        ));
    }
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, authority),
    };
    let seeds = host_list(hosts, REDIS_PORT);
    if seeds.is_empty() {
        return Err(
            "a cluster URL needs at least one host:port: redis+cluster://host1:6379,host2:6379/"
                .into(),
        );
    }
    // Each seed must read as a Redis URL of its own: the engine connects
    // to every node this way.
    for seed in &seeds {
        redis::Client::open(format!("redis://{seed}/"))
            .map_err(|e| format!("cluster node {seed:?} is not host:port: {e}"))?;
    }
    Ok(RedisTarget::Cluster { seeds, userinfo })
}

/// What follows `redis+sentinel://`.
fn parse_sentinel(rest: &str) -> Result<RedisTarget, String> {
    let (authority, path) = rest
        .split_once('/')
        .ok_or("a sentinel URL needs the service name: redis+sentinel://host:26379/mymaster")?;
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, authority),
    };
    let sentinels = host_list(hosts, SENTINEL_PORT);
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

/// `host[:port],host[:port]...` -> one `host:port` each, with
/// `default_port` where none is given; empty entries are skipped.
fn host_list(hosts: &str, default_port: u16) -> Vec<String> {
    hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| {
            if h.rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            {
                h.to_string()
            } else {
                format!("{h}:{default_port}")
            }
        })
        .collect()
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
    fn parses_cluster_urls() {
        assert_eq!(
            RedisTarget::parse("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2/").unwrap(),
            RedisTarget::Cluster {
                seeds: vec!["10.0.0.1:7000".into(), "10.0.0.2:6379".into()],
                userinfo: Some(":pw".into()),
            }
        );
        assert_eq!(
            RedisTarget::parse("redis+cluster://h:7000").unwrap(),
            RedisTarget::Cluster {
                seeds: vec!["h:7000".into()],
                userinfo: None,
            }
        );
        assert!(RedisTarget::parse("redis+cluster://h:7000/0").is_ok());
        let db = RedisTarget::parse("redis+cluster://h:7000/2").unwrap_err();
        assert!(db.contains("only database 0"), "{db}");
        assert!(RedisTarget::parse("redis+cluster:///").is_err());
        assert!(RedisTarget::parse("redis+cluster://h:7000,h:x:y/").is_err());
        let tls = RedisTarget::parse("rediss+cluster://h:7000/").unwrap_err();
        assert!(tls.contains("TLS"), "{tls}");
    }

    #[test]
    fn a_refused_cluster_url_never_quotes_its_password() {
        for url in [
            "redis+cluster://:s3cret@h1:7000/x",
            "redis+cluster://:s3/cret@h1:7000/x",
            "redis+cluster://app:s3/cret@h1:7000/1",
            "redis+cluster://:s3cret@/",
            "rediss+cluster://:s3cret@h1:7000",
        ] {
            let e = RedisTarget::parse(url).expect_err(url);
            assert!(!e.contains("cret"), "{url}: password in {e:?}");
        }
        assert_eq!(
            RedisTarget::parse("redis+cluster://app:s3/cret@h1:7000/").unwrap(),
            RedisTarget::Cluster {
                seeds: vec!["h1:7000".into()],
                userinfo: Some("app:s3/cret".into()),
            }
        );
    }
}
