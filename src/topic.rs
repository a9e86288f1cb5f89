//! What a topic is (README "Topics"): its name, and the patterns that say
//! who may follow it (`auth.public_topics`, the proxy's topics header, a
//! token's `topics` claim). The config, the stream's auth and the admin
//! API all check names and patterns here, so they cannot disagree.

use std::collections::HashSet;
use std::sync::Arc;

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

/// The connection ids that follow one topic, in the hub and in the
/// embedded registry. Most topics are followed by one stream (a page's own
/// document, a user's own feed): that id is held inline, as a set's table
/// for one id would cost about 100 bytes. Never empty while its topic is
/// listed: the owners drop a topic with its last follower.
#[derive(Debug)]
pub(crate) enum Members {
    One(Arc<str>),
    /// Boxed, so that a topic's entry stays two words, as with `One`.
    #[expect(
        clippy::box_collection,
        reason = "the box keeps every topic's entry as small as one id"
    )]
    Many(Box<HashSet<Arc<str>>>),
}

impl Default for Members {
    fn default() -> Self {
        Members::Many(Box::default())
    }
}

impl Members {
    /// Adds `id`; false when it was there already.
    pub(crate) fn insert(&mut self, id: Arc<str>) -> bool {
        match self {
            Members::Many(set) if set.is_empty() => *self = Members::One(id),
            Members::Many(set) => return set.insert(id),
            Members::One(one) if *one == id => return false,
            Members::One(one) => {
                let set = HashSet::from([one.clone(), id]);
                *self = Members::Many(Box::new(set));
            }
        }
        true
    }

    /// Removes `id`; false when it was not there. A set down to one id
    /// gives its table back.
    pub(crate) fn remove(&mut self, id: &str) -> bool {
        match self {
            Members::One(one) if **one == *id => *self = Members::default(),
            Members::One(_) => return false,
            Members::Many(set) => {
                if !set.remove(id) {
                    return false;
                }
                let last = match set.len() {
                    1 => set.drain().next(),
                    _ => None,
                };
                if let Some(last) = last {
                    *self = Members::One(last);
                }
            }
        }
        true
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Members::One(_) => 1,
            Members::Many(set) => set.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        let (one, many) = match self {
            Members::One(one) => (Some(one), None),
            Members::Many(set) => (None, Some(set.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_hold_one_inline_and_more_in_a_set() {
        let ids: Vec<Arc<str>> = ["a", "b", "c"].into_iter().map(Arc::from).collect();
        let sorted = |m: &Members| {
            let mut v: Vec<String> = m.iter().map(|x| x.to_string()).collect();
            v.sort();
            v
        };
        // as small as one id: the topic indexes hold one per topic
        assert_eq!(size_of::<Members>(), size_of::<Arc<str>>());
        let mut m = Members::default();
        assert!(m.is_empty() && m.iter().next().is_none());
        assert!(!m.remove("a"), "nothing to remove");
        assert!(m.insert(ids[0].clone()));
        assert!(matches!(m, Members::One(_)));
        assert!(!m.insert(ids[0].clone()), "once");
        assert!(!m.remove("b"));
        assert!(m.insert(ids[1].clone()) && m.insert(ids[2].clone()));
        assert_eq!(
            (m.len(), sorted(&m)),
            (3, vec!["a".into(), "b".into(), "c".into()])
        );
        assert!(!m.insert(ids[2].clone()));
        assert!(m.remove("a") && !m.remove("a"));
        assert!(matches!(m, Members::Many(_)));
        assert!(m.remove("c"));
        assert!(matches!(m, Members::One(_)), "down to one: inline again");
        assert_eq!(sorted(&m), ["b"]);
        assert!(m.remove("b"));
        assert!(m.is_empty());
        assert!(m.insert(ids[1].clone()));
        assert_eq!(sorted(&m), ["b"]);
    }

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
