//! The registry as a whole: `GET {base}/connections/` (one page with
//! `limit`/`cursor`, else the whole listing streamed), `POST
//! {base}/connections/` (full clear) and `POST {base}/cleanup/` (stale
//! records).

use std::sync::Arc;

use serde_json::{Map, Value};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::extract::{
    base, body_within, end, only, query, query_pairs, reject, reject_unknown, with_front, FromQuery,
};
use super::listing;
use super::model::{CleanedUp, ConnectionsPage, Counts};
use crate::config::Config;
use crate::http::envelope::{self, ApiError};
use crate::http::Front;
use crate::store::{Cursor, MAX_PAGE};

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

/// Users per page when a cursor comes without a `limit`.
const DEFAULT_PAGE: usize = 1_000;

/// `?limit=N&cursor=C`: one page (an empty cursor is the first); neither
/// of them: the whole listing.
#[derive(Debug, Clone, PartialEq)]
enum ListingQuery {
    Whole,
    Page { after: Option<Cursor>, limit: usize },
}

impl FromQuery for ListingQuery {
    fn from_query(query: &str) -> Result<Self, ApiError> {
        let mut limit = None;
        let mut cursor = None;
        for (key, value) in query_pairs(query)? {
            match key.as_str() {
                "limit" => limit = Some(value),
                "cursor" => cursor = Some(value),
                _ => {}
            }
        }
        if limit.is_none() && cursor.is_none() {
            return Ok(ListingQuery::Whole);
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
        let after = match cursor.as_deref() {
            None | Some("") => None,
            Some(text) => Some(
                text.parse::<Cursor>()
                    .map_err(|e| ApiError::bad_request(format!("cursor: {e}")))?,
            ),
        };
        Ok(ListingQuery::Page { after, limit })
    }
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
            let body = listing::body(front.node().listing())
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
    fn paging_asked_or_not() {
        assert_eq!(ListingQuery::from_query("").unwrap(), ListingQuery::Whole);
        assert_eq!(
            ListingQuery::from_query("x=1").unwrap(),
            ListingQuery::Whole
        );
        assert_eq!(
            ListingQuery::from_query("cursor=").unwrap(),
            ListingQuery::Page {
                after: None,
                limit: DEFAULT_PAGE
            }
        );
        assert!(ListingQuery::from_query("limit=0").is_err());
        assert!(ListingQuery::from_query("cursor=zz").is_err());
    }

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
