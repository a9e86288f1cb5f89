//! One user's connections: `GET {base}/connections/{username}/` lists
//! them, `DELETE` closes them on every node and removes their records.

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::super::envelope;
use super::super::Front;
use super::extract::{base, end, only, reject, with_app, UserName};
use super::model::{Counts, UserConnections};

pub(super) fn routes(app: &Arc<Front>, base_path: &str) -> BoxedFilter<(Response,)> {
    let user = base(base_path)
        .and(warp::path("connections"))
        .and(warp::path::param::<UserName>())
        .and(end());
    user.clone()
        .and(warp::get())
        .and(with_app(app))
        .and_then(list)
        .or(user
            .clone()
            .and(warp::delete())
            .and(with_app(app))
            .and_then(disconnect))
        .unify()
        .or(user
            .map(|_: UserName| ())
            .untuple_one()
            .and(only("GET, DELETE")))
        .unify()
        .boxed()
}

async fn list(user: UserName, app: Arc<Front>) -> Result<Response, Rejection> {
    let user = user.validated().map_err(reject)?;
    let list = app
        .node()
        .list_user(&user)
        .await
        .map_err(|e| reject(e.into()))?;
    Ok(envelope::ok(&UserConnections::new(&user, &list)))
}

async fn disconnect(user: UserName, app: Arc<Front>) -> Result<Response, Rejection> {
    let user = user.validated().map_err(reject)?;
    let removed = app
        .node()
        .disconnect_user(&user)
        .await
        .map_err(|e| reject(e.into()))?;
    Ok(envelope::ok(&Counts::from(&removed)))
}
