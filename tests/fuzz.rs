//! Property tests: arbitrary bodies, usernames and paths against a real node
//! never get a 5xx, always get the envelope, and never deliver bad input.
mod common;

use std::time::Duration;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use serde_json::Value;

/// One node and its Redis per property, dropped (Redis killed) when the
/// property's test ends: a fixture kept in a static would never be dropped
/// and would leave a redis-server behind after every `cargo test`.
struct Fixture {
    admin: String,
    stream: String,
    _node: TestNode,
    _redis: RedisServer,
    // Last: the node's tasks stop with the runtime.
    rt: tokio::runtime::Runtime,
}

impl Fixture {
    fn start() -> Fixture {
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
    }

    /// Runs `test` on 300 generated cases against this fixture.
    fn check_cases<S: Strategy>(
        &self,
        strategy: S,
        test: impl Fn(&Fixture, S::Value) -> Result<(), TestCaseError>,
    ) {
        let mut runner = TestRunner::new(RunnerConfig {
            cases: 300,
            ..RunnerConfig::default()
        });
        if let Err(e) = runner.run(&strategy, |v| test(self, v)) {
            panic!("{e}");
        }
    }
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

fn post(f: &Fixture, path: &str, body: Vec<u8>) -> (u16, String) {
    f.rt.block_on(async {
        let resp = http()
            .post(format!("{}{}", f.admin, path))
            // Declared JSON, as the app does: the bytes must reach the
            // parser, not stop at the 415 for a missing Content-Type.
            .header("content-type", "application/json")
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

#[test]
fn arbitrary_bytes_to_send_never_5xx() {
    Fixture::start().check_cases(prop::collection::vec(any::<u8>(), 0..512), |f, body| {
        let (status, text) = post(f, "/notifications/send/", body);
        check(status, &text)
    });
}

#[test]
fn arbitrary_send_objects_are_200_or_a_named_400() {
    Fixture::start().check_cases(send_body(), |f, body| {
        let (status, text) = post(f, "/notifications/send/", body.clone());
        check(status, &text)?;
        prop_assert!(status == 200 || status == 400, "{status}: {text}");
        if status == 200 {
            // Only a body README "HTTP API" allows is accepted.
            let v: Value = serde_json::from_slice(&body).unwrap();
            let ev = v.get("event").and_then(Value::as_str).unwrap_or("message");
            prop_assert!(v.get("data").is_some());
            prop_assert!(!ev.is_empty() && ev.len() <= 64);
            prop_assert!(ev
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b)));
        }
        Ok(())
    });
}

#[test]
fn arbitrary_cleanup_bodies_never_5xx() {
    Fixture::start().check_cases(prop::collection::vec(any::<u8>(), 0..256), |f, body| {
        let (status, text) = post(f, "/notifications/cleanup/", body);
        check(status, &text)
    });
}

#[test]
fn arbitrary_usernames_in_paths_never_5xx() {
    Fixture::start().check_cases("\\PC{0,200}", |f, name: String| {
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
        let invisible = name.chars().find(|&c| invisible(c));
        if (1..=150).contains(&chars) && !name.chars().any(char::is_control) {
            match invisible {
                None => prop_assert_eq!(status, 200, "{}", text),
                Some(c) => {
                    prop_assert_eq!(status, 400, "{}", text);
                    let code = format!("U+{:04X}", u32::from(c));
                    prop_assert!(text.contains(&code), "{} not named: {}", code, text);
                }
            }
        }
        Ok(())
    });
}

/// The README's username rule, read from the Unicode tables: format
/// characters, line and paragraph separators, default ignorables.
fn invisible(c: char) -> bool {
    use icu_properties::props::{DefaultIgnorableCodePoint, GeneralCategory};
    use icu_properties::{CodePointMapData, CodePointSetData};
    matches!(
        CodePointMapData::<GeneralCategory>::new().get(c),
        GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    ) || CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c)
}

#[test]
fn arbitrary_identity_headers_never_5xx() {
    Fixture::start().check_cases(prop::collection::vec(any::<u8>(), 0..300), |f, name| {
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
            let text = if status == 200 {
                String::new()
            } else {
                resp.text().await.unwrap()
            };
            (status, text)
        });
        check(status, &text)?;
        prop_assert!([200, 400, 401].contains(&status), "{}: {}", status, text);
        Ok(())
    });
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
