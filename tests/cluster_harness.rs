//! What redis-rs's async cluster connection (redis 1.8, feature
//! `cluster-async`) does with sharded pub/sub and scripts on a real Redis
//! Cluster (tests/common/redis_cluster.rs: six `redis-server`, three
//! primaries with a replica each), and what it leaves to us.
//!
//! The tests that show a gap assert the crate's behaviour as it is: when
//! one fails after a redis-rs upgrade, the crate has changed there, and
//! the workaround of ours it names may be able to go.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, wait_until, RedisCluster};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{AsyncCommands, PushKind, Value};

/// A push the cluster connection handed to its push sender.
#[derive(Debug, Clone, PartialEq)]
struct Push {
    kind: PushKind,
    channel: String,
    payload: String,
}

/// Every push received so far, in order.
#[derive(Clone, Default)]
struct Pushes(Arc<Mutex<Vec<Push>>>);

impl Pushes {
    fn all(&self) -> Vec<Push> {
        self.0.lock().expect("pushes").clone()
    }

    fn has(&self, kind: &PushKind, channel: &str, payload: &str) -> bool {
        self.all()
            .iter()
            .any(|p| &p.kind == kind && p.channel == channel && p.payload == payload)
    }

    fn count(&self, kind: &PushKind, channel: &str) -> usize {
        self.all()
            .iter()
            .filter(|p| &p.kind == kind && p.channel == channel)
            .count()
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        Some(Value::Int(i)) => i.to_string(),
        _ => String::new(),
    }
}

/// A RESP3 cluster connection from the cluster's seed URLs, with its pushes
/// collected.
async fn subscriber(cluster: &RedisCluster) -> (ClusterConnection, Pushes) {
    let pushes = Pushes::default();
    let sink = pushes.clone();
    let client = ClusterClientBuilder::new(cluster.seeds())
        .use_protocol(redis::ProtocolVersion::RESP3)
        .response_timeout(Duration::from_secs(5))
        .push_sender(move |info: redis::PushInfo| {
            let push = Push {
                channel: text(info.data.first()),
                payload: text(info.data.get(1)),
                kind: info.kind,
            };
            sink.0.lock().map(|mut v| v.push(push)).map_err(|_| ())
        })
        .build()
        .expect("cluster client");
    let conn = client
        .get_async_connection()
        .await
        .expect("cluster connection");
    (conn, pushes)
}

/// SPUBLISH on the primary serving `channel`; how many subscribers got it.
fn spublish(cluster: &RedisCluster, channel: &str, payload: &str) -> u64 {
    let owner = cluster.owner(RedisCluster::slot_of(channel));
    cluster
        .node(owner)
        .query(redis::cmd("SPUBLISH").arg(channel).arg(payload))
        .expect("SPUBLISH")
}

/// Subscribers of `channel` on the node on `port` (`PUBSUB SHARDNUMSUB`).
fn shard_subscribers(cluster: &RedisCluster, port: u16, channel: &str) -> u64 {
    let v: Vec<(String, u64)> = cluster
        .node(port)
        .query(redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(channel))
        .expect("PUBSUB SHARDNUMSUB");
    v.first().map(|(_, n)| *n).unwrap_or(0)
}

/// Publishes until `channel`'s message reaches the subscriber (a
/// subscription is live once a message gets through).
async fn wait_delivered(cluster: &RedisCluster, pushes: &Pushes, channel: &str, what: &str) {
    let mut n = 0;
    wait_until(Duration::from_secs(10), what, || {
        n += 1;
        let payload = format!("probe-{n}");
        let sent = spublish(cluster, channel, &payload) > 0;
        let pushes = pushes.clone();
        let channel = channel.to_string();
        async move {
            sent && eventually(Duration::from_millis(500), || {
                let got = pushes.has(&PushKind::SMessage, &channel, &payload);
                async move { got }
            })
            .await
        }
    })
    .await;
}

fn crossslot_errors(cluster: &RedisCluster, port: u16) -> u64 {
    cluster
        .node(port)
        .error_counts()
        .get("CROSSSLOT")
        .copied()
        .unwrap_or(0)
}

/// Closes the connections of the node on `port` that hold subscriptions
/// (a network blip, without a failover).
fn kill_pubsub_clients(cluster: &RedisCluster, port: u16) -> u64 {
    cluster
        .node(port)
        .query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"))
        .expect("CLIENT KILL TYPE pubsub")
}

#[test]
fn the_harness_builds_a_cluster_that_serves_every_slot() {
    let cluster = RedisCluster::start();
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "three primaries");
    let slots: usize = primaries.iter().map(|p| cluster.slots_of(*p).len()).sum();
    assert_eq!(slots, usize::from(common::CLUSTER_SLOTS));
    for p in &primaries {
        assert_eq!(cluster.replicas_of(*p).len(), 1, "one replica of {p}");
    }
    // The harness hashes names as the cluster does.
    for key in ["sse:bus:node-1", "{p7}:user:alice", "a{}b", "x{y}z{w}", "é"] {
        let theirs: u16 = cluster
            .node(primaries[0])
            .query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .expect("CLUSTER KEYSLOT");
        assert_eq!(RedisCluster::slot_of(key), theirs, "slot of {key}");
    }
    // Counters a measurement reads.
    let calls = cluster.command_calls();
    assert_eq!(calls.len(), 3);
    assert!(calls
        .values()
        .all(|c| c.get("cluster|info").copied().unwrap_or(0) > 0));
    assert!(cluster.cpu_secs().values().all(|s| *s > 0.0));
}

/// `redis-cli --cluster reshard` moves slots with their keys, and the
/// crate follows the `MOVED` answers for commands on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_moves_slots_and_commands_follow_moved() {
    let cluster = RedisCluster::start();
    let primaries = cluster.primaries();
    let (p, q) = (primaries[0], primaries[1]);
    let (mut conn, _) = subscriber(&cluster).await;
    // Keys in the first slots of p, which the tool moves first.
    let first: Vec<u16> = cluster.slots_of(p).into_iter().take(10).collect();
    let keys: Vec<String> = (0..100_000)
        .map(|i| format!("k{i}"))
        .filter(|k| first.contains(&RedisCluster::slot_of(k)))
        .take(20)
        .collect();
    for k in &keys {
        let _: () = conn.set(k, k).await.expect("SET before the reshard");
    }
    let (p_before, q_before) = (cluster.slots_of(p).len(), cluster.slots_of(q).len());

    cluster.reshard(p, q, 10);

    assert_eq!(cluster.slots_of(p).len(), p_before - 10);
    assert_eq!(cluster.slots_of(q).len(), q_before + 10);
    for k in &keys {
        assert_eq!(
            cluster.owner(RedisCluster::slot_of(k)),
            q,
            "{k} moved to {q}"
        );
        let v: Option<String> = conn.get(k).await.expect("GET after the reshard");
        assert_eq!(v.as_deref(), Some(k.as_str()), "{k} after the reshard");
    }
}

/// After a node's connection drops and comes back, the crate resubscribes
/// all the shard channels it holds on that node in one `SSUBSCRIBE`
/// (src/cluster_handling/async_connection/mod.rs `resubscribe_node`, built
/// by src/subscription_tracker.rs `get_subscription_pipeline_for_owner`).
/// Channels in two slots make Redis refuse it with CROSSSLOT; the request is
/// internal, so the error goes nowhere: no log, no push, the caller's
/// subscriptions are silently gone. Ours: one `SSUBSCRIBE` per slot, and
/// check after a reconnect. A channel alone on its node comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_resubscribes_a_node_in_one_ssubscribe_that_redis_refuses() {
    let cluster = RedisCluster::start();
    let primaries = cluster.primaries();
    let (p, q) = (primaries[0], primaries[1]);
    let two = cluster.names_on(p, "sse:bus:", 2);
    let alone = cluster.names_on(q, "sse:alone:", 1).remove(0);
    let (mut conn, pushes) = subscriber(&cluster).await;
    for ch in two.iter().chain([&alone]) {
        conn.ssubscribe(ch).await.expect("SSUBSCRIBE one channel");
        wait_delivered(&cluster, &pushes, ch, &format!("a message on {ch}")).await;
    }
    let refused_before = crossslot_errors(&cluster, p);

    assert!(kill_pubsub_clients(&cluster, p) >= 1);
    assert!(kill_pubsub_clients(&cluster, q) >= 1);

    wait_delivered(&cluster, &pushes, &alone, "the lone channel resubscribed").await;
    wait_until(
        Duration::from_secs(10),
        "a CROSSSLOT refusal on the node of the two channels",
        || {
            let n = crossslot_errors(&cluster, p);
            async move { n > refused_before }
        },
    )
    .await;
    for ch in &two {
        assert_eq!(shard_subscribers(&cluster, p, ch), 0, "{ch} resubscribed");
        assert_eq!(spublish(&cluster, ch, "lost"), 0, "{ch} has a subscriber");
    }
    // Nothing told the caller: no error, no push but the disconnection.
    let kinds: Vec<PushKind> = pushes
        .all()
        .into_iter()
        .filter(|p| two.contains(&p.channel) || p.kind == PushKind::Disconnection)
        .map(|p| p.kind)
        .filter(|k| *k != PushKind::SMessage && *k != PushKind::SSubscribe)
        .collect();
    assert!(
        kinds.iter().all(|k| *k == PushKind::Disconnection),
        "pushes about the lost channels: {kinds:?}"
    );
    // And the connection carries on as if nothing happened.
    let _: () = conn
        .set("after", "1")
        .await
        .expect("SET after the reconnect");
}

/// A slot move makes Redis drop the slot's shard subscriptions with an
/// unprompted `sunsubscribe` push. The crate forwards it to the push sender
/// only, and its subscription tracker applies it (src/aio/
/// multiplexed_connection.rs `send_result`: `has_reply()` push kinds go to
/// the push sender, then `SubscriptionTracker::apply`), so the channel is
/// forgotten: the re-read of the topology that a `MOVED` starts
/// (`refresh_slots` -> `resubscribe_all`) resubscribes every other channel
/// and not this one. Ours: treat an unrequested `sunsubscribe` as "resubscribe
/// where the slot now lives".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_move_unsubscribes_on_the_push_channel_and_the_crate_forgets_the_channel() {
    let cluster = RedisCluster::start();
    let primaries = cluster.primaries();
    let (p, q) = (primaries[0], primaries[1]);
    let moving = cluster.names_on(p, "sse:move:", 1).remove(0);
    let staying = cluster.names_on(q, "sse:stay:", 1).remove(0);
    let (mut conn, pushes) = subscriber(&cluster).await;
    for ch in [&moving, &staying] {
        conn.ssubscribe(ch).await.expect("SSUBSCRIBE");
        wait_delivered(&cluster, &pushes, ch, &format!("a message on {ch}")).await;
    }

    cluster.move_slot(RedisCluster::slot_of(&moving), q);

    wait_until(
        Duration::from_secs(10),
        format!("an sunsubscribe push for {moving}"),
        || {
            let got = pushes.count(&PushKind::SUnsubscribe, &moving) == 1;
            async move { got }
        },
    )
    .await;
    assert_eq!(shard_subscribers(&cluster, q, &moving), 0);

    // A command on the moved slot meets MOVED; the crate re-reads the
    // topology and resubscribes what it still tracks.
    let resubscribed = pushes.count(&PushKind::SSubscribe, &staying);
    let _: () = conn
        .set(format!("{{{moving}}}:key"), "1")
        .await
        .expect("SET on the moved slot");
    wait_until(
        Duration::from_secs(10),
        format!("{staying} resubscribed after the MOVED"),
        || {
            let n = pushes.count(&PushKind::SSubscribe, &staying);
            async move { n > resubscribed }
        },
    )
    .await;
    assert_eq!(
        pushes.count(&PushKind::SSubscribe, &moving),
        1,
        "{moving} resubscribed"
    );
    assert_eq!(shard_subscribers(&cluster, q, &moving), 0);
    assert_eq!(
        spublish(&cluster, &moving, "lost"),
        0,
        "{moving} has a subscriber"
    );
    wait_delivered(
        &cluster,
        &pushes,
        &staying,
        "a message on the staying channel",
    )
    .await;
}

/// The unprompted `sunsubscribe` of a slot move is a push kind that
/// `has_reply()` (src/types.rs `PushKind::has_reply`), so the node's
/// multiplexed connection also hands it to the oldest command in flight as
/// its reply (src/aio/multiplexed_connection.rs `send_result`: the push is
/// cloned to the push sender, then `in_flight.pop_front()` gets it), and
/// every later reply on that connection is one command late. A cluster
/// connection shares one connection per node between commands and
/// subscriptions. Ours: subscriptions on a connection of their own, never
/// one that runs commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprompted_sunsubscribe_answers_the_command_in_flight() {
    let cluster = RedisCluster::start();
    let primaries = cluster.primaries();
    let (p, q) = (primaries[0], primaries[1]);
    let moving = cluster.names_on(p, "sse:move:", 1).remove(0);
    let mut on_p = cluster.names_on(p, "key:", 2);
    let (list, string) = (on_p.remove(0), on_p.remove(0));
    let (mut conn, pushes) = subscriber(&cluster).await;
    conn.ssubscribe(&moving).await.expect("SSUBSCRIBE");
    wait_delivered(&cluster, &pushes, &moving, "a message on the channel").await;
    let _: () = conn.set(&string, "value").await.expect("SET");

    let mut blocking = conn.clone();
    let list2 = list.clone();
    let blpop = tokio::spawn(async move {
        redis::cmd("BLPOP")
            .arg(&list2)
            .arg(2)
            .query_async::<Value>(&mut blocking)
            .await
    });
    wait_until(
        Duration::from_secs(5),
        "the BLPOP blocked on its node",
        || {
            let blocked = cluster
                .node(p)
                .info("clients")
                .get("blocked_clients")
                .cloned();
            async move { blocked.as_deref() == Some("1") }
        },
    )
    .await;
    cluster.move_slot(RedisCluster::slot_of(&moving), q);

    let got = blpop.await.expect("BLPOP task").expect("BLPOP");
    assert!(
        matches!(
            &got,
            Value::Push {
                kind: PushKind::SUnsubscribe,
                ..
            }
        ),
        "BLPOP answered {got:?}"
    );
    // BLPOP's own answer (nil, at its timeout) goes to the next command.
    let next: Option<String> = conn.get(&string).await.expect("GET");
    assert_eq!(next, None, "GET {string} got its own answer");
}

/// After a failover the crate keeps trying to reconnect to the dead
/// primary's address (src/cluster_handling/async_connection/mod.rs
/// `reconnect_loop`, started by the `Disconnection` push) and never re-reads
/// the topology by itself: only a request that fails in a way that asks for
/// it (`MOVED`, no connection for the slot: `PollFlushAction::RebuildSlots`
/// in request.rs `choose_response`) starts `refresh_slots`; there is no
/// timer. A read of the slot does not: it falls back to the shard's replica,
/// which is now the primary and answers. So the subscription stays lost
/// until some command meets `MOVED`. Ours: re-read the topology on a timer
/// (and after a `Disconnection` push) and resubscribe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_is_followed_only_after_a_command_meets_moved() {
    let mut cluster = RedisCluster::start();
    let primaries = cluster.primaries();
    let (p, q) = (primaries[0], primaries[1]);
    let ch = cluster.names_on(p, "sse:fo:", 1).remove(0);
    let key = format!("{{{ch}}}:key");
    let (mut conn, pushes) = subscriber(&cluster).await;
    conn.ssubscribe(&ch).await.expect("SSUBSCRIBE");
    wait_delivered(&cluster, &pushes, &ch, "a message before the failover").await;

    let promoted = cluster.kill_primary(p);

    // The client's CLUSTER SLOTS calls, on every node still up (the
    // harness sends none until the end of the test).
    let slot_reads = |c: &RedisCluster| -> u64 {
        c.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.command_calls().get("cluster|slots").copied().unwrap_or(0))
            .sum()
    };
    let reads = slot_reads(&cluster);
    let v: Option<String> = conn.get(&key).await.expect("GET on the failed-over slot");
    assert_eq!(v, None);
    // What is checked is an absence: no timer of the crate re-reads the
    // topology within three node timeouts of a served read.
    let refreshed = eventually(Duration::from_secs(3), || {
        let n = slot_reads(&cluster) + shard_subscribers(&cluster, promoted, &ch);
        async move { n != reads }
    })
    .await;
    assert!(!refreshed, "the crate re-read the topology by itself");
    assert_eq!(spublish(&cluster, &ch, "lost"), 0, "{ch} has a subscriber");

    // A SET sent to a primary that does not serve the slot meets MOVED.
    let _: Value = conn
        .route_command(
            redis::cmd("SET").arg(&key).arg("1").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: "127.0.0.1".into(),
                port: q,
            }),
        )
        .await
        .expect("SET after MOVED");
    wait_delivered(&cluster, &pushes, &ch, "a message after the MOVED").await;
    assert!(slot_reads(&cluster) > reads);

    // The old primary comes back as the new one's replica.
    cluster.restart(p);
    assert_eq!(cluster.replicas_of(promoted), vec![p]);
}

/// A seed list is a list of `redis://` URLs (`ClusterClient::new`); there
/// is no `redis+cluster://` scheme (src/connection.rs `parse_redis_url`
/// knows redis, rediss, valkey, valkeys and the unix ones). `rediss://`
/// needs a TLS feature of the crate (`tls-rustls` or `tls-native-tls`),
/// which sse-notify does not build. The password and username come from
/// the first seed and must be the same in every seed, or be given once with
/// `ClusterClientBuilder::password` (src/cluster_handling/client.rs
/// `build`); nodes found through `CLUSTER SLOTS` get the same. Ours: parse
/// `redis+cluster://[user:password@]h1:p1,h2:p2/` into that list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_are_redis_urls_with_one_password() {
    let refused = |seeds: Vec<&str>| match redis::cluster::ClusterClient::new(seeds) {
        Ok(_) => String::from("accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        refused(vec!["redis+cluster://127.0.0.1:7000,127.0.0.1:7001/"]).contains("did not parse")
    );
    assert!(refused(vec!["rediss://127.0.0.1:7000/"]).contains("TLS, the feature is not enabled"));
    assert!(refused(vec![
        "redis://:a@127.0.0.1:7000/",
        "redis://:b@127.0.0.1:7001/"
    ])
    .contains("different password"));
    assert_eq!(
        refused(vec!["redis://127.0.0.1:7000/", "redis://127.0.0.1:7001/"]),
        "accepted"
    );

    let cluster = RedisCluster::start_with_password("s3cret");
    let seeds = cluster.seeds();
    let first = seeds[0].clone();
    // One seed is enough; every node found from it gets its password.
    let client = redis::cluster::ClusterClient::new(vec![first]).expect("client");
    let mut conn = client.get_async_connection().await.expect("connection");
    for p in cluster.primaries() {
        let key = cluster.names_on(p, "pw:", 1).remove(0);
        let _: () = conn.set(&key, "1").await.expect("SET on each primary");
    }
    let bare: Vec<String> = seeds.iter().map(|s| s.replace(":s3cret@", "")).collect();
    let client = ClusterClientBuilder::new(bare)
        .password("s3cret")
        .build()
        .expect("client");
    let mut conn = client.get_async_connection().await.expect("connection");
    let _: () = conn
        .set("pw:builder", "1")
        .await
        .expect("SET with the builder's password");
}

/// `Script` sends `EVALSHA`, routed by its first key (src/cluster_handling/
/// routing.rs `RouteBy::ThirdArgAfterKeyCount`); with no key it goes to a
/// random node, replicas included (`get_random_connection` in
/// async_connection/mod.rs). On `NOSCRIPT` it sends `SCRIPT LOAD`, which the
/// cluster connection sends to every node, and retries (src/script.rs
/// `invoke_async`). Ours: every script with its keys in KEYS, all in one
/// slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_go_to_their_first_key_and_keyless_ones_anywhere() {
    let cluster = RedisCluster::start();
    let primaries = cluster.primaries();
    let p = primaries[0];
    let key = cluster.names_on(p, "sse:script:", 1).remove(0);
    let (mut conn, _) = subscriber(&cluster).await;
    let evalsha = |port: u16| {
        cluster
            .node(port)
            .command_calls()
            .get("evalsha")
            .copied()
            .unwrap_or(0)
    };
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();

    let keyed = redis::Script::new("return redis.call('INCR', KEYS[1])");
    for _ in 0..20 {
        let _: i64 = keyed
            .key(&key)
            .invoke_async(&mut conn)
            .await
            .expect("keyed script");
    }
    let calls: Vec<(u16, u64)> = ports.iter().map(|p| (*p, evalsha(*p))).collect();
    assert!(evalsha(p) >= 20, "EVALSHA calls: {calls:?}");
    assert!(
        calls.iter().all(|(port, n)| *port == p || *n == 0),
        "EVALSHA calls away from {p}: {calls:?}"
    );
    for port in &ports {
        let loads = cluster
            .node(*port)
            .command_calls()
            .get("script|load")
            .copied();
        assert_eq!(loads, Some(1), "SCRIPT LOAD on {port}");
    }

    let keyless = redis::Script::new("return 1");
    let before: Vec<u64> = ports.iter().map(|p| evalsha(*p)).collect();
    for _ in 0..60 {
        let _: i64 = keyless
            .invoke_async(&mut conn)
            .await
            .expect("keyless script");
    }
    let hit: Vec<u16> = ports
        .iter()
        .zip(&before)
        .filter(|(p, b)| evalsha(**p) > **b)
        .map(|(p, _)| *p)
        .collect();
    assert!(hit.len() > 1, "a keyless script went to {hit:?} only");
    assert!(
        hit.iter().any(|p| !primaries.contains(p)),
        "a keyless script never went to a replica: {hit:?}"
    );
}
