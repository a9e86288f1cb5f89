//! The connection registry in Redis (README "Redis layout"): atomic
//! register and remove, heartbeats, sweeps, clears, listings and topic
//! presence.
//!
//! Every write that touches several keys of one connection is a Lua
//! script, so no reader sees half a connection and no clear or sweep
//! leaves an orphan (an empty user set is gone and the user leaves the users
//! set; a topic's keys go with its last follower and it leaves the topics
//! set). Key names come from [`super::keys`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use futures_util::future::try_join_all;

use redis::{AsyncCommands, Script};

use super::conn::{RedisConn, SharedConn};
use super::keys::{Keys, Layout};
use crate::store::{
    sort_records, Cleared, ConnectionRecord, LiveConn, Removed, Result, StoreError, TopicCount,
    TopicPresence, Wrote,
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

/// A connection that ended, for [`Redis::remove_ended`]: its id, its
/// user when known (which partition holds it: unknown, every partition is
/// asked), and what its stream wrote.
#[derive(Debug, Clone)]
pub(crate) struct Gone {
    pub id: String,
    pub user: Option<String>,
    pub wrote: Option<Wrote>,
}

/// A handle on the deployment's Redis: the shared connection, where the
/// keys live ([`Layout`]: one partition on one Redis, many on a cluster),
/// and the registry's scripts as methods, each run once per partition it
/// concerns. The bus, the write-back window and the node reports publish
/// and run their scripts through it too, so it is named for what it
/// reaches, not for the registry alone.
#[derive(Clone)]
pub(crate) struct Redis {
    conn: SharedConn,
    layout: Layout,
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
    pub(crate) fn new(conn: SharedConn, layout: Layout, join_leave: bool) -> Self {
        let route = super::shared::route_lua(layout.sharded());
        let with_records = |body: &str| Script::new(&format!("{route}\n{LUA_RECORDS}\n{body}"));
        Self {
            conn,
            layout,
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

    /// The keys of no user (node reports, the control events' channel);
    /// on one Redis, the only partition.
    pub(crate) fn keys(&self) -> &Keys {
        self.layout.home()
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// A clone of the multiplexed connection, for modules that own other
    /// Redis keys (history, bus).
    pub(crate) fn connection(&self) -> RedisConn {
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
    fn common_args(&self, k: &Keys, inv: &mut redis::ScriptInvocation<'_>) {
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
        let mut by_part: BTreeMap<usize, Vec<(usize, &ConnectionRecord, bool)>> = BTreeMap::new();
        let all = new
            .iter()
            .map(|r| (r, true))
            .chain(back.iter().map(|r| (r, false)));
        for (pos, (r, new)) in all.enumerate() {
            by_part
                .entry(self.layout.index_of(&r.username))
                .or_default()
                .push((pos, r, new));
        }
        let written = try_join_all(by_part.into_iter().map(|(part, records)| async move {
            let k = &self.layout.parts()[part];
            let mut out = Vec::with_capacity(records.len());
            for chunk in records.chunks(REGISTER_PER_CALL) {
                let counts = self.register_chunk(k, chunk).await?;
                out.extend(chunk.iter().map(|(pos, _, _)| *pos).zip(counts));
            }
            Ok::<_, StoreError>(out)
        }))
        .await?;
        let mut counts = vec![0; new.len()];
        for (pos, count) in written.into_iter().flatten() {
            if let Some(c) = counts.get_mut(pos) {
                *c = count;
            }
        }
        Ok(counts)
    }

    async fn register_chunk(
        &self,
        k: &Keys,
        records: &[(usize, &ConnectionRecord, bool)],
    ) -> Result<Vec<usize>> {
        let mut inv = self.register.prepare_invoke();
        self.common_args(k, &mut inv);
        for (_, r, new) in records {
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

    /// Removes the given connections of `user` (and only them); returns
    /// what existed.
    pub(crate) async fn remove_of(&self, user: &str, ids: &[String]) -> Result<Removed> {
        let ended: Vec<Gone> = ids
            .iter()
            .map(|id| Gone {
                id: id.clone(),
                user: Some(user.to_string()),
                wrote: None,
            })
            .collect();
        self.remove_ended(&ended, 0).await
    }

    /// Removes the given connections (and only them), looked for in every
    /// partition; returns what existed.
    #[cfg(test)]
    pub(crate) async fn remove(&self, ids: &[String]) -> Result<Removed> {
        let ended: Vec<Gone> = ids
            .iter()
            .map(|id| Gone {
                id: id.clone(),
                user: None,
                wrote: None,
            })
            .collect();
        self.remove_ended(&ended, 0).await
    }

    /// Removes the connections of streams that ended; what a stream wrote
    /// (it was sent one-tab messages) is remembered for `wrote_ttl_secs` so
    /// that a replay does not give it to another tab (`lua/remove_ids.lua`).
    pub(crate) async fn remove_ended(
        &self,
        ended: &[Gone],
        wrote_ttl_secs: u64,
    ) -> Result<Removed> {
        // A connection of an unknown user may be in any partition: each is
        // asked, and only the one holding it finds it.
        let mut by_part: BTreeMap<usize, Vec<&Gone>> = BTreeMap::new();
        for g in ended {
            match g
                .user
                .as_deref()
                .or(g.wrote.as_ref().map(|w| w.username.as_str()))
            {
                Some(user) => by_part
                    .entry(self.layout.index_of(user))
                    .or_default()
                    .push(g),
                None => {
                    for part in 0..self.layout.parts().len() {
                        by_part.entry(part).or_default().push(g);
                    }
                }
            }
        }
        let found = try_join_all(by_part.into_iter().map(|(part, gone)| async move {
            let k = &self.layout.parts()[part];
            let mut removed = Removed::default();
            for chunk in gone.chunks(IDS_PER_CALL) {
                let mut inv = self.remove_ids.prepare_invoke();
                self.common_args(k, &mut inv);
                inv.arg(k.history_claims_prefix())
                    .arg(wrote_ttl_secs.saturating_mul(1000).max(1));
                for g in chunk {
                    match &g.wrote {
                        // Ids and message ids hold no `=`; the name may.
                        Some(w) => inv.arg(format!("{}={}={}", g.id, w.upto, w.username)),
                        None => inv.arg(&g.id),
                    };
                }
                let mut c = self.conn.get();
                let flat: Vec<String> = self
                    .bounded(async move { inv.invoke_async(&mut c).await })
                    .await?;
                absorb(&mut removed, flat);
            }
            Ok::<_, StoreError>(removed)
        }))
        .await?;
        let mut removed = Removed::default();
        for r in found {
            removed.connection_ids.extend(r.connection_ids);
            removed.usernames.extend(r.usernames);
        }
        Ok(removed)
    }

    /// Updates `last_heartbeat` of the live connections that still have a
    /// record, in one round trip per [`IDS_PER_CALL`] of a partition;
    /// returns the ids without one.
    pub(crate) async fn heartbeat(&self, live: &[LiveConn], now: f64) -> Result<Vec<String>> {
        let now = fmt_time(now);
        let mut by_part: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        for c in live {
            by_part
                .entry(self.layout.index_of(&c.username))
                .or_default()
                .push(&c.connection_id);
        }
        let now = &now;
        let missing = try_join_all(by_part.into_iter().map(|(part, ids)| async move {
            let k = &self.layout.parts()[part];
            let mut missing = Vec::new();
            for chunk in ids.chunks(IDS_PER_CALL) {
                let mut inv = self.heartbeat.prepare_invoke();
                inv.key(k.heartbeats()).arg(k.conn_prefix()).arg(now);
                for id in chunk {
                    inv.arg(*id);
                }
                let mut c = self.conn.get();
                let absent: Vec<String> = self
                    .bounded(async move { inv.invoke_async(&mut c).await })
                    .await?;
                missing.extend(absent);
            }
            Ok::<_, StoreError>(missing)
        }))
        .await?;
        Ok(missing.into_iter().flatten().collect())
    }

    /// Removes records whose heartbeat is at or before `stale_before`;
    /// `leave`: their topics' other followers are told (not when the sweep
    /// may remove live streams' records, which are written back at once).
    pub(crate) async fn sweep(&self, stale_before: f64, leave: bool) -> Result<Removed> {
        let mut removed = Removed::default();
        for k in self.layout.parts() {
            let part = self.sweep_part(k, stale_before, leave).await?;
            removed.connection_ids.extend(part.connection_ids);
            removed.usernames.extend(part.usernames);
        }
        Ok(removed)
    }

    async fn sweep_part(&self, k: &Keys, stale_before: f64, leave: bool) -> Result<Removed> {
        let mut removed = Removed::default();
        loop {
            let mut inv = self.sweep.prepare_invoke();
            self.common_args(k, &mut inv);
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
        let k = self.layout.of_user(username);
        let mut inv = self.delete_user.prepare_invoke();
        self.common_args(k, &mut inv);
        inv.key(k.user(username)).arg(username);
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
        // Partitions hold disjoint users: their counts add up.
        for k in self.layout.parts() {
            loop {
                let mut inv = self.clear.prepare_invoke();
                self.common_args(k, &mut inv);
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
        let key = self.layout.of_user(username).user(username);
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
        self.names_after(|k| k.users(), after, limit).await
    }

    /// Up to `limit` followed topics after `after`, in name order.
    pub(crate) async fn topic_names(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        self.names_after(|k| k.topics(), after, limit).await
    }

    /// Up to `limit` members of the sets `key` names in every partition,
    /// after `after`, in name order (a name in several partitions, as a
    /// topic followed from several, once): each set is scanned in calls of
    /// [`SCAN_COUNT`], keeping only the `limit` smallest names, so neither
    /// Redis nor this process holds a whole set at once.
    async fn names_after(
        &self,
        key: impl Fn(&Keys) -> String,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let mut best: BTreeSet<String> = BTreeSet::new();
        for k in self.layout.parts() {
            self.scan_names(key(k), after, limit, &mut best).await?;
        }
        Ok(best.into_iter().collect())
    }

    async fn scan_names(
        &self,
        key: String,
        after: Option<&str>,
        limit: usize,
        best: &mut BTreeSet<String>,
    ) -> Result<()> {
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
                return Ok(());
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
        // One round trip reads one partition's users: they share a slot.
        let mut by_part: BTreeMap<usize, Vec<&String>> = BTreeMap::new();
        for u in users {
            by_part.entry(self.layout.index_of(u)).or_default().push(u);
        }
        let mut found: HashMap<&str, Vec<ConnectionRecord>> = HashMap::new();
        for (part, users) in by_part {
            let k = &self.layout.parts()[part];
            for (u, list) in self.part_users_connections(k, &users).await? {
                found.insert(u, list);
            }
        }
        for u in users {
            if let Some(list) = found.remove(u.as_str()) {
                out.push((u.clone(), list));
            }
        }
        Ok(out)
    }

    async fn part_users_connections<'u>(
        &self,
        k: &Keys,
        users: &[&'u String],
    ) -> Result<Vec<(&'u str, Vec<ConnectionRecord>)>> {
        let mut out = Vec::with_capacity(users.len());
        for chunk in users.chunks(USERS_PER_CALL) {
            let mut pipe = redis::pipe();
            for u in chunk {
                pipe.zrange(k.user(u), 0, -1);
            }
            let mut c = self.conn.get();
            let ids_per_user: Vec<Vec<String>> = self
                .bounded(async move { pipe.query_async(&mut c).await })
                .await?;
            let all_ids: Vec<String> = ids_per_user.iter().flatten().cloned().collect();
            let mut by_user: HashMap<String, Vec<ConnectionRecord>> = HashMap::new();
            for r in self.records(k, &all_ids).await? {
                by_user.entry(r.username.clone()).or_default().push(r);
            }
            for u in chunk {
                if let Some(mut list) = by_user.remove(u.as_str()) {
                    sort_records(&mut list);
                    out.push((u.as_str(), list));
                }
            }
        }
        Ok(out)
    }

    /// Registry-wide (users, connections), in one round trip per
    /// partition (partitions hold disjoint users).
    pub(crate) async fn totals(&self) -> Result<(usize, usize)> {
        let each = try_join_all(self.layout.parts().iter().map(|k| async move {
            let mut pipe = redis::pipe();
            pipe.scard(k.users()).zcard(k.heartbeats());
            let mut c = self.conn.get();
            self.bounded(async move { pipe.query_async::<(usize, usize)>(&mut c).await })
                .await
        }))
        .await?;
        Ok(each
            .into_iter()
            .fold((0, 0), |(u, c), (pu, pc)| (u + pu, c + pc)))
    }

    /// How many streams and users follow each of `topics` that anyone
    /// follows, in the order given, in one round trip per
    /// [`USERS_PER_CALL`] topics.
    pub(crate) async fn topic_counts(&self, topics: &[String]) -> Result<Vec<TopicCount>> {
        // A topic's followers are kept with their users: each partition
        // counts its own (disjoint users), and the counts add up.
        let mut sums = vec![(0usize, 0usize); topics.len()];
        for k in self.layout.parts() {
            for (n, chunk) in topics.chunks(USERS_PER_CALL).enumerate() {
                let mut pipe = redis::pipe();
                // Atomic: the two counts of a topic agree.
                pipe.atomic();
                for t in chunk {
                    pipe.zcard(k.topic(t)).hlen(k.topic_users(t));
                }
                let mut c = self.conn.get();
                let counts: Vec<usize> = self
                    .bounded(async move { pipe.query_async(&mut c).await })
                    .await?;
                for (i, pair) in counts.chunks(2).enumerate() {
                    if let ([conns, users], Some(sum)) =
                        (pair, sums.get_mut(n * USERS_PER_CALL + i))
                    {
                        sum.0 += conns;
                        sum.1 += users;
                    }
                }
            }
        }
        Ok(topics
            .iter()
            .zip(sums)
            .filter(|(_, (connection_count, _))| *connection_count > 0)
            .map(|(t, (connection_count, user_count))| TopicCount {
                topic: t.clone(),
                connection_count,
                user_count,
            })
            .collect())
    }

    /// How many topics have a follower.
    pub(crate) async fn topic_total(&self) -> Result<usize> {
        if let [k] = self.layout.parts() {
            let key = k.topics();
            let mut c = self.conn.get();
            return self.bounded(async move { c.scard(key).await }).await;
        }
        // A topic followed from several partitions is in each one's set:
        // counted once, by its name's hash (a whole name list of a large
        // site is not kept).
        let mut seen: HashSet<u64> = HashSet::new();
        for k in self.layout.parts() {
            let mut cursor: u64 = 0;
            loop {
                let mut cmd = redis::cmd("SSCAN");
                cmd.arg(k.topics()).arg(cursor).arg("COUNT").arg(SCAN_COUNT);
                let mut c = self.conn.get();
                let (next, names): (u64, Vec<String>) = self
                    .bounded(async move { cmd.query_async(&mut c).await })
                    .await?;
                seen.extend(names.iter().map(|n| name_hash(n)));
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(seen.len())
    }

    /// Who follows `topic`: the records of its followers (by connection
    /// time) and their users (sorted), as read from the records, so the
    /// two agree even while followers come and go.
    pub(crate) async fn topic(&self, topic: &str) -> Result<TopicPresence> {
        let mut connections = Vec::new();
        for k in self.layout.parts() {
            let key = k.topic(topic);
            let mut c = self.conn.get();
            let ids: Vec<String> = self
                .bounded(async move { c.zrange(key, 0, -1).await })
                .await?;
            connections.extend(self.records(k, &ids).await?);
        }
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
        let mut records = self.records(self.layout.of_user(username), &ids).await?;
        records.retain(|r| r.username == username);
        sort_records(&mut records);
        Ok(records)
    }

    /// Reads the hashes of `ids` in partition `k` in one pipeline; missing
    /// ones are skipped.
    async fn records(&self, k: &Keys, ids: &[String]) -> Result<Vec<ConnectionRecord>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_CALL) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.hgetall(k.conn(id));
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

fn name_hash(name: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(name, &mut h);
    std::hash::Hasher::finish(&h)
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
