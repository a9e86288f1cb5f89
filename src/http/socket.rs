//! The sockets both listeners share: the accept loop that survives running
//! out of file descriptors, the open-file cap on streams, the count of
//! sockets open, and HTTP/1.1 answers written straight to a socket (an
//! error before or outside hyper) with the linger that keeps them from
//! being reset away.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::http::{HeaderMap, StatusCode};

use super::envelope::ApiError;
use crate::throttle::LogThrottle;

/// After an error reply, how long the client may keep sending what we
/// will not read (the rest of a head over the limit, a body) before the
/// socket is closed: closing with unread bytes makes the kernel send a
/// reset, which can destroy the reply before the client reads it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// One accepted socket, counted until it is closed.
pub(crate) struct OpenSocket(Arc<AtomicUsize>);

impl OpenSocket {
    pub(crate) fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        OpenSocket(count.clone())
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A whole error response as bytes, for writing straight to a socket
/// (the admin listener's refusals, outside hyper).
pub(crate) fn error_bytes(e: ApiError) -> Vec<u8> {
    let (status, headers, body) = e.into_parts();
    let mut out = head_bytes(status, &headers, Length::Content(body.len()));
    out.extend_from_slice(&body);
    out
}

/// How the body is delimited.
pub(crate) enum Length {
    Content(usize),
    Chunked,
    /// No length header: the body ends at the close (or there is none).
    Close,
}

pub(crate) fn head_bytes(status: StatusCode, headers: &HeaderMap, length: Length) -> Vec<u8> {
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

/// Reads and drops what the client still sends, until it closes, a limit
/// of bytes, or [`LINGER`].
pub(crate) async fn linger(socket: &mut (impl tokio::io::AsyncRead + Unpin)) {
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

/// The next connection, or `None` at shutdown. EMFILE/ENFILE leave the
/// pending connection in the backlog and accept would fail again at once:
/// pause instead of spinning.
pub(crate) async fn accept(
    name: &'static str,
    listener: &TcpListener,
    shutdown: &CancellationToken,
    errors: &mut LogThrottle,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    let (stream, peer) = accept_with(name, || listener.accept(), shutdown, errors).await?;
    let _ = stream.set_nodelay(true);
    Some((stream, peer))
}

/// [`accept`] for any listener (the admin listener's Unix socket too):
/// `next` is its accept call.
pub(crate) async fn accept_with<T, F, Fut>(
    name: &'static str,
    mut next: F,
    shutdown: &CancellationToken,
    errors: &mut LogThrottle,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = next() => r,
        };
        match accepted {
            Ok(conn) => return Some(conn),
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
