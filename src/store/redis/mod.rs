//! The Redis engine: several nodes share one Redis (or a Sentinel-managed
//! primary). The registry and the kept messages are Redis keys
//! ([`keys`], scripts in `lua/`); messages and control events travel
//! between nodes on a pub/sub bus ([`bus`]); this node's streams are
//! mirrored into the registry by one task ([`presence`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::HistoryConfig;
use crate::metrics::Metrics;
use crate::store::{
    Accepted, ConnectionRecord, Health, Inbound, Message, MsgId, NodeLink, Open, Removed, Replay,
    Result, StoreError, Target,
};

mod bus;
mod conn;
mod history;
mod keys;
mod presence;
mod registry;

pub(crate) use bus::publish_resync;
pub(crate) use conn::{connect_with_retry, SharedConn};
pub(crate) use keys::Keys;
pub(crate) use registry::Registry;

use bus::BusEvent;
use history::{Appender, History, Recent, RecentIds, Targets};
use presence::Presence;

pub(crate) struct RedisStore {
    registry: Registry,
    presence: Presence,
    /// With history on: keeps messages in batches (group commit).
    appender: Option<Appender>,
    history: Option<History>,
    link: Arc<dyn NodeLink>,
    /// This process on the bus: the node id plus a random part, so that
    /// two nodes configured with the same node_id still hear each other.
    origin: String,
    /// True while this node is subscribed to the bus.
    bus_up: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
}

impl RedisStore {
    /// Starts the presence task, the appender (history on), the Sentinel
    /// follower and the bus subscriber; returns once the subscription is
    /// up (a message published for one of our streams must find us
    /// listening), or fails after `redis.connect_timeout_secs`.
    pub(crate) async fn open(redis: SharedConn, o: Open<'_>) -> Result<Arc<RedisStore>> {
        let config = o.config;
        let keys = Keys::new(&config.redis.key_prefix);
        let registry = Registry::new(redis.clone(), keys.clone());
        let target = config
            .redis_target()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let origin = format!("{}/{}", config.node_id(), uuid::Uuid::new_v4().simple());
        let (presence, presence_task) = presence::spawn_parts(
            registry.clone(),
            o.link.clone(),
            o.metrics.clone(),
            config.node_id(),
        );
        let history = config
            .history
            .enabled
            .then(|| History::new(redis.clone(), keys, origin.clone()));
        let appender = history.as_ref().map(|h| {
            let (appender, task) = Appender::new(h.clone(), o.shutdown.clone());
            o.tasks.spawn(task);
            appender
        });
        let recent: Recent = Arc::new(std::sync::Mutex::new(RecentIds::new(Duration::from_secs(
            120,
        ))));
        let (up, bus_up) = watch::channel(false);
        o.tasks.spawn(redis.follow(
            target.clone(),
            Duration::from_secs(1),
            o.shutdown.clone(),
        ));
        o.tasks.spawn(presence_task.run());
        let subscriber = bus::Subscriber {
            target,
            registry: registry.clone(),
            origin: origin.clone(),
            link: o.link.clone(),
            presence: presence.clone(),
            metrics: o.metrics.clone(),
            heartbeat: config.heartbeat_interval(),
            up,
            shutdown: o.shutdown.clone(),
            history: history.clone().map(|h| (h, config.history.size)),
            recent,
        };
        o.tasks.spawn(subscriber.run());
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
            metrics: o.metrics,
        }))
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(crate) async fn register(&self, record: ConnectionRecord) -> Result<usize> {
        self.presence.register(record).await
    }

    pub(crate) fn remove(&self, connection_id: String) {
        self.presence.remove(connection_id);
    }

    pub(crate) fn heartbeat(&self) {
        self.presence.heartbeat();
    }

    /// Deaf to the bus, this node could give its streams a message before
    /// older ones it has not heard yet: refuse until it caught up.
    pub(crate) fn ready(&self) -> Result<()> {
        if *self.bus_up.borrow() {
            Ok(())
        } else {
            Err(StoreError::BusDown)
        }
    }

    /// With history on, each message is kept, its targets read and it is
    /// published on the bus in one script call (shared with concurrent
    /// sends), and every node, this one too, delivers it from the bus. With
    /// history off, the targets are read, other nodes told over the bus
    /// first (if Redis fails, nothing is delivered and a retry cannot
    /// duplicate), then this node's streams served.
    pub(crate) async fn send(
        &self,
        msgs: Vec<Message>,
        kept: &HistoryConfig,
    ) -> Result<Vec<Accepted>> {
        self.ready()?;
        match &self.appender {
            Some(appender) => {
                let calls = msgs
                    .into_iter()
                    .map(|m| appender.append(m, kept.size, kept.ttl_secs));
                let results = futures_util::future::try_join_all(calls).await?;
                Ok(results
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
            None => {
                let mut out = Vec::with_capacity(msgs.len());
                for m in msgs {
                    out.push(self.send_unkept(m).await?);
                }
                Ok(out)
            }
        }
    }

    async fn send_unkept(&self, m: Message) -> Result<Accepted> {
        let id = uuid::Uuid::new_v4().to_string();
        let (ids, count) = match &m.to {
            Some(user) => {
                let ids = self
                    .registry
                    .user_connection_ids(user, m.first_only.then_some(1))
                    .await?;
                let n = ids.len();
                (ids, n)
            }
            None => (Vec::new(), self.registry.connection_count().await?),
        };
        let remote = match &m.to {
            Some(_) => ids.iter().any(|id| !self.link.holds(id)),
            None => count > 0,
        };
        if remote {
            let event = BusEvent::Deliver {
                origin: self.origin.clone(),
                to: m.to.clone(),
                first_only: m.first_only,
                ids: if m.first_only { ids.clone() } else { Vec::new() },
                broadcast: m.to.is_none(),
                id: id.clone(),
                event: m.event.clone(),
                data: m.data.clone(),
            };
            bus::publish(&self.registry, &event).await?;
        }
        let target = match m.to {
            // Every local tab of the user, also one whose record is still
            // being written or was lost with a Redis restart.
            Some(user) if !m.first_only => Target::User(user),
            Some(_) => Target::Ids(ids),
            None => Target::All,
        };
        self.link.receive(Inbound::Deliver {
            id: id.clone(),
            event: m.event,
            data: m.data,
            target,
        });
        Ok(Accepted {
            id,
            connections: count,
        })
    }

    pub(crate) async fn replay(
        &self,
        user: &str,
        last: Option<MsgId>,
        kept: &HistoryConfig,
    ) -> Result<Replay> {
        match &self.history {
            Some(h) => h.replay(user, last, kept.size, kept.ttl_secs).await,
            None => Ok(Replay::default()),
        }
    }

    /// Removes the records first, then closes the streams: the ones held
    /// here directly, the others through the bus.
    pub(crate) async fn evict(&self, ids: Vec<String>, reason: &str) -> Result<()> {
        self.registry.remove(&ids).await?;
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

    /// Every record goes; then this node re-registers its streams and the
    /// others are told over the bus to do the same.
    pub(crate) async fn clear(&self) -> Result<Removed> {
        let removed = self.registry.clear().await?;
        self.presence.resync();
        let resync = BusEvent::Resync {
            origin: self.origin.clone(),
        };
        if let Err(e) = bus::publish(&self.registry, &resync).await {
            self.metrics.redis_errors.inc();
            tracing::error!(error = %e, "cleared, but could not tell the other nodes to re-register");
        }
        Ok(removed)
    }

    /// Redis answers a PING, and this node hears the bus: a node that cannot
    /// hear it silently misses other nodes' messages.
    pub(crate) async fn health(&self) -> Health {
        Health {
            engine: "redis",
            redis: Some(self.registry.ping().await.map_err(|e| e.to_string())),
            bus: Some(*self.bus_up.borrow()),
        }
    }

    pub(crate) async fn shutdown(&self) {
        self.presence.shutdown().await;
    }
}
