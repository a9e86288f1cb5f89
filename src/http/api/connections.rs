//! The registry as a whole: `GET {base}/connections/` (one page with
//! `limit`/`cursor`, else the whole listing streamed), `POST
//! {base}/connections/` (full clear) and `POST {base}/cleanup/` (stale
//! records).

use std::sync::Arc;

use serde_json::{Map, Value};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::extract::{base, body_within, end, only, query, reject, reject_unknown, with_front};
use super::listing::{self, ListingJson, ListingQuery};
use super::model::{CleanedUp, ConnectionsPage, Counts};
use crate::config::Config;
use crate::http::envelope::{self, ApiError};
use crate::http::Front;

pub(super) fn routes(front: &Arc<Front>, base_path: &str) -> BoxedFilter<(Response,)> {
    let connections = base(base_path).and(warp::path("connections")).and(end());
    let cleanup = base(base_path).and(warp::path("cleanup")).and(end());
    connections
        .clone()
        .and(warp::get())
        .and(with_front(front))
        .and(query::<ListingQuery>())
        .and_then(list)
        .or(connections
            .clone()
            .and(warp::post())
            .and(with_front(front))
            .and_then(clear))
        .unify()
        .or(connections.and(only("GET, POST")))
        .unify()
        .or(cleanup
            .clone()
            .and(warp::post())
            .and(with_front(front))
            .and(stale_timeout(front))
            .and_then(clean_up))
        .unify()
        .or(cleanup.and(only("POST")))
        .unify()
        .boxed()
}

async fn list(front: Arc<Front>, asked: ListingQuery) -> Result<Response, Rejection> {
    match asked {
        ListingQuery::Page { after, limit } => {
            let page = front
                .node()
                .list_page(after.as_ref(), limit)
                .await
                .map_err(|e| reject(e.into()))?;
            Ok(envelope::ok(&ConnectionsPage::from(&page)))
        }
        ListingQuery::Whole => {
            let body = listing::body(ListingJson::new(front.node().listing()))
                .await
                .map_err(|e| reject(e.into()))?;
            Ok(envelope::streamed(body, "application/json"))
        }
    }
}

async fn clear(front: Arc<Front>) -> Result<Response, Rejection> {
    let cleared = front.node().clear().await.map_err(|e| reject(e.into()))?;
    Ok(envelope::ok(&Counts::from(cleared)))
}

async fn clean_up(front: Arc<Front>, timeout: f64) -> Result<Response, Rejection> {
    let removed = front
        .node()
        .cleanup(timeout)
        .await
        .map_err(|e| reject(e.into()))?;
    Ok(envelope::ok(&CleanedUp::from(removed)))
}

/// A cleanup body: empty, or `{"timeout": secs}`; without a timeout,
/// `sweep.stale_timeout_secs`.
fn stale_timeout(front: &Arc<Front>) -> impl Filter<Extract = (f64,), Error = Rejection> + Clone {
    body_within(front, |c: &Config| c.api.max_body_bytes)
        .and(with_front(front))
        .and_then(|body: bytes::Bytes, front: Arc<Front>| async move {
            let default = front.config().sweep.stale_timeout_secs as f64;
            parse_cleanup(&body, default).map_err(reject)
        })
}

fn parse_cleanup(body: &[u8], default: f64) -> Result<f64, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(default);
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body: not valid JSON: {e}")))?;
    let mut map: Map<String, Value> = match value {
        Value::Object(map) => map,
        _ => return Err(ApiError::bad_request("body: must be a JSON object")),
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_bodies() {
        assert_eq!(parse_cleanup(b" ", 300.0).unwrap(), 300.0);
        assert_eq!(parse_cleanup(br#"{"timeout":null}"#, 300.0).unwrap(), 300.0);
        assert_eq!(parse_cleanup(br#"{"timeout":5}"#, 300.0).unwrap(), 5.0);
        assert!(parse_cleanup(br#"{"timeout":-1}"#, 300.0).is_err());
        assert!(parse_cleanup(br#"{"timeot":1}"#, 300.0)
            .unwrap_err()
            .message()
            .starts_with("unknown field(s): timeot"));
    }
}
