//! The Redis layout of topics on a `redis-server` of the test's own: every
//! path that writes or removes records keeps the topic keys exact (the
//! harness's snapshot checks them against the records at each step), and
//! a topic's messages and join/leave events travel only to the nodes that
//! hold its followers; a node that was deaf meanwhile catches up on them.

use std::time::Duration;

use futures_util::StreamExt;

use super::bus;
use super::conn::SharedConn;
use super::history::{History, Targets};
use super::registry::Redis;
use crate::config::RedisTarget;
use crate::store::harness::redis_server::{RedisRegistry, RedisServer};
use crate::store::{unix_now, ConnectionRecord, Message, TopicCount};

const CHANNELS: [&str; 3] = ["sse:bus", "sse:bus:n1", "sse:bus:n2"];

/// Listens on the shared bus and the channels of nodes `n1` and `n2`
/// (which makes both nodes heard, as live nodes are).
struct Ears {
    messages: futures_util::stream::BoxStream<'static, redis::Msg>,
    server: redis::Client,
}

impl Ears {
    async fn new(url: &str) -> Ears {
        let server = redis::Client::open(url).expect("client");
        let mut pubsub = server.get_async_pubsub().await.expect("pubsub");
        pubsub.subscribe(&CHANNELS).await.expect("subscribe");
        Ears {
            messages: Box::pin(pubsub.into_on_message()),
            server,
        }
    }

    /// Everything published on the three channels since the last call,
    /// as (channel, event type, topic, connection id), in order: a marker
    /// published on each after the fact ends the wait (one connection
    /// gets its channels' messages in publish order).
    async fn heard(&mut self) -> Vec<(String, String, String, String)> {
        let mut c = self
            .server
            .get_multiplexed_async_connection()
            .await
            .expect("conn");
        for ch in CHANNELS {
            redis::cmd("PUBLISH")
                .arg(ch)
                .arg("end")
                .query_async::<()>(&mut c)
                .await
                .expect("publish");
        }
        let mut out = Vec::new();
        let mut ends = 0;
        while ends < CHANNELS.len() {
            let msg = tokio::time::timeout(Duration::from_secs(5), self.messages.next())
                .await
                .expect("the end markers never came back")
                .expect("subscription ended");
            let payload: String = msg.get_payload().expect("text");
            if payload == "end" {
                ends += 1;
                continue;
            }
            let events: Vec<serde_json::Value> = match serde_json::from_str(&payload) {
                Ok(serde_json::Value::Array(list)) => list,
                Ok(one) => vec![one],
                Err(e) => panic!("not JSON on the bus ({e}): {payload}"),
            };
            for e in events {
                let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                let kind = match text("type").as_str() {
                    "presence" => text("event"),
                    other => other.to_string(),
                };
                out.push((
                    msg.get_channel_name().to_string(),
                    kind,
                    text("topic"),
                    text("connection_id"),
                ));
            }
        }
        out
    }
}

fn heard(list: &[(&str, &str, &str, &str)]) -> Vec<(String, String, String, String)> {
    list.iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect()
}

fn record(id: &str, user: &str, node: &str, t: f64, topics: &[&str]) -> ConnectionRecord {
    ConnectionRecord {
        connection_id: id.into(),
        username: user.into(),
        connection_time: t,
        last_heartbeat: t,
        topics: topics.iter().map(|t| t.to_string()).collect(),
        node_id: node.into(),
    }
}

fn count(topic: &str, connection_count: usize, user_count: usize) -> TopicCount {
    TopicCount {
        topic: topic.into(),
        connection_count,
        user_count,
    }
}

fn topic_message(topic: &str) -> Message {
    Message {
        to: None,
        topic: Some(topic.into()),
        first_only: false,
        event: "note".into(),
        data: "1".into(),
    }
}

#[tokio::test]
async fn every_registry_path_keeps_the_topic_keys_exact_and_routes_by_node() {
    let server = RedisServer::start();
    let conn = SharedConn::connect(&RedisTarget::Direct(server.url()))
        .await
        .expect("redis");
    let registry = Redis::new(conn.clone(), super::Layout::single("sse"), true);
    // A registry Redis did not lose: no write-back window, so events go
    // to the nodes' own channels.
    server
        .query::<()>(redis::cmd("SET").arg("sse:registry_since").arg("1"))
        .unwrap();
    let mut ears = Ears::new(&server.url()).await;
    let snapshot = || RedisRegistry::read(&mut server.conn());
    let t = unix_now() - 60.0;
    let a1 = record("a1", "alice", "n1", t, &["doc:1", "team:7"]);
    let a2 = record("a2", "alice", "n2", t + 1.0, &["doc:1"]);
    let b1 = record("b1", "bob", "n1", t + 2.0, &["doc:1"]);
    let c1 = record("c1", "carol", "n1", t + 3.0, &[]);

    // New streams: memberships with the records, joins to the nodes that
    // hold each topic's followers once all are written.
    let counts = registry
        .register(&[a1.clone(), a2.clone(), b1.clone(), c1.clone()], &[])
        .await
        .unwrap();
    assert_eq!(counts, [1, 2, 1, 1]);
    let all = RedisRegistry::of(&[
        ("alice", "a1"),
        ("alice", "a2"),
        ("bob", "b1"),
        ("carol", "c1"),
    ])
    .following("a1", &["doc:1", "team:7"])
    .following("a2", &["doc:1"])
    .following("b1", &["doc:1"]);
    assert_eq!(snapshot(), all);
    let mut got = ears.heard().await;
    got.sort();
    assert_eq!(
        got,
        heard(&[
            ("sse:bus:n1", "join", "doc:1", "a1"),
            ("sse:bus:n1", "join", "doc:1", "a2"),
            ("sse:bus:n1", "join", "doc:1", "b1"),
            ("sse:bus:n1", "join", "team:7", "a1"),
            ("sse:bus:n2", "join", "doc:1", "a1"),
            ("sse:bus:n2", "join", "doc:1", "a2"),
            ("sse:bus:n2", "join", "doc:1", "b1"),
        ])
    );
    assert_eq!(
        registry
            .topic_counts(&["team:7".into(), "nobody".into(), "doc:1".into()])
            .await
            .unwrap(),
        [count("team:7", 1, 1), count("doc:1", 3, 2)]
    );

    // Written back as they are: nothing counted twice, nobody told.
    registry
        .register(&[], &[a1.clone(), a2.clone(), b1.clone(), c1.clone()])
        .await
        .unwrap();
    assert_eq!(snapshot(), all);
    assert_eq!(
        registry.topic_counts(&["doc:1".into()]).await.unwrap(),
        [count("doc:1", 3, 2)]
    );
    // Written back different (a1 follows only team:7 now): replaced whole.
    let a1_team = record("a1", "alice", "n1", t, &["team:7"]);
    registry.register(&[], &[a1_team]).await.unwrap();
    let moved = RedisRegistry::of(&[
        ("alice", "a1"),
        ("alice", "a2"),
        ("bob", "b1"),
        ("carol", "c1"),
    ])
    .following("a1", &["team:7"])
    .following("a2", &["doc:1"])
    .following("b1", &["doc:1"]);
    assert_eq!(snapshot(), moved);
    assert!(ears.heard().await.is_empty(), "a write-back told someone");

    // A stream that ends: its leave goes to the nodes still holding
    // followers (b1's), not to its own node, which holds none now.
    registry.remove(&["a2".into()]).await.unwrap();
    assert_eq!(
        ears.heard().await,
        heard(&[("sse:bus:n1", "leave", "doc:1", "a2")])
    );
    // A logout of the topic's last follower: its keys go, nobody to tell.
    registry.delete_user("bob").await.unwrap();
    assert_eq!(
        snapshot(),
        RedisRegistry::of(&[("alice", "a1"), ("carol", "c1")]).following("a1", &["team:7"])
    );
    assert!(ears.heard().await.is_empty());
    assert_eq!(registry.topic_names(None, 10).await.unwrap(), ["team:7"]);
    // A sweep of everything: no topic key is left.
    registry.sweep(unix_now() + 1.0, true).await.unwrap();
    assert_eq!(snapshot(), RedisRegistry::default());
    assert_eq!(server.keys("sse:topic*"), Vec::<String>::new());
    assert_eq!(registry.topic_total().await.unwrap(), 0);

    // A clear removes memberships too, and tells no one (the nodes write
    // their streams back at once).
    registry
        .register(&[a1.clone(), b1.clone()], &[])
        .await
        .unwrap();
    ears.heard().await;
    registry.clear(unix_now() + 1.0).await.unwrap();
    assert_eq!(snapshot(), RedisRegistry::default());
    assert_eq!(server.keys("sse:topic*"), Vec::<String>::new());
    assert!(ears.heard().await.is_empty(), "a clear told someone");

    // Sends: a topic message is counted from its followers and goes to
    // the nodes that hold them only, kept or not; one nobody follows goes
    // nowhere.
    registry
        .register(&[a1.clone(), b1.clone()], &[])
        .await
        .unwrap();
    ears.heard().await;
    let history = History::new(conn.clone(), super::Layout::single("sse"), "test".into());
    let kept = history
        .append(&[topic_message("doc:1"), topic_message("nobody")], 10, 60)
        .await
        .unwrap();
    assert_eq!(kept[0].1, Targets::Count(2));
    assert_eq!(kept[1].1, Targets::Count(0));
    let unkept = bus::publish_unkept(
        &registry,
        &bus::unkept_script(false),
        "test",
        &[topic_message("doc:1"), topic_message("nobody")],
        &["u1".into(), "u2".into()],
    )
    .await
    .unwrap();
    assert_eq!(unkept, [(Vec::new(), 2), (Vec::new(), 0)]);
    assert_eq!(
        ears.heard().await,
        heard(&[
            ("sse:bus:n1", "deliver", "doc:1", ""),
            ("sse:bus:n1", "deliver", "doc:1", ""),
        ])
    );
    // Kept in the topic's own stream.
    assert_eq!(
        server.keys("sse:history:topic:*"),
        ["sse:history:topic:doc:1", "sse:history:topic:nobody"]
    );
    // A node that does not hear its channel (gone, or not subscribed yet):
    // the topic's message goes to every node.
    registry
        .register(&[record("x1", "xavier", "gone", t, &["doc:1"])], &[])
        .await
        .unwrap();
    ears.heard().await;
    history
        .append(&[topic_message("doc:1")], 10, 60)
        .await
        .unwrap();
    assert_eq!(
        ears.heard().await,
        heard(&[("sse:bus", "deliver", "doc:1", "")])
    );
    // Streams that end leave the gone node's follower alone.
    registry.remove(&["a1".into(), "b1".into()]).await.unwrap();
    assert_eq!(
        snapshot(),
        RedisRegistry::of(&[("xavier", "x1")]).following("x1", &["doc:1"])
    );
}

/// A node as the store sees it: the streams it holds, what reached it.
#[derive(Default)]
struct Held {
    live: std::sync::Mutex<Vec<crate::store::LiveConn>>,
    received: std::sync::Mutex<Vec<crate::store::Inbound>>,
}

impl crate::store::NodeLink for Held {
    fn receive(&self, inbound: crate::store::Inbound) -> usize {
        self.received.lock().unwrap().push(inbound);
        1
    }
    fn live(&self) -> Vec<crate::store::LiveConn> {
        self.live.lock().unwrap().clone()
    }
    fn holds(&self, connection_id: &str) -> bool {
        self.live().iter().any(|c| c.connection_id == connection_id)
    }
    fn live_count(&self) -> usize {
        self.live.lock().unwrap().len()
    }
}

/// A node of its own on `url`, holding `held`'s streams.
async fn open_node(
    url: &str,
    node_id: &str,
    held: std::sync::Arc<Held>,
    shutdown: &tokio_util::sync::CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> std::sync::Arc<super::RedisStore> {
    let mut config = crate::config::Config::default();
    config.server.node_id = node_id.into();
    config.redis.url = crate::config::Secret(url.to_string());
    config.redis.connect_timeout_secs = 5;
    config.stream.heartbeat_secs = 1;
    config.history.enabled = true;
    let conn = SharedConn::connect(&RedisTarget::Direct(url.into()))
        .await
        .expect("redis");
    super::RedisStore::open(
        conn,
        crate::store::Open {
            config: &config,
            link: held,
            metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
            shutdown: shutdown.clone(),
            tasks,
        },
    )
    .await
    .expect("open")
}

/// A node deaf to the bus while a topic's message is sent (its channel
/// has no subscriber, so the message takes the shared bus, which it does
/// not hear either) gets it from the history once it hears again, for
/// the streams that follow the topic only.
#[tokio::test]
async fn a_topic_message_missed_while_deaf_reaches_its_followers_by_catch_up() {
    use crate::store::{Inbound, LiveConn, Target};
    let server = RedisServer::start();
    server
        .query::<()>(redis::cmd("SET").arg("sse:registry_since").arg("1"))
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let deaf = std::sync::Arc::new(Held::default());
    let store = open_node(&server.url(), "deaf", deaf.clone(), &shutdown, &tasks).await;
    let t = unix_now();
    for (id, topics) in [("a1", &["doc:1"][..]), ("c1", &[][..])] {
        let live = LiveConn {
            connection_id: id.into(),
            username: "ann".into(),
            connection_time: t,
            topics: topics.iter().map(|t| t.to_string()).collect(),
        };
        deaf.live.lock().unwrap().push(live);
        store
            .register(record(id, "ann", "deaf", t, topics))
            .await
            .unwrap();
    }
    // Its subscription, before the other node has one.
    let list: String = server.query(redis::cmd("CLIENT").arg("LIST")).unwrap();
    let subscriber: Vec<&str> = list
        .lines()
        .filter(|l| l.contains(" sub=2 "))
        .filter_map(|l| l.split_whitespace().next()?.strip_prefix("id="))
        .collect();
    assert_eq!(subscriber.len(), 1, "{list}");
    let talker = open_node(
        &server.url(),
        "talker",
        std::sync::Arc::default(),
        &shutdown,
        &tasks,
    )
    .await;
    // The deaf node cannot subscribe again until told: no new connection
    // is taken (the open ones stay).
    let mut admin = server.conn();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(1)
        .query::<()>(&mut admin)
        .unwrap();
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(subscriber[0])
        .query::<()>(&mut admin)
        .unwrap();
    let sent = talker
        .send(
            vec![topic_message("doc:1")],
            &crate::config::HistoryConfig {
                enabled: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(sent[0].connections, 1);
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(10_000)
        .query::<()>(&mut admin)
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let target = loop {
        let found = deaf.received.lock().unwrap().iter().find_map(|i| match i {
            Inbound::Deliver { id, target, .. } if *id == sent[0].id => Some(target.clone()),
            _ => None,
        });
        if let Some(target) = found {
            break target;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the catch-up never delivered the topic's message"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Live, it would name the topic; the catch-up names the streams that
    // follow it and were open when it was sent.
    assert_eq!(target, Target::Ids(vec!["a1".into()]), "its follower only");
    store.shutdown().await;
    talker.shutdown().await;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
}
