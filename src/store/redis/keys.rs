//! Every Redis key and channel name (README "Redis layout"), spelled in one
//! place.

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
