//! Who follows which topic now, on every node (README "Topics"):
//! `GET {base}/topics/` lists the followed topics with their counts (one
//! page with `limit`/`cursor`, else the whole listing streamed), and
//! `GET {base}/topics/{topic}/` names a topic's users and connections.

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::extract::{base, end, only, query, reject, with_front, TopicName};
use super::listing::{self, ListingQuery, TopicsJson};
use super::model::{TopicFollowers, Topics};
use crate::http::envelope;
use crate::http::Front;

pub(super) fn routes(front: &Arc<Front>, base_path: &str) -> BoxedFilter<(Response,)> {
    let all = base(base_path).and(warp::path("topics")).and(end());
    let one = base(base_path)
        .and(warp::path("topics"))
        .and(warp::path::param::<TopicName>())
        .and(end());
    all.clone()
        .and(warp::get())
        .and(with_front(front))
        .and(query::<ListingQuery>())
        .and_then(list)
        .or(all.and(only("GET")))
        .unify()
        .or(one
            .clone()
            .and(warp::get())
            .and(with_front(front))
            .and_then(followers))
        .unify()
        .or(one.map(|_: TopicName| ()).untuple_one().and(only("GET")))
        .unify()
        .boxed()
}

async fn list(front: Arc<Front>, asked: ListingQuery) -> Result<Response, Rejection> {
    match asked {
        ListingQuery::Page { after, limit } => {
            let page = front
                .node()
                .topics_page(after.as_ref(), limit)
                .await
                .map_err(|e| reject(e.into()))?;
            Ok(envelope::ok(&Topics::from(&page)))
        }
        ListingQuery::Whole => {
            let body = listing::body(TopicsJson::new(front.node().listing()))
                .await
                .map_err(|e| reject(e.into()))?;
            Ok(envelope::streamed(body, "application/json"))
        }
    }
}

async fn followers(topic: TopicName, front: Arc<Front>) -> Result<Response, Rejection> {
    let topic = topic.validated().map_err(reject)?;
    let presence = front
        .node()
        .topic(&topic)
        .await
        .map_err(|e| reject(e.into()))?;
    Ok(envelope::ok(&TopicFollowers::new(&topic, &presence)))
}
