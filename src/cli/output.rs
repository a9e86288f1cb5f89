//! What the command line prints: words for people (counts in the right
//! number, a table of connections) and `--json` for scripts (keys in name
//! order, one object a line).

use std::io::Write;

use serde::Serialize;

use super::CliError;
use crate::http::api::model::{Sent, Topic, TopicFollowers, UserConnections};
use crate::store::{unix_now, ConnectionRecord};

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// One JSON line. Through a JSON value, whose keys print in name order:
/// the order every `--json` output has had.
pub(super) fn json<T: Serialize>(value: &T) {
    match serde_json::to_value(value) {
        Ok(v) => println!("{v}"),
        Err(e) => eprintln!("{e}"),
    }
}

/// What a cleanup or clear removed.
pub(super) fn removed(connections: usize, users: usize) {
    println!(
        "removed {connections} connection{} of {users} user{}",
        plural(connections),
        plural(users)
    );
}

pub(super) fn totals(users: usize, total: usize) {
    println!(
        "{total} connection{} of {users} user{}",
        plural(total),
        plural(users)
    );
}

/// `connections USER` in words: the count, then the table.
pub(super) fn user(list: &UserConnections, records: &[ConnectionRecord]) {
    let n = list.connection_count;
    println!("{}: {n} connection{}", list.username, plural(n));
    table(records.iter(), true);
}

pub(super) fn sent(sent: &Sent) {
    let target = match (&sent.topic, &sent.to) {
        (Some(topic), _) => format!("topic {topic}"),
        (None, Some(user)) => format!("user {user}"),
        (None, None) => "everyone".to_string(),
    };
    println!(
        "sent message {} to {target}: {} connection{}",
        sent.message_id,
        sent.connections,
        plural(sent.connections)
    );
}

pub(super) fn sent_batch(results: &[Sent]) {
    let conns: usize = results.iter().map(|r| r.connections).sum();
    println!(
        "sent {} message{} to {conns} connection{}",
        results.len(),
        plural(results.len()),
        plural(conns)
    );
}

/// `topics` in words: how many topics streams follow (the table follows).
pub(super) fn topic_total(topics: usize) {
    println!("{topics} topic{} followed", plural(topics));
}

/// A page of `topics` as a table; with `header_too`, the column names
/// first.
pub(super) fn topics_table(topics: &[Topic], header_too: bool) {
    let rows: Vec<[String; 3]> = topics
        .iter()
        .map(|t| {
            [
                t.topic.clone(),
                t.connection_count.to_string(),
                t.user_count.to_string(),
            ]
        })
        .collect();
    columns(["TOPIC", "CONNECTIONS", "USERS"], &rows, header_too);
}

/// `topics T` in words: the counts, then its connections. The API's
/// records do not name their node, so neither does this table.
pub(super) fn topic(presence: &TopicFollowers) {
    let (n, users) = (presence.connection_count, presence.user_count);
    println!(
        "{}: {n} connection{} of {users} user{}",
        presence.topic,
        plural(n),
        plural(users)
    );
    let now = unix_now();
    let rows: Vec<[String; 4]> = presence
        .connections
        .iter()
        .map(|c| {
            [
                c.username.clone(),
                c.connection_id.clone(),
                ago(now, c.connection_time),
                ago(now, c.last_heartbeat),
            ]
        })
        .collect();
    columns(
        ["USER", "CONNECTION_ID", "CONNECTED", "LAST_HEARTBEAT"],
        &rows,
        true,
    );
}

fn ago(now: f64, then: f64) -> String {
    format!("{:.0}s ago", (now - then).max(0.0))
}

/// Prints the records as a table; with `header_too`, the column names
/// first (a listing printed page by page names them once).
pub(super) fn table<'a>(records: impl Iterator<Item = &'a ConnectionRecord>, header_too: bool) {
    let now = unix_now();
    let rows: Vec<[String; 5]> = records
        .map(|r| {
            [
                r.username.clone(),
                r.connection_id.clone(),
                ago(now, r.connection_time),
                ago(now, r.last_heartbeat),
                r.node_id.clone(),
            ]
        })
        .collect();
    let header = [
        "USER",
        "CONNECTION_ID",
        "CONNECTED",
        "LAST_HEARTBEAT",
        "NODE",
    ];
    columns(header, &rows, header_too);
}

/// Rows under `header` (printed with `header_too`), each column as wide
/// as its widest cell; nothing at all without rows.
fn columns<const N: usize>(header: [&str; N], rows: &[[String; N]], header_too: bool) {
    if rows.is_empty() {
        return;
    }
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells.zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    if header_too {
        line(&mut header.iter().copied());
    }
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// Standard output, locked, for a listing written piece by piece.
pub(super) fn stdout_pieces() -> impl Write {
    std::io::stdout().lock()
}

pub(super) fn write_error(e: std::io::Error) -> CliError {
    CliError::Runtime(format!("stdout: {e}"))
}
