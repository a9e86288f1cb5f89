//! The listing in pages (`GET {base}/connections/?limit=N&cursor=C`) and
//! full clears racing new streams, on both engines: what an operator or
//! the admin console sees page by page, and what a clear leaves behind
//! while users keep connecting.
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

fn connections_url(node: &TestNode, query: &str) -> String {
    node.admin_url(&format!("/notifications/connections/{query}"))
}

/// Opens one stream per entry of `users` (a name twice: two tabs); the
/// streams and their connection ids.
async fn open_tabs(node: &TestNode, users: &[String]) -> (Vec<SseClient>, Vec<String>) {
    let mut tabs = Vec::new();
    let mut ids = Vec::new();
    for user in users {
        let (tab, id) = SseClient::connect(node, user).await;
        tabs.push(tab);
        ids.push(id);
    }
    (tabs, ids)
}

/// Every page of the listing at `limit` users, following `next_cursor`.
async fn all_pages(node: &TestNode, limit: usize) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, body) = admin(
            Method::GET,
            &connections_url(node, &format!("?limit={limit}&cursor={cursor}")),
            None,
        )
        .await;
        assert_eq!(status, 200, "page {} at limit {limit}: {body}", pages.len());
        let data = body["data"].clone();
        pages.push(data.clone());
        assert!(pages.len() < 1000, "next_cursor never became null: {data}");
        match &data["next_cursor"] {
            Value::Null => return pages,
            Value::String(next) => cursor = next.clone(),
            other => panic!("next_cursor is neither a string nor null: {other}"),
        }
    }
}

/// Listing details without the `last_heartbeat` of each record.
fn without_heartbeats(mut details: Value) -> Value {
    for list in details
        .as_object_mut()
        .into_iter()
        .flat_map(|d| d.values_mut())
    {
        for record in list.as_array_mut().into_iter().flatten() {
            if let Some(r) = record.as_object_mut() {
                r.remove("last_heartbeat");
            }
        }
    }
    details
}

on_every_engine! {
    async fn pages_list_every_user_once_in_name_order_with_registry_totals(env: Env) {
        let node = TestNode::start(env.config()).await;
        // Names whose byte order differs from their insertion order, a
        // non-ASCII one, and characters a query string must carry.
        let mut users: Vec<String> = (0..22).map(|i| format!("user{:02}", 21 - i)).collect();
        users.extend(["Zed", "émile 李", "a&b=c", "user03", "user07"].map(String::from));
        let (_tabs, ids) = open_tabs(&node, &users).await;
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        listed_ids_become(&node.admin_base(), &id_refs).await;

        let whole = listing(&node.admin_base()).await;
        let mut names = users.clone();
        names.sort();
        names.dedup();
        assert_eq!(whole["active_users"], json!(names), "the whole listing: {whole}");
        assert_eq!(whole["user_count"], json!(names.len()));
        assert_eq!(whole["total_connections"], json!(users.len()));
        assert!(whole.get("next_cursor").is_none(), "unpaged: no next_cursor: {whole}");

        for limit in [1, 5, names.len() - 1] {
            let pages = all_pages(&node, limit).await;
            assert_eq!(
                pages.len(),
                names.len().div_ceil(limit),
                "pages at limit {limit}"
            );
            let mut listed: Vec<String> = Vec::new();
            let mut details = BTreeMap::new();
            for page in &pages {
                let page_users: Vec<String> =
                    serde_json::from_value(page["active_users"].clone()).unwrap();
                assert!(page_users.len() <= limit, "limit {limit}: {page}");
                assert_eq!(page["user_count"], whole["user_count"], "registry-wide: {page}");
                assert_eq!(
                    page["total_connections"], whole["total_connections"],
                    "registry-wide: {page}"
                );
                let page_details = page["connection_details"].as_object().unwrap();
                assert_eq!(
                    page_details.keys().cloned().collect::<Vec<_>>(),
                    page_users,
                    "a page's details are its users': {page}"
                );
                for (user, list) in page_details {
                    details.insert(user.clone(), list.clone());
                }
                listed.extend(page_users);
            }
            assert_eq!(listed, names, "pages at limit {limit}, in order, each user once");
            // Heartbeats go on between the reads (and take longer to read
            // on a cluster, a round trip per partition): the records compare
            // without them.
            assert_eq!(
                without_heartbeats(json!(details)),
                without_heartbeats(whole["connection_details"].clone()),
                "pages at limit {limit} hold every user with all their connections"
            );
        }

        let (status, one) = admin(Method::GET, &connections_url(&node, "?limit=10000"), None).await;
        assert_eq!(status, 200, "{one}");
        assert_eq!(one["data"]["active_users"], whole["active_users"]);
        assert_eq!(one["data"]["next_cursor"], Value::Null, "{one}");
    }

    async fn a_bad_limit_or_cursor_is_a_400_naming_it(env: Env) {
        let node = TestNode::start(env.config()).await;
        let (_tabs, _) = open_tabs(&node, &["alice".to_string()]).await;
        for (query, field) in [
            ("?limit=0", "limit"),
            ("?limit=10001", "limit"),
            ("?limit=abc", "limit"),
            ("?limit=-1", "limit"),
            ("?limit=1.5", "limit"),
            ("?limit=", "limit"),
            ("?limit=5&cursor=zz", "cursor"),
            ("?limit=5&cursor=abc", "cursor"),
            // Hex, but not of UTF-8 text.
            ("?limit=5&cursor=ff", "cursor"),
            ("?cursor=alice", "cursor"),
        ] {
            let resp = http()
                .get(connections_url(&node, query))
                .send()
                .await
                .expect("listing request");
            let body = expect_envelope(resp, 400, query).await;
            let message = body["message"].as_str().unwrap_or_default();
            assert!(message.starts_with(field), "{query}: message {message:?} should name {field}");
        }
    }

    async fn clears_racing_new_streams_keep_every_live_stream_and_no_zombie(env: Env) {
        let node = TestNode::start(env.config()).await;
        let before: Vec<String> = (0..10).map(|i| format!("early{i}")).collect();
        let (mut tabs, mut ids) = open_tabs(&node, &before).await;
        // Zombies of a dead node: enough that the Redis engine's clear
        // takes many steps, so that streams open between them.
        let zombies = 3_000;
        if let Some(redis) = env.redis_server() {
            let mut pipe = redis::pipe();
            let t = now() - 100.0;
            for i in 0..zombies {
                let id = format!("zombie-{i}");
                let user = format!("ghost{}", i % 700);
                let ct = format!("{t:.6}");
                pipe.hset_multiple(
                    format!("sse:conn:{id}"),
                    &[
                        ("connection_id", id.as_str()),
                        ("username", user.as_str()),
                        ("connection_time", ct.as_str()),
                        ("last_heartbeat", ct.as_str()),
                        ("node_id", "dead-node"),
                    ],
                )
                .zadd(format!("sse:user:{user}"), &id, &ct)
                .sadd("sse:users", &user)
                .zadd("sse:heartbeats", &id, &ct)
                .ignore();
            }
            pipe.query::<()>(&mut redis.conn()).expect("inject zombies");
        }

        // Streams open one after another while three clears run.
        let racing: Vec<String> = (0..30).map(|i| format!("racer{i}")).collect();
        let base = node.admin_base();
        let clears = async {
            let mut answers = Vec::new();
            for _ in 0..3 {
                let (status, body) = admin(
                    Method::POST,
                    &format!("{base}/notifications/connections/"),
                    None,
                )
                .await;
                assert_eq!(status, 200, "clear: {body}");
                answers.push(body["data"].clone());
            }
            answers
        };
        let ((racing_tabs, racing_ids), answers) = tokio::join!(open_tabs(&node, &racing), clears);
        tabs.extend(racing_tabs);
        ids.extend(racing_ids);

        let first = &answers[0];
        let removed = first["connection_count"].as_u64().unwrap_or(0);
        let expect_at_least = if env.redis_server().is_some() { zombies } else { 0 };
        assert!(
            removed >= expect_at_least as u64,
            "the first clear removed the zombies: {first}"
        );
        assert!(
            first["user_count"].as_u64().unwrap_or(0) <= removed,
            "users among the removed records: {first}"
        );

        // Every live stream listed, every zombie gone.
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        listed_ids_become(&base, &id_refs).await;
        if let Some(redis) = env.redis_server() {
            let users: Vec<String> = before.iter().chain(&racing).cloned().collect();
            let live: Vec<(&str, &str)> = users
                .iter()
                .zip(&ids)
                .map(|(u, id)| (u.as_str(), id.as_str()))
                .collect();
            if let Err(got) = redis.registry_becomes(&RedisRegistry::of(&live)).await {
                panic!("the Redis registry is not exactly the live streams:\n{got:#?}");
            }
        }
        // ... and still delivered to.
        let sent = send_ok(&base, json!({"to": "racer29", "data": "after the clears"})).await;
        let got = tabs
            .last_mut()
            .expect("a racing tab")
            .next_named("message", Duration::from_secs(5))
            .await
            .expect("the last racing stream gets a message after the clears");
        assert_eq!(api_id(&got.id, &sent), sent);
    }
}
