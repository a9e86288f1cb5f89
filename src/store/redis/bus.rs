//! Messages and control events between nodes over pub/sub: a user's or a
//! topic's messages (and a topic's join/leave events) on the channels of
//! the nodes that hold its streams (`{prefix}:bus:{node_id}`, chosen by
//! `lua/route.lua` inside the sending and registry scripts), broadcasts and
//! control events on `{prefix}:bus`, which every node hears. A node subscribes to both on one connection, rebuilt with
//! backoff when it breaks: Redis delivers to a connection in publish order,
//! so the two channels together still carry a node's messages in id order.
//! What a node receives goes to its router through the [`NodeLink`]; events
//! it published itself were already applied locally and are skipped (but
//! with history on, every node, the sender too, delivers messages from the
//! bus, where they travel in id order).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::history::{bus_event_head, by_time, History, KeptIn, Recent};
use super::keys::Keys;
use super::presence::Presence;
use super::registry::Redis;
use super::route::{self, resync_window_ms, route_lua, untargeted_for_resync};
use crate::config::RedisTarget;
use crate::metrics::Metrics;
use crate::store::target::Route;
use crate::store::{
    unix_ms, Inbound, Kept, KeptFor, LiveConn, Message, MsgId, NodeLink, Result, StoreError,
    Target, UserPart,
};

/// The script of [`publish_unkept`].
pub(crate) fn unkept_script(sharded: bool) -> redis::Script {
    redis::Script::new(&format!(
        "{}\n{}",
        route_lua(sharded),
        include_str!("lua/send.lua")
    ))
}

/// With history off: reads the targets of each message and publishes it
/// to the nodes that hold them, in one round trip per partition; returns,
/// per message, its target ids (none for a broadcast) and how many there
/// are.
///
/// On a cluster a user's messages go through its partition's script as on
/// one Redis. A topic's message goes through every partition's (each
/// holds the followers among its users, and publishes it to their nodes
/// marked with the partition, so that a node holding followers of several
/// partitions gives it to each stream once), and a broadcast is counted on
/// every partition and published once on the channel every node hears.
pub(crate) async fn publish_unkept(
    registry: &Redis,
    script: &redis::Script,
    origin: &str,
    msgs: &[Message],
    ids: &[String],
) -> Result<Vec<(Vec<String>, usize)>> {
    let layout = registry.layout();
    if let [keys] = layout.parts() {
        let all: Vec<(usize, Option<usize>)> = (0..msgs.len()).map(|i| (i, None)).collect();
        return publish_unkept_in(registry, keys, script, origin, msgs, ids, &all).await;
    }
    let mut by_part: std::collections::BTreeMap<usize, Vec<(usize, Option<usize>)>> =
        Default::default();
    let mut broadcasts = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        match m.route() {
            Route::FirstOnly(user) | Route::User(user) => by_part
                .entry(layout.index_of(user))
                .or_default()
                .push((i, None)),
            Route::Topic(_) => {
                for part in 0..layout.parts().len() {
                    by_part.entry(part).or_default().push((i, Some(part)));
                }
            }
            Route::Broadcast => broadcasts.push(i),
        }
    }
    let sent =
        futures_util::future::try_join_all(by_part.into_iter().map(|(part, items)| async move {
            let keys = &layout.parts()[part];
            let rows = publish_unkept_in(registry, keys, script, origin, msgs, ids, &items).await?;
            Ok::<_, StoreError>(
                items
                    .into_iter()
                    .map(|(i, _)| i)
                    .zip(rows)
                    .collect::<Vec<_>>(),
            )
        }))
        .await?;
    let mut out: Vec<(Vec<String>, usize)> = vec![(Vec::new(), 0); msgs.len()];
    for (i, (targets, count)) in sent.into_iter().flatten() {
        out[i].0.extend(targets);
        out[i].1 += count;
    }
    for i in broadcasts {
        let count = count_everywhere(registry).await?;
        if count > 0 {
            let event = format!(
                "[{},\"id\":\"{}\"}}]",
                bus_event_head(origin, &msgs[i]),
                ids[i]
            );
            publish_on(registry, registry.keys().bus(), event).await?;
        }
        out[i].1 = count;
    }
    Ok(out)
}

/// How many connections a broadcast reaches, summed over the partitions.
async fn count_everywhere(registry: &Redis) -> Result<usize> {
    let counts = futures_util::future::try_join_all(registry.layout().parts().iter().map(|k| {
        let key = k.heartbeats();
        let mut conn = registry.connection();
        super::conn::bounded(Duration::from_secs(5), async move {
            conn.zcard::<_, usize>(key).await
        })
    }))
    .await?;
    Ok(counts.into_iter().sum())
}

/// [`publish_unkept`] in one partition, one script call: the messages
/// `items` names (by index), each with the partition to mark its bus
/// event with (a topic's, on a cluster).
async fn publish_unkept_in(
    registry: &Redis,
    keys: &Keys,
    script: &redis::Script,
    origin: &str,
    msgs: &[Message],
    ids: &[String],
    items: &[(usize, Option<usize>)],
) -> Result<Vec<(Vec<String>, usize)>> {
    let mut inv = script.prepare_invoke();
    inv.key(keys.resyncing())
        .key(keys.registry_since())
        .key(keys.synced())
        .arg(keys.bus())
        .arg(keys.conn_prefix())
        .arg(resync_window_ms());
    for &(i, part) in items {
        let m = &msgs[i];
        let route = m.route();
        match route {
            Route::FirstOnly(user) | Route::User(user) => inv.key(keys.user(user)),
            Route::Broadcast => inv.key(keys.heartbeats()),
            Route::Topic(topic) => inv.key(keys.topic(topic)).key(keys.topic_nodes(topic)),
        };
        let mut head = bus_event_head(origin, m);
        if let Some(part) = part {
            head.push_str(&format!(",\"part\":{part}"));
        }
        inv.arg(route.script_name()).arg(&ids[i]).arg(head);
    }
    let mut conn = registry.connection();
    let rows: Vec<Vec<redis::Value>> = super::conn::bounded(Duration::from_secs(5), async move {
        inv.invoke_async(&mut conn).await
    })
    .await?;
    let bad = |e: redis::ParsingError| StoreError::Unavailable(format!("redis answer: {e}"));
    rows.into_iter()
        .zip(items)
        .map(|(row, &(i, _))| {
            let m = &msgs[i];
            let mut it = row.into_iter();
            let count: usize = match it.next() {
                Some(v) => redis::from_redis_value(v).map_err(bad)?,
                None => 0,
            };
            let ids = if m.to.is_some() {
                it.map(|v| redis::from_redis_value(v).map_err(bad))
                    .collect::<Result<Vec<String>>>()?
            } else {
                Vec::new()
            };
            Ok((ids, count))
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum BusEvent {
    /// The registry was cleared (or a cleanup may have removed live
    /// records): write your live connections back now. `threshold`: unix
    /// ms after which a write-back counts (route.lua's window).
    Resync {
        origin: String,
        #[serde(default)]
        threshold: u64,
    },
    /// A message for connections held by other nodes: every connection
    /// of `to` (each node delivers to those it holds), only `ids` when
    /// `first_only`, every follower of `topic`, or every connection when
    /// `broadcast`. `data` is the compact JSON text.
    Deliver {
        origin: String,
        #[serde(default)]
        to: Option<String>,
        #[serde(default)]
        topic: Option<String>,
        #[serde(default)]
        first_only: bool,
        #[serde(default)]
        ids: Vec<String>,
        /// On a cluster, a topic's message from one partition: for the
        /// followers among that partition's users.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        part: Option<usize>,
        broadcast: bool,
        id: String,
        event: String,
        data: String,
    },
    /// Close these connections; with a reason, an `evicted` notice first.
    Close {
        origin: String,
        ids: Vec<String>,
        reason: Option<String>,
    },
    /// Close every stream of a user (logout).
    CloseUser { origin: String, username: String },
    /// A node's probe of its own subscription; others ignore it.
    Probe { origin: String },
    /// A stream following `topic` opened (`join`) or closed (`leave`),
    /// with `[topics] join_leave`: published by the registry scripts to the
    /// nodes holding the topic's followers (no node's own: `origin` empty).
    Presence {
        #[serde(default)]
        origin: String,
        event: String,
        topic: String,
        connection_id: String,
        username: String,
    },
}

impl BusEvent {
    fn origin(&self) -> &str {
        match self {
            BusEvent::Resync { origin, .. }
            | BusEvent::Deliver { origin, .. }
            | BusEvent::Close { origin, .. }
            | BusEvent::CloseUser { origin, .. }
            | BusEvent::Probe { origin }
            | BusEvent::Presence { origin, .. } => origin,
        }
    }
}

/// Applies an event from the bus to this node; returns how many local
/// streams took a message (0 for the other events).
/// `parts`: how many partitions users are spread over (1 but on a
/// cluster); `pairs`: ids come from a sequence per partition and the
/// home's (a cluster with history on).
fn apply(
    event: BusEvent,
    link: &dyn NodeLink,
    presence: &Presence,
    recent: &Recent,
    parts: usize,
    pairs: bool,
) -> usize {
    match event {
        BusEvent::Resync { .. } => {
            presence.resync();
            0
        }
        BusEvent::Deliver {
            to,
            topic,
            first_only,
            ids,
            part,
            broadcast,
            id,
            event,
            data,
            ..
        } => {
            // A catch-up may have delivered it already.
            let seq = sequence_of(to.as_deref(), parts, pairs);
            if let Ok(parsed) = id.parse() {
                let mut recent = recent.lock().unwrap_or_else(|e| e.into_inner());
                if recent.contains(&(seq, parsed)) {
                    return 0;
                }
                recent.insert((seq, parsed));
            }
            let id = match (pairs, seq) {
                (false, _) => id,
                (true, HOME) => format!(".{id}"),
                (true, _) => format!("{id}."),
            };
            let target = match Route::on_bus(broadcast, to.as_deref(), first_only, topic.as_deref())
            {
                Some(route) => match (route.target(ids), part) {
                    (Target::Topic(topic), Some(index)) => Target::TopicIn(
                        topic,
                        UserPart {
                            index,
                            count: parts,
                        },
                    ),
                    (target, _) => target,
                },
                None => Target::Ids(ids),
            };
            link.receive(Inbound::Deliver {
                id,
                event,
                data,
                target,
            })
        }
        BusEvent::Close { ids, reason, .. } => link.receive(Inbound::Close { ids, reason }),
        BusEvent::CloseUser { username, .. } => link.receive(Inbound::CloseUser { username }),
        BusEvent::Probe { .. } => 0,
        BusEvent::Presence {
            event,
            topic,
            connection_id,
            username,
            ..
        } => {
            let event = match event.as_str() {
                "join" => "join",
                "leave" => "leave",
                _ => return 0,
            };
            let data = serde_json::json!({
                "topic": topic,
                "username": username,
                "connection_id": connection_id,
            });
            link.receive(Inbound::Presence {
                topic,
                except: connection_id,
                event,
                data: data.to_string(),
            })
        }
    }
}

/// The sequence a message's id comes from, as [`Recent`] tells ids apart:
/// with `pairs` its user's partition's, or the home's ([`HOME`]) for a
/// broadcast's or a topic's; else the one sequence (0).
fn sequence_of(to: Option<&str>, parts: usize, pairs: bool) -> usize {
    match (pairs, to) {
        (false, _) => 0,
        (true, Some(user)) => crate::store::partition_of(user, parts),
        (true, None) => HOME,
    }
}

/// [`sequence_of`] the home.
const HOME: usize = usize::MAX;

/// On a cluster, the marker of each part's life in Redis as last seen:
/// each partition's `registry_since` (set by the scripts that find it
/// missing) and the home's (set here). A marker that was there and is
/// gone or different when a part's channel is subscribed again means its
/// primary lost its data (restarted empty, no replica taking over), and
/// with it messages it took but had not yet published.
#[derive(Default)]
struct Markers {
    seen: std::collections::HashMap<usize, String>,
}

impl Markers {
    fn key(registry: &Redis, part: usize) -> String {
        match part {
            HOME => registry.layout().home().registry_since(),
            p => registry.layout().parts()[p].registry_since(),
        }
    }

    async fn get(registry: &Redis, part: usize) -> Option<String> {
        let key = Self::key(registry, part);
        let mut conn = registry.connection();
        let home = part == HOME;
        super::conn::bounded(Duration::from_secs(1), async move {
            if home {
                // Nothing else keeps it: its first reader does.
                let _: () = redis::cmd("SET")
                    .arg(&key)
                    .arg(unix_ms())
                    .arg("NX")
                    .query_async(&mut conn)
                    .await?;
            }
            conn.get::<_, Option<String>>(&key).await
        })
        .await
        .ok()
        .flatten()
    }

    /// Reads the markers not seen yet (a partition no script wrote to
    /// yet), all at once.
    async fn read_unknown(&mut self, registry: &Redis) {
        let parts = registry.layout().parts().len();
        let unknown: Vec<usize> = (0..parts)
            .chain([HOME])
            .filter(|part| !self.seen.contains_key(part))
            .collect();
        let read = futures_util::future::join_all(
            unknown
                .iter()
                .map(|&part| async move { (part, Self::get(registry, part).await) }),
        )
        .await;
        for (part, now) in read {
            if let Some(now) = now {
                self.seen.insert(part, now);
            }
        }
    }

    /// Whether a marker of `scope` seen before is gone or different now
    /// (and remembers the new one).
    async fn changed(&mut self, registry: &Redis, scope: Scope) -> bool {
        let part = match scope {
            Scope::Part(p) => p,
            Scope::Home => HOME,
            Scope::All => return false,
        };
        let now = Self::get(registry, part).await;
        let before = match &now {
            Some(now) => self.seen.insert(part, now.clone()),
            None => self.seen.remove(&part),
        };
        before.is_some_and(|before| Some(&before) != now.as_ref())
    }
}

/// Which kept messages a catch-up reads: what travels on the channels
/// that were lost.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scope {
    /// Everything (one Redis: one subscription carries it all).
    All,
    /// One partition's users' messages (a cluster).
    Part(usize),
    /// The broadcasts and the topics' messages (a cluster).
    Home,
}

/// One bus payload: an event, or a JSON array of them (a batch of kept
/// messages, in id order, from the history script).
fn decode(payload: &[u8]) -> serde_json::Result<Vec<BusEvent>> {
    if payload.first() == Some(&b'[') {
        serde_json::from_slice(payload)
    } else {
        serde_json::from_slice(payload).map(|e| vec![e])
    }
}

/// Tells every running node to write its live connections back now, after
/// a removal that may have taken live records: a write-back after
/// `threshold` (unix ms) counts for the window ([`super::route`]).
pub(crate) async fn publish_resync(registry: &Redis, origin: &str, threshold: u64) -> Result<()> {
    publish(
        registry,
        &BusEvent::Resync {
            origin: origin.to_string(),
            threshold,
        },
    )
    .await
}

/// Publishes a control event to every node. Closes (logout, eviction) go
/// there too: they are rare, and a close must also find a stream of the
/// user whose record is still being written on a node not yet in the
/// registry.
pub(crate) async fn publish(registry: &Redis, event: &BusEvent) -> Result<()> {
    let payload = serde_json::to_string(event).unwrap_or_default();
    publish_on(registry, registry.keys().bus(), payload).await
}

async fn publish_on(registry: &Redis, channel: String, payload: String) -> Result<()> {
    let mut conn = registry.connection();
    let sharded = registry.layout().sharded();
    tokio::time::timeout(Duration::from_secs(5), async move {
        if sharded {
            conn.spublish::<_, _, ()>(channel, payload).await
        } else {
            conn.publish::<_, _, ()>(channel, payload).await
        }
    })
    .await
    .map_err(|_| StoreError::Timeout(Duration::from_secs(5)))?
    .map_err(StoreError::from)
}

/// How far before the last sign of life of a lost subscription a catch-up
/// starts reading the history (clock skew between nodes and Redis).
const CATCH_UP_MARGIN_MS: u64 = 2000;

/// The same on a cluster, counted back from when a channel was noticed
/// lost: a primary that died is noticed once its replica took over
/// (`cluster-node-timeout` and the election later), and what it published
/// just before may be kept on the replica. Within [`RECENT_KEEP`], so what
/// was delivered is still known.
const CLUSTER_CATCH_UP_MARGIN_MS: u64 = 60_000;

/// How long a node remembers the ids it delivered ([`Recent`]).
pub(super) const RECENT_KEEP: Duration = Duration::from_secs(120);

/// How often a node sends itself a probe through the bus, and how many
/// probes may go missing before the subscription is declared dead.
fn probe_interval(heartbeat: Duration) -> Duration {
    heartbeat.clamp(Duration::from_millis(500), Duration::from_secs(5))
}
const PROBES_MISSED: u32 = 3;

/// What the bus subscriber needs.
pub(crate) struct Subscriber {
    pub(super) target: RedisTarget,
    pub(super) registry: Redis,
    /// This node's own channel (`{prefix}:bus:{node_id}`).
    pub(super) node_bus: String,
    /// This process on the bus: what marks our own events.
    pub(super) origin: String,
    pub(super) link: Arc<dyn NodeLink>,
    pub(super) presence: Presence,
    pub(super) metrics: Arc<Metrics>,
    pub(super) heartbeat: Duration,
    pub(super) up: watch::Sender<bool>,
    pub(super) shutdown: CancellationToken,
    /// With history on (with its size and age kept): catch up on what was
    /// published while the subscription was down.
    pub(super) history: Option<(History, u64, u64)>,
    pub(super) recent: Recent,
}

impl Subscriber {
    /// Keeps this node subscribed until shutdown and applies what arrives.
    ///
    /// A subscription can die without its socket noticing (a failover, a
    /// proxy, `CLIENT KILL TYPE pubsub`), so the node sends itself a probe
    /// through the bus every interval; when its probes stop coming back the
    /// subscription is rebuilt. After every resubscription the node
    /// re-registers its connections: a clear may have been announced while
    /// it was not listening.
    pub(crate) async fn run(self) {
        let mut delay = Duration::from_millis(100);
        let mut failures = crate::throttle::LogThrottle::new(Duration::from_secs(10));
        let mut first = true;
        let mut last_heard_ms = unix_ms();
        // The registry marker as last seen: if it changes, Redis lost its
        // data, and with it what it had not yet handed to us.
        let mut marker: Option<String> = None;
        loop {
            let attempt = async {
                let client = super::conn::client(&self.target).await?;
                let mut pubsub = client.get_async_pubsub().await?;
                // One connection for both: Redis keeps their publish order.
                pubsub
                    .subscribe(&[self.registry.keys().bus(), self.node_bus.clone()])
                    .await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = tokio::time::timeout(Duration::from_secs(5), attempt) => r,
            };
            match pubsub {
                Ok(Ok(pubsub)) => {
                    delay = Duration::from_millis(100);
                    self.notice_lost_data(&mut marker).await;
                    if !first {
                        // In this order: our records are back (so senders
                        // target our streams again), then what was published
                        // while we were deaf is delivered in id order, and
                        // only then live messages (buffered meanwhile) and
                        // our own sends, which wait for `up`. A stream
                        // never gets an id older than one it already has.
                        tracing::info!("bus resubscribed; re-registering live connections");
                        self.metrics.bus_resubscribes.inc();
                        self.presence.resync_and_wait().await;
                        self.catch_up(last_heard_ms.saturating_sub(CATCH_UP_MARGIN_MS), Scope::All)
                            .await;
                    }
                    self.set_up(true);
                    first = false;
                    if self.listen(pubsub, &mut last_heard_ms).await.is_break() {
                        return;
                    }
                    self.set_up(false);
                }
                Ok(Err(e)) => {
                    self.metrics.store_errors.inc();
                    if let Some(suppressed) = failures.allow() {
                        tracing::error!(error = %e, suppressed, "bus subscribe failed; retrying");
                    }
                }
                Err(_) => {
                    self.metrics.store_errors.inc();
                    if let Some(suppressed) = failures.allow() {
                        tracing::error!(suppressed, "bus subscribe timed out; retrying");
                    }
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            // Short: until we are back, this node refuses sends and other
            // nodes' messages for our streams wait in the history.
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// On a Redis Cluster: keeps `channels` (the node's own and the shared
    /// one of every partition, and the home's shared one) subscribed
    /// through [`super::sharded`], which subscribes one slot per command
    /// on a connection of its own per primary and follows slot moves and
    /// failovers, and applies what arrives. Each time channels were
    /// subscribed again, this node writes its streams back: a clear may
    /// have been announced while one was down. No probes: the subscriber
    /// watches its connections and the topology itself. With history on,
    /// a channel subscribed again is caught up on (what was kept of its
    /// partition's users' messages, or the broadcasts and topics') before
    /// anything the new subscription brings.
    pub(crate) async fn run_sharded(
        self,
        sharded: super::sharded::Sharded,
        mut rx: tokio::sync::mpsc::Receiver<super::sharded::ShardMessage>,
    ) {
        let mut up = sharded.up();
        let mut redone = 0;
        let mut markers = Markers::default();
        let mut ticks: u64 = 0;
        if self.history.is_some() {
            markers.read_unknown(&self.registry).await;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                changed = up.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = *up.borrow_and_update();
                    self.count_redone(&sharded, &mut redone);
                    self.set_up(now);
                }
                _ = tick.tick() => {
                    self.count_redone(&sharded, &mut redone);
                    ticks += 1;
                    // Only while every primary answers: the reads hold up
                    // this loop, which delivers too.
                    if self.history.is_some() && ticks.is_multiple_of(10) && sharded.deaf_to() == 0 {
                        markers.read_unknown(&self.registry).await;
                    }
                }
                msg = rx.recv() => match msg {
                    None => return,
                    Some(super::sharded::ShardMessage::Message { payload, .. }) => {
                        match decode(&payload) {
                            Ok(events) => {
                                self.on_events(events).await;
                            }
                            Err(e) => tracing::warn!(error = %e, "unknown bus event ignored"),
                        }
                    }
                    Some(super::sharded::ShardMessage::Resubscribed { channel, lost_at_ms }) => {
                        let scope = self.scope_of(&channel);
                        if self.history.is_some() && markers.changed(&self.registry, scope).await {
                            let streams = self.link.live_count();
                            tracing::warn!(
                                streams,
                                ?scope,
                                "a primary lost its data (restarted empty): open streams told history_gap"
                            );
                            self.link.receive(Inbound::HistoryLost);
                        }
                        // Never further back than the delivered ids are
                        // remembered: after a long outage, what came just
                        // before it was delivered then, and would be again.
                        let remembered = unix_ms()
                            .saturating_sub((RECENT_KEEP - Duration::from_secs(10)).as_millis() as u64);
                        let since = lost_at_ms
                            .saturating_sub(CLUSTER_CATCH_UP_MARGIN_MS)
                            .max(remembered);
                        self.catch_up(since, scope).await;
                    }
                },
            }
        }
    }

    /// What a cluster's channel carries: a partition's users' messages, or
    /// the home's broadcasts and topics.
    fn scope_of(&self, channel: &str) -> Scope {
        let layout = self.registry.layout();
        layout
            .parts()
            .iter()
            .position(|k| {
                let bus = k.bus();
                channel
                    .strip_prefix(&bus)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'))
            })
            .map_or(Scope::Home, Scope::Part)
    }

    /// Counts the subscriptions the sharded subscriber redid since last
    /// seen (`redone`) and, when there are new ones, writes this node's
    /// streams back.
    fn count_redone(&self, sharded: &super::sharded::Sharded, redone: &mut u64) {
        let now = sharded.resubscriptions();
        if now > *redone {
            self.metrics.bus_resubscribes.inc_by(now - *redone);
            tracing::info!(
                channels = now - *redone,
                slot_moves = sharded.unsubscribed_by_redis(),
                slot_map_changes = sharded.topology_changes(),
                "bus channels subscribed again; re-registering live connections"
            );
            *redone = now;
            self.presence.resync();
        }
    }

    /// Delivers what the history kept since `since_ms` and this node did not
    /// deliver, to the local connections that were open when it was sent:
    /// messages published while the subscription was down would otherwise
    /// be lost for streams that never reconnect. A one-tab message goes to
    /// its target if held here (or, kept for the first tab back, to the
    /// user's oldest stream here), once claimed: a tab's replay on another
    /// node may have given it already. A topic's goes to its followers.
    /// `scope`: on a cluster, what the lost channels carried.
    async fn catch_up(&self, since_ms: u64, scope: Scope) {
        let Some((history, size, ttl_secs)) = &self.history else {
            return;
        };
        let layout = self.registry.layout();
        let parts = layout.parts().len();
        let pairs = history.pairs();
        let conns = self.link.live();
        let mut users: Vec<String> = conns
            .iter()
            .map(|c| c.username.clone())
            .filter(|u| match scope {
                Scope::All => true,
                Scope::Part(p) => layout.index_of(u) == p,
                Scope::Home => false,
            })
            .collect();
        users.sort();
        users.dedup();
        let home = matches!(scope, Scope::All | Scope::Home);
        let mut topics: Vec<String> = if home {
            conns.iter().flat_map(|c| c.topics.clone()).collect()
        } else {
            Vec::new()
        };
        topics.sort();
        topics.dedup();
        let kept = match history.since(&users, &topics, home, since_ms, *size).await {
            Ok(kept) => kept,
            Err(e) => {
                self.metrics.store_errors.inc();
                tracing::error!(error = %e, "bus catch-up: history unreadable");
                return;
            }
        };
        let open_then = |c: &LiveConn, k: &Kept| (c.connection_time * 1000.0) as u64 <= k.id.ms;
        let sequence = |from: &KeptIn| match from {
            KeptIn::User(u) => sequence_of(Some(u), parts, pairs),
            _ => sequence_of(None, parts, pairs),
        };
        // One list in id order: a stream gets its missed messages, its
        // topics' and the broadcasts interleaved as they were sent.
        let mut all: Vec<(KeptIn, Kept, Option<String>)> = {
            let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            kept.into_iter()
                .flat_map(|(from, entries)| entries.into_iter().map(move |k| (from.clone(), k)))
                .filter(|(from, k)| !recent.contains(&(sequence(from), k.id)))
                .map(|(from, k)| {
                    let tab = match (&k.to, &from) {
                        (KeptFor::Tab(c), _) => conns
                            .iter()
                            .any(|x| &x.connection_id == c)
                            .then(|| c.clone()),
                        // `live` is in no order: the oldest by time, then id.
                        (KeptFor::FirstBack, KeptIn::User(u)) => conns
                            .iter()
                            .filter(|c| &c.username == u && open_then(c, &k))
                            .min_by(|a, b| {
                                a.connection_time
                                    .total_cmp(&b.connection_time)
                                    .then_with(|| a.connection_id.cmp(&b.connection_id))
                            })
                            .map(|c| c.connection_id.clone()),
                        _ => None,
                    };
                    (from, k, tab)
                })
                .filter(|(_, k, tab)| k.to == KeptFor::All || tab.is_some())
                .collect()
        };
        all.sort_by_key(|(_, k, _)| by_time(k));
        let wanted: Vec<(String, MsgId)> = all
            .iter()
            .filter(|(_, _, tab)| tab.is_some())
            .filter_map(|(from, k, _)| match from {
                KeptIn::User(u) => Some((u.clone(), k.id)),
                _ => None,
            })
            .collect();
        let mut claimed = match history.claim(&wanted, *ttl_secs).await {
            Ok(claimed) => claimed.into_iter(),
            Err(e) => {
                // Unclaimed, a one-tab message stays for a replay: better
                // than given twice.
                self.metrics.store_errors.inc();
                tracing::error!(error = %e, "bus catch-up: one-tab messages not claimed");
                vec![false; wanted.len()].into_iter()
            }
        };
        let mut delivered = 0;
        for (from, k, tab) in all {
            let target = match tab {
                Some(c) => {
                    if !claimed.next().unwrap_or(false) {
                        continue;
                    }
                    Target::Tab(c)
                }
                None => Target::Ids(
                    conns
                        .iter()
                        .filter(|c| match &from {
                            KeptIn::User(u) => &c.username == u,
                            KeptIn::Topic(t) => c.topics.contains(t),
                            KeptIn::Broadcasts => true,
                        })
                        .filter(|c| open_then(c, &k))
                        .map(|c| c.connection_id.clone())
                        .collect(),
                ),
            };
            self.recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((sequence(&from), k.id));
            delivered += self.link.receive(Inbound::Deliver {
                id: k.part_id(pairs).to_string(),
                event: k.event,
                data: k.data,
                target,
            });
        }
        if delivered > 0 {
            tracing::warn!(
                delivered,
                ?scope,
                "bus catch-up: delivered messages published while the subscription was down"
            );
        }
    }

    /// Reads the registry marker; when it changed since last seen, Redis
    /// lost its data: messages it took (answered 200) but had not yet
    /// published to us are gone with the history, so with history on every
    /// open stream here is told `history_gap` (a replay could not fill it
    /// either).
    async fn notice_lost_data(&self, seen: &mut Option<String>) {
        // Right after Redis came back, the shared connection's first
        // command may still fail on the old socket: a few tries.
        let mut read = Err(StoreError::BusDown);
        for _ in 0..10 {
            read = route::registry_marker(&self.registry).await;
            if read.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let lost = match read {
            Ok(now) => {
                let lost = seen.as_ref().is_some_and(|before| *before != now);
                *seen = Some(now);
                lost
            }
            Err(e) => {
                // Unknown: a gap said in vain costs a page a refresh, one
                // not said is a silent loss.
                self.metrics.store_errors.inc();
                tracing::warn!(error = %e, "registry marker unreadable; assuming Redis lost its data");
                seen.is_some()
            }
        };
        if lost && self.history.is_some() {
            let streams = self.link.live_count();
            tracing::warn!(
                streams,
                "Redis lost its data (restarted empty or flushed): open streams told history_gap"
            );
            self.link.receive(Inbound::HistoryLost);
        }
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
        self.metrics.bus_up.set(i64::from(up));
    }

    /// Applies messages until the subscription ends or stops carrying our
    /// probes (`Continue`: resubscribe) or shutdown (`Break`).
    async fn listen(
        &self,
        pubsub: redis::aio::PubSub,
        last_heard_ms: &mut u64,
    ) -> std::ops::ControlFlow<()> {
        use std::ops::ControlFlow;
        let every = probe_interval(self.heartbeat);
        let mut probe = tokio::time::interval(every);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_seen = tokio::time::Instant::now();
        let mut messages = pubsub.into_on_message();
        loop {
            let msg = tokio::select! {
                _ = self.shutdown.cancelled() => return ControlFlow::Break(()),
                _ = probe.tick() => {
                    if last_seen.elapsed() > every * PROBES_MISSED {
                        tracing::warn!(silent_ms = last_seen.elapsed().as_millis() as u64, "bus probes stopped coming back; rebuilding the subscription");
                        return ControlFlow::Continue(());
                    }
                    let probe = BusEvent::Probe { origin: self.origin.clone() };
                    // On our own channel: the one our messages travel on.
                    let payload = serde_json::to_string(&probe).unwrap_or_default();
                    if let Err(e) = publish_on(&self.registry, self.node_bus.clone(), payload).await {
                        self.metrics.store_errors.inc();
                        tracing::debug!(error = %e, "bus probe not published");
                    }
                    continue;
                }
                m = messages.next() => m,
            };
            let Some(msg) = msg else {
                tracing::warn!("bus subscription lost; resubscribing");
                return ControlFlow::Continue(());
            };
            let events = match decode(msg.get_payload_bytes()) {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "unknown bus event ignored");
                    continue;
                }
            };
            if self.on_events(events).await {
                last_seen = tokio::time::Instant::now();
                *last_heard_ms = unix_ms();
            }
        }
    }

    /// Applies what one bus payload carried; true when it held this
    /// node's own probe.
    pub(super) async fn on_events(&self, events: Vec<BusEvent>) -> bool {
        let mut probed = false;
        let parts = self.registry.layout().parts().len();
        let pairs = self.history.as_ref().is_some_and(|(h, ..)| h.pairs());
        for event in events {
            let message = matches!(event, BusEvent::Deliver { .. });
            if message {
                self.metrics.bus_messages_received.inc();
            }
            if let BusEvent::Resync { threshold, .. } = event {
                // Also when the clear came from a node or CLI that did
                // not start the window itself, and from when we heard.
                if let Err(e) = untargeted_for_resync(&self.registry, threshold).await {
                    self.metrics.store_errors.inc();
                    tracing::warn!(error = %e, "could not mark the re-registration after a clear");
                }
            }
            let took = match event {
                BusEvent::Probe { origin } => {
                    probed |= origin == self.origin;
                    0
                }
                // Our own messages come back to us only with history on:
                // then the history script publishes every message and
                // each node (this one too) delivers from the bus, in id
                // order.
                event @ BusEvent::Deliver { .. } if self.history.is_some() => apply(
                    event,
                    &*self.link,
                    &self.presence,
                    &self.recent,
                    parts,
                    pairs,
                ),
                // Delivered here directly when it was sent (history
                // off): not a message that found no stream.
                event if event.origin() == self.origin => usize::from(message),
                event => apply(
                    event,
                    &*self.link,
                    &self.presence,
                    &self.recent,
                    parts,
                    pairs,
                ),
            };
            if message && took == 0 {
                self.metrics.bus_messages_unmatched.inc();
            }
        }
        probed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script completes the head with the id (and the ids of a
    /// one-tab message); the result must be the bus's `deliver` event.
    #[test]
    fn bus_event_head_completes_into_a_deliver_event() {
        let m = Message {
            to: Some("ann \"q\" \u{2028}".into()),
            topic: None,
            first_only: true,
            event: "message".into(),
            data: r#"{"text":"a \"b\"\n","n":12345678901234567890123}"#.into(),
        };
        let json = format!(
            r#"[{},"id":"5-1","ids":["a-1","b-2"]}}]"#,
            bus_event_head("node-\"x\"", &m)
        );
        let got: Vec<BusEvent> = serde_json::from_str(&json).unwrap();
        assert_eq!(
            got,
            vec![BusEvent::Deliver {
                origin: "node-\"x\"".into(),
                to: m.to.clone(),
                topic: None,
                first_only: true,
                ids: vec!["a-1".into(), "b-2".into()],
                part: None,
                broadcast: false,
                id: "5-1".into(),
                event: m.event.clone(),
                data: m.data.clone(),
            }]
        );
        let b = Message {
            to: None,
            first_only: false,
            ..m
        };
        let json = format!(r#"{},"id":"5-2"}}"#, bus_event_head("n", &b));
        match serde_json::from_str::<BusEvent>(&json).unwrap() {
            BusEvent::Deliver { broadcast, to, .. } => assert!(broadcast && to.is_none()),
            other => panic!("{other:?}"),
        }
    }
}
