//! The shapes of the admin API's answers (README "HTTP API"): what the
//! routes serialize inside the envelope's `data`, and what the command
//! line reads back from a node. One struct per shape, so the server and
//! its client cannot drift apart.
//!
//! Fields stand in name order where the answer was first written as a
//! JSON map (which serializes in name order): the bytes on the wire stay
//! the ones clients have seen.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::node::router;
use crate::store::{ConnectionRecord, Page, Removed, TopicCount, TopicPresence, TopicsPage};

/// `data` of `POST {base}/send/`, and each of a batch's `results`. A
/// topic message's answer names its topic and has neither `to` nor
/// `all_connections` (see the `Serialize` below); a user's message and a
/// broadcast keep the bytes they always had.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct Sent {
    pub message_id: String,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    pub event: String,
    #[serde(default)]
    pub all_connections: bool,
    pub connections: usize,
}

impl Serialize for Sent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = s.serialize_struct("Sent", if self.topic.is_some() { 4 } else { 5 })?;
        out.serialize_field("message_id", &self.message_id)?;
        match &self.topic {
            Some(topic) => out.serialize_field("topic", topic)?,
            None => out.serialize_field("to", &self.to)?,
        }
        out.serialize_field("event", &self.event)?;
        if self.topic.is_none() {
            out.serialize_field("all_connections", &self.all_connections)?;
        }
        out.serialize_field("connections", &self.connections)?;
        out.end()
    }
}

impl From<router::Sent> for Sent {
    fn from(s: router::Sent) -> Self {
        Sent {
            message_id: s.message_id,
            to: s.to,
            topic: s.topic,
            event: s.event,
            all_connections: s.all_connections,
            connections: s.connections,
        }
    }
}

/// `data` of `POST {base}/send/batch/`: one result per message, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct BatchSent {
    pub results: Vec<Sent>,
}

/// `data` of a full clear (`POST {base}/connections/`) and of a user's
/// disconnect (`DELETE {base}/connections/{username}/`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Counts {
    pub connection_count: usize,
    pub user_count: usize,
}

impl From<&Removed> for Counts {
    fn from(removed: &Removed) -> Self {
        Counts {
            connection_count: removed.connection_count(),
            user_count: removed.user_count(),
        }
    }
}

impl From<crate::store::Cleared> for Counts {
    fn from(cleared: crate::store::Cleared) -> Self {
        Counts {
            connection_count: cleared.connection_count,
            user_count: cleared.user_count,
        }
    }
}

/// `data` of `POST {base}/cleanup/`: the counts and the removed ids.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct CleanedUp {
    pub connection_count: usize,
    pub connection_ids: Vec<String>,
    pub user_count: usize,
}

impl From<Removed> for CleanedUp {
    fn from(removed: Removed) -> Self {
        CleanedUp {
            connection_count: removed.connection_count(),
            user_count: removed.user_count(),
            connection_ids: removed.connection_ids,
        }
    }
}

/// One connection in a listing. The node that holds it is not part of
/// the API's shape (the console's [`NodeConnection`] has it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Connection {
    pub connection_id: String,
    pub connection_time: f64,
    pub last_heartbeat: f64,
    /// Absent in the answers of nodes that predate topics.
    #[serde(default)]
    pub topics: Vec<String>,
    pub username: String,
}

impl From<&ConnectionRecord> for Connection {
    fn from(r: &ConnectionRecord) -> Self {
        Connection {
            connection_id: r.connection_id.clone(),
            connection_time: r.connection_time,
            last_heartbeat: r.last_heartbeat,
            topics: r.topics.clone(),
            username: r.username.clone(),
        }
    }
}

impl Connection {
    /// The record again, held by `node_id`.
    pub(crate) fn into_record(self, node_id: &str) -> ConnectionRecord {
        ConnectionRecord {
            connection_id: self.connection_id,
            username: self.username,
            connection_time: self.connection_time,
            last_heartbeat: self.last_heartbeat,
            topics: self.topics,
            node_id: node_id.to_string(),
        }
    }
}

fn connections(list: &[ConnectionRecord]) -> Vec<Connection> {
    list.iter().map(Connection::from).collect()
}

/// `data` of `GET {base}/connections/{username}/`, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct UserConnections {
    pub connection_count: usize,
    pub connection_ids: Vec<String>,
    pub connections: Vec<Connection>,
    pub username: String,
}

impl UserConnections {
    pub(crate) fn new(username: &str, list: &[ConnectionRecord]) -> Self {
        UserConnections {
            connection_count: list.len(),
            connection_ids: list.iter().map(|r| r.connection_id.clone()).collect(),
            connections: connections(list),
            username: username.to_string(),
        }
    }
}

/// `data` of one page of `GET {base}/connections/?limit=N&cursor=C`: the
/// unpaged shape for the page's users, the registry-wide counts, and the
/// next page's cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ConnectionsPage {
    pub active_users: Vec<String>,
    pub connection_details: BTreeMap<String, Vec<Connection>>,
    pub next_cursor: Option<String>,
    pub total_connections: usize,
    pub user_count: usize,
}

impl From<&Page> for ConnectionsPage {
    fn from(page: &Page) -> Self {
        ConnectionsPage {
            active_users: page.users.iter().map(|(u, _)| u.clone()).collect(),
            connection_details: page
                .users
                .iter()
                .map(|(user, list)| (user.clone(), connections(list)))
                .collect(),
            next_cursor: page.next.as_ref().map(ToString::to_string),
            total_connections: page.total_connections,
            user_count: page.user_count,
        }
    }
}

/// One followed topic in `GET {base}/topics/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Topic {
    pub topic: String,
    pub connection_count: usize,
    pub user_count: usize,
}

impl From<&TopicCount> for Topic {
    fn from(c: &TopicCount) -> Self {
        Topic {
            topic: c.topic.clone(),
            connection_count: c.connection_count,
            user_count: c.user_count,
        }
    }
}

/// `data` of `GET {base}/topics/`: the followed topics by name, and how
/// many there are (registry-wide). A page (`?limit=N&cursor=C`) has
/// `next_cursor` too; the whole listing has not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Topics {
    pub topics: Vec<Topic>,
    pub topic_count: usize,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

impl From<&TopicsPage> for Topics {
    fn from(page: &TopicsPage) -> Self {
        Topics {
            topics: page.topics.iter().map(Topic::from).collect(),
            topic_count: page.topic_count,
            next_cursor: page.next.as_ref().map(ToString::to_string),
        }
    }
}

/// `data` of `GET {base}/topics/{topic}/`: who follows it now (nobody:
/// zeros, not a 404: presence, not existence).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TopicFollowers {
    pub topic: String,
    pub connection_count: usize,
    pub user_count: usize,
    /// Sorted.
    pub users: Vec<String>,
    /// By connection time.
    pub connections: Vec<Connection>,
}

impl TopicFollowers {
    pub(crate) fn new(topic: &str, presence: &TopicPresence) -> Self {
        TopicFollowers {
            topic: topic.to_string(),
            connection_count: presence.connections.len(),
            user_count: presence.users.len(),
            users: presence.users.clone(),
            connections: connections(&presence.connections),
        }
    }
}

/// `GET /healthz` (no envelope): 200 with `status: "ok"`, or 503 with
/// `status: "error"` and the envelope's `code` and `message` beside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Health {
    /// The admin listener as the start line names it: `127.0.0.1:8091`,
    /// or `unix:/run/sse-notify/admin.sock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    /// Redis engine: `"ok"` or `"down"` (this node's bus subscription).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    pub connections: usize,
    pub engine: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub node_id: String,
    /// Redis engine: `"ok"` or `"unreachable"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    pub status: String,
}

/// One connection in the console's view of a user: with the node that
/// holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct NodeConnection {
    pub connection_id: String,
    pub connection_time: f64,
    pub last_heartbeat: f64,
    pub node_id: String,
}

/// `data` of the console's `GET {base}/admin/connections/{username}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ConsoleUser {
    pub connection_count: usize,
    pub connections: Vec<NodeConnection>,
    pub username: String,
}

impl ConsoleUser {
    pub(crate) fn new(username: &str, list: &[ConnectionRecord]) -> Self {
        ConsoleUser {
            connection_count: list.len(),
            connections: list
                .iter()
                .map(|r| NodeConnection {
                    connection_id: r.connection_id.clone(),
                    connection_time: r.connection_time,
                    last_heartbeat: r.last_heartbeat,
                    node_id: r.node_id.clone(),
                })
                .collect(),
            username: username.to_string(),
        }
    }
}

/// A user and how many connections it has, in the console's user list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct UserCount {
    pub connection_count: usize,
    pub username: String,
}

/// `data` of the console's `GET {base}/admin/users`: a page of users and
/// the registry-wide counts (absent when the page read none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct UsersPage {
    pub next_cursor: Option<String>,
    pub total_connections: Option<usize>,
    pub user_count: Option<usize>,
    pub users: Vec<UserCount>,
}

/// `data` of the console's `GET {base}/admin/topics`: a page of followed
/// topics and how many there are (absent when the page read none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ConsoleTopics {
    pub next_cursor: Option<String>,
    pub topic_count: Option<usize>,
    pub topics: Vec<Topic>,
}

/// A stream following a topic, in the console: whose it is and the node
/// that holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TopicFollower {
    pub connection_id: String,
    pub connection_time: f64,
    pub last_heartbeat: f64,
    pub node_id: String,
    pub username: String,
}

/// `data` of the console's `GET {base}/admin/topics/{topic}`: who follows
/// it, each stream with its node, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ConsoleTopic {
    pub connection_count: usize,
    pub connections: Vec<TopicFollower>,
    pub topic: String,
    pub user_count: usize,
    pub users: Vec<String>,
}

impl ConsoleTopic {
    pub(crate) fn new(topic: &str, presence: TopicPresence) -> Self {
        ConsoleTopic {
            connection_count: presence.connections.len(),
            connections: presence
                .connections
                .into_iter()
                .map(|r| TopicFollower {
                    connection_id: r.connection_id,
                    connection_time: r.connection_time,
                    last_heartbeat: r.last_heartbeat,
                    node_id: r.node_id,
                    username: r.username,
                })
                .collect(),
            topic: topic.to_string(),
            user_count: presence.users.len(),
            users: presence.users,
        }
    }
}

/// The error envelope, as a client reads it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct Refusal {
    #[serde(default)]
    pub message: Option<String>,
}

/// The success envelope, as a client reads it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct Envelope<T> {
    pub data: T,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::Cursor;

    fn record(id: &str, user: &str) -> ConnectionRecord {
        ConnectionRecord {
            connection_id: id.into(),
            username: user.into(),
            connection_time: 1.5,
            last_heartbeat: 2.5,
            topics: Vec::new(),
            node_id: "n1".into(),
        }
    }

    /// The answers were JSON maps, which print their keys in name order;
    /// the structs print theirs in field order, so the bytes are pinned
    /// here against the maps the clients have seen.
    #[test]
    fn answers_keep_their_bytes() {
        let list = vec![record("c1", "al")];
        assert_eq!(
            serde_json::to_string(&UserConnections::new("al", &list)).unwrap(),
            json!({"username": "al", "connection_count": 1, "connection_ids": ["c1"],
                   "connections": [{"connection_id": "c1", "username": "al", "topics": [],
                                    "connection_time": 1.5, "last_heartbeat": 2.5}]})
            .to_string()
        );
        let page = Page {
            users: vec![("al".into(), list.clone())],
            user_count: 3,
            total_connections: 4,
            next: Some(Cursor("al".into())),
        };
        assert_eq!(
            serde_json::to_string(&ConnectionsPage::from(&page)).unwrap(),
            json!({"active_users": ["al"], "user_count": 3, "total_connections": 4,
                   "connection_details": {"al": [{"connection_id": "c1", "username": "al",
                                                  "topics": [],
                                                  "connection_time": 1.5, "last_heartbeat": 2.5}]},
                   "next_cursor": Cursor("al".into()).to_string()})
            .to_string()
        );
        assert_eq!(
            serde_json::to_string(&ConsoleUser::new("al", &list)).unwrap(),
            json!({"username": "al", "connection_count": 1,
                   "connections": [{"connection_id": "c1", "node_id": "n1",
                                    "connection_time": 1.5, "last_heartbeat": 2.5}]})
            .to_string()
        );
        let sent = |to: Option<&str>, topic: Option<&str>| Sent {
            message_id: "m1".into(),
            to: to.map(String::from),
            topic: topic.map(String::from),
            event: "message".into(),
            all_connections: topic.is_none(),
            connections: 2,
        };
        assert_eq!(
            serde_json::to_string(&sent(Some("al"), None)).unwrap(),
            r#"{"message_id":"m1","to":"al","event":"message","all_connections":true,"connections":2}"#
        );
        assert_eq!(
            serde_json::to_string(&sent(None, None)).unwrap(),
            r#"{"message_id":"m1","to":null,"event":"message","all_connections":true,"connections":2}"#
        );
        let topic = serde_json::to_string(&sent(None, Some("doc:42"))).unwrap();
        assert_eq!(
            topic,
            r#"{"message_id":"m1","topic":"doc:42","event":"message","connections":2}"#
        );
        // The command line prints what it read back: the same bytes.
        let back: Sent = serde_json::from_str(&topic).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), topic);
        let presence = TopicPresence {
            users: vec!["al".into()],
            connections: vec![ConnectionRecord {
                topics: vec!["doc:42".into()],
                ..record("c1", "al")
            }],
        };
        assert_eq!(
            serde_json::to_string(&TopicFollowers::new("doc:42", &presence)).unwrap(),
            r#"{"topic":"doc:42","connection_count":1,"user_count":1,"users":["al"],"connections":[{"connection_id":"c1","connection_time":1.5,"last_heartbeat":2.5,"topics":["doc:42"],"username":"al"}]}"#
        );
        let page = TopicsPage {
            topics: vec![TopicCount {
                topic: "doc:42".into(),
                connection_count: 3,
                user_count: 2,
            }],
            topic_count: 5,
            next: None,
        };
        assert_eq!(
            serde_json::to_string(&Topics::from(&page)).unwrap(),
            r#"{"topics":[{"topic":"doc:42","connection_count":3,"user_count":2}],"topic_count":5,"next_cursor":null}"#
        );
        let mut removed = Removed::default();
        removed.add("c1".into(), "al".into());
        assert_eq!(
            serde_json::to_string(&CleanedUp::from(removed)).unwrap(),
            json!({"connection_count": 1, "user_count": 1, "connection_ids": ["c1"]}).to_string()
        );
    }

    /// What the command line reads is what the routes write.
    #[test]
    fn a_client_reads_back_what_a_route_writes() {
        let list = vec![record("c1", "al"), record("c2", "al")];
        let answer = UserConnections::new("al", &list);
        let text = serde_json::to_string(&json!({"code": 200, "data": answer})).unwrap();
        let read: Envelope<UserConnections> = serde_json::from_str(&text).unwrap();
        assert_eq!(read.data, answer);
        let back: Vec<ConnectionRecord> = read
            .data
            .connections
            .into_iter()
            .map(|c| c.into_record("n1"))
            .collect();
        assert_eq!(back, list);
    }
}
