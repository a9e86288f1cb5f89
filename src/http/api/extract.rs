//! The filters every route group builds on: the shared state, the base
//! path, a username or topic segment, a query string and a body read within its
//! limit, typed; and the 405 of a path asked with a method it has not.

use std::convert::Infallible;
use std::str::FromStr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderMap};
use warp::{Filter, Rejection};

use crate::http::auth::validate_username;
use crate::http::envelope::{ApiError, WrongMethod};
use crate::http::Front;
use crate::topic;

/// What the listeners share (the node, and what is HTTP's own), handed
/// to a handler.
pub(super) fn with_front(
    front: &Arc<Front>,
) -> impl Filter<Extract = (Arc<Front>,), Error = Infallible> + Clone {
    let front = front.clone();
    warp::any().map(move || front.clone())
}

/// `server.base_path` (a restart key, so fixed for the filters' life),
/// one path filter per segment.
pub(super) fn base(base_path: &str) -> BoxedFilter<()> {
    base_path
        .split('/')
        .filter(|segment| !segment.is_empty())
        .fold(warp::any().boxed(), |path, segment| {
            path.and(warp::path(segment.to_string())).boxed()
        })
}

/// The end of a path, with or without its trailing slash (warp's `end`
/// takes both: `/send` and `/send/` are one route).
pub(super) fn end() -> impl Filter<Extract = (), Error = Rejection> + Copy {
    warp::path::end()
}

/// A username path segment, percent-decoded (`al%C3%A9` is `alé`); not
/// validated here, so that a bad name is a 400 naming it, not a 404.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct UserName(pub String);

impl FromStr for UserName {
    type Err = std::str::Utf8Error;
    fn from_str(segment: &str) -> Result<Self, Self::Err> {
        percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .map(|name| UserName(name.into_owned()))
    }
}

impl UserName {
    /// The name, checked as every username is ([`validate_username`]).
    pub(super) fn validated(self) -> Result<String, ApiError> {
        validate_username(&self.0).map_err(|e| ApiError::bad_request(format!("username {e}")))?;
        Ok(self.0)
    }
}

/// A topic path segment, percent-decoded (`doc%2F42` is `doc/42`); not
/// checked here, so that a bad name is a 400 naming it, not a 404.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TopicName(pub String);

impl FromStr for TopicName {
    type Err = std::str::Utf8Error;
    fn from_str(segment: &str) -> Result<Self, Self::Err> {
        percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .map(|name| TopicName(name.into_owned()))
    }
}

impl TopicName {
    /// The name, checked as every topic name is ([`topic::name_error`]).
    pub(super) fn validated(self) -> Result<String, ApiError> {
        match topic::name_error(&self.0) {
            None => Ok(self.0),
            Some(why) => Err(ApiError::bad_request(format!(
                "topic: {} {why}",
                topic::quoted(&self.0)
            ))),
        }
    }
}

/// A query string read into `T`; a missing query is the empty one.
pub(super) trait FromQuery: Sized {
    fn from_query(query: &str) -> Result<Self, ApiError>;
}

pub(super) fn query<T: FromQuery + Send + 'static>(
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .and_then(|query: String| async move { T::from_query(&query).map_err(reject) })
}

/// The `key=value` pairs of a query string, in order.
pub(super) fn query_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad_request(format!("query string: {e}")))
}

/// The whole body, at most `limit(config)` bytes; more is a 413, whether
/// announced by Content-Length or found while reading a chunked body.
pub(super) fn body_within(
    front: &Arc<Front>,
    limit: fn(&crate::config::Config) -> usize,
) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    with_front(front)
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and_then(
            move |front: Arc<Front>, headers: HeaderMap, body| async move {
                read_body(&headers, body, limit(&front.config()))
                    .await
                    .map_err(reject)
            },
        )
}

async fn read_body<S, B>(headers: &HeaderMap, body: S, limit: usize) -> Result<Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let mut body = std::pin::pin!(body);
    // Sized once from the announced length: growing by doubling would hold
    // up to twice a large body while it is copied over.
    let mut buf = BytesMut::with_capacity(announced.map_or(0, |n| n as usize));
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
        if buf.len() + chunk.remaining() > limit {
            return Err(ApiError::too_large(limit));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            buf.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

/// Names the fields of a body that are not `known`.
pub(super) fn reject_unknown<'a>(
    keys: impl Iterator<Item = &'a String>,
    known: &[&str],
) -> Result<(), ApiError> {
    let unknown: Vec<&str> = keys
        .map(String::as_str)
        .filter(|k| !known.contains(k))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "unknown field(s): {} (known: {})",
            unknown.join(", "),
            known.join(", ")
        )))
    }
}

/// The last alternative of a path: any other method is a 405 that lists
/// the methods the path has (`Allow`, e.g. `"GET, POST"`).
pub(super) fn only(
    allowed: &'static str,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::any().and_then(move || async move {
        Err::<warp::reply::Response, _>(warp::reject::custom(WrongMethod(allowed)))
    })
}

/// An [`ApiError`] as the rejection that the one `recover` turns back
/// into the envelope.
pub(super) fn reject(e: ApiError) -> Rejection {
    warp::reject::custom(e)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper::service::Service;
    use warp::http::{Request, StatusCode};

    use super::*;
    use crate::http::envelope;

    /// A path with a POST route that refuses the request, and the 405 of
    /// its other methods, as every route group builds them.
    async fn answer(method: &str, path: &str) -> (StatusCode, Option<String>, String) {
        let refusing = warp::path("x")
            .and(end())
            .and(warp::post())
            .and_then(|| async {
                Err::<warp::reply::Response, _>(reject(ApiError::bad_request("body: refused")))
            });
        let routes = refusing
            .or(warp::path("x").and(end()).and(only("POST")))
            .unify()
            .recover(envelope::recover)
            .unify();
        let svc = hyper_util::service::TowerToHyperService::new(warp::service(routes));
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = svc.call(req).await.expect("answer");
        let allow = resp
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap_or_default().to_string());
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, allow, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_refusal_wins_over_the_405_of_the_paths_other_methods() {
        let (status, _, body) = answer("POST", "/x/").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body, r#"{"code":400,"message":"body: refused"}"#);
        let (status, allow, body) = answer("PUT", "/x").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
        assert_eq!(allow.as_deref(), Some("POST"));
        let (status, _, body) = answer("POST", "/y").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body, r#"{"code":404,"message":"no such route"}"#);
    }

    #[test]
    fn topic_segments_are_percent_decoded_then_checked() {
        let name = |s: &str| s.parse::<TopicName>().unwrap().validated();
        assert_eq!(name("doc%2F42").unwrap(), "doc/42");
        assert_eq!(name("doc:42").unwrap(), "doc:42");
        assert!(name("a%20b")
            .unwrap_err()
            .message()
            .starts_with("topic: \"a b\""));
        assert!("%FF".parse::<TopicName>().is_err());
    }

    #[test]
    fn usernames_are_percent_decoded() {
        assert_eq!("al%C3%A9".parse::<UserName>(), Ok(UserName("alé".into())));
        assert!("%FF".parse::<UserName>().is_err());
    }
}
