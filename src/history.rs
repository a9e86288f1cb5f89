//! Kept messages for `Last-Event-ID` replay (SPEC 2, `[history]`): one
//! Redis stream per user and one for broadcasts. A replay serves exactly the
//! newest `history.size` entries younger than `history.ttl_secs`; Redis
//! trims the rest cheaply on append (see [`LUA_APPEND`]) and expires a
//! stream `ttl` after its last message.
//!
//! Every message id comes from one sequence (`{ms}-{seq}`, Redis time), so
//! the ids of a user's messages and of the broadcasts are ordered among
//! themselves and a replay can merge the two streams. Appending happens
//! before the targets are read (see [`crate::router`]), so a connection that
//! registers and then reads the history misses nothing at the seam: what it
//! did not read was sent after it registered and reaches its queue.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use redis::Script;
use tokio::sync::{mpsc, oneshot};

use crate::keys::Keys;
use crate::registry::RegistryError;
use crate::target::SharedConn;

/// A message id: milliseconds (Redis time) and a sequence within them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgId {
    pub ms: u64,
    pub seq: u64,
}

impl FromStr for MsgId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
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

/// The id of an encoded message frame (`id: ...` first line), if any.
pub fn frame_id(frame: &[u8]) -> Option<MsgId> {
    let rest = frame.strip_prefix(b"id: ")?;
    let end = rest.iter().position(|&b| b == b'\n')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// A message to keep, with where its targets are read.
#[derive(Debug, Clone)]
pub struct Append {
    pub to: Option<String>,
    pub first_only: bool,
    pub event: String,
    pub data: String,
    /// The user's sorted set, or the heartbeats set for a broadcast.
    pub targets_key: String,
}

type AppendReply = oneshot::Sender<Result<(String, Targets), String>>;

/// Group commit of sends: concurrent sends wait for one script call that
/// keeps them all (in arrival order) instead of one round trip each.
#[derive(Clone)]
pub struct Appender {
    tx: mpsc::Sender<(Append, u64, u64, AppendReply)>,
}

/// Sends queued beyond this wait for room (back-pressure to the API).
const APPEND_QUEUE: usize = 4096;
/// Messages per script call.
const APPEND_BATCH: usize = 128;

impl Appender {
    /// The handle and the task that must run for it (until shutdown).
    pub fn new(
        history: History,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> (Self, impl std::future::Future<Output = ()>) {
        let (tx, mut rx) = mpsc::channel::<(Append, u64, u64, AppendReply)>(APPEND_QUEUE);
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
                let (msgs, replies): (Vec<Append>, Vec<AppendReply>) =
                    batch.drain(..).map(|(m, _, _, r)| (m, r)).unzip();
                match history.append(&msgs, size, ttl).await {
                    Ok(results) => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(e.to_string()));
                        }
                    }
                }
            }
        };
        (Self { tx }, task)
    }

    /// Keeps one message; returns its id and targets.
    pub async fn append(
        &self,
        msg: Append,
        size: u64,
        ttl_secs: u64,
    ) -> Result<(String, Targets), RegistryError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || RegistryError::Unavailable("node is shutting down".into());
        self.tx
            .send((msg, size, ttl_secs, reply))
            .await
            .map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(RegistryError::Unavailable)
    }
}

/// Who a message goes to, as the registry said when it was kept.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// The user's connection ids (all, or the first).
    Ids(Vec<String>),
    /// How many connections a broadcast reaches.
    Count(usize),
}

/// One kept message.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    pub id: MsgId,
    pub event: String,
    pub data: String,
    /// Sent with `all_connections: false`.
    pub first_only: bool,
    /// ... and the user had no connection then: replay it to the first
    /// tab that comes back.
    pub for_first_back: bool,
    /// From the user's stream (false: a broadcast).
    pub to_user: bool,
}

/// What a reconnecting client gets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replay {
    /// The id is unknown, malformed or older than what is kept.
    pub gap: bool,
    /// The user's messages and the broadcasts after the id (all that is
    /// kept on a gap), merged in id order.
    pub entries: Vec<Kept>,
}

/// Reads each message's targets, keeps it and publishes it on the bus, for
/// a batch of messages in one atomic step: no stream can register between
/// reading and keeping, and the bus carries messages in id order, so every
/// node (this one too) delivers them to each stream in that order. ARGV[1]
/// is the id sequence, ARGV[2] the entries kept per stream, ARGV[3] the
/// age kept (ms), ARGV[4] the bus channel; then six arguments per
/// message: stream, event, data, mode (`all`: the user's ids, `first`: the
/// oldest, `broadcast`: the count of the key), the key the targets come
/// from, and its bus event as JSON without `id`, `ids` and the closing
/// brace (built by the node, with the username, so the script only
/// appends).
/// Returns one {id, count, ids...} per message.
///
/// Trimming is Redis's cheap kind (`MAXLEN ~`: whole stream nodes, about
/// three times cheaper than exact trimming), to no fewer than `size + 1`
/// entries, so a stream may hold up to one node (`stream-node-max-entries`,
/// 100 by default) more; what is served is cut exactly by [`LUA_REPLAY`]. The
/// age limit is applied the same way, and the key expires `ttl` after its
/// last message. The whole batch goes out as one bus event (a JSON array).
const LUA_APPEND: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms, seq = now, -1
local last = redis.call('GET', ARGV[1])
if last then
  local lms, lseq = string.match(last, '^(%d+)%-(%d+)$')
  lms = tonumber(lms)
  if lms and ms <= lms then
    ms = lms
    seq = tonumber(lseq)
  end
end
-- Numbers are turned into text once per batch where possible: Lua formats
-- them with printf's floating-point path, a tenth of Redis's time here.
local prefix = string.format('%d-', ms)
local maxlen = string.format('%d', tonumber(ARGV[2]) + 1)
local results = {}
local events = {}
local id
for i = 5, #ARGV, 6 do
  local stream, mode, tkey = ARGV[i], ARGV[i + 3], ARGV[i + 4]
  local out
  local flag = '0'
  local ids = {}
  if mode == 'broadcast' then
    out = {'', redis.call('ZCARD', tkey)}
  else
    if mode == 'first' then
      ids = redis.call('ZRANGE', tkey, 0, 0)
      if #ids > 0 then flag = '1' else flag = '2' end
    else
      ids = redis.call('ZRANGE', tkey, 0, -1)
    end
    out = {'', #ids}
    for _, x in ipairs(ids) do table.insert(out, x) end
  end
  seq = seq + 1
  id = prefix .. string.format('%d', seq)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, id, 'e', ARGV[i + 1], 'd', ARGV[i + 2], 'f', flag)
  redis.call('PEXPIRE', stream, ARGV[3])
  if mode == 'first' then
    if #ids > 0 then
      -- Connection ids are uuids this project wrote: no JSON escaping.
      table.insert(events, ARGV[i + 5] .. ',"id":"' .. id .. '","ids":["' .. table.concat(ids, '","') .. '"]}')
    end
  else
    table.insert(events, ARGV[i + 5] .. ',"id":"' .. id .. '"}')
  end
  out[1] = id
  table.insert(results, out)
end
if id then redis.call('SET', ARGV[1], id) end
if #events > 0 then
  redis.call('PUBLISH', ARGV[4], '[' .. table.concat(events, ',') .. ']')
end
return results
"#;

/// Reads, in one atomic step, what is served of the user stream ARGV[1]
/// and the broadcast stream ARGV[2]: the newest ARGV[4] entries of each,
/// younger than ARGV[5] ms. Answers whether the id ARGV[3] is a gap (not
/// kept in either stream, or something after it is no longer served by
/// one of them) and, per stream, what follows it (everything served on a
/// gap), newest first.
const LUA_REPLAY: &str = r#"
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local lms, lseq = parse(ARGV[3])
local function after(a)
  local ms, seq = parse(a)
  return ms > lms or (ms == lms and seq > lseq)
end
local t = redis.call('TIME')
local oldest = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[5])
local size = tonumber(ARGV[4])
local gap = #redis.call('XRANGE', ARGV[1], ARGV[3], ARGV[3]) == 0
  and #redis.call('XRANGE', ARGV[2], ARGV[3], ARGV[3]) == 0
-- The served window of a stream; a gap when an entry after the id fell
-- out of it (by count or age). Appends trim to at least size + 1 entries,
-- so whatever Redis deleted is older than the first entry left out here.
local function window(key)
  local newest = redis.call('XREVRANGE', key, '+', '-', 'COUNT', size + 1)
  local served = {}
  for i, e in ipairs(newest) do
    local ms = parse(e[1])
    if i > size or ms < oldest then
      if after(e[1]) then gap = true end
      break
    end
    table.insert(served, e)
  end
  return served
end
local mine, all = window(ARGV[1]), window(ARGV[2])
local function follow(list)
  if gap then return list end
  local out = {}
  for _, e in ipairs(list) do
    if not after(e[1]) then break end
    table.insert(out, e)
  end
  return out
end
return {gap and 1 or 0, follow(mine), follow(all)}
"#;

type RawEntry = (String, Vec<(String, String)>);

#[derive(Clone)]
pub struct History {
    conn: SharedConn,
    keys: Keys,
    /// This node on the bus ([`crate::app::App::bus_origin`]).
    origin: String,
    append: Script,
    replay: Script,
    timeout: Duration,
}

impl History {
    pub fn new(conn: SharedConn, keys: Keys, origin: String) -> Self {
        Self {
            conn,
            keys,
            origin,
            append: Script::new(LUA_APPEND),
            replay: Script::new(LUA_REPLAY),
            timeout: Duration::from_secs(5),
        }
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RegistryError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(RegistryError::from),
            Err(_) => Err(RegistryError::Timeout(self.timeout)),
        }
    }

    /// Reads the targets of each message (as [`Targets`]) and keeps it,
    /// in one round trip for the whole batch; returns their ids and
    /// targets, in order. A message for one tab (`all_connections: false`)
    /// is kept as delivered when the user had a connection (no returning
    /// tab gets it again), else for the first tab to come back.
    pub async fn append(
        &self,
        batch: &[Append],
        size: u64,
        ttl_secs: u64,
    ) -> Result<Vec<(String, Targets)>, RegistryError> {
        let mut inv = self.append.prepare_invoke();
        inv.arg(self.keys.history_seq())
            .arg(size)
            .arg(ttl_secs.saturating_mul(1000))
            .arg(self.keys.bus());
        for m in batch {
            let (stream, mode) = match &m.to {
                Some(user) if m.first_only => (self.keys.history_user(user), "first"),
                Some(user) => (self.keys.history_user(user), "all"),
                None => (self.keys.history_broadcast(), "broadcast"),
            };
            inv.arg(stream)
                .arg(&m.event)
                .arg(&m.data)
                .arg(mode)
                .arg(&m.targets_key)
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

    /// What `user` missed after `last` (`None`: a malformed id, a gap).
    pub async fn replay(
        &self,
        user: &str,
        last: Option<MsgId>,
        size: u64,
        ttl_secs: u64,
    ) -> Result<Replay, RegistryError> {
        let last = last.unwrap_or(MsgId { ms: 0, seq: 0 });
        let mut inv = self.replay.prepare_invoke();
        inv.arg(self.keys.history_user(user))
            .arg(self.keys.history_broadcast())
            .arg(last.to_string())
            .arg(size)
            .arg(ttl_secs.saturating_mul(1000));
        let mut c = self.conn.get();
        let (gap, mine, all): (i64, Vec<RawEntry>, Vec<RawEntry>) = self
            .bounded(async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(Replay {
            gap: gap == 1 || last == (MsgId { ms: 0, seq: 0 }),
            entries: merge(parse_entries(mine, true), parse_entries(all, false)),
        })
    }

    /// Messages kept since `since_ms` for each of `users`, and broadcasts:
    /// what a node may have missed while its bus subscription was down.
    /// Each list is newest first (the newest `size`); the caller orders.
    pub async fn since(
        &self,
        users: &[String],
        since_ms: u64,
        size: u64,
    ) -> Result<Vec<(Option<String>, Vec<Kept>)>, RegistryError> {
        let from = format!("{since_ms}-0");
        let mut out = Vec::with_capacity(users.len() + 1);
        for chunk in users.chunks(500) {
            let mut pipe = redis::pipe();
            for u in chunk {
                pipe.cmd("XREVRANGE")
                    .arg(self.keys.history_user(u))
                    .arg("+")
                    .arg(&from)
                    .arg("COUNT")
                    .arg(size);
            }
            let mut c = self.conn.get();
            let lists: Vec<Vec<RawEntry>> = self
                .bounded(async move { pipe.query_async(&mut c).await })
                .await?;
            for (u, list) in chunk.iter().zip(lists) {
                out.push((Some(u.clone()), parse_entries(list, true)));
            }
        }
        let mut c = self.conn.get();
        let key = self.keys.history_broadcast();
        let all: Vec<RawEntry> = self
            .bounded(async move {
                redis::cmd("XREVRANGE")
                    .arg(key)
                    .arg("+")
                    .arg(&from)
                    .arg("COUNT")
                    .arg(size)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        out.push((None, parse_entries(all, false)));
        Ok(out)
    }
}

/// A message's `deliver` bus event (the JSON of [`crate::bus::BusEvent`])
/// without its `id`, `ids` and closing brace, which the keeping script
/// appends once it knows them.
fn bus_event_head(origin: &str, m: &Append) -> String {
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
    head.push_str(if m.to.is_none() {
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
fn parse_entries(raw: Vec<RawEntry>, to_user: bool) -> Vec<Kept> {
    raw.into_iter()
        .filter_map(|(id, fields)| {
            let id: MsgId = id.parse().ok()?;
            let mut kept = Kept {
                id,
                event: String::new(),
                data: String::new(),
                first_only: false,
                for_first_back: false,
                to_user,
            };
            for (k, v) in fields {
                match k.as_str() {
                    "e" => kept.event = v,
                    "d" => kept.data = v,
                    "f" => {
                        kept.first_only = v != "0";
                        kept.for_first_back = v == "2";
                    }
                    _ => {}
                }
            }
            Some(kept)
        })
        .collect()
}

fn merge(a: Vec<Kept>, b: Vec<Kept>) -> Vec<Kept> {
    let mut out: Vec<Kept> = a.into_iter().chain(b).collect();
    out.sort_by_key(|k| k.id);
    out.dedup_by_key(|k| k.id);
    out
}

/// The node's [`RecentIds`], shared by the router and the bus.
pub type Recent = std::sync::Arc<std::sync::Mutex<RecentIds>>;

/// Ids of messages this node delivered lately, so that a catch-up from the
/// history after a bus outage does not deliver them twice.
pub struct RecentIds {
    keep: Duration,
    set: HashSet<MsgId>,
    order: VecDeque<(Instant, MsgId)>,
}

impl RecentIds {
    pub fn new(keep: Duration) -> Self {
        Self {
            keep,
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    pub fn insert(&mut self, id: MsgId) {
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

    pub fn contains(&self, id: &MsgId) -> bool {
        self.set.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            frame_id(b"id: 5-1\nevent: m\ndata: 1\n\n"),
            Some(MsgId { ms: 5, seq: 1 })
        );
        assert_eq!(frame_id(b": heartbeat 5\n\n"), None);
    }

    /// The script completes the head with the id (and the ids of a
    /// one-tab message); the result must be the bus's `deliver` event.
    #[test]
    fn bus_event_head_completes_into_a_deliver_event() {
        use crate::bus::BusEvent;
        let m = Append {
            to: Some("ann \"q\" \u{2028}".into()),
            first_only: true,
            event: "message".into(),
            data: r#"{"text":"a \"b\"\n","n":12345678901234567890123}"#.into(),
            targets_key: String::new(),
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
                first_only: true,
                ids: vec!["a-1".into(), "b-2".into()],
                broadcast: false,
                id: "5-1".into(),
                event: m.event.clone(),
                data: m.data.clone(),
            }]
        );
        let b = Append {
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
