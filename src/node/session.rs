//! A stream's session in the node: its admission (connect rate, hub and
//! store registration, the per-user limit and `replaces`, the opening
//! frames, what history gives back after `Last-Event-ID`), then the frames
//! it is to write, until whatever ends it (client gone, close, token
//! expiry, shutdown) drops it, which takes the connection out of the hub
//! and the registry. How the frames reach a client is the listener's.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::expiry::Expiries;
use super::frame;
use super::queue::Receiver;
use super::{Node, Refused, Registered};
use crate::config::Config;
use crate::store::{unix_now, LiveConn, MsgId, PartId, Pos, Wrote};

/// What a client asks for when it opens a stream, as its listener read it.
pub(crate) struct Admission {
    /// The authenticated user.
    pub(crate) username: String,
    /// The topics it follows (validated and allowed), sorted, no
    /// duplicates.
    pub(crate) topics: Vec<String>,
    /// Token mode: the token's `exp` (unix seconds).
    pub(crate) expires: Option<u64>,
    /// A stream of the user that this one takes over (a page renewing its
    /// stream with a fresh token): the per-user limit closes it first.
    pub(crate) replaces: Option<String>,
    /// The last message id the client has (`Last-Event-ID`), as sent.
    pub(crate) last_event_id: Option<String>,
    /// For the log line.
    pub(crate) peer: Option<SocketAddr>,
    /// Cancelling it closes the client's connection at once.
    pub(crate) kill: CancellationToken,
}

/// Admits a stream (see [`Node::register`]: refused, it holds nothing),
/// enforces the per-user limit, and returns its session: the opening
/// frames, what it missed, then its queue.
pub(crate) async fn open(
    node: &Arc<Node>,
    config: &Config,
    ask: Admission,
) -> Result<Session, Refused> {
    let conn = LiveConn {
        connection_id: uuid::Uuid::new_v4().to_string(),
        username: ask.username,
        connection_time: unix_now(),
        topics: ask.topics,
    };
    let replaying = config.history.enabled && ask.last_event_id.is_some();
    let Registered {
        rx,
        user_count,
        tops,
    } = node
        .register(
            config,
            &conn,
            ask.kill,
            config.history.enabled && !replaying,
        )
        .await?;
    // Admitted: from here on, any exit (client gone) takes it out again.
    let expires = ask.expires.map_or(0, Expiries::clamp);
    if expires != 0 {
        node.expire_at(expires, &conn.connection_id);
    }
    let guard = Guard {
        node: node.clone(),
        // its topics live in the hub and the registry: a copy here would
        // cost each stream ~60 bytes a topic for nothing
        conn: LiveConn {
            topics: Vec::new(),
            ..conn.clone()
        },
        opened: Instant::now(),
        expires,
        released: false,
    };
    // The registration told how many connections the user has on all
    // nodes: only a user over the limit costs another round trip.
    if user_count > config.limits.max_connections_per_user {
        if let Err(e) = node
            .router
            .enforce_user_limit(
                &conn.username,
                config.limits.max_connections_per_user,
                &conn.connection_id,
                ask.replaces.as_deref(),
            )
            .await
        {
            node.metrics().store_errors.inc();
            tracing::warn!(error = %e, username = %conn.username, "per-user limit not enforced");
        }
    }
    let peer_addr = ask.peer.map(|p| p.to_string()).unwrap_or_default();
    tracing::info!(connection_id = %conn.connection_id, username = %conn.username, topics = %conn.topics.join(","), peer = %peer_addr, "stream opened");

    let established = json!({
        "connection_id": conn.connection_id,
        "username": conn.username,
        "connection_time": conn.connection_time,
        "topics": conn.topics,
    });
    let mut opening = BytesMut::new();
    opening.extend_from_slice(&frame::retry(config.stream.retry_ms));
    opening.extend_from_slice(&frame::event(
        "connection_established",
        &established.to_string(),
    ));
    let mut prefix = VecDeque::from([opening.freeze()]);
    let (skip_until, pair) = match ask.last_event_id {
        Some(raw) if config.history.enabled => {
            replay(node, config, &conn, &raw, &mut prefix).await?
        }
        _ => (None, tops.map(|at| Box::new(Pair { at, skip: None }))),
    };
    Ok(Session {
        prefix,
        skip_until,
        pair,
        wrote: None,
        rx,
        guard,
    })
}

/// Appends to `prefix` what the user missed after `raw` (a
/// `Last-Event-ID`); returns the id up to which the client now has
/// everything, so that the same messages are not written again when they
/// also reach the queue (the replay/live seam), or where ids are pairs,
/// the same per part and where the stream stands.
///
/// History unreadable: a gap, and the stream goes on from its next
/// message; where ids are pairs it would not know where it stands in
/// either part, so it is refused (503: the client comes back with its id).
async fn replay(
    node: &Node,
    config: &Config,
    conn: &LiveConn,
    raw: &str,
    prefix: &mut VecDeque<Bytes>,
) -> Result<(Option<MsgId>, Option<Box<Pair>>), Refused> {
    let gap = |prefix: &mut VecDeque<Bytes>| prefix.push_back(frame::history_gap(raw));
    let replay = match node.router.replay(conn, raw, &config.history).await {
        Ok(r) => r,
        Err(e) => {
            node.metrics().store_errors.inc();
            if node.router.store().pairs() {
                tracing::warn!(error = %e, connection_id = %conn.connection_id, "history unreadable; stream refused");
                return Err(Refused::Store(e));
            }
            tracing::warn!(error = %e, connection_id = %conn.connection_id, "history unreadable; replay skipped");
            gap(prefix);
            return Ok((None, None));
        }
    };
    if replay.gap {
        gap(prefix);
    }
    // One-tab messages are in it only where this stream is to get them
    // (the store claimed them for it).
    if let Some(mut at) = replay.start {
        // Each frame says where the stream is once it has that message.
        for k in &replay.entries {
            match k.home {
                true => at.home = k.id,
                false => at.user = k.id,
            }
            prefix.push_back(frame::message(&at.to_string(), &k.event, &k.data));
        }
        return Ok((None, Some(Box::new(Pair { at, skip: Some(at) }))));
    }
    for k in &replay.entries {
        prefix.push_back(frame::message(&k.id.to_string(), &k.event, &k.data));
    }
    let upto = replay.entries.last().map(|k| k.id);
    let last: Option<MsgId> = raw.trim().parse().ok();
    let upto = if replay.gap { upto } else { upto.max(last) };
    Ok((upto, None))
}

/// Where ids are pairs (a cluster with history on): where the stream
/// stands in each part, written as its messages' ids, and up to where its
/// replay gave each part (those in the queue too are skipped).
struct Pair {
    at: Pos,
    skip: Option<Pos>,
}

/// Removes the connection from the hub and the registry when dropped.
struct Guard {
    node: Arc<Node>,
    conn: LiveConn,
    opened: Instant,
    /// Token mode: the token's `exp` as [`Expiries`] keeps it; 0 for none.
    /// A `u32` fits in the padding before `released`: nothing added to
    /// a stream of the other modes.
    expires: u32,
    /// [`Guard::release`] ran (the body ended and said what it wrote).
    released: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.release(None);
    }
}

impl Guard {
    /// The stream ended: out of the hub and the registry, with what it
    /// wrote when it was sent one-tab messages. Once.
    fn release(&mut self, wrote: Option<Wrote>) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        let node = &self.node;
        if self.expires != 0 {
            node.forget_expiry(self.expires, &self.conn.connection_id);
        }
        node.unregister(&self.conn.connection_id, wrote);
        node.metrics().disconnects.inc();
        tracing::info!(
            connection_id = %self.conn.connection_id,
            username = %self.conn.username,
            secs = self.opened.elapsed().as_secs(),
            "stream closed"
        );
    }
}

/// An admitted stream: the opening frames and the replay, then the
/// connection's queue until its sender is dropped. Dropping it removes the
/// connection (its guard).
pub(crate) struct Session {
    prefix: VecDeque<Bytes>,
    /// Messages up to this id were replayed: skip them in the queue.
    skip_until: Option<MsgId>,
    /// Where ids are pairs (boxed: most deployments have none).
    pair: Option<Box<Pair>>,
    /// The newest message id written to the socket.
    wrote: Option<MsgId>,
    rx: Receiver,
    guard: Guard,
}

impl Drop for Session {
    fn drop(&mut self) {
        // What it wrote matters only for one-tab messages: a replay must
        // not give another tab one this stream wrote.
        let wrote = match (self.rx.had_one_tab(), self.wrote) {
            (true, Some(upto)) => Some(Wrote {
                username: self.guard.conn.username.clone(),
                upto,
            }),
            _ => None,
        };
        self.guard.release(wrote);
    }
}

impl Session {
    /// `frames` reached the socket (the kernel took them).
    pub(crate) fn written(&mut self, frames: &[Bytes]) {
        if let Some(id) = frames.iter().rev().find_map(|f| frame::written_id(f)) {
            self.wrote = self.wrote.max(Some(id));
        }
    }

    /// A frame from the queue as this stream writes it: the notice that
    /// Redis lost its data becomes a `history_gap` after the last id this
    /// stream wrote; where ids are pairs, a message's id becomes the
    /// stream's position with it.
    fn render(&mut self, frame: Bytes) -> Bytes {
        if frame::is_history_lost(&frame) {
            let last = match &self.pair {
                Some(pair) => pair.at.to_string(),
                None => self
                    .wrote
                    .max(self.skip_until)
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
            };
            return frame::history_gap(&last);
        }
        let Some(pair) = &mut self.pair else {
            return frame;
        };
        // Set, not raised: were a part's messages ever out of order (a
        // catch-up), a reconnect would get some again rather than lose
        // one.
        match frame::part_id(&frame) {
            Some(PartId::User(id)) => pair.at.user = id,
            Some(PartId::Home(id)) => pair.at.home = id,
            _ => return frame,
        }
        frame::with_id(&frame, &pair.at.to_string())
    }

    fn keep(&self, frame: &[u8]) -> bool {
        if let Some(pair) = &self.pair {
            return match (pair.skip, frame::part_id(frame)) {
                (Some(upto), Some(PartId::User(id))) => id > upto.user,
                (Some(upto), Some(PartId::Home(id))) => id > upto.home,
                _ => true,
            };
        }
        match self.skip_until {
            Some(upto) => frame::message_id(frame).is_none_or(|id| id > upto),
            None => true,
        }
    }

    /// The next frame; `None` once the stream is closed.
    pub(crate) async fn next(&mut self) -> Option<Bytes> {
        if let Some(p) = self.prefix.pop_front() {
            return Some(p);
        }
        loop {
            let frame = self.rx.recv().await?;
            if self.keep(&frame) {
                return Some(self.render(frame));
            }
        }
    }

    /// Ready once the stream was closed (frames may be left to write).
    pub(crate) fn poll_closed(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.rx.poll_closed(cx)
    }

    /// The connection this body serves, for its log lines (its topics
    /// are not kept here).
    pub(crate) fn conn(&self) -> &LiveConn {
        &self.guard.conn
    }

    /// A frame that is ready now, without waiting.
    pub(crate) fn next_ready(&mut self) -> Option<Bytes> {
        if let Some(p) = self.prefix.pop_front() {
            return Some(p);
        }
        loop {
            let frame = self.rx.try_recv().ok()?;
            if self.keep(&frame) {
                return Some(self.render(frame));
            }
        }
    }
}
