//! What a topic is (README "Topics"): its name, and the patterns that say
//! who may follow it (`auth.public_topics`, the proxy's topics header, a
//! token's `topics` claim). The config, the stream's auth and the admin
//! API all check names and patterns here, so they cannot disagree.

/// The longest topic name, in characters (all ASCII).
pub(crate) const MAX_NAME: usize = 128;

/// Why a topic name is refused, for a message that names it.
pub(crate) fn name_error(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_NAME {
        Some("is longer than 128 characters")
    } else if !name.bytes().all(name_byte) {
        Some("may hold only A-Za-z0-9_.:/@=-")
    } else {
        None
    }
}

/// A topic name as an error message shows it: quoted, and cut after 40
/// characters (a refused name may be as long as the request).
pub(crate) fn quoted(name: &str) -> String {
    match name.char_indices().nth(40) {
        None => format!("{name:?}"),
        Some((end, _)) => format!("{:?}...", &name[..end]),
    }
}

fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_.:/@=-".contains(&b)
}

/// Who may follow which topics: a topic name, a prefix ending in `*`
/// (`doc:*`), or `*` alone (every topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    /// Parses one pattern; the error says what is wrong with it.
    pub(crate) fn parse(text: &str) -> Result<Pattern, &'static str> {
        match text.strip_suffix('*') {
            Some(prefix) if prefix.is_empty() || name_error(prefix).is_none() => {
                Ok(Pattern::Prefix(prefix.to_string()))
            }
            Some(_) => Err("is not a topic name, a prefix ending in *, or *"),
            None => match name_error(text) {
                None => Ok(Pattern::Exact(text.to_string())),
                Some(_) => Err("is not a topic name, a prefix ending in *, or *"),
            },
        }
    }

    pub(crate) fn allows(&self, topic: &str) -> bool {
        match self {
            Pattern::Exact(name) => name == topic,
            Pattern::Prefix(prefix) => topic.starts_with(prefix.as_str()),
        }
    }
}

/// Parses a comma-separated list of patterns (a proxy's header), skipping
/// blanks; a bad entry refuses the whole list, naming it.
pub(crate) fn parse_patterns(list: &str) -> Result<Vec<Pattern>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| Pattern::parse(p).map_err(|why| format!("{p:?} {why}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        for ok in [
            "doc:42",
            "team/7",
            "a",
            "user@example.com",
            "k=v_x.y-z",
            &"x".repeat(128),
        ] {
            assert_eq!(name_error(ok), None, "{ok:?}");
        }
        for bad in ["", "a,b", "doc:*", "a b", "é", "{p}", &"x".repeat(129)] {
            assert!(name_error(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn patterns_allow_names_prefixes_and_everything() {
        let all = Pattern::parse("*").unwrap();
        let docs = Pattern::parse("doc:*").unwrap();
        let one = Pattern::parse("team:7").unwrap();
        assert!(all.allows("anything:at/all"));
        assert!(docs.allows("doc:42") && docs.allows("doc:") && !docs.allows("team:7"));
        assert!(one.allows("team:7") && !one.allows("team:70"));
        for bad in ["", "**", "doc:*:x", "a,b", "a b*"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_patterns(" doc:*, ,team:7 ").unwrap(), vec![docs, one]);
        assert!(parse_patterns("doc:*,bad topic")
            .unwrap_err()
            .contains("bad topic"));
    }
}
