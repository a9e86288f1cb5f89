//! The connection registry in Redis (README "Redis layout"): atomic
//! register and remove, heartbeats, sweeps, clears, listings and topic
//! presence.
//!
//! Every write that touches several keys of one connection is a Lua
//! script, so no reader sees half a connection and no clear or sweep
//! leaves an orphan (an empty user set is gone and the user leaves the users
//! set; a topic's keys go with its last follower and it leaves the topics
//! set). Key names come from [`super::keys`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::conn::SharedConn;
use super::keys::Keys;
use crate::store::{
    sort_records, Cleared, ConnectionRecord, Removed, Result, TopicCount, TopicPresence, Wrote,
};

/// Shared by the registry scripts: writing and removing one connection
/// with all its keys (after `route.lua`, for join/leave events).
const LUA_RECORDS: &str = include_str!("lua/records.lua");

fn fmt_time(t: f64) -> String {
    format!("{t:.6}")
}

/// How many records one sweep script removes before yielding Redis to
/// other clients.
const SWEEP_BATCH: usize = 250;

/// Ids per script call, so one call never blocks Redis for long.
const IDS_PER_CALL: usize = 2000;

/// Records one registration script writes.
const REGISTER_PER_CALL: usize = 1000;

/// Records one clear step removes (each some ten Redis writes): a step
/// stays within a few milliseconds.
const CLEAR_BATCH: usize = 250;

/// Names one SSCAN call of a listing asks for.
const SCAN_COUNT: usize = 1000;

/// Users whose connection ids one listing round trip reads.
const USERS_PER_CALL: usize = 500;

/// A handle on the deployment's Redis: the shared connection, the key
/// names, and the registry's scripts as methods. The bus, the write-back
/// window and the node reports publish and run their scripts through it
/// too, so it is named for what it reaches, not for the registry alone.
#[derive(Clone)]
pub(crate) struct Redis {
    conn: SharedConn,
    keys: Keys,
    /// `[topics] join_leave`: the registry scripts tell a topic's
    /// followers when one of its streams opens or closes.
    join_leave: bool,
    register: Script,
    remove_ids: Script,
    sweep: Script,
    delete_user: Script,
    clear: Script,
    heartbeat: Script,
    timeout: Duration,
}

impl Redis {
    pub(crate) fn new(conn: SharedConn, keys: Keys, join_leave: bool) -> Self {
        let with_records = |body: &str| {
            Script::new(&format!(
                "{}\n{LUA_RECORDS}\n{body}",
                super::shared::LUA_ROUTE
            ))
        };
        Self {
            conn,
            keys,
            join_leave,
            register: with_records(include_str!("lua/register.lua")),
            remove_ids: with_records(include_str!("lua/remove_ids.lua")),
            sweep: with_records(include_str!("lua/sweep.lua")),
            delete_user: with_records(include_str!("lua/delete_user.lua")),
            clear: with_records(include_str!("lua/clear.lua")),
            heartbeat: Script::new(include_str!("lua/heartbeat.lua")),
            timeout: Duration::from_secs(5),
        }
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A clone of the multiplexed connection, for modules that own other
    /// Redis keys (history, bus).
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.conn.get()
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        super::conn::bounded(self.timeout, fut).await
    }

    /// What every registry script takes first (`lua/records.lua`): the
    /// registry-wide keys, and the prefixes of the keys it derives from
    /// what it reads.
    fn common_args(&self, inv: &mut redis::ScriptInvocation<'_>) {
        let k = &self.keys;
        inv.key(k.users())
            .key(k.heartbeats())
            .key(k.topics())
            .key(k.resyncing())
            .key(k.registry_since())
            .key(k.synced())
            .arg(k.conn_prefix())
            .arg(k.user_prefix())
            .arg(k.topic_prefix())
            .arg(k.topic_users_prefix())
            .arg(k.topic_nodes_prefix())
            .arg(if self.join_leave {
                k.bus()
            } else {
                String::new()
            })
            .arg(super::shared::resync_window_ms());
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        let mut c = self.conn.get();
        self.bounded(async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(|_| ())
    }

    /// Writes the records of new streams (`new`: their topics' other
    /// followers are told they joined) and of live streams written back
    /// (`back`), each with all its keys and topic memberships, in one
    /// script call per [`REGISTER_PER_CALL`] records (a node writing back a
    /// hundred thousand streams after a clear must not hold Redis for the
    /// whole of it). Returns, for each of `new`, how many connections its
    /// user has once it is added (all nodes), so the per-user limit costs
    /// no extra round trip.
    pub(crate) async fn register(
        &self,
        new: &[ConnectionRecord],
        back: &[ConnectionRecord],
    ) -> Result<Vec<usize>> {
        let all: Vec<(&ConnectionRecord, bool)> = new
            .iter()
            .map(|r| (r, true))
            .chain(back.iter().map(|r| (r, false)))
            .collect();
        let mut counts = Vec::with_capacity(all.len());
        for chunk in all.chunks(REGISTER_PER_CALL) {
            counts.extend(self.register_chunk(chunk).await?);
        }
        counts.truncate(new.len());
        Ok(counts)
    }

    async fn register_chunk(&self, records: &[(&ConnectionRecord, bool)]) -> Result<Vec<usize>> {
        let mut inv = self.register.prepare_invoke();
        self.common_args(&mut inv);
        for (r, new) in records {
            inv.arg(&r.connection_id)
                .arg(&r.username)
                .arg(fmt_time(r.connection_time))
                .arg(fmt_time(r.last_heartbeat))
                .arg(&r.node_id)
                .arg(r.topics.join(","))
                .arg(if *new { "1" } else { "0" });
        }
        let mut c = self.conn.get();
        self.bounded(async move { inv.invoke_async::<Vec<usize>>(&mut c).await })
            .await
    }

    /// Removes the given connections (and only them); returns what existed.
    pub(crate) async fn remove(&self, ids: &[String]) -> Result<Removed> {
        let ended: Vec<(String, Option<Wrote>)> = ids.iter().map(|id| (id.clone(), None)).collect();
        self.remove_ended(&ended, 0).await
    }

    /// Removes the connections of streams that ended; what a stream wrote
    /// (it was sent one-tab messages) is remembered for `wrote_ttl_secs` so
    /// that a replay does not give it to another tab (`lua/remove_ids.lua`).
    pub(crate) async fn remove_ended(
        &self,
        ended: &[(String, Option<Wrote>)],
        wrote_ttl_secs: u64,
    ) -> Result<Removed> {
        let mut removed = Removed::default();
        for chunk in ended.chunks(IDS_PER_CALL) {
            let mut inv = self.remove_ids.prepare_invoke();
            self.common_args(&mut inv);
            inv.arg(self.keys.history_claims_prefix())
                .arg(wrote_ttl_secs.saturating_mul(1000).max(1));
            for (id, wrote) in chunk {
                match wrote {
                    // Ids and message ids hold no `=`; the name may.
                    Some(w) => inv.arg(format!("{id}={}={}", w.upto, w.username)),
                    None => inv.arg(id),
                };
            }
            let mut c = self.conn.get();
            let flat: Vec<String> = self
                .bounded(async move { inv.invoke_async(&mut c).await })
                .await?;
            absorb(&mut removed, flat);
        }
        Ok(removed)
    }

    /// Updates `last_heartbeat` of the ids that still have a record, in one
    /// round trip per [`IDS_PER_CALL`] ids; returns the ids without one.
    pub(crate) async fn heartbeat(&self, ids: &[String], now: f64) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        let now = fmt_time(now);
        for chunk in ids.chunks(IDS_PER_CALL) {
            let mut inv = self.heartbeat.prepare_invoke();
            inv.key(self.keys.heartbeats())
                .arg(self.keys.conn_prefix())
                .arg(&now);
            for id in chunk {
                inv.arg(id);
            }
            let mut c = self.conn.get();
            let absent: Vec<String> = self
                .bounded(async move { inv.invoke_async(&mut c).await })
                .await?;
            missing.extend(absent);
        }
        Ok(missing)
    }

    /// Removes records whose heartbeat is at or before `stale_before`;
    /// `leave`: their topics' other followers are told (not when the sweep
    /// may remove live streams' records, which are written back at once).
    pub(crate) async fn sweep(&self, stale_before: f64, leave: bool) -> Result<Removed> {
        let mut removed = Removed::default();
        loop {
            let mut inv = self.sweep.prepare_invoke();
            self.common_args(&mut inv);
            inv.arg(fmt_time(stale_before))
                .arg(SWEEP_BATCH)
                .arg(if leave { "1" } else { "0" });
            let mut c = self.conn.get();
            let (seen, flat): (usize, Vec<String>) = self
                .bounded(async move { inv.invoke_async(&mut c).await })
                .await?;
            absorb(&mut removed, flat);
            if seen < SWEEP_BATCH {
                return Ok(removed);
            }
        }
    }

    /// Removes every record of one user.
    pub(crate) async fn delete_user(&self, username: &str) -> Result<Removed> {
        let mut inv = self.delete_user.prepare_invoke();
        self.common_args(&mut inv);
        inv.key(self.keys.user(username)).arg(username);
        let mut c = self.conn.get();
        let flat: Vec<String> = self
            .bounded(async move { inv.invoke_async(&mut c).await })
            .await?;
        let mut removed = Removed::default();
        absorb(&mut removed, flat);
        Ok(removed)
    }

    /// Removes every record whose heartbeat is at or before `began` (the
    /// moment the clear began), [`CLEAR_BATCH`] per script call so that
    /// Redis answers everyone else between the steps however large the
    /// registry. A record written since (a new stream, a heartbeat, a
    /// write-back) is a live stream's and stays.
    pub(crate) async fn clear(&self, began: f64) -> Result<Cleared> {
        let mut cleared = Cleared::default();
        // Users who lost a record but still had others at that step: they
        // are counted once, when their last record goes or at the end. Kept
        // as hashes of their names: a million records may leave half a
        // million users here for a while.
        let mut partly: HashSet<u64> = HashSet::new();
        let key = |user: &str| {
            let mut h = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(user, &mut h);
            std::hash::Hasher::finish(&h)
        };
        loop {
            let mut inv = self.clear.prepare_invoke();
            self.common_args(&mut inv);
            inv.arg(fmt_time(began)).arg(CLEAR_BATCH);
            let mut c = self.conn.get();
            let (seen, flat): (usize, Vec<String>) = self
                .bounded(async move { inv.invoke_async(&mut c).await })
                .await?;
            let mut it = flat.into_iter();
            while let (Some(user), Some(emptied)) = (it.next(), it.next()) {
                cleared.connection_count += 1;
                if emptied == "1" {
                    partly.remove(&key(&user));
                    cleared.user_count += 1;
                } else {
                    partly.insert(key(&user));
                }
            }
            if seen < CLEAR_BATCH {
                break;
            }
        }
        cleared.user_count += partly.len();
        Ok(cleared)
    }

    /// The user's connection ids, oldest first (ties by id); `limit` 1
    /// gives the first connection only.
    pub(crate) async fn user_connection_ids(
        &self,
        username: &str,
        limit: Option<usize>,
    ) -> Result<Vec<String>> {
        let stop = limit.map(|n| n as isize - 1).unwrap_or(-1);
        let key = self.keys.user(username);
        let mut c = self.conn.get();
        self.bounded(async move { c.zrange(key, 0, stop).await })
            .await
    }

    /// Up to `limit` usernames after `after`, in name order ([`Redis::names_after`]).
    pub(crate) async fn user_names(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        self.names_after(self.keys.users(), after, limit).await
    }

    /// Up to `limit` followed topics after `after`, in name order.
    pub(crate) async fn topic_names(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        self.names_after(self.keys.topics(), after, limit).await
    }

    /// Up to `limit` members of the set `key` after `after`, in name
    /// order: the set is scanned in calls of [`SCAN_COUNT`], keeping only
    /// the `limit` smallest names, so neither Redis nor this process holds
    /// the whole set at once.
    async fn names_after(
        &self,
        key: String,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let mut best: BTreeSet<String> = BTreeSet::new();
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SSCAN");
            cmd.arg(&key).arg(cursor).arg("COUNT").arg(SCAN_COUNT);
            let mut c = self.conn.get();
            let (next, names): (u64, Vec<String>) = self
                .bounded(async move { cmd.query_async(&mut c).await })
                .await?;
            for name in names {
                if after.is_some_and(|a| name.as_str() <= a) {
                    continue;
                }
                if best.len() >= limit && best.last().is_some_and(|l| &name >= l) {
                    continue;
                }
                best.insert(name);
                if best.len() > limit {
                    best.pop_last();
                }
            }
            if next == 0 {
                return Ok(best.into_iter().collect());
            }
            cursor = next;
        }
    }

    /// The connections of each of `users` that has any, in the order
    /// given, each user's by connection time.
    pub(crate) async fn users_connections(
        &self,
        users: &[String],
    ) -> Result<Vec<(String, Vec<ConnectionRecord>)>> {
        let mut out = Vec::with_capacity(users.len());
        for chunk in users.chunks(USERS_PER_CALL) {
            let mut pipe = redis::pipe();
            for u in chunk {
                pipe.zrange(self.keys.user(u), 0, -1);
            }
            let mut c = self.conn.get();
            let ids_per_user: Vec<Vec<String>> = self
                .bounded(async move { pipe.query_async(&mut c).await })
                .await?;
            let all_ids: Vec<String> = ids_per_user.iter().flatten().cloned().collect();
            let mut by_user: HashMap<String, Vec<ConnectionRecord>> = HashMap::new();
            for r in self.records(&all_ids).await? {
                by_user.entry(r.username.clone()).or_default().push(r);
            }
            for u in chunk {
                if let Some(mut list) = by_user.remove(u) {
                    sort_records(&mut list);
                    out.push((u.clone(), list));
                }
            }
        }
        Ok(out)
    }

    /// Registry-wide (users, connections), in one round trip.
    pub(crate) async fn totals(&self) -> Result<(usize, usize)> {
        let mut pipe = redis::pipe();
        pipe.scard(self.keys.users()).zcard(self.keys.heartbeats());
        let mut c = self.conn.get();
        self.bounded(async move { pipe.query_async(&mut c).await })
            .await
    }

    /// How many streams and users follow each of `topics` that anyone
    /// follows, in the order given, in one round trip per
    /// [`USERS_PER_CALL`] topics.
    pub(crate) async fn topic_counts(&self, topics: &[String]) -> Result<Vec<TopicCount>> {
        let mut out = Vec::with_capacity(topics.len());
        for chunk in topics.chunks(USERS_PER_CALL) {
            let mut pipe = redis::pipe();
            // Atomic: the two counts of a topic agree.
            pipe.atomic();
            for t in chunk {
                pipe.zcard(self.keys.topic(t))
                    .hlen(self.keys.topic_users(t));
            }
            let mut c = self.conn.get();
            let counts: Vec<usize> = self
                .bounded(async move { pipe.query_async(&mut c).await })
                .await?;
            for (t, pair) in chunk.iter().zip(counts.chunks(2)) {
                if let [connection_count, user_count] = *pair {
                    if connection_count == 0 {
                        continue;
                    }
                    out.push(TopicCount {
                        topic: t.clone(),
                        connection_count,
                        user_count,
                    });
                }
            }
        }
        Ok(out)
    }

    /// How many topics have a follower.
    pub(crate) async fn topic_total(&self) -> Result<usize> {
        let key = self.keys.topics();
        let mut c = self.conn.get();
        self.bounded(async move { c.scard(key).await }).await
    }

    /// Who follows `topic`: the records of its followers (by connection
    /// time) and their users (sorted), as read from the records, so the
    /// two agree even while followers come and go.
    pub(crate) async fn topic(&self, topic: &str) -> Result<TopicPresence> {
        let key = self.keys.topic(topic);
        let mut c = self.conn.get();
        let ids: Vec<String> = self
            .bounded(async move { c.zrange(key, 0, -1).await })
            .await?;
        let mut connections = self.records(&ids).await?;
        connections.retain(|r| r.topics.iter().any(|t| t == topic));
        sort_records(&mut connections);
        let users: BTreeSet<String> = connections.iter().map(|r| r.username.clone()).collect();
        Ok(TopicPresence {
            users: users.into_iter().collect(),
            connections,
        })
    }

    /// One user's connections, by connection time.
    pub(crate) async fn list_user(&self, username: &str) -> Result<Vec<ConnectionRecord>> {
        let ids = self.user_connection_ids(username, None).await?;
        let mut records = self.records(&ids).await?;
        records.retain(|r| r.username == username);
        sort_records(&mut records);
        Ok(records)
    }

    /// Reads the hashes of `ids` in one pipeline; missing ones are skipped.
    async fn records(&self, ids: &[String]) -> Result<Vec<ConnectionRecord>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_CALL) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.hgetall(self.keys.conn(id));
            }
            let mut c = self.conn.get();
            let hashes: Vec<HashMap<String, String>> = self
                .bounded(async move { pipe.query_async(&mut c).await })
                .await?;
            out.extend(hashes.into_iter().filter_map(parse_record));
        }
        Ok(out)
    }
}

fn parse_record(mut h: HashMap<String, String>) -> Option<ConnectionRecord> {
    let time = |v: Option<String>| v.and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    Some(ConnectionRecord {
        connection_id: h.remove("connection_id")?,
        username: h.remove("username")?,
        connection_time: time(h.remove("connection_time")),
        last_heartbeat: time(h.remove("last_heartbeat")),
        topics: h
            .remove("topics")
            .map(|t| {
                t.split(',')
                    .filter(|t| !t.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
        node_id: h.remove("node_id").unwrap_or_default(),
    })
}

/// Adds a script's flat `id, user, id, user...` answer.
fn absorb(removed: &mut Removed, flat: Vec<String>) {
    let mut it = flat.into_iter();
    while let (Some(id), Some(user)) = (it.next(), it.next()) {
        removed.add(id, user);
    }
}
