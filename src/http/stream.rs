//! What the public listener answers: `GET {base}/stream/` (README "The stream") and
//! its CORS preflight, independent of the HTTP server ([`super::public`]).
//! A stream is authenticated, put in the hub and the registry (before its
//! first frame, so a send right after reaches it), given what it missed
//! (history), then its queue of encoded frames becomes the response body.
//! Whatever ends the body (client gone, close, token expiry, shutdown)
//! drops its guard, which removes the connection from the hub and the
//! registry.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use warp::http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use super::auth::{AuthError, Identity};
use super::envelope::ApiError;
use super::Front;
use crate::config::Config;
use crate::node::expiry::Expiries;
use crate::node::frame;
use crate::node::queue::Receiver;
use crate::node::{Refused, Registered};
use crate::store::{unix_now, LiveConn, MsgId, Wrote};

/// A request to the public listener, as the HTTP layer parsed it.
pub(crate) struct Request {
    pub method: Method,
    /// The path, without the query string.
    pub path: String,
    pub query: HashMap<String, String>,
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
    Events(SseBody),
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
/// gets a 403 without any `Access-Control-*` header (SPEC 6).
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
        AuthError::BadUsername(m) => ApiError::bad_request(m),
    }
}

async fn open(app: &Arc<Front>, config: &Config, req: &Request) -> Result<Reply, ApiError> {
    let (headers, query, peer) = (&req.headers, &req.query, req.peer);
    let Identity { username, expires } = app
        .auth()
        .identify(peer, headers, query)
        .map_err(auth_error)?;
    let conn = LiveConn {
        connection_id: uuid::Uuid::new_v4().to_string(),
        username,
        connection_time: unix_now(),
    };
    let retry_later = Duration::from_millis(config.stream.retry_ms.max(1000));
    let node = app.node();
    let Registered { rx, user_count } = node
        .register(config, &conn, req.kill.clone())
        .await
        .map_err(|e| match e {
            Refused::Rate { wait, .. } => ApiError::unavailable(e.to_string())
                .with_retry_after(wait + Duration::from_millis(fastrand::u64(0..1000))),
            Refused::Hub(_) | Refused::Store(_) => {
                ApiError::unavailable(e.to_string()).with_retry_after(retry_later)
            }
        })?;
    // Admitted: from here on, any exit (client gone) takes it out again.
    let expires = expires.map_or(0, Expiries::clamp);
    if expires != 0 {
        node.expire_at(expires, &conn.connection_id);
    }
    let guard = ConnGuard {
        app: app.clone(),
        conn: conn.clone(),
        opened: Instant::now(),
        expires,
        released: false,
    };
    // The registration told how many connections the user has on all
    // nodes: only a user over the limit costs another round trip.
    if user_count > config.limits.max_connections_per_user {
        // A page renewing its stream (a fresh token) names the stream it
        // replaces: that one goes first, not another tab of the user.
        let replaces = query.get("replaces").map(String::as_str);
        if let Err(e) = app
            .node()
            .enforce_user_limit(
                &conn.username,
                config.limits.max_connections_per_user,
                &conn.connection_id,
                replaces,
            )
            .await
        {
            app.node().metrics().redis_errors.inc();
            tracing::warn!(error = %e, username = %conn.username, "per-user limit not enforced");
        }
    }
    let peer_addr = peer.map(|p| p.to_string()).unwrap_or_default();
    tracing::info!(connection_id = %conn.connection_id, username = %conn.username, peer = %peer_addr, "stream opened");

    let established = json!({
        "connection_id": conn.connection_id,
        "username": conn.username,
        "connection_time": conn.connection_time,
    });
    let mut opening = BytesMut::new();
    opening.extend_from_slice(&frame::retry(config.stream.retry_ms));
    opening.extend_from_slice(&frame::event(
        "connection_established",
        &established.to_string(),
    ));
    let mut prefix = VecDeque::from([opening.freeze()]);
    let skip_until = replay(app, config, headers, query, &conn, &mut prefix).await;
    let body = SseBody {
        prefix,
        skip_until,
        wrote: None,
        rx,
        guard,
    };
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
        body: ReplyBody::Events(body),
    })
}

/// With history on and a `Last-Event-ID` (header, or `last_event_id` query
/// parameter), appends what the user missed to `prefix`; returns the id up
/// to which the client now has everything, so that the same messages are
/// not written again when they also reach the queue (the replay/live seam).
async fn replay(
    app: &Front,
    config: &Config,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    conn: &LiveConn,
    prefix: &mut VecDeque<Bytes>,
) -> Option<MsgId> {
    if !config.history.enabled {
        return None;
    }
    let raw = headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or_else(|| query.get("last_event_id").cloned())
        .filter(|s| !s.is_empty())?;
    let last: Option<MsgId> = raw.trim().parse().ok();
    let gap = |prefix: &mut VecDeque<Bytes>| prefix.push_back(frame::history_gap(&raw));
    let replay = match app
        .node()
        .replay(&conn.username, &conn.connection_id, last, &config.history)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            app.node().metrics().redis_errors.inc();
            tracing::warn!(error = %e, connection_id = %conn.connection_id, "history unreadable; replay skipped");
            gap(prefix);
            return None;
        }
    };
    if replay.gap {
        gap(prefix);
    }
    // One-tab messages are in it only where this stream is to get them
    // (the store claimed them for it).
    for k in &replay.entries {
        prefix.push_back(frame::message(&k.id.to_string(), &k.event, &k.data));
    }
    let upto = replay.entries.last().map(|k| k.id);
    if replay.gap {
        upto
    } else {
        upto.max(last)
    }
}

/// Removes the connection from the hub and the registry when dropped.
struct ConnGuard {
    app: Arc<Front>,
    conn: LiveConn,
    opened: Instant,
    /// Token mode: the token's `exp` as [`Expiries`] keeps it; 0 for none.
    /// A `u32` fits in the padding before `released`: nothing added to
    /// a stream of the other modes.
    expires: u32,
    /// [`ConnGuard::release`] ran (the body ended and said what it wrote).
    released: bool,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.release(None);
    }
}

impl ConnGuard {
    /// The stream ended: out of the hub and the registry, with what it
    /// wrote when it was sent one-tab messages. Once.
    fn release(&mut self, wrote: Option<Wrote>) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        let node = self.app.node();
        if self.expires != 0 {
            node.forget_expiry(self.expires, &self.conn.connection_id);
        }
        node.unregister(&self.conn.connection_id, wrote);
        node.metrics().disconnects.inc();
        tracing::info!(
            connection_id = %self.conn.connection_id,
            username = %self.conn.username,
            secs = self.opened.elapsed().as_secs(),
            "stream closed"
        );
    }
}

/// The response body: the opening frames and the replay, then the
/// connection's queue until its sender is dropped. Dropping it removes the
/// connection (its guard).
pub(crate) struct SseBody {
    prefix: VecDeque<Bytes>,
    /// Messages up to this id were replayed: skip them in the queue.
    skip_until: Option<MsgId>,
    /// The newest message id written to the socket.
    wrote: Option<MsgId>,
    rx: Receiver,
    guard: ConnGuard,
}

impl Drop for SseBody {
    fn drop(&mut self) {
        // What it wrote matters only for one-tab messages: a replay must
        // not give another tab one this stream wrote.
        let wrote = match (self.rx.had_one_tab(), self.wrote) {
            (true, Some(upto)) => Some(Wrote {
                username: self.guard.conn.username.clone(),
                upto,
            }),
            _ => None,
        };
        self.guard.release(wrote);
    }
}

impl SseBody {
    /// `frames` reached the socket (the kernel took them).
    pub(crate) fn written(&mut self, frames: &[Bytes]) {
        if let Some(id) = frames.iter().rev().find_map(|f| frame::message_id(f)) {
            self.wrote = self.wrote.max(Some(id));
        }
    }

    /// A frame from the queue as this stream writes it: the notice that
    /// Redis lost its data becomes a `history_gap` after the last id this
    /// stream wrote.
    fn render(&self, frame: Bytes) -> Bytes {
        if frame::is_history_lost(&frame) {
            let last = self.wrote.max(self.skip_until);
            frame::history_gap(&last.map(|id| id.to_string()).unwrap_or_default())
        } else {
            frame
        }
    }

    fn keep(&self, frame: &[u8]) -> bool {
        match self.skip_until {
            Some(upto) => frame::message_id(frame).is_none_or(|id| id > upto),
            None => true,
        }
    }

    /// The next frame; `None` once the stream is closed.
    pub(crate) async fn next(&mut self) -> Option<Bytes> {
        if let Some(p) = self.prefix.pop_front() {
            return Some(p);
        }
        loop {
            let frame = self.rx.recv().await?;
            if self.keep(&frame) {
                return Some(self.render(frame));
            }
        }
    }

    /// Ready once the stream was closed (frames may be left to write).
    pub(crate) fn poll_closed(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.rx.poll_closed(cx)
    }

    /// The connection this body serves, for its log lines.
    pub(crate) fn conn(&self) -> &LiveConn {
        &self.guard.conn
    }

    /// A frame that is ready now, without waiting.
    pub(crate) fn next_ready(&mut self) -> Option<Bytes> {
        if let Some(p) = self.prefix.pop_front() {
            return Some(p);
        }
        loop {
            let frame = self.rx.try_recv().ok()?;
            if self.keep(&frame) {
                return Some(self.render(frame));
            }
        }
    }
}
