//! The modes, each a run from start to report: hold, unicast, broadcast,
//! topic, churn (and registry, in its own module).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::accounting::account;
use crate::cli::{Common, Mode};
use crate::clock::{now_ns, secs};
use crate::figures::{lat_json, r3};
use crate::report::merge;
use crate::run::{start, Run};
use crate::sampling::{rss_json, spawn_sampler, Samples};
use crate::sends::{send_loop, send_one};
use crate::state::Dest;
use crate::sys::vmrss_kb;

/// Runs `mode` to its end: the JSON line, or why the run could not be made.
pub(crate) async fn run(mode: Mode) -> Result<Value, String> {
    match mode {
        Mode::Hold { c } => hold(c).await,
        Mode::Unicast {
            c,
            messages,
            publishers,
            rate,
        } => unicast(c, messages, publishers, rate).await,
        Mode::Broadcast {
            c,
            broadcasts,
            interval_ms,
        } => broadcast(c, broadcasts, interval_ms).await,
        Mode::Topic {
            c,
            topic,
            sends,
            interval_ms,
            beside_broadcast,
        } => topic_mode(c, topic, sends, interval_ms, beside_broadcast).await,
        Mode::Churn {
            c,
            reconnect_pct,
            send_rate,
            publishers,
            grace_ms,
        } => churn(c, reconnect_pct, send_rate, publishers, grace_ms).await,
        Mode::Registry {
            c,
            redis_url,
            key_prefix,
            records,
            stale_pct,
            page_limit,
        } => {
            let ask = crate::registry::Ask {
                redis_url,
                key_prefix,
                records,
                stale_pct,
                page_limit,
            };
            crate::registry::run(c, ask).await
        }
    }
}

/// hold: the streams held --duration; drops, registry, server RSS.
async fn hold(c: Common) -> Result<Value, String> {
    let mut run = start(&c, false, 0).await?;
    let dur = c.duration.unwrap_or(10.0);
    eprintln!("holding {dur:.0}s");
    let samples = Arc::new(Mutex::new(Samples::default()));
    let stop = CancellationToken::new();
    let sampler = spawn_sampler(
        run.ctx.clone(),
        Duration::from_secs_f64(c.sample_secs.max(0.1)),
        Duration::ZERO,
        false,
        samples.clone(),
        stop.clone(),
    );
    let live_start = run.ctx.stats.live.load(Relaxed);
    let mut min_live = live_start;
    let until = Instant::now() + Duration::from_secs_f64(dur);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        min_live = min_live.min(run.ctx.stats.live.load(Relaxed));
    }
    let live_end = run.ctx.stats.live.load(Relaxed);
    let registry = run.ctx.registry_total().await;
    stop.cancel();
    let _ = sampler.await;
    let mut v = run.common_json("hold", &c);
    run.stop().await;
    merge(
        &mut v,
        json!({
            "hold": {"secs": dur, "live_start": live_start, "live_end": live_end, "min_live": min_live,
                     "dropped": live_start.saturating_sub(live_end)},
            "registry_end": registry,
            "rss": rss_json(&samples.lock().unwrap().rss, 0.0),
        }),
    );
    Ok(v)
}

/// unicast: --messages to random users, then the delivery accounting.
async fn unicast(c: Common, messages: u64, publishers: usize, rate: f64) -> Result<Value, String> {
    let mut run = start(&c, false, publishers).await?;
    let cap = c.duration.unwrap_or(120.0);
    eprintln!("sending {messages} messages ({publishers} at once)");
    let until = tokio::time::Instant::now() + Duration::from_secs_f64(cap);
    send_loop(
        run.ctx.clone(),
        Some(messages),
        rate,
        publishers,
        until,
        CancellationToken::new(),
        run.rng.fork(),
    )
    .await;
    let fields = json!({"messages": messages, "publishers": publishers});
    Ok(drain_and_report(run, "unicast", &c, fields).await)
}

/// broadcast: --broadcasts to every stream, then the delivery accounting.
async fn broadcast(c: Common, broadcasts: u64, interval_ms: u64) -> Result<Value, String> {
    let run = start(&c, false, 1).await?;
    let cap = Instant::now() + Duration::from_secs_f64(c.duration.unwrap_or(120.0));
    eprintln!("sending {broadcasts} broadcasts, {interval_ms} ms apart");
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
    let mut inflight = tokio::task::JoinSet::new();
    for _ in 0..broadcasts {
        tick.tick().await;
        if Instant::now() >= cap {
            break;
        }
        let ctx = run.ctx.clone();
        inflight.spawn(async move { send_one(&ctx, Dest::All).await });
    }
    while inflight.join_next().await.is_some() {}
    let fields = json!({"broadcasts": broadcasts, "interval_ms": interval_ms});
    Ok(drain_and_report(run, "broadcast", &c, fields).await)
}

/// topic: --sends messages to --topic (with --beside-broadcast, each
/// followed by a broadcast), then the delivery accounting.
async fn topic_mode(
    c: Common,
    topic: String,
    sends: u64,
    interval_ms: u64,
    beside_broadcast: bool,
) -> Result<Value, String> {
    let users = c.users.unwrap_or(c.conns).max(1);
    let mut followers = 0;
    for i in 0..c.conns {
        let uname = format!("{}{}", c.user_prefix, i % users);
        if crate::topics::expand(&c.topics, i, &uname)?.contains(&topic) {
            followers += 1;
        }
    }
    if followers == 0 {
        return Err(format!(
            "--topic {topic}: no stream follows it (--topics {:?})",
            c.topics
        ));
    }
    let run = start(&c, false, 2).await?;
    let cap = Instant::now() + Duration::from_secs_f64(c.duration.unwrap_or(120.0));
    eprintln!(
        "sending {sends} messages to {topic} ({followers} streams follow it){}, {interval_ms} ms apart",
        if beside_broadcast { ", each followed by a broadcast" } else { "" }
    );
    let dest = Dest::Topic(topic.as_str().into());
    let mut order = vec![dest];
    if beside_broadcast {
        order.push(Dest::All);
    }
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
    let mut inflight = tokio::task::JoinSet::new();
    'sends: for _ in 0..sends {
        for to in &order {
            tick.tick().await;
            if Instant::now() >= cap {
                break 'sends;
            }
            let (ctx, to) = (run.ctx.clone(), to.clone());
            inflight.spawn(async move { send_one(&ctx, to).await });
        }
    }
    while inflight.join_next().await.is_some() {}
    let fields = json!({
        "topic": topic, "followers": followers, "sends": sends,
        "interval_ms": interval_ms, "beside_broadcast": beside_broadcast,
    });
    Ok(drain_and_report(run, "topic", &c, fields).await)
}

/// The end of unicast and broadcast: waits for the deliveries, stops the
/// streams, reports them with the mode's own `fields` and the accounting.
async fn drain_and_report(mut run: Run, mode: &str, c: &Common, mut fields: Value) -> Value {
    run.drain(c.drain).await;
    run.stop().await;
    let mut v = run.common_json(mode, c);
    fields["delivery"] = account(&run.ctx, 0);
    merge(&mut v, fields);
    v
}

/// The part of each second over which the churn closes its streams.
const CHURN_SPREAD: Duration = Duration::from_millis(500);

/// churn: streams closed and reopened every second while messages flow;
/// reconnects, delivery across them, and the registry against the live
/// streams during, at the end and after closing them all.
async fn churn(
    c: Common,
    reconnect_pct: f64,
    send_rate: f64,
    publishers: usize,
    grace_ms: u64,
) -> Result<Value, String> {
    let mut run = start(&c, true, publishers).await?;
    let ctx = run.ctx.clone();
    let dur = c.duration.unwrap_or(60.0);
    let initial_failed = ctx.stats.failed();
    let attempts0 = ctx.stats.attempts.load(Relaxed);
    eprintln!(
        "churning {dur:.0}s: {reconnect_pct}% of the live streams reopened every second, {send_rate} msg/s to random users"
    );
    let churn_start = secs(now_ns());
    let samples = Arc::new(Mutex::new(Samples::default()));
    let sampler_stop = CancellationToken::new();
    let sampler = spawn_sampler(
        ctx.clone(),
        Duration::from_secs_f64(c.sample_secs.max(0.5)),
        // in the quiet part of each second: no stream is closing then
        CHURN_SPREAD + Duration::from_millis(250),
        true,
        samples.clone(),
        sampler_stop.clone(),
    );
    let send_stop = CancellationToken::new();
    let until = tokio::time::Instant::now() + Duration::from_secs_f64(dur);
    let sender = tokio::spawn(send_loop(
        ctx.clone(),
        None,
        send_rate.max(0.001),
        publishers,
        until,
        send_stop.clone(),
        run.rng.fork(),
    ));
    let mut requested = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut live_idx: Vec<usize> = Vec::with_capacity(c.conns);
    // one round a second, the first at once: `dur` rounds in `dur` seconds
    for _round in 0..(dur.floor() as u64) {
        tick.tick().await;
        live_idx.clear();
        live_idx.extend((0..c.conns).filter(|&i| ctx.slots[i].live.load(Relaxed)));
        let k = ((live_idx.len() as f64) * reconnect_pct / 100.0).round() as usize;
        let k = k.min(live_idx.len());
        // spread over the first half of the second (like browsers, not one
        // burst); the samples are taken in the quiet second half
        let t0 = tokio::time::Instant::now();
        for j in 0..k {
            tokio::time::sleep_until(t0 + CHURN_SPREAD * j as u32 / k as u32).await;
            let r = run.rng.usize(j..live_idx.len());
            live_idx.swap(j, r);
            let slot = &ctx.slots[live_idx[j]];
            // live when the round began, but the server may have ended it
            // since: Notify would keep the permit and close the next stream
            // of the slot the moment it is established
            if slot.live.load(Relaxed) {
                slot.reconnect.notify_one();
                requested += 1;
            }
        }
    }
    tokio::time::sleep_until(until).await;
    send_stop.cancel();
    let _ = sender.await;
    let churn_secs = secs(now_ns()) - churn_start;
    // let the reconnects in flight finish, deliveries arrive
    let settle_until = Instant::now() + Duration::from_secs_f64(c.connect_timeout);
    while ctx.stats.connecting.load(Relaxed) > 0 && Instant::now() < settle_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(c.drain.min(2.0))).await;
    sampler_stop.cancel();
    let _ = sampler.await;
    // quiescent: the registry must hold exactly the live streams (+ baseline)
    let baseline = run.registry_baseline.unwrap_or(0);
    let mut registry_end = None;
    let mut live_end;
    let check_until = Instant::now() + Duration::from_secs(5);
    loop {
        live_end = ctx.stats.live.load(Relaxed);
        registry_end = ctx.registry_total().await.or(registry_end);
        if registry_end == Some(baseline + live_end) || Instant::now() >= check_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let server_live_end = ctx.server_live().await;
    let rss_end = c.server_pid.and_then(vmrss_kb);
    let mut v = run.common_json("churn", &c);
    run.stop().await;
    // after closing every stream the registry must be back to the baseline
    let mut registry_after_close = None;
    let close_until = Instant::now() + Duration::from_secs(10);
    loop {
        registry_after_close = ctx.registry_total().await.or(registry_after_close);
        if registry_after_close == Some(baseline) || Instant::now() >= close_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = &ctx.stats;
    let reconnect_failures = s.failed() - initial_failed;
    let delivery = account(&ctx, grace_ms.saturating_mul(1_000_000));
    let samples = samples.lock().unwrap();
    // during the churn: registry - baseline vs. the client's live streams,
    // off by at most the streams opening or closing at that moment
    let max_gap = samples
        .registry
        .iter()
        .filter_map(|x| {
            let r = x.registry? as i64 - baseline as i64;
            let (lo, hi) = (
                x.live_before.min(x.live_after),
                x.live_before.max(x.live_after),
            );
            Some((lo as i64 - r).max(r - hi as i64).max(0))
        })
        .max();
    let errors =
        reconnect_failures + s.ended.load(Relaxed) + delivery["send_errors"].as_u64().unwrap_or(0);
    merge(
        &mut v,
        json!({
            "delivery": delivery,
            "churn": {
                "secs": r3(churn_secs),
                "reconnect_pct": reconnect_pct,
                "send_rate_target": send_rate,
                "reconnects_requested": requested,
                "reconnects_done": s.reconnects_done.load(Relaxed),
                "reconnect_attempts": s.attempts.load(Relaxed) - attempts0,
                "reconnect_failures": reconnect_failures,
                "reconnect_latency": lat_json(&mut s.reconnect_us.lock().unwrap()),
                "errors": errors,
                "live_end": live_end,
                "registry_end": registry_end,
                "registry_matches_live": registry_end == Some(baseline + live_end),
                "server_live_end": server_live_end,
                "registry_after_close": registry_after_close,
                "registry_back_to_baseline": registry_after_close == Some(baseline),
                "registry_max_gap_during": max_gap,
                "registry_samples": samples.registry.iter().map(|x| json!({
                    "t": r3(x.t - churn_start), "live_before": x.live_before, "live": x.live_after,
                    "connecting": x.connecting,
                    "registry": x.registry, "server_live": x.server_live,
                })).collect::<Vec<_>>(),
                "rss_end_kb": rss_end,
            },
            "rss": rss_json(
                &samples.rss.iter().map(|&(t, kb)| (t - churn_start, kb)).collect::<Vec<_>>(),
                60.0_f64.min(churn_secs / 2.0),
            ),
        }),
    );
    Ok(v)
}
