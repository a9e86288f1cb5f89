//! The admin console (README "Admin console") below `{base}/admin`: its
//! page and assets, served from the binary (open: they hold no data), its
//! live stream of what the node's reporter ([`crate::node::report`])
//! samples, and the reads the API has no shape for (a page of users or of
//! followed topics by name prefix; a user's connections, or a topic's
//! followers, with their nodes). The page's actions (send, disconnect,
//! cleanup, clear) use the ordinary routes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use warp::http::{header, HeaderValue};

use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::extract::{
    base, end, only, query, query_pairs, reject, with_front, FromQuery, TopicName, UserName,
};
use super::model::{ConsoleTopic, ConsoleTopics, ConsoleUser, Topic, UserCount, UsersPage};
use crate::http::envelope::{self, ApiError};
use crate::http::Front;
use crate::node::frame;
use crate::node::report::{RING, SAMPLE_EVERY};
use crate::store::Cursor;
use crate::topic;

pub(super) fn routes(front: &Arc<Front>, base_path: &str) -> BoxedFilter<(Response,)> {
    let admin = base(base_path).and(warp::path("admin"));
    // An asset's path answers GET with it, any other method with a 405.
    let asset_route = |at: BoxedFilter<()>, which: Asset| {
        let base_path = base_path.to_string();
        at.clone()
            .and(warp::get())
            .map(move || asset_response(which, &base_path))
            .or(at.and(only("GET")))
            .unify()
    };
    let events = admin.clone().and(warp::path("events")).and(end());
    let users = admin.clone().and(warp::path("users")).and(end());
    let user = admin
        .clone()
        .and(warp::path("connections"))
        .and(warp::path::param::<UserName>())
        .and(end());
    let topics = admin.clone().and(warp::path("topics")).and(end());
    let topic = admin
        .clone()
        .and(warp::path("topics"))
        .and(warp::path::param::<TopicName>())
        .and(end());
    asset_route(admin.clone().and(end()).boxed(), Asset::Page)
        .or(asset_route(
            admin
                .clone()
                .and(warp::path("console.js"))
                .and(end())
                .boxed(),
            Asset::Script,
        ))
        .unify()
        .or(asset_route(
            admin
                .clone()
                .and(warp::path("console.css"))
                .and(end())
                .boxed(),
            Asset::Style,
        ))
        .unify()
        .or(events
            .clone()
            .and(warp::get())
            .and(with_front(front))
            .map(live_events))
        .unify()
        .or(events.and(only("GET")))
        .unify()
        .or(users
            .clone()
            .and(warp::get())
            .and(with_front(front))
            .and(query::<PrefixQuery>())
            .and_then(list_users))
        .unify()
        .or(users.and(only("GET")))
        .unify()
        .or(user
            .clone()
            .and(warp::get())
            .and(with_front(front))
            .and_then(user_connections))
        .unify()
        .or(user.map(|_: UserName| ()).untuple_one().and(only("GET")))
        .unify()
        .or(topics
            .clone()
            .and(warp::get())
            .and(with_front(front))
            .and(query::<PrefixQuery>())
            .and_then(list_topics))
        .unify()
        .or(topics.and(only("GET")))
        .unify()
        .or(topic
            .clone()
            .and(warp::get())
            .and(with_front(front))
            .and_then(topic_followers))
        .unify()
        .or(topic.map(|_: TopicName| ()).untuple_one().and(only("GET")))
        .unify()
        .boxed()
}

const PAGE: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// The page and its assets: what answers without `api.token` (they hold
/// no data). Everything else of the console needs the token.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Asset {
    Page,
    Script,
    Style,
}

/// The page or one of its assets, with headers that keep it from being
/// framed or from loading anything but itself.
fn asset_response(which: Asset, base: &str) -> Response {
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
fn live_events(front: Arc<Front>) -> Response {
    let hello = json!({
        "node_id": front.node().id(),
        "interval_secs": SAMPLE_EVERY.as_secs(),
        "window_secs": SAMPLE_EVERY.as_secs() * RING as u64,
        "samples": front.node().reports().samples(),
    });
    let mut ticks = front.node().reports().ticks();
    ticks.mark_changed();
    let first = frame::event("hello", &hello.to_string());
    let state = (front, ticks, Some(first));
    let stream = futures_util::stream::unfold(state, |(front, mut ticks, first)| async move {
        if let Some(first) = first {
            return Some((
                Ok::<_, std::convert::Infallible>(first),
                (front, ticks, None),
            ));
        }
        loop {
            tokio::select! {
                _ = front.node().shutdown().cancelled() => return None,
                changed = ticks.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    let latest = ticks.borrow_and_update().clone();
                    if let Some(tick) = latest {
                        let f = frame::event("tick", &tick);
                        return Some((Ok(f), (front, ticks, None)));
                    }
                }
                // Nothing for a while (the sampler waits on Redis): a
                // comment keeps proxies and the page from timing out.
                _ = tokio::time::sleep(Duration::from_secs(15)) => {
                    let f = Bytes::from_static(b": keep-alive\n\n");
                    return Some((Ok(f), (front, ticks, None)));
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

/// A user's connections with the node holding each, oldest first.
async fn user_connections(user: UserName, front: Arc<Front>) -> Result<Response, Rejection> {
    let user = user.validated().map_err(reject)?;
    let list = front
        .node()
        .list_user(&user)
        .await
        .map_err(|e| reject(e.into()))?;
    Ok(envelope::ok(&ConsoleUser::new(&user, &list)))
}

/// Users (or topics) per page when the page does not say.
const USERS_PAGE: usize = 50;
const USERS_PAGE_MAX: usize = 500;

/// `?prefix=P&cursor=C&limit=N` of the console's user and topic lists.
#[derive(Debug, Clone, Default, PartialEq)]
struct PrefixQuery {
    prefix: String,
    /// The page starts after this name.
    after: Option<Cursor>,
    limit: usize,
}

impl FromQuery for PrefixQuery {
    fn from_query(query: &str) -> Result<Self, ApiError> {
        let mut q = PrefixQuery {
            limit: USERS_PAGE,
            ..Default::default()
        };
        for (key, value) in query_pairs(query)? {
            match key.as_str() {
                "prefix" => q.prefix = value,
                "cursor" if value.is_empty() => q.after = None,
                "cursor" => {
                    q.after = Some(
                        value
                            .parse::<Cursor>()
                            .map_err(|e| ApiError::bad_request(format!("cursor: {e}")))?,
                    )
                }
                "limit" => {
                    q.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=USERS_PAGE_MAX).contains(n))
                        .ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "limit: a whole number from 1 to {USERS_PAGE_MAX}"
                            ))
                        })?
                }
                _ => {}
            }
        }
        Ok(q)
    }
}

async fn list_users(front: Arc<Front>, q: PrefixQuery) -> Result<Response, Rejection> {
    let page = users(&front, &q).await.map_err(reject)?;
    Ok(envelope::ok(&page))
}

/// One page of users (name, connection count) whose names start with the
/// prefix, after the cursor, through the registry's paged listing; and the
/// next page's cursor. Names are in order, so the ones with a prefix are
/// one run: the exact name first, then the names after it, until one does
/// not start with it.
async fn users(front: &Front, q: &PrefixQuery) -> Result<UsersPage, ApiError> {
    let mut users: Vec<UserCount> = Vec::new();
    let mut after = q.after.clone();
    if after.is_none() && !q.prefix.is_empty() {
        let exact = front.node().list_user(&q.prefix).await?;
        if !exact.is_empty() {
            users.push(UserCount {
                connection_count: exact.len(),
                username: q.prefix.clone(),
            });
        }
        after = Some(Cursor(q.prefix.clone()));
    }
    let want = q.limit - users.len();
    let mut more = want == 0;
    let mut totals = None;
    if want > 0 {
        // One more than shown, to know whether a next page holds any.
        let page = front.node().list_page(after.as_ref(), want + 1).await?;
        totals = Some((page.user_count, page.total_connections));
        more = page.next.is_some();
        for (user, list) in page.users {
            if !user.starts_with(&q.prefix) {
                more = false;
                break;
            }
            if users.len() == q.limit {
                more = true;
                break;
            }
            users.push(UserCount {
                connection_count: list.len(),
                username: user,
            });
        }
    }
    let next_cursor = match users.last() {
        Some(last) if more => Some(Cursor(last.username.clone()).to_string()),
        _ => None,
    };
    Ok(UsersPage {
        next_cursor,
        total_connections: totals.map(|t| t.1),
        user_count: totals.map(|t| t.0),
        users,
    })
}

/// A topic's followers with the node holding each stream.
async fn topic_followers(topic: TopicName, front: Arc<Front>) -> Result<Response, Rejection> {
    let topic = topic.validated().map_err(reject)?;
    let presence = front
        .node()
        .topic(&topic)
        .await
        .map_err(|e| reject(e.into()))?;
    Ok(envelope::ok(&ConsoleTopic::new(&topic, presence)))
}

async fn list_topics(front: Arc<Front>, q: PrefixQuery) -> Result<Response, Rejection> {
    let page = topics(&front, &q).await.map_err(reject)?;
    Ok(envelope::ok(&page))
}

/// One page of followed topics whose names start with the prefix, after
/// the cursor, with their counts, through the registry's paged listing;
/// and the next page's cursor. As for the users: names are in order, so
/// the ones with a prefix are one run, the exact name first.
async fn topics(front: &Front, q: &PrefixQuery) -> Result<ConsoleTopics, ApiError> {
    // A prefix no topic name can start with lists nothing (and is never
    // handed to the registry).
    if !q.prefix.is_empty() && topic::name_error(&q.prefix).is_some() {
        return Ok(ConsoleTopics {
            next_cursor: None,
            topic_count: None,
            topics: Vec::new(),
        });
    }
    let mut topics: Vec<Topic> = Vec::new();
    let mut after = q.after.clone();
    if after.is_none() && !q.prefix.is_empty() {
        let exact = front.node().topic(&q.prefix).await?;
        if !exact.connections.is_empty() {
            topics.push(Topic {
                topic: q.prefix.clone(),
                connection_count: exact.connections.len(),
                user_count: exact.users.len(),
            });
        }
        after = Some(Cursor(q.prefix.clone()));
    }
    let want = q.limit - topics.len();
    let mut more = want == 0;
    let mut total = None;
    if want > 0 {
        // One more than shown, to know whether a next page holds any.
        let page = front.node().topics_page(after.as_ref(), want + 1).await?;
        total = Some(page.topic_count);
        more = page.next.is_some();
        for count in &page.topics {
            if !count.topic.starts_with(&q.prefix) {
                more = false;
                break;
            }
            if topics.len() == q.limit {
                more = true;
                break;
            }
            topics.push(Topic::from(count));
        }
    }
    let next_cursor = match topics.last() {
        Some(last) if more => Some(Cursor(last.topic.clone()).to_string()),
        _ => None,
    };
    Ok(ConsoleTopics {
        next_cursor,
        topic_count: total,
        topics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_query() {
        let q = PrefixQuery::from_query("prefix=al&cursor=616c&limit=20").unwrap();
        assert_eq!(
            q,
            PrefixQuery {
                prefix: "al".into(),
                after: Some(Cursor("al".into())),
                limit: 20
            }
        );
        assert_eq!(PrefixQuery::from_query("").unwrap().limit, USERS_PAGE);
        assert!(PrefixQuery::from_query("limit=0").is_err());
        assert!(PrefixQuery::from_query("cursor=zz").is_err());
    }
}
