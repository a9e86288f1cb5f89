//! The admin listener's routes (README "HTTP API"), `/healthz` and
//! `/metrics`, as warp filters: the [`guard`]s in front of everything,
//! then one filter per route with its path, query and body extracted into
//! types ([`extract`]), a file per route group, the answers' shapes in
//! [`model`] (the whole listing, too long to hold, written piece by piece
//! in [`listing`]); every rejection becomes the envelope in the one `recover`
//! ([`envelope::recover`]).

use std::convert::Infallible;
use std::sync::Arc;

use warp::path::FullPath;
use warp::reply::Response;
use warp::Filter;

use super::envelope;
use super::{relative, Front};

mod connections;
mod console;
mod extract;
mod guard;
mod health;
pub(crate) mod listing;
pub(crate) mod model;
mod send;
mod topics;
mod users;

/// The whole admin listener as one filter; each answer is counted by its
/// route and status.
pub(crate) fn routes(
    front: Arc<Front>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    // A restart key: the filters are built once for the process's life.
    let base_path = front.config().server.base_path.clone();
    // The paths are disjoint: the order only spares the hottest route
    // (send) the misses of the others.
    let routes = send::routes(&front, &base_path)
        .or(health::routes(&front))
        .unify()
        .or(connections::routes(&front, &base_path))
        .unify()
        .or(users::routes(&front, &base_path))
        .unify()
        .or(topics::routes(&front, &base_path))
        .unify()
        .or(console::routes(&front, &base_path))
        .unify();
    let answered = guard::guards(&front, &base_path)
        .and(routes)
        .recover(envelope::recover)
        .unify();
    let label = {
        let base_path = base_path.clone();
        warp::path::full()
            .map(move |path: FullPath| PathKind::of(&base_path, path.as_str()).label())
    };
    label
        .and(answered)
        .map(move |label: &'static str, resp: Response| {
            front.node().metrics().http(label, resp.status().as_u16());
            resp
        })
}

/// What a request's path names, read as the route filters match it (the
/// base path, one optional trailing slash), before any of them runs: a
/// refusal in front of the routes is still counted by its route, and the
/// token rule needs to know the open paths.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PathKind {
    Send,
    SendBatch,
    Connections,
    UserConnections,
    Cleanup,
    Topics,
    Topic,
    Healthz,
    Metrics,
    ConsoleAsset,
    ConsoleEvents,
    ConsoleUsers,
    ConsoleUser,
    ConsoleTopics,
    ConsoleTopic,
    Unknown,
}

impl PathKind {
    fn of(base_path: &str, path: &str) -> PathKind {
        match path.strip_suffix('/').unwrap_or(path) {
            "/healthz" => return PathKind::Healthz,
            "/metrics" => return PathKind::Metrics,
            _ => {}
        }
        let Some(rest) = relative(base_path, path) else {
            return PathKind::Unknown;
        };
        match rest {
            "/send" => PathKind::Send,
            "/send/batch" => PathKind::SendBatch,
            "/connections" => PathKind::Connections,
            "/cleanup" => PathKind::Cleanup,
            "/topics" => PathKind::Topics,
            "/admin" | "/admin/console.js" | "/admin/console.css" => PathKind::ConsoleAsset,
            "/admin/events" => PathKind::ConsoleEvents,
            "/admin/users" => PathKind::ConsoleUsers,
            "/admin/topics" => PathKind::ConsoleTopics,
            _ => match rest.strip_prefix("/admin") {
                Some(user) if user_path(user) => PathKind::ConsoleUser,
                Some(topic) if segment_after(topic, "/topics/") => PathKind::ConsoleTopic,
                _ if user_path(rest) => PathKind::UserConnections,
                _ if segment_after(rest, "/topics/") => PathKind::Topic,
                _ => PathKind::Unknown,
            },
        }
    }

    /// The metrics label (bounded: never the username).
    fn label(self) -> &'static str {
        match self {
            PathKind::Send => "send",
            PathKind::SendBatch => "send_batch",
            PathKind::Connections => "connections",
            PathKind::UserConnections => "user_connections",
            PathKind::Cleanup => "cleanup",
            PathKind::Topics => "topics",
            PathKind::Topic => "topic",
            PathKind::Healthz => "healthz",
            PathKind::Metrics => "metrics",
            PathKind::ConsoleAsset => "console",
            PathKind::ConsoleEvents => "console_events",
            PathKind::ConsoleUsers => "console_users",
            PathKind::ConsoleUser => "console_user",
            PathKind::ConsoleTopics => "console_topics",
            PathKind::ConsoleTopic => "console_topic",
            PathKind::Unknown => "unknown",
        }
    }

    /// Answered without the token: `/healthz`, and the console's page and
    /// assets (they hold no data; the page asks for the token).
    fn is_open(self) -> bool {
        matches!(self, PathKind::Healthz | PathKind::ConsoleAsset)
    }
}

/// `/connections/{username}`, the name one percent-encoded segment.
fn user_path(rest: &str) -> bool {
    segment_after(rest, "/connections/")
}

/// `{prefix}{segment}`: one percent-encoded segment of UTF-8.
fn segment_after(rest: &str, prefix: &str) -> bool {
    rest.strip_prefix(prefix).is_some_and(|segment| {
        !segment.is_empty()
            && !segment.contains('/')
            && percent_encoding::percent_decode_str(segment)
                .decode_utf8()
                .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_and_without_slash() {
        let b = "/notifications";
        let kind = |path: &str| PathKind::of(b, path);
        assert_eq!(kind("/notifications/send/"), PathKind::Send);
        assert_eq!(kind("/notifications/send"), PathKind::Send);
        assert_eq!(
            kind("/notifications/connections/al%C3%A9/"),
            PathKind::UserConnections
        );
        assert_eq!(kind("/notifications/connections/%FF"), PathKind::Unknown);
        assert_eq!(kind("/healthz"), PathKind::Healthz);
        assert_eq!(kind("/notificationsx/send"), PathKind::Unknown);
        assert_eq!(kind("/notifications/stream/"), PathKind::Unknown);
        assert_eq!(PathKind::of("", "/send/"), PathKind::Send);
        assert_eq!(kind("/notifications/admin/"), PathKind::ConsoleAsset);
        assert_eq!(kind("/notifications/admin"), PathKind::ConsoleAsset);
        assert_eq!(kind("/notifications/admin/events"), PathKind::ConsoleEvents);
        assert_eq!(
            kind("/notifications/admin/connections/al"),
            PathKind::ConsoleUser
        );
        assert_eq!(kind("/notifications/admin/connections/"), PathKind::Unknown);
        assert_eq!(kind("/notifications/administrator"), PathKind::Unknown);
        assert_eq!(kind("/admin/"), PathKind::Unknown);
        assert_eq!(kind("/notifications/topics/"), PathKind::Topics);
        assert_eq!(kind("/notifications/topics/doc%2F42/"), PathKind::Topic);
        assert_eq!(kind("/notifications/topics/doc/42/"), PathKind::Unknown);
        assert_eq!(kind("/notifications/admin/topics"), PathKind::ConsoleTopics);
        assert_eq!(
            kind("/notifications/admin/topics/doc%3A42"),
            PathKind::ConsoleTopic
        );
    }
}
