//! The public listener's HTTP/1.1 server: one request per connection, for
//! the stream route and its errors.
//!
//! Not hyper, on purpose: an idle stream is the daemon's unit of cost, and
//! hyper keeps two 8 KiB buffers (read and write) and the boxed service
//! future alive for every open response, about 18 KiB a stream. Here a
//! stream holds only its socket, its queue and a small task: the request
//! head is read into a buffer dropped once parsed, frames are written
//! straight from the shared [`Bytes`] (vectored, the chunk framing around
//! them from the stack). An HTTP/1.1 request gets a chunked body: clients
//! that read a close-delimited body in blocks would otherwise sit on the
//! first frames; HTTP/1.0 gets the body delimited by closing the
//! connection. Either way one request per connection (`Connection:
//! close`). The admin listener stays on warp/hyper.

use std::collections::HashMap;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use super::envelope::ApiError;
use super::stream::{self, Reply, ReplyBody, Request};
use super::App;
use crate::throttle::LogThrottle;

/// Largest request head accepted; browsers send well under 2 KiB, cookies
/// included.
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// A client must send its request head within this (slowloris).
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames written in one vectored write when several are queued.
const BATCH: usize = 32;
/// After an error reply, how long the client may keep sending what we
/// will not read (the rest of a head over the limit, a body) before the
/// socket is closed: closing with unread bytes makes the kernel send a
/// reset, which can destroy the reply before the client reads it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// Serves the stream route on `listener` until `shutdown`; then stops
/// accepting and waits for open streams (closed by the node's shutdown)
/// at most `grace`, closing what is left.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let force_close = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut errors = LogThrottle::new(Duration::from_secs(10));
    let pending = Arc::new(AtomicUsize::new(0));
    loop {
        if !fd_room(&app, &pending, &shutdown).await {
            break;
        }
        let Some((socket, peer)) =
            super::admin::accept("public", &listener, &shutdown, &mut errors).await
        else {
            break;
        };
        let kill = force_close.child_token();
        let app = app.clone();
        let guard = Pending::new(&pending);
        tasks.spawn(async move {
            tokio::select! {
                _ = connection(&app, socket, peer, kill.clone(), guard) => {}
                _ = kill.cancelled() => {}
            }
        });
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!(
            open = tasks.len(),
            "grace period over; closing remaining streams"
        );
        force_close.cancel();
        tasks.wait().await;
    }
}

/// Descriptors that connections being answered (not yet streams: reading
/// their request, or being refused) may take beyond the streams the
/// open-file limit allows. At the limit, a crowd of refused clients would
/// otherwise take every descriptor: accept would fail with EMFILE and so
/// would the admin API's and Redis's sockets. Half of the reserve kept for
/// everything but streams ([`super::admin::stream_fd_cap`]).
const PENDING_ROOM: usize = 128;

/// Waits until a new connection fits under the open-file limit; false at
/// shutdown. Meanwhile clients wait in the listen backlog.
async fn fd_room(app: &App, pending: &AtomicUsize, shutdown: &CancellationToken) -> bool {
    loop {
        let in_use = app.hub.len() + pending.load(Ordering::Relaxed);
        if in_use < app.fd_cap.saturating_add(PENDING_ROOM) {
            return true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
}

/// One accepted connection that is not (yet) a stream counted by the hub.
struct Pending(Option<Arc<AtomicUsize>>);

impl Pending {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Pending(Some(count.clone()))
    }

    /// It became a stream: the hub counts it from now on.
    fn done(&mut self) {
        if let Some(count) = self.0.take() {
            count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.done();
    }
}

/// The request line and headers, as parsed.
struct Head {
    method: Method,
    target: String,
    headers: HeaderMap,
    /// HTTP/1.1 or later: the stream body is chunked.
    chunked: bool,
}

enum HeadError {
    /// The client left or sent nothing in time: nothing to answer.
    Gone,
    TooLarge,
    Malformed(String),
}

async fn connection(
    app: &Arc<App>,
    mut socket: TcpStream,
    peer: SocketAddr,
    kill: CancellationToken,
    mut pending: Pending,
) {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut socket)).await {
        Ok(r) => r,
        Err(_) => Err(HeadError::Gone),
    };
    let mut chunked = false;
    let mut is_head = false;
    let reply = match head {
        Ok(Head {
            method,
            target,
            headers,
            chunked: c,
        }) => {
            chunked = c;
            is_head = method == Method::HEAD;
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p.to_string(), parse_query(q)),
                None => (target, HashMap::new()),
            };
            let req = Request {
                method,
                path,
                query,
                headers,
                peer: Some(peer),
                kill,
            };
            stream::handle(app, req).await
        }
        Err(HeadError::Gone) => return,
        Err(HeadError::TooLarge) => error_reply(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("request head larger than {MAX_HEAD} bytes"),
        )),
        Err(HeadError::Malformed(m)) => error_reply(ApiError::bad_request(m)),
    };
    if matches!(reply.body, ReplyBody::Events(_)) {
        pending.done();
    }
    let _ = respond(socket, reply, chunked, is_head).await;
}

fn error_reply(e: ApiError) -> Reply {
    let (status, headers, body) = e.into_parts();
    Reply {
        status,
        headers,
        body: ReplyBody::Full(body),
    }
}

/// Reads and parses the request line and headers.
async fn read_head(socket: &mut TcpStream) -> Result<Head, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() >= MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let mut chunk = [0u8; 2048];
        let n = socket.read(&mut chunk).await.map_err(|_| HeadError::Gone)?;
        if n == 0 {
            return Err(HeadError::Gone);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut slots);
        match req.parse(&buf) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(_)) => {
                let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
                    .map_err(|_| HeadError::Malformed("bad method".into()))?;
                let target = req.path.unwrap_or("/").to_string();
                let mut headers = HeaderMap::with_capacity(req.headers.len());
                for h in req.headers.iter() {
                    let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                        HeadError::Malformed(format!("bad header name {:?}", h.name))
                    })?;
                    let value = HeaderValue::from_bytes(h.value)
                        .map_err(|_| HeadError::Malformed(format!("bad value of header {name}")))?;
                    headers.append(name, value);
                }
                return Ok(Head {
                    method,
                    target,
                    headers,
                    chunked: req.version.is_some_and(|v| v >= 1),
                });
            }
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(e) => return Err(HeadError::Malformed(format!("bad request: {e}"))),
        }
    }
}

fn parse_query(q: &str) -> HashMap<String, String> {
    serde_urlencoded::from_str(q).unwrap_or_default()
}

/// How the body is delimited.
enum Length {
    Content(usize),
    Chunked,
    /// No length header: the body ends at the close (or there is none).
    Close,
}

fn head_bytes(status: StatusCode, headers: &HeaderMap, length: Length) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match length {
        Length::Content(n) => out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
        Length::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Length::Close => {}
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out
}

async fn respond(
    mut socket: TcpStream,
    reply: Reply,
    chunked: bool,
    is_head: bool,
) -> std::io::Result<()> {
    match reply.body {
        ReplyBody::Full(body) => {
            // A 204 has no body and must not announce one (RFC 9110 8.6).
            let length = if reply.status == StatusCode::NO_CONTENT {
                Length::Close
            } else {
                Length::Content(body.len())
            };
            let head = head_bytes(reply.status, &reply.headers, length);
            // A reply to HEAD announces the length of the body it omits.
            let body = if is_head { Bytes::new() } else { body };
            write_all(&mut socket, &[&head, &body]).await?;
            socket.shutdown().await?;
            linger(&mut socket).await;
            Ok(())
        }
        ReplyBody::Events(mut events) => {
            let length = if chunked {
                Length::Chunked
            } else {
                Length::Close
            };
            let head = head_bytes(reply.status, &reply.headers, length);
            drop(reply.headers);
            let mut head = Some(head);
            let (mut rd, mut wr) = socket.split();
            let mut batch: Vec<Bytes> = Vec::new();
            let mut sink = [0u8; 64];
            loop {
                while batch.len() < BATCH {
                    match events.next_ready() {
                        Some(f) => batch.push(f),
                        None => break,
                    }
                }
                if !batch.is_empty() || head.is_some() {
                    write_frames(&mut wr, head.take().as_deref(), &batch, chunked).await?;
                    events.written(&batch);
                    batch.clear();
                }
                tokio::select! {
                    f = events.next() => match f {
                        Some(f) => batch.push(f),
                        None => break,
                    },
                    // The client is not expected to send anything more: a
                    // read returns only when it leaves (EOF) or errs.
                    r = rd.read(&mut sink) => match r {
                        Ok(0) | Err(_) => return Ok(()),
                        Ok(_) => {}
                    },
                }
            }
            if chunked {
                write_all(&mut wr, &[b"0\r\n\r\n"]).await?;
            }
            wr.shutdown().await
        }
    }
}

/// Reads and drops what the client still sends, until it closes, a limit
/// of bytes, or [`LINGER`].
async fn linger(socket: &mut TcpStream) {
    let drain = async {
        // On the heap: a buffer in the future would make every stream's
        // task (the same future type) that much larger.
        let mut buf = vec![0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Writes the response head (first time only) and `frames`: as one chunk
/// when `chunked`, else as they are.
async fn write_frames<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    head: Option<&[u8]>,
    frames: &[Bytes],
    chunked: bool,
) -> std::io::Result<()> {
    let mut size = [0u8; 20];
    let mut parts: Vec<&[u8]> = Vec::with_capacity(frames.len() + 3);
    if let Some(h) = head {
        parts.push(h);
    }
    let len: usize = frames.iter().map(Bytes::len).sum();
    if chunked && len > 0 {
        parts.push(chunk_size(len, &mut size));
    }
    parts.extend(frames.iter().map(|f| &f[..]));
    if chunked && len > 0 {
        parts.push(b"\r\n");
    }
    write_all(w, &parts).await
}

/// `{len:x}\r\n` into `buf`, without allocating.
fn chunk_size(len: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len() - 2;
    buf[i..].copy_from_slice(b"\r\n");
    let mut n = len;
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Writes every buffer, vectored.
async fn write_all<W: AsyncWriteExt + Unpin>(w: &mut W, bufs: &[&[u8]]) -> std::io::Result<()> {
    let mut idx = 0;
    let mut offset = 0;
    loop {
        while idx < bufs.len() && bufs[idx].len() == offset {
            idx += 1;
            offset = 0;
        }
        if idx == bufs.len() {
            return Ok(());
        }
        let slices: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&bufs[idx][offset..]))
            .chain(bufs[idx + 1..].iter().map(|b| IoSlice::new(b)))
            .collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while idx < bufs.len() && n >= bufs[idx].len() - offset {
            n -= bufs[idx].len() - offset;
            idx += 1;
            offset = 0;
        }
        offset += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_in_hex() {
        let mut buf = [0u8; 20];
        assert_eq!(chunk_size(1, &mut buf), b"1\r\n");
        assert_eq!(chunk_size(0x9c40, &mut buf), b"9c40\r\n");
        assert_eq!(chunk_size(usize::MAX, &mut buf), b"ffffffffffffffff\r\n");
    }
}
