//! The JSON envelope (README "HTTP API"), and the one place where every HTTP error of
//! either listener (ours and warp's rejections) becomes that envelope.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use serde::Serialize;
use warp::http::{header, HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Rejection, Reply};

/// An HTTP error answered as `{"code": status, "message": ...}`.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    /// Seconds for `Retry-After` on 503s that a client should retry.
    retry_after: Option<Duration>,
    /// Methods for `Allow` on a 405.
    allow: Option<String>,
    /// The scheme for `WWW-Authenticate` on a 401 that asks for a token.
    challenge: Option<&'static str>,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
            allow: None,
            challenge: None,
        }
    }
    /// The message, as the envelope's `message` says it.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    /// 401 with `WWW-Authenticate: Bearer`: the admin token is missing or
    /// wrong.
    pub(crate) fn bearer_required(message: impl Into<String>) -> Self {
        let mut e = Self::unauthorized(message);
        e.challenge = Some("Bearer");
        e
    }
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub(crate) fn method_not_allowed(allowed: &str) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method not allowed here; use {allowed}"),
        );
        e.allow = Some(allowed.to_string());
        e
    }
    /// 421: the request named a host this listener does not answer for
    /// (DNS rebinding).
    pub(crate) fn misdirected(message: impl Into<String>) -> Self {
        Self::new(StatusCode::MISDIRECTED_REQUEST, message)
    }
    pub(crate) fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message)
    }
    pub(crate) fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body: larger than api.max_body_bytes ({limit} bytes)"),
        )
    }
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
    pub(crate) fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Status, headers and JSON body, for any HTTP layer.
    pub(crate) fn into_parts(self) -> (StatusCode, HeaderMap, Bytes) {
        let body = serde_json::json!({"code": self.status.as_u16(), "message": self.message});
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(allow) = self
            .allow
            .as_deref()
            .and_then(|a| HeaderValue::from_str(a).ok())
        {
            headers.insert(header::ALLOW, allow);
        }
        if let Some(scheme) = self.challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(scheme));
        }
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                headers.insert(header::RETRY_AFTER, v);
            }
        }
        (self.status, headers, Bytes::from(body.to_string()))
    }

    pub(crate) fn into_response(self) -> Response {
        let (status, headers, body) = self.into_parts();
        let mut resp = Response::new(body.into());
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::unavailable(format!("registry unavailable: {e}"))
            .with_retry_after(Duration::from_secs(1))
    }
}

/// Success: `{"code": 200, "data": ...}`.
pub(crate) fn ok<T: Serialize>(data: &T) -> Response {
    // Serialized straight from the caller's type: no intermediate Value
    // tree on the send path.
    #[derive(Serialize)]
    struct Envelope<'a, T> {
        code: u16,
        data: &'a T,
    }
    let body = serde_json::to_vec(&Envelope { code: 200, data }).unwrap_or_default();
    body_response(StatusCode::OK, body)
}

/// A JSON body outside the envelope (`/healthz`).
pub(crate) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    body_response(status, serde_json::to_vec(body).unwrap_or_default())
}

fn body_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A body written as `stream` yields it, with this `Content-Type`.
pub(crate) fn streamed<S, E>(stream: S, content_type: &'static str) -> Response
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let mut resp = warp::reply::stream(SyncStream::new(stream)).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// warp's response body must be `Sync`, and a stream made of async steps
/// is `Send` only. Polling needs `&mut`, so the mutex is never contended:
/// it only lends the stream `Sync`.
struct SyncStream<S>(Mutex<Pin<Box<S>>>);

impl<S> SyncStream<S> {
    fn new(s: S) -> Self {
        Self(Mutex::new(Box::pin(s)))
    }
}

impl<S: Stream> Stream for SyncStream<S> {
    type Item = S::Item;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .0
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .poll_next(cx)
    }
}

/// The rejection of a path asked with a method it has not; the methods it
/// has, for `Allow`.
#[derive(Debug)]
pub(crate) struct WrongMethod(pub &'static str);

impl warp::reject::Reject for WrongMethod {}

/// `.recover()` handler of both listeners. A rejection can combine those
/// of several routes tried in turn: an [`ApiError`] (the one route whose
/// path and method matched refused the request) wins over the 405 of a
/// path asked with another method, which wins over warp's own.
pub(crate) async fn recover(err: Rejection) -> Result<Response, Infallible> {
    let e = if let Some(e) = err.find::<ApiError>() {
        e.clone()
    } else if let Some(WrongMethod(allowed)) = err.find::<WrongMethod>() {
        ApiError::method_not_allowed(allowed)
    } else if err.is_not_found() {
        ApiError::not_found("no such route")
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    } else if err.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body too large")
    } else {
        tracing::warn!(rejection = ?err, "unhandled rejection");
        ApiError::bad_request(format!("bad request: {err:?}"))
    };
    Ok(e.into_response())
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        ApiError::into_response(self)
    }
}
