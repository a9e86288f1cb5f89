//! The config against its documentation: the sample file and the README's
//! key table name every key of the schema with its default, and every key
//! says how a reload treats it; plus the checks that cut across sections.

use std::collections::BTreeMap;

use super::reload::OnReload;
use super::*;

const SAMPLE: &str = include_str!("../../etc/sse-notify.toml");
const README: &str = include_str!("../../README.md");

/// Every key of the schema (`section.key`) with its default.
fn schema_keys() -> Vec<(String, toml::Value)> {
    let defaults = toml::Table::try_from(Config::default()).expect("the defaults serialize");
    let mut keys = Vec::new();
    for (section, table) in defaults {
        let table = table.as_table().expect("every top-level key is a section");
        for (key, value) in table {
            keys.push((format!("{section}.{key}"), value.clone()));
        }
    }
    // Fewer means the walk broke, not that the schema shrank.
    assert!(keys.len() >= 30, "only {} keys found", keys.len());
    keys
}

#[test]
fn sample_config_parses_and_equals_defaults() {
    let parsed = Config::parse(SAMPLE).expect("etc/sse-notify.toml parses");
    parsed.validate().expect("etc/sse-notify.toml is valid");
    assert_eq!(
        parsed,
        Config::default(),
        "the sample documents the defaults"
    );
}

#[test]
fn sample_config_documents_every_key() {
    let sample: toml::Table = toml::from_str(SAMPLE).unwrap();
    for (name, _) in schema_keys() {
        let (section, key) = name.split_once('.').unwrap();
        assert!(
            sample
                .get(section)
                .and_then(|s| s.as_table())
                .is_some_and(|s| s.contains_key(key)),
            "etc/sse-notify.toml lacks {name}"
        );
    }
}

/// The README's table under `heading`: (key, default) for every key its
/// rows name; a row may name several keys, with as many defaults.
fn readme_table(heading: &str) -> Vec<(String, String)> {
    let mut lines = README
        .lines()
        .skip_while(|l| *l != heading)
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2);
    let mut rows = Vec::new();
    for line in lines.by_ref() {
        let cells: Vec<&str> = line.split('|').collect();
        let spans = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        };
        let (keys, defaults) = (spans(cells[1]), spans(cells[2]));
        assert_eq!(
            keys.len(),
            defaults.len(),
            "README row names {keys:?} with defaults {defaults:?}: one default per key"
        );
        rows.extend(keys.into_iter().zip(defaults));
    }
    rows
}

/// A default as the README's table shows it: strings bare but the empty
/// one, the rest as TOML writes it.
fn shown(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) if s.is_empty() => "\"\"".into(),
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[test]
fn readme_key_table_names_every_key_with_its_default() {
    let heading = "### Every key";
    let table: BTreeMap<String, String> = readme_table(heading).into_iter().collect();
    assert!(!table.is_empty(), "README has no table under {heading:?}");
    let schema = schema_keys();
    for (name, default) in &schema {
        let Some(documented) = table.get(name) else {
            panic!("README {heading:?} lacks `{name}`");
        };
        assert_eq!(
            *documented,
            shown(default),
            "README {heading:?}: the default of `{name}`"
        );
    }
    for name in table.keys() {
        assert!(
            schema.iter().any(|(key, _)| key == name),
            "README {heading:?} names `{name}`, which is no key"
        );
    }
}

#[test]
fn every_key_says_how_a_reload_treats_it() {
    let mut declared: Vec<&str> = keys().map(|key| key.name).collect();
    declared.sort_unstable();
    let before = declared.len();
    declared.dedup();
    assert_eq!(before, declared.len(), "a key is declared twice");
    let mut schema: Vec<String> = schema_keys().into_iter().map(|(name, _)| name).collect();
    schema.sort_unstable();
    assert_eq!(
        declared, schema,
        "every key of the schema, and nothing else, is declared live, at_start or restart in its section's KEYS"
    );
}

#[test]
fn a_reload_names_the_restart_keys_it_changes_and_keeps_their_old_values() {
    let old = Config::default();
    let mut new = Config::parse(
        r#"
        [server]
        listen = "127.0.0.1:9090"
        admin_listen = "127.0.0.1:9091"
        admin_socket_mode = "0600"
        admin_socket_group = "root"
        base_path = ""
        node_id = "n2"
        shutdown_grace_secs = 3
        worker_threads = 2
        [redis]
        url = "redis://127.0.0.1:6379/1"
        key_prefix = "other"
        connect_timeout_secs = 5
        [history]
        enabled = false
        size = 7
        [log]
        level = "debug"
        format = "json"
        [stream]
        heartbeat_secs = 5
        [startup]
        clear = false
        "#,
    )
    .unwrap();
    // The order of the warning is the one it has always had.
    assert_eq!(
        old.restart_required_changes(&new),
        [
            "server.listen",
            "server.admin_listen",
            "server.admin_socket_mode",
            "server.admin_socket_group",
            "server.base_path",
            "server.node_id",
            "server.shutdown_grace_secs",
            "server.worker_threads",
            "redis.connect_timeout_secs",
            "redis.url",
            "redis.key_prefix",
            "log.format",
            "history.enabled",
        ]
    );
    new.keep_restart_values(&old);
    assert!(old.restart_required_changes(&new).is_empty());
    assert_eq!((new.server, new.redis), (old.server, old.redis));
    assert_eq!(new.log.format, old.log.format);
    assert!(new.history.enabled);
    // What a reload applies stays new.
    assert_eq!((new.history.size, new.log.level.as_str()), (7, "debug"));
    assert_eq!((new.stream.heartbeat_secs, new.startup.clear), (5, false));
}

#[test]
fn readme_names_the_keys_that_need_a_restart() {
    let paragraph: String = README
        .lines()
        .skip_while(|l| !l.starts_with("Needing a restart"))
        .take_while(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let mut named: Vec<&str> = paragraph.split('`').skip(1).step_by(2).collect();
    named.sort_unstable();
    let mut declared: Vec<&str> = keys()
        .filter(|key| !matches!(key.on_reload, OnReload::Live))
        .map(|key| key.name)
        .collect();
    declared.sort_unstable();
    assert!(!declared.is_empty());
    assert_eq!(
        named, declared,
        "README \"Reload (SIGHUP)\" names the keys that need a restart (and startup.clear, read only at start)"
    );
}

#[test]
fn unknown_key_is_named() {
    let err = Config::parse("[stream]\nheartbeat_sec = 3\n").unwrap_err();
    assert!(err.contains("heartbeat_sec"), "{err}");
    let err = Config::parse("[strem]\n").unwrap_err();
    assert!(err.contains("strem"), "{err}");
}

#[test]
fn bad_values_are_named() {
    let err = Config::parse("[stream]\nheartbeat_secs = \"x\"\n").unwrap_err();
    assert!(err.contains("heartbeat_secs"), "{err}");

    let mut c = Config::default();
    c.sweep.stale_timeout_secs = 30;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("sweep.stale_timeout_secs"), "{err}");

    let mut c = Config::default();
    c.auth.trusted_proxies = vec!["10.0.0.0/33".into()];
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("auth.trusted_proxies"), "{err}");

    let mut c = Config::default();
    c.server.listen = "nope".into();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("server.listen"), "{err}");

    let err = Config::parse("[auth]\nmode = \"magic\"\n").unwrap_err();
    assert!(err.contains("mode"), "{err}");

    let mut c = Config::default();
    c.stream.write_timeout_secs = 0;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("stream.write_timeout_secs"), "{err}");

    let mut c = Config::default();
    c.api.request_timeout_secs = 0;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("api.request_timeout_secs"), "{err}");

    let mut c = Config::default();
    c.api.max_connections = 0;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("api.max_connections"), "{err}");
}

#[test]
fn secrets_are_masked() {
    let mut c = Config::default();
    c.api.token = Secret("hunter2".into());
    c.redis.url = Secret("redis://app:s3cret@db:6379/0".into());
    assert!(!format!("{c:?}").contains("hunter2"));
    let shown = c.to_masked_toml();
    assert!(
        !shown.contains("hunter2") && !shown.contains("s3cret"),
        "{shown}"
    );
    assert!(shown.contains("redis://app:****@db:6379/0"), "{shown}");
}
