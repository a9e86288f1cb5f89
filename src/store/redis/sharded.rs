//! Sharded pub/sub on a Redis Cluster: keeps a fixed set of shard channels
//! (`SSUBSCRIBE`, Redis 7) subscribed on the primaries that serve their
//! slots and hands every message to the engine. It owns the cluster
//! topology as it last read it (`CLUSTER SLOTS`), one RESP3 connection per
//! primary that carries subscriptions and nothing else, and the counters of
//! what it redid.
//!
//! The crate's cluster connection does not do this for us
//! (README "Past one Redis primary", pinned by `tests/cluster_harness.rs`):
//! it resubscribes a
//! node's channels in one `SSUBSCRIBE`, which Redis refuses once they span
//! two slots, and tells nobody; it forgets a channel whose slot moved; it
//! hands the unrequested `sunsubscribe` of a slot move to the command in
//! flight as its answer; and it re-reads the topology only when a command
//! meets `MOVED`. Here instead:
//!
//! - one channel per `SSUBSCRIBE`, so one slot per command, and exactly one
//!   answer per command on the crate's multiplexed connection (a command
//!   naming k channels gets k confirmations, and the surplus would answer
//!   the next command);
//! - a channel counts as subscribed when its connection's push of the
//!   confirmation says so, never because a command's answer said so: an
//!   unrequested `sunsubscribe` can take that answer's place; a confirmation
//!   that never comes is asked for again;
//! - an unrequested `sunsubscribe` (the slot moved) or a lost connection
//!   makes it re-read the topology and subscribe again where the slot now
//!   lives;
//! - a timer re-reads the topology every second, so a failover that nothing
//!   of ours noticed still moves the subscriptions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::keys::slot_of;
use crate::throttle::LogThrottle;

/// How often the topology is re-read when nothing asked for it: a failover
/// shows nowhere else when no connection of ours broke.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// How long connecting to a node may take (a dead one must not hold up the
/// others long).
const CONNECT_WITHIN: Duration = Duration::from_secs(1);
/// How long a node may take to answer one command.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// How long an `SSUBSCRIBE` may stay unconfirmed before it is sent again:
/// its confirmation comes as a push, which an unrequested `sunsubscribe`
/// in flight can make the crate drop.
const CONFIRM_WITHIN: Duration = Duration::from_secs(3);
/// The first and the longest pause before trying again after a failure
/// (short: until every channel is back, the engine reports its bus down).
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The cluster to subscribe on, and who the subscriber is to it.
pub(crate) struct Cluster {
    /// A few of its nodes (`host:port`): the rest is read from them.
    pub seeds: Vec<String>,
    /// `user:password` for every node, when they need one.
    pub userinfo: Option<String>,
    /// The subscription connections' client name (`CLIENT LIST`).
    pub name: String,
}

/// What the subscriber hands the engine, in the order it came.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ShardMessage {
    /// A message on one of the channels.
    Message { channel: String, payload: Vec<u8> },
    /// `channel` is subscribed again after it was lost at `lost_at_ms`
    /// (unix ms, when the subscriber noticed): what was published on it
    /// in between did not arrive. Every message after this one on the
    /// channel was published after it was subscribed again.
    Resubscribed { channel: String, lost_at_ms: u64 },
}

/// The engine's view of the subscriber: whether every channel is
/// subscribed, and counters for its metrics. The task itself runs on the
/// tracker given to [`spawn`] until shutdown.
#[derive(Clone)]
pub(crate) struct Sharded {
    up: watch::Receiver<bool>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    resubscriptions: AtomicU64,
    topology_changes: AtomicU64,
    unsubscribed_by_redis: AtomicU64,
    /// The channels not subscribed now (all of them until the first
    /// confirmations).
    down: std::sync::RwLock<HashSet<String>>,
}

impl Sharded {
    /// True while every channel is subscribed on the primary serving its
    /// slot (confirmed by Redis); false from the start until then, and
    /// whenever one is lost, until it is back. Messages published on a
    /// channel meanwhile are not received.
    pub(crate) fn up(&self) -> watch::Receiver<bool> {
        self.up.clone()
    }

    /// Whether `channel` is subscribed now: a message published on it is
    /// received.
    pub(crate) fn hears(&self, channel: &str) -> bool {
        !self
            .counters
            .down
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(channel)
    }

    /// How many channels are not subscribed now.
    pub(crate) fn deaf_to(&self) -> usize {
        self.counters
            .down
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Subscriptions redone: channels confirmed again after they were lost
    /// (slot moved, connection dropped, failover).
    pub(crate) fn resubscriptions(&self) -> u64 {
        self.counters.resubscriptions.load(Ordering::Relaxed)
    }

    /// Re-reads of the topology that found another slot map than the one
    /// before (not counting the first read).
    pub(crate) fn topology_changes(&self) -> u64 {
        self.counters.topology_changes.load(Ordering::Relaxed)
    }

    /// Unrequested `sunsubscribe`s: Redis ended a subscription of ours
    /// because its slot moved to another primary.
    pub(crate) fn unsubscribed_by_redis(&self) -> u64 {
        self.counters.unsubscribed_by_redis.load(Ordering::Relaxed)
    }
}

/// Subscribes `channels` on the cluster reached through `seeds`
/// (`host:port`, any node of it) until `shutdown`, sending every message to
/// `messages` in the order each primary sent them. `userinfo` is the
/// `user:password` part of the configured URL as written there
/// (percent-encoded; `:password` without a user), used on every node. The
/// task runs on `tasks`; connection failures are retried (and logged), never
/// returned.
///
/// The task waits while `messages` is full: a slow engine delays the
/// re-reads of the topology too, not only its messages.
pub(crate) fn spawn(
    cluster: Cluster,
    channels: Vec<String>,
    messages: mpsc::Sender<ShardMessage>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Sharded {
    spawn_refreshing(cluster, channels, messages, shutdown, tasks, REFRESH_EVERY)
}

/// [`spawn`] with the timer's interval given (tests show that the other
/// ways of noticing a change work without it).
fn spawn_refreshing(
    cluster: Cluster,
    mut channels: Vec<String>,
    messages: mpsc::Sender<ShardMessage>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
    refresh_every: Duration,
) -> Sharded {
    channels.sort();
    channels.dedup();
    let (up_tx, up) = watch::channel(false);
    let counters = Arc::new(Counters::default());
    *counters.down.write().unwrap_or_else(|e| e.into_inner()) = channels.iter().cloned().collect();
    let (pushes_tx, pushes) = mpsc::unbounded_channel();
    let Cluster {
        seeds,
        userinfo,
        name,
    } = cluster;
    let worker = Worker {
        seeds,
        userinfo,
        name,
        channels: channels
            .into_iter()
            .map(|name| Channel {
                // Below 16384: fits.
                slot: slot_of(&name) as u16,
                name,
                state: State::Down,
                confirmed_before: false,
                lost_at_ms: 0,
            })
            .collect(),
        table: Vec::new(),
        known: Vec::new(),
        topology_conn: None,
        conns: HashMap::new(),
        next_id: 0,
        pushes_tx,
        out: messages,
        up: up_tx,
        counters: counters.clone(),
        shutdown,
        stale: true,
        retry: None,
        pause: RETRY_FIRST,
        redone: 0,
        failures: LogThrottle::new(Duration::from_secs(10)),
    };
    tasks.spawn(worker.run(pushes, refresh_every));
    Sharded { up, counters }
}

/// Where one channel's subscription stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Subscribed nowhere: not yet, or lost.
    Down,
    /// `SSUBSCRIBE` sent on connection `conn`, not yet confirmed.
    Pending { conn: u64, since: Instant },
    /// Confirmed on connection `conn`.
    Up { conn: u64 },
}

impl State {
    fn conn(self) -> Option<u64> {
        match self {
            State::Down => None,
            State::Pending { conn, .. } | State::Up { conn } => Some(conn),
        }
    }
}

struct Channel {
    name: String,
    slot: u16,
    state: State,
    /// Confirmed once already: a later confirmation is a resubscription.
    confirmed_before: bool,
    /// When it was last noticed lost (unix ms; 0: never).
    lost_at_ms: u64,
}

impl Channel {
    /// Subscribed nowhere now; when it was up, since now.
    fn lose(&mut self) {
        if matches!(self.state, State::Up { .. }) {
            self.lost_at_ms = crate::store::unix_ms();
        }
        self.state = State::Down;
    }
}

/// A subscription connection to one primary; `id` tags its pushes.
struct NodeConn {
    id: u64,
    conn: MultiplexedConnection,
}

/// The slot map: (first slot, last slot, primary's `host:port`), sorted.
pub(super) type Table = Vec<(u16, u16, String)>;

struct Worker {
    seeds: Vec<String>,
    userinfo: Option<String>,
    /// The subscription connections' client name (`sse-notify:{node_id}`).
    name: String,
    channels: Vec<Channel>,
    table: Table,
    /// Every node of the last slot map, replicas too: asked for the next
    /// one before the seeds (a replica may be the primary now, and seeds
    /// may be gone).
    known: Vec<String>,
    /// The connection the slot map was last read on, kept for the next.
    topology_conn: Option<(String, MultiplexedConnection)>,
    /// Subscription connections by node `host:port`.
    conns: HashMap<String, NodeConn>,
    next_id: u64,
    /// Every subscription connection's pushes, tagged with its id.
    pushes_tx: mpsc::UnboundedSender<(u64, PushInfo)>,
    out: mpsc::Sender<ShardMessage>,
    up: watch::Sender<bool>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
    /// Re-read the slot map before subscribing what is down.
    stale: bool,
    /// After a failure: when to try again, and the pause after that one.
    retry: Option<Instant>,
    pause: Duration,
    /// Resubscriptions since every channel was last up (for the log line
    /// saying they all are again).
    redone: u64,
    failures: LogThrottle,
}

impl Worker {
    async fn run(
        mut self,
        mut pushes: mpsc::UnboundedReceiver<(u64, PushInfo)>,
        refresh_every: Duration,
    ) {
        let mut tick = tokio::time::interval(refresh_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.shutdown.clone();
        loop {
            let retry = self.retry;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => self.stale = true,
                _ = sleep_until(retry), if retry.is_some() => {
                    self.retry = None;
                    self.stale = true;
                }
                push = pushes.recv() => {
                    // Never None: this task holds a sender.
                    let Some((conn, push)) = push else { break };
                    if self.on_push(conn, push).await.is_break() {
                        break;
                    }
                }
            }
            if self.stale {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.follow() => {}
                }
            }
            self.report_up();
        }
        // Dropping the connections closes them (and their subscriptions).
        self.conns.clear();
        self.up.send_replace(false);
    }

    /// Re-reads the slot map and subscribes every channel that is not
    /// subscribed on the primary serving its slot.
    async fn follow(&mut self) {
        self.stale = false;
        self.refresh().await;
        self.reconcile().await;
    }

    async fn refresh(&mut self) {
        let (table, known) = match self.read_table().await {
            Ok(read) => read,
            Err(e) => {
                self.failed();
                if let Some(suppressed) = self.failures.allow() {
                    tracing::warn!(error = %e, suppressed, "cluster slot map unreadable; retrying");
                }
                return;
            }
        };
        self.known = known;
        if table == self.table {
            return;
        }
        if !self.table.is_empty() {
            self.counters
                .topology_changes
                .fetch_add(1, Ordering::Relaxed);
            let moved = self
                .channels
                .iter()
                .filter(|c| owner(&self.table, c.slot) != owner(&table, c.slot))
                .count();
            tracing::info!(
                ranges = table.len(),
                channels_moved = moved,
                "cluster slot map changed"
            );
        }
        self.table = table;
    }

    /// The slot map from the first node that gives one: the one read last
    /// time, then every node known from it, then the seeds.
    async fn read_table(&mut self) -> redis::RedisResult<(Table, Vec<String>)> {
        let mut last_err = None;
        if let Some((addr, mut conn)) = self.topology_conn.take() {
            match read_slots(&mut conn, &addr).await {
                Ok(read) => {
                    self.topology_conn = Some((addr, conn));
                    return Ok(read);
                }
                Err(e) => last_err = Some(e),
            }
        }
        let mut tried = HashSet::new();
        let candidates: Vec<String> = self
            .known
            .iter()
            .chain(&self.seeds)
            .filter(|a| tried.insert(a.to_string()))
            .cloned()
            .collect();
        for addr in candidates {
            let attempt = async {
                let mut conn = connect(&addr, self.userinfo.as_deref(), None).await?;
                let read = read_slots(&mut conn, &addr).await?;
                Ok::<_, redis::RedisError>((conn, read))
            };
            match attempt.await {
                Ok((conn, read)) => {
                    self.topology_conn = Some((addr, conn));
                    return Ok(read);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no cluster seed"))
        }))
    }

    /// Drops the subscriptions that sit on a node no longer serving their
    /// slot or that were never confirmed, and subscribes every channel that
    /// is down on the primary now serving its slot, one channel per command.
    async fn reconcile(&mut self) {
        let now = Instant::now();
        let addr_of: HashMap<u64, String> = self
            .conns
            .iter()
            .map(|(addr, c)| (c.id, addr.clone()))
            .collect();
        for ch in &mut self.channels {
            let Some(conn) = ch.state.conn() else {
                continue;
            };
            let on = addr_of.get(&conn).map(String::as_str);
            let owner = owner(&self.table, ch.slot);
            if on != owner {
                // Redis also ends it (`sunsubscribe`) when the node is alive;
                // that push then names a connection the channel left.
                tracing::info!(
                    channel = %ch.name,
                    from = on.unwrap_or("-"),
                    to = owner.unwrap_or("-"),
                    "shard channel's slot is served elsewhere now; subscribing there"
                );
                ch.lose();
            } else if let State::Pending { since, .. } = ch.state {
                if now.duration_since(since) > CONFIRM_WITHIN {
                    tracing::warn!(channel = %ch.name, node = on.unwrap_or("-"), "SSUBSCRIBE never confirmed; sending it again");
                    ch.state = State::Down;
                }
            }
        }
        let mut todo: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut unplaced = false;
        for (i, ch) in self.channels.iter().enumerate() {
            if ch.state == State::Down {
                match owner(&self.table, ch.slot) {
                    Some(node) => todo.entry(node.to_string()).or_default().push(i),
                    None => unplaced = true,
                }
            }
        }
        if unplaced {
            // No slot map yet (or a slot nobody serves): the next read may
            // have it.
            self.failed();
        }
        for (node, at) in todo {
            self.subscribe_on(&node, &at).await;
        }
        // A connection no channel needs any more (its slots moved away).
        let needed: HashSet<&str> = self
            .channels
            .iter()
            .filter_map(|c| owner(&self.table, c.slot))
            .collect();
        self.conns.retain(|addr, _| needed.contains(addr.as_str()));
    }

    /// Sends one `SSUBSCRIBE` per channel (`at`: indexes of channels) on the
    /// connection to `node`, opening it first if needed.
    async fn subscribe_on(&mut self, node: &str, at: &[usize]) {
        let (id, mut conn) = match self.connection(node).await {
            Ok(c) => c,
            Err(e) => {
                self.failed();
                if let Some(suppressed) = self.failures.allow() {
                    tracing::warn!(node, error = %e, suppressed, "cannot connect to a cluster primary for shard channels; retrying");
                }
                return;
            }
        };
        for &i in at {
            let name = self.channels[i].name.clone();
            let answer = redis::cmd("SSUBSCRIBE")
                .arg(&name)
                .query_async::<Value>(&mut conn)
                .await;
            match answer {
                // Confirmed only by the push (see the module docs).
                Ok(_) => {
                    self.channels[i].state = State::Pending {
                        conn: id,
                        since: Instant::now(),
                    }
                }
                Err(e) if e.is_io_error() || e.is_timeout() || e.is_unrecoverable_error() => {
                    self.failed();
                    if let Some(suppressed) = self.failures.allow() {
                        tracing::warn!(node, error = %e, suppressed, "shard subscription connection failed; reconnecting");
                    }
                    self.drop_conn(node);
                    return;
                }
                // MOVED (the slot map we read was behind), CLUSTERDOWN...
                Err(e) => {
                    self.failed();
                    if let Some(suppressed) = self.failures.allow() {
                        tracing::warn!(node, channel = %name, error = %e, suppressed, "SSUBSCRIBE refused; re-reading the slot map");
                    }
                }
            }
        }
    }

    /// The subscription connection to `node`, opened if there is none.
    async fn connection(&mut self, node: &str) -> redis::RedisResult<(u64, MultiplexedConnection)> {
        if let Some(c) = self.conns.get(node) {
            return Ok((c.id, c.conn.clone()));
        }
        let id = self.next_id;
        self.next_id += 1;
        let pushes = (id, self.pushes_tx.clone());
        let mut conn = connect(node, self.userinfo.as_deref(), Some(pushes)).await?;
        // So that `CLIENT LIST` on a primary tells whose connection it is.
        if let Err(e) = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&self.name)
            .query_async::<()>(&mut conn)
            .await
        {
            tracing::debug!(node, error = %e, "shard subscription connection left unnamed");
        }
        tracing::debug!(node, conn = id, "shard subscription connection opened");
        self.conns.insert(
            node.to_string(),
            NodeConn {
                id,
                conn: conn.clone(),
            },
        );
        Ok((id, conn))
    }

    /// Forgets the connection to `node` (closing it): its channels are down.
    fn drop_conn(&mut self, node: &str) -> usize {
        let Some(gone) = self.conns.remove(node) else {
            return 0;
        };
        let mut lost = 0;
        for ch in &mut self.channels {
            if ch.state.conn() == Some(gone.id) {
                ch.lose();
                lost += 1;
            }
        }
        lost
    }

    async fn on_push(&mut self, conn: u64, push: PushInfo) -> ControlFlow<()> {
        let node = || {
            self.conns
                .iter()
                .find(|(_, c)| c.id == conn)
                .map(|(a, _)| a.clone())
        };
        match push.kind {
            PushKind::SMessage => {
                let mut data = push.data.into_iter();
                let (Some(channel), Some(payload)) = (
                    data.next().and_then(into_bytes),
                    data.next().and_then(into_bytes),
                ) else {
                    return ControlFlow::Continue(());
                };
                let channel = String::from_utf8_lossy(&channel).into_owned();
                tokio::select! {
                    _ = self.shutdown.cancelled() => ControlFlow::Break(()),
                    sent = self.out.send(ShardMessage::Message { channel, payload }) => match sent {
                        Ok(()) => ControlFlow::Continue(()),
                        // The engine is gone: nobody to hand messages to.
                        Err(_) => ControlFlow::Break(()),
                    },
                }
            }
            PushKind::SSubscribe => {
                let name = text(push.data.first());
                let Some(ch) = self.channels.iter_mut().find(|c| c.name == name) else {
                    return ControlFlow::Continue(());
                };
                if matches!(ch.state, State::Pending { conn: c, .. } if c == conn) {
                    ch.state = State::Up { conn };
                    let again = std::mem::replace(&mut ch.confirmed_before, true);
                    let lost = ShardMessage::Resubscribed {
                        channel: ch.name.clone(),
                        lost_at_ms: ch.lost_at_ms,
                    };
                    if again {
                        self.counters
                            .resubscriptions
                            .fetch_add(1, Ordering::Relaxed);
                        self.redone += 1;
                        // Before any message the new subscription brings.
                        tokio::select! {
                            _ = self.shutdown.cancelled() => return ControlFlow::Break(()),
                            sent = self.out.send(lost) => if sent.is_err() {
                                return ControlFlow::Break(());
                            },
                        }
                    }
                }
                ControlFlow::Continue(())
            }
            PushKind::SUnsubscribe => {
                let name = text(push.data.first());
                let node = node();
                let Some(ch) = self.channels.iter_mut().find(|c| c.name == name) else {
                    return ControlFlow::Continue(());
                };
                // We never unsubscribe: this is Redis saying the slot left
                // that node. A push from a connection the channel already
                // left (it followed a newer slot map) changes nothing.
                if ch.state.conn() == Some(conn) {
                    ch.lose();
                    self.stale = true;
                    self.counters
                        .unsubscribed_by_redis
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        channel = %name,
                        node = node.as_deref().unwrap_or("-"),
                        "Redis ended a shard subscription (its slot moved); subscribing where it lives now"
                    );
                }
                ControlFlow::Continue(())
            }
            PushKind::Disconnection => {
                if let Some(node) = node() {
                    let lost = self.drop_conn(&node);
                    self.stale = true;
                    tracing::warn!(
                        node = %node,
                        channels = lost,
                        "shard subscription connection lost; re-reading the slot map and subscribing again"
                    );
                }
                ControlFlow::Continue(())
            }
            _ => ControlFlow::Continue(()),
        }
    }

    /// Publishes whether every channel is up, logging the changes.
    fn report_up(&mut self) {
        let deaf: HashSet<String> = self
            .channels
            .iter()
            .filter(|c| !matches!(c.state, State::Up { .. }))
            .map(|c| c.name.clone())
            .collect();
        let down = deaf.len();
        *self
            .counters
            .down
            .write()
            .unwrap_or_else(|e| e.into_inner()) = deaf;
        let all = down == 0;
        let was = *self.up.borrow();
        if all == was {
            return;
        }
        self.up.send_replace(all);
        if all {
            self.pause = RETRY_FIRST;
            if self.redone > 0 {
                tracing::info!(
                    resubscribed = std::mem::take(&mut self.redone),
                    "every shard channel subscribed again"
                );
            } else {
                tracing::info!(
                    channels = self.channels.len(),
                    "every shard channel subscribed"
                );
            }
        } else {
            tracing::warn!(
                down,
                channels = self.channels.len(),
                "shard channels not all subscribed; messages on them are not received"
            );
        }
    }

    /// Something failed: read the slot map again after a pause.
    fn failed(&mut self) {
        if self.retry.is_none() {
            self.retry = Some(Instant::now() + self.pause);
            self.pause = (self.pause * 2).min(RETRY_MAX);
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The primary serving `slot`, if the map has one.
fn owner(table: &Table, slot: u16) -> Option<&str> {
    table
        .iter()
        .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))
        .map(|(_, _, node)| node.as_str())
}

/// A connection to the node at `addr` (`host:port`); with `pushes`, RESP3
/// with its pushes going there tagged with the id given (a subscription
/// connection).
pub(super) async fn connect(
    addr: &str,
    userinfo: Option<&str>,
    pushes: Option<(u64, mpsc::UnboundedSender<(u64, PushInfo)>)>,
) -> redis::RedisResult<MultiplexedConnection> {
    let auth = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    let resp3 = if pushes.is_some() {
        "?protocol=resp3"
    } else {
        ""
    };
    let client = redis::Client::open(format!("redis://{auth}{addr}/{resp3}"))?;
    let mut config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_WITHIN))
        .set_response_timeout(Some(ANSWER_WITHIN));
    if let Some((id, tx)) = pushes {
        config = config.set_push_sender(move |push: PushInfo| tx.send((id, push)));
    }
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// `CLUSTER SLOTS` on `conn` (to the node at `addr`), as a slot map and the
/// nodes it names.
pub(super) async fn read_slots(
    conn: &mut MultiplexedConnection,
    addr: &str,
) -> redis::RedisResult<(Table, Vec<String>)> {
    let value: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    parse_slots(&value, host).ok_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::Parse,
            "CLUSTER SLOTS answer without slots",
            addr.to_string(),
        ))
    })
}

/// `CLUSTER SLOTS` as a slot map (primary first in each range) and every
/// node named; `asked` is the host asked, which an empty host stands for.
fn parse_slots(value: &Value, asked: &str) -> Option<(Table, Vec<String>)> {
    let Value::Array(ranges) = value else {
        return None;
    };
    let mut table = Vec::new();
    let mut known = Vec::new();
    for range in ranges {
        let Value::Array(r) = range else { continue };
        let (Some(lo), Some(hi)) = (int(r.first()), int(r.get(1))) else {
            continue;
        };
        let nodes: Vec<Option<String>> = r.iter().skip(2).map(|n| node_addr(n, asked)).collect();
        let Some(Some(primary)) = nodes.first() else {
            continue;
        };
        table.push((lo, hi, primary.clone()));
        known.extend(nodes.into_iter().flatten());
    }
    table.sort();
    known.sort();
    known.dedup();
    (!table.is_empty()).then_some((table, known))
}

/// One node of a `CLUSTER SLOTS` range (`[host, port, id, ...]`) as
/// `host:port`; None for an unknown endpoint (`?`).
fn node_addr(node: &Value, asked: &str) -> Option<String> {
    let Value::Array(n) = node else { return None };
    let host = text(n.first());
    let port = int(n.get(1))?;
    match host.as_str() {
        "?" => None,
        "" => Some(format!("{asked}:{port}")),
        h if h.contains(':') => Some(format!("[{h}]:{port}")),
        h => Some(format!("{h}:{port}")),
    }
}

fn int(v: Option<&Value>) -> Option<u16> {
    match v {
        Some(Value::Int(i)) => u16::try_from(*i).ok(),
        _ => None,
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    }
}

fn into_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::harness::redis_cluster::RedisCluster;

    /// A subscriber on a test cluster, with what it handed over so far.
    struct Subscribed {
        handle: Sharded,
        rx: mpsc::Receiver<ShardMessage>,
        got: Vec<ShardMessage>,
        /// Probes published so far: each probe's payload is new.
        probes: u64,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    }

    /// `refresh_every`: the timer's interval, None for the engine's.
    fn start(
        cluster: &RedisCluster,
        channels: &[String],
        refresh_every: Option<Duration>,
    ) -> Subscribed {
        // One seed: the others are found from it.
        let target = Cluster {
            seeds: vec![format!("127.0.0.1:{}", cluster.primaries()[0])],
            userinfo: None,
            name: "sse-notify:test".into(),
        };
        let (tx, rx) = mpsc::channel(1024);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let channels = channels.to_vec();
        let handle = match refresh_every {
            None => spawn(target, channels, tx, shutdown.clone(), &tasks),
            Some(every) => spawn_refreshing(target, channels, tx, shutdown.clone(), &tasks, every),
        };
        Subscribed {
            handle,
            rx,
            got: Vec::new(),
            probes: 0,
            shutdown,
            tasks,
        }
    }

    impl Subscribed {
        async fn wait_up(&self, what: &str) {
            let mut up = self.handle.up();
            let within = Duration::from_secs(10);
            let ok = tokio::time::timeout(within, up.wait_for(|up| *up)).await;
            assert!(
                matches!(ok, Ok(Ok(_))),
                "within {within:?}: every channel subscribed ({what}) never happened"
            );
        }

        /// Whether `payload` arrives on `channel` within `within` (or came
        /// already); whatever else arrives is kept.
        async fn received(&mut self, channel: &str, payload: &str, within: Duration) -> bool {
            let hit = |m: &ShardMessage| {
                matches!(m, ShardMessage::Message { channel: c, payload: p }
                    if c == channel && p == payload.as_bytes())
            };
            if self.got.iter().any(hit) {
                return true;
            }
            let deadline = Instant::now() + within;
            while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
                let found = hit(&m);
                self.got.push(m);
                if found {
                    return true;
                }
            }
            false
        }

        /// Publishes probes on `channel` (on the primary serving it now)
        /// until one arrives, for up to `within`.
        async fn wait_delivered(
            &mut self,
            cluster: &RedisCluster,
            channel: &str,
            within: Duration,
        ) {
            self.wait_published(channel, within, |payload| {
                spublish(cluster, channel, payload)
            })
            .await;
        }

        /// Publishes probes on `channel` with `publish` until one arrives,
        /// for up to `within`.
        async fn wait_published(
            &mut self,
            channel: &str,
            within: Duration,
            publish: impl Fn(&str) -> u64,
        ) {
            let deadline = Instant::now() + within;
            loop {
                self.probes += 1;
                let payload = format!("probe-{}", self.probes);
                publish(&payload);
                if self
                    .received(channel, &payload, Duration::from_millis(300))
                    .await
                {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "within {within:?}: no message on {channel} arrived"
                );
            }
        }

        async fn stop(self) {
            self.shutdown.cancel();
            self.tasks.close();
            let within = Duration::from_secs(5);
            assert!(
                tokio::time::timeout(within, self.tasks.wait())
                    .await
                    .is_ok(),
                "the subscriber did not end within {within:?} of shutdown"
            );
            assert!(!*self.handle.up().borrow(), "up after shutdown");
        }
    }

    /// SPUBLISH on the primary serving `channel`: how many subscribers got
    /// it (0 when the node refused, e.g. during a failover).
    fn spublish(cluster: &RedisCluster, channel: &str, payload: &str) -> u64 {
        let owner = cluster.owner(RedisCluster::slot_of(channel));
        cluster
            .node(owner)
            .query(redis::cmd("SPUBLISH").arg(channel).arg(payload))
            .unwrap_or(0)
    }

    fn crossslot_errors(cluster: &RedisCluster, port: u16) -> u64 {
        cluster
            .node(port)
            .error_counts()
            .get("CROSSSLOT")
            .copied()
            .unwrap_or(0)
    }

    /// `count` channels in distinct slots of each primary.
    fn spread(cluster: &RedisCluster, prefix: &str, count: usize) -> Vec<String> {
        cluster
            .primaries()
            .into_iter()
            .flat_map(|p| cluster.names_on(p, prefix, count))
            .collect()
    }

    /// An empty host is the node asked; `?` (an endpoint the node does not
    /// know) is skipped; IPv6 hosts get brackets; the primary comes first.
    #[test]
    fn cluster_slots_become_a_sorted_slot_map() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |lo: i64, hi: i64, nodes: Vec<Value>| {
            let mut r = vec![Value::Int(lo), Value::Int(hi)];
            r.extend(nodes);
            Value::Array(r)
        };
        let answer = Value::Array(vec![
            range(8192, 16383, vec![node("::1", 7001), node("?", 7004)]),
            range(0, 8191, vec![node("", 7000), node("10.0.0.2", 7003)]),
            range(1, 2, vec![node("?", 7005)]),
        ]);
        let (table, known) = parse_slots(&answer, "10.0.0.1").expect("a slot map");
        assert_eq!(
            table,
            vec![
                (0, 8191, "10.0.0.1:7000".to_string()),
                (8192, 16383, "[::1]:7001".to_string()),
            ]
        );
        assert_eq!(known, vec!["10.0.0.1:7000", "10.0.0.2:7003", "[::1]:7001"]);
        assert_eq!(owner(&table, 8191), Some("10.0.0.1:7000"));
        assert_eq!(owner(&table, 8192), Some("[::1]:7001"));
        assert!(parse_slots(&Value::Array(Vec::new()), "h").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn channels_on_every_primary_receive_their_messages() {
        let cluster = RedisCluster::start();
        let channels = spread(&cluster, "sse:spread:", 2);
        assert_eq!(channels.len(), 6);
        let mut s = start(&cluster, &channels, None);
        s.wait_up("at start").await;

        for (i, ch) in channels.iter().enumerate() {
            assert_eq!(
                spublish(&cluster, ch, &format!("m{i}")),
                1,
                "subscribers of {ch}"
            );
        }
        for (i, ch) in channels.iter().enumerate() {
            let payload = format!("m{i}");
            assert!(
                s.received(ch, &payload, Duration::from_secs(5)).await,
                "{payload} on {ch} never arrived"
            );
        }
        assert_eq!(
            s.got.len(),
            channels.len(),
            "each message once: {:?}",
            s.got
        );
        assert_eq!(s.handle.resubscriptions(), 0);
        for p in cluster.primaries() {
            assert_eq!(crossslot_errors(&cluster, p), 0, "CROSSSLOT on {p}");
        }
        s.stop().await;
    }

    /// Only the unrequested `sunsubscribe` can bring the channel back here:
    /// the timer is off (an hour), and no connection breaks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_moved_slot_is_subscribed_again_where_it_lives_now() {
        let cluster = RedisCluster::start();
        let primaries = cluster.primaries();
        let (p, q) = (primaries[0], primaries[1]);
        let moving = cluster.names_on(p, "sse:move:", 1).remove(0);
        let mut channels = spread(&cluster, "sse:stay:", 1);
        channels.push(moving.clone());
        let mut s = start(&cluster, &channels, Some(Duration::from_secs(3600)));
        s.wait_up("at start").await;
        s.wait_delivered(&cluster, &moving, Duration::from_secs(5))
            .await;

        tokio::task::block_in_place(|| cluster.move_slot(RedisCluster::slot_of(&moving), q));

        s.wait_delivered(&cluster, &moving, Duration::from_secs(10))
            .await;
        assert_eq!(cluster.owner(RedisCluster::slot_of(&moving)), q);
        assert_eq!(s.handle.unsubscribed_by_redis(), 1);
        assert_eq!(s.handle.resubscriptions(), 1, "only {moving} redone");
        assert!(s.handle.topology_changes() >= 1);
        s.wait_up("after the move").await;
        for ch in &channels {
            s.wait_delivered(&cluster, ch, Duration::from_secs(5)).await;
        }
        s.stop().await;
    }

    /// The test sends no command that would make anything re-read the
    /// slot map: the subscriber notices the failover itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failover_moves_the_subscriptions_to_the_promoted_replica() {
        let mut cluster = RedisCluster::start();
        let p = cluster.primaries()[0];
        let on_p = cluster.names_on(p, "sse:fo:", 2);
        let mut channels = spread(&cluster, "sse:other:", 1);
        let others: Vec<String> = channels
            .iter()
            .filter(|c| !cluster.slots_of(p).contains(&RedisCluster::slot_of(c)))
            .cloned()
            .collect();
        channels.extend(on_p.clone());
        let mut s = start(&cluster, &channels, None);
        s.wait_up("at start").await;

        let promoted = tokio::task::block_in_place(|| cluster.kill_primary(p));

        for ch in &on_p {
            s.wait_delivered(&cluster, ch, Duration::from_secs(15))
                .await;
            assert_eq!(cluster.owner(RedisCluster::slot_of(ch)), promoted);
        }
        for ch in &others {
            s.wait_delivered(&cluster, ch, Duration::from_secs(5)).await;
        }
        assert!(s.handle.resubscriptions() >= on_p.len() as u64);
        assert!(s.handle.topology_changes() >= 1);
        s.wait_up("after the failover").await;
        s.stop().await;
    }

    /// A primary that stops answering without closing its sockets (frozen,
    /// SIGSTOP) is failed over by its replica: no connection of ours
    /// breaks and Redis sends no push, so only the timer's re-read of the
    /// slot map can move the subscriptions.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frozen_primary_is_followed_by_the_timer() {
        let cluster = RedisCluster::start();
        let p = cluster.primaries()[0];
        let replica = cluster.replicas_of(p)[0];
        let on_p = cluster.names_on(p, "sse:frozen:", 2);
        let mut s = start(&cluster, &on_p, None);
        s.wait_up("at start").await;
        let pid = cluster.node(p).info("server").remove("process_id");
        let pid = pid.expect("INFO server has process_id");

        // kill(2) through the command line tool: no unsafe. The harness
        // SIGKILLs it at the end, stopped or not.
        let frozen = std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .expect("kill");
        assert!(frozen.success());

        // The harness's own look-ups would wait on the frozen node: publish
        // on the replica, which refuses (MOVED) until it is the primary.
        let promoted = cluster.node(replica);
        for ch in &on_p {
            s.wait_published(ch, Duration::from_secs(20), |payload| {
                promoted
                    .query(redis::cmd("SPUBLISH").arg(ch).arg(payload))
                    .unwrap_or(0)
            })
            .await;
        }
        assert_eq!(s.handle.unsubscribed_by_redis(), 0, "Redis told us");
        assert_eq!(s.handle.resubscriptions(), on_p.len() as u64);
        assert!(s.handle.topology_changes() >= 1);
        s.stop().await;
    }

    /// Several slots on one primary: one command naming them all would be
    /// refused (CROSSSLOT); every channel must come back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killed_subscription_connections_are_rebuilt_one_slot_per_command() {
        let cluster = RedisCluster::start();
        let primaries = cluster.primaries();
        let mut channels = cluster.names_on(primaries[0], "sse:many:", 4);
        channels.extend(spread(&cluster, "sse:one:", 1));
        let mut s = start(&cluster, &channels, None);
        s.wait_up("at start").await;
        for ch in &channels {
            s.wait_delivered(&cluster, ch, Duration::from_secs(5)).await;
        }
        let refused: Vec<u64> = primaries
            .iter()
            .map(|p| crossslot_errors(&cluster, *p))
            .collect();

        for p in &primaries {
            let killed: u64 = cluster
                .node(*p)
                .query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"))
                .expect("CLIENT KILL TYPE pubsub");
            assert_eq!(killed, 1, "subscription connections on {p}");
        }

        for ch in &channels {
            s.wait_delivered(&cluster, ch, Duration::from_secs(10))
                .await;
        }
        assert_eq!(s.handle.resubscriptions(), channels.len() as u64);
        assert_eq!(s.handle.unsubscribed_by_redis(), 0);
        let now: Vec<u64> = primaries
            .iter()
            .map(|p| crossslot_errors(&cluster, *p))
            .collect();
        assert_eq!(now, refused, "CROSSSLOT refusals on {primaries:?}");
        s.wait_up("after the reconnection").await;
        s.stop().await;
    }
}
