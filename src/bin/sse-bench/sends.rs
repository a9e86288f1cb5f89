//! The sends: one message through the admin API, recorded for the
//! accounting, and the loop that paces unicast sends to random users.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::clock::{now_ns, secs};
use crate::state::{chain, Ctx, Dest, Msg};

/// POST {base}/send/ with {"seq", "ts_ns"}; records the outcome.
pub(crate) async fn send_one(ctx: &Ctx, to: Dest) {
    let seq = ctx.next_seq.fetch_add(1, Relaxed);
    let live_at_send = match &to {
        Dest::User(u) => ctx.user_live[*u as usize].load(Relaxed) as u64,
        Dest::All => ctx.stats.live.load(Relaxed),
        Dest::Topic(t) => ctx
            .slots
            .iter()
            .filter(|s| s.live.load(Relaxed) && s.topics.iter().any(|x| **x == **t))
            .count() as u64,
    };
    let start_ns = now_ns();
    let mut body = json!({"data": {"seq": seq, "ts_ns": start_ns}, "event": "bench"});
    match &to {
        Dest::User(u) => body["to"] = json!(ctx.uname(*u)),
        Dest::All => {}
        Dest::Topic(t) => body["topic"] = json!(&**t),
    }
    let mut req = ctx.http.post(format!("{}/send/", ctx.api)).json(&body);
    if let Some(t) = &ctx.api_token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await;
    let (ok, routed) = match res {
        Ok(r) if r.status().is_success() => match r.json::<Value>().await {
            Ok(v) => (true, v["data"]["connections"].as_u64().unwrap_or(0)),
            Err(e) => {
                ctx.stats.note(format!("send: bad response: {e}"));
                (false, 0)
            }
        },
        Ok(r) => {
            let st = r.status();
            let text = r.text().await.unwrap_or_default();
            ctx.stats
                .note(format!("send: status {st}: {}", head(&text, 200)));
            (false, 0)
        }
        Err(e) => {
            ctx.stats
                .note(format!("send at {:.1}s: {}", secs(start_ns), chain(&e)));
            (false, 0)
        }
    };
    let end_ns = now_ns();
    if ok {
        ctx.stats.send_ok.fetch_add(1, Relaxed);
        ctx.stats.expected_est.fetch_add(live_at_send, Relaxed);
    } else {
        ctx.stats.send_err.fetch_add(1, Relaxed);
    }
    ctx.msgs.lock().unwrap().push(Msg {
        seq,
        to,
        start_ns,
        end_ns,
        ok,
        routed,
        live_at_send,
    });
}

/// Sends at `rate` msg/s (0: as fast as `publishers` allow) to random users
/// until `count` messages are sent, `until` passes or `stop` fires.
pub(crate) async fn send_loop(
    ctx: Arc<Ctx>,
    count: Option<u64>,
    rate: f64,
    publishers: usize,
    until: tokio::time::Instant,
    stop: CancellationToken,
    mut rng: fastrand::Rng,
) {
    let sem = Arc::new(Semaphore::new(publishers.max(1)));
    let t0 = tokio::time::Instant::now();
    let mut issued: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        if count.is_some_and(|c| issued >= c) || stop.is_cancelled() {
            break;
        }
        if tokio::time::Instant::now() >= until {
            break;
        }
        if rate > 0.0 {
            let due = (t0.elapsed().as_secs_f64() * rate) as u64;
            if issued >= due {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => break,
                }
                continue;
            }
        }
        let permit = tokio::select! {
            p = sem.clone().acquire_owned() => p.expect("semaphore"),
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(until) => break,
        };
        let to = rng.u32(0..ctx.users as u32);
        issued += 1;
        let c = ctx.clone();
        tokio::spawn(async move {
            send_one(&c, Dest::User(to)).await;
            drop(permit);
        });
    }
    // wait for the sends in flight
    let _ = tokio::time::timeout(
        Duration::from_secs(15),
        sem.acquire_many(publishers.max(1) as u32),
    )
    .await;
}

/// The first `max` bytes of `s` at most, cut at a character boundary (an
/// error body may be any text: slicing it at a fixed byte could panic).
fn head(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_cuts_at_a_character_boundary() {
        assert_eq!(head("abc", 200), "abc");
        assert_eq!(head("abcdef", 3), "abc");
        // 'é' is two bytes: a cut inside it keeps the character out
        assert_eq!(head("aé", 2), "a");
        assert_eq!(head("aé", 3), "aé");
        assert_eq!(head("", 5), "");
        let long = "€".repeat(100);
        assert_eq!(head(&long, 200).len(), 198);
    }
}
