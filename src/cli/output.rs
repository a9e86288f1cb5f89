//! What the command line prints: words for people (counts in the right
//! number, a table of connections) and `--json` for scripts (keys in name
//! order, one object a line).

use std::io::Write;

use serde::Serialize;

use super::CliError;
use crate::http::api::model::{Sent, UserConnections};
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
    let target = match &sent.to {
        Some(user) => format!("user {user}"),
        None => "everyone".to_string(),
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

/// Prints the records as a table; with `header_too`, the column names
/// first (a listing printed page by page names them once).
pub(super) fn table<'a>(records: impl Iterator<Item = &'a ConnectionRecord>, header_too: bool) {
    let now = unix_now();
    let rows: Vec<[String; 5]> = records
        .map(|r| {
            [
                r.username.clone(),
                r.connection_id.clone(),
                format!("{:.0}s ago", (now - r.connection_time).max(0.0)),
                format!("{:.0}s ago", (now - r.last_heartbeat).max(0.0)),
                r.node_id.clone(),
            ]
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let header = [
        "USER",
        "CONNECTION_ID",
        "CONNECTED",
        "LAST_HEARTBEAT",
        "NODE",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    if header_too {
        line(header);
    }
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
}

/// Standard output, locked, for a listing written piece by piece.
pub(super) fn stdout_pieces() -> impl Write {
    std::io::stdout().lock()
}

pub(super) fn write_error(e: std::io::Error) -> CliError {
    CliError::Runtime(format!("stdout: {e}"))
}
