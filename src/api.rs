//! The admin listener: REST routes of SPEC 3, `/healthz`, `/metrics`.
//! Input is validated here, field by field, before anything is sent or
//! changed; errors leave through [`crate::envelope`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde_json::{json, Map, Value};
use warp::http::{header, HeaderMap, Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

use crate::app::App;
use crate::auth::{admin_allowed, validate_username};
use crate::envelope::{self, ApiError};
use crate::registry::{ConnectionRecord, Removed};
use crate::router::Outgoing;

/// The admin routes, relative to `server.base_path` where SPEC puts them.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminRoute {
    Send,
    Connections,
    UserConnections(String),
    Cleanup,
    Healthz,
    Metrics,
}

impl AdminRoute {
    /// Label for metrics (bounded: never the username).
    pub fn label(&self) -> &'static str {
        match self {
            AdminRoute::Send => "send",
            AdminRoute::Connections => "connections",
            AdminRoute::UserConnections(_) => "user_connections",
            AdminRoute::Cleanup => "cleanup",
            AdminRoute::Healthz => "healthz",
            AdminRoute::Metrics => "metrics",
        }
    }

    fn allowed(&self) -> &'static [Method] {
        match self {
            AdminRoute::Send | AdminRoute::Cleanup => &[Method::POST],
            AdminRoute::Connections => &[Method::GET, Method::POST],
            AdminRoute::UserConnections(_) => &[Method::GET, Method::DELETE],
            AdminRoute::Healthz | AdminRoute::Metrics => &[Method::GET],
        }
    }
}

/// Strips `base` and a trailing slash: `/notifications/send/` -> `/send`.
pub fn relative<'a>(base: &str, path: &'a str) -> Option<&'a str> {
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

pub fn parse_route(base: &str, path: &str) -> Option<AdminRoute> {
    match path.strip_suffix('/').unwrap_or(path) {
        "/healthz" => return Some(AdminRoute::Healthz),
        "/metrics" => return Some(AdminRoute::Metrics),
        _ => {}
    }
    let rest = relative(base, path)?;
    match rest {
        "/send" => Some(AdminRoute::Send),
        "/connections" => Some(AdminRoute::Connections),
        "/cleanup" => Some(AdminRoute::Cleanup),
        _ => {
            let user = rest.strip_prefix("/connections/")?;
            if user.is_empty() || user.contains('/') {
                return None;
            }
            let user = percent_encoding::percent_decode_str(user)
                .decode_utf8()
                .ok()?
                .into_owned();
            Some(AdminRoute::UserConnections(user))
        }
    }
}

/// The whole admin listener as one filter.
pub fn routes(
    app: Arc<App>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    warp::any()
        .map(move || app.clone())
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            |app: Arc<App>,
             method: Method,
             path: warp::path::FullPath,
             headers: HeaderMap,
             body| async move {
                let config = app.config();
                let route = parse_route(&config.server.base_path, path.as_str());
                let label = route.as_ref().map_or("unknown", AdminRoute::label);
                let resp = envelope::respond(dispatch(&app, route, method, &headers, body).await);
                app.metrics.http(label, resp.status().as_u16());
                resp
            },
        )
        .recover(envelope::recover)
        .unify()
}

async fn dispatch<S, B>(
    app: &App,
    route: Option<AdminRoute>,
    method: Method,
    headers: &HeaderMap,
    body: S,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    // The token guards every request but /healthz, unknown routes too, so
    // an anonymous caller learns nothing about what exists.
    let config = app.config();
    if route != Some(AdminRoute::Healthz) && !admin_allowed(config.api.token.expose(), headers) {
        let mut resp =
            ApiError::unauthorized("missing or wrong bearer token (api.token)").into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            warp::http::HeaderValue::from_static("Bearer"),
        );
        return Ok(resp);
    }
    let route = route.ok_or_else(|| ApiError::not_found("no such route"))?;
    if !route.allowed().contains(&method) {
        let allowed: Vec<&str> = route.allowed().iter().map(Method::as_str).collect();
        return Err(ApiError::method_not_allowed(&allowed.join(", ")));
    }
    match (route, method) {
        (AdminRoute::Healthz, _) => Ok(healthz(app).await),
        (AdminRoute::Metrics, _) => {
            let (text, content_type) = if wants_openmetrics(headers) {
                (
                    app.metrics.render(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
            } else {
                (
                    app.metrics.render_classic(),
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
            let sent = app.router.send(msg, &config.history).await?;
            Ok(envelope::ok(&sent))
        }
        (AdminRoute::Connections, Method::GET) => {
            let all = app.registry.list_all().await?;
            Ok(envelope::ok(&connections_json(&all)))
        }
        (AdminRoute::Connections, _) => {
            let removed = app.router.clear().await?;
            Ok(envelope::ok(&counts(&removed)))
        }
        (AdminRoute::UserConnections(user), Method::GET) => {
            validate_username(&user).map_err(|e| ApiError::bad_request(format!("username {e}")))?;
            let list = app.registry.list_user(&user).await?;
            Ok(envelope::ok(&user_json(&user, &list)))
        }
        (AdminRoute::UserConnections(user), _) => {
            validate_username(&user).map_err(|e| ApiError::bad_request(format!("username {e}")))?;
            let removed = app.router.disconnect_user(&user).await?;
            Ok(envelope::ok(&counts(&removed)))
        }
        (AdminRoute::Cleanup, _) => {
            let body = read_body(headers, body, config.api.max_body_bytes).await?;
            let timeout = parse_cleanup(&body, config.sweep.stale_timeout_secs as f64)?;
            let removed = app.router.cleanup(timeout).await?;
            let mut data = counts(&removed);
            data["connection_ids"] = json!(removed.connection_ids);
            Ok(envelope::ok(&data))
        }
    }
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

/// 200 only when Redis answers and the bus subscription is up: a node
/// that cannot hear the bus silently misses other nodes' messages.
async fn healthz(app: &App) -> Response {
    let connections = app.hub.len();
    let bus = if *app.bus_up.borrow() { "ok" } else { "down" };
    let problem = match app.registry.ping().await {
        Err(e) => Some(format!("redis unreachable: {e}")),
        Ok(()) if bus != "ok" => Some("bus subscription down".to_string()),
        Ok(()) => None,
    };
    let redis = if problem.as_deref().is_some_and(|p| p.starts_with("redis")) {
        "unreachable"
    } else {
        "ok"
    };
    match problem {
        None => envelope::json_response(
            StatusCode::OK,
            &json!({"status": "ok", "redis": redis, "bus": bus, "node_id": app.node_id,
                    "connections": connections}),
        ),
        Some(message) => envelope::json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"code": 503, "message": message, "status": "error", "redis": redis,
                    "bus": bus, "node_id": app.node_id, "connections": connections}),
        ),
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
    let mut buf = BytesMut::new();
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

fn reject_unknown(map: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    let unknown: Vec<&str> = map
        .keys()
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
pub fn validate_event(event: &str) -> Result<(), String> {
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

/// Validates a send body into a message (SPEC 3).
pub fn parse_send(body: &[u8]) -> Result<Outgoing, ApiError> {
    let mut map = parse_object(body)?;
    reject_unknown(&map, &["to", "data", "event", "all_connections"])?;
    let to = match map.remove("to") {
        None | Some(Value::Null) => None,
        Some(Value::String(user)) => {
            validate_username(&user).map_err(|e| ApiError::bad_request(format!("to: {e}")))?;
            Some(user)
        }
        Some(_) => return Err(ApiError::bad_request("to: must be a string or null")),
    };
    let data = map
        .remove("data")
        .ok_or_else(|| ApiError::bad_request("data: required (null is allowed)"))?;
    let event = match map.remove("event") {
        None => "message".to_string(),
        Some(Value::String(e)) => {
            validate_event(&e).map_err(|m| ApiError::bad_request(format!("event: {m}")))?;
            e
        }
        Some(_) => return Err(ApiError::bad_request("event: must be a string")),
    };
    let all_connections = match map.remove("all_connections") {
        None => true,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            return Err(ApiError::bad_request(
                "all_connections: must be true or false",
            ))
        }
    };
    Ok(Outgoing {
        to,
        event,
        data,
        all_connections,
    })
}

/// Cleanup body: empty, or `{"timeout": secs}`.
fn parse_cleanup(body: &[u8], default: f64) -> Result<f64, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(default);
    }
    let mut map = parse_object(body)?;
    reject_unknown(&map, &["timeout"])?;
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

pub fn connections_json(all: &BTreeMap<String, Vec<ConnectionRecord>>) -> Value {
    let total: usize = all.values().map(Vec::len).sum();
    json!({
        "active_users": all.keys().collect::<Vec<_>>(),
        "user_count": all.len(),
        "total_connections": total,
        "connection_details": all,
    })
}

pub fn user_json(user: &str, list: &[ConnectionRecord]) -> Value {
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
