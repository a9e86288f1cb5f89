//! A run's start and end, shared by every mode: resolve the target, open the
//! streams and wait for them to settle; drain, stop, and the fields every
//! mode reports.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::cli::Common;
use crate::clock::{now_ns, secs};
use crate::figures::{lat_json, r3};
use crate::state::{Ctx, Slot, Stats, Target};
use crate::streams::slot_task;
use crate::sys::{cpu_s, raise_nofile, vmrss_kb};

/// A run whose streams are open: what the modes drive and report on.
pub(crate) struct Run {
    pub(crate) ctx: Arc<Ctx>,
    slots: tokio::task::JoinSet<()>,
    connect: Value,
    rss_before: Option<u64>,
    rss_connected: Option<u64>,
    cpu_before: Option<f64>,
    pub(crate) registry_baseline: Option<u64>,
    pub(crate) rng: fastrand::Rng,
}

/// The address, Host and path (with `{user}`) of --stream-url.
async fn resolve(c: &Common) -> Result<Target, String> {
    let url = c.stream_url.replace("{user}", "__USER__");
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("--stream-url {}: {e}", c.stream_url))?;
    match uri.scheme_str() {
        Some("http") => {}
        _ => {
            return Err(format!(
                "--stream-url {}: only http:// is supported (point it at the daemon's public listener, or a plain-http proxy)",
                c.stream_url
            ))
        }
    }
    let host = uri.host().ok_or("--stream-url has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let h = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let addr = tokio::net::lookup_host((h.as_str(), port))
        .await
        .map_err(|e| format!("resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {host}: no address"))?;
    let path = uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string())
        .replace("__USER__", "{user}");
    let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
    Ok(Target {
        addr,
        host: authority,
        path,
        user_header: c.user_header.clone(),
        topics_header: c.topics_header.clone(),
    })
}

/// Opens --conns streams (`reopen`: churn reopens the ones that end) and
/// waits until each is established or failed, then --settle.
pub(crate) async fn start(c: &Common, reopen: bool, publishers: usize) -> Result<Run, String> {
    if c.conns == 0 {
        return Err("--conns must be at least 1".into());
    }
    let users = c.users.unwrap_or(c.conns).max(1);
    let nofile = raise_nofile();
    let need = (c.conns + publishers + 64) as u64;
    if need > nofile {
        return Err(format!(
            "{} streams need about {need} file descriptors; this process may open {nofile} \
             (RLIMIT_NOFILE): run fewer streams per sse-bench process",
            c.conns
        ));
    }
    let target = resolve(c).await?;
    // each stream's topics, checked before anything is opened
    let mut slot_topics = Vec::with_capacity(c.conns);
    for i in 0..c.conns {
        let uname = format!("{}{}", c.user_prefix, i % users);
        slot_topics.push(Arc::<[String]>::from(crate::topics::expand(
            &c.topics, i, &uname,
        )?));
    }
    let http = c
        .admin_client()
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .pool_max_idle_per_host(publishers.max(4))
        // under the 30 s after which the daemon closes an idle keep-alive
        // connection: never reuse one it may be closing at that moment
        .pool_idle_timeout(Duration::from_secs(20))
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let admin = c.admin_target().0;
    let base = c.base_path.trim_end_matches('/');
    let ctx = Arc::new(Ctx {
        target,
        users,
        user_prefix: c.user_prefix.clone(),
        connect_timeout: Duration::from_secs_f64(c.connect_timeout),
        connect_sem: Arc::new(Semaphore::new(c.connect_concurrency.max(1))),
        src_ips: c.src_ips.min(250),
        reopen,
        stop: CancellationToken::new(),
        stats: Stats::default(),
        slots: slot_topics
            .into_iter()
            .map(|topics| Slot {
                live: AtomicBool::new(false),
                reconnect: Notify::new(),
                topics,
            })
            .collect(),
        user_live: (0..users).map(|_| AtomicU32::new(0)).collect(),
        instances: Mutex::new(Vec::new()),
        msgs: Mutex::new(Vec::new()),
        next_seq: AtomicU64::new(0),
        http,
        api: format!("{admin}{base}"),
        admin,
        api_token: c.api_token.clone().filter(|t| !t.is_empty()),
        server_pid: c.server_pid,
    });
    let registry_baseline = ctx.registry_total().await;
    if registry_baseline.is_none() {
        eprintln!(
            "warning: GET {}/connections/ failed: no registry figures (is --admin-url / --api-token right?)",
            ctx.api
        );
    }
    let rss_before = c.server_pid.and_then(vmrss_kb);
    let cpu_before = c.server_pid.and_then(cpu_s);
    let rng = c
        .seed
        .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);

    let t0 = now_ns();
    eprintln!(
        "opening {} streams as {}0..{}{} on {} ({} at once){}",
        c.conns,
        c.user_prefix,
        c.user_prefix,
        users - 1,
        c.stream_url,
        c.connect_concurrency,
        if c.topics.is_empty() {
            String::new()
        } else {
            format!(", following {}", c.topics)
        }
    );
    let mut slots = tokio::task::JoinSet::new();
    for i in 0..c.conns {
        slots.spawn(slot_task(ctx.clone(), i));
    }
    let mut last_print = Instant::now();
    while ctx.stats.initial_settled.load(Relaxed) < c.conns as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            eprintln!(
                "  established {} failed {} ({:.1}s)",
                ctx.stats.established.load(Relaxed),
                ctx.stats.failed(),
                secs(now_ns() - t0)
            );
        }
    }
    let est = ctx.stats.established.load(Relaxed);
    let span = secs(ctx.stats.last_est_ns.load(Relaxed).saturating_sub(t0));
    let rate = if est > 0 && span > 0.0 {
        est as f64 / span
    } else {
        0.0
    };
    let connect = json!({
        "established": est,
        "failed": ctx.stats.initial_failed.load(Relaxed),
        "secs": r3(span),
        "rate_per_sec": r3(rate),
        "retried_503": ctx.stats.retried_503.load(Relaxed),
        "latency": lat_json(&mut ctx.stats.connect_us.lock().unwrap()),
        "server_cpu_s": match (cpu_before, c.server_pid.and_then(cpu_s)) {
            (Some(a), Some(b)) => Some(r3(b - a)),
            _ => None,
        },
    });
    eprintln!(
        "established {est}, failed {} in {span:.2}s ({rate:.0} streams/s); settling {:.1}s",
        ctx.stats.initial_failed.load(Relaxed),
        c.settle
    );
    tokio::time::sleep(Duration::from_secs_f64(c.settle)).await;
    Ok(Run {
        rss_connected: c.server_pid.and_then(vmrss_kb),
        ctx,
        slots,
        connect,
        rss_before,
        cpu_before,
        registry_baseline,
        rng,
    })
}

impl Run {
    /// Waits until the received count reaches the expected estimate, or `drain`.
    pub(crate) async fn drain(&self, drain: f64) {
        let until = Instant::now() + Duration::from_secs_f64(drain);
        while Instant::now() < until {
            let s = &self.ctx.stats;
            if s.received.load(Relaxed) >= s.expected_est.load(Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every stream; their records end "live at the end".
    pub(crate) async fn stop(&mut self) {
        self.ctx.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), async {
            while self.slots.join_next().await.is_some() {}
        })
        .await;
        self.slots.abort_all();
    }

    /// Fields every mode reports.
    pub(crate) fn common_json(&self, mode: &str, c: &Common) -> Value {
        let s = &self.ctx.stats;
        let est = self.connect["established"].as_u64().unwrap_or(0);
        let per_stream = match (self.rss_before, self.rss_connected) {
            (Some(b), Some(a)) if est > 0 => {
                Some(((a as f64 - b as f64) * 1024.0 / est as f64).round())
            }
            _ => None,
        };
        json!({
            "tool": "sse-bench",
            "mode": mode,
            "stream_url": c.stream_url,
            "topics": c.topics,
            "conns": c.conns,
            "users": self.ctx.users,
            "established": est,
            "failed": self.connect["failed"],
            "connect": self.connect,
            "connect_rate": self.connect["rate_per_sec"],
            "attempts": s.attempts.load(Relaxed),
            "failures": {
                "total": s.failed(),
                "connect": s.fail_connect.load(Relaxed),
                "status": s.fail_status.load(Relaxed),
                "timeout": s.fail_timeout.load(Relaxed),
                "other": s.fail_other.load(Relaxed),
            },
            "ended_by_server": s.ended.load(Relaxed),
            "evicted": s.evicted.load(Relaxed),
            "heartbeats": s.heartbeats.load(Relaxed),
            "other_events": s.other_events.load(Relaxed),
            "bad_data": s.bad_data.load(Relaxed),
            "errors": *s.errors.lock().unwrap(),
            "registry_baseline": self.registry_baseline,
            "server": {
                "pid": c.server_pid,
                "rss_before_kb": self.rss_before,
                "rss_connected_kb": self.rss_connected,
                "rss_bytes_per_stream": per_stream,
                "rss_end_kb": c.server_pid.and_then(vmrss_kb),
                "cpu_s": match (self.cpu_before, c.server_pid.and_then(cpu_s)) {
                    (Some(a), Some(b)) => Some(r3(b - a)),
                    _ => None,
                },
            },
            "bench_rss_kb": vmrss_kb(std::process::id()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn common(args: &[&str]) -> Common {
        let mut argv = vec!["sse-bench", "hold"];
        argv.extend_from_slice(args);
        let cli = crate::cli::Cli::try_parse_from(argv).expect("arguments");
        cli.mode.parts().1.clone()
    }

    #[tokio::test]
    async fn the_stream_url_gives_address_host_and_path() {
        let c = common(&[
            "--stream-url",
            "http://127.0.0.1:8090/n/stream/?user={user}&x=1",
        ]);
        let t = resolve(&c).await.expect("resolves");
        assert_eq!(t.addr, "127.0.0.1:8090".parse().expect("addr"));
        assert_eq!(t.host, "127.0.0.1:8090");
        assert_eq!(t.path, "/n/stream/?user={user}&x=1");
        assert_eq!(t.user_header, "X-Remote-User");

        let c = common(&["--stream-url", "http://[::1]/s/", "--user-header", ""]);
        let t = resolve(&c).await.expect("resolves");
        assert_eq!(t.addr, "[::1]:80".parse().expect("addr"));
        assert_eq!(t.host, "[::1]");
        assert_eq!(t.user_header, "");
    }

    #[tokio::test]
    async fn only_plain_http_is_taken() {
        let c = common(&["--stream-url", "https://127.0.0.1:1/x"]);
        let e = resolve(&c).await.err().expect("https refused");
        assert!(e.contains("only http://"), "{e}");
        let c = common(&["--stream-url", "not a url"]);
        assert!(resolve(&c).await.is_err());
    }
}
