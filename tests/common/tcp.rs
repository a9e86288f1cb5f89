//! Raw TCP clients that behave badly (a tab that never reads), and the
//! kernel's view of a connection, as `ss` shows it to an operator.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A stream opened as `user` (header auth) by a client with a 4 KiB
/// receive buffer that reads nothing after `connection_established`; the
/// socket and its connection id.
pub async fn non_reading_stream(public: SocketAddr, user: &str) -> (TcpStream, String) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(public).await.unwrap();
    let req = format!(
        "GET /notifications/stream/ HTTP/1.1\r\nHost: {public}\r\nAccept: text/event-stream\r\nX-Remote-User: {user}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let needle = "\"connection_id\":\"";
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(pos) = text.find(needle) {
            let rest = &text[pos + needle.len()..];
            if let Some(end) = rest.find('"') {
                assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                return (s, rest[..end].to_string());
            }
        }
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut chunk))
            .await
            .expect("raw stream: connection_established within 5s")
            .unwrap();
        assert!(n > 0, "raw stream ended early: {text}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The state of the TCP connection whose local end is `local` and remote
/// end `remote` (`ESTABLISHED`, `FIN_WAIT1`, ...), from the kernel's
/// tables as `ss -tn` reads them; `None` when there is no such socket.
pub fn tcp_state(local: SocketAddr, remote: SocketAddr) -> Option<&'static str> {
    let want = (hex_addr(local), hex_addr(remote));
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            text.lines().skip(1).find_map(|line| {
                let mut cols = line.split_whitespace().skip(1);
                let (l, r, st) = (cols.next()?, cols.next()?, cols.next()?);
                (l == want.0 && r == want.1).then(|| state_name(st))
            })
        })
}

/// How `/proc/net/tcp` writes an IPv4 address: the 32-bit word in host
/// order, in hex, then the port.
fn hex_addr(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(a.ip().octets()),
            a.port()
        ),
        SocketAddr::V6(a) => panic!("tcp_state reads IPv4 only, not {a}"),
    }
}

fn state_name(hex: &str) -> &'static str {
    match hex {
        "01" => "ESTABLISHED",
        "02" => "SYN_SENT",
        "03" => "SYN_RECV",
        "04" => "FIN_WAIT1",
        "05" => "FIN_WAIT2",
        "06" => "TIME_WAIT",
        "07" => "CLOSE",
        "08" => "CLOSE_WAIT",
        "09" => "LAST_ACK",
        "0A" => "LISTEN",
        "0B" => "CLOSING",
        _ => "UNKNOWN",
    }
}

/// True when the server ends `socket` (EOF or reset) within `within`,
/// reading and dropping what it still delivers.
pub async fn tcp_ends_within(socket: &mut TcpStream, within: Duration) -> bool {
    let mut chunk = vec![0u8; 256 * 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, socket.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}
