//! Every Redis key and channel name (README "Redis layout"), spelled in one
//! place, and how they are spread over a Redis Cluster ([`Layout`]).

/// How many partitions a Redis Cluster's users are spread over: enough
/// that three primaries get 21, 22 and 21 of them (each within 4 % of a
/// third), few enough that a sweep or a listing, which runs once per
/// partition, stays cheap. Fixed: changing it moves every user.
pub(crate) const CLUSTER_PARTITIONS: usize = 64;

/// Slots in a Redis Cluster.
const SLOTS: usize = 16384;

/// Where every key lives. On one Redis (or Sentinel) there is one
/// partition and it is the home too, with the key names of the README's
/// Redis layout. On a Redis Cluster every script must touch one slot, so
/// users are spread over [`CLUSTER_PARTITIONS`] partitions, each a whole
/// copy of the layout under its own hash tag (`sse:{p7}:user:bob`): a
/// user's records, its connection ids and the partition's routing state
/// share a slot, and the tags are chosen so that the partitions' slots are
/// evenly spaced (any even split of the slots among primaries gets an even
/// share of partitions). The home (`sse:{b}:...`) holds what belongs to no
/// user: the node reports and the channel control events travel on.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    home: Keys,
    parts: Vec<Keys>,
    sharded: bool,
}

impl Layout {
    /// One Redis: one partition, the home.
    pub(crate) fn single(prefix: &str) -> Self {
        let keys = Keys::new(prefix);
        Self {
            home: keys.clone(),
            parts: vec![keys],
            sharded: false,
        }
    }

    /// A Redis Cluster: [`CLUSTER_PARTITIONS`] tagged partitions and a
    /// tagged home.
    pub(crate) fn cluster(prefix: &str) -> Self {
        Self {
            home: Keys::new(&format!("{prefix}:{{b}}")),
            parts: partition_tags(CLUSTER_PARTITIONS)
                .into_iter()
                .map(|tag| Keys::new(&format!("{prefix}:{{{tag}}}")))
                .collect(),
            sharded: true,
        }
    }

    /// Whether the channels are sharded (`SPUBLISH`, `SSUBSCRIBE`).
    pub(crate) fn sharded(&self) -> bool {
        self.sharded
    }

    /// The keys of no user: node reports, the channel of control events.
    pub(crate) fn home(&self) -> &Keys {
        &self.home
    }

    /// Every partition, in partition order.
    pub(crate) fn parts(&self) -> &[Keys] {
        &self.parts
    }

    /// The partition holding `username`'s records.
    pub(crate) fn of_user(&self, username: &str) -> &Keys {
        &self.parts[self.index_of(username)]
    }

    /// The index of `username`'s partition in [`Layout::parts`].
    pub(crate) fn index_of(&self, username: &str) -> usize {
        crate::store::partition_of(username, self.parts.len())
    }
}

/// For each of `n` partitions, the first tag `p{k}` (k = 0, 1, ...) whose
/// slot is within a few slots of the middle of the partition's share of
/// the slots (`[i * SLOTS / n, (i + 1) * SLOTS / n)`): the partitions are
/// evenly spaced, and a split of the slots into equal ranges (as
/// `redis-cli --cluster create` makes) cuts between two partitions'
/// slots, not next to one. Found in a few thousand tries each.
fn partition_tags(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let middle = (2 * i + 1) * SLOTS / (2 * n);
            (0u64..)
                .map(|k| format!("p{k}"))
                .find(|tag| slot_of(&format!("{{{tag}}}")).abs_diff(middle) <= 8)
                .unwrap_or_default()
        })
        .collect()
}

/// The cluster slot of a key (Redis's `CLUSTER KEYSLOT`): CRC16/XMODEM of
/// its hash tag (the first non-empty `{...}`), else of the whole key.
pub(crate) fn slot_of(key: &str) -> usize {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            let close = rest.iter().position(|b| *b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(bytes);
    let mut crc: u16 = 0;
    for b in hashed {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    usize::from(crc) % SLOTS
}

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// Hash of one connection: `{prefix}:conn:{id}`.
    pub(crate) fn conn(&self, connection_id: &str) -> String {
        format!("{}:conn:{}", self.prefix, connection_id)
    }

    /// Prefix of every connection hash, for scripts that build the key
    /// themselves from an id.
    pub(crate) fn conn_prefix(&self) -> String {
        format!("{}:conn:", self.prefix)
    }

    /// Sorted set of one user's connection ids by connection time.
    pub(crate) fn user(&self, username: &str) -> String {
        format!("{}:user:{}", self.prefix, username)
    }

    pub(crate) fn user_prefix(&self) -> String {
        format!("{}:user:", self.prefix)
    }

    /// Set of usernames with at least one connection.
    pub(crate) fn users(&self) -> String {
        format!("{}:users", self.prefix)
    }

    /// Sorted set of every connection id by last heartbeat.
    pub(crate) fn heartbeats(&self) -> String {
        format!("{}:heartbeats", self.prefix)
    }

    /// Stream of one user's kept messages.
    pub(crate) fn history_user(&self, username: &str) -> String {
        format!("{}:history:user:{}", self.prefix, username)
    }

    /// Stream of kept broadcasts.
    pub(crate) fn history_broadcast(&self) -> String {
        format!("{}:history:broadcast", self.prefix)
    }

    /// Stream of one topic's kept messages.
    pub(crate) fn history_topic(&self, topic: &str) -> String {
        format!("{}:history:topic:{}", self.prefix, topic)
    }

    /// Sorted set of the connection ids following a topic, by connection
    /// time. The word before the colon differs from every other topic
    /// key's, so no topic name (which may hold colons) makes two collide.
    pub(crate) fn topic(&self, topic: &str) -> String {
        format!("{}{}", self.topic_prefix(), topic)
    }

    pub(crate) fn topic_prefix(&self) -> String {
        format!("{}:topic:", self.prefix)
    }

    /// Hash of a topic's followers' usernames -> how many of that user's
    /// connections follow it (its size is the topic's user count).
    pub(crate) fn topic_users(&self, topic: &str) -> String {
        format!("{}{}", self.topic_users_prefix(), topic)
    }

    pub(crate) fn topic_users_prefix(&self) -> String {
        format!("{}:topic_users:", self.prefix)
    }

    /// Hash of node id -> how many followers of the topic that node holds:
    /// the channels a topic message is published on.
    pub(crate) fn topic_nodes(&self, topic: &str) -> String {
        format!("{}{}", self.topic_nodes_prefix(), topic)
    }

    pub(crate) fn topic_nodes_prefix(&self) -> String {
        format!("{}:topic_nodes:", self.prefix)
    }

    /// Set of the topics with at least one follower.
    pub(crate) fn topics(&self) -> String {
        format!("{}:topics", self.prefix)
    }

    /// Hash of one user's one-tab messages a replay gave to some stream
    /// (message id -> connection id) and of what ended streams wrote
    /// (`w:{connection id}` -> message id), expiring with the history.
    pub(crate) fn history_claims(&self, username: &str) -> String {
        format!("{}:history:claims:{}", self.prefix, username)
    }

    pub(crate) fn history_claims_prefix(&self) -> String {
        format!("{}:history:claims:", self.prefix)
    }

    /// The last message id issued (`{ms}-{seq}`): one sequence for every
    /// history stream, so that a user's messages and the broadcasts are
    /// ordered among themselves.
    pub(crate) fn history_seq(&self) -> String {
        format!("{}:history:seq", self.prefix)
    }

    /// Sorted set of node ids by when each last reported (the console).
    pub(crate) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// Hash of one node's last report, with an expiry.
    pub(crate) fn node(&self, node_id: &str) -> String {
        format!("{}:node:{}", self.prefix, node_id)
    }

    /// Pub/sub channel every node hears: broadcasts and control events.
    pub(crate) fn bus(&self) -> String {
        format!("{}:bus", self.prefix)
    }

    /// Pub/sub channel of one node: messages for the streams it holds.
    pub(crate) fn node_bus(&self, node_id: &str) -> String {
        format!("{}:bus:{}", self.prefix, node_id)
    }

    /// Present while the nodes write their live connections back after a
    /// clear, a cleanup that may have removed live ones, or Redis losing
    /// its data: meanwhile messages go to every node. It holds the moment
    /// (unix ms) after which a node's write-back counts; it is deleted once
    /// every node said it wrote back after it ([`Keys::synced`]), and its
    /// expiry is the upper bound.
    pub(crate) fn resyncing(&self) -> String {
        format!("{}:resyncing", self.prefix)
    }

    /// Hash of node id -> unix ms of the node's last complete write-back
    /// of its live connections (every heartbeat, every re-registration).
    pub(crate) fn synced(&self) -> String {
        format!("{}:synced", self.prefix)
    }

    /// When the registry was first written to (unix ms), never expiring:
    /// missing means Redis lost its data (restarted without persistence,
    /// flushed), and the registry lacks live connections until their nodes
    /// write them back.
    pub(crate) fn registry_since(&self) -> String {
        format!("{}:registry_since", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_partitions_spread_evenly_over_the_slots() {
        let layout = Layout::cluster("sse");
        let slots: Vec<usize> = layout
            .parts()
            .iter()
            .map(|k| slot_of(&k.user("bob")))
            .collect();
        // Partition i's slot is in its share: three equal ranges of slots
        // (`redis-cli --cluster create` on three primaries) get 21/22/21.
        for (i, slot) in slots.iter().enumerate() {
            assert_eq!(slot * CLUSTER_PARTITIONS / SLOTS, i, "partition {i}");
        }
        let thirds = [0, 1, 2].map(|t| slots.iter().filter(|s| **s * 3 / SLOTS == t).count());
        assert_eq!(thirds, [21, 22, 21]);
        // Every key of a partition is in the partition's slot.
        let p = &layout.parts()[7];
        let slot = |k: String| slot_of(&k);
        assert_eq!(slot(p.conn("x")), slot(p.users()));
        assert_eq!(slot(p.node_bus("web1")), slot(p.topic_nodes("doc:1")));
        assert_eq!(layout.home().bus(), "sse:{b}:bus");
        assert!(p.user("bob").starts_with("sse:{p"));
    }

    #[test]
    fn slots_are_redis_keyslots() {
        // Values of `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("bar"), 5061);
        assert_eq!(slot_of("123456789"), 0x31C3 % SLOTS);
        assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
        assert_eq!(slot_of("foo{}{bar}"), slot_of("foo{}{bar}"));
        assert_ne!(slot_of("foo{}{bar}"), slot_of("bar"));
        assert_eq!(slot_of("foo{{bar}}zap"), slot_of("{bar"));
    }

    #[test]
    fn users_spread_evenly_over_the_partitions() {
        let layout = Layout::cluster("sse");
        let mut counts = vec![0usize; CLUSTER_PARTITIONS];
        for i in 0..64_000 {
            counts[layout.index_of(&format!("user{i}"))] += 1;
        }
        let (min, max) = (counts.iter().min(), counts.iter().max());
        assert!(
            min >= Some(&800) && max <= Some(&1200),
            "users per partition: {counts:?}"
        );
        assert_eq!(layout.index_of("bob"), layout.index_of("bob"));
        let single = Layout::single("sse");
        assert_eq!(single.of_user("bob").user("bob"), "sse:user:bob");
        assert_eq!(single.home().bus(), "sse:bus");
    }

    #[test]
    fn layout_matches_spec() {
        let k = Keys::new("sse");
        assert_eq!(k.conn("abc"), "sse:conn:abc");
        assert_eq!(k.user("bob"), "sse:user:bob");
        assert_eq!(k.users(), "sse:users");
        assert_eq!(k.heartbeats(), "sse:heartbeats");
        assert_eq!(k.history_user("bob"), "sse:history:user:bob");
        assert_eq!(k.history_broadcast(), "sse:history:broadcast");
        assert_eq!(k.bus(), "sse:bus");
        assert_eq!(k.node_bus("web1"), "sse:bus:web1");
        assert_eq!(k.resyncing(), "sse:resyncing");
        assert_eq!(k.registry_since(), "sse:registry_since");
        assert_eq!(k.synced(), "sse:synced");
        assert_eq!(k.history_claims("bob"), "sse:history:claims:bob");
        assert_eq!(k.history_claims_prefix() + "bob", k.history_claims("bob"));
        assert_eq!(k.history_seq(), "sse:history:seq");
        assert_eq!(k.nodes(), "sse:nodes");
        assert_eq!(k.node("web-1"), "sse:node:web-1");
        assert_eq!(k.conn_prefix() + "abc", k.conn("abc"));
        assert_eq!(k.user_prefix() + "bob", k.user("bob"));
        assert_eq!(k.topic("doc:42"), "sse:topic:doc:42");
        assert_eq!(k.topic_users("doc:42"), "sse:topic_users:doc:42");
        assert_eq!(k.topic_nodes("doc:42"), "sse:topic_nodes:doc:42");
        assert_eq!(k.topics(), "sse:topics");
        assert_eq!(k.history_topic("doc:42"), "sse:history:topic:doc:42");
        assert_eq!(k.topic_prefix() + "a", k.topic("a"));
        assert_eq!(k.topic_users_prefix() + "a", k.topic_users("a"));
        assert_eq!(k.topic_nodes_prefix() + "a", k.topic_nodes("a"));
    }
}
