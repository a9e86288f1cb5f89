//! What the public listener answers: `GET {base}/stream/`
//! (README "The stream") and its CORS preflight, independent of the HTTP server
//! ([`super::public`]). A stream request is read (auth, the topics it may
//! follow, `Last-Event-ID`, `replaces`) and handed to the node ([`crate::node::session`]), whose
//! session becomes the response body; a refusal becomes the envelope.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use warp::http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use super::auth::{AuthError, Identity};
use super::envelope::ApiError;
use super::Front;
use crate::config::Config;
use crate::node::session::{self, Admission, Session};
use crate::node::Refused;
use crate::topic;

/// A request to the public listener, as the HTTP layer parsed it.
pub(crate) struct Request {
    pub method: Method,
    /// The path, without the query string.
    pub path: String,
    pub query: HashMap<String, String>,
    /// The value of every `topics` parameter, in order: repeated ones add
    /// up.
    pub topics: Vec<String>,
    pub headers: HeaderMap,
    pub peer: Option<SocketAddr>,
    /// Cancelling it closes the client's TCP connection at once.
    pub kill: CancellationToken,
}

/// What to answer: a complete response, or a stream of frames.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: ReplyBody,
}

pub(crate) enum ReplyBody {
    Full(Bytes),
    Events(Session),
}

/// Answers one request of the public listener.
pub(crate) async fn handle(app: &Arc<Front>, req: Request) -> Reply {
    let config = app.config();
    let is_stream = super::relative(&config.server.base_path, &req.path) == Some("/stream");
    let result = if !is_stream {
        Err(ApiError::not_found("no such route"))
    } else if req.method == Method::GET {
        open(app, &config, &req).await
    } else if req.method == Method::OPTIONS {
        preflight(&config, &req.headers)
    } else {
        Err(ApiError::method_not_allowed("GET, OPTIONS"))
    };
    let mut reply = result.unwrap_or_else(|e| {
        let (status, headers, body) = e.into_parts();
        Reply {
            status,
            headers,
            body: ReplyBody::Full(body),
        }
    });
    cors(&config, &req.headers, &mut reply.headers);
    app.node().metrics().http(
        if is_stream { "stream" } else { "unknown" },
        reply.status.as_u16(),
    );
    reply
}

/// Only a listed origin learns what the stream allows: any other (or none)
/// gets a 403 without any `Access-Control-*` header (README "The stream").
fn preflight(config: &Config, headers: &HeaderMap) -> Result<Reply, ApiError> {
    if !origin_listed(config, headers) {
        return Err(ApiError::forbidden(
            "CORS preflight from an origin not in stream.cors_origins",
        ));
    }
    let mut h = HeaderMap::new();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Last-Event-ID, Authorization, Cache-Control"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    Ok(Reply {
        status: StatusCode::NO_CONTENT,
        headers: h,
        body: ReplyBody::Full(Bytes::new()),
    })
}

fn origin_listed(config: &Config, headers: &HeaderMap) -> bool {
    headers.get(header::ORIGIN).is_some_and(|origin| {
        origin
            .to_str()
            .is_ok_and(|o| config.stream.cors_origins.iter().any(|a| a == o))
    })
}

/// Listed origins get their own origin back with credentials; others get
/// no CORS header at all.
fn cors(config: &Config, headers: &HeaderMap, h: &mut HeaderMap) {
    if config.stream.cors_origins.is_empty() {
        return;
    }
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = headers.get(header::ORIGIN) else {
        return;
    };
    if origin_listed(config, headers) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::Unauthorized(m) => ApiError::unauthorized(m),
        AuthError::Forbidden(m) => ApiError::forbidden(m),
        AuthError::BadRequest(m) => ApiError::bad_request(m),
    }
}

/// The topics a stream asks to follow (`?topics=a,b`, repeatable; blanks
/// skipped), checked, sorted and without duplicates.
fn asked_topics(values: &[String], max: usize) -> Result<Vec<String>, ApiError> {
    let mut topics = BTreeSet::new();
    for name in values.iter().flat_map(|v| v.split(',')).map(str::trim) {
        if name.is_empty() {
            continue;
        }
        if let Some(why) = topic::name_error(name) {
            return Err(ApiError::bad_request(format!(
                "topics: {} {why}",
                topic::quoted(name)
            )));
        }
        topics.insert(name);
    }
    if topics.len() > max {
        return Err(ApiError::bad_request(format!(
            "topics: {} asked, more than limits.max_topics_per_stream ({max})",
            topics.len()
        )));
    }
    Ok(topics.into_iter().map(String::from).collect())
}

async fn open(app: &Arc<Front>, config: &Config, req: &Request) -> Result<Reply, ApiError> {
    let (headers, query, peer) = (&req.headers, &req.query, req.peer);
    let auth = app.auth();
    let who = auth.identify(peer, headers, query).map_err(auth_error)?;
    let topics = asked_topics(&req.topics, config.limits.max_topics_per_stream)?;
    if let Some((topic, why)) = auth.refused_topic(&who, &topics) {
        return Err(ApiError::forbidden(format!(
            "topics: may not follow {topic:?}: {why}"
        )));
    }
    let Identity {
        username, expires, ..
    } = who;
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or_else(|| query.get("last_event_id").cloned())
        .filter(|s| !s.is_empty());
    let ask = Admission {
        topics,
        username,
        expires,
        replaces: query.get("replaces").cloned(),
        last_event_id,
        peer,
        kill: req.kill.clone(),
    };
    let retry_later = Duration::from_millis(config.stream.retry_ms.max(1000));
    let session = session::open(app.node(), config, ask)
        .await
        .map_err(|e| match e {
            Refused::Rate { wait, .. } => ApiError::unavailable(e.to_string())
                .with_retry_after(wait + Duration::from_millis(fastrand::u64(0..1000))),
            Refused::Hub(_) | Refused::Store(_) => {
                ApiError::unavailable(e.to_string()).with_retry_after(retry_later)
            }
        })?;
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(Reply {
        status: StatusCode::OK,
        headers: h,
        body: ReplyBody::Events(session),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asked_topics_add_up_once_each_and_are_checked() {
        let asked = |v: &[&str], max| {
            asked_topics(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>(), max)
        };
        assert_eq!(
            asked(&["team:7,doc:42", "doc:42,,", " x "], 3).unwrap(),
            vec!["doc:42", "team:7", "x"]
        );
        assert_eq!(asked(&[], 3).unwrap(), Vec::<String>::new());
        assert_eq!(asked(&[","], 3).unwrap(), Vec::<String>::new());
        let err = asked(&["a,b", "c,d"], 3).unwrap_err();
        assert!(
            err.message().contains("limits.max_topics_per_stream (3)"),
            "{}",
            err.message()
        );
        let err = asked(&["ok,doc:*"], 3).unwrap_err();
        assert!(
            err.message().starts_with("topics: \"doc:*\""),
            "{}",
            err.message()
        );
        let long = "y".repeat(500);
        let err = asked(&[&long], 3).unwrap_err();
        assert!(err.message().len() < 150, "{}", err.message());
    }
}
