//! Secrets in the config (`api.token`, the password in `redis.url`): kept
//! out of `Debug` output, logs and `check-config`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Whether it is set is worth seeing; what it is never is.
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"********\"")
        }
    }
}

/// `redis://user:pass@host` -> `redis://user:****@host`, for display.
pub fn mask_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let masked = match userinfo.find(':') {
                Some(colon) => format!("{}:****", &userinfo[..colon]),
                None => "****".to_string(),
            };
            format!("{}{}{}", &url[..scheme_end + 3], masked, &rest[at..])
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            mask_url_password("redis://app:s3cret@db:6379/0"),
            "redis://app:****@db:6379/0"
        );
        assert_eq!(
            mask_url_password("redis://s3cret@db:6379/0"),
            "redis://****@db:6379/0"
        );
        assert_eq!(
            mask_url_password("redis+sentinel://:pw@h1,h2/mymaster"),
            "redis+sentinel://:****@h1,h2/mymaster"
        );
        assert_eq!(
            mask_url_password("redis+cluster://app:pw@h1:7000,h2:7001/"),
            "redis+cluster://app:****@h1:7000,h2:7001/"
        );
        assert_eq!(
            mask_url_password("redis+cluster://:pw@h1:7000"),
            "redis+cluster://:****@h1:7000"
        );
        assert_eq!(mask_url_password("redis://db:6379/0"), "redis://db:6379/0");
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "\"********\"");
        assert_eq!(format!("{:?}", Secret::default()), "\"\"");
    }
}
