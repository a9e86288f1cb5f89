//! Kept messages for `Last-Event-ID` replay in Redis: one stream per user,
//! one per topic and one for broadcasts. A replay serves exactly the newest
//! `history.size` entries younger than `history.ttl_secs` of each; Redis
//! trims the rest cheaply on append (`lua/append.lua`) and expires a stream
//! `ttl` after its last message.
//!
//! On one Redis every message id comes from one sequence (`{ms}-{seq}`,
//! Redis time), so the ids of a user's messages, its topics' and the
//! broadcasts are ordered among themselves and a replay can merge the
//! streams. Keeping a message and reading its targets is one atomic step,
//! so a connection that registers and then reads the history misses
//! nothing at the seam: what it did not read was sent after it registered
//! and reaches its queue.
//!
//! On a Redis Cluster one sequence would be one slot every send touches:
//! each partition keeps its users' streams with its own sequence, and the
//! home the broadcasts' and topics' with its own, so a stream's position
//! is a pair ([`Pos`]); a replay reads each part after its own id, with
//! its own gap, and a catch-up runs per partition.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use redis::Script;
use tokio::sync::{mpsc, oneshot};

use super::conn::SharedConn;
use super::keys::{Keys, Layout};
use crate::store::target::Route;
use crate::store::{
    kept, Kept, KeptFor, LiveConn, Message, MsgId, Pos, Replay, Result, StoreError,
};

type AppendReply = oneshot::Sender<Result<(String, Targets)>>;

/// Group commit of sends: concurrent sends wait for one script call that
/// keeps them all (in arrival order) instead of one round trip each.
#[derive(Clone)]
pub(crate) struct Appender {
    tx: mpsc::Sender<(Message, u64, u64, AppendReply)>,
}

/// Sends queued beyond this wait for room (back-pressure to the API).
const APPEND_QUEUE: usize = 4096;
/// Messages per script call.
const APPEND_BATCH: usize = 128;

impl Appender {
    /// The handle and the task that must run for it (until shutdown).
    pub(crate) fn new(
        history: History,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> (Self, impl std::future::Future<Output = ()>) {
        let (tx, mut rx) = mpsc::channel::<(Message, u64, u64, AppendReply)>(APPEND_QUEUE);
        let task = async move {
            let mut batch = Vec::with_capacity(APPEND_BATCH);
            loop {
                let n = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = rx.recv_many(&mut batch, APPEND_BATCH) => n,
                };
                if n == 0 {
                    return;
                }
                let (size, ttl) = (batch[0].1, batch[0].2);
                let (msgs, replies): (Vec<Message>, Vec<AppendReply>) =
                    batch.drain(..).map(|(m, _, _, r)| (m, r)).unzip();
                match history.append(&msgs, size, ttl).await {
                    Ok(results) => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(match &e {
                                StoreError::Resyncing => StoreError::Resyncing,
                                e => StoreError::Unavailable(e.to_string()),
                            }));
                        }
                    }
                }
            }
        };
        (Self { tx }, task)
    }

    /// Keeps one message; returns its id and targets.
    pub(crate) async fn append(
        &self,
        msg: Message,
        size: u64,
        ttl_secs: u64,
    ) -> Result<(String, Targets)> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Unavailable("node is shutting down".into());
        self.tx
            .send((msg, size, ttl_secs, reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Which kept stream a catch-up read entries from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum KeptIn {
    User(String),
    Topic(String),
    Broadcasts,
}

/// Who a message goes to, as the registry said when it was kept.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Targets {
    /// The user's connection ids (all, or the first).
    Ids(Vec<String>),
    /// How many connections a broadcast reaches.
    Count(usize),
}

type RawEntry = (String, Vec<(String, String)>);

/// Prepended to the scripts that keep messages: their id sequence.
const SEQUENCE: &str = include_str!("lua/sequence.lua");

/// The slot group a key lives in: a partition's index, or [`HOME_GROUP`].
/// Commands of one group may share a pipeline, also on a cluster.
type Group = usize;
const HOME_GROUP: Group = usize::MAX;

#[derive(Clone)]
pub(crate) struct History {
    conn: SharedConn,
    layout: Layout,
    /// This process on the bus (node id and a per-start id, set in
    /// [`super::RedisStore::open`]): the bus events it publishes and the
    /// catch-up claims it takes name it, so a node tells its own apart.
    origin: String,
    append: Script,
    keep_home: Script,
    replay: Script,
    timeout: Duration,
}

impl History {
    pub(crate) fn new(conn: SharedConn, layout: Layout, origin: String) -> Self {
        let sharded = layout.sharded();
        Self {
            conn,
            layout,
            origin,
            append: Script::new(&format!(
                "{}\n{SEQUENCE}\n{}",
                super::route::route_lua(sharded),
                include_str!("lua/append.lua")
            )),
            keep_home: Script::new(&format!(
                "{SEQUENCE}\n{}",
                include_str!("lua/keep_home.lua")
            )),
            replay: Script::new(&format!(
                "local SHARDED = {sharded}\n{}",
                include_str!("lua/replay.lua")
            )),
            timeout: Duration::from_secs(5),
        }
    }

    /// Ids come from two sequences, a stream's position is a [`Pos`]: on
    /// a Redis Cluster, each partition has its own sequence and the home
    /// one for the broadcasts and topics (README "Past one Redis primary").
    pub(crate) fn pairs(&self) -> bool {
        self.layout.sharded()
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        super::conn::bounded(self.timeout, fut).await
    }

    /// Reads the targets of each message (as [`Targets`]) and keeps it,
    /// in one round trip for the whole batch (on a cluster, one per
    /// partition it concerns and one in the home, concurrently); returns
    /// their ids and targets, in order. A message for one tab
    /// (`all_connections: false`) is kept with the tab it went to (another
    /// gets it by replay only if that one surely did not), else for the
    /// first tab to come back. [`StoreError::Resyncing`] (nothing kept)
    /// while a one-tab message finds no record during a write-back window.
    ///
    /// On a cluster the ids are [`PartId`]s: `{id}.` in the user's
    /// partition, `.{id}` in the home.
    pub(crate) async fn append(
        &self,
        batch: &[Message],
        size: u64,
        ttl_secs: u64,
    ) -> Result<Vec<(String, Targets)>> {
        if !self.pairs() {
            let all: Vec<usize> = (0..batch.len()).collect();
            return self
                .append_in(self.layout.home(), batch, &all, size, ttl_secs)
                .await;
        }
        let mut by_part: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        let mut home = Vec::new();
        for (i, m) in batch.iter().enumerate() {
            match m.route() {
                Route::FirstOnly(user) | Route::User(user) => by_part
                    .entry(self.layout.index_of(user))
                    .or_default()
                    .push(i),
                Route::Broadcast | Route::Topic(_) => home.push(i),
            }
        }
        let users = futures_util::future::try_join_all(by_part.iter().map(|(part, items)| async {
            let keys = &self.layout.parts()[*part];
            let rows = self.append_in(keys, batch, items, size, ttl_secs).await?;
            Ok::<_, StoreError>(items.iter().copied().zip(rows).collect::<Vec<_>>())
        }));
        let (users, homes) = tokio::try_join!(users, self.keep_home(batch, &home, size, ttl_secs))?;
        let mut out: Vec<Option<(String, Targets)>> = vec![None; batch.len()];
        for (i, (id, targets)) in users.into_iter().flatten() {
            out[i] = Some((format!("{id}."), targets));
        }
        for (i, (id, targets)) in homes {
            out[i] = Some((format!(".{id}"), targets));
        }
        out.into_iter()
            .map(|o| o.ok_or_else(|| StoreError::Unavailable("redis answered short".into())))
            .collect()
    }

    /// [`History::append`] of the messages `items` (indexes into `batch`)
    /// in one partition (on one Redis: all of them), one script call.
    async fn append_in(
        &self,
        keys: &Keys,
        batch: &[Message],
        items: &[usize],
        size: u64,
        ttl_secs: u64,
    ) -> Result<Vec<(String, Targets)>> {
        let mut inv = self.append.prepare_invoke();
        inv.key(keys.history_seq())
            .key(keys.resyncing())
            .key(keys.registry_since())
            .key(keys.synced())
            .arg(size)
            .arg(ttl_secs.saturating_mul(1000))
            .arg(keys.bus())
            .arg(keys.conn_prefix())
            .arg(super::route::resync_window_ms());
        for &i in items {
            let m = &batch[i];
            let route = m.route();
            match route {
                Route::FirstOnly(user) | Route::User(user) => {
                    inv.key(keys.history_user(user)).key(keys.user(user))
                }
                Route::Broadcast => inv.key(keys.history_broadcast()).key(keys.heartbeats()),
                Route::Topic(topic) => inv
                    .key(keys.history_topic(topic))
                    .key(keys.topic(topic))
                    .key(keys.topic_nodes(topic)),
            };
            inv.arg(&m.event)
                .arg(&m.data)
                .arg(route.script_name())
                .arg(bus_event_head(&self.origin, m));
        }
        let mut c = self.conn.get();
        let out: Vec<Vec<String>> = self
            .bounded(async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(out
            .into_iter()
            .zip(items)
            .map(|(row, &i)| {
                let mut it = row.into_iter();
                let id = it.next().unwrap_or_default();
                let count: usize = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let targets = if batch[i].to.is_some() {
                    Targets::Ids(it.collect())
                } else {
                    Targets::Count(count)
                };
                (id, targets)
            })
            .collect())
    }

    /// On a cluster: keeps the broadcasts and topics' messages `items`
    /// in the home and publishes them to every node (`lua/keep_home.lua`),
    /// then counts their streams over the partitions. Returns, per item,
    /// its home id and count.
    async fn keep_home(
        &self,
        batch: &[Message],
        items: &[usize],
        size: u64,
        ttl_secs: u64,
    ) -> Result<Vec<(usize, (String, Targets))>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let home = self.layout.home();
        let mut inv = self.keep_home.prepare_invoke();
        inv.key(home.history_seq())
            .arg(size)
            .arg(ttl_secs.saturating_mul(1000))
            .arg(home.bus());
        for &i in items {
            let m = &batch[i];
            match &m.topic {
                Some(topic) => inv.key(home.history_topic(topic)),
                None => inv.key(home.history_broadcast()),
            };
            inv.arg(&m.event)
                .arg(&m.data)
                .arg(bus_event_head(&self.origin, m));
        }
        let mut c = self.conn.get();
        let ids: Vec<String> = self
            .bounded(async move { inv.invoke_async(&mut c).await })
            .await?;
        // Each partition counts every message's streams in one pipeline.
        let per_part =
            futures_util::future::try_join_all(self.layout.parts().iter().map(|k| async move {
                let mut pipe = redis::pipe();
                for &i in items {
                    match &batch[i].topic {
                        Some(topic) => pipe.zcard(k.topic(topic)),
                        None => pipe.zcard(k.heartbeats()),
                    };
                }
                let mut c = self.conn.get();
                self.bounded(async move { pipe.query_async::<Vec<usize>>(&mut c).await })
                    .await
            }))
            .await?;
        Ok(items
            .iter()
            .enumerate()
            .zip(ids)
            .map(|((n, &i), id)| {
                let count = per_part.iter().filter_map(|counts| counts.get(n)).sum();
                (i, (id, Targets::Count(count)))
            })
            .collect())
    }

    /// What the stream `conn` missed after `last` (`None`: a malformed
    /// id, a gap): its user's messages, the broadcasts and its topics';
    /// one-tab messages it is given are claimed for it (`lua/replay.lua`).
    pub(crate) async fn replay(
        &self,
        conn: &LiveConn,
        last: Option<MsgId>,
        size: u64,
        ttl_secs: u64,
    ) -> Result<Replay> {
        let keys = self.layout.home();
        let streams = [
            keys.history_user(&conn.username),
            keys.history_broadcast(),
            keys.history_claims(&conn.username),
            keys.history_seq(),
        ]
        .into_iter()
        .chain(conn.topics.iter().map(|t| keys.history_topic(t)));
        let (gap, parts, _) = self
            .replay_in(keys, streams, conn, last, size, ttl_secs)
            .await?;
        Ok(kept::finish(
            last,
            gap,
            parts.into_iter().map(|p| parse_entries(p, false)),
        ))
    }

    /// One call of `lua/replay.lua` on `keys`' slot: `streams` are its
    /// KEYS (the user's stream, the broadcasts', the claims, the
    /// sequence, the topics'). Also answers the newest id of the streams.
    async fn replay_in(
        &self,
        keys: &Keys,
        streams: impl Iterator<Item = String>,
        conn: &LiveConn,
        last: Option<MsgId>,
        size: u64,
        ttl_secs: u64,
    ) -> Result<(bool, Vec<Vec<RawEntry>>, Option<MsgId>)> {
        let mut inv = self.replay.prepare_invoke();
        for key in streams {
            inv.key(key);
        }
        inv.arg(last.unwrap_or(MsgId::START).to_string())
            .arg(size)
            .arg(ttl_secs.saturating_mul(1000))
            .arg(keys.conn_prefix())
            .arg(keys.bus())
            .arg(&conn.connection_id)
            .arg(if self.pairs() { "1" } else { "0" });
        let mut c = self.conn.get();
        let (gap, parts, newest): (i64, Vec<Vec<RawEntry>>, String) = self
            .bounded(async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok((gap == 1, parts, newest.parse().ok()))
    }

    /// [`History::replay`] on a cluster: each part after its own id, in
    /// two calls (the user's partition, the home), each its own gap; the
    /// two merged by time. `last`: `None` for an id that is no pair.
    pub(crate) async fn replay_pair(
        &self,
        conn: &LiveConn,
        last: Option<Pos>,
        size: u64,
        ttl_secs: u64,
    ) -> Result<Replay> {
        let user = &conn.username;
        let part = self.layout.of_user(user);
        let home = self.layout.home();
        // The key of the other part in each call is one never written in
        // this slot: an empty stream.
        let mine = [
            part.history_user(user),
            part.history_broadcast(),
            part.history_claims(user),
            part.history_seq(),
        ]
        .into_iter();
        let shared = [
            home.history_user(user),
            home.history_broadcast(),
            home.history_claims(user),
            home.history_seq(),
        ]
        .into_iter()
        .chain(conn.topics.iter().map(|t| home.history_topic(t)));
        let (users, homes) = tokio::try_join!(
            self.replay_in(part, mine, conn, last.map(|p| p.user), size, ttl_secs),
            self.replay_in(home, shared, conn, last.map(|p| p.home), size, ttl_secs),
        )?;
        let (user_newest, home_newest) = (users.2, homes.2);
        let users = kept::finish(
            last.map(|p| p.user),
            users.0,
            users.1.into_iter().map(|p| parse_entries(p, false)),
        );
        let homes = kept::finish(
            last.map(|p| p.home),
            homes.0,
            homes.1.into_iter().map(|p| parse_entries(p, true)),
        );
        // Per part: where it was; on a gap, before everything given, or
        // when nothing is given, at the newest kept (as a stream opening
        // then would be).
        let was = |r: &Replay, id: Option<MsgId>, newest: Option<MsgId>| match (r.gap, id) {
            (false, Some(id)) => id,
            _ if r.entries.is_empty() => newest.unwrap_or(MsgId::START),
            _ => MsgId::START,
        };
        let start = Pos {
            user: was(&users, last.map(|p| p.user), user_newest),
            home: was(&homes, last.map(|p| p.home), home_newest),
        };
        let mut entries = users.entries;
        entries.extend(homes.entries);
        entries.sort_by_key(by_time);
        Ok(Replay {
            gap: users.gap || homes.gap,
            entries,
            start: Some(start),
        })
    }

    /// On a cluster: where a stream opening without `Last-Event-ID`
    /// starts, the newest id kept for its user and the newest of the
    /// broadcasts' and its topics' ([`MsgId::START`] where none).
    pub(crate) async fn tops(&self, conn: &LiveConn) -> Result<Pos> {
        let part = self.layout.of_user(&conn.username);
        let home = self.layout.home();
        let newest = |keys: Vec<String>| async move {
            let lists = self.newest_first(&keys, "-", 1).await?;
            Ok::<_, StoreError>(
                lists
                    .into_iter()
                    .flatten()
                    .filter_map(|(id, _)| id.parse::<MsgId>().ok())
                    .max()
                    .unwrap_or(MsgId::START),
            )
        };
        let shared = std::iter::once(home.history_broadcast())
            .chain(conn.topics.iter().map(|t| home.history_topic(t)))
            .collect();
        let (user, home) = tokio::try_join!(
            newest(vec![part.history_user(&conn.username)]),
            newest(shared)
        )?;
        Ok(Pos { user, home })
    }

    /// Messages kept since `since_ms` for each of `users` and `topics`,
    /// and (`broadcasts`) the broadcasts: what a node may have missed
    /// while its bus subscription was down. Each list is newest first (the
    /// newest `size`); the caller orders.
    pub(crate) async fn since(
        &self,
        users: &[String],
        topics: &[String],
        broadcasts: bool,
        since_ms: u64,
        size: u64,
    ) -> Result<Vec<(KeptIn, Vec<Kept>)>> {
        let from = format!("{since_ms}-0");
        let home = self.layout.home();
        let mut groups: BTreeMap<Group, Vec<(KeptIn, String)>> = BTreeMap::new();
        for u in users {
            let group = if self.pairs() {
                self.layout.index_of(u)
            } else {
                HOME_GROUP
            };
            groups.entry(group).or_default().push((
                KeptIn::User(u.clone()),
                self.layout.of_user(u).history_user(u),
            ));
        }
        let shared = groups.entry(HOME_GROUP).or_default();
        shared.extend(
            topics
                .iter()
                .map(|t| (KeptIn::Topic(t.clone()), home.history_topic(t))),
        );
        if broadcasts {
            shared.push((KeptIn::Broadcasts, home.history_broadcast()));
        }
        let from = &from;
        let read = futures_util::future::try_join_all(
            groups
                .values()
                .flat_map(|streams| streams.chunks(500))
                .map(|chunk| async move {
                    let keys: Vec<&String> = chunk.iter().map(|(_, key)| key).collect();
                    let lists = self.newest_first(&keys, from, size).await?;
                    Ok::<_, StoreError>(
                        chunk
                            .iter()
                            .zip(lists)
                            .map(|((source, _), list)| {
                                let home = self.pairs() && !matches!(source, KeptIn::User(_));
                                (source.clone(), parse_entries(list, home))
                            })
                            .collect::<Vec<_>>(),
                    )
                }),
        )
        .await?;
        Ok(read.into_iter().flatten().collect())
    }
}

impl History {
    /// The newest `count` entries of each stream of `keys` (of one slot)
    /// from `from` on, newest first, in one pipeline.
    async fn newest_first(
        &self,
        keys: &[impl redis::ToRedisArgs],
        from: &str,
        count: u64,
    ) -> Result<Vec<Vec<RawEntry>>> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("XREVRANGE")
                .arg(key)
                .arg("+")
                .arg(from)
                .arg("COUNT")
                .arg(count);
        }
        let mut c = self.conn.get();
        self.bounded(async move { pipe.query_async(&mut c).await })
            .await
    }
}

/// How a replay or a catch-up orders kept messages: by id in one sequence;
/// with two (a cluster), each in its order, interleaved by time.
pub(crate) fn by_time(k: &Kept) -> (u64, bool, u64) {
    (k.id.ms, k.home, k.id.seq)
}

impl History {
    /// Claims one-tab messages for this node's streams (a catch-up after
    /// the bus was down): returns, for each `(user, id)`, whether it was
    /// still unclaimed (and now is), so no replay gives it to another tab.
    pub(crate) async fn claim(
        &self,
        wanted: &[(String, MsgId)],
        ttl_secs: u64,
    ) -> Result<Vec<bool>> {
        let mut groups: BTreeMap<Group, Vec<usize>> = BTreeMap::new();
        for (i, (user, _)) in wanted.iter().enumerate() {
            groups
                .entry(self.layout.index_of(user))
                .or_default()
                .push(i);
        }
        let answers = futures_util::future::try_join_all(groups.into_values().map(|items| async {
            let mut pipe = redis::pipe();
            for &i in &items {
                let (user, id) = &wanted[i];
                let key = self.layout.of_user(user).history_claims(user);
                pipe.hset_nx(&key, id.to_string(), format!("catch-up:{}", self.origin))
                    .pexpire(&key, ttl_secs.saturating_mul(1000) as i64)
                    .ignore();
            }
            let mut c = self.conn.get();
            let got: Vec<bool> = self
                .bounded(async move { pipe.query_async(&mut c).await })
                .await?;
            Ok::<_, StoreError>(items.into_iter().zip(got).collect::<Vec<_>>())
        }))
        .await?;
        let mut out = vec![false; wanted.len()];
        for (i, claimed) in answers.into_iter().flatten() {
            out[i] = claimed;
        }
        Ok(out)
    }
}

/// A message's `deliver` bus event (the JSON of [`super::bus::BusEvent`])
/// without its `id`, `ids` and closing brace, which the keeping script
/// appends once it knows them.
pub(super) fn bus_event_head(origin: &str, m: &Message) -> String {
    let text = |s: &str| serde_json::Value::from(s).to_string();
    let mut head = String::with_capacity(m.data.len() + m.event.len() + 128);
    head.push_str(r#"{"type":"deliver","origin":"#);
    head.push_str(&text(origin));
    if let Some(user) = &m.to {
        head.push_str(r#","to":"#);
        head.push_str(&text(user));
    }
    head.push_str(if m.first_only {
        r#","first_only":true"#
    } else {
        r#","first_only":false"#
    });
    if let Some(topic) = &m.topic {
        head.push_str(r#","topic":"#);
        head.push_str(&text(topic));
    }
    head.push_str(if m.to.is_none() && m.topic.is_none() {
        r#","broadcast":true"#
    } else {
        r#","broadcast":false"#
    });
    head.push_str(r#","event":"#);
    head.push_str(&text(&m.event));
    head.push_str(r#","data":"#);
    head.push_str(&text(&m.data));
    head
}

/// XRANGE/XREVRANGE entries, in the order they were read (the callers
/// merge several lists and order them by id once).
fn parse_entries(raw: Vec<RawEntry>, home: bool) -> Vec<Kept> {
    raw.into_iter()
        .filter_map(|(id, fields)| {
            let id: MsgId = id.parse().ok()?;
            let mut kept = Kept {
                id,
                event: String::new(),
                data: String::new(),
                to: KeptFor::All,
                home,
            };
            let (mut flag, mut tab) = (None, None);
            for (k, v) in fields {
                match k.as_str() {
                    "e" => kept.event = v,
                    "d" => kept.data = v,
                    "f" => flag = Some(v),
                    "c" => tab = Some(v),
                    _ => {}
                }
            }
            kept.to = match (flag.as_deref(), tab) {
                (Some("1"), Some(c)) => KeptFor::Tab(c),
                // Kept by an older version, delivered live to a tab it
                // did not name: no other tab may get it.
                (Some("1"), None) => KeptFor::Tab(String::new()),
                (Some("2"), _) => KeptFor::FirstBack,
                _ => KeptFor::All,
            };
            Some(kept)
        })
        .collect()
}

/// The node's [`RecentIds`], shared by the bus subscriber and its catch-up.
pub(crate) type Recent = std::sync::Arc<std::sync::Mutex<RecentIds>>;

/// Ids of messages this node delivered lately, so that a catch-up from the
/// history after a bus outage does not deliver them twice.
pub(crate) struct RecentIds {
    keep: Duration,
    set: HashSet<Seen>,
    order: VecDeque<(Instant, Seen)>,
}

/// A delivered message: its sequence (bus.rs `sequence_of`) and its id in
/// it (on a cluster each partition's sequence issues the same ids).
pub(crate) type Seen = (usize, MsgId);

impl RecentIds {
    pub(crate) fn new(keep: Duration) -> Self {
        Self {
            keep,
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn insert(&mut self, id: Seen) {
        let now = Instant::now();
        while let Some(&(t, old)) = self.order.front() {
            if now.duration_since(t) < self.keep {
                break;
            }
            self.order.pop_front();
            self.set.remove(&old);
        }
        if self.set.insert(id) {
            self.order.push_back((now, id));
        }
    }

    pub(crate) fn contains(&self, id: &Seen) -> bool {
        self.set.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_forget_after_their_time() {
        let mut r = RecentIds::new(Duration::from_millis(0));
        let id = (0, MsgId { ms: 1, seq: 0 });
        r.insert(id);
        r.insert((0, MsgId { ms: 2, seq: 0 }));
        assert!(!r.contains(&id));
        let mut r = RecentIds::new(Duration::from_secs(60));
        r.insert(id);
        assert!(r.contains(&id));
        assert!(!r.contains(&(1, id.1)), "another sequence's same id");
    }
}
