//! The README is what a newcomer follows from a clone: every file it names
//! must be in the repository, every `#anchor` it links must be one of its
//! headings, every README section the code docs cite must exist, and it
//! must point at nothing outside the repository.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Directories whose files the README names by path.
const PREFIXES: [&str; 6] = ["etc/", "src/", "tests/", "systemd/", ".ci/", "clients/"];

/// Fewer paths than this means the extraction broke, not that the README
/// names so few: it names dozens.
const MIN_PATHS: usize = 20;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    let path = root().join("README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The README split into prose lines and the lines of fenced code blocks.
fn split_fences(text: &str) -> (Vec<&str>, Vec<&str>) {
    let (mut prose, mut code) = (Vec::new(), Vec::new());
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        } else if in_fence {
            code.push(line);
        } else {
            prose.push(line);
        }
    }
    (prose, code)
}

/// Targets of `[text](target)` links.
fn link_targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        match after.find(')') {
            Some(j) => {
                out.push(after[..j].trim().to_string());
                rest = &after[j + 1..];
            }
            None => break,
        }
    }
    out
}

/// Contents of the `inline code` spans of a prose line.
fn code_spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

/// A word that names a repository file or directory, cleaned of the quotes
/// and shell around it; None for anything else, and for patterns such as
/// `src/{x}.rs` that name no one file.
fn repo_path(word: &str) -> Option<String> {
    let word = word
        .trim_matches(|c: char| "\"'(),;:".contains(c))
        .trim_start_matches("$PWD/")
        .trim_start_matches("./");
    let named = PREFIXES.iter().any(|p| word.starts_with(p));
    let pattern = word.contains(['{', '}', '*', '<', '>', '$']) || word.contains("...");
    (named && !pattern).then(|| word.to_string())
}

/// Every repository path the README names: link targets, words of inline
/// code, and words of code blocks (the install and bench commands).
fn named_paths(text: &str) -> BTreeSet<String> {
    let (prose, code) = split_fences(text);
    let mut paths = BTreeSet::new();
    for line in &prose {
        for target in link_targets(line) {
            let local = !target.starts_with('#') && !target.contains("://");
            if local && !target.starts_with("mailto:") {
                let file = target.split('#').next().unwrap_or_default();
                paths.insert(file.trim_start_matches("./").to_string());
            }
        }
        for span in code_spans(line) {
            paths.extend(span.split_whitespace().filter_map(repo_path));
        }
    }
    for line in &code {
        paths.extend(line.split_whitespace().filter_map(repo_path));
    }
    paths
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The text of every heading outside code blocks.
fn headings(text: &str) -> Vec<String> {
    let (prose, _) = split_fences(text);
    prose
        .iter()
        .filter(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim().to_string())
        .collect()
}

#[test]
fn every_path_the_readme_names_exists() {
    let text = readme();
    let paths = named_paths(&text);
    assert!(
        paths.len() >= MIN_PATHS,
        "found only {} repository paths in README.md ({paths:?}); expected at least {MIN_PATHS}: is the extraction broken?",
        paths.len()
    );
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| !root().join(p.as_str()).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "README.md names {} path(s) not in the repository:\n  {}",
        missing.len(),
        missing
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

#[test]
fn every_anchor_the_readme_links_is_a_heading() {
    let text = readme();
    let slugs: BTreeSet<String> = headings(&text).iter().map(|h| slug(h)).collect();
    let (prose, _) = split_fences(&text);
    let anchors: BTreeSet<String> = prose
        .iter()
        .flat_map(|l| link_targets(l))
        .filter_map(|t| t.strip_prefix('#').map(str::to_string))
        .collect();
    assert!(
        anchors.len() >= 5,
        "found only {} #anchor links in README.md: is the extraction broken?",
        anchors.len()
    );
    let broken: Vec<&String> = anchors.iter().filter(|a| !slugs.contains(*a)).collect();
    assert!(
        broken.is_empty(),
        "README.md links anchors that no heading makes: {broken:?}"
    );
}

#[test]
fn the_readme_names_nothing_outside_the_repository() {
    let text = readme();
    let outside: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            l.contains("../")
                || l.contains("shared/")
                || l.split(|c: char| !c.is_alphanumeric())
                    .any(|w| w == "SPEC" || w.starts_with("SPEC."))
        })
        .map(|(n, l)| (n + 1, l))
        .collect();
    assert!(
        outside.is_empty(),
        "README.md points outside the repository (../, shared/ or SPEC) at:\n{}",
        outside
            .iter()
            .map(|(n, l)| format!("  line {n}: {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Every `README "Section"` that a doc comment under src/ cites.
fn cited_sections(dir: &Path, out: &mut BTreeSet<(String, String)>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            cited_sections(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            for (i, cite) in text.match_indices("README \"") {
                let after = &text[i + cite.len()..];
                if let Some(end) = after.find('"') {
                    let shown = path.strip_prefix(root()).unwrap_or(&path);
                    out.insert((after[..end].to_string(), shown.display().to_string()));
                }
            }
        }
    }
}

#[test]
fn every_readme_section_the_code_cites_exists() {
    let text = readme();
    let headings = headings(&text);
    let mut cited = BTreeSet::new();
    cited_sections(&root().join("src"), &mut cited);
    assert!(
        cited.len() >= 5,
        "found only {} README citations under src/: is the extraction broken?",
        cited.len()
    );
    let missing: Vec<String> = cited
        .iter()
        .filter(|(section, _)| !headings.iter().any(|h| h == section))
        .map(|(section, file)| format!("{file}: README \"{section}\""))
        .collect();
    assert!(
        missing.is_empty(),
        "code docs cite README sections that are no heading of README.md:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn the_extraction_finds_what_it_should() {
    let sample = "See [the config](etc/sse-notify.toml#top), [Auth](#auth) and \
                  `tests/setup.sh`, not `src/{x}.rs` nor [site](https://example.com).\n\
                  ```sh\ninstall -m 0644 systemd/sse-notify.service /etc/x\n\
                  nginx -c \"$PWD/etc/bench/nchan.conf\"\n```\n";
    let paths: Vec<String> = named_paths(sample).into_iter().collect();
    assert_eq!(
        paths,
        [
            "etc/bench/nchan.conf",
            "etc/sse-notify.toml",
            "systemd/sse-notify.service",
            "tests/setup.sh",
        ]
    );
    assert_eq!(
        slug("Missed messages: history and `Last-Event-ID`"),
        "missed-messages-history-and-last-event-id"
    );
    assert_eq!(slug("Reload (SIGHUP)"), "reload-sighup");
}
