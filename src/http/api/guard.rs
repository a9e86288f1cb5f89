//! What stands in front of every admin route, in this order: the browser
//! guards (README "Browser safety": `Host` against DNS rebinding, `Origin`
//! against cross-site pages), the bearer token (`api.token`; not asked on
//! the open paths), and the `Content-Type` of a body (no HTML form can
//! send JSON). Each refusal is an [`ApiError`] whose message names the
//! header.

use std::sync::Arc;

use warp::http::{header, HeaderMap, Method};
use warp::path::FullPath;
use warp::{Filter, Rejection};

use super::extract::{reject, with_front};
use super::PathKind;
use crate::http::auth::admin_allowed;
use crate::http::envelope::ApiError;
use crate::http::listener::Via;
use crate::http::Front;

/// The guards as one filter: it extracts nothing and rejects with the
/// first refusal.
pub(super) fn guards(
    front: &Arc<Front>,
    base_path: &str,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    let base_path: Arc<str> = Arc::from(base_path);
    with_front(front)
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<Via>())
        .and_then(
            move |front: Arc<Front>,
                  method: Method,
                  path: FullPath,
                  headers: HeaderMap,
                  via: Option<Via>| {
                let open = PathKind::of(&base_path, path.as_str()).is_open();
                let unix = via.is_some_and(|v| v.unix);
                async move {
                    let config = front.config();
                    check(&config.api, open, unix, &method, &headers).map_err(reject)
                }
            },
        )
        .untuple_one()
}

fn check(
    api: &crate::config::ApiConfig,
    open: bool,
    unix: bool,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    // Before the token: a page in the operator's browser must get nothing,
    // not even a 401 that tells it the listener exists behind that name.
    // Over the Unix socket `Host` is whatever the client chose to write
    // (`localhost`, `unix`, the socket's name): no browser connects there,
    // so there is no rebinding to guard against and any name is answered.
    if !unix {
        check_host(&api.allowed_hosts, headers)?;
    }
    check_origin(&api.allowed_origins, headers)?;
    // The token guards every request but the open paths (/healthz and the
    // console's page, which holds no data and asks for the token), unknown
    // paths too, so an anonymous caller learns nothing about what exists.
    if !open && !admin_allowed(api.token.expose(), headers) {
        return Err(ApiError::bearer_required(
            "missing or wrong bearer token (api.token)",
        ));
    }
    check_content_type(method, headers)
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
fn host_allowed(raw: &str, allowed: &[String]) -> bool {
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
fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
