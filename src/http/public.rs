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
use std::future::{poll_fn, Future};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use super::envelope::ApiError;
use super::socket::{self, head_bytes, linger, Length, OpenSocket};
use super::stream::{self, Reply, ReplyBody, Request};
use super::Front;
use crate::node::session::Session;
use crate::throttle::LogThrottle;

/// Largest request head accepted; browsers send well under 2 KiB, cookies
/// included.
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// A client must send its request head within this (slowloris).
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames written in one vectored write when several are queued.
const BATCH: usize = 32;

/// Serves the stream route on `listener` until `shutdown`; then stops
/// accepting and waits for open streams (closed by the node's shutdown)
/// at most `grace`, closing what is left.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Arc<Front>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let force_close = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut errors = LogThrottle::new(Duration::from_secs(10));
    let sockets = Arc::new(AtomicUsize::new(0));
    loop {
        if !fd_room(&app, &sockets, &shutdown).await {
            break;
        }
        let Some((socket, peer)) =
            socket::accept("public", &listener, &shutdown, &mut errors).await
        else {
            break;
        };
        let kill = force_close.child_token();
        let app = app.clone();
        let guard = OpenSocket::new(&sockets);
        tasks.spawn(async move {
            tokio::select! {
                _ = connection(&app, socket, peer, kill.clone()) => {}
                _ = kill.cancelled() => {}
            }
            // The socket is closed by now (dropped with the future above).
            drop(guard);
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

/// Descriptors that connections being answered (not streams: reading
/// their request, or being refused) may take beyond the streams the
/// open-file limit allows. At the limit, a crowd of refused clients would
/// otherwise take every descriptor: accept would fail with EMFILE and so
/// would the admin API's and Redis's sockets. Half of the reserve kept for
/// everything but streams ([`socket::stream_fd_cap`]).
const PENDING_ROOM: usize = 128;

/// Waits until a new connection fits under the open-file limit; false at
/// shutdown. Meanwhile clients wait in the listen backlog. Every socket
/// still open counts: a stream the hub has closed and forgotten keeps its
/// descriptor until it has written its last frames or its write deadline
/// cuts it (`stream.write_timeout_secs`).
async fn fd_room(app: &Front, sockets: &AtomicUsize, shutdown: &CancellationToken) -> bool {
    loop {
        if sockets.load(Ordering::Relaxed) < app.node().fd_cap().saturating_add(PENDING_ROOM) {
            return true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
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
    app: &Arc<Front>,
    mut socket: TcpStream,
    peer: SocketAddr,
    kill: CancellationToken,
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
            let (path, (query, topics)) = match target.split_once('?') {
                Some((p, q)) => (p.to_string(), parse_query(q)),
                None => (target, (HashMap::new(), Vec::new())),
            };
            let req = Request {
                method,
                path,
                query,
                topics,
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
    let _ = respond(app, socket, reply, chunked, is_head).await;
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

/// The query's parameters, percent-decoded (the last of a repeated one),
/// and the values of every `topics` parameter, which add up.
fn parse_query(q: &str) -> (HashMap<String, String>, Vec<String>) {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q).unwrap_or_default();
    let topics = pairs
        .iter()
        .filter(|(k, _)| k == "topics")
        .map(|(_, v)| v.clone())
        .collect();
    (pairs.into_iter().collect(), topics)
}

async fn respond(
    app: &Front,
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
            write_all(&mut socket, &[&head, &body], None).await?;
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
            let limit = Duration::from_secs(app.config().stream.write_timeout_secs);
            let mut deadline = WriteDeadline::new(limit);
            let r = write_events(&mut socket, head, &mut events, chunked, &mut deadline).await;
            if deadline.expired {
                app.node().metrics().write_timeouts.inc();
                let conn = events.conn();
                tracing::warn!(
                    connection_id = %conn.connection_id,
                    username = %conn.username,
                    closing = deadline.closing,
                    timeout_secs = deadline.limit.as_secs(),
                    "stream write timed out: the client took nothing for stream.write_timeout_secs; socket reset"
                );
                // A reset, not a FIN queued behind the unsent frames: the
                // kernel frees the send buffer at once instead of keeping
                // an orphan probing a client that does not read.
                let _ = socket.set_zero_linger();
            }
            r
        }
    }
}

/// Writes the head, then the stream's frames until it is closed (chunked:
/// then the last chunk), the client leaves, or the write deadline passes.
async fn write_events(
    socket: &mut TcpStream,
    head: Vec<u8>,
    events: &mut Session,
    chunked: bool,
    deadline: &mut WriteDeadline,
) -> std::io::Result<()> {
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
            let watch: Watch<'_> = Some((&mut *deadline, &*events));
            write_frames(&mut wr, head.take().as_deref(), &batch, chunked, watch).await?;
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
        write_all(&mut wr, &[b"0\r\n\r\n"], Some((deadline, &*events))).await?;
    }
    wr.shutdown().await
}

/// Bounds a stream's writes (README "Limits"): a write that makes no
/// progress for `stream.write_timeout_secs` fails, and once the stream is
/// closed what it still has to write must be written within that time of
/// the close, however slowly the client reads. The timer is boxed and
/// armed only while a write waits for room in the socket, or from the
/// close on: an idle stream carries none (it is the daemon's unit of
/// cost), and a write that goes through at once costs nothing.
struct WriteDeadline {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// The close was seen: the timer runs to the close's deadline, and
    /// progress no longer disarms it.
    closing: bool,
    /// The deadline passed (a kernel's own ETIMEDOUT is not this).
    expired: bool,
}

impl WriteDeadline {
    fn new(limit: Duration) -> Self {
        Self {
            limit,
            timer: None,
            closing: false,
            expired: false,
        }
    }

    /// The stream's queue was closed: everything left must be written by
    /// now + the limit (or earlier, if a stalled write already runs out).
    fn close_seen(&mut self) {
        if self.closing {
            return;
        }
        self.closing = true;
        let at = tokio::time::Instant::now() + self.limit;
        match &mut self.timer {
            Some(t) if t.deadline() <= at => {}
            Some(t) => t.as_mut().reset(at),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// A write waits for room: Ready once the deadline passed.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        let r = timer.as_mut().poll(cx);
        self.expired |= r.is_ready();
        r
    }

    /// Some bytes went out.
    fn progress(&mut self) {
        if !self.closing {
            self.timer = None;
        }
    }
}

/// What a write waiting for room watches for its stream's close.
trait Closes {
    fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()>;
}

impl Closes for Session {
    fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        Session::poll_closed(self, cx)
    }
}

/// The write deadline of a stream, and the stream (to see its close while
/// a write waits); `None` for a plain reply.
type Watch<'w> = Option<(&'w mut WriteDeadline, &'w (dyn Closes + Sync))>;

/// Writes the response head (first time only) and `frames`: as one chunk
/// when `chunked`, else as they are.
async fn write_frames<W: AsyncWrite + Unpin>(
    w: &mut W,
    head: Option<&[u8]>,
    frames: &[Bytes],
    chunked: bool,
    watch: Watch<'_>,
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
    write_all(w, &parts, watch).await
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

/// Writes every buffer, vectored; with a `watch`, a write that waits
/// longer than the stream's deadline fails with `TimedOut`.
async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    bufs: &[&[u8]],
    mut watch: Watch<'_>,
) -> std::io::Result<()> {
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
        let mut n = poll_fn(
            |cx| match Pin::new(&mut *w).poll_write_vectored(cx, &slices) {
                Poll::Ready(r) => Poll::Ready(r),
                Poll::Pending => match &mut watch {
                    None => Poll::Pending,
                    Some((deadline, events)) => {
                        if events.poll_closed(cx).is_ready() {
                            deadline.close_seen();
                        }
                        match deadline.poll_expired(cx) {
                            Poll::Ready(()) => {
                                Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()))
                            }
                            Poll::Pending => Poll::Pending,
                        }
                    }
                },
            },
        )
        .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        if let Some((deadline, _)) = &mut watch {
            deadline.progress();
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
    use crate::node::queue::{self, Receiver};

    impl Closes for Receiver {
        fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
            Receiver::poll_closed(self, cx)
        }
    }

    /// A client that takes one byte every `every`: always progressing.
    struct Trickle {
        every: Duration,
        next: Pin<Box<Sleep>>,
        taken: usize,
    }

    impl Trickle {
        fn new(every: Duration) -> Self {
            Self {
                every,
                next: Box::pin(tokio::time::sleep(every)),
                taken: 0,
            }
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            _buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.next.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let at = tokio::time::Instant::now() + self.every;
            self.next.as_mut().reset(at);
            self.taken += 1;
            Poll::Ready(Ok(1))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    const LIMIT: Duration = Duration::from_secs(2);

    #[tokio::test(start_paused = true)]
    async fn a_write_that_keeps_progressing_is_not_cut_until_the_close() {
        let (tx, rx) = queue::queue(4);
        let mut client = Trickle::new(Duration::from_millis(100));
        let mut deadline = WriteDeadline::new(LIMIT);
        let data = vec![0u8; 100];
        let start = tokio::time::Instant::now();
        // 100 bytes at 10 a second: 10 s, five times the limit, and done.
        write_all(&mut client, &[&data], Some((&mut deadline, &rx)))
            .await
            .expect("a progressing write completes");
        assert_eq!(client.taken, 100);
        assert!(start.elapsed() >= Duration::from_secs(10));
        assert!(!deadline.expired);

        // Closed after 5 s into a 1 MB write at that pace: cut at the
        // close plus the limit, although bytes still go out.
        let closer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(tx);
        });
        let big = vec![0u8; 1 << 20];
        let start = tokio::time::Instant::now();
        let err = write_all(&mut client, &[&big], Some((&mut deadline, &rx)))
            .await
            .expect_err("cut after the close");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(deadline.expired && deadline.closing);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(7) && took < Duration::from_millis(7200),
            "{took:?}"
        );
        closer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_fails_after_the_limit() {
        let (_tx, rx) = queue::queue(4);
        // Never takes a byte.
        let mut client = Trickle::new(Duration::from_secs(3600));
        let mut deadline = WriteDeadline::new(LIMIT);
        let start = tokio::time::Instant::now();
        let err = write_all(&mut client, &[b"frame"], Some((&mut deadline, &rx)))
            .await
            .expect_err("a stalled write fails");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(deadline.expired && !deadline.closing);
        assert_eq!(start.elapsed(), LIMIT);
    }

    #[test]
    fn chunk_sizes_in_hex() {
        let mut buf = [0u8; 20];
        assert_eq!(chunk_size(1, &mut buf), b"1\r\n");
        assert_eq!(chunk_size(0x9c40, &mut buf), b"9c40\r\n");
        assert_eq!(chunk_size(usize::MAX, &mut buf), b"ffffffffffffffff\r\n");
    }
}
