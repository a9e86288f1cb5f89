//! How this node reaches Redis ([`RedisTarget`]: a URL or Sentinel, asked
//! for the current primary on every (re)connect, or a Redis Cluster). With
//! Sentinel a follower task keeps the shared connection on the primary
//! across failovers; on a cluster the crate's cluster connection routes
//! each command by its key's slot. Every user of Redis takes its connection
//! from [`SharedConn`].

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::sharded::Table;
use tokio_util::sync::CancellationToken;

use crate::config::{mask_url_password, Config, RedisTarget};
use crate::store::StoreError;

/// The URL of the primary to talk to now.
pub(crate) async fn primary_url(target: &RedisTarget) -> redis::RedisResult<String> {
    let (sentinels, service, userinfo, db) = match target {
        RedisTarget::Direct(url) => return Ok(url.clone()),
        RedisTarget::Cluster { .. } => {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a Redis Cluster has no one primary",
            )))
        }
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

/// A client for the current primary (the bus subscription's own connection).
pub(crate) async fn client(target: &RedisTarget) -> redis::RedisResult<redis::Client> {
    redis::Client::open(primary_url(target).await?)
}

/// A connection to one Redis (self-reconnecting) or to a Redis Cluster
/// (each command routed to the primary of its key's slot, following
/// `MOVED`): the same commands and scripts run on either.
#[derive(Clone)]
pub(crate) enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// The multiplexed connection every part of the node shares; swapped whole
/// when Sentinel names a new primary.
#[derive(Clone)]
pub(crate) struct SharedConn {
    inner: Arc<RwLock<(String, RedisConn)>>,
}

impl SharedConn {
    /// Connects to the target's primary (or cluster) now.
    pub(crate) async fn connect(target: &RedisTarget) -> redis::RedisResult<Self> {
        let (url, conn) = match target {
            RedisTarget::Cluster { seeds, userinfo } => (
                format!("cluster {}", seeds.join(",")),
                RedisConn::Cluster(connect_cluster(seeds, userinfo.as_deref()).await?),
            ),
            _ => {
                let url = primary_url(target).await?;
                let conn = RedisConn::Single(connect(&url).await?);
                (url, conn)
            }
        };
        Ok(Self {
            inner: Arc::new(RwLock::new((url, conn))),
        })
    }

    pub(crate) fn get(&self) -> RedisConn {
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
    /// moves the connection there after a failover; on a cluster, re-reads
    /// which primary serves which slots and builds the connection anew
    /// when that changed. Returns at shutdown.
    pub(crate) async fn follow(
        self,
        target: RedisTarget,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        if let RedisTarget::Cluster { seeds, userinfo } = &target {
            return self
                .follow_cluster(seeds, userinfo.as_deref(), every, shutdown)
                .await;
        }
        if !matches!(target, RedisTarget::Sentinel { .. }) {
            return;
        }
        let mut log = crate::throttle::LogThrottle::new(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let url = match primary_url(&target).await {
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
            match connect(&url).await {
                Ok(conn) => {
                    tracing::warn!(
                        primary = %mask_url_password(&url),
                        "redis primary changed (sentinel failover); connection moved"
                    );
                    *self.inner.write().unwrap_or_else(|e| e.into_inner()) =
                        (url, RedisConn::Single(conn));
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

/// Connects with a multiplexed, self-reconnecting connection whose calls
/// fail fast while Redis is down instead of hanging the caller.
pub(crate) async fn connect(url: &str) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(3)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    client.get_connection_manager_with_config(config).await
}

impl SharedConn {
    /// The crate's cluster connection re-reads the slot map only when a
    /// command meets `MOVED` or finds no connection for its slot: after a
    /// failover, commands for the dead primary's slots time out until then
    /// (README "Past one Redis primary"). So the map is read here every
    /// `every` from any node that answers, and when the primaries changed
    /// the connection is built anew from the nodes now known.
    async fn follow_cluster(
        self,
        seeds: &[String],
        userinfo: Option<&str>,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        let mut log = crate::throttle::LogThrottle::new(Duration::from_secs(10));
        let mut known: Vec<String> = seeds.to_vec();
        let mut seen: Option<Table> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let Some((map, nodes)) = slot_map(&known, userinfo).await else {
                if let Some(suppressed) = log.allow() {
                    tracing::error!(
                        suppressed,
                        nodes = known.len(),
                        "no cluster node answered CLUSTER SLOTS"
                    );
                }
                continue;
            };
            // Nodes learnt from the map stay known: the seeds may all go.
            for node in nodes {
                if !known.contains(&node) {
                    known.push(node);
                }
            }
            if seen.as_ref() == Some(&map) {
                continue;
            }
            let first = seen.is_none();
            seen = Some(map);
            if first {
                continue;
            }
            match connect_cluster(&known, userinfo).await {
                Ok(conn) => {
                    tracing::warn!(
                        nodes = known.len(),
                        "redis cluster slot map changed; connection rebuilt on it"
                    );
                    let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
                    inner.1 = RedisConn::Cluster(conn);
                }
                Err(e) => {
                    // Read again next time: a change not yet taken.
                    seen = None;
                    if let Some(suppressed) = log.allow() {
                        tracing::error!(error = %e, suppressed, "cannot connect to the cluster's new layout yet");
                    }
                }
            }
        }
    }
}

/// Which primary (`host:port`) serves each slot range, as the first node
/// of `nodes` that answers says (`CLUSTER SLOTS`, read as the sharded
/// subscriber reads it), and every node it names.
async fn slot_map(nodes: &[String], userinfo: Option<&str>) -> Option<(Table, Vec<String>)> {
    for node in nodes {
        let ask = async {
            let mut conn = super::sharded::connect(node, userinfo, None).await?;
            super::sharded::read_slots(&mut conn, node).await
        };
        if let Ok(Ok(read)) = tokio::time::timeout(Duration::from_secs(1), ask).await {
            return Some(read);
        }
    }
    None
}

/// Connects to a Redis Cluster through `seeds` (`host:port`), with the
/// same credentials on every node and the same timeouts as one Redis: a
/// command for a slot whose primary is down fails within seconds (the
/// caller answers 503) instead of hanging.
async fn connect_cluster(
    seeds: &[String],
    userinfo: Option<&str>,
) -> redis::RedisResult<ClusterConnection> {
    let auth = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    let nodes: Vec<String> = seeds
        .iter()
        .map(|s| format!("redis://{auth}{s}/"))
        .collect();
    redis::cluster::ClusterClientBuilder::new(nodes)
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(3))
        .retries(2)
        .min_retry_wait(50)
        .max_retry_wait(500)
        .build()?
        .get_async_connection()
        .await
}

/// Connects to Redis (its primary, with Sentinel), retrying with backoff
/// for `redis.connect_timeout_secs`.
pub(crate) async fn connect_with_retry(config: &Config) -> Result<SharedConn, StoreError> {
    let target = config
        .redis_target()
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let secs = config.redis.connect_timeout_secs;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = async {
            let conn = SharedConn::connect(&target).await?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn.get())
                .await?;
            Ok::<_, redis::RedisError>(conn)
        };
        match attempt.await {
            Ok(conn) => return Ok(conn),
            Err(source) if Instant::now() >= deadline => {
                return Err(StoreError::Unavailable(format!(
                    "redis at {} unreachable for {secs}s (redis.connect_timeout_secs): {source}",
                    mask_url_password(config.redis.url.expose())
                )))
            }
            Err(e) => {
                // The last wait ends at the deadline, for one final try.
                let wait = delay.min(deadline.saturating_duration_since(Instant::now()));
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "redis not reachable yet");
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A Redis call that answers within `timeout`, or a [`StoreError`]: a
/// caller never waits on a Redis that stopped answering.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, fut).await {
        // A sending script's own refusal (route.lua): nothing was kept.
        Ok(Err(e)) if e.code() == Some("RESYNCING") => Err(StoreError::Resyncing),
        // A target's node is subscribing again on a cluster (route.lua):
        // nothing was published.
        Ok(Err(e)) if e.code() == Some("DEAF") => Err(StoreError::Unavailable(
            "a node holding the targets is subscribing again (a slot moved); retry".into(),
        )),
        Ok(r) => r.map_err(StoreError::from),
        Err(_) => Err(StoreError::Timeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use redis::aio::ConnectionLike;

    use super::*;
    use crate::config::Secret;
    use crate::store::harness::redis_cluster::RedisCluster;

    fn config(url: &str, connect_timeout_secs: u64) -> Config {
        let mut config = Config::default();
        config.redis.url = Secret(url.into());
        config.redis.connect_timeout_secs = connect_timeout_secs;
        config
    }

    /// A command, a script and a pipeline on a key in each primary's
    /// slots, through the one shared connection; each primary itself
    /// holds what was written to its key (the credentials reached every
    /// node, and each command went to its slot's primary).
    async fn reaches_every_primary(cluster: &RedisCluster) {
        let shared = connect_with_retry(&config(&cluster.cluster_url(), 10))
            .await
            .expect("cluster");
        assert!(matches!(shared.get(), RedisConn::Cluster(_)));
        let primaries = cluster.primaries();
        assert_eq!(primaries.len(), 3, "{primaries:?}");
        let read = redis::Script::new("return redis.call('GET', KEYS[1])");
        for primary in primaries {
            let key = cluster.names_on(primary, "conn-test-", 1).remove(0);
            let mut conn = shared.get();
            let value = format!("on {primary}");
            redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .query_async::<()>(&mut conn)
                .await
                .expect("SET");
            let got: String = read
                .key(&key)
                .invoke_async(&mut conn)
                .await
                .expect("script");
            assert_eq!(got, value);
            let (len,): (usize,) = redis::pipe()
                .cmd("STRLEN")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("pipeline");
            assert_eq!(len, value.len());
            let on_primary: Option<String> = cluster
                .node(primary)
                .query(redis::cmd("GET").arg(&key))
                .expect("GET on the primary");
            assert_eq!(on_primary.as_deref(), Some(value.as_str()), "{key}");
            assert_eq!(conn.get_db(), 0);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cluster_url_reaches_every_primary() {
        reaches_every_primary(&RedisCluster::start()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cluster_url_with_a_password_reaches_every_primary_and_never_shows_it() {
        let cluster = RedisCluster::start_with_password("s3cret-cluster-pw");
        reaches_every_primary(&cluster).await;

        let wrong = cluster
            .cluster_url()
            .replace("s3cret-cluster-pw", "wr0ng-cluster-pw");
        let err = match connect_with_retry(&config(&wrong, 1)).await {
            Ok(_) => panic!("a wrong password connected"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("unreachable"), "{err}");
        assert!(!err.contains("wr0ng-cluster-pw"), "password shown: {err}");
    }
}
