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
    for line in summary(v) {
        eprintln!("{line}");
    }
}

/// The lines of the summary: those of the mode's own sections only.
fn summary(v: &Value) -> Vec<String> {
    if v["mode"] == "registry" {
        return crate::registry::summary(v);
    }
    let mut out = Vec::new();
    out.push(format!(
        "=== sse-bench {} ===",
        v["mode"].as_str().unwrap_or("")
    ));
    out.push(format!(
        "streams: {} requested, {} established, {} failed; {:.0} streams/s; {} ended by the server",
        v["conns"],
        v["established"],
        v["failed"],
        v["connect_rate"].as_f64().unwrap_or(0.0),
        v["ended_by_server"]
    ));
    let cl = &v["connect"]["latency"];
    out.push(format!(
        "connect (to connection_established): p50 {} ms, p99 {} ms, max {} ms; {} retried after a 503",
        cl["p50_ms"], cl["p99_ms"], cl["max_ms"], v["connect"]["retried_503"]
    ));
    if let Some(b) = v["server"]["rss_bytes_per_stream"].as_f64() {
        out.push(format!(
            "server RSS: {} kB before, {} kB connected ({b:.0} bytes/stream), {} kB at the end",
            v["server"]["rss_before_kb"],
            v["server"]["rss_connected_kb"],
            v["server"]["rss_end_kb"]
        ));
    }
    if let Some(d) = v.get("delivery") {
        out.push(format!(
            "sends: {} ok, {} errors, {} msg/s; send round trip p50 {} ms, p99 {} ms",
            d["sends_ok"],
            d["send_errors"],
            d["send_rate"],
            d["send_rtt"]["p50_ms"],
            d["send_rtt"]["p99_ms"]
        ));
        out.push(format!(
            "deliveries: {} of {} expected (ratio {}), {} lost, {} duplicates, {} extra; {} delivered msg/s",
            d["received"], d["expected"], d["delivery_ratio"], d["lost"], d["duplicates"], d["extra"], d["delivered_per_sec"]
        ));
        out.push(format!(
            "end-to-end latency: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
            d["e2e"]["p50_ms"], d["e2e"]["p90_ms"], d["e2e"]["p99_ms"], d["e2e"]["max_ms"]
        ));
        if d["broadcast_completion"]["count"].as_u64().unwrap_or(0) > 0 {
            out.push(format!(
                "broadcast completion (every stream has it): p50 {} ms, p99 {} ms, max {} ms; {} incomplete",
                d["broadcast_completion"]["p50_ms"],
                d["broadcast_completion"]["p99_ms"],
                d["broadcast_completion"]["max_ms"],
                d["broadcast_incomplete"]
            ));
        }
        if d["topic_completion"]["count"].as_u64().unwrap_or(0) > 0 {
            out.push(format!(
                "topic completion (every stream following it has it): p50 {} ms, p99 {} ms, max {} ms; {} incomplete",
                d["topic_completion"]["p50_ms"],
                d["topic_completion"]["p99_ms"],
                d["topic_completion"]["max_ms"],
                d["topic_incomplete"]
            ));
        }
    }
    if let Some(ch) = v.get("churn") {
        out.push(format!(
            "churn: {} reconnects requested, {} done, {} reconnect failures, {} errors",
            ch["reconnects_requested"],
            ch["reconnects_done"],
            ch["reconnect_failures"],
            ch["errors"]
        ));
        out.push(format!(
            "reconnect (to connection_established): p50 {} ms, p99 {} ms, max {} ms",
            ch["reconnect_latency"]["p50_ms"],
            ch["reconnect_latency"]["p99_ms"],
            ch["reconnect_latency"]["max_ms"]
        ));
        out.push(format!(
            "registry during the churn: off by at most {} from the live streams",
            ch["registry_max_gap_during"]
        ));
        out.push(format!(
            "registry at the end: {} (baseline {}) for {} live streams: {}",
            ch["registry_end"],
            v["registry_baseline"],
            ch["live_end"],
            if ch["registry_matches_live"].as_bool() == Some(true) {
                "match"
            } else {
                "MISMATCH"
            }
        ));
        out.push(format!(
            "registry after closing every stream: {} (back to baseline: {})",
            ch["registry_after_close"], ch["registry_back_to_baseline"]
        ));
    }
    if let Some(r) = v.get("rss").filter(|r| !r["min_kb"].is_null()) {
        out.push(format!(
            "server RSS over the run: min {} kB, max {} kB, end {} kB",
            r["min_kb"], r["max_kb"], r["end_kb"]
        ));
    }
    if let Some(e) = v["errors"].as_array().filter(|e| !e.is_empty()) {
        out.push("first errors:".into());
        for x in e {
            out.push(format!("  {}", x.as_str().unwrap_or("")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hold_line() -> Value {
        json!({
            "mode": "hold", "conns": 2, "established": 2, "failed": 0,
            "connect_rate": 99.6, "ended_by_server": 0,
            "connect": {"retried_503": 0,
                        "latency": {"p50_ms": 1.5, "p99_ms": 2.0, "max_ms": 2.0}},
            "server": {"rss_bytes_per_stream": null},
            "errors": [],
        })
    }

    #[test]
    fn merge_adds_the_mode_fields() {
        let mut v = json!({"a": 1, "b": 2});
        merge(&mut v, json!({"b": 3, "c": {"d": 4}}));
        assert_eq!(v, json!({"a": 1, "b": 3, "c": {"d": 4}}));
    }

    #[test]
    fn the_summary_shows_the_sections_the_line_has() {
        let lines = summary(&hold_line());
        assert_eq!(
            lines,
            [
                "=== sse-bench hold ===",
                "streams: 2 requested, 2 established, 0 failed; 100 streams/s; 0 ended by the server",
                "connect (to connection_established): p50 1.5 ms, p99 2.0 ms, max 2.0 ms; 0 retried after a 503",
            ]
        );

        let mut v = hold_line();
        merge(
            &mut v,
            json!({
                "mode": "churn",
                "registry_baseline": 0,
                "churn": {"registry_end": 5, "live_end": 4, "registry_matches_live": false},
                "errors": ["connect refused"],
            }),
        );
        let lines = summary(&v);
        assert!(
            lines.contains(
                &"registry at the end: 5 (baseline 0) for 4 live streams: MISMATCH".to_string()
            ),
            "{lines:#?}"
        );
        assert_eq!(
            lines[lines.len() - 2..],
            ["first errors:", "  connect refused"]
        );
        assert!(
            !lines.iter().any(|l| l.starts_with("sends:")),
            "no delivery section: {lines:#?}"
        );
    }
}
