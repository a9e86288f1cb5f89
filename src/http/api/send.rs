//! `POST {base}/send/` and `POST {base}/send/batch/`: the body read
//! within `api.max_body_bytes` (times `api.max_batch` for a batch),
//! validated field by field into messages (to a user, to everyone, or to
//! a topic's followers) before anything is sent.

use std::fmt;
use std::sync::Arc;

use serde_json::value::RawValue;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::extract::{base, body_within, end, only, reject, reject_unknown, with_front};
use super::model::{BatchSent, Sent};
use crate::config::Config;
use crate::http::auth::validate_username;
use crate::http::envelope::{self, ApiError};
use crate::http::Front;
use crate::node::router::Outgoing;
use crate::topic;

pub(super) fn routes(front: &Arc<Front>, base_path: &str) -> BoxedFilter<(Response,)> {
    let send = base(base_path).and(warp::path("send")).and(end());
    let batch = base(base_path)
        .and(warp::path("send"))
        .and(warp::path("batch"))
        .and(end());
    send.clone()
        .and(warp::post())
        .and(with_front(front))
        .and(message(front))
        .and_then(send_one)
        .or(send.and(only("POST")))
        .unify()
        .or(batch
            .clone()
            .and(warp::post())
            .and(with_front(front))
            .and(messages(front))
            .and_then(send_batch))
        .unify()
        .or(batch.and(only("POST")))
        .unify()
        .boxed()
}

/// A send body, validated into a message.
fn message(front: &Arc<Front>) -> impl Filter<Extract = (Outgoing,), Error = Rejection> + Clone {
    body_within(front, |c: &Config| c.api.max_body_bytes)
        .and_then(|body: bytes::Bytes| async move { parse_send(&body).map_err(reject) })
}

/// A batch body, validated into its messages. They own their payloads:
/// the body (up to max_batch x max_body_bytes) is dropped here, before
/// the store copies them.
fn messages(
    front: &Arc<Front>,
) -> impl Filter<Extract = (Vec<Outgoing>,), Error = Rejection> + Clone {
    body_within(front, |c: &Config| {
        c.api.max_body_bytes.saturating_mul(c.api.max_batch)
    })
    .and(with_front(front))
    .and_then(|body: bytes::Bytes, front: Arc<Front>| async move {
        let api = &front.config().api;
        parse_batch(&body, api.max_batch, api.max_body_bytes).map_err(reject)
    })
}

async fn send_one(front: Arc<Front>, msg: Outgoing) -> Result<Response, Rejection> {
    let config = front.config();
    let sent = front
        .node()
        .send(vec![msg], &config.history)
        .await
        .map_err(|e| reject(e.into()))?;
    streams_first(&front).await;
    match sent.into_iter().next() {
        Some(sent) => Ok(envelope::ok(&Sent::from(sent))),
        None => Err(reject(ApiError::unavailable("the message was not taken"))),
    }
}

async fn send_batch(front: Arc<Front>, msgs: Vec<Outgoing>) -> Result<Response, Rejection> {
    let config = front.config();
    let results = front
        .node()
        .send(msgs, &config.history)
        .await
        .map_err(|e| reject(e.into()))?;
    streams_first(&front).await;
    let results = results.into_iter().map(Sent::from).collect();
    Ok(envelope::ok(&BatchSent { results }))
}

/// When a send has already queued its frames (the embedded engine), lets
/// the streams write them before the response is written: a message then
/// reaches the browser one system call sooner (nchan's order).
async fn streams_first(front: &Front) {
    if front.node().queues_on_send() {
        tokio::task::yield_now().await;
    }
}

/// Event names: 1 to 64 of `A-Za-z0-9_.:-`, so never a line break.
fn validate_event(event: &str) -> Result<(), String> {
    if event.is_empty() || event.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !event
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
    {
        return Err("may only contain A-Za-z0-9_.:-".into());
    }
    Ok(())
}

/// The top level of a send body, each field as raw JSON, read in one pass
/// without allocating for the known names.
#[derive(Default)]
struct SendFields<'a> {
    to: Option<&'a RawValue>,
    data: Option<&'a RawValue>,
    event: Option<&'a RawValue>,
    all_connections: Option<&'a RawValue>,
    topic: Option<&'a RawValue>,
    /// The first field given more than once: JSON parsers disagree on
    /// which one counts (serde and Python keep the last), so a front end
    /// that checked the first `to` would be fooled.
    repeated: Option<&'static str>,
    unknown: Vec<String>,
}

const SEND_FIELDS: [&str; 5] = ["to", "data", "event", "all_connections", "topic"];

impl<'de> serde::Deserialize<'de> for SendFields<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(SendFieldsVisitor)
    }
}

struct SendFieldsVisitor;

impl<'de> serde::de::Visitor<'de> for SendFieldsVisitor {
    type Value = SendFields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut f = SendFields::default();
        while let Some(name) = map.next_key::<FieldName>()? {
            // Read whatever the name, so that the whole body is checked.
            let value: &'de RawValue = map.next_value()?;
            let slot = match name {
                FieldName::Known(0) => &mut f.to,
                FieldName::Known(1) => &mut f.data,
                FieldName::Known(2) => &mut f.event,
                FieldName::Known(3) => &mut f.all_connections,
                FieldName::Known(_) => &mut f.topic,
                FieldName::Unknown(name) => {
                    f.unknown.push(name);
                    continue;
                }
            };
            if slot.replace(value).is_some() && f.repeated.is_none() {
                if let FieldName::Known(i) = name {
                    f.repeated = Some(SEND_FIELDS[i]);
                }
            }
        }
        Ok(f)
    }
}

/// A name of the send body: an index into [`SEND_FIELDS`], or another
/// name. Escaped names (`"\u0074o"`) arrive unescaped.
enum FieldName {
    Known(usize),
    Unknown(String),
}

impl<'de> serde::Deserialize<'de> for FieldName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = FieldName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<FieldName, E> {
                Ok(match SEND_FIELDS.iter().position(|k| *k == name) {
                    Some(i) => FieldName::Known(i),
                    None => FieldName::Unknown(name.to_string()),
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

/// Validates a send body into a message. The top level is read as raw
/// fields, without building a tree: `data` is only checked and copied
/// (byte-exact, big integers and all, the names inside it as the app sent
/// them), and the small fields are typed one by one so that every error
/// names its field. A field given twice is an error naming it.
fn parse_send(body: &[u8]) -> Result<Outgoing, ApiError> {
    let fields: SendFields = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::bad_request("body: must be a JSON object")
        } else {
            ApiError::bad_request(format!("body: not valid JSON: {e}"))
        }
    })?;
    if let Some(name) = fields.repeated {
        return Err(ApiError::bad_request(format!(
            "{name}: given more than once (each field at most once)"
        )));
    }
    reject_unknown(fields.unknown.iter(), &SEND_FIELDS)?;
    let to = match fields.to {
        None => None,
        Some(raw) => serde_json::from_str::<Option<String>>(raw.get())
            .map_err(|_| ApiError::bad_request("to: must be a string or null"))?,
    };
    // Unlike `to`, no null: a topic that an application failed to fill
    // in must not turn its message into a broadcast to everyone.
    let topic = match fields.topic {
        None => None,
        Some(raw) => Some(serde_json::from_str::<String>(raw.get()).map_err(|_| {
            ApiError::bad_request("topic: must be a topic name (leave it out for a broadcast)")
        })?),
    };
    if let Some(name) = &topic {
        if to.is_some() {
            return Err(ApiError::bad_request(
                "topic and to: a message goes to a topic or to a user, not both",
            ));
        }
        if fields.all_connections.is_some() {
            return Err(ApiError::bad_request(
                "topic and all_connections: a topic message goes to every stream following it",
            ));
        }
        if let Some(why) = topic::name_error(name) {
            return Err(ApiError::bad_request(format!(
                "topic: {} {why}",
                topic::quoted(name)
            )));
        }
    }
    if let Some(user) = &to {
        validate_username(user).map_err(|e| ApiError::bad_request(format!("to: {e}")))?;
    }
    let data = fields
        .data
        .ok_or_else(|| ApiError::bad_request("data: required (null is allowed)"))?;
    let event = match fields.event {
        None => "message".to_string(),
        Some(raw) => {
            let e = serde_json::from_str::<String>(raw.get())
                .map_err(|_| ApiError::bad_request("event: must be a string"))?;
            validate_event(&e).map_err(|m| ApiError::bad_request(format!("event: {m}")))?;
            e
        }
    };
    let all_connections = match fields.all_connections {
        None => true,
        Some(raw) => serde_json::from_str::<bool>(raw.get())
            .map_err(|_| ApiError::bad_request("all_connections: must be true or false"))?,
    };
    Ok(Outgoing {
        first_only: to.is_some() && !all_connections,
        to,
        topic,
        event,
        data: compact(data.get()),
    })
}

/// Valid JSON text without the whitespace between its tokens: a frame's
/// `data:` is one line, and a pretty-printed payload must not end it.
/// Whitespace inside strings is part of the value and stays (JSON strings
/// cannot hold a raw line break).
fn compact(json: &str) -> String {
    if !json.bytes().any(|b| b.is_ascii_whitespace()) {
        return json.to_string();
    }
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    out
}

/// A batch body: `{"messages": [<send body>, ...]}`, 1 to `max` messages,
/// each validated exactly like a send and at most `max_bytes` long. One bad
/// message rejects the batch, naming its index and field.
fn parse_batch(body: &[u8], max: usize, max_bytes: usize) -> Result<Vec<Outgoing>, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Batch<'a> {
        #[serde(borrow)]
        messages: Vec<&'a RawValue>,
    }
    let batch: Batch = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "body: must be {{\"messages\": [<send body>, ...]}}: {e}"
        ))
    })?;
    if batch.messages.is_empty() || batch.messages.len() > max {
        return Err(ApiError::bad_request(format!(
            "messages: must hold 1 to {max} messages (api.max_batch)"
        )));
    }
    batch
        .messages
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let text = raw.get();
            if text.len() > max_bytes {
                return Err(ApiError::bad_request(format!(
                    "messages[{i}]: larger than api.max_body_bytes ({max_bytes} bytes)"
                )));
            }
            parse_send(text.as_bytes()).map_err(|e| {
                let what = match e.message().strip_prefix("body") {
                    Some(rest) => format!("messages[{i}]{rest}"),
                    None => format!("messages[{i}].{}", e.message()),
                };
                ApiError::bad_request(what)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_copied_byte_exact_on_one_line() {
        let data = |b: &str| parse_send(b.as_bytes()).unwrap().data;
        assert_eq!(
            data(r#"{"data":12345678901234567890123.50}"#),
            "12345678901234567890123.50"
        );
        assert_eq!(data(r#"{"data":"\u00e9\/"}"#), r#""\u00e9\/""#);
        assert_eq!(
            data("{\"data\": {\n  \"a\" : [1, 2],\r\n\t\"b\": \"x y\\\" z\"\n}}"),
            r#"{"a":[1,2],"b":"x y\" z"}"#
        );
        assert_eq!(data(r#"{"data":null}"#), "null");
    }

    #[test]
    fn send_errors_name_the_field() {
        let err = |b: &str| parse_send(b.as_bytes()).unwrap_err().message().to_string();
        assert_eq!(err("[1]"), "body: must be a JSON object");
        assert!(err("{").starts_with("body: not valid JSON"));
        assert!(err(r#"{"data":1,"data":}"#).starts_with("body: not valid JSON"));
        assert!(err(r#"{"data":1,"all_conections":true}"#)
            .starts_with("unknown field(s): all_conections"));
        assert_eq!(err(r#"{"to":5,"data":1}"#), "to: must be a string or null");
        assert_eq!(err(r#"{"to":"a"}"#), "data: required (null is allowed)");
        assert_eq!(err(r#"{"data":1,"event":null}"#), "event: must be a string");
        assert_eq!(
            err(r#"{"data":1,"all_connections":null}"#),
            "all_connections: must be true or false"
        );
        assert!(parse_send(br#"{"to":null,"data":1}"#).unwrap().to.is_none());
    }

    #[test]
    fn a_field_given_twice_is_named_and_data_is_the_apps() {
        let err = |b: &str| parse_send(b.as_bytes()).unwrap_err().message().to_string();
        assert!(err(r#"{"to":"a","to":"b","data":1}"#).starts_with("to: given more than once"));
        assert!(err(r#"{"to":"a","\u0074o":"b","data":1}"#).starts_with("to:"));
        assert!(err(r#"{"data":1,"data":2}"#).starts_with("data:"));
        assert!(err(r#"{"data":1,"x":1,"x":2}"#).starts_with("unknown field(s): x"));
        // The body is still read to its end: bad JSON after the repeat.
        assert!(err(r#"{"to":"a","to":"b","data":}"#).starts_with("body: not valid JSON"));
        let ok = parse_send(br#"{"data":{"k":1,"k":[2]}}"#).unwrap();
        assert_eq!(ok.data, r#"{"k":1,"k":[2]}"#);
        let batch = |b: &str| {
            parse_batch(b.as_bytes(), 3, 100)
                .unwrap_err()
                .message()
                .to_string()
        };
        assert!(
            batch(r#"{"messages":[{"data":1},{"event":"a","data":1,"event":"b"}]}"#)
                .starts_with("messages[1].event: given more than once")
        );
        assert!(
            batch(r#"{"messages":[{"data":1}],"messages":[{"data":2}]}"#)
                .contains("duplicate field `messages`")
        );
    }

    #[test]
    fn batch_validation_names_the_index_and_field() {
        let err = |b: &str| {
            parse_batch(b.as_bytes(), 3, 100)
                .unwrap_err()
                .message()
                .to_string()
        };
        assert!(err("[]").starts_with("body"));
        assert!(err(r#"{"messages":[],"x":1}"#).starts_with("body"));
        assert!(err(r#"{"messages":[]}"#).starts_with("messages:"));
        assert!(
            err(r#"{"messages":[{"data":1},{"data":1},{"data":1},{"data":1}]}"#)
                .starts_with("messages:")
        );
        assert_eq!(
            err(r#"{"messages":[{"data":1},{"data":1,"event":"a b"}]}"#),
            "messages[1].event: may only contain A-Za-z0-9_.:-"
        );
        assert!(err(r#"{"messages":[{"data":1},5]}"#).starts_with("messages[1]:"));
        let long = format!(r#"{{"messages":[{{"data":"{}"}}]}}"#, "x".repeat(100));
        assert!(err(&long).starts_with("messages[0]: larger"));
        let ok = parse_batch(
            br#"{"messages":[{"to":"a","data":{"n":12345678901234567890123}},{"data":null}]}"#,
            3,
            100,
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].data, r#"{"n":12345678901234567890123}"#);
        assert_eq!(ok[1].to, None);
    }

    #[test]
    fn send_validation_names_the_field() {
        let err = |b: &str| parse_send(b.as_bytes()).unwrap_err().message().to_string();
        assert!(err("nope").starts_with("body"));
        assert!(err("[]").starts_with("body"));
        assert!(err(r#"{"to":"a"}"#).starts_with("data"));
        assert!(err(r#"{"data":1,"all_conections":false}"#).contains("all_conections"));
        assert!(err(r#"{"data":1,"all_connections":null}"#).starts_with("all_connections"));
        assert!(err(r#"{"data":1,"event":"a\nb"}"#).starts_with("event"));
        assert!(err(r#"{"data":1,"event":""}"#).starts_with("event"));
        assert!(err(r#"{"data":1,"to":5}"#).starts_with("to"));
        assert!(err(r#"{"data":1,"to":""}"#).starts_with("to"));
        let ok = parse_send(br#"{"data":null}"#).unwrap();
        assert_eq!(
            (ok.to, ok.event.as_str(), !ok.first_only),
            (None, "message", true)
        );
    }

    #[test]
    fn a_topic_goes_alone_and_is_named() {
        let err = |b: &str| parse_send(b.as_bytes()).unwrap_err().message().to_string();
        assert!(err(r#"{"topic":"a","to":"b","data":1}"#).starts_with("topic and to:"));
        assert!(err(r#"{"topic":"a","all_connections":true,"data":1}"#)
            .starts_with("topic and all_connections:"));
        assert_eq!(
            err(r#"{"topic":"a b","data":1}"#),
            "topic: \"a b\" may hold only A-Za-z0-9_.:/@=-"
        );
        assert!(err(r#"{"topic":"","data":1}"#).starts_with("topic: \"\" is empty"));
        assert!(
            err(&format!(r#"{{"topic":"{}","data":1}}"#, "x".repeat(129)))
                .contains("longer than 128")
        );
        assert_eq!(
            err(r#"{"topic":7,"data":1}"#),
            "topic: must be a topic name (leave it out for a broadcast)"
        );
        assert!(err(r#"{"topic":"a","topic":"b","data":1}"#).starts_with("topic: given more"));
        let ok = parse_send(br#"{"topic":"doc:42","to":null,"data":1}"#).unwrap();
        assert_eq!(
            (ok.topic.as_deref(), ok.to, ok.first_only),
            (Some("doc:42"), None, false)
        );
        assert_eq!(
            err(r#"{"topic":null,"data":1}"#),
            "topic: must be a topic name (leave it out for a broadcast)",
            "a null topic is no broadcast"
        );
        let batch = parse_batch(
            br#"{"messages":[{"data":1},{"data":1},{"data":1},{"topic":"x y","data":1}]}"#,
            4,
            100,
        )
        .unwrap_err();
        assert!(
            batch.message().starts_with("messages[3].topic: \"x y\""),
            "{}",
            batch.message()
        );
        let pair =
            parse_batch(br#"{"messages":[{"topic":"t","to":"u","data":1}]}"#, 4, 100).unwrap_err();
        assert!(pair.message().starts_with("messages[0].topic and to:"));
    }
}
