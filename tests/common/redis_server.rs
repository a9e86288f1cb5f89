//! `redis-server` processes of the test's own (never the shared one on
//! 6379): plain, with a password, a replica, a Sentinel; killable and
//! restartable on the same port. And the registry as README "Redis layout" lays it out
//! in Redis, for the checks only the Redis engine has.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::poll::{eventually, eventually_blocking, sorted};

/// What a [`RedisServer`] runs as.
enum Role {
    Primary,
    ReplicaOf(u16),
    /// A Sentinel monitoring the primary on this port as `svc`.
    Sentinel(u16),
}

/// A `redis-server` of the test's own.
pub struct RedisServer {
    pub port: u16,
    password: Option<String>,
    role: Role,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::launch(Role::Primary, None)
    }

    /// One that requires `password` (AUTH) from every client.
    pub fn start_with_password(password: &str) -> Self {
        Self::launch(Role::Primary, Some(password.to_string()))
    }

    /// A replica of `primary` (`--replicaof`).
    pub fn replica_of(primary: &RedisServer) -> Self {
        Self::launch(Role::ReplicaOf(primary.port), None)
    }

    /// A Sentinel that monitors `primary` as `svc` (quorum 1, down after
    /// 1 s, failover timeout 5 s).
    pub fn sentinel_for(primary: &RedisServer) -> Self {
        Self::launch(Role::Sentinel(primary.port), None)
    }

    fn launch(role: Role, password: Option<String>) -> Self {
        let mut r = RedisServer {
            port: 0,
            password,
            role,
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        // The free port is probed, not bound: another test can take it
        // first, and then redis-server exits at once; take another one.
        for _ in 0..5 {
            r.port = super::free_port();
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not come up on 5 free ports in a row");
    }

    /// Starts the process on `self.port`; false when it exits at once (the
    /// port was taken), panics when it neither exits nor answers.
    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mut cmd = Command::new("redis-server");
        if let Role::Sentinel(primary) = self.role {
            let conf = self.dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\nsentinel monitor svc 127.0.0.1 {primary} 1\n\
                     sentinel down-after-milliseconds svc 1000\nsentinel failover-timeout svc 5000\n"
                ),
            )
            .expect("sentinel.conf");
            cmd.arg(&conf).arg("--sentinel");
        } else {
            // Replicas write the RDB of a full sync into --dir: the tempdir.
            cmd.args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir,
            ]);
            if let Role::ReplicaOf(primary) = self.role {
                cmd.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
            }
            if let Some(p) = &self.password {
                cmd.args(["--requirepass", p]);
            }
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let mut exited = false;
        let up = eventually_blocking(Duration::from_secs(10), || {
            exited = matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(Some(_))));
            exited || self.ping()
        });
        assert!(up, "redis-server on port {} did not come up", self.port);
        if exited {
            self.child = None;
        }
        !exited
    }

    /// `redis.url` for a node (with the password, if any).
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// `redis.url` that finds the primary through this Sentinel.
    pub fn sentinel_url(&self) -> String {
        format!("redis+sentinel://127.0.0.1:{}/svc/0", self.port)
    }

    pub fn ping(&self) -> bool {
        self.query::<String>(&mut redis::cmd("PING")).is_ok()
    }

    /// One command on a fresh connection (short timeouts: the server may
    /// be down on purpose).
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_millis(500))?;
        cmd.query(&mut conn)
    }

    /// A blocking connection for assertions on the keys.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("redis connection")
    }

    /// SIGKILL: an outage, not a clean stop.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty (no persistence).
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server could not listen on its port {} again",
            self.port
        );
    }

    /// Keys matching `pattern`, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut k: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut self.conn())
            .expect("KEYS");
        k.sort();
        k
    }

    /// Members of `sse:users`, sorted.
    pub fn users(&self) -> Vec<String> {
        let mut u: Vec<String> = redis::cmd("SMEMBERS")
            .arg("sse:users")
            .query(&mut self.conn())
            .expect("SMEMBERS");
        u.sort();
        u
    }

    /// Every registry key (`sse:conn:*`, `sse:user:*`, `sse:users`,
    /// `sse:heartbeats`), sorted.
    pub fn registry_keys(&self) -> Vec<String> {
        let mut out = Vec::new();
        for pattern in ["sse:conn:*", "sse:user:*", "sse:users", "sse:heartbeats"] {
            out.extend(self.keys(pattern));
        }
        out.sort();
        out
    }

    /// The connection ids in `sse:heartbeats`, sorted.
    pub fn ids(&self) -> Vec<String> {
        registry_ids(&mut self.conn(), "sse")
    }

    /// The whole registry as laid out in Redis.
    pub fn registry(&self) -> RedisRegistry {
        RedisRegistry::read(&mut self.conn())
    }

    /// Waits until `sse:heartbeats` holds exactly `want` (any order); the
    /// ids it last held otherwise.
    pub async fn ids_become<S: AsRef<str>>(&self, want: &[S]) -> Result<(), Vec<String>> {
        let want = sorted(want);
        let ok = eventually(Duration::from_secs(10), || {
            let ok = self.ping() && self.ids() == want;
            async move { ok }
        })
        .await;
        if ok {
            Ok(())
        } else {
            Err(if self.ping() { self.ids() } else { Vec::new() })
        }
    }

    /// Waits until the registry is exactly `want`; the last one seen
    /// otherwise.
    pub async fn registry_becomes(&self, want: &RedisRegistry) -> Result<(), RedisRegistry> {
        let ok = eventually(Duration::from_secs(10), || {
            let ok = self.ping() && &self.registry() == want;
            async move { ok }
        })
        .await;
        if ok {
            Ok(())
        } else {
            Err(if self.ping() {
                self.registry()
            } else {
                RedisRegistry::default()
            })
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The connection registry as README "Redis layout" lays it out in Redis.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RedisRegistry {
    /// `sse:heartbeats` members, sorted.
    pub heartbeats: Vec<String>,
    /// `sse:conn:{id}` hashes: id -> username.
    pub conns: BTreeMap<String, String>,
    /// `sse:users` members, sorted.
    pub users: Vec<String>,
    /// every `sse:user:{username}` zset, members in score order.
    pub user_zsets: BTreeMap<String, Vec<String>>,
    /// every `sse:topic:{topic}` zset: its members (connection ids),
    /// sorted. [`RedisRegistry::read`] checks that the other topic keys
    /// and the records' `topics` fields agree with them.
    pub topics: BTreeMap<String, Vec<String>>,
}

/// What the snapshot script answers (`registry.lua`).
type Snapshot = (
    Vec<String>,
    Vec<(String, Vec<String>)>,
    Vec<String>,
    Vec<(String, Vec<String>)>,
    Vec<(String, Vec<String>)>,
    Vec<(String, Vec<String>)>,
    Vec<(String, Vec<String>)>,
    Vec<String>,
);

/// A flat `field, value, ...` reply as pairs.
fn pairs(flat: Vec<String>) -> Vec<(String, String)> {
    let mut it = flat.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    out
}

impl RedisRegistry {
    /// Reads the registry in one atomic step and checks that its topic
    /// keys agree with its records (panics naming what does not): each
    /// record's `topics` field (comma-joined, sorted, no duplicates) is
    /// exactly the topics whose zset holds it, with its connection time as
    /// score; each topic's users and nodes hashes count its members per
    /// username and per `node_id`; no topic key is left empty; `sse:topics`
    /// is exactly the topics with members.
    pub fn read(conn: &mut redis::Connection) -> RedisRegistry {
        let (heartbeats, conn_hashes, users, user_keys, topic_keys, topic_users, topic_nodes, set): Snapshot =
            redis::Script::new(include_str!("registry.lua"))
                .arg("sse")
                .invoke(conn)
                .expect("registry snapshot");
        let mut r = RedisRegistry {
            heartbeats: sorted(&heartbeats),
            users: sorted(&users),
            ..RedisRegistry::default()
        };
        for (k, members) in user_keys {
            r.user_zsets
                .insert(k.trim_start_matches("sse:user:").to_string(), members);
        }
        // What the records say: id -> (username, node_id, time, topics).
        let mut records: BTreeMap<String, (String, String, f64, Vec<String>)> = BTreeMap::new();
        for (k, flat) in conn_hashes {
            let id = k.trim_start_matches("sse:conn:").to_string();
            let h: BTreeMap<String, String> = pairs(flat).into_iter().collect();
            let field = |f: &str| h.get(f).cloned().unwrap_or_default();
            let topics: Vec<String> = field("topics")
                .split(',')
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect();
            let mut canonical = topics.clone();
            canonical.sort();
            canonical.dedup();
            assert_eq!(
                topics, canonical,
                "record {id}: topics not sorted or repeated"
            );
            let time: f64 = field("connection_time").parse().unwrap_or(f64::NAN);
            r.conns.insert(id.clone(), field("username"));
            records.insert(id, (field("username"), field("node_id"), time, topics));
        }
        // What the records imply for each topic.
        let mut want: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        let mut want_users: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        let mut want_nodes: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for (id, (user, node, time, topics)) in &records {
            for t in topics {
                want.entry(t.clone()).or_default().insert(id.clone(), *time);
                *want_users
                    .entry(t.clone())
                    .or_default()
                    .entry(user.clone())
                    .or_default() += 1;
                *want_nodes
                    .entry(t.clone())
                    .or_default()
                    .entry(node.clone())
                    .or_default() += 1;
            }
        }
        let mut got: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        for (k, flat) in topic_keys {
            let topic = k.trim_start_matches("sse:topic:").to_string();
            let members: BTreeMap<String, f64> = pairs(flat)
                .into_iter()
                .map(|(id, score)| (id, score.parse().unwrap_or(f64::NAN)))
                .collect();
            r.topics
                .insert(topic.clone(), members.keys().cloned().collect());
            got.insert(topic, members);
        }
        for (topic, members) in &got {
            for (id, score) in members {
                let time = want.get(topic).and_then(|m| m.get(id));
                assert!(
                    time.is_some_and(|t| (t - score).abs() < 1e-3),
                    "topic {topic}: member {id} (score {score}) has no record following it with that connection_time: {records:?}"
                );
            }
        }
        let followed: Vec<&String> = want.keys().collect();
        let zsets: Vec<&String> = got.keys().collect();
        assert_eq!(
            zsets, followed,
            "topics with a zset vs topics the records follow"
        );
        let counts = |hashes: Vec<(String, Vec<String>)>,
                      prefix: &str|
         -> BTreeMap<String, BTreeMap<String, i64>> {
            hashes
                .into_iter()
                .map(|(k, flat)| {
                    let counts = pairs(flat)
                        .into_iter()
                        .map(|(f, n)| (f, n.parse().unwrap_or(i64::MIN)))
                        .collect();
                    (k.trim_start_matches(prefix).to_string(), counts)
                })
                .collect()
        };
        assert_eq!(
            counts(topic_users, "sse:topic_users:"),
            want_users,
            "sse:topic_users:* vs the records (username -> followers)"
        );
        assert_eq!(
            counts(topic_nodes, "sse:topic_nodes:"),
            want_nodes,
            "sse:topic_nodes:* vs the records (node_id -> followers)"
        );
        assert_eq!(
            sorted(&set),
            followed.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            "sse:topics vs the topics with followers"
        );
        r
    }

    /// What the registry must be when exactly `live` (username, connection
    /// id) are connected, listed oldest first, following no topic.
    pub fn of(live: &[(&str, &str)]) -> RedisRegistry {
        let mut r = RedisRegistry::default();
        for (user, id) in live {
            r.user_zsets
                .entry(user.to_string())
                .or_default()
                .push(id.to_string());
            r.conns.insert(id.to_string(), user.to_string());
        }
        let ids: Vec<&str> = live.iter().map(|(_, id)| *id).collect();
        r.heartbeats = sorted(&ids);
        r.users = r.user_zsets.keys().cloned().collect();
        r
    }

    /// The same, with the connection `id` following `topics`.
    pub fn following(mut self, id: &str, topics: &[&str]) -> RedisRegistry {
        for t in topics {
            let members = self.topics.entry(t.to_string()).or_default();
            members.push(id.to_string());
            members.sort();
            members.dedup();
        }
        self
    }
}

/// The connection ids in `{prefix}:heartbeats`, sorted.
pub fn registry_ids(conn: &mut redis::Connection, prefix: &str) -> Vec<String> {
    let mut ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{prefix}:heartbeats"))
        .arg(0)
        .arg(-1)
        .query(conn)
        .expect("ZRANGE heartbeats");
    ids.sort();
    ids
}

/// Writes one connection record the way README "Redis layout" lays it out (all its keys),
/// as another (possibly dead) node would have.
pub fn inject_record(
    conn: &mut redis::Connection,
    id: &str,
    user: &str,
    connection_time: f64,
    last_heartbeat: f64,
    node_id: &str,
) {
    let ct = format!("{connection_time:.6}");
    let hb = format!("{last_heartbeat:.6}");
    redis::pipe()
        .atomic()
        .hset_multiple(
            format!("sse:conn:{id}"),
            &[
                ("connection_id", id),
                ("username", user),
                ("connection_time", ct.as_str()),
                ("last_heartbeat", hb.as_str()),
                ("node_id", node_id),
            ],
        )
        .ignore()
        .zadd(format!("sse:user:{user}"), id, ct.as_str())
        .ignore()
        .sadd("sse:users", user)
        .ignore()
        .zadd("sse:heartbeats", id, hb.as_str())
        .ignore()
        .query::<()>(conn)
        .expect("inject record");
}
