//! `GET /healthz` (open: no token) and `GET /metrics`, outside the base
//! path: what load balancers and Prometheus ask.

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::http::{header, HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Filter;

use super::extract::{end, only, with_front};
use super::model::Health;
use crate::http::envelope;
use crate::http::listener::Via;
use crate::http::Front;
use crate::store::BusHealth;

pub(super) fn routes(front: &Arc<Front>) -> BoxedFilter<(Response,)> {
    let healthz = warp::path("healthz").and(end());
    let metrics = warp::path("metrics").and(end());
    healthz
        .and(warp::get())
        .and(with_front(front))
        .and(warp::ext::optional::<Via>())
        .then(health)
        .or(healthz.and(only("GET")))
        .unify()
        .or(metrics
            .and(warp::get())
            .and(warp::header::headers_cloned())
            .and(with_front(front))
            .map(metrics_text))
        .unify()
        .or(metrics.and(only("GET")))
        .unify()
        .boxed()
}

/// 200 only when the store answers (Redis engine: Redis answers and the
/// bus subscription is up: a node that cannot hear the bus silently misses
/// other nodes' messages). On a Redis Cluster a node deaf to some
/// partitions only (a primary failing over) stays 200 with `"bus":
/// "partial"`: every node is so at once, and it refuses only the sends
/// those partitions carry.
async fn health(front: Arc<Front>, via: Option<Via>) -> Response {
    let state = front.node().health().await;
    let mut health = Health {
        admin_listen: via.map(|v| v.listener.to_string()),
        bus: state.bus.map(|b| b.as_str().to_string()),
        code: None,
        connections: front.node().live_streams(),
        engine: state.engine.to_string(),
        message: None,
        node_id: front.node().id().to_string(),
        redis: state
            .redis
            .as_ref()
            .map(|r| if r.is_ok() { "ok" } else { "unreachable" }.to_string()),
        status: "ok".to_string(),
    };
    let problem = match (&state.redis, state.bus) {
        (Some(Err(e)), _) => Some(format!("redis unreachable: {e}")),
        (_, Some(BusHealth::Down)) => Some("bus subscription down".to_string()),
        _ => None,
    };
    match problem {
        None => envelope::json_response(StatusCode::OK, &health),
        Some(message) => {
            health.status = "error".to_string();
            health.code = Some(503);
            health.message = Some(message);
            envelope::json_response(StatusCode::SERVICE_UNAVAILABLE, &health)
        }
    }
}

/// The classic text format, or OpenMetrics to a scraper that asks for it.
fn metrics_text(headers: HeaderMap, front: Arc<Front>) -> Response {
    let (text, content_type) = if wants_openmetrics(&headers) {
        (
            front.node().metrics().render(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            front.node().metrics().render_classic(),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    let mut resp = Response::new(text.into());
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
