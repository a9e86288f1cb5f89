//! The topics a stream follows: --topics expanded for one stream, checked
//! as the daemon checks them, and the `topics=` parameter that asks for them.

/// The topics of stream `idx` (user `uname`): the comma-separated
/// `template` with `{i}` and `{user}` replaced, sorted, each once (as the
/// daemon keeps them); the error names a name the daemon would refuse.
pub(crate) fn expand(template: &str, idx: usize, uname: &str) -> Result<Vec<String>, String> {
    let mut topics: Vec<String> = template
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.replace("{i}", &idx.to_string()).replace("{user}", uname))
        .collect();
    if let Some(bad) = topics.iter().find(|t| !valid(t)) {
        return Err(format!(
            "--topics: {bad:?} is not a topic name (1 to 128 characters of A-Za-z0-9_.:/@=-)"
        ));
    }
    topics.sort_unstable();
    topics.dedup();
    Ok(topics)
}

fn valid(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:/@=-".contains(&b))
}

/// `path` asking for `topics` (unchanged when there are none). Every
/// character a name may hold is allowed as is in a query.
pub(crate) fn with_query(path: &str, topics: &[String]) -> String {
    if topics.is_empty() {
        return path.to_string();
    }
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}topics={}", topics.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_gives_each_stream_its_topics() {
        assert_eq!(expand("", 3, "u3"), Ok(vec![]));
        assert_eq!(
            expand("news, s{i}-b,s{i}-a,,{user}:x,news", 7, "u2"),
            Ok(vec![
                "news".into(),
                "s7-a".into(),
                "s7-b".into(),
                "u2:x".into()
            ])
        );
        let e = expand("ok,a b", 0, "u0").unwrap_err();
        assert!(e.contains("\"a b\""), "{e}");
        assert!(expand(&"x".repeat(129), 0, "u0").is_err());
        assert!(
            expand("doc:*", 0, "u0").is_err(),
            "a pattern is not a topic"
        );
    }

    #[test]
    fn the_query_names_the_topics() {
        let t = vec!["a".to_string(), "doc:4/x@y=z".to_string()];
        assert_eq!(with_query("/s/", &t), "/s/?topics=a,doc:4/x@y=z");
        assert_eq!(
            with_query("/s/?user=u1", &t),
            "/s/?user=u1&topics=a,doc:4/x@y=z"
        );
        assert_eq!(with_query("/s/", &[]), "/s/");
    }
}
