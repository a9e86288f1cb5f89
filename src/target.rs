//! How this node reaches Redis: a plain `redis://` URL, or Redis Sentinel
//! (`redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`),
//! asked for the current primary on every (re)connect. With Sentinel a
//! follower task keeps the shared connection on the primary across
//! failovers; every user of Redis takes its connection from [`SharedConn`].

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::config::mask_url_password;

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

    /// The URL of the primary to talk to now.
    pub async fn primary_url(&self) -> redis::RedisResult<String> {
        let (sentinels, service, userinfo, db) = match self {
            RedisTarget::Direct(url) => return Ok(url.clone()),
            RedisTarget::Sentinel {
                sentinels,
                service,
                userinfo,
                db,
            } => (sentinels, service, userinfo, db),
        };
        let mut last_err = None;
        for sentinel in sentinels {
            let ask = async {
                let client = redis::Client::open(format!("redis://{sentinel}"))?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(service)
                    .query_async::<Option<(String, u16)>>(&mut conn)
                    .await
            };
            match tokio::time::timeout(Duration::from_secs(2), ask).await {
                Ok(Ok(Some((host, port)))) => {
                    let auth = userinfo
                        .as_ref()
                        .map(|u| format!("{u}@"))
                        .unwrap_or_default();
                    let host = if host.contains(':') {
                        format!("[{host}]")
                    } else {
                        host
                    };
                    return Ok(format!("redis://{auth}{host}:{port}/{db}"));
                }
                Ok(Ok(None)) => {
                    last_err = Some(redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "sentinel does not know the service",
                        format!("{service} at {sentinel}"),
                    )))
                }
                Ok(Err(e)) => last_err = Some(e),
                Err(_) => {
                    last_err = Some(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "sentinel did not answer",
                        sentinel.clone(),
                    )))
                }
            }
        }
        Err(last_err.unwrap_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no sentinel"))
        }))
    }

    pub async fn client(&self) -> redis::RedisResult<redis::Client> {
        redis::Client::open(self.primary_url().await?)
    }
}

/// The multiplexed connection every part of the node shares; swapped whole
/// when Sentinel names a new primary.
#[derive(Clone)]
pub struct SharedConn {
    inner: Arc<RwLock<(String, ConnectionManager)>>,
}

impl SharedConn {
    /// Connects to the target's primary now.
    pub async fn connect(target: &RedisTarget) -> redis::RedisResult<Self> {
        let url = target.primary_url().await?;
        let conn = crate::registry::connect(&url).await?;
        Ok(Self {
            inner: Arc::new(RwLock::new((url, conn))),
        })
    }

    pub fn get(&self) -> ConnectionManager {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    fn url(&self) -> String {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// With Sentinel, checks every `every` which node is the primary and
    /// moves the connection there after a failover. Returns at shutdown.
    pub async fn follow(self, target: RedisTarget, every: Duration, shutdown: CancellationToken) {
        if !matches!(target, RedisTarget::Sentinel { .. }) {
            return;
        }
        let mut log = crate::throttle::LogThrottle::new(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let url = match target.primary_url().await {
                Ok(url) => url,
                Err(e) => {
                    if let Some(suppressed) = log.allow() {
                        tracing::error!(error = %e, suppressed, "no sentinel named the primary");
                    }
                    continue;
                }
            };
            if url == self.url() {
                continue;
            }
            match crate::registry::connect(&url).await {
                Ok(conn) => {
                    tracing::warn!(
                        primary = %mask_url_password(&url),
                        "redis primary changed (sentinel failover); connection moved"
                    );
                    *self.inner.write().unwrap_or_else(|e| e.into_inner()) = (url, conn);
                }
                Err(e) => {
                    if let Some(suppressed) = log.allow() {
                        tracing::error!(error = %e, suppressed, "cannot reach the new primary yet");
                    }
                }
            }
        }
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
}
