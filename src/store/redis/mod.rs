//! The Redis engine: several nodes share one Redis (or a Sentinel-managed
//! primary). The registry and the kept messages are Redis keys
//! ([`keys`], scripts in `lua/`); messages and control events travel
//! between nodes on pub/sub channels, each message only to the nodes that
//! hold its streams ([`bus`], channels chosen as [`route`] says); this
//! node's streams are
//! mirrored into the registry by one task ([`presence`]). On a Redis
//! Cluster the node's shard channels are kept subscribed on the primaries
//! serving their slots by [`sharded`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{HistoryConfig, RedisTarget};
use crate::metrics::Metrics;
use crate::store::nodes::{Deployment, NodeStatus};
use crate::store::seam;
use crate::store::target::Route;
use crate::store::{
    Accepted, BusHealth, Cleared, ConnectionRecord, Health, Inbound, LiveConn, Message, MsgId,
    NodeLink, Open, Removed, Replay, Result, StoreError, TopicCount, TopicPresence, Wrote,
};

mod bus;
mod conn;
#[cfg(test)]
mod exact;
mod history;
mod keys;
mod nodes;
mod presence;
mod registry;
mod route;
mod sharded;
mod shared;

pub(crate) use conn::{connect_with_retry, SharedConn};
use keys::Keys;
pub(crate) use keys::Layout;
pub(crate) use registry::Redis;

use bus::BusEvent;
use history::{Appender, History, Recent, RecentIds, Targets};
use presence::Presence;

/// On a cluster, what this node hears ([`RedisStore::ready`]).
struct Hearing {
    sharded: sharded::Sharded,
    node_id: String,
    /// How many channels it subscribes.
    channels: usize,
}

pub(crate) struct RedisStore {
    registry: Redis,
    presence: Presence,
    /// With history on: keeps messages in batches (group commit).
    appender: Option<Appender>,
    history: Option<History>,
    link: Arc<dyn NodeLink>,
    /// This process on the bus: the node id plus a random part, so that
    /// two nodes configured with the same node_id still hear each other.
    origin: String,
    /// True while this node is subscribed to the bus (on a cluster: to
    /// every channel of it).
    bus_up: watch::Receiver<bool>,
    /// On a cluster: which channels this node hears now, for a send to
    /// need only its own partitions' (a primary failing over makes the
    /// node deaf to its partitions' channels only).
    hearing: Option<Hearing>,
    metrics: Arc<Metrics>,
    /// With history off: reads targets and publishes (`lua/send.lua`).
    unkept: redis::Script,
    /// `stream.heartbeat_secs` at start: how soon this node writes back
    /// its live records after a short cleanup removed them.
    heartbeat: Duration,
}

/// Where the keys live for the configured Redis: one partition on one
/// Redis or Sentinel, the cluster's partitions on a Redis Cluster.
pub(crate) fn layout(config: &crate::config::Config) -> Layout {
    match config.redis_target() {
        Ok(RedisTarget::Cluster { .. }) => Layout::cluster(&config.redis.key_prefix),
        _ => Layout::single(&config.redis.key_prefix),
    }
}

/// [`RedisStore::sweep`], for the CLI too (`heartbeat`: the nodes'
/// `stream.heartbeat_secs`; `origin`: who tells the nodes).
///
/// A cleanup shorter than two heartbeats may remove live streams' records:
/// users' messages go to every node from before the removal until every
/// node wrote its streams back, and the nodes are told to do so at once
/// (else each would at its next heartbeat).
pub(crate) async fn sweep(
    registry: &Redis,
    stale_before: f64,
    heartbeat: Duration,
    origin: &str,
) -> Result<Removed> {
    let short = removes_live(stale_before, heartbeat);
    let threshold = route::ms(stale_before);
    if short {
        route::untargeted_for(registry, threshold, write_back_within(heartbeat)).await?;
    }
    // A live stream whose record goes is written back, not gone: no leave.
    let removed = registry.sweep(stale_before, !short).await?;
    if short && removed.connection_count() > 0 {
        bus::publish_resync(registry, origin, threshold).await?;
    }
    Ok(removed)
}

/// Whether a sweep of the records not beaten since `stale_before` may
/// remove live streams' records (the nodes beat every `heartbeat`).
fn removes_live(stale_before: f64, heartbeat: Duration) -> bool {
    crate::store::unix_now() - stale_before <= 2.0 * heartbeat.as_secs_f64()
}

/// [`RedisStore::clear`], for the CLI too: users' messages go to every
/// node from before the removal until every node wrote its streams back
/// after the clear began, and the nodes are told to do so. The second
/// part is why they could not be told (each then writes back at its next
/// heartbeat).
pub(crate) async fn clear(registry: &Redis, origin: &str) -> Result<(Cleared, Option<StoreError>)> {
    let began = crate::store::unix_now();
    let threshold = route::ms(began);
    route::untargeted_for_resync(registry, threshold).await?;
    let removed = registry.clear(began).await?;
    let told = bus::publish_resync(registry, origin, threshold).await;
    Ok((removed, told.err()))
}

/// The upper bound of the window after a short cleanup: every node writes
/// back what is missing at each heartbeat, also if it did not hear that it
/// should at once.
pub(crate) fn write_back_within(heartbeat: Duration) -> Duration {
    heartbeat * 2 + Duration::from_secs(2)
}

/// How long a one-tab send waits for the nodes to write their streams back
/// when it finds its user without a record during a window
/// ([`StoreError::Resyncing`]) before answering 503.
const RESYNC_WAIT: Duration = Duration::from_secs(10);

impl RedisStore {
    /// Starts the presence task, the appender (history on), the Sentinel
    /// follower and the bus subscriber; returns once the subscription is
    /// up (a message published for one of our streams must find us
    /// listening), or fails after `redis.connect_timeout_secs`.
    pub(crate) async fn open(redis: SharedConn, o: Open<'_>) -> Result<Arc<RedisStore>> {
        let config = o.config;
        let layout = layout(config);
        let sharded = layout.sharded();
        let keys = layout.home().clone();
        let registry = Redis::new(redis.clone(), layout.clone(), config.topics.join_leave);
        let node_keys = keys.clone();
        let target = config
            .redis_target()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let origin = format!("{}/{}", config.node_id(), uuid::Uuid::new_v4().simple());
        let (presence, presence_task) = presence::spawn_parts(
            registry.clone(),
            o.link.clone(),
            o.metrics.clone(),
            config.node_id(),
            config.history.ttl_secs,
        );
        let history = config
            .history
            .enabled
            .then(|| History::new(redis.clone(), layout, origin.clone()));
        let appender = history.as_ref().map(|h| {
            let (appender, task) = Appender::new(h.clone(), o.shutdown.clone());
            o.tasks.spawn(task);
            appender
        });
        let recent: Recent = Arc::new(std::sync::Mutex::new(RecentIds::new(bus::RECENT_KEEP)));
        let (up, bus_up) = watch::channel(false);
        o.tasks
            .spawn(redis.follow(target.clone(), Duration::from_secs(1), o.shutdown.clone()));
        o.tasks.spawn(presence_task.run());
        let cluster = match &target {
            RedisTarget::Cluster { seeds, userinfo } => Some((seeds.clone(), userinfo.clone())),
            _ => None,
        };
        let subscriber = bus::Subscriber {
            target,
            registry: registry.clone(),
            node_bus: node_keys.node_bus(&config.node_id()),
            origin: origin.clone(),
            link: o.link.clone(),
            presence: presence.clone(),
            metrics: o.metrics.clone(),
            heartbeat: config.heartbeat_interval(),
            up,
            shutdown: o.shutdown.clone(),
            history: history
                .clone()
                .map(|h| (h, config.history.size, config.history.ttl_secs)),
            recent,
        };
        let hearing = match &cluster {
            Some((seeds, userinfo)) => {
                // The node's own and the shared channel of every
                // partition, and the home's shared one.
                let node_id = config.node_id();
                let channels: Vec<String> = std::iter::once(node_keys.bus())
                    .chain(
                        registry
                            .layout()
                            .parts()
                            .iter()
                            .flat_map(|k| [k.bus(), k.node_bus(&node_id)]),
                    )
                    .collect();
                let channels_count = channels.len();
                let (tx, rx) = tokio::sync::mpsc::channel(4096);
                // A client name holds no spaces.
                let name: String = format!("sse-notify:{node_id}")
                    .chars()
                    .map(|c| if c.is_ascii_graphic() { c } else { '_' })
                    .collect();
                let sharded = sharded::spawn(
                    sharded::Cluster {
                        seeds: seeds.clone(),
                        userinfo: userinfo.clone(),
                        name,
                    },
                    channels,
                    tx,
                    o.shutdown.clone(),
                    o.tasks,
                );
                o.tasks.spawn(subscriber.run_sharded(sharded.clone(), rx));
                Some(Hearing {
                    sharded,
                    node_id,
                    channels: channels_count,
                })
            }
            None => {
                o.tasks.spawn(subscriber.run());
                None
            }
        };
        let mut waiting = bus_up.clone();
        let within = Duration::from_secs(config.redis.connect_timeout_secs);
        if tokio::time::timeout(within, waiting.wait_for(|up| *up))
            .await
            .is_err()
        {
            return Err(StoreError::Unavailable(
                "could not subscribe to the bus within redis.connect_timeout_secs".into(),
            ));
        }
        Ok(Arc::new(RedisStore {
            registry,
            presence,
            appender,
            history,
            link: o.link,
            origin,
            bus_up,
            hearing,
            metrics: o.metrics,
            unkept: bus::unkept_script(sharded),
            heartbeat: config.heartbeat_interval(),
        }))
    }

    pub(crate) async fn register(&self, record: ConnectionRecord) -> Result<usize> {
        self.presence.register(record).await
    }

    pub(crate) fn remove(&self, connection_id: String, wrote: Option<Wrote>) {
        self.presence.remove(connection_id, wrote);
    }

    pub(crate) fn heartbeat(&self) {
        self.presence.heartbeat();
    }

    /// Deaf to the bus, this node could give its streams a message before
    /// older ones it has not heard yet: refuse until it caught up. On a
    /// cluster, only the channels the messages travel on count: a user's
    /// message needs its partition's, a broadcast the home's, a topic's
    /// the home's with history on, else every partition's.
    fn ready(&self, msgs: &[Message]) -> Result<()> {
        let Some(hearing) = &self.hearing else {
            return if *self.bus_up.borrow() {
                Ok(())
            } else {
                Err(StoreError::BusDown)
            };
        };
        let layout = self.registry.layout();
        let hears = |k: &Keys| {
            hearing.sharded.hears(&k.bus()) && hearing.sharded.hears(&k.node_bus(&hearing.node_id))
        };
        let ready = msgs.iter().all(|m| match m.route() {
            Route::User(user) | Route::FirstOnly(user) => hears(layout.of_user(user)),
            Route::Broadcast => hearing.sharded.hears(&layout.home().bus()),
            // Kept in the home, a topic's message travels on its channel.
            Route::Topic(_) if self.history.is_some() => {
                hearing.sharded.hears(&layout.home().bus())
            }
            Route::Topic(_) => hearing.sharded.deaf_to() == 0,
        });
        if ready {
            Ok(())
        } else {
            Err(StoreError::BusDown)
        }
    }

    /// With history on, each message is kept, its targets read and it is
    /// published to the nodes that hold them (a broadcast to every node)
    /// in one script call (a single send shares its call with concurrent
    /// sends; a batch is one call), and each of those nodes, this one too,
    /// delivers it from the bus. With history off, the targets of the batch
    /// are read and the other nodes told in one script call (if Redis
    /// fails, nothing is delivered and a retry cannot duplicate), then this
    /// node's streams served.
    ///
    /// A one-tab message that finds its user without a record while the
    /// nodes write their streams back (after a clear, a short cleanup,
    /// Redis losing its data) waits until they did: its tab may be live,
    /// and kept for "the first tab back" it would never reach it.
    pub(crate) async fn send(
        &self,
        msgs: Vec<Message>,
        history: &HistoryConfig,
    ) -> Result<Vec<Accepted>> {
        // Only a one-tab message can be refused so: the others are not
        // copied for a retry.
        if !msgs.iter().any(|m| m.first_only) {
            return self.send_once(msgs, history).await;
        }
        let deadline = tokio::time::Instant::now() + RESYNC_WAIT;
        let mut pause = Duration::from_millis(10);
        loop {
            match self.send_once(msgs.clone(), history).await {
                Err(StoreError::Resyncing) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                r => return r,
            }
        }
    }

    async fn send_once(
        &self,
        msgs: Vec<Message>,
        history: &HistoryConfig,
    ) -> Result<Vec<Accepted>> {
        self.ready(&msgs)?;
        let (Some(appender), Some(keeper)) = (&self.appender, &self.history) else {
            return self.send_unkept(msgs).await;
        };
        let taken = match <[Message; 1]>::try_from(msgs) {
            Ok([one]) => vec![appender.append(one, history.size, history.ttl_secs).await?],
            Err(msgs) => keeper.append(&msgs, history.size, history.ttl_secs).await?,
        };
        Ok(taken
            .into_iter()
            .map(|(id, targets)| Accepted {
                id,
                connections: match targets {
                    Targets::Ids(ids) => ids.len(),
                    Targets::Count(n) => n,
                },
            })
            .collect())
    }

    async fn send_unkept(&self, msgs: Vec<Message>) -> Result<Vec<Accepted>> {
        let ids: Vec<String> = msgs
            .iter()
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect();
        // Other nodes are told first (in the same call that reads the
        // targets): if Redis fails, nothing is delivered.
        let targets =
            bus::publish_unkept(&self.registry, &self.unkept, &self.origin, &msgs, &ids).await?;
        let mut out = Vec::with_capacity(msgs.len());
        for ((m, (conns, count)), id) in msgs.into_iter().zip(targets).zip(ids) {
            // Every local tab of the user, also one whose record is still
            // being written or was lost with a Redis restart.
            let target = m.route().target(conns);
            self.link.receive(Inbound::Deliver {
                id: id.clone(),
                event: m.event,
                data: m.data,
                target,
            });
            out.push(Accepted {
                id,
                connections: count,
            });
        }
        Ok(out)
    }

    pub(crate) async fn replay(
        &self,
        conn: &LiveConn,
        last: Option<MsgId>,
        history: &HistoryConfig,
    ) -> Result<Replay> {
        match &self.history {
            Some(h) => h.replay(conn, last, history.size, history.ttl_secs).await,
            None => Ok(Replay::default()),
        }
    }

    /// Ids are pairs ([`crate::store::Pos`]): a cluster with history on.
    pub(crate) fn pairs(&self) -> bool {
        self.history.as_ref().is_some_and(History::pairs)
    }

    /// [`RedisStore::replay`] where ids are pairs (`last`: `None` for an
    /// id that is none).
    pub(crate) async fn replay_pair(
        &self,
        conn: &LiveConn,
        last: Option<crate::store::Pos>,
        history: &HistoryConfig,
    ) -> Result<Replay> {
        match &self.history {
            Some(h) => {
                h.replay_pair(conn, last, history.size, history.ttl_secs)
                    .await
            }
            None => Ok(Replay::default()),
        }
    }

    /// Where ids are pairs: where a stream without `Last-Event-ID` starts.
    pub(crate) async fn tops(&self, conn: &LiveConn) -> Result<crate::store::Pos> {
        match &self.history {
            Some(h) => h.tops(conn).await,
            None => Err(StoreError::Unavailable("no history is kept".into())),
        }
    }

    /// Removes the records first (in `user`'s partition), then closes the
    /// streams: the ones held here directly, the others through the bus.
    pub(crate) async fn evict(&self, user: &str, ids: Vec<String>, reason: &str) -> Result<()> {
        self.registry.remove_of(user, &ids).await?;
        let (local, remote): (Vec<String>, Vec<String>) =
            ids.into_iter().partition(|id| self.link.holds(id));
        if !remote.is_empty() {
            let close = BusEvent::Close {
                origin: self.origin.clone(),
                ids: remote,
                reason: Some(reason.to_string()),
            };
            bus::publish(&self.registry, &close).await?;
        }
        if !local.is_empty() {
            self.link.receive(Inbound::Close {
                ids: local,
                reason: Some(reason.to_string()),
            });
        }
        Ok(())
    }

    pub(crate) async fn disconnect_user(&self, username: &str) -> Result<Removed> {
        // What exists now is what this request removes, even the records
        // that the other nodes' closing streams remove before our delete.
        let before = self.registry.user_connection_ids(username, None).await?;
        // Other nodes are told first: if Redis fails here, nothing changed.
        let close = BusEvent::CloseUser {
            origin: self.origin.clone(),
            username: username.to_string(),
        };
        bus::publish(&self.registry, &close).await?;
        let mut removed = self.registry.delete_user(username).await?;
        for id in before {
            if !removed.connection_ids.contains(&id) {
                removed.add(id, username.to_string());
            }
        }
        self.link.receive(Inbound::CloseUser {
            username: username.to_string(),
        });
        Ok(removed)
    }

    /// Every record older than the clear goes, in bounded steps; then this
    /// node re-registers its streams and the others are told over the bus
    /// to do the same. Until they did, messages go to every node.
    pub(crate) async fn clear(&self) -> Result<Cleared> {
        let (cleared, untold) = clear(&self.registry, &self.origin).await?;
        self.presence.resync();
        if let Some(e) = untold {
            self.metrics.store_errors.inc();
            tracing::error!(error = %e, "cleared, but could not tell the other nodes to re-register");
        }
        Ok(cleared)
    }

    /// Removes the records whose heartbeat is at or before `stale_before`;
    /// see [`sweep`].
    pub(crate) async fn sweep(&self, stale_before: f64) -> Result<Removed> {
        let removed = sweep(&self.registry, stale_before, self.heartbeat, &self.origin).await?;
        // The bus skips our own event: write ours back here.
        if removes_live(stale_before, self.heartbeat) && removed.connection_count() > 0 {
            self.presence.resync();
        }
        Ok(removed)
    }

    /// `redis`, or `redis-cluster` on a Redis Cluster.
    pub(crate) fn engine(&self) -> &'static str {
        if self.registry.layout().sharded() {
            "redis-cluster"
        } else {
            "redis"
        }
    }

    /// Redis answers a PING, and this node hears the bus: a node that cannot
    /// hear it silently misses other nodes' messages.
    pub(crate) async fn health(&self) -> Health {
        Health {
            engine: self.engine(),
            redis: Some(self.registry.ping().await.map_err(|e| e.to_string())),
            bus: Some(match &self.hearing {
                None if *self.bus_up.borrow() => BusHealth::Up,
                None => BusHealth::Down,
                Some(h) => match h.sharded.deaf_to() {
                    0 => BusHealth::Up,
                    // Its own partitions' channels: every one of them.
                    n if n >= h.channels => BusHealth::Down,
                    _ => BusHealth::Partial,
                },
            }),
        }
    }

    pub(crate) async fn shutdown(&self) {
        self.presence.shutdown().await;
    }

    /// Writes this node's report; every node's, and the registry totals.
    pub(crate) async fn report_node(&self, me: &NodeStatus) -> Result<Deployment> {
        nodes::report(&self.registry, me).await
    }

    pub(crate) async fn forget_node(&self, node_id: &str) -> Result<()> {
        nodes::forget(&self.registry, node_id).await
    }
}

impl seam::Registry for RedisStore {
    async fn register(&self, record: ConnectionRecord) -> Result<usize> {
        RedisStore::register(self, record).await
    }
    fn remove(&self, connection_id: String, wrote: Option<Wrote>) {
        RedisStore::remove(self, connection_id, wrote);
    }
    fn heartbeat(&self) {
        RedisStore::heartbeat(self);
    }
    async fn user_connection_ids(&self, user: &str, limit: Option<usize>) -> Result<Vec<String>> {
        self.registry.user_connection_ids(user, limit).await
    }
    async fn user_names(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        self.registry.user_names(after, limit).await
    }
    async fn users_connections(
        &self,
        users: &[String],
    ) -> Result<Vec<(String, Vec<ConnectionRecord>)>> {
        self.registry.users_connections(users).await
    }
    async fn totals(&self) -> Result<(usize, usize)> {
        self.registry.totals().await
    }
    async fn list_user(&self, user: &str) -> Result<Vec<ConnectionRecord>> {
        self.registry.list_user(user).await
    }
    async fn clear(&self) -> Result<Cleared> {
        RedisStore::clear(self).await
    }
    async fn sweep(&self, stale_before: f64) -> Result<Removed> {
        RedisStore::sweep(self, stale_before).await
    }
    async fn topic_names(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        self.registry.topic_names(after, limit).await
    }
    async fn topic_counts(&self, topics: &[String]) -> Result<Vec<TopicCount>> {
        self.registry.topic_counts(topics).await
    }
    async fn topic_total(&self) -> Result<usize> {
        self.registry.topic_total().await
    }
    async fn topic(&self, topic: &str) -> Result<TopicPresence> {
        self.registry.topic(topic).await
    }
}

impl seam::History for RedisStore {
    async fn replay(
        &self,
        conn: &LiveConn,
        last: Option<MsgId>,
        history: &HistoryConfig,
    ) -> Result<Replay> {
        RedisStore::replay(self, conn, last, history).await
    }
}

impl seam::Delivery for RedisStore {
    /// Frames are queued when the bus brings the message back.
    const QUEUES_ON_SEND: bool = false;

    async fn send(&self, msgs: Vec<Message>, history: &HistoryConfig) -> Result<Vec<Accepted>> {
        RedisStore::send(self, msgs, history).await
    }
    async fn evict(&self, user: &str, ids: Vec<String>, reason: &str) -> Result<()> {
        RedisStore::evict(self, user, ids, reason).await
    }
    async fn disconnect_user(&self, user: &str) -> Result<Removed> {
        RedisStore::disconnect_user(self, user).await
    }
}
