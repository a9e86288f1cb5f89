//! The accounting at the end of a run: which stream was expected to get which
//! message, what arrived, lost, duplicated or misrouted, and the latencies.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

use serde_json::{json, Value};

use crate::clock::secs;
use crate::figures::{lat_json, r3};
use crate::state::{Ctx, Dest, Instance, Msg};

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

    // the streams a message is expected to reach
    let expected_of = |m: &Msg| match m.to {
        Dest::User(u) => by_user
            .get(&u)
            .map_or(0, |v| v.iter().filter(|i| eligible(i, m)).count() as u64),
        _ => instances
            .iter()
            .filter(|i| m.to.reaches(i.user, &i.topics) && eligible(i, m))
            .count() as u64,
    };
    let mut expected = 0u64;
    for m in msgs.iter().filter(|m| m.ok) {
        expected += expected_of(m);
    }
    let mut received = 0u64; // unique, by expected streams
    let mut extra = 0u64; // unique, by streams not expected to get it (churn edges)
    let mut duplicates = 0u64;
    let mut misrouted = 0u64;
    let mut unknown = 0u64;
    let mut lat: Vec<u64> = Vec::new();
    // broadcasts and topic messages: (deliveries to expected streams, max
    // latency)
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
            let Some(m) = by_seq.get(&(seq as u64)) else {
                unknown += 1;
                continue;
            };
            if !m.to.reaches(i.user, &i.topics) {
                misrouted += 1;
                continue;
            }
            // e2e covers what `delivered` counts: an unknown seq is another
            // process's message, its ts_ns read on another clock
            lat.push(lat_us as u64);
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
    // completion of a broadcast or a topic message: every expected stream
    // got it
    let mut completion: [Vec<u64>; 2] = Default::default();
    let mut incomplete = [0u64; 2];
    for m in msgs.iter().filter(|m| m.ok) {
        let k = match m.to {
            Dest::User(_) => continue,
            Dest::All => 0,
            Dest::Topic(_) => 1,
        };
        let exp = expected_of(m);
        match per_seq.get(&m.seq) {
            Some(&(n, max)) if n >= exp => completion[k].push(max),
            _ if exp == 0 => {}
            _ => incomplete[k] += 1,
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
        // in send order: the first after the streams opened may pay for
        // their first writes
        "broadcast_completions_ms": completion[0].iter().map(|&us| r3(us as f64 / 1000.0)).collect::<Vec<_>>(),
        "topic_completions_ms": completion[1].iter().map(|&us| r3(us as f64 / 1000.0)).collect::<Vec<_>>(),
        "broadcast_completion": lat_json(&mut completion[0]),
        "broadcast_incomplete": incomplete[0],
        "topic_completion": lat_json(&mut completion[1]),
        "topic_incomplete": incomplete[1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const MS: u64 = 1_000_000;
    const OPEN: u64 = u64::MAX;

    fn stream(user: u32, est_ms: u64, end_ns: u64, recv: &[(u32, u32)]) -> Instance {
        Instance {
            user,
            topics: Arc::from([]),
            est_ns: est_ms * MS,
            end_ns,
            recv: recv.to_vec(),
        }
    }

    fn msg(seq: u64, to: Option<u32>, ms: (u64, u64), ok: bool, routed: u64) -> Msg {
        Msg {
            seq,
            to: to.map_or(Dest::All, Dest::User),
            start_ns: ms.0 * MS,
            end_ns: ms.1 * MS,
            ok,
            routed,
            live_at_send: 1,
        }
    }

    /// Three streams, two users: a unicast to each, a broadcast, a failed
    /// send; (seq, latency µs) as the streams recorded them.
    fn scenario() -> (Vec<Instance>, Vec<Msg>) {
        let instances = vec![
            // user 0 from the start: seq 0 twice, the broadcast
            stream(0, 100, OPEN, &[(2, 700), (0, 600), (0, 500)]),
            // user 1, closed at 5 s: seq 1, and a seq no send of this run has
            stream(1, 100, 5000 * MS, &[(1, 800), (9, 100)]),
            // user 0 again, opened after seq 0 started: seq 0 is extra; seq 1
            // was for user 1
            stream(0, 3000, OPEN, &[(0, 900), (1, 50)]),
        ];
        let msgs = vec![
            // recorded in the order the sends returned
            msg(2, None, (4000, 4500), true, 2),
            msg(0, Some(0), (1000, 2000), true, 1),
            msg(3, Some(1), (5000, 6000), false, 0),
            msg(1, Some(1), (1000, 4000), true, 1),
        ];
        (instances, msgs)
    }

    #[test]
    fn counts_each_stream_against_what_it_was_live_for() {
        let (instances, msgs) = scenario();
        let v = tally(&instances, &msgs, 7000 * MS, 0);
        assert_eq!(v["sends"], 4);
        assert_eq!(v["sends_ok"], 3);
        assert_eq!(v["send_errors"], 1);
        // seq 0: the first user-0 stream; seq 1: the user-1 stream; the
        // broadcast: all three (the late one was open before it started)
        assert_eq!(v["expected"], 5, "{v}");
        assert_eq!(v["received"], 3, "{v}");
        assert_eq!(v["lost"], 2, "{v}");
        assert_eq!(v["delivery_ratio"].as_f64(), Some(0.6));
        assert_eq!(v["duplicates"], 1, "{v}");
        assert_eq!(v["extra"], 1, "{v}");
        assert_eq!(v["misrouted"], 1, "{v}");
        assert_eq!(v["unknown_seq"], 1, "{v}");
        assert_eq!(v["delivered"], 4, "{v}");
        // one copy of the duplicate counts (500 or 600 µs); misrouted and
        // unknown deliveries carry no latency
        assert_eq!(v["e2e"]["count"], 4, "{v}");
        assert_eq!(v["e2e"]["p50_ms"].as_f64(), Some(0.7), "{v}");
        assert_eq!(v["e2e"]["max_ms"].as_f64(), Some(0.9), "{v}");
        // the broadcast reached one of its three streams
        assert_eq!(v["broadcast_completion"]["count"], 0, "{v}");
        assert_eq!(v["broadcast_incomplete"], 1, "{v}");
        // the server routed the broadcast to 2, this client saw 1 live
        assert_eq!(v["routed_by_server"], 4, "{v}");
        assert_eq!(v["routed_mismatch"], 1, "{v}");
        // round trips of the ok sends: 1 s, 3 s, 0.5 s
        assert_eq!(v["send_rtt"]["count"], 3);
        assert_eq!(v["send_rtt"]["max_ms"].as_f64(), Some(3000.0));
        // 4 sends from 1 s to 6 s; 4 deliveries from 1 s to the last at 7 s
        assert_eq!(v["send_rate"].as_f64(), Some(0.8));
        assert_eq!(v["delivered_per_sec"].as_f64(), Some(0.667));
    }

    #[test]
    fn a_stream_closed_within_the_grace_is_not_expected() {
        let (instances, msgs) = scenario();
        // 2 s grace: the user-1 stream (closed at 5 s) is no longer expected
        // to get seq 1 (returned at 4 s) nor the broadcast (4.5 s)
        let v = tally(&instances, &msgs, 7000 * MS, 2000 * MS);
        assert_eq!(v["expected"], 3, "{v}");
        assert_eq!(v["received"], 2, "{v}");
        assert_eq!(v["extra"], 2, "{v}");
        assert_eq!(v["lost"], 1, "{v}");
        assert_eq!(v["delivered"], 4, "{v}");
    }

    #[test]
    fn a_broadcast_completes_when_every_expected_stream_has_it() {
        let instances = vec![
            stream(0, 0, OPEN, &[(0, 1500)]),
            stream(1, 0, OPEN, &[(0, 2500)]),
            // opened after the broadcast started: not waited for
            stream(2, 2000, OPEN, &[]),
        ];
        let msgs = vec![msg(0, None, (1000, 1100), true, 2)];
        let v = tally(&instances, &msgs, 1200 * MS, 0);
        assert_eq!(v["expected"], 2, "{v}");
        assert_eq!(v["lost"], 0, "{v}");
        assert_eq!(v["broadcast_incomplete"], 0, "{v}");
        assert_eq!(v["broadcast_completion"]["count"], 1, "{v}");
        // complete when the slower stream had it
        assert_eq!(v["broadcast_completion"]["max_ms"].as_f64(), Some(2.5));
    }

    #[test]
    fn a_topic_message_is_expected_by_its_followers_only() {
        let follow = |user, topics: &[&str], recv: &[(u32, u32)]| Instance {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            ..stream(user, 0, OPEN, recv)
        };
        let instances = vec![
            follow(0, &["news", "s0"], &[(0, 1500), (1, 400)]),
            follow(1, &["news"], &[(0, 2500), (1, 300)]),
            // follows another topic: seq 0 should not have reached it
            follow(2, &["s2"], &[(0, 900), (1, 200)]),
            // follows it, never got it
            follow(3, &["news"], &[(1, 100)]),
        ];
        let mut msgs = vec![
            msg(0, None, (1000, 1100), true, 3),
            msg(1, None, (2000, 2100), true, 4),
            msg(2, None, (3000, 3100), true, 1),
        ];
        msgs[0].to = Dest::Topic("news".into());
        msgs[2].to = Dest::Topic("s0".into());
        let v = tally(&instances, &msgs, 3200 * MS, 0);
        // seq 0: the three news followers; seq 1 (a broadcast): all four;
        // seq 2: stream 0, which lost it
        assert_eq!(v["expected"], 8, "{v}");
        assert_eq!(v["received"], 6, "{v}");
        assert_eq!(v["lost"], 2, "{v}");
        assert_eq!(v["misrouted"], 1, "{v}");
        assert_eq!(v["topic_completion"]["count"], 0, "{v}");
        assert_eq!(v["topic_incomplete"], 2, "{v}");
        assert_eq!(v["broadcast_completion"]["count"], 1, "{v}");
        assert_eq!(v["broadcast_completion"]["max_ms"].as_f64(), Some(0.4));

        // once stream 3 has seq 0 and stream 0 seq 2, both complete, each
        // when its slowest follower had it
        let mut instances = instances;
        instances[3].recv.push((0, 3500));
        instances[0].recv.push((2, 700));
        let v = tally(&instances, &msgs, 3200 * MS, 0);
        assert_eq!(v["lost"], 0, "{v}");
        assert_eq!(v["topic_incomplete"], 0, "{v}");
        assert_eq!(v["topic_completion"]["count"], 2, "{v}");
        assert_eq!(v["topic_completion"]["max_ms"].as_f64(), Some(3.5));
        assert_eq!(v["topic_completion"]["p50_ms"].as_f64(), Some(0.7));
        assert_eq!(
            v["topic_completions_ms"],
            serde_json::json!([3.5, 0.7]),
            "send order"
        );
    }

    #[test]
    fn no_sends_give_a_full_ratio_and_no_rates() {
        let v = tally(&[stream(0, 0, OPEN, &[])], &[], 0, 0);
        assert_eq!(v["expected"], 0);
        assert_eq!(v["delivery_ratio"].as_f64(), Some(1.0));
        assert_eq!(v["send_rate"].as_f64(), Some(0.0));
        assert_eq!(v["delivered_per_sec"].as_f64(), Some(0.0));
    }
}
