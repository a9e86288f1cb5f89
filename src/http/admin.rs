//! HTTP/1.1 serving of a warp filter (the admin listener) on an
//! already-bound listener, TCP or Unix socket alike.
//!
//! Our own accept loop instead of `warp::serve` because the daemon needs
//! what warp's does not give: TCP_NODELAY and no busy loop when the process
//! runs out of file descriptors ([`socket::accept`]), a cap on open
//! connections, and a shutdown that waits for open requests only up to the
//! grace period.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::Filter;

use super::deadline::{self, RequestClock, TimedStream};
use super::envelope::ApiError;
use super::listener::{AdminConn, AdminListener, Via};
use super::socket::{self, OpenSocket};
use super::Front;
use crate::throttle::LogThrottle;

/// Refused connections being answered at once; beyond it, a refused
/// connection is closed without a word rather than take more descriptors.
const REFUSING_MAX: usize = 128;

/// How long hyper waits for the next request on a keep-alive connection
/// (its header timer runs from when it waits, so it is the idle timeout):
/// longer than the idle time of common client pools (reqwest: 90 s), which
/// would otherwise reuse a connection just as it closes. The request
/// itself, once its first byte came, has `api.request_timeout_secs`
/// ([`super::deadline`]).
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(120);

/// Serves `filter` on `listener` until `shutdown`; then stops accepting,
/// lets open requests finish for at most `grace`, and closes the rest.
/// At most `api.max_connections` connections are served at once; one more
/// is answered 503 and closed.
pub(crate) async fn serve<F>(
    name: &'static str,
    listener: AdminListener,
    filter: F,
    app: Arc<Front>,
    shutdown: CancellationToken,
    grace: Duration,
) where
    F: Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    F::Future: Send,
{
    let graceful = GracefulShutdown::new();
    let force_close = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut accept_errors = LogThrottle::new(Duration::from_secs(10));
    let mut refusals = LogThrottle::new(Duration::from_secs(10));
    let open = Arc::new(AtomicUsize::new(0));
    let refusing = Arc::new(AtomicUsize::new(0));
    let via = Via {
        unix: matches!(listener, AdminListener::Unix(_)),
        listener: match listener.local_addr() {
            Ok(addr) => addr.to_string().into(),
            Err(_) => "?".into(),
        },
    };
    loop {
        let Some((stream, peer)) = listener.accept(name, &shutdown, &mut accept_errors).await
        else {
            break;
        };
        let config = app.config();
        if open.load(Ordering::Relaxed) >= config.api.max_connections {
            app.node().metrics().admin_refused_connections.inc();
            if let Some(suppressed) = refusals.allow() {
                tracing::warn!(
                    listener = name,
                    limit = config.api.max_connections,
                    suppressed,
                    "connection refused: api.max_connections open"
                );
            }
            let answer = refusal(config.api.max_connections);
            if refusing.load(Ordering::Relaxed) < REFUSING_MAX {
                let guard = OpenSocket::new(&refusing);
                tasks.spawn(refuse(stream, answer, guard));
            } else {
                refuse_now(&stream, &answer);
            }
            continue;
        }
        let guard = OpenSocket::new(&open);
        let kill = force_close.child_token();
        let clock = RequestClock::new(Duration::from_secs(config.api.request_timeout_secs));
        let routes = hyper_util::service::TowerToHyperService::new(warp::service(filter.clone()));
        let svc = {
            let clock = clock.clone();
            let via = via.clone();
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let routes = routes.clone();
                req.extensions_mut().insert(via.clone());
                deadline::within_deadline(
                    clock.clone(),
                    req,
                    move |req| routes.call(req),
                    ApiError::into_response,
                )
            })
        };
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(KEEP_ALIVE_IDLE)
            .keep_alive(true)
            .serve_connection(TokioIo::new(TimedStream::new(stream, clock)), svc);
        let conn = graceful.watch(conn);
        tasks.spawn(async move {
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                _ = kill.cancelled() => {
                    tracing::debug!(%peer, "connection closed by the server");
                }
            }
            drop(guard);
        });
    }
    drop(listener);
    tasks.close();
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(listener = name, open = tasks.len(), "grace period over; closing remaining connections");
            force_close.cancel();
        }
    }
    force_close.cancel();
    tasks.wait().await;
}

/// How long a refused connection may take to send its request head
/// before it is answered anyway.
const REFUSE_READ: Duration = Duration::from_secs(1);
/// Request head read from a refused connection at most.
const REFUSE_HEAD_MAX: usize = 16 * 1024;

/// The 503 of a connection over the cap, as bytes.
fn refusal(limit: usize) -> Vec<u8> {
    let e = ApiError::unavailable(format!(
        "the admin listener holds its maximum of {limit} connections (api.max_connections); retry later"
    ))
    .with_retry_after(Duration::from_secs(1));
    socket::error_bytes(e)
}

/// Answers a connection over the cap with a 503 and closes it. Its request
/// head is read first (an HTTP client takes an answer that comes before
/// its request is written as a broken connection, not as a 503), and what
/// it still sends is drained for a moment so that closing does not reset
/// the answer away.
async fn refuse(mut stream: AdminConn, answer: Vec<u8>, _guard: OpenSocket) {
    let read_head = async {
        let mut head = Vec::new();
        let mut chunk = [0u8; 2048];
        while head.len() < REFUSE_HEAD_MAX {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(REFUSE_READ, read_head).await;
    let write = async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    };
    if tokio::time::timeout(REFUSE_READ, write)
        .await
        .is_ok_and(|r| r.is_ok())
    {
        socket::linger(&mut stream).await;
    }
}

/// [`refuse`] without waiting, when too many refusals are under way (a
/// flood): takes what the client already sent, answers if the socket takes
/// it at once, and closes.
fn refuse_now(stream: &AdminConn, answer: &[u8]) {
    let mut chunk = [0u8; 2048];
    let mut taken = 0;
    while taken < REFUSE_HEAD_MAX {
        match stream.try_read(&mut chunk) {
            Ok(n) if n > 0 => taken += n,
            _ => break,
        }
    }
    let _ = stream.try_write(answer);
}
