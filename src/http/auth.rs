//! Who is opening a stream (README "Auth": header, token or none), who may use the
//! admin API (bearer token), and what a username may be.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use warp::http::HeaderMap;

use crate::config::{AuthMode, Config};

#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum AuthError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadUsername(String),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("config key `auth.token_secret_file`: cannot read {path}: {source}")]
    SecretFile {
        path: String,
        source: std::io::Error,
    },
    #[error("config key `auth.token_secret_file`: {path} is empty")]
    EmptySecret { path: String },
}

/// Usernames: 1 to 150 Unicode scalar values, no control characters.
pub(crate) fn validate_username(name: &str) -> Result<(), String> {
    let n = name.chars().count();
    if n == 0 {
        return Err("must not be empty".into());
    }
    if n > 150 {
        return Err(format!("is {n} characters long, at most 150 allowed"));
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

enum Mode {
    Header {
        name: String,
        trusted: Vec<IpNet>,
    },
    Token {
        key: DecodingKey,
        validation: Box<Validation>,
        cookie: String,
    },
    None,
}

/// Identifies stream subscribers according to `[auth]`.
pub(crate) struct Authenticator {
    mode: Mode,
}

impl Authenticator {
    pub(crate) fn from_config(config: &Config) -> Result<Self, AuthSetupError> {
        let mode = match config.auth.mode {
            AuthMode::Header => Mode::Header {
                name: config.auth.header.clone(),
                trusted: config.trusted_proxies().unwrap_or_default(),
            },
            AuthMode::None => Mode::None,
            AuthMode::Token => {
                let path = config.auth.token_secret_file.clone();
                let secret = std::fs::read(&path).map_err(|source| AuthSetupError::SecretFile {
                    path: path.clone(),
                    source,
                })?;
                let secret = trim_end_ascii_whitespace(&secret);
                if secret.is_empty() {
                    return Err(AuthSetupError::EmptySecret { path });
                }
                let mut validation = Validation::new(Algorithm::HS256);
                validation.set_required_spec_claims(&["exp", "sub"]);
                validation.leeway = 5;
                Mode::Token {
                    key: DecodingKey::from_secret(secret),
                    validation: Box::new(validation),
                    cookie: config.auth.cookie.clone(),
                }
            }
        };
        Ok(Self { mode })
    }

    pub(crate) fn is_insecure(&self) -> bool {
        matches!(self.mode, Mode::None)
    }

    /// The username of a stream request.
    pub(crate) fn identify(
        &self,
        peer: Option<SocketAddr>,
        headers: &HeaderMap,
        query: &HashMap<String, String>,
    ) -> Result<String, AuthError> {
        let user = match &self.mode {
            Mode::None => query.get("user").cloned().unwrap_or_default(),
            Mode::Header { name, trusted } => {
                let Some(value) = headers.get(name.as_str()) else {
                    return Err(AuthError::Unauthorized(format!("missing {name} header")));
                };
                let from_trusted = peer
                    .map(|p| canonical(p.ip()))
                    .is_some_and(|ip| trusted.iter().any(|net| net.contains(&ip)));
                if !from_trusted {
                    return Err(AuthError::Forbidden(format!(
                        "{name} header is only accepted from trusted proxies"
                    )));
                }
                value
                    .to_str()
                    .map(str::to_string)
                    .or_else(|_| String::from_utf8(value.as_bytes().to_vec()))
                    .map_err(|_| AuthError::BadUsername(format!("{name} header is not UTF-8")))?
            }
            Mode::Token {
                key,
                validation,
                cookie,
            } => {
                let token = query
                    .get("token")
                    .cloned()
                    .or_else(|| cookie_value(headers, cookie))
                    .or_else(|| bearer(headers).map(str::to_string))
                    .ok_or_else(|| AuthError::Unauthorized("missing token".into()))?;
                let data = jsonwebtoken::decode::<Claims>(&token, key, validation)
                    .map_err(|e| AuthError::Unauthorized(format!("invalid token: {e}")))?;
                data.claims.sub
            }
        };
        if user.is_empty() {
            return Err(AuthError::Unauthorized("no identity".into()));
        }
        validate_username(&user).map_err(|e| AuthError::BadUsername(format!("username {e}")))?;
        Ok(user)
    }
}

/// An IPv4 peer on a dual-stack socket shows as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn trim_end_ascii_whitespace(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &b[..end]
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get(warp::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(warp::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
}

/// Admin API access: every request but `/healthz` carries the bearer token
/// when `api.token` is set. Compared in constant time.
pub(crate) fn admin_allowed(expected: &str, headers: &HeaderMap) -> bool {
    if expected.is_empty() {
        return true;
    }
    match bearer(headers) {
        Some(given) => constant_time_eq(given.as_bytes(), expected.as_bytes()),
        None => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // The length leaks, the content does not.
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(validate_username("alice").is_ok());
        assert!(validate_username(&"é".repeat(150)).is_ok());
        assert!(validate_username(&"é".repeat(151)).is_err());
        assert!(validate_username("").is_err());
        assert!(validate_username("a\nb").is_err());
        assert!(validate_username("a\u{7f}b").is_err());
    }

    #[test]
    fn header_mode_trusts_only_proxies() {
        let auth = Authenticator::from_config(&Config::default()).unwrap();
        let mut h = HeaderMap::new();
        let q = HashMap::new();
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        let far: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        assert!(matches!(
            auth.identify(Some(local), &h, &q),
            Err(AuthError::Unauthorized(_))
        ));
        h.insert("x-remote-user", "bob".parse().unwrap());
        assert_eq!(auth.identify(Some(local), &h, &q).unwrap(), "bob");
        assert_eq!(auth.identify(Some(mapped), &h, &q).unwrap(), "bob");
        assert!(matches!(
            auth.identify(Some(far), &h, &q),
            Err(AuthError::Forbidden(_))
        ));
        h.insert("x-remote-user", "".parse().unwrap());
        assert!(matches!(
            auth.identify(Some(local), &h, &q),
            Err(AuthError::Unauthorized(_))
        ));
    }

    #[test]
    fn admin_token() {
        let mut h = HeaderMap::new();
        assert!(admin_allowed("", &h));
        assert!(!admin_allowed("s3", &h));
        h.insert("authorization", "Bearer s3".parse().unwrap());
        assert!(admin_allowed("s3", &h));
        assert!(!admin_allowed("s4", &h));
        assert!(!admin_allowed("s33", &h));
    }
}
