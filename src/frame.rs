//! SSE wire encoding. A message is encoded once into [`Bytes`] and the same
//! buffer is shared (by refcount) with every recipient's queue.
//!
//! Callers guarantee single-line fields: event names are validated to
//! `A-Za-z0-9_.:-`, ids are generated here or by Redis, and data is compact
//! JSON (serde escapes newlines inside strings).

use bytes::{BufMut, Bytes, BytesMut};

/// `id:`/`event:`/`data:` frame of one message.
pub fn message(id: &str, event: &str, data_json: &str) -> Bytes {
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
pub fn event(event: &str, data_json: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(event.len() + data_json.len() + 16);
    b.put_slice(b"event: ");
    b.put_slice(event.as_bytes());
    b.put_slice(b"\ndata: ");
    b.put_slice(data_json.as_bytes());
    b.put_slice(b"\n\n");
    b.freeze()
}

/// `event: evicted`: the connection is closed to make room (SPEC 7).
pub fn evicted(connection_id: &str, reason: &str) -> Bytes {
    let data = serde_json::json!({"connection_id": connection_id, "reason": reason});
    event("evicted", &data.to_string())
}

/// `retry:` frame telling the client how long to wait before reconnecting.
pub fn retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// Heartbeat comment, shared by every stream on a tick.
pub fn heartbeat(unix_secs: u64) -> Bytes {
    Bytes::from(format!(": heartbeat {unix_secs}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
