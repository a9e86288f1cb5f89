//! Kept messages for `Last-Event-ID` replay in Redis: one stream per user,
//! one per topic and one for broadcasts. A replay serves exactly the newest
//! `history.size` entries younger than `history.ttl_secs` of each; Redis
//! trims the rest cheaply on append (`lua/append.lua`) and expires a stream
//! `ttl` after its last message.
//!
//! Every message id comes from one sequence (`{ms}-{seq}`, Redis time), so
//! the ids of a user's messages, its topics' and the broadcasts are ordered
//! among themselves and a replay can merge the streams. Keeping a message and
//! reading its targets is one atomic step, so a connection that registers
//! and then reads the history misses nothing at the seam: what it did not
//! read was sent after it registered and reaches its queue.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use redis::Script;
use tokio::sync::{mpsc, oneshot};

use super::conn::SharedConn;
use super::keys::Keys;
use crate::store::target::Route;
use crate::store::{kept, Kept, KeptFor, LiveConn, Message, MsgId, Replay, Result, StoreError};

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

#[derive(Clone)]
pub(crate) struct History {
    conn: SharedConn,
    keys: Keys,
    /// This process on the bus (node id and a per-start id, set in
    /// [`super::RedisStore::open`]): the bus events it publishes and the
    /// catch-up claims it takes name it, so a node tells its own apart.
    origin: String,
    append: Script,
    replay: Script,
    timeout: Duration,
}

impl History {
    pub(crate) fn new(conn: SharedConn, keys: Keys, origin: String) -> Self {
        Self {
            conn,
            keys,
            origin,
            // History runs on one Redis only: the engine refuses history
            // on a cluster until the ids span partitions.
            append: Script::new(&format!(
                "{}\n{}",
                super::route::route_lua(false),
                include_str!("lua/append.lua")
            )),
            replay: Script::new(include_str!("lua/replay.lua")),
            timeout: Duration::from_secs(5),
        }
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        super::conn::bounded(self.timeout, fut).await
    }

    /// Reads the targets of each message (as [`Targets`]) and keeps it,
    /// in one round trip for the whole batch; returns their ids and
    /// targets, in order. A message for one tab (`all_connections: false`)
    /// is kept with the tab it went to (another gets it by replay only if
    /// that one surely did not), else for the first tab to come back.
    /// [`StoreError::Resyncing`] (nothing kept) while a one-tab message
    /// finds no record during a write-back window.
    pub(crate) async fn append(
        &self,
        batch: &[Message],
        size: u64,
        ttl_secs: u64,
    ) -> Result<Vec<(String, Targets)>> {
        let mut inv = self.append.prepare_invoke();
        inv.key(self.keys.history_seq())
            .key(self.keys.resyncing())
            .key(self.keys.registry_since())
            .key(self.keys.synced())
            .arg(size)
            .arg(ttl_secs.saturating_mul(1000))
            .arg(self.keys.bus())
            .arg(self.keys.conn_prefix())
            .arg(super::route::resync_window_ms());
        for m in batch {
            let route = m.route();
            match route {
                Route::FirstOnly(user) | Route::User(user) => inv
                    .key(self.keys.history_user(user))
                    .key(self.keys.user(user)),
                Route::Broadcast => inv
                    .key(self.keys.history_broadcast())
                    .key(self.keys.heartbeats()),
                Route::Topic(topic) => inv
                    .key(self.keys.history_topic(topic))
                    .key(self.keys.topic(topic))
                    .key(self.keys.topic_nodes(topic)),
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
            .zip(batch)
            .map(|(row, m)| {
                let mut it = row.into_iter();
                let id = it.next().unwrap_or_default();
                let count: usize = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let targets = if m.to.is_some() {
                    Targets::Ids(it.collect())
                } else {
                    Targets::Count(count)
                };
                (id, targets)
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
        let mut inv = self.replay.prepare_invoke();
        inv.key(self.keys.history_user(&conn.username))
            .key(self.keys.history_broadcast())
            .key(self.keys.history_claims(&conn.username));
        for topic in &conn.topics {
            inv.key(self.keys.history_topic(topic));
        }
        inv.arg(last.unwrap_or(MsgId { ms: 0, seq: 0 }).to_string())
            .arg(size)
            .arg(ttl_secs.saturating_mul(1000))
            .arg(self.keys.conn_prefix())
            .arg(self.keys.bus())
            .arg(&conn.connection_id);
        let mut c = self.conn.get();
        let (gap, parts): (i64, Vec<Vec<RawEntry>>) = self
            .bounded(async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(kept::finish(
            last,
            gap == 1,
            parts.into_iter().map(parse_entries),
        ))
    }

    /// Messages kept since `since_ms` for each of `users` and `topics`,
    /// and broadcasts: what a node may have missed while its bus
    /// subscription was down. Each list is newest first (the newest
    /// `size`); the caller orders.
    pub(crate) async fn since(
        &self,
        users: &[String],
        topics: &[String],
        since_ms: u64,
        size: u64,
    ) -> Result<Vec<(KeptIn, Vec<Kept>)>> {
        let from = format!("{since_ms}-0");
        let streams: Vec<(KeptIn, String)> = users
            .iter()
            .map(|u| (KeptIn::User(u.clone()), self.keys.history_user(u)))
            .chain(
                topics
                    .iter()
                    .map(|t| (KeptIn::Topic(t.clone()), self.keys.history_topic(t))),
            )
            .chain([(KeptIn::Broadcasts, self.keys.history_broadcast())])
            .collect();
        let mut out = Vec::with_capacity(streams.len());
        for chunk in streams.chunks(500) {
            let mut pipe = redis::pipe();
            for (_, key) in chunk {
                pipe.cmd("XREVRANGE")
                    .arg(key)
                    .arg("+")
                    .arg(&from)
                    .arg("COUNT")
                    .arg(size);
            }
            let mut c = self.conn.get();
            let lists: Vec<Vec<RawEntry>> = self
                .bounded(async move { pipe.query_async(&mut c).await })
                .await?;
            for ((source, _), list) in chunk.iter().zip(lists) {
                out.push((source.clone(), parse_entries(list)));
            }
        }
        Ok(out)
    }
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
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (user, id) in wanted {
            let key = self.keys.history_claims(user);
            pipe.hset_nx(&key, id.to_string(), format!("catch-up:{}", self.origin))
                .pexpire(&key, ttl_secs.saturating_mul(1000) as i64)
                .ignore();
        }
        let mut c = self.conn.get();
        self.bounded(async move { pipe.query_async(&mut c).await })
            .await
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
fn parse_entries(raw: Vec<RawEntry>) -> Vec<Kept> {
    raw.into_iter()
        .filter_map(|(id, fields)| {
            let id: MsgId = id.parse().ok()?;
            let mut kept = Kept {
                id,
                event: String::new(),
                data: String::new(),
                to: KeptFor::All,
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
    set: HashSet<MsgId>,
    order: VecDeque<(Instant, MsgId)>,
}

impl RecentIds {
    pub(crate) fn new(keep: Duration) -> Self {
        Self {
            keep,
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn insert(&mut self, id: MsgId) {
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

    pub(crate) fn contains(&self, id: &MsgId) -> bool {
        self.set.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_forget_after_their_time() {
        let mut r = RecentIds::new(Duration::from_millis(0));
        let id = MsgId { ms: 1, seq: 0 };
        r.insert(id);
        r.insert(MsgId { ms: 2, seq: 0 });
        assert!(!r.contains(&id));
        let mut r = RecentIds::new(Duration::from_secs(60));
        r.insert(id);
        assert!(r.contains(&id));
    }
}
