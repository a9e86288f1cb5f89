//! Kept messages for `Last-Event-ID` replay (SPEC 2, `[history]`): one
//! Redis stream per user and one for broadcasts, capped at `history.size`
//! entries and `history.ttl_secs` of age, trimmed by Redis on every append.
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

/// Reads a message's targets and keeps the message, in one atomic step
/// (so no stream can register between the two): targets from ARGV[8] by
/// mode ARGV[7] (`all`: the user's ids, `first`: the oldest id,
/// `broadcast`: the count of ARGV[8]); then event ARGV[5] and data ARGV[6]
/// go to stream ARGV[2] under the next id of sequence ARGV[1], keeping
/// ARGV[3] entries and ARGV[4] ms of age. Returns {id, count, ids...}.
const LUA_APPEND: &str = r#"
local out = {}
local flag = '0'
if ARGV[7] == 'broadcast' then
  out = {'', tostring(redis.call('ZCARD', ARGV[8]))}
else
  local ids
  if ARGV[7] == 'first' then
    ids = redis.call('ZRANGE', ARGV[8], 0, 0)
    if #ids > 0 then flag = '1' else flag = '2' end
  else
    ids = redis.call('ZRANGE', ARGV[8], 0, -1)
  end
  out = {'', tostring(#ids)}
  for _, id in ipairs(ids) do table.insert(out, id) end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms, seq = now, 0
local last = redis.call('GET', ARGV[1])
if last then
  local lms, lseq = string.match(last, '^(%d+)%-(%d+)$')
  lms = tonumber(lms)
  if lms and ms <= lms then
    ms = lms
    seq = tonumber(lseq) + 1
  end
end
local id = string.format('%d-%d', ms, seq)
redis.call('SET', ARGV[1], id)
redis.call('XADD', ARGV[2], 'MAXLEN', ARGV[3], id, 'e', ARGV[5], 'd', ARGV[6], 'f', flag)
redis.call('XTRIM', ARGV[2], 'MINID', string.format('%d-0', now - tonumber(ARGV[4])))
redis.call('PEXPIRE', ARGV[2], ARGV[4])
out[1] = id
return out
"#;

/// Reads, in one atomic step, the user stream ARGV[1] and the broadcast
/// stream ARGV[2] after id ARGV[3] (at most ARGV[4] each), and whether
/// that id is a gap: not kept in either stream, or something after it was
/// trimmed from one of them.
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
local function trimmed_after(key)
  if redis.call('EXISTS', key) == 0 then return false end
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info, 2 do
    if info[i] == 'max-deleted-entry-id' then return after(info[i + 1]) end
  end
  return false
end
local found = #redis.call('XRANGE', ARGV[1], ARGV[3], ARGV[3]) > 0
  or #redis.call('XRANGE', ARGV[2], ARGV[3], ARGV[3]) > 0
local gap = (not found) or trimmed_after(ARGV[1]) or trimmed_after(ARGV[2])
local from = '(' .. ARGV[3]
if gap then from = '-' end
return {gap and 1 or 0,
  redis.call('XRANGE', ARGV[1], from, '+', 'COUNT', ARGV[4]),
  redis.call('XRANGE', ARGV[2], from, '+', 'COUNT', ARGV[4])}
"#;

type RawEntry = (String, Vec<(String, String)>);

#[derive(Clone)]
pub struct History {
    conn: SharedConn,
    keys: Keys,
    append: Script,
    replay: Script,
    timeout: Duration,
}

impl History {
    pub fn new(conn: SharedConn, keys: Keys) -> Self {
        Self {
            conn,
            keys,
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

    /// Reads the targets of a message (as [`Targets`]) and keeps it, in
    /// one round trip; returns its id and the targets. A message for one
    /// tab (`all_connections: false`) is kept as delivered when the user
    /// had a connection (no returning tab gets it again), else kept for the
    /// first tab to come back.
    #[allow(clippy::too_many_arguments)]
    pub async fn append(
        &self,
        to: Option<&str>,
        first_only: bool,
        event: &str,
        data: &str,
        size: u64,
        ttl_secs: u64,
        targets_key: &str,
    ) -> Result<(String, Targets), RegistryError> {
        let (stream, mode) = match to {
            Some(user) if first_only => (self.keys.history_user(user), "first"),
            Some(user) => (self.keys.history_user(user), "all"),
            None => (self.keys.history_broadcast(), "broadcast"),
        };
        let mut inv = self.append.prepare_invoke();
        inv.arg(self.keys.history_seq())
            .arg(stream)
            .arg(size)
            .arg(ttl_secs.saturating_mul(1000))
            .arg(event)
            .arg(data)
            .arg(mode)
            .arg(targets_key);
        let mut c = self.conn.get();
        let out: Vec<String> = self
            .bounded(async move { inv.invoke_async(&mut c).await })
            .await?;
        let mut it = out.into_iter();
        let id = it.next().unwrap_or_default();
        let count: usize = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let targets = if to.is_some() {
            Targets::Ids(it.collect())
        } else {
            Targets::Count(count)
        };
        Ok((id, targets))
    }

    /// What `user` missed after `last` (`None`: a malformed id, a gap).
    pub async fn replay(
        &self,
        user: &str,
        last: Option<MsgId>,
        size: u64,
    ) -> Result<Replay, RegistryError> {
        let last = last.unwrap_or(MsgId { ms: 0, seq: 0 });
        let mut inv = self.replay.prepare_invoke();
        inv.arg(self.keys.history_user(user))
            .arg(self.keys.history_broadcast())
            .arg(last.to_string())
            .arg(size);
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
                pipe.cmd("XRANGE")
                    .arg(self.keys.history_user(u))
                    .arg(&from)
                    .arg("+")
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
                redis::cmd("XRANGE")
                    .arg(key)
                    .arg(&from)
                    .arg("+")
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
