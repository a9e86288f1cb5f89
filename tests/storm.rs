//! Reconnect storm: a node with many streams shuts down; its clients come
//! back to another node spread out by jittered `retry:` values, and the
//! other node's connect-rate cap turns the excess into 503 + Retry-After
//! instead of letting it through at once. Prints what it measured.
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;

const CLIENTS: usize = 300;
const RATE_B: u64 = 100;

/// Reads a stream to its end; returns the last `retry:` value it carried.
async fn last_retry(url: &str, user: &str) -> Option<u64> {
    let resp = reqwest::Client::new()
        .get(url)
        .header("X-Remote-User", user)
        .send()
        .await
        .ok()?;
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    while let Some(Ok(chunk)) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("retry: "))
        .filter_map(|v| v.trim().parse().ok())
        .next_back()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_a_restart_are_spread_and_capped() {
    let redis = RedisServer::start();
    let mut config_a = test_config(&redis.url());
    config_a.stream.retry_ms = 500;
    config_a.limits.max_connect_rate = 0;
    let mut a = TestNode::start(config_a).await;
    let mut config_b = test_config(&redis.url());
    config_b.startup.clear = false;
    config_b.limits.max_connect_rate = RATE_B;
    let b = TestNode::start(config_b).await;

    let accepted_at: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let retries: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let (a_url, b_url) = (a.stream_url(), b.stream_url());
        let (accepted_at, refused, retries) =
            (accepted_at.clone(), refused.clone(), retries.clone());
        clients.push(tokio::spawn(async move {
            let user = format!("u{i}");
            let retry = last_retry(&a_url, &user).await.expect("a retry: frame");
            retries.lock().unwrap().push(retry);
            tokio::time::sleep(Duration::from_millis(retry)).await;
            loop {
                let resp = reqwest::Client::new()
                    .get(&b_url)
                    .header("X-Remote-User", &user)
                    .send()
                    .await
                    .unwrap();
                if resp.status() == 200 {
                    accepted_at.lock().unwrap().push(Instant::now());
                    // Hold the stream until the test ends.
                    return Some(resp);
                }
                assert_eq!(resp.status(), 503);
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let after: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(after >= 1);
                // A browser would wait Retry-After; jitter keeps them apart.
                tokio::time::sleep(Duration::from_millis(
                    after * 1000 / 2 + fastrand::u64(0..1000),
                ))
                .await;
            }
        }));
    }
    assert!(
        eventually(Duration::from_secs(10), || {
            let n = a.daemon.live_streams();
            async move { n == CLIENTS }
        })
        .await,
        "all clients connected to a"
    );
    let t0 = Instant::now();
    a.stop().await;
    let mut held = Vec::new();
    for c in clients {
        held.push(
            tokio::time::timeout(Duration::from_secs(30), c)
                .await
                .expect("client done")
                .unwrap(),
        );
    }
    let total = t0.elapsed();

    let retries = retries.lock().unwrap().clone();
    let distinct: std::collections::HashSet<_> = retries.iter().collect();
    let (min, max) = (retries.iter().min().unwrap(), retries.iter().max().unwrap());
    assert!(*min >= 500, "retry below stream.retry_ms: {min}");
    assert!(
        distinct.len() > CLIENTS / 3,
        "retry values not jittered: {} distinct",
        distinct.len()
    );

    let mut at = accepted_at.lock().unwrap().clone();
    at.sort();
    assert_eq!(at.len(), CLIENTS);
    // Peak accepted per sliding second at b: the bucket allows a one-second
    // burst plus the refill.
    let peak = (0..at.len())
        .map(|i| {
            at[i..]
                .iter()
                .take_while(|t| t.duration_since(at[i]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    let refused = refused.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "storm: {CLIENTS} clients, retry jitter {min}..{max} ms ({} distinct), all back on b in {:.1} s, peak {peak} accepted/s at b (cap {RATE_B}/s), {refused} refused with 503",
        distinct.len(),
        total.as_secs_f64()
    );
    assert!(peak as u64 <= 2 * RATE_B + 10, "cap not enforced: {peak}/s");
    assert!(refused > 0, "the cap never refused anyone");
    assert_eq!(held.iter().filter(|r| r.is_some()).count(), CLIENTS);
    let mut conn = redis.conn();
    assert_eq!(
        registry_ids(&mut conn, "sse").len(),
        CLIENTS,
        "registry holds exactly the streams on b"
    );
}
