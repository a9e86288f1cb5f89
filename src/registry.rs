//! The connection registry in Redis (SPEC section 4): atomic register and
//! remove, heartbeats, sweeps, clears and listings.
//!
//! Every write that touches several keys of one connection is a MULTI or a
//! Lua script, so no reader sees half a connection and no clear or sweep
//! leaves an orphan (an empty user set is gone and the user leaves the users
//! set). Key names come from [`crate::keys`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use crate::target::SharedConn;
use serde::Serialize;

use crate::keys::Keys;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("this node's bus subscription is down")]
    BusDown,
    #[error("{0}")]
    Unavailable(String),
}

pub type Result<T> = std::result::Result<T, RegistryError>;

/// One connection as stored in `{prefix}:conn:{id}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectionRecord {
    pub connection_id: String,
    pub username: String,
    pub connection_time: f64,
    pub last_heartbeat: f64,
    #[serde(skip)]
    pub node_id: String,
}

/// What a clear, sweep or user delete removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Removed {
    pub connection_ids: Vec<String>,
    pub usernames: BTreeSet<String>,
}

impl Removed {
    pub fn connection_count(&self) -> usize {
        self.connection_ids.len()
    }
    pub fn user_count(&self) -> usize {
        self.usernames.len()
    }
    fn absorb(&mut self, pairs: Vec<(String, String)>) {
        for (id, user) in pairs {
            self.connection_ids.push(id);
            self.usernames.insert(user);
        }
    }
}

/// Unix time in seconds to the microsecond, as the registry stores it (so
/// a value shown on the stream equals the one read back from Redis).
pub fn unix_now() -> f64 {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    micros as f64 / 1e6
}

fn fmt_time(t: f64) -> String {
    format!("{t:.6}")
}

/// Shared Lua: remove one connection by id and its traces in every key.
/// ARGV[1] conn prefix, ARGV[2] user prefix, ARGV[3] users key,
/// ARGV[4] heartbeats key. Returns the username, or false if no record.
const LUA_REMOVE_ONE: &str = r#"
local function remove_one(id)
  local ckey = ARGV[1] .. id
  local user = redis.call('HGET', ckey, 'username')
  redis.call('ZREM', ARGV[4], id)
  if not user then return false end
  redis.call('DEL', ckey)
  local ukey = ARGV[2] .. user
  redis.call('ZREM', ukey, id)
  if redis.call('ZCARD', ukey) == 0 then
    redis.call('DEL', ukey)
    redis.call('SREM', ARGV[3], user)
  end
  return user
end
"#;

/// Removes the ids in ARGV[5..]; returns a flat list id, user, id, user...
const LUA_REMOVE_IDS: &str = r#"
local out = {}
for i = 5, #ARGV do
  local user = remove_one(ARGV[i])
  if user then table.insert(out, ARGV[i]); table.insert(out, user) end
end
return out
"#;

/// Removes up to ARGV[6] records whose heartbeat is at or before ARGV[5].
const LUA_SWEEP: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', ARGV[4], '-inf', ARGV[5], 'LIMIT', 0, tonumber(ARGV[6]))
local out = {}
for _, id in ipairs(ids) do
  local user = remove_one(id)
  if user then table.insert(out, id); table.insert(out, user) end
end
return {#ids, out}
"#;

/// Removes every connection of user ARGV[5].
const LUA_DELETE_USER: &str = r#"
local ids = redis.call('ZRANGE', ARGV[2] .. ARGV[5], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local user = remove_one(id)
  if user then table.insert(out, id); table.insert(out, user) end
end
redis.call('DEL', ARGV[2] .. ARGV[5])
redis.call('SREM', ARGV[3], ARGV[5])
return out
"#;

/// Removes every connection record (all users, all nodes).
const LUA_CLEAR: &str = r#"
local out = {}
local seen = {}
local function drop(id)
  if seen[id] then return end
  seen[id] = true
  local ckey = ARGV[1] .. id
  local user = redis.call('HGET', ckey, 'username')
  if user then
    redis.call('DEL', ckey)
    table.insert(out, id); table.insert(out, user)
  end
end
for _, user in ipairs(redis.call('SMEMBERS', ARGV[3])) do
  for _, id in ipairs(redis.call('ZRANGE', ARGV[2] .. user, 0, -1)) do drop(id) end
  redis.call('DEL', ARGV[2] .. user)
end
for _, id in ipairs(redis.call('ZRANGE', ARGV[4], 0, -1)) do drop(id) end
redis.call('DEL', ARGV[3])
redis.call('DEL', ARGV[4])
return out
"#;

/// Sets last_heartbeat ARGV[5] on the ids ARGV[6..] that still have a
/// record (a removed record is not resurrected as half a hash); returns the
/// ids that had none.
const LUA_HEARTBEAT: &str = r#"
local missing = {}
for i = 6, #ARGV do
  local ckey = ARGV[1] .. ARGV[i]
  if redis.call('EXISTS', ckey) == 1 then
    redis.call('HSET', ckey, 'last_heartbeat', ARGV[5])
    redis.call('ZADD', ARGV[4], ARGV[5], ARGV[i])
  else
    table.insert(missing, ARGV[i])
  end
end
return missing
"#;

/// How many records one sweep script removes before yielding Redis to
/// other clients.
const SWEEP_BATCH: usize = 1000;

/// Ids per script call, so one call never blocks Redis for long.
const IDS_PER_CALL: usize = 2000;

#[derive(Clone)]
pub struct Registry {
    conn: SharedConn,
    keys: Keys,
    remove_ids: Script,
    sweep: Script,
    delete_user: Script,
    clear: Script,
    heartbeat: Script,
    timeout: Duration,
}

impl Registry {
    pub fn new(conn: SharedConn, keys: Keys) -> Self {
        let with_remove = |body: &str| Script::new(&format!("{LUA_REMOVE_ONE}\n{body}"));
        Self {
            conn,
            keys,
            remove_ids: with_remove(LUA_REMOVE_IDS),
            sweep: with_remove(LUA_SWEEP),
            delete_user: with_remove(LUA_DELETE_USER),
            clear: Script::new(LUA_CLEAR),
            heartbeat: Script::new(LUA_HEARTBEAT),
            timeout: Duration::from_secs(5),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A clone of the multiplexed connection, for modules that own other
    /// keys of SPEC 4 (history, bus).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.get()
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(RegistryError::from),
            Err(_) => Err(RegistryError::Timeout(self.timeout)),
        }
    }

    fn common_args(&self, inv: &mut redis::ScriptInvocation<'_>) {
        inv.arg(self.keys.conn_prefix())
            .arg(self.keys.user_prefix())
            .arg(self.keys.users())
            .arg(self.keys.heartbeats());
    }

    pub async fn ping(&self) -> Result<()> {
        let mut c = self.conn.get();
        self.bounded(async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(|_| ())
    }

    /// Writes the records, each with all its keys, in one MULTI round trip.
    /// Returns, for each record, how many connections its user has once it
    /// is added (all nodes), so the per-user limit costs no extra round trip.
    pub async fn register(&self, records: &[ConnectionRecord]) -> Result<Vec<usize>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for r in records {
            let ct = fmt_time(r.connection_time);
            let hb = fmt_time(r.last_heartbeat);
            pipe.hset_multiple(
                self.keys.conn(&r.connection_id),
                &[
                    ("connection_id", r.connection_id.as_str()),
                    ("username", r.username.as_str()),
                    ("connection_time", ct.as_str()),
                    ("last_heartbeat", hb.as_str()),
                    ("node_id", r.node_id.as_str()),
                ],
            )
            .ignore()
            .zadd(self.keys.user(&r.username), &r.connection_id, &ct)
            .ignore()
            .sadd(self.keys.users(), &r.username)
            .ignore()
            .zadd(self.keys.heartbeats(), &r.connection_id, &hb)
            .ignore()
            .zcard(self.keys.user(&r.username));
        }
        let mut c = self.conn.get();
        self.bounded(async move { pipe.query_async::<Vec<usize>>(&mut c).await })
            .await
    }

    /// Removes the given connections (and only them); returns what existed.
    pub async fn remove(&self, ids: &[String]) -> Result<Removed> {
        let mut removed = Removed::default();
        for chunk in ids.chunks(IDS_PER_CALL) {
            let mut inv = self.remove_ids.prepare_invoke();
            self.common_args(&mut inv);
            for id in chunk {
                inv.arg(id);
            }
            let mut c = self.conn.get();
            let flat: Vec<String> = self
                .bounded(async move { inv.invoke_async(&mut c).await })
                .await?;
            removed.absorb(pairs(flat));
        }
        Ok(removed)
    }

    /// Updates `last_heartbeat` of the ids that still have a record, in one
    /// round trip per [`IDS_PER_CALL`] ids; returns the ids without one.
    pub async fn heartbeat(&self, ids: &[String], now: f64) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        let now = fmt_time(now);
        for chunk in ids.chunks(IDS_PER_CALL) {
            let mut inv = self.heartbeat.prepare_invoke();
            self.common_args(&mut inv);
            inv.arg(&now);
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

    /// Removes records whose heartbeat is at or before `stale_before`.
    pub async fn sweep(&self, stale_before: f64) -> Result<Removed> {
        let mut removed = Removed::default();
        loop {
            let mut inv = self.sweep.prepare_invoke();
            self.common_args(&mut inv);
            inv.arg(fmt_time(stale_before)).arg(SWEEP_BATCH);
            let mut c = self.conn.get();
            let (seen, flat): (usize, Vec<String>) = self
                .bounded(async move { inv.invoke_async(&mut c).await })
                .await?;
            removed.absorb(pairs(flat));
            if seen < SWEEP_BATCH {
                return Ok(removed);
            }
        }
    }

    /// Removes every record of one user.
    pub async fn delete_user(&self, username: &str) -> Result<Removed> {
        let mut inv = self.delete_user.prepare_invoke();
        self.common_args(&mut inv);
        inv.arg(username);
        let mut c = self.conn.get();
        let flat: Vec<String> = self
            .bounded(async move { inv.invoke_async(&mut c).await })
            .await?;
        let mut removed = Removed::default();
        removed.absorb(pairs(flat));
        Ok(removed)
    }

    /// Removes every connection record of every node.
    pub async fn clear(&self) -> Result<Removed> {
        let mut inv = self.clear.prepare_invoke();
        self.common_args(&mut inv);
        let mut c = self.conn.get();
        let flat: Vec<String> = self
            .bounded(async move { inv.invoke_async(&mut c).await })
            .await?;
        let mut removed = Removed::default();
        removed.absorb(pairs(flat));
        Ok(removed)
    }

    /// The user's connection ids, oldest first (ties by id); `limit` 1
    /// gives the first connection only.
    pub async fn user_connection_ids(
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

    /// How many connections the registry holds, all nodes.
    pub async fn connection_count(&self) -> Result<usize> {
        let key = self.keys.heartbeats();
        let mut c = self.conn.get();
        self.bounded(async move { c.zcard(key).await }).await
    }

    /// Every user's connections, users sorted, each user's connections by
    /// connection time.
    pub async fn list_all(&self) -> Result<BTreeMap<String, Vec<ConnectionRecord>>> {
        let users_key = self.keys.users();
        let mut c = self.conn.get();
        let users: Vec<String> = self
            .bounded(async move { c.smembers(users_key).await })
            .await?;
        let mut pipe = redis::pipe();
        for u in &users {
            pipe.zrange(self.keys.user(u), 0, -1);
        }
        let mut c = self.conn.get();
        let ids_per_user: Vec<Vec<String>> = if users.is_empty() {
            Vec::new()
        } else {
            self.bounded(async move { pipe.query_async(&mut c).await })
                .await?
        };
        let all_ids: Vec<String> = ids_per_user.into_iter().flatten().collect();
        let records = self.records(&all_ids).await?;
        let mut out: BTreeMap<String, Vec<ConnectionRecord>> = BTreeMap::new();
        for r in records {
            out.entry(r.username.clone()).or_default().push(r);
        }
        for list in out.values_mut() {
            sort_records(list);
        }
        Ok(out)
    }

    /// One user's connections, by connection time.
    pub async fn list_user(&self, username: &str) -> Result<Vec<ConnectionRecord>> {
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

fn sort_records(list: &mut [ConnectionRecord]) {
    list.sort_by(|a, b| {
        a.connection_time
            .total_cmp(&b.connection_time)
            .then_with(|| a.connection_id.cmp(&b.connection_id))
    });
}

fn parse_record(mut h: HashMap<String, String>) -> Option<ConnectionRecord> {
    let time = |v: Option<String>| v.and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    Some(ConnectionRecord {
        connection_id: h.remove("connection_id")?,
        username: h.remove("username")?,
        connection_time: time(h.remove("connection_time")),
        last_heartbeat: time(h.remove("last_heartbeat")),
        node_id: h.remove("node_id").unwrap_or_default(),
    })
}

fn pairs(flat: Vec<String>) -> Vec<(String, String)> {
    let mut it = flat.into_iter();
    let mut out = Vec::new();
    while let (Some(id), Some(user)) = (it.next(), it.next()) {
        out.push((id, user));
    }
    out
}

/// Connects with a multiplexed, self-reconnecting connection whose calls
/// fail fast while Redis is down instead of hanging the caller.
pub async fn connect(url: &str) -> std::result::Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(3)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    client.get_connection_manager_with_config(config).await
}
