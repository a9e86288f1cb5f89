//! Property tests: arbitrary bodies, usernames and paths against a real node
//! never get a 5xx, always get the envelope, and never deliver bad input.
mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use serde_json::Value;

struct Fixture {
    rt: tokio::runtime::Runtime,
    admin: String,
    stream: String,
    _redis: RedisServer,
    _node: TestNode,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let redis = RedisServer::start();
        let node = rt.block_on(TestNode::start(test_config(&redis.url())));
        Fixture {
            admin: node.admin_url(""),
            stream: node.stream_url(),
            rt,
            _redis: redis,
            _node: node,
        }
    })
}

/// Checks one answer: no 5xx, and every error is the JSON envelope.
fn check(status: u16, body: &str) -> Result<(), TestCaseError> {
    prop_assert!(status < 500, "status {status}: {body}");
    if status >= 400 {
        let v: Value = serde_json::from_str(body)
            .map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {body}")))?;
        prop_assert_eq!(v["code"].as_u64(), Some(status as u64));
        prop_assert!(v["message"].is_string());
    }
    Ok(())
}

fn post(path: &str, body: Vec<u8>) -> (u16, String) {
    let f = fixture();
    f.rt.block_on(async {
        let resp = http()
            .post(format!("{}{}", f.admin, path))
            .body(body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    })
}

/// JSON-looking bodies: objects with the send fields and random values,
/// which reach the validation code rather than the JSON parser.
fn send_body() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,200}".prop_map(Value::String),
        prop::collection::vec(".{0,10}", 0..4).prop_map(Value::from),
    ];
    let key = prop_oneof![
        Just("to".to_string()),
        Just("data".to_string()),
        Just("event".to_string()),
        Just("all_connections".to_string()),
        ".{0,12}",
    ];
    prop::collection::vec((key, value), 0..6).prop_map(|kvs| {
        let map: serde_json::Map<String, Value> = kvs.into_iter().collect();
        serde_json::to_vec(&Value::Object(map)).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_to_send_never_5xx(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let (status, text) = post("/notifications/send/", body);
        check(status, &text)?;
    }

    #[test]
    fn arbitrary_send_objects_are_200_or_a_named_400(body in send_body()) {
        let (status, text) = post("/notifications/send/", body.clone());
        check(status, &text)?;
        prop_assert!(status == 200 || status == 400, "{status}: {text}");
        if status == 200 {
            // Only a body the SPEC allows is accepted.
            let v: Value = serde_json::from_slice(&body).unwrap();
            let ev = v.get("event").and_then(Value::as_str).unwrap_or("message");
            prop_assert!(v.get("data").is_some());
            prop_assert!(!ev.is_empty() && ev.len() <= 64);
            prop_assert!(ev.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b)));
        }
    }

    #[test]
    fn arbitrary_cleanup_bodies_never_5xx(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let (status, text) = post("/notifications/cleanup/", body);
        check(status, &text)?;
    }

    #[test]
    fn arbitrary_usernames_in_paths_never_5xx(name in "\\PC{0,200}") {
        let f = fixture();
        let encoded: String = percent_encode(&name);
        let (status, text) = f.rt.block_on(async {
            let resp = http()
                .get(format!("{}/notifications/connections/{encoded}/", f.admin))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        });
        check(status, &text)?;
        let chars = name.chars().count();
        if (1..=150).contains(&chars) && !name.chars().any(char::is_control) {
            prop_assert_eq!(status, 200, "{}", text);
        }
    }

    #[test]
    fn arbitrary_identity_headers_never_5xx(name in prop::collection::vec(any::<u8>(), 0..300)) {
        let f = fixture();
        let Ok(value) = reqwest::header::HeaderValue::from_bytes(&name) else {
            return Ok(());
        };
        let (status, text) = f.rt.block_on(async {
            let resp = reqwest::Client::new()
                .get(&f.stream)
                .header("X-Remote-User", value)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            // A 200 is a stream that stays open: read only errors.
            let text = if status == 200 { String::new() } else { resp.text().await.unwrap() };
            (status, text)
        });
        check(status, &text)?;
        prop_assert!([200, 400, 401].contains(&status), "{}: {}", status, text);
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
