//! Who is opening a stream (README "Auth": header, token or none), who may use the
//! admin API (bearer token), and what a username may be.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use icu_properties::props::{DefaultIgnorableCodePoint, GeneralCategory};
use icu_properties::{CodePointMapData, CodePointSetData};
use ipnet::IpNet;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use warp::http::HeaderMap;

use crate::config::{AuthMode, Config};
use crate::node::expiry::TOKEN_LEEWAY_SECS;
use crate::store::unix_now;
use crate::topic::{self, Pattern};

#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum AuthError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
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

/// Usernames: 1 to 150 Unicode scalar values, no control characters and
/// nothing invisible ([`invisible`]).
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
    // ASCII holds nothing invisible but the control characters above: the
    // usual name costs no table look-up.
    if !name.is_ascii() {
        if let Some((at, c)) = name.chars().enumerate().find(|&(_, c)| invisible(c)) {
            return Err(format!(
                "must not contain invisible or bidirectional formatting characters (U+{:04X} at character {})",
                u32::from(c),
                at + 1
            ));
        }
    }
    Ok(())
}

/// Characters that change how a name shows without showing themselves:
/// Unicode format characters (general category Cf: bidirectional embeddings,
/// overrides, isolates and marks, zero-width space and joiners, word joiner,
/// BOM, soft hyphen, tags, ...), line and paragraph separators (Zl, Zp), and
/// the other default-ignorable code points (variation selectors, Hangul
/// fillers, combining grapheme joiner). A console, a log line or an admin
/// page would show `ali\u{202E}ecn` as another name than the one routed to.
fn invisible(c: char) -> bool {
    let gc = CodePointMapData::<GeneralCategory>::new().get(c);
    matches!(
        gc,
        GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    ) || CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c)
}

/// Who opened a stream.
#[derive(Debug, PartialEq)]
pub(crate) struct Identity {
    pub username: String,
    /// Token mode: the token's `exp` (unix secs); the stream ends then.
    pub expires: Option<u64>,
    /// The topics this user may follow besides `auth.public_topics`: the
    /// proxy's topics header (header mode) or the token's `topics` claim.
    pub topics: Vec<Pattern>,
}

/// The claims read besides what [`Validation`] checks; optional here so
/// that a missing one is reported by the validation, by name.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<f64>,
    iat: Option<f64>,
    /// Read loosely so that a wrong type is reported by its name.
    topics: Option<serde_json::Value>,
}

/// What a refused token is told: the claim or key at fault, never the
/// token itself.
fn token_error(e: &jsonwebtoken::errors::Error, audience_set: bool) -> String {
    let why = match e.kind() {
        ErrorKind::ExpiredSignature => "expired (exp is past)".to_string(),
        ErrorKind::ImmatureSignature => "not valid yet (nbf is in the future)".to_string(),
        ErrorKind::InvalidIssuer => "its issuer (iss) is not auth.token_issuer".to_string(),
        ErrorKind::InvalidAudience if audience_set => {
            "its audience (aud) does not name auth.token_audience".to_string()
        }
        ErrorKind::InvalidAudience => {
            "it names an audience (aud) but auth.token_audience is not set".to_string()
        }
        ErrorKind::MissingRequiredClaim(claim) => format!("the {claim} claim is missing"),
        ErrorKind::InvalidClaimFormat(claim) => format!("the {claim} claim is not a number"),
        ErrorKind::InvalidSignature => {
            "bad signature (not signed with auth.token_secret_file)".to_string()
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "only HS256 is accepted".to_string()
        }
        ErrorKind::Json(_) => "its claims are not of the expected types".to_string(),
        _ => "not a JWT".to_string(),
    };
    format!("invalid token: {why}")
}

enum Mode {
    Header {
        name: String,
        /// `auth.topics_header`.
        topics: String,
        trusted: Vec<IpNet>,
    },
    Token {
        key: DecodingKey,
        validation: Box<Validation>,
        cookie: String,
        /// `auth.token_max_lifetime_secs`; 0 for no limit.
        max_lifetime: u64,
    },
    None,
}

/// Identifies stream subscribers according to `[auth]`, and says which
/// topics they may follow.
pub(crate) struct Authenticator {
    mode: Mode,
    /// `auth.public_topics`: anyone who may open a stream may follow them.
    public_topics: Vec<Pattern>,
}

impl Authenticator {
    pub(crate) fn from_config(config: &Config) -> Result<Self, AuthSetupError> {
        let mode = match config.auth.mode {
            AuthMode::Header => Mode::Header {
                name: config.auth.header.clone(),
                topics: config.auth.topics_header.clone(),
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
                let a = &config.auth;
                let mut validation = Validation::new(Algorithm::HS256);
                let mut required = vec!["exp", "sub"];
                validation.leeway = TOKEN_LEEWAY_SECS;
                validation.validate_nbf = true;
                if !a.token_issuer.is_empty() {
                    validation.set_issuer(&[&a.token_issuer]);
                    required.push("iss");
                }
                if !a.token_audience.is_empty() {
                    validation.set_audience(&[&a.token_audience]);
                    required.push("aud");
                }
                validation.set_required_spec_claims(&required);
                Mode::Token {
                    key: DecodingKey::from_secret(secret),
                    validation: Box::new(validation),
                    cookie: a.cookie.clone(),
                    max_lifetime: a.token_max_lifetime_secs,
                }
            }
        };
        // The config's validation refused a bad pattern already.
        let public_topics = config
            .auth
            .public_topics
            .iter()
            .filter_map(|p| Pattern::parse(p).ok())
            .collect();
        Ok(Self {
            mode,
            public_topics,
        })
    }

    pub(crate) fn is_insecure(&self) -> bool {
        matches!(self.mode, Mode::None)
    }

    /// Who a stream request is from.
    pub(crate) fn identify(
        &self,
        peer: Option<SocketAddr>,
        headers: &HeaderMap,
        query: &HashMap<String, String>,
    ) -> Result<Identity, AuthError> {
        let mut expires = None;
        let mut patterns = Vec::new();
        let user = match &self.mode {
            Mode::None => query.get("user").cloned().unwrap_or_default(),
            Mode::Header {
                name,
                topics: topics_header,
                trusted,
            } => {
                let from_trusted = peer
                    .map(|p| canonical(p.ip()))
                    .is_some_and(|ip| trusted.iter().any(|net| net.contains(&ip)));
                let value = headers.get(name.as_str());
                let topics_value = headers.get(topics_header.as_str());
                if !from_trusted {
                    // Either header from anyone else is a forgery attempt:
                    // said as such even when the other one is missing.
                    if let Some(forged) = [(value, name), (topics_value, topics_header)]
                        .into_iter()
                        .find_map(|(v, n)| v.map(|_| n))
                    {
                        return Err(AuthError::Forbidden(format!(
                            "{forged} header is only accepted from trusted proxies"
                        )));
                    }
                }
                let Some(value) = value else {
                    return Err(AuthError::Unauthorized(format!("missing {name} header")));
                };
                if let Some(list) = topics_value {
                    let list = list.to_str().map_err(|_| {
                        AuthError::BadRequest(format!("{topics_header} header is not ASCII"))
                    })?;
                    patterns = topic::parse_patterns(list).map_err(|why| {
                        AuthError::BadRequest(format!("{topics_header} header: {why}"))
                    })?;
                }
                value
                    .to_str()
                    .map(str::to_string)
                    .or_else(|_| String::from_utf8(value.as_bytes().to_vec()))
                    .map_err(|_| AuthError::BadRequest(format!("{name} header is not UTF-8")))?
            }
            Mode::Token {
                key,
                validation,
                cookie,
                max_lifetime,
            } => {
                let token = query
                    .get("token")
                    .cloned()
                    .or_else(|| cookie_value(headers, cookie))
                    .or_else(|| bearer(headers).map(str::to_string))
                    .ok_or_else(|| AuthError::Unauthorized("missing token".into()))?;
                let claims = jsonwebtoken::decode::<Claims>(&token, key, validation)
                    .map_err(|e| {
                        AuthError::Unauthorized(token_error(&e, validation.aud.is_some()))
                    })?
                    .claims;
                // Both are there: the validation requires them.
                let (Some(sub), Some(exp)) = (claims.sub, claims.exp) else {
                    return Err(AuthError::Unauthorized(
                        "invalid token: sub and exp are required".into(),
                    ));
                };
                check_lifetime(exp, claims.iat, *max_lifetime)?;
                if let Some(claim) = claims.topics {
                    patterns = topics_claim(claim)?;
                }
                // The validation rounds `exp` the same way.
                expires = Some(exp.round() as u64);
                sub
            }
        };
        if user.is_empty() {
            return Err(AuthError::Unauthorized("no identity".into()));
        }
        validate_username(&user).map_err(|e| AuthError::BadRequest(format!("username {e}")))?;
        Ok(Identity {
            username: user,
            expires,
            topics: patterns,
        })
    }

    /// The first of `topics` that `who` may not follow (with why, for the
    /// 403), or `None` when every one is allowed.
    pub(crate) fn refused_topic<'t>(
        &self,
        who: &Identity,
        topics: &'t [String],
    ) -> Option<(&'t str, String)> {
        let refused = topics.iter().find(|t| {
            !self
                .public_topics
                .iter()
                .chain(&who.topics)
                .any(|p| p.allows(t))
        })?;
        let not_in = match &self.mode {
            Mode::Header { topics, .. } => {
                format!("neither auth.public_topics nor the {topics} header allows it")
            }
            Mode::Token { .. } => {
                "neither auth.public_topics nor the token's topics claim allows it".to_string()
            }
            Mode::None => {
                "auth.public_topics does not allow it (auth.mode = \"none\" follows public topics only)"
                    .to_string()
            }
        };
        Some((refused, not_in))
    }
}

/// A token's `topics` claim: an array of topic patterns (`null`: none).
fn topics_claim(claim: serde_json::Value) -> Result<Vec<Pattern>, AuthError> {
    let bad =
        |why: String| AuthError::Unauthorized(format!("invalid token: the topics claim {why}"));
    let list = match claim {
        serde_json::Value::Null => return Ok(Vec::new()),
        serde_json::Value::Array(list) => list,
        _ => return Err(bad("must be an array of topic patterns".into())),
    };
    list.iter()
        .map(|p| match p.as_str() {
            Some(text) => {
                Pattern::parse(text).map_err(|why| bad(format!("holds {text:?}, which {why}")))
            }
            None => Err(bad(format!("holds {p}, which is not a string"))),
        })
        .collect()
}

/// `auth.token_max_lifetime_secs`: a token living longer (from `iat` to
/// `exp`, or from now when it has no `iat`) is refused, so that a token
/// minted to never expire, or one leaked from a log, is not honoured for
/// months.
fn check_lifetime(exp: f64, iat: Option<f64>, max: u64) -> Result<(), AuthError> {
    if max == 0 {
        return Ok(());
    }
    let (lifetime, allowed, from) = match iat {
        Some(iat) => (exp - iat, max as f64, "iat"),
        // The issuer's clock may be ahead of ours by the leeway.
        None => (exp - unix_now(), (max + TOKEN_LEEWAY_SECS) as f64, "now"),
    };
    if lifetime > allowed {
        return Err(AuthError::Unauthorized(format!(
            "invalid token: it is valid for {} s from {from} to exp, more than auth.token_max_lifetime_secs ({max})",
            lifetime.round()
        )));
    }
    Ok(())
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
        for bad in [
            "ali\u{202E}ecn",
            "a\u{202A}b",
            "a\u{2066}b",
            "a\u{2069}",
            "\u{200B}",
            "a\u{200C}b",
            "a\u{200F}",
            "a\u{2060}",
            "\u{FEFF}a",
            "a\u{00AD}b",
            "a\u{E0001}",
            "a\u{2028}",
            "a\u{2029}",
            "a\u{3164}",
            "a\u{FE0F}",
            "a\u{034F}",
        ] {
            let e = validate_username(bad).unwrap_err();
            assert!(e.contains("U+"), "{bad:?}: {e}");
        }
        assert!(validate_username("ali\u{202E}ecn")
            .unwrap_err()
            .contains("U+202E at character 4"));
        for good in [
            "émile 李",
            "مریم",
            "Ωmega-ß",
            "\u{1F600}",
            "a\u{00A0}b",
            "x\u{0301}",
        ] {
            assert!(validate_username(good).is_ok(), "{good:?}");
        }
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
        let bob = Identity {
            username: "bob".into(),
            expires: None,
            topics: Vec::new(),
        };
        assert_eq!(auth.identify(Some(local), &h, &q).unwrap(), bob);
        assert_eq!(auth.identify(Some(mapped), &h, &q).unwrap(), bob);
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
    fn topics_come_from_the_trusted_header_and_public_topics() {
        let mut config = Config::default();
        config.auth.public_topics = vec!["news".into()];
        let auth = Authenticator::from_config(&config).unwrap();
        let q = HashMap::new();
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let far: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-remote-user", "bob".parse().unwrap());
        h.insert("x-remote-topics", " doc:*, ,team:7".parse().unwrap());
        let bob = auth.identify(Some(local), &h, &q).unwrap();
        let asked = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            auth.refused_topic(&bob, &asked(&["doc:1", "news", "team:7"])),
            None
        );
        let some_refused = asked(&["doc:1", "team:8", "x"]);
        let (refused, why) = auth.refused_topic(&bob, &some_refused).unwrap();
        assert_eq!(refused, "team:8");
        assert!(why.contains("X-Remote-Topics"), "{why}");
        // From anyone else, the topics header alone is refused by name.
        h.remove("x-remote-user");
        assert_eq!(
            auth.identify(Some(far), &h, &q),
            Err(AuthError::Forbidden(
                "X-Remote-Topics header is only accepted from trusted proxies".into()
            ))
        );
        h.insert("x-remote-user", "bob".parse().unwrap());
        h.insert("x-remote-topics", "doc:*,a b".parse().unwrap());
        let err = auth.identify(Some(local), &h, &q).unwrap_err();
        assert!(
            matches!(&err, AuthError::BadRequest(m) if m.contains("X-Remote-Topics") && m.contains("a b")),
            "{err:?}"
        );
    }

    #[test]
    fn a_topics_claim_is_patterns_or_named() {
        assert_eq!(
            topics_claim(serde_json::json!(["doc:*", "*"])).unwrap(),
            vec![
                Pattern::parse("doc:*").unwrap(),
                Pattern::parse("*").unwrap()
            ]
        );
        assert_eq!(topics_claim(serde_json::Value::Null).unwrap(), Vec::new());
        for bad in [
            serde_json::json!("doc:*"),
            serde_json::json!([1]),
            serde_json::json!(["a b"]),
        ] {
            let err = topics_claim(bad.clone()).unwrap_err();
            assert!(
                matches!(&err, AuthError::Unauthorized(m) if m.contains("topics claim")),
                "{bad}: {err:?}"
            );
        }
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
