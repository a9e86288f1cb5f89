//! The whole listings, too long to hold, written as JSON in bounded steps:
//! the users' (`GET {base}/connections/` without `limit`, and `sse-notify
//! connections --json`) and the followed topics' (`GET {base}/topics/`
//! without `limit`). The names are read a step at a time in name order
//! ([`Steps`]), then what each name holds a few hundred names at a time,
//! each piece written out as it is read. Neither the registry nor the
//! answer is ever held whole, so memory stays bounded whatever the
//! registry's size. `?limit=&cursor=` asks for one page instead
//! ([`ListingQuery`]).
//!
//! The counts come last, counted from what was written, so they always
//! match it. A registry that changes meanwhile is not listed as one
//! snapshot: each user's connections (each topic's counts) are read
//! together, later ones later.

use bytes::Bytes;
use futures_util::Stream;

use super::extract::{query_pairs, FromQuery};
use super::model::Topic;
use crate::http::envelope::ApiError;
use crate::store::{Cursor, Listed, Result, Steps, Walk, MAX_PAGE};

/// Names written per piece of `active_users`.
const NAMES_PER_PIECE: usize = 2_000;

/// Users whose connections (topics whose counts) are read and written per
/// piece.
const USERS_PER_PIECE: usize = 250;

/// Names per page when a cursor comes without a `limit`.
const DEFAULT_PAGE: usize = 1_000;

/// `?limit=N&cursor=C`: one page (an empty cursor is the first); neither
/// of them: the whole listing.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ListingQuery {
    Whole,
    Page { after: Option<Cursor>, limit: usize },
}

impl FromQuery for ListingQuery {
    fn from_query(query: &str) -> std::result::Result<Self, ApiError> {
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

/// A JSON object written piece by piece.
pub(crate) trait Pieces: Send + 'static {
    /// The next piece of JSON text; `None` after the last.
    fn next_piece(&mut self) -> impl std::future::Future<Output = Result<Option<String>>> + Send;
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Start,
    Names,
    Details,
    Done,
}

/// The `data` object of the users' whole listing: `active_users`, then
/// `connection_details`, each a walk over the users.
pub(crate) struct ListingJson<S> {
    source: S,
    phase: Phase,
    steps: Steps,
    /// Nothing written yet in this phase (no comma before the next item).
    first: bool,
    users: usize,
    connections: usize,
}

impl<S: Listed> ListingJson<S> {
    pub(crate) fn new(source: S) -> Self {
        Self {
            source,
            phase: Phase::Start,
            steps: Steps::new(Walk::Users),
            first: true,
            users: 0,
            connections: 0,
        }
    }

    fn next_phase(&mut self, phase: Phase) {
        self.phase = phase;
        self.steps = Steps::new(Walk::Users);
        self.first = true;
    }
}

impl<S: Listed> Pieces for ListingJson<S> {
    async fn next_piece(&mut self) -> Result<Option<String>> {
        let mut out = String::new();
        match self.phase {
            Phase::Start => {
                out.push_str("{\"active_users\":[");
                self.next_phase(Phase::Names);
            }
            Phase::Names => {
                let names = self.steps.take(&self.source, NAMES_PER_PIECE).await?;
                if names.is_empty() {
                    out.push_str("],\"connection_details\":{");
                    self.next_phase(Phase::Details);
                    return Ok(Some(out));
                }
                for name in names {
                    comma(&mut self.first, &mut out);
                    out.push_str(&json_string(&name));
                    self.users += 1;
                }
            }
            Phase::Details => {
                let users = self.steps.take(&self.source, USERS_PER_PIECE).await?;
                if users.is_empty() {
                    out.push_str(&format!(
                        "}},\"user_count\":{},\"total_connections\":{}}}",
                        self.users, self.connections
                    ));
                    self.phase = Phase::Done;
                    return Ok(Some(out));
                }
                for (user, list) in self.source.users_connections(&users).await? {
                    comma(&mut self.first, &mut out);
                    out.push_str(&json_string(&user));
                    out.push(':');
                    out.push_str(&serde_json::to_string(&list).unwrap_or_else(|_| "[]".into()));
                    self.connections += list.len();
                }
            }
            Phase::Done => return Ok(None),
        }
        Ok(Some(out))
    }
}

/// The `data` object of the topics' whole listing:
/// `{"topics":[{"topic","connection_count","user_count"}, ...],"topic_count":N}`.
pub(crate) struct TopicsJson<S> {
    source: S,
    steps: Steps,
    /// Topics written so far; `None` before the opening piece.
    topics: Option<usize>,
    done: bool,
}

impl<S: Listed> TopicsJson<S> {
    pub(crate) fn new(source: S) -> Self {
        Self {
            source,
            steps: Steps::new(Walk::Topics),
            topics: None,
            done: false,
        }
    }
}

impl<S: Listed> Pieces for TopicsJson<S> {
    async fn next_piece(&mut self) -> Result<Option<String>> {
        let Some(written) = self.topics else {
            self.topics = Some(0);
            return Ok(Some("{\"topics\":[".into()));
        };
        if self.done {
            return Ok(None);
        }
        let names = self.steps.take(&self.source, USERS_PER_PIECE).await?;
        if names.is_empty() {
            self.done = true;
            return Ok(Some(format!("],\"topic_count\":{written}}}")));
        }
        let (mut out, mut n) = (String::new(), written);
        // A topic whose last follower left meanwhile is not in the answer.
        for count in self.source.topic_counts(&names).await? {
            if n > 0 {
                out.push(',');
            }
            out.push_str(
                &serde_json::to_string(&Topic::from(&count)).unwrap_or_else(|_| "{}".into()),
            );
            n += 1;
        }
        self.topics = Some(n);
        Ok(Some(out))
    }
}

fn comma(first: &mut bool, out: &mut String) {
    if !std::mem::replace(first, false) {
        out.push(',');
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The listing as an HTTP body inside the success envelope. The first
/// step is read before the answer starts, so an unreachable registry is
/// still a 503 envelope; a failure later ends the body early (the client
/// sees a cut, invalid JSON, never a wrong listing).
pub(crate) async fn body<P: Pieces>(
    mut json: P,
) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + 'static> {
    let mut head = String::from("{\"code\":200,\"data\":");
    for _ in 0..2 {
        if let Some(piece) = json.next_piece().await? {
            head.push_str(&piece);
        }
    }
    let rest = futures_util::stream::unfold(Some(json), |state| async move {
        let mut json = state?;
        match json.next_piece().await {
            Ok(Some(piece)) => Some((Ok(Bytes::from(piece)), Some(json))),
            Ok(None) => Some((Ok(Bytes::from_static(b"}")), None)),
            Err(e) => {
                tracing::warn!(error = %e, "listing cut short: the registry stopped answering");
                Some((Err(std::io::Error::other(e.to_string())), None))
            }
        }
    });
    let first = futures_util::stream::once(async move { Ok(Bytes::from(head)) });
    Ok(futures_util::StreamExt::chain(first, rest))
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
}
