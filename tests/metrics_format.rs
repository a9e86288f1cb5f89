//! `GET /metrics` content negotiation: OpenMetrics for a scraper that asks
//! for it (Prometheus's own `Accept`), else the classic text format; each
//! parsed by the Prometheus Python client's parser for that format
//! (`tests/clients/metrics_parse.py`), and both carrying the same series.
//! Needs python3 with prometheus-client (`.ci/run` installs it).
mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// What Prometheus 2.x/3.x sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

async fn scrape(admin: &str, accept: Option<&str>) -> (String, String) {
    let mut req = http().get(format!("{admin}/metrics"));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = req.send().await.expect("metrics");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (ct, resp.text().await.expect("metrics body"))
}

/// Families as the Python client parsed them.
fn parse(format: &str, text: &str) -> BTreeMap<String, Value> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/metrics_parse.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(format)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics to the parser");
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "the {format} parser rejected:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parser prints JSON")
}

/// sample name + sorted labels -> value, over every family.
fn series(families: &BTreeMap<String, Value>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for fam in families.values() {
        for s in fam["samples"].as_array().expect("samples") {
            let labels: BTreeMap<String, String> =
                serde_json::from_value(s[1].clone()).expect("labels");
            let key = format!("{}{labels:?}", s[0].as_str().expect("name"));
            out.insert(key, s[2].as_f64().expect("value"));
        }
    }
    out
}

#[tokio::test]
async fn metrics_classic_by_default_openmetrics_when_asked() {
    let probe = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output()
        .expect("python3 must be installed");
    assert!(
        probe.status.success(),
        "python3 lacks prometheus-client (.ci/run installs it)\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let redis = RedisServer::start();
    let node = TestNode::start(test_config(&redis.url())).await;
    let (mut client, _) = SseClient::connect(&node, "metered").await;
    let (status, body) = send(&node.admin_url(""), json!({"to": "metered", "data": 1})).await;
    assert_eq!(status, 200, "{body}");
    assert!(client.next_event(Duration::from_secs(5)).await.is_some());
    let admin = node.admin_url("");

    let (ct, classic) = scrape(&admin, None).await;
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!classic.contains("# EOF"), "{classic}");
    assert!(
        classic.contains("# TYPE sse_notify_connects_total counter\n"),
        "{classic}"
    );
    for accept in ["text/plain;version=0.0.4", "*/*", "application/json"] {
        let (ct, _) = scrape(&admin, Some(accept)).await;
        assert!(
            ct.starts_with("text/plain; version=0.0.4"),
            "{accept}: {ct}"
        );
    }
    let (ct, om) = scrape(&admin, Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(
        ct,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");

    let classic_families = parse("classic", &classic);
    let om_families = parse("openmetrics", &om);
    let names: Vec<&String> = classic_families.keys().collect();
    assert_eq!(names, om_families.keys().collect::<Vec<_>>());
    for (name, fam) in &classic_families {
        assert_eq!(fam["type"], om_families[name]["type"], "type of {name}");
    }
    assert_eq!(classic_families["sse_notify_connects"]["type"], "counter");
    assert_eq!(
        classic_families["sse_notify_live_connections"]["type"],
        "gauge"
    );

    let (c, o) = (series(&classic_families), series(&om_families));
    // The two scrapes were apart: only /metrics' own request counter moved.
    let steady = |m: &BTreeMap<String, f64>| -> BTreeMap<String, f64> {
        m.iter()
            .filter(|(k, _)| !k.contains("\"metrics\""))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    };
    assert_eq!(steady(&c), steady(&o));
    assert_eq!(c["sse_notify_connects_total{}"], 1.0, "{c:?}");
    assert_eq!(c["sse_notify_live_connections{}"], 1.0, "{c:?}");
    assert_eq!(c["sse_notify_messages_delivered_total{}"], 1.0, "{c:?}");
    assert!(
        c.keys()
            .any(|k| k.starts_with("sse_notify_http_requests_total{") && k.contains("\"send\"")),
        "{c:?}"
    );
}
