//! The store's contract, run on both engines: the embedded one, and Redis
//! on a `redis-server` of the test's own (the integration tests' harness,
//! compiled in here so that the store stays `pub(crate)`). Each concern of
//! [`super::seam`] answers the same on both, through the same calls.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::memory::MemoryStore;
use super::redis::RedisStore;
use super::seam::{Delivery, History, Registry};
use super::{
    unix_now, Backend, ConnectionRecord, Inbound, LiveConn, Message, MsgId, NodeLink, Open, Target,
    TopicCount,
};
use crate::config::Config;
use crate::metrics::Metrics;

use super::harness::redis_cluster::RedisCluster;
use super::harness::redis_server::RedisServer;

/// A node that holds the streams registered through it and keeps what
/// reaches it.
#[derive(Default)]
struct Node {
    live: Mutex<Vec<LiveConn>>,
    received: Mutex<Vec<Inbound>>,
}

impl NodeLink for Node {
    fn receive(&self, inbound: Inbound) -> usize {
        self.received.lock().unwrap().push(inbound);
        0
    }
    fn live(&self) -> Vec<LiveConn> {
        self.live.lock().unwrap().clone()
    }
    fn holds(&self, connection_id: &str) -> bool {
        self.live
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.connection_id == connection_id)
    }
    fn live_count(&self) -> usize {
        self.live.lock().unwrap().len()
    }
}

impl Node {
    /// Waits until something received matches `want` (the Redis engine
    /// delivers from the bus), and takes what came so far.
    async fn received(&self, want: impl Fn(&Inbound) -> bool) -> Vec<Inbound> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            {
                let mut got = self.received.lock().unwrap();
                if got.iter().any(&want) {
                    return std::mem::take(&mut *got);
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nothing matching arrived within 10 s: {:?}",
                self.received.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn config(redis_url: &str) -> Config {
    let mut c = Config::default();
    c.server.node_id = format!("node-{}", uuid::Uuid::new_v4().simple());
    c.redis.url = crate::config::Secret(redis_url.to_string());
    c.redis.connect_timeout_secs = 5;
    c.stream.heartbeat_secs = 1;
    c.history.enabled = true;
    c.topics.join_leave = true;
    c
}

/// Who follows which topics in the contract.
fn topics_of(id: &str) -> Vec<String> {
    let topics: &[&str] = match id {
        "a1" => &["doc:1", "team:7"],
        "b1" => &["doc:1"],
        _ => &[],
    };
    topics.iter().map(|t| t.to_string()).collect()
}

/// The stream `id` of `user`, as its node holds it.
fn live(id: &str, user: &str) -> LiveConn {
    LiveConn {
        connection_id: id.into(),
        username: user.into(),
        connection_time: 0.0,
        topics: topics_of(id),
    }
}

/// Registers `id` of `user` as held by `node`; returns the user's count.
async fn register<S: Registry>(
    store: &S,
    node: &Node,
    config: &Config,
    id: &str,
    user: &str,
    t: f64,
) -> usize {
    node.live.lock().unwrap().push(LiveConn {
        connection_time: t,
        ..live(id, user)
    });
    store
        .register(ConnectionRecord {
            connection_id: id.into(),
            username: user.into(),
            connection_time: t,
            last_heartbeat: t,
            topics: topics_of(id),
            node_id: config.node_id(),
        })
        .await
        .expect("register")
}

fn message(to: Option<&str>, first_only: bool, data: &str) -> Message {
    Message {
        to: to.map(str::to_string),
        topic: None,
        first_only,
        event: "note".into(),
        data: data.into(),
    }
}

/// The contract: the same calls, the same answers, on either engine.
async fn contract<S: Registry + History + Delivery>(store: &S, node: &Node, config: &Config) {
    let kept = &config.history;
    let t = unix_now() - 30.0;
    // Registry: counts per user, oldest first, names in order, totals.
    assert_eq!(
        register(store, node, config, "a2", "alice", t + 2.0).await,
        1
    );
    assert_eq!(
        register(store, node, config, "a1", "alice", t + 1.0).await,
        2
    );
    assert_eq!(register(store, node, config, "b1", "bob", t + 3.0).await, 1);
    assert_eq!(register(store, node, config, "b2", "bob", t + 4.0).await, 2);
    assert_eq!(
        store.user_connection_ids("alice", None).await.unwrap(),
        ["a1", "a2"]
    );
    assert_eq!(
        store.user_connection_ids("alice", Some(1)).await.unwrap(),
        ["a1"]
    );
    assert_eq!(store.user_names(None, 10).await.unwrap(), ["alice", "bob"]);
    assert_eq!(store.user_names(Some("alice"), 10).await.unwrap(), ["bob"]);
    assert_eq!(store.totals().await.unwrap(), (2, 4));
    let alice: Vec<String> = store
        .list_user("alice")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.connection_id)
        .collect();
    assert_eq!(alice, ["a1", "a2"]);
    let listed = store
        .users_connections(&["bob".into(), "nobody".into(), "alice".into()])
        .await
        .unwrap();
    let users: Vec<&str> = listed.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(users, ["bob", "alice"]);

    // Topics: memberships come with the records; presence counts streams
    // and users; a join reaches the topic's other followers.
    assert_eq!(listed[1].1[0].topics, ["doc:1", "team:7"]);
    assert_eq!(
        store.topic_names(None, 10).await.unwrap(),
        ["doc:1", "team:7"]
    );
    assert_eq!(
        store.topic_names(Some("doc:1"), 10).await.unwrap(),
        ["team:7"]
    );
    assert_eq!(store.topic_names(None, 1).await.unwrap(), ["doc:1"]);
    assert_eq!(store.topic_total().await.unwrap(), 2);
    let count = |topic: &str, connection_count, user_count| TopicCount {
        topic: topic.into(),
        connection_count,
        user_count,
    };
    assert_eq!(
        store
            .topic_counts(&["team:7".into(), "nobody".into(), "doc:1".into()])
            .await
            .unwrap(),
        [count("team:7", 1, 1), count("doc:1", 2, 2)]
    );
    let doc = store.topic("doc:1").await.unwrap();
    assert_eq!(doc.users, ["alice", "bob"]);
    let ids: Vec<&str> = doc
        .connections
        .iter()
        .map(|r| r.connection_id.as_str())
        .collect();
    assert_eq!(ids, ["a1", "b1"]);
    assert_eq!(store.topic("nobody").await.unwrap(), Default::default());
    node.received(|i| {
        matches!(i, Inbound::Presence { topic, except, event: "join", data }
            if topic == "doc:1" && except == "b1" && data.contains(r#""username":"bob""#))
    })
    .await;

    // Delivery: where each routing mode goes, and how many it counted.
    let one_tab = store
        .send(vec![message(Some("alice"), true, "1")], kept)
        .await
        .unwrap();
    assert_eq!(one_tab[0].connections, 1);
    let is = |target: Target| move |i: &Inbound| matches!(i, Inbound::Deliver { target: t, .. } if *t == target);
    node.received(is(Target::Tab("a1".into()))).await;
    let user = store
        .send(vec![message(Some("bob"), false, "2")], kept)
        .await
        .unwrap();
    assert_eq!(user[0].connections, 2);
    node.received(is(Target::User("bob".into()))).await;
    let all = store
        .send(vec![message(None, false, "3")], kept)
        .await
        .unwrap();
    assert_eq!(all[0].connections, 4);
    node.received(is(Target::All)).await;
    let doc = store
        .send(
            vec![Message {
                topic: Some("doc:1".into()),
                ..message(None, false, "4")
            }],
            kept,
        )
        .await
        .unwrap();
    assert_eq!(doc[0].connections, 2);
    node.received(is(Target::Topic("doc:1".into()))).await;
    if kept.enabled {
        replays(store, kept, &one_tab[0].id, &all[0].id, &doc[0].id).await;
    }

    // Closes: an eviction reaches the stream with its reason; a logout
    // removes every record of the user and closes the user's streams.

    store
        .evict("alice", vec!["a2".into()], "max_connections_per_user")
        .await
        .unwrap();
    node.received(|i| {
        matches!(i, Inbound::Close { ids, reason: Some(r) } if ids == &["a2"] && r == "max_connections_per_user")
    })
    .await;
    node.live
        .lock()
        .unwrap()
        .retain(|c| c.connection_id != "a2");
    let removed = store.disconnect_user("bob").await.unwrap();
    let mut ids = removed.connection_ids.clone();
    ids.sort();
    assert_eq!(ids, ["b1", "b2"]);
    let left = |i: &Inbound| {
        matches!(i, Inbound::Presence { topic, except, event: "leave", .. }
            if topic == "doc:1" && except == "b1")
    };
    let got = node
        .received(|i| matches!(i, Inbound::CloseUser { username } if username == "bob"))
        .await;
    if !got.iter().any(left) {
        node.received(left).await;
    }
    node.live.lock().unwrap().retain(|c| c.username != "bob");
    assert_eq!(store.totals().await.unwrap(), (1, 1));
    // No topic is left without a follower; a1's memberships are intact.
    assert_eq!(
        store.topic_names(None, 10).await.unwrap(),
        ["doc:1", "team:7"]
    );
    assert_eq!(
        store.topic_counts(&["doc:1".into()]).await.unwrap(),
        [count("doc:1", 1, 1)]
    );

    // A sweep, or a clear, counts the records of held streams as removed,
    // and they are written back (the Redis engine writes them back after
    // the removal, the embedded one keeps them).
    let written_back = || async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.list_user("alice").await.unwrap().len() != 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a1 not written back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let swept = store.sweep(unix_now() + 1.0).await.unwrap();
    assert_eq!(swept.connection_ids, ["a1"]);
    written_back().await;
    let cleared = store.clear().await.unwrap();
    assert_eq!((cleared.connection_count, cleared.user_count), (1, 1));
    written_back().await;
    // Written back with its topics.
    assert_eq!(store.topic("team:7").await.unwrap().users, ["alice"]);

    // A stream that ended is forgotten (the Redis engine retries until it
    // is).
    node.live.lock().unwrap().clear();
    store.remove("a1".into(), None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.totals().await.unwrap() != (0, 0) {
        assert!(tokio::time::Instant::now() < deadline, "a1 not removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        store.topic_total().await.unwrap(),
        0,
        "an empty topic was left"
    );
    assert!(store.topic_names(None, 10).await.unwrap().is_empty());
}

/// History (on): what a replay gives after each of the ids the sends of
/// [`contract`] were answered with.
async fn replays<S: History>(
    store: &S,
    kept: &crate::config::HistoryConfig,
    one_tab: &str,
    all: &str,
    doc: &str,
) {
    let doc_id: MsgId = doc.parse().unwrap();
    // History: from nothing, a gap and all that is kept for alice (her
    // one-tab message stays her live first tab's); after the first id, what
    // followed; after the last, nothing.
    let first: MsgId = one_tab.parse().unwrap();
    let last: MsgId = all.parse().unwrap();
    let ids = |r: &super::Replay| r.entries.iter().map(|k| k.id).collect::<Vec<_>>();
    let r = store
        .replay(&live("a2", "alice"), None, kept)
        .await
        .unwrap();
    assert!(r.gap);
    assert_eq!(ids(&r), [last]);
    let r = store
        .replay(&live("a2", "alice"), Some(first), kept)
        .await
        .unwrap();
    assert!(!r.gap);
    assert_eq!(ids(&r), [last]);
    // A follower of the topic gets its messages merged in id order; the
    // topic's id is known to it, not to a stream that does not follow it.
    let r = store
        .replay(&live("a1", "alice"), Some(first), kept)
        .await
        .unwrap();
    assert_eq!((r.gap, ids(&r)), (false, vec![last, doc_id]));
    let r = store
        .replay(&live("b1", "bob"), Some(last), kept)
        .await
        .unwrap();
    assert_eq!((r.gap, ids(&r)), (false, vec![doc_id]));
    let r = store
        .replay(&live("b2", "bob"), Some(doc_id), kept)
        .await
        .unwrap();
    assert!(
        r.gap,
        "b2 follows no topic: the topic's id is unknown to it"
    );
    let r = store
        .replay(&live("b1", "bob"), Some(doc_id), kept)
        .await
        .unwrap();
    assert_eq!((r.gap, r.entries.len()), (false, 0));
    let unknown = MsgId { ms: 1, seq: 0 };
    assert!(
        store
            .replay(&live("b1", "bob"), Some(unknown), kept)
            .await
            .unwrap()
            .gap
    );
}

#[tokio::test]
async fn the_embedded_engine_keeps_the_contract() {
    let config = config("");
    let node = Arc::new(Node::default());
    let store = MemoryStore::new(&config, node.clone());
    contract(&store, &node, &config).await;
}

#[tokio::test]
async fn the_redis_engine_keeps_the_contract() {
    let server = RedisServer::start();
    let config = config(&server.url());
    on_redis(config).await;
}

/// On a Redis Cluster (three primaries, three replicas), without history:
/// its replay checks take ids of one sequence, and a cluster's are pairs
/// (its history is checked through whole nodes, `tests/history.rs` and
/// `tests/cluster.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_cluster_engine_keeps_the_contract() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("cluster");
    let mut config = config(&cluster.cluster_url());
    config.history.enabled = false;
    on_redis(config).await;
}

async fn on_redis(config: Config) {
    let node = Arc::new(Node::default());
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let Backend(super::BackendInner::Redis(conn)) = Backend::connect(&config).await.expect("redis")
    else {
        panic!("a redis url gives the Redis engine");
    };
    let store = RedisStore::open(
        conn,
        Open {
            config: &config,
            link: node.clone(),
            metrics: Arc::new(Metrics::new()),
            shutdown: shutdown.clone(),
            tasks: &tasks,
        },
    )
    .await
    .expect("open");
    contract(&*store, &node, &config).await;
    store.shutdown().await;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
}
