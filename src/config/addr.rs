//! Addresses and host names as the config writes them and the admin API
//! reads them: listener addresses (`server.listen`, and
//! `server.admin_listen`, which may be a Unix socket: [`ListenAddr`]),
//! `host[:port]`
//! authorities (the admin API's `Host` guard splits with
//! [`split_host_port`]), host names (`api.allowed_hosts`) and origins
//! (`api.allowed_origins`).

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::{invalid, ConfigError};

/// A listener address, or an error naming `key`.
pub(super) fn parse_addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("{value:?} is not an address like \"127.0.0.1:8090\""),
        )
    })
}

/// Where a listener listens: a TCP address, or a Unix socket file
/// (`unix:/run/sse-notify/admin.sock`, or `unix:///...` as URLs write it).
/// It displays as the config writes it (`unix:/path`), in logs and in
/// `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => addr.fmt(f),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The longest socket path the kernel takes (`sun_path` is 108 bytes on
/// Linux, with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A listener that may be a Unix socket, or an error naming `key`.
pub(super) fn parse_listen(key: &'static str, value: &str) -> Result<ListenAddr, ConfigError> {
    let Some(rest) = value.strip_prefix("unix:") else {
        return parse_addr(key, value).map(ListenAddr::Tcp);
    };
    // `unix:///run/x.sock` is the URL form of `unix:/run/x.sock`; the
    // authority between `//` and the path must be empty.
    let path = match rest.strip_prefix("//") {
        Some(url_path) if url_path.is_empty() || url_path.starts_with('/') => url_path,
        Some(_) => {
            return Err(invalid(
                key,
                format!("{value:?}: write a Unix socket as \"unix:/absolute/path\" (or \"unix:///absolute/path\")"),
            ))
        }
        None => rest,
    };
    if path.is_empty() {
        return Err(invalid(
            key,
            format!("{value:?} names no socket file (e.g. \"unix:/run/sse-notify/admin.sock\")"),
        ));
    }
    if !path.starts_with('/') {
        return Err(invalid(
            key,
            format!("{value:?}: the socket path must be absolute (e.g. \"unix:/run/sse-notify/admin.sock\"), not relative to wherever the daemon starts"),
        ));
    }
    if path.ends_with('/') || path.contains('\0') {
        return Err(invalid(
            key,
            format!("{value:?}: the socket path must name a file"),
        ));
    }
    if path.len() > MAX_SOCKET_PATH {
        return Err(invalid(
            key,
            format!("{value:?}: the socket path is {} bytes, the kernel takes at most {MAX_SOCKET_PATH}", path.len()),
        ));
    }
    Ok(ListenAddr::Unix(Path::new(path).to_path_buf()))
}

/// `host[:port]` or `[v6][:port]` -> (host, port); the brackets stay on a
/// v6 host. `None` when the port is not a number or the brackets are
/// unbalanced.
pub fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

/// A DNS name as `Host` carries it: letters, digits, `-`, `.` and `_`.
pub(super) fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// `scheme://host[:port]` as browsers serialize an `Origin`: no path, no
/// user, no trailing slash; `null` is none.
pub(super) fn is_origin(s: &str) -> bool {
    let Some((scheme, authority)) = s.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    let host_ok = match split_host_port(authority) {
        Some((host, _)) => match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
            None => is_host_name(host),
        },
        None => false,
    };
    scheme_ok && host_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_listen_may_be_a_unix_socket() {
        let key = "server.admin_listen";
        for (value, path) in [
            (
                "unix:/run/sse-notify/admin.sock",
                "/run/sse-notify/admin.sock",
            ),
            (
                "unix:///run/sse-notify/admin.sock",
                "/run/sse-notify/admin.sock",
            ),
        ] {
            let parsed = parse_listen(key, value).unwrap();
            assert_eq!(parsed, ListenAddr::Unix(PathBuf::from(path)));
            assert_eq!(parsed.to_string(), format!("unix:{path}"));
        }
        assert_eq!(
            parse_listen(key, "127.0.0.1:8091").unwrap(),
            ListenAddr::Tcp("127.0.0.1:8091".parse().unwrap())
        );
        let long = format!("unix:/{}", "x".repeat(120));
        for (bad, says) in [
            ("unix:", "names no socket file"),
            ("unix://", "names no socket file"),
            ("unix:admin.sock", "must be absolute"),
            ("unix:run/admin.sock", "must be absolute"),
            ("unix://host/admin.sock", "unix:/absolute/path"),
            ("unix:/run/sse-notify/", "must name a file"),
            (long.as_str(), "at most 107"),
            ("/run/admin.sock", "not an address"),
        ] {
            let e = parse_listen(key, bad).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn host_and_port_split() {
        assert_eq!(
            split_host_port("localhost:8091"),
            Some(("localhost", Some(8091)))
        );
        assert_eq!(split_host_port("10.0.0.1"), Some(("10.0.0.1", None)));
        assert_eq!(split_host_port("[::1]:80"), Some(("[::1]", Some(80))));
        assert_eq!(split_host_port("[::1]"), Some(("[::1]", None)));
        assert_eq!(split_host_port("[::1]x"), None);
        assert_eq!(split_host_port("host:x"), None);
        assert_eq!(split_host_port("host:70000"), None);
    }
}
