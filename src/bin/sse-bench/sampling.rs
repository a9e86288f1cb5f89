//! Sampling while a run goes on: the server's RSS and, under churn, the
//! registry's count beside this client's live streams.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::clock::{now_ns, secs};
use crate::figures::r3;
use crate::state::Ctx;
use crate::sys::vmrss_kb;

#[derive(Default)]
pub(crate) struct Samples {
    /// (seconds since start, VmRSS kB)
    pub(crate) rss: Vec<(f64, u64)>,
    pub(crate) registry: Vec<RegSample>,
}

/// Registry vs. the client's streams at one moment.
pub(crate) struct RegSample {
    pub(crate) t: f64,
    /// Streams live at this client before and after the request.
    pub(crate) live_before: u64,
    pub(crate) live_after: u64,
    /// Streams being opened at this client.
    pub(crate) connecting: u64,
    /// `total_connections` of the registry.
    pub(crate) registry: Option<u64>,
    /// The node's live-connections gauge.
    pub(crate) server_live: Option<u64>,
}

/// RSS samples and their range from `from_s` on (after the start-up).
pub(crate) fn rss_json(s: &[(f64, u64)], from_s: f64) -> Value {
    let after: Vec<u64> = s.iter().filter(|x| x.0 >= from_s).map(|x| x.1).collect();
    json!({
        "samples": s.iter().map(|(t, kb)| json!([r3(*t), kb])).collect::<Vec<_>>(),
        "min_kb": after.iter().min(),
        "max_kb": after.iter().max(),
        "end_kb": s.last().map(|x| x.1),
    })
}

/// Samples every `every`, the first after `first_after`, until `stop`;
/// `registry`: also the registry and the server's gauge (with a progress line).
pub(crate) fn spawn_sampler(
    ctx: Arc<Ctx>,
    every: Duration,
    first_after: Duration,
    registry: bool,
    out: Arc<Mutex<Samples>>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first_after, every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let t = secs(now_ns());
            if let Some(kb) = ctx.server_pid.and_then(vmrss_kb) {
                out.lock().unwrap().rss.push((t, kb));
            }
            if registry {
                let live0 = ctx.stats.live.load(Relaxed);
                let conn0 = ctx.stats.connecting.load(Relaxed);
                let (reg, srv) = tokio::join!(ctx.registry_total(), ctx.server_live());
                let live1 = ctx.stats.live.load(Relaxed);
                eprintln!(
                    "[{t:7.1}s] live {live1} (connecting {conn0}), registry {}, server gauge {}, rss {} kB, sent {} received {}",
                    reg.map_or("?".into(), |v| v.to_string()),
                    srv.map_or("?".into(), |v| v.to_string()),
                    ctx.server_pid.and_then(vmrss_kb).map_or("?".into(), |v| v.to_string()),
                    ctx.stats.send_ok.load(Relaxed),
                    ctx.stats.received.load(Relaxed),
                );
                out.lock().unwrap().registry.push(RegSample {
                    t,
                    live_before: live0,
                    live_after: live1,
                    connecting: conn0,
                    registry: reg,
                    server_live: srv,
                });
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_range_counts_only_the_samples_from_the_mark_on() {
        let s = [(0.5, 900), (1.0, 300), (2.0004, 200)];
        let v = rss_json(&s, 1.0);
        assert_eq!(v["min_kb"], 200);
        assert_eq!(v["max_kb"], 300);
        assert_eq!(v["end_kb"], 200);
        assert_eq!(v["samples"], json!([[0.5, 900], [1.0, 300], [2.0, 200]]));
        let none = rss_json(&[], 0.0);
        assert!(
            none["min_kb"].is_null() && none["end_kb"].is_null(),
            "{none}"
        );
        assert_eq!(none["samples"], json!([]));
    }
}
