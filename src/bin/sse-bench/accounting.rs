//! The accounting at the end of a run: which stream was expected to get which
//! message, what arrived, lost, duplicated or misrouted, and the latencies.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

use serde_json::{json, Value};

use crate::clock::secs;
use crate::figures::{lat_json, r3};
use crate::state::{Ctx, Instance, Msg};

/// The delivery report of the run behind `ctx`.
pub(crate) fn account(ctx: &Ctx, grace_ns: u64) -> Value {
    let instances = ctx.instances.lock().unwrap();
    let msgs = ctx.msgs.lock().unwrap();
    tally(
        &instances,
        &msgs,
        ctx.stats.last_recv_ns.load(Relaxed),
        grace_ns,
    )
}

/// Expected vs. received, per (stream, message): a stream is expected to get
/// a message when it was established before the send started and was still
/// open `grace` after the send returned (or until the end of the run).
/// `last_recv_ns`: when the last bench message arrived (the end of the
/// delivery span).
fn tally(instances: &[Instance], all_msgs: &[Msg], last_recv_ns: u64, grace_ns: u64) -> Value {
    let mut msgs: Vec<&Msg> = all_msgs.iter().collect();
    msgs.sort_by_key(|m| m.seq);
    let by_seq: HashMap<u64, &Msg> = msgs.iter().map(|m| (m.seq, *m)).collect();
    let mut by_user: HashMap<u32, Vec<&Instance>> = HashMap::new();
    for i in instances.iter() {
        by_user.entry(i.user).or_default().push(i);
    }
    let eligible = |i: &Instance, m: &Msg| {
        i.est_ns <= m.start_ns && i.end_ns >= m.end_ns.saturating_add(grace_ns)
    };

    let mut expected = 0u64;
    for m in msgs.iter().filter(|m| m.ok) {
        expected += match m.to {
            Some(u) => by_user
                .get(&u)
                .map_or(0, |v| v.iter().filter(|i| eligible(i, m)).count() as u64),
            None => instances.iter().filter(|i| eligible(i, m)).count() as u64,
        };
    }
    let mut received = 0u64; // unique, by expected streams
    let mut extra = 0u64; // unique, by streams not expected to get it (churn edges)
    let mut duplicates = 0u64;
    let mut misrouted = 0u64;
    let mut unknown = 0u64;
    let mut lat: Vec<u64> = Vec::new();
    // broadcasts: (deliveries to expected streams, max latency)
    let mut per_seq: HashMap<u64, (u64, u64)> = HashMap::new();
    for i in instances.iter() {
        let mut recv = i.recv.clone();
        recv.sort_unstable_by_key(|r| r.0);
        let mut last: Option<u32> = None;
        for (seq, lat_us) in recv {
            if last == Some(seq) {
                duplicates += 1;
                continue;
            }
            last = Some(seq);
            lat.push(lat_us as u64);
            let Some(m) = by_seq.get(&(seq as u64)) else {
                unknown += 1;
                continue;
            };
            if m.to.is_some_and(|u| u != i.user) {
                misrouted += 1;
                continue;
            }
            if m.ok && eligible(i, m) {
                received += 1;
                let e = per_seq.entry(m.seq).or_insert((0, 0));
                e.0 += 1;
                e.1 = e.1.max(lat_us as u64);
            } else {
                extra += 1;
            }
        }
    }
    let routed: u64 = msgs.iter().filter(|m| m.ok).map(|m| m.routed).sum();
    let routed_mismatch = msgs
        .iter()
        .filter(|m| m.ok && m.routed != m.live_at_send)
        .count();
    let mut rtt: Vec<u64> = msgs
        .iter()
        .filter(|m| m.ok)
        .map(|m| (m.end_ns - m.start_ns) / 1000)
        .collect();
    let first_send = msgs.iter().map(|m| m.start_ns).min().unwrap_or(0);
    let last_send_end = msgs.iter().map(|m| m.end_ns).max().unwrap_or(0);
    let span = last_recv_ns.max(last_send_end).saturating_sub(first_send);
    let delivered = received + extra;
    // broadcast completion: every expected stream got it
    let mut completion: Vec<u64> = Vec::new();
    let mut incomplete = 0u64;
    for m in msgs.iter().filter(|m| m.ok && m.to.is_none()) {
        let exp = instances.iter().filter(|i| eligible(i, m)).count() as u64;
        match per_seq.get(&m.seq) {
            Some(&(n, max)) if n >= exp => completion.push(max),
            _ if exp == 0 => {}
            _ => incomplete += 1,
        }
    }
    json!({
        "sends": msgs.len(),
        "sends_ok": msgs.iter().filter(|m| m.ok).count(),
        "send_errors": msgs.iter().filter(|m| !m.ok).count(),
        "send_rate": if last_send_end > first_send { r3(msgs.len() as f64 / secs(last_send_end - first_send)) } else { 0.0 },
        "send_rtt": lat_json(&mut rtt),
        "expected": expected,
        "received": received,
        "lost": expected.saturating_sub(received),
        "delivery_ratio": if expected > 0 { received as f64 / expected as f64 } else { 1.0 },
        "duplicates": duplicates,
        "extra": extra,
        "misrouted": misrouted,
        "unknown_seq": unknown,
        "routed_by_server": routed,
        "routed_mismatch": routed_mismatch,
        "delivered": delivered,
        "delivered_per_sec": if span > 0 { r3(delivered as f64 / secs(span)) } else { 0.0 },
        "e2e": lat_json(&mut lat),
        "broadcast_completion": lat_json(&mut completion),
        "broadcast_incomplete": incomplete,
    })
}
