//! The Redis engine on a Redis Cluster of the test's own (three primaries,
//! three replicas; README "Past one Redis primary"): what only a cluster
//! can show. Each node receives only its users' messages and the
//! broadcasts, whichever primary holds the users; the registry spreads
//! over every primary; the command line works on it; moving slots
//! (`redis-cli --cluster reshard`) and killing a primary while messages
//! are sent lose no live stream and no message answered 200. The rest of
//! the contract runs on the cluster through `on_every_engine!` in the
//! other test files.
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use common::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);
const RECEIVED: &str = "sse_notify_bus_messages_received_total";
const UNMATCHED: &str = "sse_notify_bus_messages_unmatched_total";

fn config(cluster: &RedisCluster) -> sse_notify::config::Config {
    let mut c = test_config(&cluster.cluster_url());
    c.history.enabled = false;
    c.startup.clear = false;
    c.auth.public_topics = vec!["*".into()];
    c
}

/// A fresh local cluster (3 primaries, 3 replicas) of the test's own.
async fn new_cluster() -> RedisCluster {
    tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("the cluster harness")
}

/// Sends `data` to `user` through `node` until it is answered 200 (a
/// primary failing over answers 503 meanwhile).
async fn until_sent(node: &TestNode, user: &str, data: u64, within: Duration) {
    wait_until(within, format!("a send to {user} answered 200"), || {
        let admin = node.admin_base();
        let user = user.to_string();
        async move { send(&admin, json!({"to": user, "data": data})).await.0 == 200 }
    })
    .await;
}

async fn metrics_of(node: &TestNode) -> (f64, f64) {
    let text = metrics_text(&node.admin_base()).await;
    let get = |name| metric_value(&text, name).unwrap_or_else(|| panic!("no {name}"));
    (get(RECEIVED), get(UNMATCHED))
}

/// Waits until every partition holds the write-back report of `nodes`
/// nodes, then marks each partition's registry as whole: a fresh cluster
/// has no registry marker, so the first message of each partition would
/// open the write-back window and go to every node (as after a data loss,
/// which the single-Redis tests cover); exact counts of who received what
/// are for a registry known whole.
async fn whole_registry(cluster: &RedisCluster, nodes: usize) {
    wait_until(
        WAIT,
        format!("{nodes} nodes reported their write-back in every partition"),
        || async {
            let mut full = 0;
            for p in cluster.primaries() {
                let keys: Vec<String> = cluster
                    .node(p)
                    .query(redis::cmd("KEYS").arg("*:synced"))
                    .unwrap_or_default();
                for k in keys {
                    let n: usize = cluster
                        .node(p)
                        .query(redis::cmd("HLEN").arg(&k))
                        .unwrap_or(0);
                    full += usize::from(n >= nodes);
                }
            }
            full == 64
        },
    )
    .await;
    for p in cluster.primaries() {
        let keys: Vec<String> = cluster
            .node(p)
            .query(redis::cmd("KEYS").arg("*:synced"))
            .expect("KEYS");
        for k in keys {
            let since = k.replace(":synced", ":registry_since");
            cluster
                .node(p)
                .query::<()>(redis::cmd("SET").arg(since).arg("1"))
                .expect("SET");
        }
    }
}

/// Users whose records land on each primary (`count` per primary), with
/// a stream each on `node` (kept open with the returned clients): the
/// engine keeps a user's keys in one partition, whose hash tag is in the
/// keys it writes; read back from the cluster itself.
async fn users_per_primary(
    cluster: &RedisCluster,
    node: &TestNode,
    count: usize,
) -> (BTreeMap<u16, Vec<String>>, Vec<SseClient>) {
    let mut out: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    let mut streams = Vec::new();
    for i in 0.. {
        if out.len() == 3 && out.values().all(|v| v.len() >= count) {
            break;
        }
        assert!(
            i < 2000,
            "users never spread over the three primaries: {out:?}"
        );
        let user = format!("u{i}");
        let (tab, _) = SseClient::connect(node, &user).await;
        let primary = primary_of_user(cluster, &user);
        let list = out.entry(primary).or_default();
        if list.len() < count {
            list.push(user);
        }
        streams.push(tab);
    }
    (out, streams)
}

/// The hash tag of `user`'s partition, as its keys in the cluster show.
fn partition_of(cluster: &RedisCluster, user: &str) -> String {
    let primary = primary_of_user(cluster, user);
    let keys: Vec<String> = cluster
        .node(primary)
        .query(redis::cmd("KEYS").arg(format!("*:user:{user}")))
        .expect("KEYS");
    let key = keys.first().unwrap_or_else(|| panic!("no key of {user}"));
    key.split(['{', '}'])
        .nth(1)
        .expect("a hash tag")
        .to_string()
}

/// The primary holding `user`'s connection zset: the node whose `SCAN`
/// finds `*:user:{user}` (each primary holds only its own slots' keys).
fn primary_of_user(cluster: &RedisCluster, user: &str) -> u16 {
    let pattern = format!("*:user:{user}");
    let found: Vec<u16> = cluster
        .primaries()
        .into_iter()
        .filter(|p| {
            let keys: Vec<String> = cluster
                .node(*p)
                .query(redis::cmd("KEYS").arg(&pattern))
                .expect("KEYS");
            !keys.is_empty()
        })
        .collect();
    assert_eq!(found.len(), 1, "{user}'s zset on one primary: {found:?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_receives_only_its_users_messages_and_the_broadcasts() {
    let cluster = new_cluster().await;
    let a = TestNode::start(config(&cluster)).await;
    let b = TestNode::start(config(&cluster)).await;
    let c = TestNode::start(config(&cluster)).await;
    let (status, health) = admin(reqwest::Method::GET, &a.admin_url("/healthz"), None).await;
    assert_eq!(
        (status, &health["engine"]),
        (200, &json!("redis-cluster")),
        "{health}"
    );

    let (mut ann, _) = SseClient::connect(&a, "ann").await;
    let (mut bob, _) = SseClient::connect(&b, "bob").await;
    whole_registry(&cluster, 3).await;
    let before = [
        metrics_of(&a).await,
        metrics_of(&b).await,
        metrics_of(&c).await,
    ];
    for i in 0..10 {
        send_ok(&c.admin_base(), json!({"to": "ann", "data": i})).await;
    }
    for i in 0..5 {
        send_ok(&a.admin_base(), json!({"to": "bob", "data": i})).await;
    }
    let (status, resp) = send(&a.admin_base(), json!({"data": "end"})).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        resp["data"]["connections"], 2,
        "a broadcast counts every partition: {resp}"
    );
    for (tab, n, who) in [(&mut ann, 11, "ann"), (&mut bob, 6, "bob")] {
        let got = messages(tab, n, who).await;
        assert_eq!(
            got.last().map(String::as_str),
            Some("\"end\""),
            "{who}: the broadcast last"
        );
    }
    wait_until(WAIT, "c heard the broadcast", || async {
        metrics_of(&c).await.0 > before[2].0
    })
    .await;
    let delta = |i: usize, now: (f64, f64)| (now.0 - before[i].0, now.1 - before[i].1);
    assert_eq!(
        delta(0, metrics_of(&a).await),
        (11.0, 0.0),
        "a: ann's 10 and the broadcast, each taken by ann's tab"
    );
    assert_eq!(
        delta(1, metrics_of(&b).await),
        (6.0, 0.0),
        "b: bob's 5 and the broadcast"
    );
    assert_eq!(
        delta(2, metrics_of(&c).await),
        (1.0, 1.0),
        "c: only the broadcast, which no stream of c took"
    );
}

/// The data of the next `n` messages on `tab` (`who`'s), each waited for.
async fn messages(tab: &mut SseClient, n: usize, who: &str) -> Vec<String> {
    let mut got = Vec::with_capacity(n);
    for i in 0..n {
        let ev = tab
            .next_named("message", WAIT)
            .await
            .unwrap_or_else(|| panic!("{who}: message {i} of {n} never came"));
        got.push(ev.data);
    }
    got
}

/// A stream of `user` on `node` following `topics` (comma-separated).
async fn follow(node: &TestNode, user: &str, topics: &str) -> SseClient {
    let url = format!("{}?topics={topics}", node.stream_url());
    SseClient::connect_url(&url, user).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topics_messages_reach_only_the_nodes_of_its_followers() {
    let cluster = new_cluster().await;
    let a = TestNode::start(config(&cluster)).await;
    let b = TestNode::start(config(&cluster)).await;
    let c = TestNode::start(config(&cluster)).await;
    // Followers of doc:1 on a and b, of team:7 on b only; their users are
    // in whichever partitions their names hash to.
    let mut ann = follow(&a, "ann", "doc:1").await;
    let mut bob = follow(&b, "bob", "doc:1,team:7").await;
    let mut cid = follow(&b, "cid", "team:7").await;
    whole_registry(&cluster, 3).await;
    let before = [
        metrics_of(&a).await,
        metrics_of(&b).await,
        metrics_of(&c).await,
    ];
    for i in 0..5 {
        let (status, resp) = send(&c.admin_base(), json!({"topic": "doc:1", "data": i})).await;
        assert_eq!(
            (status, &resp["data"]["connections"]),
            (200, &json!(2)),
            "{resp}"
        );
    }
    for i in 0..3 {
        let (status, resp) = send(&c.admin_base(), json!({"topic": "team:7", "data": i})).await;
        assert_eq!(
            (status, &resp["data"]["connections"]),
            (200, &json!(2)),
            "{resp}"
        );
    }
    for (tab, n, who) in [
        (&mut ann, 5, "ann"),
        (&mut bob, 8, "bob"),
        (&mut cid, 3, "cid"),
    ] {
        messages(tab, n, who).await;
    }
    let delta = |i: usize, now: (f64, f64)| (now.0 - before[i].0, now.1 - before[i].1);
    // A node hears a topic's message once per partition whose users'
    // streams it holds among the followers: b holds bob's and cid's,
    // twice for team:7 when their partitions differ. c holds no follower
    // and hears none.
    let team_parts = if partition_of(&cluster, "bob") == partition_of(&cluster, "cid") {
        1.0
    } else {
        2.0
    };
    assert_eq!(delta(0, metrics_of(&a).await), (5.0, 0.0), "a: doc:1's 5");
    assert_eq!(
        delta(1, metrics_of(&b).await),
        (5.0 + 3.0 * team_parts, 0.0),
        "b: doc:1's 5, team:7's 3 from each partition of its followers"
    );
    assert_eq!(delta(2, metrics_of(&c).await), (0.0, 0.0), "c: none");
    // Nor did a stream get one twice.
    send_ok(&c.admin_base(), json!({"data": "end"})).await;
    for (tab, who) in [(&mut ann, "ann"), (&mut bob, "bob"), (&mut cid, "cid")] {
        let ev = tab.next_named("message", WAIT).await;
        assert_eq!(
            ev.map(|e| e.data),
            Some("\"end\"".to_string()),
            "{who}: nothing more before the end"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_spreads_over_every_primary() {
    let cluster = new_cluster().await;
    let node = TestNode::start(config(&cluster)).await;
    let (users, _streams) = users_per_primary(&cluster, &node, 2).await;
    assert_eq!(users.len(), 3, "users on all three primaries: {users:?}");
    let listed = listing(&node.admin_base()).await;
    for list in users.values() {
        for user in list {
            assert!(
                listed["connection_details"][user].is_array(),
                "{user} listed: {listed}"
            );
        }
    }
}

/// What the send loops got: per user, every message answered 200 (its
/// data, and when the answer came), and the messages of the sends
/// answered 503.
#[derive(Default)]
struct Sent {
    ok: HashMap<String, Vec<(u64, Instant)>>,
    refused: HashMap<String, Vec<String>>,
}

impl Sent {
    /// The data of `user`'s messages answered 200 (within `during`, if
    /// given).
    fn ok_of(&self, user: &str, during: Option<(Instant, Instant)>) -> Vec<u64> {
        self.ok
            .get(user)
            .into_iter()
            .flatten()
            .filter(|(_, at)| during.is_none_or(|(from, to)| *at >= from && *at <= to))
            .map(|(n, _)| *n)
            .collect()
    }
}

/// Sends messages to each of `users` until `stop`, one loop per user (a
/// user whose partition stalls does not hold up the others), retrying
/// nothing: a 503 is what the web app would retry.
async fn send_until(admin: String, users: Vec<String>, stop: Arc<AtomicBool>) -> Sent {
    let mut loops = tokio::task::JoinSet::new();
    for (k, user) in users.into_iter().enumerate() {
        let (admin, stop) = (admin.clone(), stop.clone());
        loops.spawn(async move {
            let (mut ok, mut refused) = (Vec::new(), Vec::new());
            // Data unique across users: 1_000_000 per user.
            let mut n = (k as u64 + 1) * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (status, body) = send(&admin, json!({"to": user, "data": n})).await;
                match status {
                    200 => ok.push((n, Instant::now())),
                    503 => refused.push(body["message"].as_str().unwrap_or_default().to_string()),
                    other => panic!("a send answered {other}: {body}"),
                }
            }
            (user, ok, refused)
        });
    }
    let mut sent = Sent::default();
    while let Some(done) = loops.join_next().await {
        let (user, ok, refused) = done.expect("a send loop");
        sent.ok.insert(user.clone(), ok);
        if !refused.is_empty() {
            sent.refused.insert(user, refused);
        }
    }
    sent
}

/// Reads `tab` until every one of `want` arrived; each once, in order.
async fn receive_all(tab: &mut SseClient, user: &str, want: &[u64]) {
    let want: HashSet<u64> = want.iter().copied().collect();
    let mut got: HashSet<u64> = HashSet::new();
    let mut last = 0;
    while !want.is_subset(&got) {
        let ev = tab.next_named("message", WAIT).await.unwrap_or_else(|| {
            let missing: Vec<&u64> = want.difference(&got).collect();
            panic!(
                "{user}: {} answered 200 never arrived: {missing:?}",
                missing.len()
            )
        });
        let n: u64 = ev.data.parse().expect("a number");
        assert!(got.insert(n), "{user}: message {n} arrived twice");
        // One send loop per user: its messages arrive in the order sent
        // (0 and 1 are the probes and the last, sent outside it).
        if n > 1 {
            assert!(n > last, "{user}: message {n} arrived after {last}");
            last = n;
        }
    }
}

/// What [`Sending::kill_a_primary`] did: the primary killed and the
/// replica promoted, the user of its partition, and when the kill began
/// and the promotion was seen.
struct Killed {
    victim: u16,
    victims_user: String,
    promoted: u16,
    killed: Instant,
    took_over: Instant,
}

/// Two nodes on `cluster`, a user on each primary with a stream on b (whose
/// subscriptions must follow the slots), and messages sent to them through
/// a until [`Sending::finish`].
struct Sending {
    a: TestNode,
    b: TestNode,
    /// b's node id.
    b_id: String,
    /// Per primary, its user.
    users: BTreeMap<u16, String>,
    tabs: Vec<(String, SseClient)>,
    _streams: Vec<SseClient>,
    stop: Arc<AtomicBool>,
    sender: tokio::task::JoinHandle<Sent>,
}

impl Sending {
    /// `history`: with `history.enabled`, and room for every message.
    async fn start(cluster: &RedisCluster, history: bool) -> Sending {
        let mut config = config(cluster);
        config.history.enabled = history;
        config.history.size = 1_000_000;
        let a = TestNode::start(config.clone()).await;
        config.server.node_id = format!("{}-b", config.server.node_id);
        let b_id = config.server.node_id.clone();
        let b = TestNode::start(config).await;
        let (per_primary, streams) = users_per_primary(cluster, &a, 1).await;
        let users: BTreeMap<u16, String> = per_primary
            .into_iter()
            .map(|(p, list)| (p, list[0].clone()))
            .collect();
        let mut tabs = Vec::new();
        for user in users.values() {
            tabs.push((user.clone(), SseClient::connect(&b, user).await.0));
        }
        let all: Vec<String> = users.values().cloned().collect();
        let stop = Arc::new(AtomicBool::new(false));
        let sender = tokio::spawn(send_until(a.admin_base(), all, stop.clone()));
        // Under way for every user before anything is done to the cluster.
        let before = 30.0 * users.len() as f64;
        wait_until(WAIT, format!("{before} messages sent through a"), || {
            let admin = a.admin_base();
            async move { metric(&admin, "sse_notify_messages_sent_total").await >= before }
        })
        .await;
        Sending {
            a,
            b,
            b_id,
            users,
            tabs,
            _streams: streams,
            stop,
            sender,
        }
    }

    /// Kills the primary of the first user's partition while the sends
    /// run, and waits until a send to that user succeeds again.
    async fn kill_a_primary(&self, cluster: &mut RedisCluster) -> Killed {
        let (victim, victims_user) = self
            .users
            .iter()
            .next()
            .map(|(p, u)| (*p, u.clone()))
            .expect("a user");
        // This worker blocks until the replica took over; the sender runs on.
        let killed = Instant::now();
        let promoted = tokio::task::block_in_place(|| cluster.kill_primary(victim));
        let took_over = Instant::now();
        until_sent(&self.a, &victims_user, 1, Duration::from_secs(30)).await;
        Killed {
            victim,
            victims_user,
            promoted,
            killed,
            took_over,
        }
    }

    /// Waits until b's `/healthz` says it hears every channel.
    async fn b_hears_every_channel(&self, when: &str) {
        wait_until(WAIT, format!("{when}: b hears every channel"), || {
            let url = self.b.admin_url("/healthz");
            async move {
                let (_, health) = admin(reqwest::Method::GET, &url, None).await;
                health["bus"] == "ok"
            }
        })
        .await;
    }

    /// Stops sending, then sends each user one more message (data 0).
    async fn stop(&mut self) -> Sent {
        self.stop.store(true, Ordering::Relaxed);
        let sent = (&mut self.sender).await.expect("sender");
        for user in self.users.values() {
            send_ok(&self.a.admin_base(), json!({"to": user, "data": 0})).await;
        }
        sent
    }

    /// After [`Sending::stop`]: every stream on b gets the last message
    /// and every one answered 200 but those `lost` allows (of one user),
    /// once each.
    async fn receive(&mut self, sent: &Sent, lost: Option<(&str, &HashSet<u64>)>) {
        for (user, tab) in &mut self.tabs {
            let mut want: Vec<u64> = sent
                .ok_of(user, None)
                .into_iter()
                .filter(|n| !matches!(lost, Some((who, set)) if who == user.as_str() && set.contains(n)))
                .collect();
            want.push(0);
            receive_all(tab, user, &want).await;
        }
    }

    /// [`Sending::stop`], then [`Sending::receive`] with `lost` the user's
    /// messages answered within a time window.
    async fn finish(mut self, lost: Option<(&str, Instant, Instant)>) -> (Sending, Sent) {
        let sent = self.stop().await;
        let may_lose = lost.map(|(who, from, to)| {
            let set: HashSet<u64> = sent.ok_of(who, Some((from, to))).into_iter().collect();
            (who, set)
        });
        self.receive(&sent, may_lose.as_ref().map(|(who, set)| (*who, set)))
            .await;
        (self, sent)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_slots_while_sending_loses_nothing() {
    moving_slots_while_sending(false).await;
}

/// With history on, no send is refused while b subscribes again: what
/// was published meanwhile comes from the history before anything newer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_slots_while_sending_with_history_loses_nothing() {
    moving_slots_while_sending(true).await;
}

async fn moving_slots_while_sending(history: bool) {
    let cluster = new_cluster().await;
    let cluster = Arc::new(cluster);
    let sending = Sending::start(&cluster, history).await;
    let primaries: Vec<u16> = sending.users.keys().copied().collect();
    let resubscribed = metric(&sending.b.admin_base(), "sse_notify_bus_resubscribes_total").await;
    // Half of the first primary's slots to the second, while sending.
    let moved = {
        let cluster = cluster.clone();
        let (from, to) = (primaries[0], primaries[1]);
        tokio::task::spawn_blocking(move || cluster.reshard(from, to, 2730))
    };
    moved.await.expect("reshard");
    // And after the move: every user still reachable, on b too.
    let (sending, _) = sending.finish(None).await;
    assert!(
        metric(&sending.b.admin_base(), "sse_notify_bus_resubscribes_total").await > resubscribed,
        "b never resubscribed a moved slot's channels"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_primary_while_sending_loses_no_stream_and_delays_only_its_users() {
    let mut cluster = new_cluster().await;
    let sending = Sending::start(&cluster, false).await;
    let Killed {
        victim,
        victims_user,
        promoted,
        killed,
        took_over,
    } = sending.kill_a_primary(&mut cluster).await;
    // b subscribes the promoted replica's channels on its own timer: until
    // then a sends the victim's user's messages to channels b does not
    // hear yet (b is not connected there: no refusal).
    sending.b_hears_every_channel("after the failover").await;
    let heard = Instant::now();
    // With history off nothing is kept to catch up from: what the killed
    // primary published just before it died, or what was published before
    // b heard the promoted replica, may not have reached b. Any other
    // message answered 200 arrives, once.
    let window = (killed - Duration::from_secs(1), heard.max(took_over));
    let (sending, sent) = sending
        .finish(Some((&victims_user, window.0, window.1)))
        .await;
    // The other primaries' users kept getting messages while the victim's
    // partitions failed over.
    for user in sending.users.values().filter(|u| **u != victims_user) {
        assert!(
            !sent.ok_of(user, Some((killed, took_over))).is_empty(),
            "{user} (not on the failed primary) got nothing sent during the failover: refused {:?}",
            sent.refused.get(user.as_str())
        );
    }
    let listed = listing(&sending.a.admin_base()).await;
    for user in sending.users.values() {
        assert!(
            listed["connection_details"][user].is_array(),
            "{user}'s stream still listed after {victim} failed over to {promoted}: {listed}"
        );
    }
}

/// With history on, what the promoted replica kept of the killed
/// primary's messages reaches the streams, once, through the
/// catch-up of the channels subscribed again; only what the primary took
/// and had not yet passed to its replica is lost (Redis replicates after
/// answering).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_primary_with_history_loses_only_what_its_replica_never_got() {
    let mut cluster = new_cluster().await;
    let mut sending = Sending::start(&cluster, true).await;
    let Killed {
        victims_user,
        promoted,
        ..
    } = sending.kill_a_primary(&mut cluster).await;
    let sent = sending.stop().await;
    // What the promoted replica holds of the victim's user's messages.
    let key: Vec<String> = cluster
        .node(promoted)
        .query(redis::cmd("KEYS").arg(format!("*:history:user:{victims_user}")))
        .expect("KEYS");
    assert_eq!(
        key.len(),
        1,
        "the victim's user's history on {promoted}: {key:?}"
    );
    let entries: Vec<(String, Vec<(String, String)>)> = cluster
        .node(promoted)
        .query(redis::cmd("XRANGE").arg(&key[0]).arg("-").arg("+"))
        .expect("XRANGE");
    let kept: HashSet<u64> = entries
        .iter()
        .filter_map(|(_, fields)| {
            fields
                .iter()
                .find(|(k, _)| k == "d")
                .and_then(|(_, d)| d.parse().ok())
        })
        .collect();
    let answered = sent.ok_of(&victims_user, None);
    let lost: HashSet<u64> = answered
        .iter()
        .copied()
        .filter(|n| !kept.contains(n))
        .collect();
    println!(
        "{victims_user}: {} answered 200, {} not on the promoted replica",
        answered.len(),
        lost.len()
    );
    assert!(
        lost.len() < answered.len() / 2,
        "most of the victim's user's messages lost: {} of {}",
        lost.len(),
        answered.len()
    );
    sending
        .receive(&sent, Some((victims_user.as_str(), &lost)))
        .await;
}

/// With history on, what is published while a node's subscription
/// connections are cut reaches its streams from the history once the node
/// is subscribed again, each once: the connections of b (named after it
/// in `CLIENT LIST`) on every primary are killed again and again while
/// a sends, and b has nothing to refuse (it sends nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_subscriptions_are_caught_up_from_the_history() {
    let cluster = new_cluster().await;
    let mut sending = Sending::start(&cluster, true).await;
    let b_name = format!("sse-notify:{}", sending.b_id);
    let resubscribed = metric(&sending.b.admin_base(), "sse_notify_bus_resubscribes_total").await;
    // b's subscription connection on primary p, by client id.
    let b_conns = |p: u16| -> Vec<String> {
        let list: String = cluster
            .node(p)
            .query(redis::cmd("CLIENT").arg("LIST"))
            .expect("CLIENT LIST");
        list.lines()
            .filter(|l| l.contains(&format!(" name={b_name} ")))
            .filter_map(|l| l.split_whitespace().find_map(|f| f.strip_prefix("id=")))
            .map(str::to_string)
            .collect()
    };
    for round in 0..8 {
        let mut cut = Vec::new();
        for p in cluster.primaries() {
            let ids = b_conns(p);
            assert!(!ids.is_empty(), "round {round}: no connection of b on {p}");
            for id in ids {
                let _: redis::RedisResult<()> = cluster
                    .node(p)
                    .query(redis::cmd("CLIENT").arg("KILL").arg("ID").arg(&id));
                cut.push((p, id));
            }
        }
        // Subscribed again: a new connection on every primary, and b hears
        // every channel.
        wait_until(
            WAIT,
            format!("round {round}: b connected again to every primary"),
            || {
                let again = cluster
                    .primaries()
                    .into_iter()
                    .all(|p| b_conns(p).iter().any(|id| !cut.contains(&(p, id.clone()))));
                async move { again }
            },
        )
        .await;
        sending
            .b_hears_every_channel(&format!("round {round}"))
            .await;
    }
    let sent = sending.stop().await;
    sending.receive(&sent, None).await;
    assert!(
        metric(&sending.b.admin_base(), "sse_notify_bus_resubscribes_total").await > resubscribed,
        "b never subscribed again"
    );
}

/// With history on, a primary that restarts empty (too soon for its
/// replica to take over) has lost what it kept: b's open streams are told
/// `history_gap` once its subscriptions there are back, as on one Redis,
/// and messages reach them again after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_restarted_empty_tells_the_open_streams_history_gap() {
    let mut cluster = new_cluster().await;
    let mut config = config(&cluster);
    config.history.enabled = true;
    // a writes a message to each primary's user first: their partitions'
    // registries exist when b starts and reads them.
    let a = TestNode::start(config.clone()).await;
    let (users, _streams) = users_per_primary(&cluster, &a, 1).await;
    for list in users.values() {
        send_ok(&a.admin_base(), json!({"to": list[0], "data": 1})).await;
    }
    config.server.node_id = format!("{}-b", config.server.node_id);
    let b = TestNode::start(config).await;
    let (primary, user) = users
        .iter()
        .next()
        .map(|(p, list)| (*p, list[0].clone()))
        .expect("a user");
    let (mut tab, _) = SseClient::connect(&b, &user).await;
    send_ok(&a.admin_base(), json!({"to": user, "data": 2})).await;
    let before = tab
        .next_named("message", WAIT)
        .await
        .expect("a message before");
    assert_eq!(before.data, "2");

    tokio::task::block_in_place(|| cluster.restart(primary));
    let gap = tab
        .next_event(Duration::from_secs(30))
        .await
        .expect("an event after the restart");
    assert_eq!(gap.event, "history_gap", "{gap:?}");
    let data: serde_json::Value = serde_json::from_str(&gap.data).expect("JSON");
    assert_eq!(
        data["last_event_id"],
        before.id.as_str(),
        "the gap names the last id written"
    );
    until_sent(&a, &user, 3, WAIT).await;
    let after = tab
        .next_named("message", WAIT)
        .await
        .expect("a message after the gap");
    assert_eq!(after.data, "3");
}
