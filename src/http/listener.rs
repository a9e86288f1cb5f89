//! The admin listener's socket: TCP, or a Unix socket file
//! (`server.admin_listen = "unix:/path"`) with the file's mode and group,
//! the rule for a file already at the path when binding, and the removal
//! of the file at a clean stop; plus the connection either kind accepts,
//! which the admin server ([`super::admin`]) serves the same way.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::config::ListenAddr;
use crate::throttle::LogThrottle;

/// The admin listener, bound.
pub enum AdminListener {
    Tcp(TcpListener),
    Unix(SocketFile),
}

/// A listening Unix socket and its file. Dropping it (the admin server
/// does when it stops accepting at shutdown, or the daemon when it fails
/// to start) removes the file, if the file at the path is still the one
/// bound here: a daemon started since on the same path keeps its own.
pub struct SocketFile {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the file as bound.
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == self.id);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the admin socket file");
            }
        }
    }
}

const NOT_A_SOCKET: &str =
    "the path exists and is not a socket; it is left as it is (remove it, or choose another path)";
const IN_USE: &str = "address in use: another process listens on this socket (another sse-notify?)";

impl AdminListener {
    /// Binds the Unix socket `path` with permissions `mode` and group
    /// `gid` (`None`: the daemon's), listening with `backlog`.
    ///
    /// A socket file already there is probed by connecting: if a process
    /// answers, that is the address in use (its file is left alone); if
    /// nothing listens, it is a stale file of a daemon that was killed and
    /// is replaced. Anything else at the path (a regular file, a
    /// directory) is an error and is never deleted.
    pub fn bind_unix(
        path: &Path,
        mode: u32,
        gid: Option<u32>,
        backlog: u32,
    ) -> io::Result<AdminListener> {
        let error = |kind, message: String| io::Error::new(kind, message);
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(error(io::ErrorKind::AlreadyExists, NOT_A_SOCKET.into()));
            }
            Ok(_) => {
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => return Err(error(io::ErrorKind::AddrInUse, IN_USE.into())),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        tracing::info!(path = %path.display(), "replacing a stale admin socket file (nothing listens on it)");
                        std::fs::remove_file(path)?;
                    }
                    Err(e) => {
                        let message = format!("a socket file is there and probing it failed ({e}); it is left as it is");
                        return Err(error(e.kind(), message));
                    }
                }
            }
        }
        let socket = tokio::net::UnixSocket::new_stream()?;
        socket.bind(path).map_err(|e| match path.parent() {
            Some(dir) if e.kind() == io::ErrorKind::NotFound => io::Error::new(
                e.kind(),
                format!(
                    "the directory {} does not exist (the systemd unit's RuntimeDirectory= creates /run/sse-notify)",
                    dir.display()
                ),
            ),
            _ => e,
        })?;
        // Bound but not listening yet: until listen() every connect is
        // refused, so the mode and group are in place before anyone can
        // connect, without changing the process-wide umask under the
        // runtime's other threads.
        let set_up = || -> io::Result<(UnixListener, (u64, u64))> {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            if let Some(gid) = gid {
                std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot give the socket file group {gid} (server.admin_socket_group; the daemon's user must be a member): {e}"),
                    )
                })?;
            }
            let meta = std::fs::symlink_metadata(path)?;
            Ok((socket.listen(backlog)?, (meta.dev(), meta.ino())))
        };
        match set_up() {
            Ok((listener, id)) => Ok(AdminListener::Unix(SocketFile {
                listener,
                path: path.to_path_buf(),
                id,
            })),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// Where it listens: the TCP address the kernel gave, or the socket
    /// file.
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        match self {
            AdminListener::Tcp(l) => l.local_addr().map(ListenAddr::Tcp),
            AdminListener::Unix(f) => Ok(ListenAddr::Unix(f.path.clone())),
        }
    }

    /// The next connection, or `None` at shutdown (see
    /// [`super::socket::accept_with`]).
    pub(crate) async fn accept(
        &self,
        name: &'static str,
        shutdown: &CancellationToken,
        errors: &mut LogThrottle,
    ) -> Option<(AdminConn, Peer)> {
        match self {
            AdminListener::Tcp(l) => {
                let (stream, peer) = super::socket::accept(name, l, shutdown, errors).await?;
                Some((AdminConn::Tcp(stream), Peer::Tcp(peer)))
            }
            AdminListener::Unix(f) => {
                let (stream, _) =
                    super::socket::accept_with(name, || f.listener.accept(), shutdown, errors)
                        .await?;
                Some((AdminConn::Unix(stream), Peer::Unix))
            }
        }
    }
}

/// Who connected, for logs: a Unix socket's clients have no address.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Peer {
    Tcp(SocketAddr),
    Unix,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => addr.fmt(f),
            Peer::Unix => f.write_str("unix"),
        }
    }
}

/// How a request reached the admin listener, put in its extensions for
/// the routes: the browser-safety checks depend on it, and `/healthz`
/// names the listener.
#[derive(Clone, Debug)]
pub(crate) struct Via {
    /// Over the Unix socket: no browser connects there (the file's
    /// permissions decide who can), and `Host` is whatever the client
    /// wrote, so it is not checked.
    pub(crate) unix: bool,
    /// The listener as `/healthz` shows it (`unix:/path`, or the address).
    pub(crate) listener: std::sync::Arc<str>,
}

/// An accepted admin connection, TCP or Unix, read and written alike.
pub(crate) enum AdminConn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AdminConn {
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            AdminConn::Tcp(s) => s.try_read(buf),
            AdminConn::Unix(s) => s.try_read(buf),
        }
    }

    pub(crate) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            AdminConn::Tcp(s) => s.try_write(buf),
            AdminConn::Unix(s) => s.try_write(buf),
        }
    }
}

impl AsyncRead for AdminConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AdminConn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            AdminConn::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AdminConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AdminConn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            AdminConn::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AdminConn::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            AdminConn::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            AdminConn::Tcp(s) => s.is_write_vectored(),
            AdminConn::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AdminConn::Tcp(s) => Pin::new(s).poll_flush(cx),
            AdminConn::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AdminConn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            AdminConn::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
