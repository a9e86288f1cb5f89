//! One user's connections: `GET {base}/connections/{username}/` lists
//! them, `DELETE` closes them on every node and removes their records.

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::extract::{base, end, only, reject, with_front, UserName};
use super::model::{Counts, UserConnections};
use crate::http::envelope;
use crate::http::Front;

pub(super) fn routes(front: &Arc<Front>, base_path: &str) -> BoxedFilter<(Response,)> {
    let user = base(base_path)
        .and(warp::path("connections"))
        .and(warp::path::param::<UserName>())
        .and(end());
    user.clone()
        .and(warp::get())
        .and(with_front(front))
        .and_then(list)
        .or(user
            .clone()
            .and(warp::delete())
            .and(with_front(front))
            .and_then(disconnect))
        .unify()
        .or(user
            .map(|_: UserName| ())
            .untuple_one()
            .and(only("GET, DELETE")))
        .unify()
        .boxed()
}

async fn list(user: UserName, front: Arc<Front>) -> Result<Response, Rejection> {
    let user = user.validated().map_err(reject)?;
    let list = front
        .node()
        .list_user(&user)
        .await
        .map_err(|e| reject(e.into()))?;
    Ok(envelope::ok(&UserConnections::new(&user, &list)))
}

async fn disconnect(user: UserName, front: Arc<Front>) -> Result<Response, Rejection> {
    let user = user.validated().map_err(reject)?;
    let removed = front
        .node()
        .disconnect_user(&user)
        .await
        .map_err(|e| reject(e.into()))?;
    Ok(envelope::ok(&Counts::from(&removed)))
}
