//! `[auth]`: who is opening a stream (README "Auth"): a header set by
//! trusted proxies, a signed token, or nobody checked (development).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::reload::{live, Key};
use super::{invalid, ConfigError};

const DEFAULT_MODE: AuthMode = AuthMode::Header;
/// What the shipped nginx example (`etc/nginx/sse-notify.conf`) sets.
const DEFAULT_HEADER: &str = "X-Remote-User";
/// The proxy runs on the same host.
const DEFAULT_TRUSTED_PROXIES: [&str; 2] = ["127.0.0.1/32", "::1/128"];
const DEFAULT_COOKIE: &str = "sse_token";
/// What the shipped nginx example passes on from the app's answer.
const DEFAULT_TOPICS_HEADER: &str = "X-Remote-Topics";

/// A day: longer than any page's token needs (a stream ends at `exp` and
/// the page fetches another), short enough that a token minted never to
/// expire, or one copied from a log, is refused.
pub const DEFAULT_TOKEN_MAX_LIFETIME_SECS: u64 = 86_400;

/// Below this, tokens within the clock-skew leeway would be refused.
const MIN_TOKEN_MAX_LIFETIME_SECS: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Header,
    Token,
    None,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub header: String,
    pub trusted_proxies: Vec<String>,
    pub cookie: String,
    pub token_secret_file: String,
    /// The `iss` a stream token must carry; empty: not checked.
    pub token_issuer: String,
    /// The `aud` a stream token must name; empty: a token naming any
    /// audience is refused (RFC 7519 4.1.3), one naming none is accepted.
    pub token_audience: String,
    /// Longest lifetime of a stream token (`exp - iat`, or `exp - now`
    /// without `iat`); 0 for no limit.
    pub token_max_lifetime_secs: u64,
    /// Topic patterns anyone who may open a stream may follow.
    pub public_topics: Vec<String>,
    /// The header (from a trusted proxy) naming the topic patterns the
    /// user may follow, comma-separated.
    pub topics_header: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: DEFAULT_MODE,
            header: DEFAULT_HEADER.into(),
            trusted_proxies: DEFAULT_TRUSTED_PROXIES.map(String::from).into(),
            cookie: DEFAULT_COOKIE.into(),
            token_secret_file: String::new(),
            token_issuer: String::new(),
            token_audience: String::new(),
            token_max_lifetime_secs: DEFAULT_TOKEN_MAX_LIFETIME_SECS,
            public_topics: Vec::new(),
            topics_header: DEFAULT_TOPICS_HEADER.into(),
        }
    }
}

impl AuthConfig {
    /// For streams opened afterwards; a reload whose `[auth]` cannot be
    /// set up (an unreadable secret file) keeps the old one whole.
    pub(super) const KEYS: &'static [Key] = &[
        live!(auth.mode),
        live!(auth.header),
        live!(auth.trusted_proxies),
        live!(auth.cookie),
        live!(auth.token_secret_file),
        live!(auth.token_issuer),
        live!(auth.token_audience),
        live!(auth.token_max_lifetime_secs),
        live!(auth.public_topics),
        live!(auth.topics_header),
    ];

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.header.is_empty()
            || warp::http::HeaderName::from_bytes(self.header.as_bytes()).is_err()
        {
            return Err(invalid(
                "auth.header",
                format!("{:?} is not a valid HTTP header name", self.header),
            ));
        }
        self.trusted_proxies()?;
        if self.topics_header.is_empty()
            || warp::http::HeaderName::from_bytes(self.topics_header.as_bytes()).is_err()
        {
            return Err(invalid(
                "auth.topics_header",
                format!("{:?} is not a valid HTTP header name", self.topics_header),
            ));
        }
        for p in &self.public_topics {
            if let Err(why) = crate::topic::Pattern::parse(p) {
                return Err(invalid("auth.public_topics", format!("{p:?} {why}")));
            }
        }
        if self.cookie.is_empty()
            || !self
                .cookie
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(invalid(
                "auth.cookie",
                "must be a cookie name of A-Za-z0-9_-.",
            ));
        }
        if self.mode == AuthMode::Token && self.token_secret_file.is_empty() {
            return Err(invalid(
                "auth.token_secret_file",
                "is required when auth.mode = \"token\"",
            ));
        }
        for (key, value) in [
            ("auth.token_issuer", &self.token_issuer),
            ("auth.token_audience", &self.token_audience),
        ] {
            if value.trim() != value || value.chars().any(char::is_control) {
                return Err(invalid(
                    key,
                    format!("{value:?} must have no surrounding whitespace and no control characters (\"\" to not check it)"),
                ));
            }
        }
        let lifetime = self.token_max_lifetime_secs;
        if lifetime != 0 && lifetime < MIN_TOKEN_MAX_LIFETIME_SECS {
            return Err(invalid(
                "auth.token_max_lifetime_secs",
                format!(
                    "{lifetime} must be 0 (no limit) or at least {MIN_TOKEN_MAX_LIFETIME_SECS}"
                ),
            ));
        }
        Ok(())
    }

    /// `trusted_proxies` as networks; a bare address is one host.
    pub(super) fn trusted_proxies(&self) -> Result<Vec<IpNet>, ConfigError> {
        self.trusted_proxies
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        invalid(
                            "auth.trusted_proxies",
                            format!("{s:?} is not a CIDR like \"127.0.0.1/32\" or \"::1/128\""),
                        )
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    #[test]
    fn token_checks_are_named() {
        for (set, key) in [
            (
                (|c: &mut Config| c.auth.token_issuer = " https://app.example".into())
                    as fn(&mut Config),
                "auth.token_issuer",
            ),
            (
                |c: &mut Config| c.auth.token_audience = "sse\n".into(),
                "auth.token_audience",
            ),
            (
                |c: &mut Config| c.auth.token_max_lifetime_secs = 3,
                "auth.token_max_lifetime_secs",
            ),
        ] {
            let mut c = Config::default();
            set(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        let mut c = Config::default();
        c.auth.token_issuer = "https://app.example".into();
        c.auth.token_audience = "sse-notify".into();
        c.auth.token_max_lifetime_secs = 0;
        c.validate().expect("set checks and no lifetime limit");
        let err = Config::parse("[auth]\ntoken_max_lifetime_secs = -1\n").unwrap_err();
        assert!(err.contains("token_max_lifetime_secs"), "{err}");
    }
}
