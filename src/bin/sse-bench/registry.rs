//! `registry` mode: a large connection registry, as a crash leaves it.
//! Writes `--records` records straight into the deployment's Redis in the
//! layout the daemon uses (hash, user zset, users set, heartbeats zset),
//! `--stale-pct` of them with a heartbeat an hour old, then times through
//! the admin API: the whole listing (streamed), one page, and a full clear,
//! while a second Redis connection PINGs without pause (Redis's longest
//! stall: how long any other client waited), Redis's SLOWLOG records its
//! longest command (set to log anything over 1 ms for the run, then put
//! back) and the server's VmRSS is sampled every few milliseconds (its peak
//! during each step, above its RSS when the step began). The clear removes
//! the injected records again. Run the node with a long
//! `sweep.interval_secs`: its sweeper would otherwise remove the stale half
//! while the listing is timed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cli::Common;
use crate::figures::r3;
use crate::sys::vmrss_kb;

/// What the mode is asked.
pub(crate) struct Ask {
    pub(crate) redis_url: String,
    pub(crate) key_prefix: String,
    pub(crate) records: usize,
    pub(crate) stale_pct: f64,
    pub(crate) page_limit: usize,
}

/// The longest PING round trip, and the server's peak VmRSS, while a step
/// runs.
struct Watch {
    stop: Arc<AtomicBool>,
    max_ping_us: Arc<AtomicU64>,
    peak_rss_kb: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Watch {
    async fn start(redis: &redis::Client, server_pid: Option<u32>) -> Result<Watch, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let max_ping_us = Arc::new(AtomicU64::new(0));
        let peak_rss_kb = Arc::new(AtomicU64::new(0));
        // Its answers wait as long as Redis is busy: that wait is the figure.
        let mut conn = patient_conn(redis).await?;
        let (s, m) = (stop.clone(), max_ping_us.clone());
        let mut tasks = vec![tokio::spawn(async move {
            while !s.load(Relaxed) {
                let t = Instant::now();
                let _: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
                m.fetch_max(t.elapsed().as_micros() as u64, Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })];
        if let Some(pid) = server_pid {
            let (s, p) = (stop.clone(), peak_rss_kb.clone());
            tasks.push(tokio::spawn(async move {
                while !s.load(Relaxed) {
                    if let Some(kb) = vmrss_kb(pid) {
                        p.fetch_max(kb, Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        Ok(Watch {
            stop,
            max_ping_us,
            peak_rss_kb,
            tasks,
        })
    }

    /// (longest PING in ms, peak VmRSS in kB).
    async fn finish(self) -> (f64, Option<u64>) {
        self.stop.store(true, Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let rss = self.peak_rss_kb.load(Relaxed);
        (
            self.max_ping_us.load(Relaxed) as f64 / 1000.0,
            (rss > 0).then_some(rss),
        )
    }
}

/// The longest command Redis itself logged (SLOWLOG, anything over 1 ms)
/// since the last call: its milliseconds and name. What a client waited is
/// the PING figure; this one is Redis's own execution time, free of the
/// scheduling noise of a shared machine.
async fn longest_call(
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<(f64, String), String> {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(conn)
        .await
        .map_err(|e| format!("redis: SLOWLOG GET: {e}"))?;
    redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async::<()>(conn)
        .await
        .map_err(|e| format!("redis: SLOWLOG RESET: {e}"))?;
    let mut longest = (0.0, String::new());
    for e in entries {
        let redis::Value::Array(fields) = e else {
            continue;
        };
        let (Some(redis::Value::Int(us)), Some(redis::Value::Array(args))) =
            (fields.get(2), fields.get(3))
        else {
            continue;
        };
        let ms = *us as f64 / 1000.0;
        if ms > longest.0 {
            let name = match args.first() {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            };
            longest = (ms, name);
        }
    }
    Ok(longest)
}

/// Sets a Redis config value; returns the old one, to put back.
async fn config_set(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    value: &str,
) -> Result<String, String> {
    let old: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(key)
        .query_async(conn)
        .await
        .map_err(|e| format!("redis: CONFIG GET {key}: {e}"))?;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg(key)
        .arg(value)
        .query_async::<()>(conn)
        .await
        .map_err(|e| format!("redis: CONFIG SET {key}: {e}"))?;
    Ok(old.get(1).cloned().unwrap_or_default())
}

/// Writes the records in pipelines of a few thousand.
async fn inject(
    conn: &mut redis::aio::MultiplexedConnection,
    ask: &Ask,
    users: usize,
    user_prefix: &str,
) -> Result<(), String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let p = &ask.key_prefix;
    let stale_every = if ask.stale_pct <= 0.0 {
        usize::MAX
    } else {
        (100.0 / ask.stale_pct).round().max(1.0) as usize
    };
    let mut pipe = redis::pipe();
    for i in 0..ask.records {
        let id = uuid::Uuid::new_v4().to_string();
        let user = format!("{user_prefix}{}", i % users.max(1));
        let ct = format!("{:.6}", now - 7200.0 + (i % 3600) as f64);
        let hb = if i % stale_every == 0 {
            format!("{:.6}", now - 3600.0)
        } else {
            format!("{now:.6}")
        };
        pipe.hset_multiple(
            format!("{p}:conn:{id}"),
            &[
                ("connection_id", id.as_str()),
                ("username", user.as_str()),
                ("connection_time", ct.as_str()),
                ("last_heartbeat", hb.as_str()),
                ("node_id", "sse-bench-dead-node"),
            ],
        )
        .ignore()
        .zadd(format!("{p}:user:{user}"), &id, &ct)
        .ignore()
        .sadd(format!("{p}:users"), &user)
        .ignore()
        .zadd(format!("{p}:heartbeats"), &id, &hb)
        .ignore();
        if (i + 1) % 5_000 == 0 || i + 1 == ask.records {
            pipe.query_async::<()>(conn)
                .await
                .map_err(|e| format!("redis: inject: {e}"))?;
            pipe = redis::pipe();
        }
    }
    Ok(())
}

fn admin_request(
    http: &reqwest::Client,
    c: &Common,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    let url = format!(
        "{}{}{path}",
        c.admin_target().0,
        c.base_path.trim_end_matches('/')
    );
    let req = http.request(method, url);
    match &c.api_token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

/// Reads a whole answer chunk by chunk (never holding it): its size, its
/// last bytes, and the seconds until the last byte.
async fn read_all(req: reqwest::RequestBuilder) -> Result<(u64, Vec<u8>, f64), String> {
    let t = Instant::now();
    let mut resp = req.send().await.map_err(|e| format!("admin API: {e}"))?;
    let status = resp.status();
    let mut size = 0u64;
    let mut tail: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("admin API: {e}"))? {
        size += chunk.len() as u64;
        tail.extend_from_slice(&chunk);
        if tail.len() > 4096 {
            tail.drain(..tail.len() - 4096);
        }
    }
    if !status.is_success() {
        return Err(format!(
            "admin API: {status}: {}",
            String::from_utf8_lossy(&tail)
        ));
    }
    Ok((size, tail, t.elapsed().as_secs_f64()))
}

/// The number after `"key":` in the last bytes of a JSON answer.
fn number_in(tail: &[u8], key: &str) -> Option<u64> {
    let text = String::from_utf8_lossy(tail);
    let at = text.rfind(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

fn growth_mb(peak: Option<u64>, base: Option<u64>) -> Value {
    match (peak, base) {
        (Some(p), Some(b)) => json!(r3(p.saturating_sub(b) as f64 / 1024.0)),
        _ => Value::Null,
    }
}

/// A connection whose answers may take up to a minute: writing thousands of
/// records per pipeline on a busy machine takes longer than the client's
/// default answer timeout, and the stall probe measures how long Redis keeps
/// it waiting.
async fn patient_conn(redis: &redis::Client) -> Result<redis::aio::MultiplexedConnection, String> {
    let patient =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
    redis
        .get_multiplexed_async_connection_with_config(&patient)
        .await
        .map_err(|e| format!("redis: {e}"))
}

pub(crate) async fn run(c: Common, ask: Ask) -> Result<Value, String> {
    let users = c.users.unwrap_or(ask.records / 2).max(1);
    let redis = redis::Client::open(ask.redis_url.as_str()).map_err(|e| format!("redis: {e}"))?;
    let mut conn = patient_conn(&redis).await?;
    let http = c
        .admin_client()
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| e.to_string())?;

    eprintln!(
        "injecting {} records of {users} users ({}% stale)",
        ask.records, ask.stale_pct
    );
    let t = Instant::now();
    inject(&mut conn, &ask, users, &c.user_prefix).await?;
    let inject_s = t.elapsed().as_secs_f64();
    let rss_base = c.server_pid.and_then(vmrss_kb);
    let old_slower = config_set(&mut conn, "slowlog-log-slower-than", "1000").await?;
    let old_len = config_set(&mut conn, "slowlog-max-len", "100000").await?;
    longest_call(&mut conn).await?;

    let mut step = Step {
        redis: &redis,
        conn: &mut conn,
        server_pid: c.server_pid,
    };
    eprintln!("whole listing");
    let get = reqwest::Method::GET;
    let (mut listing, tail) = step
        .timed(admin_request(&http, &c, get.clone(), "/connections/"))
        .await?;
    listing["total_connections"] = json!(number_in(&tail, "total_connections"));
    eprintln!("one page of {} users", ask.page_limit);
    let page_path = format!("/connections/?limit={}", ask.page_limit);
    let (mut page, _) = step
        .timed(admin_request(&http, &c, get, &page_path))
        .await?;
    page["limit"] = json!(ask.page_limit);
    eprintln!("full clear");
    let post = reqwest::Method::POST;
    let (mut clear, tail) = step
        .timed(admin_request(&http, &c, post, "/connections/"))
        .await?;
    clear["connection_count"] = json!(number_in(&tail, "connection_count"));
    config_set(&mut conn, "slowlog-log-slower-than", &old_slower).await?;
    config_set(&mut conn, "slowlog-max-len", &old_len).await?;

    Ok(json!({
        "tool": "sse-bench",
        "mode": "registry",
        "records": ask.records,
        "users": users,
        "stale_pct": ask.stale_pct,
        "inject_s": r3(inject_s),
        "server_rss_before_mb": rss_base.map(|kb| r3(kb as f64 / 1024.0)),
        "listing": listing,
        "page": page,
        "clear": clear,
    }))
}

/// What every timed step needs.
struct Step<'a> {
    redis: &'a redis::Client,
    conn: &'a mut redis::aio::MultiplexedConnection,
    server_pid: Option<u32>,
}

impl Step<'_> {
    /// Sends `req` and reads its whole answer while watching Redis and the
    /// server: the step's figures, and the answer's last bytes.
    async fn timed(&mut self, req: reqwest::RequestBuilder) -> Result<(Value, Vec<u8>), String> {
        let rss_before = self.server_pid.and_then(vmrss_kb);
        let watch = Watch::start(self.redis, self.server_pid).await?;
        let (bytes, tail, seconds) = read_all(req).await?;
        let (ping, rss) = watch.finish().await;
        let (call_ms, call) = longest_call(self.conn).await?;
        let figures = json!({
            "seconds": r3(seconds),
            "bytes": bytes,
            "longest_ping_ms": r3(ping),
            "longest_call_ms": r3(call_ms),
            "longest_call": call,
            "rss_growth_mb": growth_mb(rss, rss_before),
        });
        Ok((figures, tail))
    }
}

/// The summary lines of a registry run.
pub(crate) fn summary(v: &Value) -> Vec<String> {
    let l = &v["listing"];
    let p = &v["page"];
    let c = &v["clear"];
    vec![
        format!(
            "=== sse-bench registry: {} records of {} users ({}% stale) ===",
            v["records"], v["users"], v["stale_pct"]
        ),
        format!(
            "whole listing: {} s, {} bytes, {} connections; longest PING {} ms, longest Redis call {} ms; server RSS +{} MB",
            l["seconds"], l["bytes"], l["total_connections"], l["longest_ping_ms"], l["longest_call_ms"], l["rss_growth_mb"]
        ),
        format!(
            "page of {}: {} s, {} bytes; longest PING {} ms, longest Redis call {} ms; server RSS +{} MB",
            p["limit"], p["seconds"], p["bytes"], p["longest_ping_ms"], p["longest_call_ms"], p["rss_growth_mb"]
        ),
        format!(
            "clear: {} s, {} records removed; longest PING {} ms, longest Redis call {} ms",
            c["seconds"], c["connection_count"], c["longest_ping_ms"], c["longest_call_ms"]
        ),
    ]
}
