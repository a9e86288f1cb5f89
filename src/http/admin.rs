//! HTTP/1.1 serving of a warp filter (the admin listener) on an
//! already-bound listener, and the accept loop both listeners share.
//!
//! Our own accept loop instead of `warp::serve` because the daemon needs
//! what warp's does not give: TCP_NODELAY, no busy loop when the process
//! runs out of file descriptors, a shutdown that waits for open requests
//! only up to the grace period, and the open-file cap of the stream
//! listener ([`stream_fd_cap`]).

use std::net::SocketAddr;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::Filter;

use crate::throttle::LogThrottle;

/// Serves `filter` on `listener` until `shutdown`; then stops accepting,
/// lets open requests finish for at most `grace`, and closes the rest.
pub(crate) async fn serve<F>(
    name: &'static str,
    listener: TcpListener,
    filter: F,
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
    loop {
        let Some((stream, peer)) = accept(name, &listener, &shutdown, &mut accept_errors).await
        else {
            break;
        };
        let kill = force_close.child_token();
        let svc = hyper_util::service::TowerToHyperService::new(warp::service(filter.clone()));
        // The timer makes hyper's header read timeout effective: a client
        // that opens a socket and sends nothing is not kept forever. It also
        // closes idle keep-alive connections, so it is longer than the idle
        // time of common client pools (reqwest: 90 s), which would otherwise
        // reuse a connection just as it closes.
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(120))
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), svc);
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

/// The next connection, or `None` at shutdown. EMFILE/ENFILE leave the
/// pending connection in the backlog and accept would fail again at once:
/// pause instead of spinning.
pub(crate) async fn accept(
    name: &'static str,
    listener: &TcpListener,
    shutdown: &CancellationToken,
    errors: &mut LogThrottle,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return Some((stream, peer));
            }
            Err(e) => {
                if let Some(suppressed) = errors.allow() {
                    tracing::error!(listener = name, error = %e, suppressed, "accept failed");
                }
                if !is_connection_error(&e) {
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            }
        }
    }
}

/// File descriptors kept for everything but streams (Redis, admin
/// requests, the config and secret files, logs).
const FD_RESERVE: u64 = 256;

/// How many streams the open-file limit allows, after raising the soft
/// limit to the hard one. Beyond it, accept would fail with EMFILE and
/// clients would wait in the backlog; with the cap they get a 503 instead.
pub(crate) fn stream_fd_cap() -> usize {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write `lim`.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return usize::MAX;
            }
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim = raised;
                }
            }
        }
        if lim.rlim_cur == libc::RLIM_INFINITY {
            return usize::MAX;
        }
        usize::try_from(lim.rlim_cur.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX)
    }
    #[cfg(not(unix))]
    {
        usize::MAX
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
