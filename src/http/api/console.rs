//! The admin console's routes below `{base}/admin`: its page and assets
//! (open: they hold no data), its live stream, and the two reads the API
//! has no shape for (a page of users by name prefix; a user's connections
//! with their nodes). The page's actions use the ordinary routes.

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::super::console::{self as page, Asset};
use super::super::envelope::{self, ApiError};
use super::super::Front;
use super::extract::{base, end, only, query, query_pairs, reject, with_app, FromQuery, UserName};
use super::model::{ConsoleUser, UserCount, UsersPage};
use crate::store::Cursor;

pub(super) fn routes(app: &Arc<Front>, base_path: &str) -> BoxedFilter<(Response,)> {
    let admin = base(base_path).and(warp::path("admin"));
    let asset = |at: BoxedFilter<()>, which: Asset| {
        let base_path = base_path.to_string();
        at.clone()
            .and(warp::get())
            .map(move || page::asset(which, &base_path))
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
    asset(admin.clone().and(end()).boxed(), Asset::Page)
        .or(asset(
            admin
                .clone()
                .and(warp::path("console.js"))
                .and(end())
                .boxed(),
            Asset::Script,
        ))
        .unify()
        .or(asset(
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
            .and(with_app(app))
            .map(page::events))
        .unify()
        .or(events.and(only("GET")))
        .unify()
        .or(users
            .clone()
            .and(warp::get())
            .and(with_app(app))
            .and(query::<UsersQuery>())
            .and_then(list_users))
        .unify()
        .or(users.and(only("GET")))
        .unify()
        .or(user
            .clone()
            .and(warp::get())
            .and(with_app(app))
            .and_then(user_connections))
        .unify()
        .or(user.map(|_: UserName| ()).untuple_one().and(only("GET")))
        .unify()
        .boxed()
}

/// A user's connections with the node holding each, oldest first.
async fn user_connections(user: UserName, app: Arc<Front>) -> Result<Response, Rejection> {
    let user = user.validated().map_err(reject)?;
    let list = app
        .node()
        .list_user(&user)
        .await
        .map_err(|e| reject(e.into()))?;
    Ok(envelope::ok(&ConsoleUser::new(&user, &list)))
}

/// Users per page when the page does not say.
const USERS_PAGE: usize = 50;
const USERS_PAGE_MAX: usize = 500;

/// `?prefix=P&cursor=C&limit=N` of the console's user list.
#[derive(Debug, Clone, Default, PartialEq)]
struct UsersQuery {
    prefix: String,
    /// The page starts after this username.
    after: Option<Cursor>,
    limit: usize,
}

impl FromQuery for UsersQuery {
    fn from_query(query: &str) -> Result<Self, ApiError> {
        let mut q = UsersQuery {
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

async fn list_users(app: Arc<Front>, q: UsersQuery) -> Result<Response, Rejection> {
    let page = users(&app, &q).await.map_err(reject)?;
    Ok(envelope::ok(&page))
}

/// One page of users (name, connection count) whose names start with the
/// prefix, after the cursor, through the registry's paged listing; and the
/// next page's cursor. Names are in order, so the ones with a prefix are
/// one run: the exact name first, then the names after it, until one does
/// not start with it.
async fn users(app: &Front, q: &UsersQuery) -> Result<UsersPage, ApiError> {
    let mut users: Vec<UserCount> = Vec::new();
    let mut after = q.after.clone();
    if after.is_none() && !q.prefix.is_empty() {
        let exact = app.node().list_user(&q.prefix).await?;
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
        let page = app.node().list_page(after.as_ref(), want + 1).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_query() {
        let q = UsersQuery::from_query("prefix=al&cursor=616c&limit=20").unwrap();
        assert_eq!(
            q,
            UsersQuery {
                prefix: "al".into(),
                after: Some(Cursor("al".into())),
                limit: 20
            }
        );
        assert_eq!(UsersQuery::from_query("").unwrap().limit, USERS_PAGE);
        assert!(UsersQuery::from_query("limit=0").is_err());
        assert!(UsersQuery::from_query("cursor=zz").is_err());
    }
}
