//! The embedded engine (`redis.url` empty): one node, the registry and the
//! kept messages in the process, nothing to install.
//!
//! It answers exactly what the Redis engine answers (same ids, the same
//! routing ([`crate::store::target`]) and replay rules
//! ([`crate::store::kept`]), same counts), from one mutex-guarded state. A send
//! is kept, routed and handed to the node's router under that mutex, so
//! every stream sees messages in id order, as the Redis bus gives them.
//! Whenever the state needs the streams the node holds, it asks while
//! holding the mutex: a stream that ends unregisters from the hub before it
//! removes its record, so a snapshot taken under the mutex never writes
//! back a stream that already left.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::{Config, HistoryConfig};
use crate::store::target::Route;
use crate::store::{kept, seam, Result};
use crate::store::{
    sort_records, unix_ms, unix_now, Accepted, Cleared, ConnectionRecord, Inbound, Kept, KeptFor,
    LiveConn, Message, MsgId, NodeLink, Removed, Replay, Target, TopicCount, TopicPresence, Wrote,
};
use crate::topic::Members;

/// Records a clear handles per hold of the lock.
const CLEAR_STEP: usize = 1_000;

pub(crate) struct MemoryStore {
    state: Mutex<State>,
    link: Arc<dyn NodeLink>,
    node_id: String,
    history_on: bool,
    join_leave: bool,
}

struct Rec {
    username: String,
    connection_time: f64,
    last_heartbeat: f64,
    /// Shared with the topic index: one copy per stream and per topic.
    id: Arc<str>,
    topics: Box<[Arc<str>]>,
}

/// The streams that follow one topic, and how many users they are. Whether
/// a stream is its user's first or last on the topic is told by the user's
/// other records (a handful), not by a per-topic map of users: that map cost
/// every follower ~100 bytes.
#[derive(Default)]
struct Followers {
    conns: Members,
    users: usize,
}

#[derive(Default)]
struct State {
    conns: HashMap<String, Rec>,
    /// Users with at least one record, and their connection ids.
    users: BTreeMap<String, Vec<String>>,
    kept_users: HashMap<String, KeptStream>,
    kept_broadcasts: KeptStream,
    /// Followed topics, by name: none is ever empty.
    topics: BTreeMap<Arc<str>, Followers>,
    kept_topics: HashMap<String, KeptStream>,
    last_id: Option<MsgId>,
}

/// One user's kept messages (or the broadcasts), oldest first.
#[derive(Default)]
struct KeptStream {
    entries: VecDeque<Kept>,
    /// The newest entry dropped to keep the stream at its size: a client
    /// whose id is older missed it.
    trimmed: Option<MsgId>,
    /// Unix ms after which the whole stream is gone (`ttl` after its last
    /// message, like the Redis key's expiry).
    expires_ms: u64,
    /// One-tab messages a replay gave to some stream: never to another.
    claimed: HashSet<MsgId>,
    /// Streams that ended after being sent one-tab messages: the newest
    /// id each wrote to its socket (what it wrote is not replayed).
    wrote: HashMap<String, MsgId>,
}

impl KeptStream {
    fn push(&mut self, k: Kept, size: usize, ttl_ms: u64, now_ms: u64) {
        self.entries.push_back(k);
        // One more than is served, as the Redis engine keeps (append.lua
        // trims to at least size + 1): the id just before the served window
        // stays known, so a client that saw it missed nothing (no gap).
        while self.entries.len() > size.saturating_add(1) {
            if let Some(old) = self.entries.pop_front() {
                self.trimmed = self.trimmed.max(Some(old.id));
                self.claimed.remove(&old.id);
                if let KeptFor::Tab(c) = &old.to {
                    if !self.entries.iter().any(|k| k.to == old.to) {
                        self.wrote.remove(c);
                    }
                }
            }
        }
        self.expires_ms = now_ms.saturating_add(ttl_ms);
    }

    fn live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_ms
    }

    fn contains(&self, id: MsgId, now_ms: u64) -> bool {
        self.live(now_ms) && self.entries.iter().any(|k| k.id == id)
    }

    /// Whether a replay gives the one-tab message `k` to a stream now (and
    /// claims it for that stream): its target is gone without having
    /// written it, or it had none.
    fn claim(&mut self, k: &Kept, holds: impl Fn(&str) -> bool) -> bool {
        match &k.to {
            KeptFor::All => true,
            KeptFor::Tab(c) if holds(c) => false,
            KeptFor::Tab(c) if self.wrote.get(c).is_some_and(|w| *w >= k.id) => false,
            KeptFor::Tab(_) | KeptFor::FirstBack => self.claimed.insert(k.id),
        }
    }

    /// What is served ([`kept::window`]); also lost: what was trimmed
    /// after `last`.
    fn window(&self, size: usize, oldest_ms: u64, last: MsgId, now_ms: u64) -> (Vec<Kept>, bool) {
        if !self.live(now_ms) {
            return (Vec::new(), false);
        }
        let (served, lost) = kept::window(self.entries.iter().rev(), size, oldest_ms, Some(last));
        (served, lost || self.trimmed.is_some_and(|t| t > last))
    }
}

impl MemoryStore {
    pub(crate) fn new(config: &Config, link: Arc<dyn NodeLink>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            link,
            node_id: config.node_id(),
            history_on: config.history.enabled,
            join_leave: config.topics.join_leave,
        }
    }

    /// With `[topics] join_leave`, tells the other followers of each of
    /// `r`'s topics that it opened (`join`) or closed (`leave`).
    fn presence(&self, event: &'static str, id: &str, r: &Rec) {
        if !self.join_leave {
            return;
        }
        for topic in &r.topics {
            let data = serde_json::json!({
                "topic": &**topic,
                "username": r.username,
                "connection_id": id,
            });
            self.link.receive(Inbound::Presence {
                topic: topic.to_string(),
                except: id.to_string(),
                event,
                data: data.to_string(),
            });
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, id: &str, r: &Rec) -> ConnectionRecord {
        ConnectionRecord {
            connection_id: id.to_string(),
            username: r.username.clone(),
            connection_time: r.connection_time,
            last_heartbeat: r.last_heartbeat,
            topics: r.topics.iter().map(|t| t.to_string()).collect(),
            node_id: self.node_id.clone(),
        }
    }

    pub(crate) fn register(&self, r: ConnectionRecord) -> usize {
        let mut st = self.lock();
        let id = r.connection_id.clone();
        let joined = st.insert(
            r.connection_id,
            &r.username,
            r.connection_time,
            r.last_heartbeat,
            &r.topics,
        );
        if joined {
            if let Some(rec) = st.conns.get(&id) {
                self.presence("join", &id, rec);
            }
        }
        st.users.get(&r.username).map_or(0, Vec::len)
    }

    pub(crate) fn remove(&self, connection_id: &str, wrote: Option<Wrote>) {
        let mut st = self.lock();
        if let Some(r) = st.remove(connection_id) {
            self.presence("leave", connection_id, &r);
        }
        // Also when its record went first (a logout, an eviction).
        let Some(w) = wrote else {
            return;
        };
        if let Some(kept) = st.kept_users.get_mut(&w.username) {
            let target = KeptFor::Tab(connection_id.to_string());
            if kept.entries.iter().any(|k| k.to == target) {
                kept.wrote.insert(connection_id.to_string(), w.upto);
            }
        }
    }

    pub(crate) fn heartbeat(&self) {
        let now = unix_now();
        let mut st = self.lock();
        let mut written_back = 0;
        // Registered streams only: one still registering writes its own.
        for c in self.link.live() {
            if let Some(r) = st.conns.get_mut(&c.connection_id) {
                r.last_heartbeat = now;
            } else {
                // Someone removed a live stream's record (a cleanup with a
                // short timeout): the registry must hold every live stream.
                st.insert_live(c, now);
                written_back += 1;
            }
        }
        drop(st);
        if written_back > 0 {
            tracing::warn!(
                connections = written_back,
                "records of live connections were missing; written back"
            );
        }
    }

    pub(crate) fn send(&self, msgs: Vec<Message>, history: &HistoryConfig) -> Vec<Accepted> {
        let size = usize::try_from(history.size).unwrap_or(usize::MAX);
        let ttl_ms = history.ttl_secs.saturating_mul(1000);
        let mut st = self.lock();
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            let now_ms = unix_ms();
            let id = if self.history_on {
                Some(st.next_id(now_ms))
            } else {
                None
            };
            let text_id = id.map_or_else(|| uuid::Uuid::new_v4().to_string(), |i| i.to_string());
            let route = m.route();
            let (first, connections) = match route {
                // Counted and picked without copying the user's ids: this
                // runs for every message, under the lock.
                Route::FirstOnly(user) => {
                    let first = st.oldest_id(user);
                    let n = usize::from(first.is_some());
                    (first, n)
                }
                Route::User(user) => (None, st.user_conns(user).count()),
                Route::Broadcast => (None, st.conns.len()),
                Route::Topic(topic) => (None, st.topics.get(topic).map_or(0, |f| f.conns.len())),
            };
            let to = route.kept_for(first.as_deref());
            let target = route.target(first.into_iter().collect());
            if let Some(id) = id {
                let k = Kept {
                    id,
                    event: m.event.clone(),
                    data: m.data.clone(),
                    to,
                    home: false,
                };
                let stream = match (&m.topic, &m.to) {
                    (Some(topic), _) => st.kept_topics.entry(topic.clone()).or_default(),
                    (None, Some(user)) => st.kept_users.entry(user.clone()).or_default(),
                    (None, None) => &mut st.kept_broadcasts,
                };
                if !stream.live(now_ms) {
                    *stream = KeptStream::default();
                }
                stream.push(k, size, ttl_ms, now_ms);
            }
            // A user's message goes to every local tab of the user, also
            // one whose record is being written right now.
            if !matches!(&target, Target::Ids(ids) if ids.is_empty()) {
                self.link.receive(Inbound::Deliver {
                    id: text_id.clone(),
                    event: m.event,
                    data: m.data,
                    target,
                });
            }
            out.push(Accepted {
                id: text_id,
                connections,
            });
        }
        out
    }

    pub(crate) fn replay(
        &self,
        conn: &LiveConn,
        last: Option<MsgId>,
        history: &HistoryConfig,
    ) -> Replay {
        let user = conn.username.as_str();
        if !self.history_on {
            return Replay::default();
        }
        let zero = MsgId { ms: 0, seq: 0 };
        let last_id = last.unwrap_or(zero);
        let size = usize::try_from(history.size).unwrap_or(usize::MAX);
        let now_ms = unix_ms();
        let oldest_ms = now_ms.saturating_sub(history.ttl_secs.saturating_mul(1000));
        let mut st = self.lock();
        let mut empty = KeptStream::default();
        let st = &mut *st;
        let mine = st.kept_users.get_mut(user).unwrap_or(&mut empty);
        let others = std::iter::once(&st.kept_broadcasts).chain(
            conn.topics
                .iter()
                .filter_map(|t| st.kept_topics.get(t.as_str())),
        );
        let mut known = mine.contains(last_id, now_ms);
        let (mine_served, mut lost) = mine.window(size, oldest_ms, last_id, now_ms);
        let mut parts = vec![mine_served];
        for stream in others {
            known |= stream.contains(last_id, now_ms);
            let (served, lost_here) = stream.window(size, oldest_ms, last_id, now_ms);
            lost |= lost_here;
            parts.push(served);
        }
        let mut replay = kept::finish(last, !known || lost, parts);
        // Asked under the lock: a stream leaves the hub before it removes
        // its record (and says what it wrote).
        let holds = |c: &str| self.link.holds(c);
        replay.entries.retain(|k| mine.claim(k, holds));
        replay
    }

    pub(crate) fn user_connection_ids(&self, user: &str, limit: Option<usize>) -> Vec<String> {
        let mut ids = self.lock().user_ids(user);
        if let Some(n) = limit {
            ids.truncate(n);
        }
        ids
    }

    pub(crate) fn evict(&self, ids: Vec<String>, reason: &str) {
        let mut st = self.lock();
        for id in &ids {
            if let Some(r) = st.remove(id) {
                self.presence("leave", id, &r);
            }
        }
        self.link.receive(Inbound::Close {
            ids,
            reason: Some(reason.to_string()),
        });
    }

    pub(crate) fn disconnect_user(&self, user: &str) -> Removed {
        let mut st = self.lock();
        let mut removed = Removed::default();
        for id in st.users.get(user).cloned().unwrap_or_default() {
            if let Some(r) = st.remove(&id) {
                self.presence("leave", &id, &r);
            }
            removed.add(id, user.to_string());
        }
        self.link.receive(Inbound::CloseUser {
            username: user.to_string(),
        });
        removed
    }

    /// Counts every record whose heartbeat is not after the clear's start
    /// as removed, as the Redis engine does, but keeps (with a fresh
    /// heartbeat) those of streams this node holds: the end state of the
    /// Redis engine's clear and write-back, without the moment in which a
    /// live stream has no record. Nothing stale can exist in one process;
    /// the answer means the same in both engines. The lock is taken for
    /// [`CLEAR_STEP`] records at a time, so delivery goes on meanwhile.
    pub(crate) async fn clear(&self) -> Cleared {
        let began = unix_now();
        let mut cleared = Cleared::default();
        let mut after: Option<String> = None;
        while let Some(last) = self.clear_step(after.as_deref(), began, &mut cleared) {
            after = Some(last);
            tokio::task::yield_now().await;
        }
        self.write_back_missing().await;
        cleared
    }

    /// One hold of the lock: the users after `after` up to some
    /// [`CLEAR_STEP`] records; returns the last of them (none: done).
    fn clear_step(&self, after: Option<&str>, began: f64, cleared: &mut Cleared) -> Option<String> {
        let mut st = self.lock();
        let now = unix_now();
        let users: Vec<String> = {
            let mut seen = 0;
            st.users_after(after)
                .take_while(|(_, ids)| {
                    let go = seen < CLEAR_STEP;
                    seen += ids.len();
                    go
                })
                .map(|(u, _)| u.clone())
                .collect()
        };
        let last = users.last().cloned()?;
        for user in users {
            let ids = st.users.get(&user).cloned().unwrap_or_default();
            let mut counted = false;
            for id in ids {
                let Some(r) = st.conns.get_mut(&id) else {
                    continue;
                };
                if r.last_heartbeat > began {
                    continue;
                }
                cleared.connection_count += 1;
                counted = true;
                // Asked under the lock: a stream leaves the hub before it
                // removes its record, so a held one is still live.
                if self.link.holds(&id) {
                    r.last_heartbeat = now;
                } else {
                    st.remove(&id);
                }
            }
            cleared.user_count += usize::from(counted);
        }
        Some(last)
    }

    /// Writes back the record of every held stream that has none (someone
    /// removed it, e.g. a cleanup with a short timeout), as a clear's
    /// write-back does; a step of the lock per [`CLEAR_STEP`] streams.
    async fn write_back_missing(&self) {
        if self.lock().conns.len() >= self.link.live_count() {
            // Every record is a held stream's: none can be missing.
            return;
        }
        let live = self.link.live();
        for chunk in live.chunks(CLEAR_STEP) {
            self.write_back(chunk);
            tokio::task::yield_now().await;
        }
    }

    fn write_back(&self, live: &[LiveConn]) {
        let now = unix_now();
        let mut st = self.lock();
        for c in live {
            if !st.conns.contains_key(&c.connection_id) && self.link.holds(&c.connection_id) {
                st.insert_live(c.clone(), now);
            }
        }
    }

    /// Removes stale records, and the kept messages of users whose stream
    /// expired. A record of a stream this node holds is counted as removed
    /// (the Redis engine removes it and the node writes it back at once)
    /// but kept with a fresh heartbeat: the registry never lacks a live
    /// stream, so a one-tab send right after a short cleanup still finds
    /// it.
    pub(crate) fn sweep(&self, stale_before: f64) -> Removed {
        let now = unix_now();
        let now_ms = unix_ms();
        let mut st = self.lock();
        let stale: Vec<String> = st
            .conns
            .iter()
            .filter(|(_, r)| r.last_heartbeat <= stale_before)
            .map(|(id, _)| id.clone())
            .collect();
        let mut removed = Removed::default();
        for id in stale {
            // Asked under the lock, as in a clear.
            if self.link.holds(&id) {
                if let Some(r) = st.conns.get_mut(&id) {
                    r.last_heartbeat = now;
                    removed.add(id, r.username.clone());
                }
            } else if let Some(r) = st.remove(&id) {
                self.presence("leave", &id, &r);
                removed.add(id, r.username);
            }
        }
        st.kept_users.retain(|_, k| k.live(now_ms));
        st.kept_topics.retain(|_, k| k.live(now_ms));
        removed
    }

    pub(crate) fn user_names(&self, after: Option<&str>, limit: usize) -> Vec<String> {
        self.lock()
            .users_after(after)
            .take(limit)
            .map(|(u, _)| u.clone())
            .collect()
    }

    pub(crate) fn users_connections(
        &self,
        users: &[String],
    ) -> Vec<(String, Vec<ConnectionRecord>)> {
        let st = self.lock();
        users
            .iter()
            .filter_map(|u| {
                let list = self.records_of(&st, u);
                (!list.is_empty()).then(|| (u.clone(), list))
            })
            .collect()
    }

    pub(crate) fn totals(&self) -> (usize, usize) {
        let st = self.lock();
        (st.users.len(), st.conns.len())
    }

    fn records_of(&self, st: &State, user: &str) -> Vec<ConnectionRecord> {
        let mut list: Vec<ConnectionRecord> = st
            .users
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|id| st.conns.get(id).map(|r| self.record(id, r)))
            .collect();
        sort_records(&mut list);
        list
    }

    pub(crate) fn list_user(&self, user: &str) -> Vec<ConnectionRecord> {
        self.records_of(&self.lock(), user)
    }

    pub(crate) fn topic_names(&self, after: Option<&str>, limit: usize) -> Vec<String> {
        use std::ops::Bound;
        let st = self.lock();
        let from = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        st.topics
            .range::<str, _>((from, Bound::Unbounded))
            .take(limit)
            .map(|(t, _)| t.to_string())
            .collect()
    }

    pub(crate) fn topic_counts(&self, topics: &[String]) -> Vec<TopicCount> {
        let st = self.lock();
        topics
            .iter()
            .filter_map(|t| {
                st.topics.get(t.as_str()).map(|f| TopicCount {
                    topic: t.clone(),
                    connection_count: f.conns.len(),
                    user_count: f.users,
                })
            })
            .collect()
    }

    pub(crate) fn topic(&self, topic: &str) -> TopicPresence {
        let st = self.lock();
        let Some(f) = st.topics.get(topic) else {
            return TopicPresence::default();
        };
        let mut connections: Vec<ConnectionRecord> = f
            .conns
            .iter()
            .filter_map(|id| st.conns.get(&**id).map(|r| self.record(id, r)))
            .collect();
        let mut users: Vec<String> = connections.iter().map(|c| c.username.clone()).collect();
        users.sort_unstable();
        users.dedup();
        sort_records(&mut connections);
        TopicPresence { users, connections }
    }

    /// The node is leaving: its records go with it.
    pub(crate) fn shutdown(&self) {
        let mut st = self.lock();
        st.conns.clear();
        st.users.clear();
        st.topics.clear();
    }
}

impl State {
    /// Users after `after` (all, without it), in name order.
    fn users_after<'a>(
        &'a self,
        after: Option<&str>,
    ) -> impl Iterator<Item = (&'a String, &'a Vec<String>)> + 'a {
        use std::ops::Bound;
        let from = match after {
            Some(a) => Bound::Excluded(a.to_string()),
            None => Bound::Unbounded,
        };
        self.users.range((from, Bound::Unbounded))
    }

    /// Writes (back) the record of a stream the node holds.
    fn insert_live(&mut self, c: LiveConn, heartbeat: f64) {
        self.insert(
            c.connection_id,
            &c.username,
            c.connection_time,
            heartbeat,
            &c.topics,
        );
    }

    /// Stores a record with its topic memberships; true when it is new
    /// (not one written back over itself).
    fn insert(
        &mut self,
        id: String,
        user: &str,
        connection_time: f64,
        last_heartbeat: f64,
        topics: &[String],
    ) -> bool {
        let existed = self.remove(&id).is_some();
        let shared: Arc<str> = Arc::from(id.as_str());
        let topics: Box<[Arc<str>]> = topics
            .iter()
            .map(|t| {
                // another record of the user (this one is not listed yet)
                let user_follows = self.user_follows(user, t);
                let (name, followers) = match self.topics.get_key_value(t.as_str()) {
                    Some((name, _)) => (name.clone(), self.topics.get_mut(t.as_str())),
                    None => {
                        let name: Arc<str> = Arc::from(t.as_str());
                        self.topics.insert(name.clone(), Followers::default());
                        (name.clone(), self.topics.get_mut(t.as_str()))
                    }
                };
                if let Some(f) = followers {
                    if f.conns.insert(shared.clone()) && !user_follows {
                        f.users += 1;
                    }
                }
                name
            })
            .collect();
        self.conns.insert(
            id.clone(),
            Rec {
                username: user.to_string(),
                connection_time,
                last_heartbeat,
                id: shared,
                topics,
            },
        );
        self.users.entry(user.to_string()).or_default().push(id);
        !existed
    }

    /// Removes a record with its topic memberships, leaving no empty
    /// topic behind.
    fn remove(&mut self, id: &str) -> Option<Rec> {
        let r = self.conns.remove(id)?;
        self.unlink(id, &r.username);
        for topic in &r.topics {
            let user_follows = self.user_follows(&r.username, topic);
            let Some(f) = self.topics.get_mut(&**topic) else {
                continue;
            };
            if f.conns.remove(&r.id) && !user_follows {
                f.users = f.users.saturating_sub(1);
            }
            if f.conns.is_empty() {
                self.topics.remove(&**topic);
            }
        }
        Some(r)
    }

    /// Whether a record of `user` still in the registry follows `topic`.
    fn user_follows(&self, user: &str, topic: &str) -> bool {
        self.users.get(user).is_some_and(|ids| {
            ids.iter().any(|id| {
                self.conns
                    .get(id)
                    .is_some_and(|r| r.topics.iter().any(|t| **t == *topic))
            })
        })
    }

    fn unlink(&mut self, id: &str, user: &str) {
        if let Some(ids) = self.users.get_mut(user) {
            ids.retain(|x| x != id);
            if ids.is_empty() {
                self.users.remove(user);
            }
        }
    }

    /// The user's connection ids, oldest first (ties by id).
    fn user_ids(&self, user: &str) -> Vec<String> {
        let mut with_time: Vec<(f64, &String)> = self.user_conns(user).collect();
        with_time.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        with_time.into_iter().map(|(_, id)| id.clone()).collect()
    }

    /// The user's connections as (connection time, id), in no order.
    fn user_conns<'a>(&'a self, user: &str) -> impl Iterator<Item = (f64, &'a String)> + 'a {
        self.users
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|id| self.conns.get(id).map(|r| (r.connection_time, id)))
    }

    /// The user's oldest connection (ties by id), as [`State::user_ids`]
    /// would put first.
    fn oldest_id(&self, user: &str) -> Option<String> {
        self.user_conns(user)
            .min_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)))
            .map(|(_, id)| id.clone())
    }

    /// The next id of the one sequence: this millisecond, or after the
    /// last id if the clock has not moved past it (or went back).
    fn next_id(&mut self, now_ms: u64) -> MsgId {
        let id = match self.last_id {
            Some(last) if now_ms <= last.ms => MsgId {
                ms: last.ms,
                seq: last.seq + 1,
            },
            _ => MsgId { ms: now_ms, seq: 0 },
        };
        self.last_id = Some(id);
        id
    }
}

impl seam::Registry for MemoryStore {
    async fn register(&self, record: ConnectionRecord) -> Result<usize> {
        Ok(MemoryStore::register(self, record))
    }
    fn remove(&self, connection_id: String, wrote: Option<Wrote>) {
        MemoryStore::remove(self, &connection_id, wrote);
    }
    fn heartbeat(&self) {
        MemoryStore::heartbeat(self);
    }
    async fn user_connection_ids(&self, user: &str, limit: Option<usize>) -> Result<Vec<String>> {
        Ok(MemoryStore::user_connection_ids(self, user, limit))
    }
    async fn user_names(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        Ok(MemoryStore::user_names(self, after, limit))
    }
    async fn users_connections(
        &self,
        users: &[String],
    ) -> Result<Vec<(String, Vec<ConnectionRecord>)>> {
        Ok(MemoryStore::users_connections(self, users))
    }
    async fn totals(&self) -> Result<(usize, usize)> {
        Ok(MemoryStore::totals(self))
    }
    async fn list_user(&self, user: &str) -> Result<Vec<ConnectionRecord>> {
        Ok(MemoryStore::list_user(self, user))
    }
    async fn clear(&self) -> Result<Cleared> {
        Ok(MemoryStore::clear(self).await)
    }
    async fn sweep(&self, stale_before: f64) -> Result<Removed> {
        Ok(MemoryStore::sweep(self, stale_before))
    }
    async fn topic_names(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        Ok(MemoryStore::topic_names(self, after, limit))
    }
    async fn topic_counts(&self, topics: &[String]) -> Result<Vec<TopicCount>> {
        Ok(MemoryStore::topic_counts(self, topics))
    }
    async fn topic_total(&self) -> Result<usize> {
        Ok(self.lock().topics.len())
    }
    async fn topic(&self, topic: &str) -> Result<TopicPresence> {
        Ok(MemoryStore::topic(self, topic))
    }
}

impl seam::History for MemoryStore {
    async fn replay(
        &self,
        conn: &LiveConn,
        last: Option<MsgId>,
        history: &HistoryConfig,
    ) -> Result<Replay> {
        Ok(MemoryStore::replay(self, conn, last, history))
    }
}

impl seam::Delivery for MemoryStore {
    /// Delivery is in the process, under the send's lock.
    const QUEUES_ON_SEND: bool = true;

    async fn send(&self, msgs: Vec<Message>, history: &HistoryConfig) -> Result<Vec<Accepted>> {
        Ok(MemoryStore::send(self, msgs, history))
    }
    async fn evict(&self, _user: &str, ids: Vec<String>, reason: &str) -> Result<()> {
        MemoryStore::evict(self, ids, reason);
        Ok(())
    }
    async fn disconnect_user(&self, user: &str) -> Result<Removed> {
        Ok(MemoryStore::disconnect_user(self, user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A node that holds these streams.
    struct Holds(Vec<LiveConn>);

    impl NodeLink for Holds {
        fn receive(&self, _: Inbound) -> usize {
            0
        }
        fn live(&self) -> Vec<LiveConn> {
            self.0.clone()
        }
        fn holds(&self, connection_id: &str) -> bool {
            self.0.iter().any(|c| c.connection_id == connection_id)
        }
        fn live_count(&self) -> usize {
            self.0.len()
        }
    }

    #[tokio::test]
    async fn a_clear_of_many_steps_keeps_held_streams_and_counts_like_redis() {
        let t = unix_now() - 60.0;
        let rec = |i: usize| ConnectionRecord {
            connection_id: format!("c{i}"),
            username: format!("user{}", i % 900),
            connection_time: t,
            last_heartbeat: t,
            topics: Vec::new(),
            node_id: String::new(),
        };
        let live = |i: usize| LiveConn {
            connection_id: format!("c{i}"),
            username: format!("user{}", i % 900),
            connection_time: t,
            topics: Vec::new(),
        };
        // Every third stream is held; one held stream lost its record.
        let mut held: Vec<LiveConn> = (0..2500).step_by(3).map(live).collect();
        held.push(live(9999));
        let store = MemoryStore::new(&Config::default(), Arc::new(Holds(held)));
        for i in 0..2500 {
            store.register(rec(i));
        }
        let cleared = store.clear().await;
        // Three steps' worth, each user once, as the Redis engine counts.
        assert_eq!(
            cleared,
            Cleared {
                connection_count: 2500,
                user_count: 900
            }
        );
        let (_, total) = store.totals();
        assert_eq!(total, (0..2500).step_by(3).count() + 1, "held streams only");
        let names = store.user_names(None, usize::MAX);
        let listed: HashSet<String> = store
            .users_connections(&names)
            .into_iter()
            .flat_map(|(_, list)| list)
            .map(|r| {
                assert!(r.last_heartbeat > t, "a kept record is written back fresh");
                r.connection_id
            })
            .collect();
        let want: HashSet<String> = (0..2500)
            .step_by(3)
            .chain([9999])
            .map(|i| format!("c{i}"))
            .collect();
        assert_eq!(listed, want);
        // A second clear counts the written-back records: they predate it.
        assert_eq!(store.clear().await.connection_count, want.len());
    }

    #[test]
    fn a_user_counts_once_on_a_topic_until_the_last_of_their_streams_goes() {
        let store = MemoryStore::new(&Config::default(), Arc::new(Holds(Vec::new())));
        let rec = |id: &str, user: &str, topics: &[&str]| ConnectionRecord {
            connection_id: id.into(),
            username: user.into(),
            connection_time: 1.0,
            last_heartbeat: 1.0,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            node_id: String::new(),
        };
        let counts = |store: &MemoryStore| {
            store
                .topic_counts(&["doc".into(), "own".into()])
                .into_iter()
                .map(|c| format!("{} {} {}", c.topic, c.connection_count, c.user_count))
                .collect::<Vec<_>>()
        };
        store.register(rec("a1", "alice", &["doc"]));
        store.register(rec("a2", "alice", &["doc", "own"]));
        store.register(rec("b1", "bob", &["doc"]));
        store.register(rec("a3", "alice", &[]));
        assert_eq!(counts(&store), ["doc 3 2", "own 1 1"]);
        // written back over itself: counted once still
        store.register(rec("a2", "alice", &["doc", "own"]));
        store.remove("a1", None);
        assert_eq!(counts(&store), ["doc 2 2", "own 1 1"]);
        assert_eq!(store.topic("doc").users, ["alice", "bob"]);
        store.remove("a2", None);
        assert_eq!(counts(&store), ["doc 1 1"]);
        assert_eq!(store.topic("doc").users, ["bob"]);
        store.remove("b1", None);
        assert!(counts(&store).is_empty());
        assert_eq!(store.topic_names(None, 10), Vec::<String>::new());
    }

    fn kept(ms: u64, seq: u64) -> Kept {
        Kept {
            id: MsgId { ms, seq },
            event: "m".into(),
            data: "1".into(),
            to: KeptFor::All,
            home: false,
        }
    }

    #[test]
    fn ids_keep_order_when_the_clock_stalls_or_goes_back() {
        let mut st = State::default();
        let a = st.next_id(1000);
        let b = st.next_id(1000);
        let c = st.next_id(999);
        let d = st.next_id(1001);
        assert!(a < b && b < c && c < d, "{a} {b} {c} {d}");
        assert_eq!(d, MsgId { ms: 1001, seq: 0 });
    }

    #[test]
    fn window_reports_what_fell_out_after_the_id() {
        let mut s = KeptStream::default();
        for i in 1..=5 {
            s.push(kept(100 + i, 0), 3, 10_000, 100);
        }
        // Entries 101 and 102 were trimmed: an id before them is a gap.
        let (served, lost) = s.window(3, 0, MsgId { ms: 101, seq: 0 }, 200);
        assert_eq!(served.len(), 3);
        assert!(lost);
        let (_, lost) = s.window(3, 0, MsgId { ms: 102, seq: 0 }, 200);
        assert!(!lost);
        // By age: 103 is too old to serve, and it came after 102.
        let (served, lost) = s.window(3, 104, MsgId { ms: 102, seq: 0 }, 200);
        assert_eq!(served.len(), 2);
        assert!(lost);
        // Expired as a whole.
        let (served, lost) = s.window(3, 0, MsgId { ms: 102, seq: 0 }, 20_000);
        assert!(served.is_empty() && !lost);
    }

    #[test]
    fn the_id_just_before_the_served_window_is_still_known() {
        let mut s = KeptStream::default();
        for i in 1..=5 {
            s.push(kept(100 + i, 0), 3, 10_000, 100);
        }
        // 103..105 are served; 102 saw everything before them: no gap,
        // as with the Redis engine.
        assert!(s.contains(MsgId { ms: 102, seq: 0 }, 200));
        let (served, lost) = s.window(3, 0, MsgId { ms: 102, seq: 0 }, 200);
        assert_eq!(served.len(), 3);
        assert!(!lost);
        assert!(!s.contains(MsgId { ms: 101, seq: 0 }, 200));
    }
}
