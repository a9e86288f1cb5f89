//! The admin listener's request deadline (README "Limits"): a whole
//! request, head and body, must arrive within `api.request_timeout_secs`
//! of its first byte, else 408 in the envelope and the connection closes.
//!
//! hyper times only the head, and from the moment it waits for one, so
//! its timer is also the keep-alive idle timeout and cannot be made short.
//! Here a per-connection [`RequestClock`] is started by the first byte of
//! a request ([`TimedStream`]), the head is cut there if it is not complete in
//! time, and the body is raced by [`within_deadline`] around the routes:
//! while the body is incomplete at the deadline the request is dropped
//! unhandled (so a half-sent message is never sent) and answered 408.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use warp::http::{header, HeaderValue, StatusCode};

use super::envelope::ApiError;
use super::listener::AdminConn;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Between requests: the next byte starts one.
    Idle,
    /// A head is arriving, since this instant.
    Head(Instant),
    /// A request is being handled or answered (until its response body is
    /// dropped): bytes read now are its body, or pipelined.
    Busy,
}

/// Where the connection is between requests, shared by its IO and its
/// service.
pub(crate) struct RequestClock {
    phase: Mutex<Phase>,
    limit: Duration,
}

impl RequestClock {
    /// The clock of a connection accepted now: its first request's time
    /// runs from the connect (a client that connects and sends nothing is
    /// a slow head too).
    pub(crate) fn new(limit: Duration) -> Arc<Self> {
        Arc::new(Self {
            phase: Mutex::new(Phase::Head(Instant::now())),
            limit,
        })
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The head is complete and the routes take over: the deadline of the
    /// whole request (from its first byte, or now if it came pipelined).
    fn begin(&self) -> Instant {
        let mut phase = self.phase();
        let started = match *phase {
            Phase::Head(at) => at,
            Phase::Idle | Phase::Busy => Instant::now(),
        };
        *phase = Phase::Busy;
        started + self.limit
    }

    /// The response was written (its body dropped).
    fn end(&self) {
        *self.phase() = Phase::Idle;
    }
}

/// The socket as hyper sees it (through `TokioIo`): marks the first byte
/// of each request and cuts a head that is not complete by the deadline
/// with a 408.
pub(crate) struct TimedStream {
    inner: AdminConn,
    clock: Arc<RequestClock>,
    /// Armed while a head arrives.
    timer: Option<Pin<Box<Sleep>>>,
}

impl TimedStream {
    pub(crate) fn new(inner: AdminConn, clock: Arc<RequestClock>) -> Self {
        Self {
            inner,
            clock,
            timer: None,
        }
    }

    /// The 408 for a head that did not complete, written if the socket
    /// takes it at once (no response is under way while a head arrives, so
    /// it cannot cut into one); then the writing side is shut.
    fn refuse_head(&mut self, cx: &mut Context<'_>) {
        let bytes = super::socket::error_bytes(timeout_error(self.clock.limit));
        let _ = self.inner.try_write(&bytes);
        let _ = Pin::new(&mut self.inner).poll_shutdown(cx);
    }
}

impl AsyncRead for TimedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let mut phase = this.clock.phase();
        match (&r, *phase) {
            (Poll::Ready(Ok(())), Phase::Idle) if buf.filled().len() > before => {
                *phase = Phase::Head(Instant::now());
                this.timer = None;
                r
            }
            (Poll::Pending, Phase::Head(at)) => {
                drop(phase);
                let limit = this.clock.limit;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at + limit)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.timer = None;
                this.refuse_head(cx);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not complete within api.request_timeout_secs",
                )))
            }
            (_, Phase::Head(_)) => r,
            _ => {
                this.timer = None;
                r
            }
        }
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The 408 of a request not complete in time; the connection closes after
/// it (what is left of the request is never read).
fn timeout_error(limit: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "request: not complete within api.request_timeout_secs ({} s)",
            limit.as_secs()
        ),
    )
}

/// A request body that says when it has been read to its end.
pub(crate) struct WatchedBody<B> {
    inner: B,
    done: Arc<AtomicBool>,
}

impl<B: Body + Unpin> Body for WatchedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.done.store(true, Ordering::Release);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that frees the connection's clock for the next request
/// once written (hyper drops it then).
pub(crate) struct ClockedBody<B> {
    inner: B,
    clock: Arc<RequestClock>,
}

impl<B> Drop for ClockedBody<B> {
    fn drop(&mut self) {
        self.clock.end();
    }
}

impl<B: Body + Unpin> Body for ClockedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Runs `handle` on the request with its body watched; if the deadline
/// passes while the body is still incomplete, drops the handling (nothing
/// was done: the routes act only on a whole body) and answers the 408 that
/// `refuse` makes of the error, with `Connection: close`.
pub(crate) async fn within_deadline<B, RB, E, Fut>(
    clock: Arc<RequestClock>,
    req: hyper::Request<B>,
    handle: impl FnOnce(hyper::Request<WatchedBody<B>>) -> Fut,
    refuse: impl FnOnce(ApiError) -> hyper::Response<RB>,
) -> Result<hyper::Response<ClockedBody<RB>>, E>
where
    B: Body + Unpin,
    Fut: Future<Output = Result<hyper::Response<RB>, E>>,
{
    let deadline = clock.begin();
    let (parts, body) = req.into_parts();
    let done = Arc::new(AtomicBool::new(body.is_end_stream()));
    let req = hyper::Request::from_parts(
        parts,
        WatchedBody {
            inner: body,
            done: done.clone(),
        },
    );
    let handling = handle(req);
    tokio::pin!(handling);
    let resp = tokio::select! {
        r = &mut handling => r?,
        _ = tokio::time::sleep_until(deadline) => {
            if done.load(Ordering::Acquire) {
                // The body is all here: the request is being acted on and
                // is not cut.
                handling.await?
            } else {
                let mut resp = refuse(timeout_error(clock.limit));
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                resp
            }
        }
    };
    Ok(resp.map(|inner| ClockedBody { inner, clock }))
}
