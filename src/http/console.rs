//! The admin console (README "Admin console"): one page served from the
//! binary on the admin listener, and its live stream
//! (`{base}/admin/events`) of what the node's reporter
//! ([`crate::node::report`]) samples.
//!
//! The page's actions (send, disconnect, cleanup, clear) go through the
//! ordinary API routes; only reads the API has no shape for live here.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use warp::http::{header, HeaderValue};
use warp::reply::Response;

use super::envelope;
use super::Front;
use crate::node::frame;
use crate::node::report::{RING, SAMPLE_EVERY};

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// The page and its assets: what answers without `api.token` (they hold
/// no data). Everything else of the console needs the token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Asset {
    Page,
    Script,
    Style,
}

/// The page or one of its assets, with headers that keep it from being
/// framed or from loading anything but itself.
pub(crate) fn asset(which: Asset, base: &str) -> Response {
    let (body, content_type): (Bytes, &str) = match which {
        Asset::Page => (
            Bytes::from(PAGE.replace("{{BASE}}", &html_escape(base))),
            "text/html; charset=utf-8",
        ),
        Asset::Script => (
            Bytes::from_static(SCRIPT.as_bytes()),
            "text/javascript; charset=utf-8",
        ),
        Asset::Style => (
            Bytes::from_static(STYLE.as_bytes()),
            "text/css; charset=utf-8",
        ),
    };
    let mut resp = Response::new(body.into());
    let h = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The console's live stream: `hello` (the ring so far) and then a `tick`
/// a second; it ends when the node shuts down.
pub(crate) fn events(app: Arc<Front>) -> Response {
    let hello = json!({
        "node_id": app.node().id(),
        "interval_secs": SAMPLE_EVERY.as_secs(),
        "window_secs": SAMPLE_EVERY.as_secs() * RING as u64,
        "samples": app.node().reports().samples(),
    });
    let mut ticks = app.node().reports().ticks();
    ticks.mark_changed();
    let first = frame::event("hello", &hello.to_string());
    let state = (app, ticks, Some(first));
    let stream = futures_util::stream::unfold(state, |(app, mut ticks, first)| async move {
        if let Some(first) = first {
            return Some((Ok::<_, std::convert::Infallible>(first), (app, ticks, None)));
        }
        loop {
            tokio::select! {
                _ = app.node().shutdown().cancelled() => return None,
                changed = ticks.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    let latest = ticks.borrow_and_update().clone();
                    if let Some(tick) = latest {
                        let f = frame::event("tick", &tick);
                        return Some((Ok(f), (app, ticks, None)));
                    }
                }
                // Nothing for a while (the sampler waits on Redis): a
                // comment keeps proxies and the page from timing out.
                _ = tokio::time::sleep(Duration::from_secs(15)) => {
                    let f = Bytes::from_static(b": keep-alive\n\n");
                    return Some((Ok(f), (app, ticks, None)));
                }
            }
        }
    });
    let mut resp = envelope::streamed(stream, "text/event-stream");
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}
