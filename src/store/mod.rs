//! The store: the one seam between a node and where its shared state lives
//! (the connection registry, kept messages, and the way a message reaches
//! every node that holds its streams). Two engines answer the same
//! questions:
//!
//! - [`memory`]: the embedded engine (`redis.url` empty, the default): one
//!   node, everything in the process, nothing to install;
//! - [`redis`]: several nodes sharing one Redis (keys, Lua scripts,
//!   pub/sub bus, Sentinel, reconnects all live behind it).
//!
//! Each engine answers the three concerns of [`seam`] (registry, history,
//! delivery); the rules they share are written once here: where a message
//! goes ([`target`]), what a replay serves ([`kept`]), how a whole listing
//! is read ([`listing`]). [`Store`] is the node's handle on its engine.
//!
//! The node hands the store messages ([`Store::send`]) and gets back what
//! to deliver through its [`NodeLink`], in id order, whichever node sent
//! them: the router is the one delivery path in both engines.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, HistoryConfig};
use crate::metrics::Metrics;
use seam::{Delivery, History, Registry};

#[cfg(test)]
mod contract;
mod direct;
#[cfg(test)]
mod harness;
pub(crate) mod kept;
mod listing;
pub(crate) mod memory;
pub(crate) mod nodes;
pub(crate) mod redis;
pub(crate) mod seam;
pub(crate) mod target;

pub(crate) use direct::Direct;
pub(crate) use listing::{Listed, Steps, TopicsPage, Walk};

/// Why the store could not answer. Every variant means "nothing was
/// changed or delivered": the HTTP layer answers 503 and a retry is safe.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("this node's bus subscription is down")]
    BusDown,
    /// A one-tab message found its user without any record while the nodes
    /// write their live connections back (after a clear, a short cleanup
    /// or Redis losing its data): its tab may be live, so it waits.
    #[error("the registry is being written back after a clear or a Redis restart; retry")]
    Resyncing,
    #[error("{0}")]
    Unavailable(String),
}

pub(crate) type Result<T> = std::result::Result<T, StoreError>;

/// One connection as the registry holds it (README "Redis layout").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ConnectionRecord {
    pub connection_id: String,
    pub username: String,
    pub connection_time: f64,
    pub last_heartbeat: f64,
    /// The topics the stream follows, sorted (`[]` when none).
    pub topics: Vec<String>,
    #[serde(skip)]
    pub node_id: String,
}

/// A stream this node holds, as the store needs to know it (to write it
/// back into the registry after a clear or an outage).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LiveConn {
    pub connection_id: String,
    pub username: String,
    pub connection_time: f64,
    /// The topics it follows, sorted; fixed while it is open.
    pub topics: Vec<String>,
}

/// What a clear, sweep or user delete removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Removed {
    pub connection_ids: Vec<String>,
    pub usernames: BTreeSet<String>,
}

impl Removed {
    pub(crate) fn connection_count(&self) -> usize {
        self.connection_ids.len()
    }
    pub(crate) fn user_count(&self) -> usize {
        self.usernames.len()
    }
    pub(crate) fn add(&mut self, id: String, user: String) {
        self.connection_ids.push(id);
        self.usernames.insert(user);
    }
}

/// What a full clear removed: records, and the distinct users among them
/// (counts only: a clear of a million records keeps no list of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Cleared {
    pub connection_count: usize,
    pub user_count: usize,
}

/// The most users one page of the listing holds.
pub(crate) const MAX_PAGE: usize = 10_000;

/// Where a page of the listing starts: after this username. Its text form
/// (the name's UTF-8 in hex) is opaque to clients and survives any
/// character a username may hold, in a query string too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor(pub String);

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for Cursor {
    type Err = &'static str;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        const BAD: &str = "not a cursor this listing gave (use data.next_cursor as it is)";
        if s.is_empty() || !s.len().is_multiple_of(2) || s.len() > 2048 {
            return Err(BAD);
        }
        let bytes = (0..s.len())
            .step_by(2)
            .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or(BAD)?;
        String::from_utf8(bytes).map(Cursor).map_err(|_| BAD)
    }
}

/// One page of the listing: users by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Page {
    /// Up to the asked number of users after the cursor, in name order,
    /// each with all its connections (by connection time); a user whose
    /// last connection left meanwhile is not in it.
    pub users: Vec<(String, Vec<ConnectionRecord>)>,
    /// Registry-wide, not the page's.
    pub user_count: usize,
    pub total_connections: usize,
    /// Where the next page starts; `None` on the last one.
    pub next: Option<Cursor>,
}

pub(crate) fn sort_records(list: &mut [ConnectionRecord]) {
    list.sort_by(|a, b| {
        a.connection_time
            .total_cmp(&b.connection_time)
            .then_with(|| a.connection_id.cmp(&b.connection_id))
    });
}

/// Unix time in seconds to the microsecond, as the registry stores it (so
/// a value shown on the stream equals the one read back from the store).
pub(crate) fn unix_now() -> f64 {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    micros as f64 / 1e6
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A message id with history on: milliseconds and a sequence within them,
/// from one sequence for every user and the broadcasts, so that what one
/// user can receive is ordered and a replay can merge the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct MsgId {
    pub ms: u64,
    pub seq: u64,
}

impl FromStr for MsgId {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        let (ms, seq) = s.split_once('-').ok_or(())?;
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(());
        }
        Ok(MsgId {
            ms: ms.parse().map_err(|_| ())?,
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl MsgId {
    /// Before every message: a stream's position in a part where nothing
    /// was kept when it opened.
    pub(crate) const START: MsgId = MsgId { ms: 0, seq: 0 };
}

/// Where a stream stands on a Redis Cluster with history on, where ids
/// come from two sequences (README "Past one Redis primary"): its user's
/// partition's and the home's (broadcasts and topics). Written as the
/// stream's message id, `{user}.{home}`: a `Last-Event-ID` names an exact
/// position in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub user: MsgId,
    pub home: MsgId,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.user, self.home)
    }
}

impl FromStr for Pos {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        let (user, home) = s.split_once('.').ok_or(())?;
        Ok(Pos {
            user: user.parse()?,
            home: home.parse()?,
        })
    }
}

/// A message's id as a node's streams get it: one id of the one sequence,
/// or on a cluster with history on, an id in one part (written `{id}.`
/// for the user's partition, `.{id}` for the home), which each stream
/// writes with its position in the other part ([`Pos`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PartId {
    One(MsgId),
    User(MsgId),
    Home(MsgId),
}

impl FromStr for PartId {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        match s.split_once('.') {
            None => s.parse().map(PartId::One),
            Some((user, "")) => user.parse().map(PartId::User),
            Some(("", home)) => home.parse().map(PartId::Home),
            Some(_) => Err(()),
        }
    }
}

impl fmt::Display for PartId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartId::One(id) => write!(f, "{id}"),
            PartId::User(id) => write!(f, "{id}."),
            PartId::Home(id) => write!(f, ".{id}"),
        }
    }
}

/// A validated message for the store to keep (history on), route and fan
/// out. `data` is its compact JSON text.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    /// `None` (and no `topic`) is a broadcast.
    pub to: Option<String>,
    /// Every stream following this topic (then `to` is `None`).
    pub topic: Option<String>,
    /// Only the user's first connection (oldest by connection time).
    pub first_only: bool,
    pub event: String,
    pub data: String,
}

/// What the store did with a message: its id, and how many connections the
/// registry routed it to when it was taken.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Accepted {
    pub id: String,
    pub connections: usize,
}

/// Which of a node's streams a delivery is for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Target {
    /// Every stream of this user held here (registered yet or not).
    User(String),
    /// These connection ids, where held here.
    Ids(Vec<String>),
    /// The one target of a one-tab message (`all_connections: false`),
    /// where held here.
    Tab(String),
    /// Every stream held here that follows this topic.
    Topic(String),
    /// Every stream held here that follows this topic and whose user is
    /// in this partition (a cluster publishes a topic's message from each
    /// partition holding followers, to their nodes).
    TopicIn(String, UserPart),
    /// Every stream held here.
    All,
}

/// One of the partitions users are spread over on a Redis Cluster
/// (`index` of `count`), as a node's hub needs to tell its users apart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct UserPart {
    pub index: usize,
    pub count: usize,
}

impl UserPart {
    /// Whether `username` is in this partition.
    pub(crate) fn holds(&self, username: &str) -> bool {
        partition_of(username, self.count) == self.index
    }
}

/// The partition of `username` among `count` (FNV-1a of the name: stable
/// across versions and platforms, unlike std's hasher).
pub(crate) fn partition_of(username: &str, count: usize) -> usize {
    if count <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in username.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % count as u64) as usize
}

/// What the store hands a node: messages in id order, and closes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Inbound {
    Deliver {
        id: String,
        event: String,
        data: String,
        target: Target,
    },
    /// Close these streams; with a reason, an `evicted` notice first.
    Close {
        ids: Vec<String>,
        reason: Option<String>,
    },
    /// Close every stream of a user (logout).
    CloseUser { username: String },
    /// A stream that follows `topic` opened or closed (`[topics]
    /// join_leave`): every other stream following it gets `event` (`join`
    /// or `leave`) with `data`, without an id (not kept).
    Presence {
        topic: String,
        except: String,
        event: &'static str,
        data: String,
    },
    /// Redis lost its data with messages it had taken but not yet handed
    /// to this node: every stream here gets `event: history_gap`.
    HistoryLost,
}

/// The node as the store sees it: where what arrives for the node's streams
/// goes, and which streams it holds. Implemented by the node's router, so
/// the store knows nothing of the hub.
pub(crate) trait NodeLink: Send + Sync + 'static {
    /// Applies what arrived, in order; returns how many of this node's
    /// streams took a delivered message (0 for closes).
    fn receive(&self, inbound: Inbound) -> usize;
    /// The streams this node holds now.
    fn live(&self) -> Vec<LiveConn>;
    /// Whether this node holds that stream.
    fn holds(&self, connection_id: &str) -> bool;
    /// How many streams this node holds (without copying them).
    fn live_count(&self) -> usize;
}

/// What a stream that ended after being sent one-tab messages wrote: the
/// newest message id that reached its socket. A replay does not give what
/// it wrote to another tab of its user (its record may be gone already:
/// a logout removes it before the stream ends).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Wrote {
    pub username: String,
    pub upto: MsgId,
}

/// Who a kept message is for, as far as a replay must know.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum KeptFor {
    /// Every stream of its user (a broadcast: every stream).
    All,
    /// One tab (`all_connections: false`): this connection was the user's
    /// first when it was sent. A replay gives it to another tab only when
    /// that one surely did not write it (it is gone without having written
    /// it, or its node is), and then to one tab only (a claim).
    Tab(String),
    /// One tab, and the user had none when it was sent: the first tab that
    /// comes back with an older `Last-Event-ID` gets it (a claim).
    FirstBack,
}

/// One kept message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Kept {
    pub id: MsgId,
    pub event: String,
    pub data: String,
    pub to: KeptFor,
    /// On a cluster with history on: kept in the home (a broadcast or a
    /// topic's), its id in the home's sequence; else in the one sequence
    /// or the user's partition's.
    pub home: bool,
}

impl Kept {
    /// Its id as the node's streams get it ([`PartId`]); `pairs`: ids
    /// come from two sequences (a cluster with history on).
    pub(crate) fn part_id(&self, pairs: bool) -> PartId {
        match (pairs, self.home) {
            (false, _) => PartId::One(self.id),
            (true, false) => PartId::User(self.id),
            (true, true) => PartId::Home(self.id),
        }
    }
}

/// What a reconnecting client gets.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Replay {
    /// The id is unknown, malformed or older than what is kept.
    pub gap: bool,
    /// What this stream is to get after the id (all that is kept on a
    /// gap): the user's messages and the broadcasts, merged in id order,
    /// one-tab messages only where the rules of [`KeptFor`] give them to
    /// this stream (claimed for it).
    pub entries: Vec<Kept>,
    /// On a cluster with history on: where the stream stood before them
    /// (per part: the part of the id it came with, or [`MsgId::START`] on
    /// a gap); each entry moves its part ([`Kept::home`]) to its id.
    pub start: Option<Pos>,
}

/// How many streams and users follow one topic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct TopicCount {
    pub topic: String,
    pub connection_count: usize,
    pub user_count: usize,
}

/// Who follows one topic: its users (sorted) and their streams (by
/// connection time).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TopicPresence {
    pub users: Vec<String>,
    pub connections: Vec<ConnectionRecord>,
}

/// How the store is doing, for `/healthz`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Health {
    pub engine: &'static str,
    /// Redis engine: `Err` with why Redis does not answer.
    pub redis: Option<std::result::Result<(), String>>,
    /// Redis engine: whether this node hears the bus.
    pub bus: Option<BusHealth>,
}

/// Whether a node hears the bus.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum BusHealth {
    Up,
    /// On a Redis Cluster: some channels are not subscribed (a primary
    /// failing over): sends for the users of its partitions are refused
    /// until they are back, the others go on.
    Partial,
    Down,
}

impl BusHealth {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BusHealth::Up => "ok",
            BusHealth::Partial => "partial",
            BusHealth::Down => "down",
        }
    }
}

/// A connection to the engine the config names, made before the node
/// starts (so that an unreachable Redis fails the start, not a request).
pub struct Backend(BackendInner);

enum BackendInner {
    Memory,
    Redis(redis::SharedConn),
}

impl Backend {
    /// The embedded engine, or Redis (retrying with backoff for
    /// `redis.connect_timeout_secs`).
    pub async fn connect(config: &Config) -> Result<Backend> {
        if config.uses_redis() {
            Ok(Backend(BackendInner::Redis(
                redis::connect_with_retry(config).await?,
            )))
        } else {
            Ok(Backend(BackendInner::Memory))
        }
    }
}

/// The node's handle on its engine.
#[derive(Clone)]
pub(crate) enum Store {
    Memory(Arc<memory::MemoryStore>),
    Redis(Arc<redis::RedisStore>),
}

/// The same call on whichever engine the store is.
macro_rules! each {
    ($store:expr, $e:ident => $call:expr) => {
        match $store {
            Store::Memory($e) => $call,
            Store::Redis($e) => $call,
        }
    };
}

/// What opening a store needs from the node.
pub(crate) struct Open<'a> {
    pub config: &'a Config,
    pub link: Arc<dyn NodeLink>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub tasks: &'a TaskTracker,
}

impl Store {
    /// Opens the engine; its background tasks join `tasks` and end with
    /// `shutdown`. With Redis, returns once this node hears the bus.
    pub(crate) async fn open(backend: Backend, o: Open<'_>) -> Result<Store> {
        match backend.0 {
            BackendInner::Memory => {
                // No bus to lose: delivery is in the process. Reported up,
                // so that the bus-down alert never pages for a healthy
                // embedded node.
                o.metrics.bus_up.set(1);
                Ok(Store::Memory(Arc::new(memory::MemoryStore::new(
                    o.config, o.link,
                ))))
            }
            BackendInner::Redis(conn) => Ok(Store::Redis(redis::RedisStore::open(conn, o).await?)),
        }
    }

    pub(crate) fn engine(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(r) => r.engine(),
        }
    }

    /// True when a send has put its frames in this node's stream queues by
    /// the time it returns (the embedded engine); the Redis engine queues
    /// them when the bus brings them back.
    pub(crate) fn queues_on_send(&self) -> bool {
        fn of<D: Delivery>(_: &D) -> bool {
            D::QUEUES_ON_SEND
        }
        each!(self, e => of(&**e))
    }

    /// Records a new connection; returns once it is stored, with how many
    /// connections its user then has (all nodes).
    pub(crate) async fn register(&self, record: ConnectionRecord) -> Result<usize> {
        each!(self, e => Registry::register(&**e, record).await)
    }

    /// Forgets a connection that ended (retried by the engine until done).
    /// `wrote`: what its stream wrote, when it was sent one-tab messages.
    pub(crate) fn remove(&self, connection_id: String, wrote: Option<Wrote>) {
        each!(self, e => Registry::remove(&**e, connection_id, wrote))
    }

    /// Writes the heartbeat of every stream this node holds, and writes
    /// back the records of live streams that someone removed.
    pub(crate) fn heartbeat(&self) {
        each!(self, e => Registry::heartbeat(&**e))
    }

    /// Keeps the messages (history on), reads their targets, and delivers
    /// them through every node's link (this one's too), in id order.
    /// Either all of them are taken or none (an error); the Redis engine
    /// refuses while this node's bus subscription is down, as it could
    /// deliver out of order.
    pub(crate) async fn send(
        &self,
        msgs: Vec<Message>,
        history: &HistoryConfig,
    ) -> Result<Vec<Accepted>> {
        each!(self, e => Delivery::send(&**e, msgs, history).await)
    }

    /// What the stream `conn` missed after `raw` (its `Last-Event-ID`;
    /// malformed: a gap): its user's messages, the broadcasts and its
    /// topics' messages. One-tab messages it is given are claimed for it:
    /// no other stream gets them again.
    pub(crate) async fn replay(
        &self,
        conn: &LiveConn,
        raw: &str,
        history: &HistoryConfig,
    ) -> Result<Replay> {
        match self {
            Store::Redis(r) if r.pairs() => {
                r.replay_pair(conn, raw.trim().parse().ok(), history).await
            }
            _ => {
                each!(self, e => History::replay(&**e, conn, raw.trim().parse().ok(), history).await)
            }
        }
    }

    /// Whether message ids are pairs ([`Pos`]): a Redis Cluster with
    /// history on.
    pub(crate) fn pairs(&self) -> bool {
        matches!(self, Store::Redis(r) if r.pairs())
    }

    /// On a cluster with history on, where a stream opening without
    /// `Last-Event-ID` starts (read before it registers, so that every
    /// message its queue gets is after it): the newest id kept for its
    /// user, and the newest of the broadcasts' and its topics'. `None`
    /// elsewhere: ids come from one sequence.
    pub(crate) async fn tops(&self, conn: &LiveConn) -> Result<Option<Pos>> {
        match self {
            Store::Redis(r) if r.pairs() => r.tops(conn).await.map(Some),
            _ => Ok(None),
        }
    }

    /// The user's connection ids, oldest first (ties by id); `limit` 1
    /// gives the first connection only.
    pub(crate) async fn user_connection_ids(
        &self,
        user: &str,
        limit: Option<usize>,
    ) -> Result<Vec<String>> {
        each!(self, e => Registry::user_connection_ids(&**e, user, limit).await)
    }

    /// Removes these connections of `user` (their records) and closes
    /// their streams on whichever node holds them, each with an `evicted`
    /// notice.
    pub(crate) async fn evict(&self, user: &str, ids: Vec<String>, reason: &str) -> Result<()> {
        each!(self, e => Delivery::evict(&**e, user, ids, reason).await)
    }

    /// Closes every stream of `user` on every node and removes their
    /// records.
    pub(crate) async fn disconnect_user(&self, user: &str) -> Result<Removed> {
        each!(self, e => Delivery::disconnect_user(&**e, user).await)
    }

    /// Full clear, in bounded steps: every record whose heartbeat is not
    /// after the moment the clear began goes, then every node writes back
    /// the streams it holds, so only zombies stay gone. A record written
    /// while the clear runs (a new stream, a heartbeat) is a live stream's
    /// and is kept.
    pub(crate) async fn clear(&self) -> Result<Cleared> {
        each!(self, e => Registry::clear(&**e).await)
    }

    /// Removes the records whose heartbeat is at or before `stale_before`.
    pub(crate) async fn sweep(&self, stale_before: f64) -> Result<Removed> {
        each!(self, e => Registry::sweep(&**e, stale_before).await)
    }

    /// Up to `limit` usernames after `after` (all, without it), in name
    /// order. Each call costs the engine a bounded step (Redis: a scan of
    /// the users set in small calls, never one long call).
    pub(crate) async fn user_names(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        each!(self, e => Registry::user_names(&**e, after, limit).await)
    }

    /// The connections of each of `users` that has any, in the order
    /// given, each user's by connection time.
    pub(crate) async fn users_connections(
        &self,
        users: &[String],
    ) -> Result<Vec<(String, Vec<ConnectionRecord>)>> {
        each!(self, e => Registry::users_connections(&**e, users).await)
    }

    /// Registry-wide (users, connections).
    pub(crate) async fn totals(&self) -> Result<(usize, usize)> {
        each!(self, e => Registry::totals(&**e).await)
    }

    /// How many names a whole listing reads per step: Redis scans the
    /// whole users (or topics) set once per step, so it takes many at a time; the
    /// embedded engine holds its lock for each step, so it takes few.
    pub(crate) fn listing_step(&self) -> usize {
        match self {
            Store::Memory(_) => listing::MEMORY_STEP,
            Store::Redis(_) => listing::REDIS_STEP,
        }
    }

    /// One page of the listing: up to `limit` users after `after`.
    pub(crate) async fn list_page(&self, after: Option<&Cursor>, limit: usize) -> Result<Page> {
        listing::page(self, after, limit).await
    }

    /// One page of the followed topics: up to `limit` after `after`.
    pub(crate) async fn topics_page(
        &self,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<TopicsPage> {
        listing::topics_page(self, after, limit).await
    }

    pub(crate) async fn list_user(&self, user: &str) -> Result<Vec<ConnectionRecord>> {
        each!(self, e => Registry::list_user(&**e, user).await)
    }

    /// Up to `limit` followed topics after `after`, in name order, in a
    /// bounded step of the engine.
    pub(crate) async fn topic_names(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        each!(self, e => Registry::topic_names(&**e, after, limit).await)
    }

    /// How many streams and users follow each of `topics` that anyone
    /// follows, in the order given.
    pub(crate) async fn topic_counts(&self, topics: &[String]) -> Result<Vec<TopicCount>> {
        each!(self, e => Registry::topic_counts(&**e, topics).await)
    }

    /// How many topics have a follower.
    pub(crate) async fn topic_total(&self) -> Result<usize> {
        each!(self, e => Registry::topic_total(&**e).await)
    }

    /// Who follows `topic` (nobody: empty).
    pub(crate) async fn topic(&self, topic: &str) -> Result<TopicPresence> {
        each!(self, e => Registry::topic(&**e, topic).await)
    }

    pub(crate) async fn health(&self) -> Health {
        match self {
            Store::Memory(_) => Health {
                engine: "memory",
                redis: None,
                bus: None,
            },
            Store::Redis(r) => r.health().await,
        }
    }

    /// Publishes this node's report (Redis: for every node's console) and
    /// reads the deployment's: the nodes that reported lately and the
    /// registry totals. The embedded engine is this one node.
    pub(crate) async fn report_node(&self, me: &nodes::NodeStatus) -> Result<nodes::Deployment> {
        match self {
            Store::Memory(m) => {
                let (users, connections) = m.totals();
                Ok(nodes::Deployment {
                    nodes: vec![me.clone()],
                    users,
                    connections,
                })
            }
            Store::Redis(r) => r.report_node(me).await,
        }
    }

    /// The node stops reporting: its report goes at once.
    pub(crate) async fn forget_node(&self, node_id: &str) -> Result<()> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(r) => r.forget_node(node_id).await,
        }
    }

    /// The node is leaving: remove the records of what it still holds.
    pub(crate) async fn shutdown(&self) {
        match self {
            Store::Memory(m) => m.shutdown(),
            Store::Redis(r) => r.shutdown().await,
        }
    }
}

impl Listed for Store {
    async fn user_names(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        Store::user_names(self, after, limit).await
    }
    async fn users_connections(
        &self,
        users: &[String],
    ) -> Result<Vec<(String, Vec<ConnectionRecord>)>> {
        Store::users_connections(self, users).await
    }
    async fn totals(&self) -> Result<(usize, usize)> {
        Store::totals(self).await
    }
    async fn topic_names(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        Store::topic_names(self, after, limit).await
    }
    async fn topic_counts(&self, topics: &[String]) -> Result<Vec<TopicCount>> {
        Store::topic_counts(self, topics).await
    }
    async fn topic_total(&self) -> Result<usize> {
        Store::topic_total(self).await
    }
    fn listing_step(&self) -> usize {
        Store::listing_step(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_any_username_and_reject_the_rest() {
        for name in ["alice", "émile 李", "a&b=c?d/e", "x"] {
            let c = Cursor(name.to_string());
            let text = c.to_string();
            assert!(text.bytes().all(|b| b.is_ascii_hexdigit()), "{text}");
            assert_eq!(text.parse::<Cursor>(), Ok(c));
        }
        for bad in ["", "a", "zz", "616", "ff", "c3"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_parse_order_and_print() {
        let a: MsgId = "1700000000000-0".parse().unwrap();
        let b: MsgId = "1700000000000-12".parse().unwrap();
        let c: MsgId = "1700000000001-0".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "1700000000000-12");
        for bad in [
            "",
            "1",
            "a-1",
            "1-",
            "-1",
            "1-2-3",
            "1 -2",
            "99999999999999999999999-1",
        ] {
            assert!(bad.parse::<MsgId>().is_err(), "{bad:?}");
        }
    }
}
