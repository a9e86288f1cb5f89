//! SSE wire encoding. A message is encoded once into [`Bytes`] and the same
//! buffer is shared (by refcount) with every recipient's queue.
//!
//! Callers guarantee single-line fields: event names are validated to
//! `A-Za-z0-9_.:-`, ids are generated here or by Redis, and data is compact
//! JSON (serde escapes newlines inside strings).

use bytes::{BufMut, Bytes, BytesMut};

use crate::store::{MsgId, PartId, Pos};

/// `id:`/`event:`/`data:` frame of one message.
pub(crate) fn message(id: &str, event: &str, data_json: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(id.len() + event.len() + data_json.len() + 24);
    b.put_slice(b"id: ");
    b.put_slice(id.as_bytes());
    b.put_slice(b"\nevent: ");
    b.put_slice(event.as_bytes());
    b.put_slice(b"\ndata: ");
    b.put_slice(data_json.as_bytes());
    b.put_slice(b"\n\n");
    b.freeze()
}

/// A frame without an id (connection_established, evicted, history_gap):
/// control events must not move the client's Last-Event-ID.
pub(crate) fn event(event: &str, data_json: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(event.len() + data_json.len() + 16);
    b.put_slice(b"event: ");
    b.put_slice(event.as_bytes());
    b.put_slice(b"\ndata: ");
    b.put_slice(data_json.as_bytes());
    b.put_slice(b"\n\n");
    b.freeze()
}

/// `event: evicted`: the connection is closed to make room (README "Limits").
pub(crate) fn evicted(connection_id: &str, reason: &str) -> Bytes {
    let data = serde_json::json!({"connection_id": connection_id, "reason": reason});
    event("evicted", &data.to_string())
}

/// `event: token_expired`: the stream's token ran out and it is closed
/// (README "Auth"); the page fetches a fresh token and reconnects.
pub(crate) fn token_expired(connection_id: &str, exp: u32) -> Bytes {
    let data = serde_json::json!({"connection_id": connection_id, "exp": exp});
    event("token_expired", &data.to_string())
}

/// `retry:` frame telling the client how long to wait before reconnecting.
pub(crate) fn retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// Heartbeat comment, shared by every stream on a tick.
pub(crate) fn heartbeat(unix_secs: u64) -> Bytes {
    Bytes::from(format!(": heartbeat {unix_secs}\n\n"))
}

/// Stands in a queue for `event: history_gap` on an open stream: each
/// stream writes it with the last message id it wrote
/// ([`history_gap`]). Recognised by its address, not its bytes.
static HISTORY_LOST: &[u8] = b"event: history_gap\n";

pub(crate) fn history_lost() -> Bytes {
    Bytes::from_static(HISTORY_LOST)
}

pub(crate) fn is_history_lost(frame: &Bytes) -> bool {
    frame.as_ptr() == HISTORY_LOST.as_ptr() && frame.len() == HISTORY_LOST.len()
}

/// `event: history_gap`: what is kept does not reach back to `last_event_id`.
pub(crate) fn history_gap(last_event_id: &str) -> Bytes {
    let data = serde_json::json!({ "last_event_id": last_event_id });
    event("history_gap", &data.to_string())
}

/// The text of an encoded message frame's `id: ...` first line, if any.
fn id_text(frame: &[u8]) -> Option<&str> {
    let rest = frame.strip_prefix(b"id: ")?;
    let end = rest.iter().position(|&b| b == b'\n')?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// The id of an encoded message frame of one sequence, if any.
pub(crate) fn message_id(frame: &[u8]) -> Option<MsgId> {
    id_text(frame)?.parse().ok()
}

/// The id of a message frame as a node's queue holds it: of one sequence,
/// or of one part ([`PartId`], a cluster with history on).
pub(crate) fn part_id(frame: &[u8]) -> Option<PartId> {
    id_text(frame)?.parse().ok()
}

/// The id a written frame moved its stream to in the sequence one-tab
/// messages come from: its id, or its position's user part.
pub(crate) fn written_id(frame: &[u8]) -> Option<MsgId> {
    let text = id_text(frame)?;
    text.parse()
        .ok()
        .or_else(|| text.parse::<Pos>().ok().map(|p| p.user))
}

/// A message frame with its id line replaced: the one stream's position
/// written over the part id the frame was shared with.
pub(crate) fn with_id(frame: &[u8], id: &str) -> Bytes {
    let rest = frame
        .iter()
        .position(|&b| b == b'\n')
        .map_or(&frame[..0], |end| &frame[end + 1..]);
    let mut b = BytesMut::with_capacity(id.len() + rest.len() + 5);
    b.put_slice(b"id: ");
    b.put_slice(id.as_bytes());
    b.put_slice(b"\n");
    b.put_slice(rest);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_read_back_from_frames() {
        assert_eq!(
            message_id(&message("5-1", "m", "1")),
            Some(MsgId { ms: 5, seq: 1 })
        );
        assert_eq!(message_id(&heartbeat(5)), None);
        assert_eq!(message_id(&event("connection_established", "{}")), None);
    }

    #[test]
    fn part_ids_are_read_and_rewritten_per_stream() {
        let shared = message("5-1.", "m", "1");
        assert_eq!(
            part_id(&shared),
            Some(PartId::User(MsgId { ms: 5, seq: 1 }))
        );
        assert_eq!(
            part_id(&message(".7-0", "m", "1")),
            Some(PartId::Home(MsgId { ms: 7, seq: 0 }))
        );
        assert_eq!(
            part_id(&message("5-1", "m", "1")),
            Some(PartId::One(MsgId { ms: 5, seq: 1 }))
        );
        assert_eq!(part_id(&message("5-1.7-0", "m", "1")), None);
        let mine = with_id(&shared, "5-1.7-0");
        assert_eq!(&mine[..], b"id: 5-1.7-0\nevent: m\ndata: 1\n\n");
        assert_eq!(written_id(&mine), Some(MsgId { ms: 5, seq: 1 }));
        assert_eq!(
            written_id(&message("9-2", "m", "1")),
            Some(MsgId { ms: 9, seq: 2 })
        );
    }

    #[test]
    fn message_frame_layout() {
        let f = message("42", "message", r#"{"a":"x\ny"}"#);
        assert_eq!(
            &f[..],
            b"id: 42\nevent: message\ndata: {\"a\":\"x\\ny\"}\n\n"
        );
    }

    #[test]
    fn control_and_comment_frames() {
        assert_eq!(&retry(3000)[..], b"retry: 3000\n\n");
        assert_eq!(&heartbeat(17)[..], b": heartbeat 17\n\n");
        assert_eq!(&event("evicted", "{}")[..], b"event: evicted\ndata: {}\n\n");
        assert_eq!(
            &token_expired("c1", 1700000000)[..],
            b"event: token_expired\ndata: {\"connection_id\":\"c1\",\"exp\":1700000000}\n\n"
        );
    }
}
