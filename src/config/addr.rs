//! Addresses and host names as the config writes them and the admin API
//! reads them: listener addresses (`server.listen`), `host[:port]`
//! authorities (the admin API's `Host` guard splits with
//! [`split_host_port`]), host names (`api.allowed_hosts`) and origins
//! (`api.allowed_origins`).

use std::net::{Ipv6Addr, SocketAddr};

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
