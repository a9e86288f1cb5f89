//! The admin listener: the REST routes (README "HTTP API"), `/healthz`,
//! `/metrics`. Input is validated here, field by field, before anything is
//! sent or changed; errors leave through [`super::envelope`].

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use warp::http::{header, HeaderMap, Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

use super::auth::{admin_allowed, validate_username};
use super::console::{self, ConsoleRoute};
use super::envelope::{self, ApiError};
use super::listener::Via;
use super::listing;
use super::Front;
use crate::node::router::Outgoing;
use crate::store::{Cleared, ConnectionRecord, Cursor, Page, Removed, MAX_PAGE};

/// The admin routes, relative to `server.base_path`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AdminRoute {
    Send,
    SendBatch,
    Connections,
    UserConnections(String),
    Cleanup,
    Healthz,
    Metrics,
    /// `{base}/admin/...`: the console ([`console`]).
    Console(ConsoleRoute),
}

impl AdminRoute {
    /// Label for metrics (bounded: never the username).
    pub(crate) fn label(&self) -> &'static str {
        match self {
            AdminRoute::Send => "send",
            AdminRoute::SendBatch => "send_batch",
            AdminRoute::Connections => "connections",
            AdminRoute::UserConnections(_) => "user_connections",
            AdminRoute::Cleanup => "cleanup",
            AdminRoute::Healthz => "healthz",
            AdminRoute::Metrics => "metrics",
            AdminRoute::Console(ConsoleRoute::Asset(_)) => "console",
            AdminRoute::Console(ConsoleRoute::Events) => "console_events",
            AdminRoute::Console(ConsoleRoute::User(_)) => "console_user",
            AdminRoute::Console(ConsoleRoute::Users) => "console_users",
        }
    }

    fn allowed(&self) -> &'static [Method] {
        match self {
            AdminRoute::Send | AdminRoute::SendBatch | AdminRoute::Cleanup => &[Method::POST],
            AdminRoute::Connections => &[Method::GET, Method::POST],
            AdminRoute::UserConnections(_) => &[Method::GET, Method::DELETE],
            AdminRoute::Healthz | AdminRoute::Metrics | AdminRoute::Console(_) => &[Method::GET],
        }
    }
}

/// Strips `base` and a trailing slash: `/notifications/send/` -> `/send`.
pub(crate) fn relative<'a>(base: &str, path: &'a str) -> Option<&'a str> {
    let rest = path.strip_prefix(base)?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return None;
    }
    let rest = if rest.len() > 1 {
        rest.strip_suffix('/').unwrap_or(rest)
    } else {
        rest
    };
    Some(rest)
}

pub(crate) fn parse_route(base: &str, path: &str) -> Option<AdminRoute> {
    match path.strip_suffix('/').unwrap_or(path) {
        "/healthz" => return Some(AdminRoute::Healthz),
        "/metrics" => return Some(AdminRoute::Metrics),
        _ => {}
    }
    let rest = relative(base, path)?;
    match rest {
        "/send" => Some(AdminRoute::Send),
        "/send/batch" => Some(AdminRoute::SendBatch),
        "/connections" => Some(AdminRoute::Connections),
        "/cleanup" => Some(AdminRoute::Cleanup),
        _ if rest == "/admin" || rest.starts_with("/admin/") => {
            console::parse(&rest["/admin".len()..]).map(AdminRoute::Console)
        }
        _ => {
            let user = super::path_username(rest)?;
            Some(AdminRoute::UserConnections(user))
        }
    }
}

/// The whole admin listener as one filter.
pub(crate) fn routes(
    app: Arc<Front>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    warp::any()
        .map(move || app.clone())
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::ext::optional::<Via>())
        .and(warp::body::stream())
        .then(
            |app: Arc<Front>,
             method: Method,
             path: warp::path::FullPath,
             headers: HeaderMap,
             query: String,
             via: Option<Via>,
             body| async move {
                let config = app.config();
                let route = parse_route(&config.server.base_path, path.as_str());
                let label = route.as_ref().map_or("unknown", AdminRoute::label);
                let req = Req {
                    route,
                    method,
                    headers: &headers,
                    query: &query,
                    via: via.as_ref(),
                };
                let resp = envelope::respond(dispatch(&app, req, body).await);
                app.node().metrics().http(label, resp.status().as_u16());
                resp
            },
        )
        .recover(envelope::recover)
        .unify()
}

/// What a request asks, but its body.
struct Req<'a> {
    route: Option<AdminRoute>,
    method: Method,
    headers: &'a HeaderMap,
    /// The raw query string ("" when there is none).
    query: &'a str,
    /// The listener it came through (set by the admin server).
    via: Option<&'a Via>,
}

async fn dispatch<S, B>(app: &Arc<Front>, req: Req<'_>, body: S) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    let Req {
        route,
        method,
        headers,
        query,
        via,
    } = req;
    let config = app.config();
    // Before the token: a page in the operator's browser must get nothing,
    // not even a 401 that tells it the listener exists behind that name.
    // Over the Unix socket `Host` is whatever the client chose to write
    // (`localhost`, `unix`, the socket's name): no browser connects there,
    // so there is no rebinding to guard against and any name is answered.
    if !via.is_some_and(|v| v.unix) {
        check_host(&config.api.allowed_hosts, headers)?;
    }
    check_origin(&config.api.allowed_origins, headers)?;
    // The token guards every request but /healthz and the console's page
    // (which holds no data and asks for the token), unknown routes too, so
    // an anonymous caller learns nothing about what exists.
    let open = matches!(
        route,
        Some(AdminRoute::Healthz | AdminRoute::Console(ConsoleRoute::Asset(_)))
    );
    if !open && !admin_allowed(config.api.token.expose(), headers) {
        let mut resp =
            ApiError::unauthorized("missing or wrong bearer token (api.token)").into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            warp::http::HeaderValue::from_static("Bearer"),
        );
        return Ok(resp);
    }
    check_content_type(&method, headers)?;
    let route = route.ok_or_else(|| ApiError::not_found("no such route"))?;
    if !route.allowed().contains(&method) {
        let allowed: Vec<&str> = route.allowed().iter().map(Method::as_str).collect();
        return Err(ApiError::method_not_allowed(&allowed.join(", ")));
    }
    match (route, method) {
        (AdminRoute::Healthz, _) => Ok(healthz(app, via).await),
        (AdminRoute::Console(ConsoleRoute::Asset(which)), _) => {
            Ok(console::asset(which, &config.server.base_path))
        }
        (AdminRoute::Console(ConsoleRoute::Events), _) => Ok(console::events(app.clone())),
        (AdminRoute::Console(ConsoleRoute::Users), _) => {
            let asked = console::UsersQuery::parse(query)?;
            Ok(envelope::ok(&console::users(app, &asked).await?))
        }
        (AdminRoute::Console(ConsoleRoute::User(user)), _) => {
            validate_username(&user).map_err(|e| ApiError::bad_request(format!("username {e}")))?;
            let list = app.node().list_user(&user).await?;
            Ok(envelope::ok(&console::user_json(&user, &list)))
        }
        (AdminRoute::Metrics, _) => {
            let (text, content_type) = if wants_openmetrics(headers) {
                (
                    app.node().metrics().render(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
            } else {
                (
                    app.node().metrics().render_classic(),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            };
            let mut resp = Response::new(text.into());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                warp::http::HeaderValue::from_static(content_type),
            );
            Ok(resp)
        }
        (AdminRoute::Send, _) => {
            let body = read_body(headers, body, config.api.max_body_bytes).await?;
            let msg = parse_send(&body)?;
            let sent = app.node().send(vec![msg], &config.history).await?;
            streams_first(app).await;
            match sent.first() {
                Some(sent) => Ok(envelope::ok(sent)),
                None => Err(ApiError::unavailable("the message was not taken")),
            }
        }
        (AdminRoute::SendBatch, _) => {
            let limit = config
                .api
                .max_body_bytes
                .saturating_mul(config.api.max_batch);
            let body = read_body(headers, body, limit).await?;
            let msgs = parse_batch(&body, config.api.max_batch, config.api.max_body_bytes)?;
            // The messages own their payloads now: the body (up to
            // max_batch x max_body_bytes) goes before the store copies them.
            drop(body);
            let results = app.node().send(msgs, &config.history).await?;
            streams_first(app).await;
            Ok(envelope::ok(&json!({ "results": results })))
        }
        (AdminRoute::Connections, Method::GET) => match parse_paging(query)? {
            Some((cursor, limit)) => {
                let page = app.node().list_page(cursor.as_ref(), limit).await?;
                Ok(envelope::ok(&page_json(&page)))
            }
            None => {
                let body = listing::body(app.node().listing()).await?;
                let mut resp = warp::Reply::into_response(warp::reply::stream(body));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    warp::http::HeaderValue::from_static("application/json"),
                );
                Ok(resp)
            }
        },
        (AdminRoute::Connections, _) => {
            let cleared: Cleared = app.node().clear().await?;
            Ok(envelope::ok(&cleared))
        }
        (AdminRoute::UserConnections(user), Method::GET) => {
            validate_username(&user).map_err(|e| ApiError::bad_request(format!("username {e}")))?;
            let list = app.node().list_user(&user).await?;
            Ok(envelope::ok(&user_json(&user, &list)))
        }
        (AdminRoute::UserConnections(user), _) => {
            validate_username(&user).map_err(|e| ApiError::bad_request(format!("username {e}")))?;
            let removed = app.node().disconnect_user(&user).await?;
            Ok(envelope::ok(&counts(&removed)))
        }
        (AdminRoute::Cleanup, _) => {
            let body = read_body(headers, body, config.api.max_body_bytes).await?;
            let timeout = parse_cleanup(&body, config.sweep.stale_timeout_secs as f64)?;
            let removed = app.node().cleanup(timeout).await?;
            let mut data = counts(&removed);
            data["connection_ids"] = json!(removed.connection_ids);
            Ok(envelope::ok(&data))
        }
    }
}

/// When a send has already queued its frames (the embedded engine), lets
/// the streams write them before the response is written: a message then
/// reaches the browser one system call sooner (nchan's order). It halved
/// the median publish-to-stream latency of `run-peers.sh` unicast at no
/// cost in messages per second.
async fn streams_first(app: &Front) {
    if app.node().queues_on_send() {
        tokio::task::yield_now().await;
    }
}

/// DNS rebinding: a page whose name now points at this listener reaches
/// it as same-origin, but its requests still carry that name in `Host`.
/// Only IP literals, `localhost` and `api.allowed_hosts` are answered; no
/// `Host` at all (HTTP/1.0) cannot come from a browser and is let through.
fn check_host(allowed: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    let mut values = headers.get_all(header::HOST).iter();
    let Some(value) = values.next() else {
        return Ok(());
    };
    if values.next().is_some() {
        return Err(ApiError::misdirected("Host: sent more than once"));
    }
    let raw = value
        .to_str()
        .map_err(|_| ApiError::misdirected("Host: not a host name"))?;
    if host_allowed(raw, allowed) {
        Ok(())
    } else {
        Err(ApiError::misdirected(format!(
            "Host {raw:?} is not an IP address, localhost or in api.allowed_hosts"
        )))
    }
}

/// `raw` is a `Host` value: `host[:port]` or `[v6][:port]`.
pub(crate) fn host_allowed(raw: &str, allowed: &[String]) -> bool {
    let Some((host, _port)) = crate::config::split_host_port(raw) else {
        return false;
    };
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    host.parse::<std::net::Ipv4Addr>().is_ok()
        || host.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(host))
}

/// Browsers send `Origin` on every cross-site request that can change
/// something; the app's server-to-server calls send none. Same origin is
/// `http://` plus the request's `Host` (already checked above).
fn check_origin(allowed: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    let mut values = headers.get_all(header::ORIGIN).iter();
    let Some(value) = values.next() else {
        return Ok(());
    };
    if values.next().is_some() {
        return Err(ApiError::forbidden("Origin: sent more than once"));
    }
    let raw = value
        .to_str()
        .map_err(|_| ApiError::forbidden("Origin: not an origin"))?;
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if origin_allowed(raw, host, allowed) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "Origin {raw:?} is not this admin listener's own origin nor in api.allowed_origins"
        )))
    }
}

/// `null` (sandboxed frames, file: pages) never matches: it is no origin.
pub(crate) fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    let same = host.is_some_and(|h| {
        origin
            .strip_prefix("http://")
            .is_some_and(|o| o.eq_ignore_ascii_case(h))
    });
    same || allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
}

/// A body must be declared JSON: an HTML form can POST cross-site without
/// a preflight only as form-urlencoded, multipart or text/plain, empty
/// bodies included. Any method but GET/HEAD is held to it even without a
/// body, so an empty form cannot clear the registry; no `Content-Type` and
/// no body (the app's `POST connections/`) is fine.
fn check_content_type(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    let body = announces_body(headers);
    if !body && (method == Method::GET || method == Method::HEAD) {
        return Ok(());
    }
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    match (values.next(), values.next()) {
        (None, _) if !body => Ok(()),
        (None, _) => Err(ApiError::unsupported_media_type(
            "Content-Type: a request body must be sent as application/json",
        )),
        (Some(v), None) if v.to_str().is_ok_and(is_json) => Ok(()),
        (Some(v), None) => Err(ApiError::unsupported_media_type(format!(
            "Content-Type {:?}: must be application/json",
            String::from_utf8_lossy(v.as_bytes())
        ))),
        (Some(_), Some(_)) => Err(ApiError::unsupported_media_type(
            "Content-Type: sent more than once",
        )),
    }
}

/// `application/json`, any case, parameters (`; charset=utf-8`) allowed.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// A `Content-Length` above 0 (or one we cannot read) or any
/// `Transfer-Encoding`: HTTP/1.1 has no other way to send a body.
fn announces_body(headers: &HeaderMap) -> bool {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()));
    let sized = match length {
        None | Some(Some(0)) => false,
        Some(_) => true,
    };
    sized || headers.contains_key(header::TRANSFER_ENCODING)
}

/// True when `Accept` lists `application/openmetrics-text` with a non-zero
/// quality (Prometheus does); curl, older scrapers and most agents do not
/// and get the classic format.
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut params = range.split(';').map(str::trim);
            let media = params.next().unwrap_or("");
            media.eq_ignore_ascii_case("application/openmetrics-text")
                && !params.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                })
        })
}

/// 200 only when the store answers (Redis engine: Redis answers and the
/// bus subscription is up: a node that cannot hear the bus silently misses
/// other nodes' messages).
async fn healthz(app: &Front, via: Option<&Via>) -> Response {
    let connections = app.node().live_streams();
    let health = app.node().health().await;
    let mut body = json!({"status": "ok", "engine": health.engine, "node_id": app.node().id(),
                          "connections": connections});
    if let Some(via) = via {
        body["admin_listen"] = json!(&*via.listener);
    }
    let mut problem = None;
    if let Some(redis) = &health.redis {
        body["redis"] = json!(if redis.is_ok() { "ok" } else { "unreachable" });
        if let Err(e) = redis {
            problem = Some(format!("redis unreachable: {e}"));
        }
    }
    if let Some(bus) = health.bus {
        body["bus"] = json!(if bus { "ok" } else { "down" });
        if !bus && problem.is_none() {
            problem = Some("bus subscription down".to_string());
        }
    }
    match problem {
        None => envelope::json_response(StatusCode::OK, &body),
        Some(message) => {
            body["status"] = json!("error");
            body["code"] = json!(503);
            body["message"] = json!(message);
            envelope::json_response(StatusCode::SERVICE_UNAVAILABLE, &body)
        }
    }
}

/// Reads at most `limit` bytes; more is a 413, whether announced by
/// Content-Length or found while reading a chunked body.
async fn read_body<S, B>(headers: &HeaderMap, body: S, limit: usize) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
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

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body: not valid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::bad_request("body: must be a JSON object")),
    }
}

fn reject_unknown<'a>(
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

/// Event names: 1 to 64 of `A-Za-z0-9_.:-`, so never a line break.
pub(crate) fn validate_event(event: &str) -> Result<(), String> {
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
    /// The first field given more than once: JSON parsers disagree on
    /// which one counts (serde and Python keep the last), so a front end
    /// that checked the first `to` would be fooled.
    repeated: Option<&'static str>,
    unknown: Vec<String>,
}

const SEND_FIELDS: [&str; 4] = ["to", "data", "event", "all_connections"];

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
                FieldName::Known(_) => &mut f.all_connections,
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
pub(crate) fn parse_send(body: &[u8]) -> Result<Outgoing, ApiError> {
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
        to,
        event,
        data: compact(data.get()),
        all_connections,
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
pub(crate) fn parse_batch(
    body: &[u8],
    max: usize,
    max_bytes: usize,
) -> Result<Vec<Outgoing>, ApiError> {
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
                let what = match e.message.strip_prefix("body") {
                    Some(rest) => format!("messages[{i}]{rest}"),
                    None => format!("messages[{i}].{}", e.message),
                };
                ApiError::bad_request(what)
            })
        })
        .collect()
}

/// Cleanup body: empty, or `{"timeout": secs}`.
fn parse_cleanup(body: &[u8], default: f64) -> Result<f64, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(default);
    }
    let mut map = parse_object(body)?;
    reject_unknown(map.keys(), &["timeout"])?;
    match map.remove("timeout") {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(t) if t.is_finite() && t >= 0.0 => Ok(t),
            _ => Err(ApiError::bad_request(
                "timeout: must be a non-negative number of seconds",
            )),
        },
        Some(_) => Err(ApiError::bad_request(
            "timeout: must be a number of seconds",
        )),
    }
}

fn counts(removed: &Removed) -> Value {
    json!({"connection_count": removed.connection_count(), "user_count": removed.user_count()})
}

/// Users per page when a cursor comes without a `limit`.
const DEFAULT_PAGE: usize = 1_000;

/// `?limit=N&cursor=C`: `None` when neither is given (the whole listing);
/// an empty cursor is the first page.
pub(crate) fn parse_paging(query: &str) -> Result<Option<(Option<Cursor>, usize)>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad_request(format!("query string: {e}")))?;
    let mut limit = None;
    let mut cursor = None;
    for (key, value) in pairs {
        match key.as_str() {
            "limit" => limit = Some(value),
            "cursor" => cursor = Some(value),
            _ => {}
        }
    }
    if limit.is_none() && cursor.is_none() {
        return Ok(None);
    }
    let limit = match limit {
        None => DEFAULT_PAGE,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "limit: must be a whole number from 1 to {MAX_PAGE}"
                ))
            })?,
    };
    let cursor = match cursor.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<Cursor>()
                .map_err(|e| ApiError::bad_request(format!("cursor: {e}")))?,
        ),
    };
    Ok(Some((cursor, limit)))
}

/// The `data` of one page: the unpaged shape for the page's users, the
/// registry-wide counts, and `next_cursor`.
pub(crate) fn page_json(page: &Page) -> Value {
    let details: Map<String, Value> = page
        .users
        .iter()
        .map(|(user, list)| (user.clone(), json!(list)))
        .collect();
    json!({
        "active_users": page.users.iter().map(|(u, _)| u).collect::<Vec<_>>(),
        "user_count": page.user_count,
        "total_connections": page.total_connections,
        "connection_details": details,
        "next_cursor": page.next.as_ref().map(ToString::to_string),
    })
}

pub(crate) fn user_json(user: &str, list: &[ConnectionRecord]) -> Value {
    json!({
        "username": user,
        "connection_count": list.len(),
        "connection_ids": list.iter().map(|r| &r.connection_id).collect::<Vec<_>>(),
        "connections": list,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_with_and_without_slash() {
        let b = "/notifications";
        assert_eq!(
            parse_route(b, "/notifications/send/"),
            Some(AdminRoute::Send)
        );
        assert_eq!(
            parse_route(b, "/notifications/send"),
            Some(AdminRoute::Send)
        );
        assert_eq!(
            parse_route(b, "/notifications/connections/al%C3%A9/"),
            Some(AdminRoute::UserConnections("alé".into()))
        );
        assert_eq!(parse_route(b, "/healthz"), Some(AdminRoute::Healthz));
        assert_eq!(parse_route(b, "/notificationsx/send"), None);
        assert_eq!(parse_route(b, "/notifications/stream/"), None);
        assert_eq!(parse_route("", "/send/"), Some(AdminRoute::Send));
        assert_eq!(
            parse_route(b, "/notifications/admin/"),
            Some(AdminRoute::Console(ConsoleRoute::Asset(
                console::Asset::Page
            )))
        );
        assert_eq!(
            parse_route(b, "/notifications/admin"),
            Some(AdminRoute::Console(ConsoleRoute::Asset(
                console::Asset::Page
            )))
        );
        assert_eq!(
            parse_route(b, "/notifications/admin/events"),
            Some(AdminRoute::Console(ConsoleRoute::Events))
        );
        assert_eq!(parse_route(b, "/notifications/administrator"), None);
        assert_eq!(parse_route(b, "/admin/"), None);
    }

    #[test]
    fn hosts_a_browser_may_name() {
        let allowed = vec!["sse-admin.internal".to_string()];
        for ok in [
            "127.0.0.1",
            "127.0.0.1:8091",
            "10.1.2.3:80",
            "[::1]",
            "[::1]:8091",
            "localhost",
            "LocalHost:8091",
            "sse-admin.internal:8091",
            "SSE-Admin.Internal",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for bad in [
            "rebind.evil.example:8091",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "localhost.",
            "::1",
            "[evil]:80",
            "127.0.0.1:x",
            "",
            "sse-admin.internal.evil.example",
        ] {
            assert!(!host_allowed(bad, &allowed), "{bad}");
        }
    }

    #[test]
    fn origins_a_browser_may_send() {
        let allowed = vec!["https://console.example.com".to_string()];
        let host = Some("127.0.0.1:8091");
        assert!(origin_allowed("http://127.0.0.1:8091", host, &allowed));
        assert!(origin_allowed(
            "https://console.example.com",
            host,
            &allowed
        ));
        assert!(origin_allowed(
            "HTTPS://Console.Example.com",
            host,
            &allowed
        ));
        for bad in [
            "null",
            "http://evil.example",
            "https://127.0.0.1:8091",
            "http://127.0.0.1:8092",
            "http://console.example.com",
            "",
        ] {
            assert!(!origin_allowed(bad, host, &allowed), "{bad}");
        }
        assert!(!origin_allowed("http://127.0.0.1:8091", None, &allowed));
    }

    #[test]
    fn json_content_type() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
        assert!(!is_json("application/jsonp"));
    }

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
        let err = |b: &str| parse_send(b.as_bytes()).unwrap_err().message;
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
        let err = |b: &str| parse_send(b.as_bytes()).unwrap_err().message;
        assert!(err(r#"{"to":"a","to":"b","data":1}"#).starts_with("to: given more than once"));
        assert!(err(r#"{"to":"a","\u0074o":"b","data":1}"#).starts_with("to:"));
        assert!(err(r#"{"data":1,"data":2}"#).starts_with("data:"));
        assert!(err(r#"{"data":1,"x":1,"x":2}"#).starts_with("unknown field(s): x"));
        // The body is still read to its end: bad JSON after the repeat.
        assert!(err(r#"{"to":"a","to":"b","data":}"#).starts_with("body: not valid JSON"));
        let ok = parse_send(br#"{"data":{"k":1,"k":[2]}}"#).unwrap();
        assert_eq!(ok.data, r#"{"k":1,"k":[2]}"#);
        let batch = |b: &str| parse_batch(b.as_bytes(), 3, 100).unwrap_err().message;
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
        let err = |b: &str| parse_batch(b.as_bytes(), 3, 100).unwrap_err().message;
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
    fn openmetrics_only_when_asked() {
        let accept = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, v.parse().unwrap());
            wants_openmetrics(&h)
        };
        assert!(accept(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(accept("text/plain, Application/OpenMetrics-Text; q=0.9"));
        assert!(!accept("application/openmetrics-text; q=0"));
        assert!(!accept("*/*"));
        assert!(!accept("text/plain;version=0.0.4"));
        assert!(!wants_openmetrics(&HeaderMap::new()));
    }

    #[test]
    fn send_validation_names_the_field() {
        let err = |b: &str| parse_send(b.as_bytes()).unwrap_err().message;
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
            (ok.to, ok.event.as_str(), ok.all_connections),
            (None, "message", true)
        );
    }
}
