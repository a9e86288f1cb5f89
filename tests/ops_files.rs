//! The files for operators: `etc/prometheus/sse-notify.rules.yml` and
//! `etc/grafana/sse-notify.json` name only metrics a node really exports
//! (scraped from a running node, in both `/metrics` formats), the rules
//! have what Alertmanager routing and the alert text need, and
//! `promtool check rules` accepts them (`tests/setup.sh` installs Debian's
//! `prometheus` package for it).
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

const RULES: &str = "etc/prometheus/sse-notify.rules.yml";
const DASHBOARD: &str = "etc/grafana/sse-notify.json";

/// What Prometheus itself sends when it scrapes (OpenMetrics first).
const OPENMETRICS_ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The sample names of a `/metrics` text (labels and values cut off).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(String::from)
        .collect()
}

async fn scrape(admin: &str, accept: Option<&str>) -> String {
    let mut req = http().get(format!("{admin}/metrics"));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = req.send().await.expect("GET /metrics");
    assert_eq!(resp.status().as_u16(), 200, "GET /metrics");
    resp.text().await.expect("metrics body")
}

/// PromQL words that are not series names (aggregations included: in
/// `sum by (l) (...)` no `(` follows the word).
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// The metric names an expression selects: identifiers outside label
/// matchers `{...}`, ranges `[...]`, strings and grouping lists
/// (`by (...)`), that are neither functions (followed by `(`) nor
/// keywords. Grafana variables (`$job`, `$__rate_interval`) are skipped.
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    // Depth of `{` / `[`, and whether the next `(` opens a label list.
    let mut braces = 0usize;
    let mut label_list_next = false;
    let mut label_list = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            '{' | '[' => {
                braces += 1;
                i += 1;
            }
            '}' | ']' => {
                braces = braces.saturating_sub(1);
                i += 1;
            }
            '(' if label_list_next => {
                label_list = true;
                label_list_next = false;
                i += 1;
            }
            ')' if label_list => {
                label_list = false;
                i += 1;
            }
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() => {
                // Numbers and durations (5m, 1e3, 0.9).
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                // `group_left` may stand without a label list.
                label_list_next = false;
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                let lower = word.to_ascii_lowercase();
                if [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&lower.as_str())
                {
                    label_list_next = true;
                } else if braces == 0
                    && !label_list
                    && next != Some(&'(')
                    && !PROMQL_WORDS.contains(&lower.as_str())
                {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn the_expression_scanner_finds_series_names_only() {
    assert_eq!(
        metric_names(
            r#"sum by (route, status) (rate(sse_notify_http_requests_total{job="$job", route=~"a|b"}[$__rate_interval])) / on(instance) group_left up > 0.9 and x_total offset 5m"#
        ),
        ["sse_notify_http_requests_total", "up", "x_total"]
    );
}

/// Every expression of the rules file, with what names it.
fn rules_expressions(rules: &Value) -> Vec<(String, String)> {
    let groups = rules["groups"].as_array().expect("rules: groups is a list");
    assert!(!groups.is_empty(), "{RULES}: no groups");
    let mut out = Vec::new();
    for group in groups {
        let gname = group["name"].as_str().expect("every group has a name");
        let list = group["rules"].as_array().expect("every group has rules");
        assert!(!list.is_empty(), "{RULES}: group {gname} has no rules");
        for rule in list {
            let alert = rule["alert"]
                .as_str()
                .unwrap_or_else(|| panic!("{RULES}: a rule of {gname} without `alert`: {rule}"));
            let expr = rule["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{RULES}: {alert} has no `expr`"));
            let for_ = rule["for"]
                .as_str()
                .unwrap_or_else(|| panic!("{RULES}: {alert} has no `for`"));
            assert!(!for_.is_empty(), "{RULES}: {alert}: empty `for`");
            for (path, value) in [
                ("labels.severity", &rule["labels"]["severity"]),
                ("annotations.summary", &rule["annotations"]["summary"]),
            ] {
                let text = value
                    .as_str()
                    .unwrap_or_else(|| panic!("{RULES}: {alert} has no `{path}`"));
                assert!(!text.trim().is_empty(), "{RULES}: {alert}: empty `{path}`");
            }
            out.push((format!("{RULES} alert {alert}"), expr.to_string()));
        }
    }
    out
}

/// Every query of the dashboard (panels, rows' nested panels, template
/// variables), with what names it.
fn dashboard_expressions(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = Vec::new();
    for p in dash["panels"]
        .as_array()
        .expect("dashboard: panels is a list")
    {
        panels.push(p);
        panels.extend(p["panels"].as_array().into_iter().flatten());
    }
    let mut with_targets = 0;
    for p in panels {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap_or("(untitled)");
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{DASHBOARD}: panel {title:?} has no targets"));
        assert!(
            !targets.is_empty(),
            "{DASHBOARD}: panel {title:?} has no targets"
        );
        with_targets += 1;
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(
                !expr.trim().is_empty(),
                "{DASHBOARD}: panel {title:?} has a target without expr: {t}"
            );
            out.push((format!("{DASHBOARD} panel {title:?}"), expr.to_string()));
        }
    }
    assert!(
        with_targets >= 8,
        "{DASHBOARD}: only {with_targets} panels with queries"
    );
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .unwrap_or_default();
            // label_values(metric{...}, label): the metric is what must exist.
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.rsplit_once(','))
                .map(|(m, _)| m)
                .unwrap_or(q);
            out.push((
                format!("{DASHBOARD} variable {}", v["name"]),
                inner.to_string(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_dashboard_name_only_exported_metrics() {
    let node = TestNode::start(test_config("")).await;
    let admin = node.admin_base();
    // A labelled series exists only once a request was counted.
    let _ = scrape(&admin, None).await;
    let classic = scrape(&admin, None).await;
    let openmetrics = scrape(&admin, Some(OPENMETRICS_ACCEPT)).await;
    assert!(
        openmetrics.trim_end().ends_with("# EOF"),
        "Prometheus's Accept gets OpenMetrics:\n{openmetrics}"
    );
    // `up` is the series Prometheus writes for every target it scrapes.
    let mut known: BTreeSet<String> = ["up".to_string()].into();
    let classic_names = sample_names(&classic);
    let om_names = sample_names(&openmetrics);
    assert_eq!(
        classic_names, om_names,
        "both formats carry the same series names"
    );
    known.extend(classic_names);
    assert!(
        known.contains("sse_notify_max_streams") && known.contains("sse_notify_connects_total"),
        "scrape: {known:?}"
    );

    let rules: Value = serde_norway::from_str(&read(RULES))
        .unwrap_or_else(|e| panic!("{RULES} is not valid YAML: {e}"));
    let dash: Value = serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not valid JSON: {e}"));
    let rule_exprs = rules_expressions(&rules);
    let dash_exprs = dashboard_expressions(&dash);
    assert!(
        rule_exprs.len() >= 6,
        "{RULES}: only {} rules",
        rule_exprs.len()
    );

    let mut unknown = Vec::new();
    let mut used = BTreeSet::new();
    for (place, expr) in rule_exprs.iter().chain(&dash_exprs) {
        let names = metric_names(expr);
        if names.is_empty() {
            unknown.push(format!("{place}: no metric in {expr:?}"));
        }
        for name in names {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| known.contains(*b))
                .unwrap_or(&name);
            if known.contains(base) {
                used.insert(base.to_string());
            } else {
                unknown.push(format!("{place}: {name} (in {expr:?})"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "names that GET /metrics does not export:\n  {}\nexported: {known:?}",
        unknown.join("\n  ")
    );
    // The dashboard covers every family the node exports.
    let unused: Vec<&String> = known.iter().filter(|n| !used.contains(*n)).collect();
    assert!(
        unused.is_empty(),
        "exported but in neither file: {unused:?}"
    );
    println!(
        "{} rule and {} dashboard expressions, {} metric names, all exported",
        rule_exprs.len(),
        dash_exprs.len(),
        used.len()
    );
}

#[test]
fn promtool_accepts_the_rules() {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo_file(RULES))
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool (Debian package `prometheus`; `bash tests/setup.sh` installs it) cannot run: {e}")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check rules:\n{text}");
    assert!(text.contains("SUCCESS"), "promtool check rules:\n{text}");
}
