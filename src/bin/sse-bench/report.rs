//! The report: the JSON objects the modes build merged into one, and the
//! human summary of it on stderr.

use serde_json::Value;

/// Adds the fields of `b` to the object `a` (the mode's own beside the
/// common ones).
pub(crate) fn merge(a: &mut Value, b: Value) {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
}

/// The summary of the JSON line, for a person watching the run.
pub(crate) fn human(v: &Value) {
    eprintln!("=== sse-bench {} ===", v["mode"].as_str().unwrap_or(""));
    eprintln!(
        "streams: {} requested, {} established, {} failed; {:.0} streams/s; {} ended by the server",
        v["conns"],
        v["established"],
        v["failed"],
        v["connect_rate"].as_f64().unwrap_or(0.0),
        v["ended_by_server"]
    );
    let cl = &v["connect"]["latency"];
    eprintln!(
        "connect (to connection_established): p50 {} ms, p99 {} ms, max {} ms; {} retried after a 503",
        cl["p50_ms"], cl["p99_ms"], cl["max_ms"], v["connect"]["retried_503"]
    );
    if let Some(b) = v["server"]["rss_bytes_per_stream"].as_f64() {
        eprintln!(
            "server RSS: {} kB before, {} kB connected ({b:.0} bytes/stream), {} kB at the end",
            v["server"]["rss_before_kb"],
            v["server"]["rss_connected_kb"],
            v["server"]["rss_end_kb"]
        );
    }
    if let Some(d) = v.get("delivery") {
        eprintln!(
            "sends: {} ok, {} errors, {} msg/s; send round trip p50 {} ms, p99 {} ms",
            d["sends_ok"],
            d["send_errors"],
            d["send_rate"],
            d["send_rtt"]["p50_ms"],
            d["send_rtt"]["p99_ms"]
        );
        eprintln!(
            "deliveries: {} of {} expected (ratio {}), {} lost, {} duplicates, {} extra; {} delivered msg/s",
            d["received"], d["expected"], d["delivery_ratio"], d["lost"], d["duplicates"], d["extra"], d["delivered_per_sec"]
        );
        eprintln!(
            "end-to-end latency: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
            d["e2e"]["p50_ms"], d["e2e"]["p90_ms"], d["e2e"]["p99_ms"], d["e2e"]["max_ms"]
        );
        if d["broadcast_completion"]["count"].as_u64().unwrap_or(0) > 0 {
            eprintln!(
                "broadcast completion (every stream has it): p50 {} ms, p99 {} ms, max {} ms; {} incomplete",
                d["broadcast_completion"]["p50_ms"],
                d["broadcast_completion"]["p99_ms"],
                d["broadcast_completion"]["max_ms"],
                d["broadcast_incomplete"]
            );
        }
    }
    if let Some(ch) = v.get("churn") {
        eprintln!(
            "churn: {} reconnects requested, {} done, {} reconnect failures, {} errors",
            ch["reconnects_requested"],
            ch["reconnects_done"],
            ch["reconnect_failures"],
            ch["errors"]
        );
        eprintln!(
            "reconnect (to connection_established): p50 {} ms, p99 {} ms, max {} ms",
            ch["reconnect_latency"]["p50_ms"],
            ch["reconnect_latency"]["p99_ms"],
            ch["reconnect_latency"]["max_ms"]
        );
        eprintln!(
            "registry during the churn: off by at most {} from the live streams",
            ch["registry_max_gap_during"]
        );
        eprintln!(
            "registry at the end: {} (baseline {}) for {} live streams: {}",
            ch["registry_end"],
            v["registry_baseline"],
            ch["live_end"],
            if ch["registry_matches_live"].as_bool() == Some(true) {
                "match"
            } else {
                "MISMATCH"
            }
        );
        eprintln!(
            "registry after closing every stream: {} (back to baseline: {})",
            ch["registry_after_close"], ch["registry_back_to_baseline"]
        );
    }
    if let Some(r) = v.get("rss").filter(|r| !r["min_kb"].is_null()) {
        eprintln!(
            "server RSS over the run: min {} kB, max {} kB, end {} kB",
            r["min_kb"], r["max_kb"], r["end_kb"]
        );
    }
    if let Some(e) = v["errors"].as_array().filter(|e| !e.is_empty()) {
        eprintln!("first errors:");
        for x in e {
            eprintln!("  {}", x.as_str().unwrap_or(""));
        }
    }
}
