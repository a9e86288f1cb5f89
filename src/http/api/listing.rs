//! The whole listing (`GET {base}/connections/` without `limit`, and
//! `sse-notify connections --json`) written as JSON in bounded steps: the
//! usernames are read a step at a time in name order, then their
//! connections a few hundred users at a time, each piece written out as it
//! is read. Neither the registry nor the answer is ever held whole, so
//! memory stays bounded whatever the registry's size.
//!
//! The shape is the one of the unpaged listing; `user_count` and
//! `total_connections` come last, counted from what was written, so they
//! always match it. A registry that changes meanwhile is not listed as one
//! snapshot: each user's connections are read together, later users later.

use std::collections::VecDeque;

use bytes::Bytes;
use futures_util::Stream;

use crate::store::{Listed, Result};

/// Names written per piece of `active_users`.
const NAMES_PER_PIECE: usize = 2_000;

/// Users whose connections are read and written per piece.
const USERS_PER_PIECE: usize = 250;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Start,
    Names,
    Details,
    Done,
}

/// The `data` object of the whole listing, piece by piece.
pub(crate) struct ListingJson<S> {
    source: S,
    phase: Phase,
    /// The last name read in this phase.
    after: Option<String>,
    /// Names read, not written yet.
    queue: VecDeque<String>,
    /// The source has no name after the queue.
    exhausted: bool,
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
            after: None,
            queue: VecDeque::new(),
            exhausted: false,
            first: true,
            users: 0,
            connections: 0,
        }
    }

    /// Reads the next step of names when the queue is empty; false once
    /// the phase has none left.
    async fn refill(&mut self) -> Result<bool> {
        while self.queue.is_empty() {
            if self.exhausted {
                return Ok(false);
            }
            let step = self.source.listing_step();
            let names = self.source.user_names(self.after.as_deref(), step).await?;
            self.exhausted = names.len() < step;
            self.after = names.last().cloned().or(self.after.take());
            self.queue.extend(names);
        }
        Ok(true)
    }

    fn next_phase(&mut self, phase: Phase) {
        self.phase = phase;
        self.after = None;
        self.queue.clear();
        self.exhausted = false;
        self.first = true;
    }

    fn comma(&mut self, out: &mut String) {
        if !self.first {
            out.push(',');
        }
        self.first = false;
    }

    /// The next piece of JSON text; `None` after the last.
    pub(crate) async fn next_piece(&mut self) -> Result<Option<String>> {
        let mut out = String::new();
        match self.phase {
            Phase::Start => {
                out.push_str("{\"active_users\":[");
                self.next_phase(Phase::Names);
            }
            Phase::Names => {
                if !self.refill().await? {
                    out.push_str("],\"connection_details\":{");
                    self.next_phase(Phase::Details);
                    return Ok(Some(out));
                }
                let n = self.queue.len().min(NAMES_PER_PIECE);
                let names: Vec<String> = self.queue.drain(..n).collect();
                for name in names {
                    self.comma(&mut out);
                    out.push_str(&json_string(&name));
                    self.users += 1;
                }
            }
            Phase::Details => {
                if !self.refill().await? {
                    out.push_str(&format!(
                        "}},\"user_count\":{},\"total_connections\":{}}}",
                        self.users, self.connections
                    ));
                    self.phase = Phase::Done;
                    return Ok(Some(out));
                }
                let n = self.queue.len().min(USERS_PER_PIECE);
                let users: Vec<String> = self.queue.drain(..n).collect();
                for (user, list) in self.source.users_connections(&users).await? {
                    self.comma(&mut out);
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

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The listing as an HTTP body inside the success envelope. The first
/// step is read before the answer starts, so an unreachable registry is
/// still a 503 envelope; a failure later ends the body early (the client
/// sees a cut, invalid JSON, never a wrong listing).
pub(crate) async fn body<S: Listed>(
    source: S,
) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + 'static> {
    let mut json = ListingJson::new(source);
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
