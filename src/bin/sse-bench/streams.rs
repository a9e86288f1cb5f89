//! The streams: opening one on the public listener (a raw HTTP/1 client, one
//! socket each, optional source addresses), reading it to its end, and the
//! slot task that reopens it under churn.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

use crate::clock::now_ns;
use crate::sse::{Item, Mark, Sse};
use crate::state::{chain, Ctx, Instance};

type Conn = http1::Connection<TokioIo<TcpStream>, Empty<Bytes>>;

/// A stream that answered 200: its connection is driven beside the body.
struct Opened {
    /// Held while the stream lives: hyper winds a connection down once no
    /// sender is left.
    _sender: http1::SendRequest<Empty<Bytes>>,
    conn: Pin<Box<Conn>>,
    resp: hyper::Response<hyper::body::Incoming>,
}

/// Which failure counter a failed open goes to.
enum Fail {
    Connect,
    Status,
    Timeout,
    Other,
}

enum Attempt {
    Open(Opened),
    /// 503 with Retry-After (connect rate cap): try again after it.
    Retry(Duration),
}

/// One try at the stream of slot `idx` as `uname`: open, a 503 to retry
/// after, or the failure and its message.
async fn open(ctx: &Ctx, idx: usize, uname: &str) -> Result<Attempt, (Fail, String)> {
    let addr = ctx.target.addr;
    let sock = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| (Fail::Connect, format!("socket: {e}")))?;
    if let IpAddr::V4(ip) = addr.ip() {
        if ctx.src_ips > 0 && ip.is_loopback() {
            use std::os::fd::AsRawFd;
            let one: libc::c_int = 1;
            // SAFETY: setsockopt on a socket we own with a valid int option.
            // The kernel picks the port at connect(), per 4-tuple.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const libc::c_int as *const libc::c_void,
                    size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            let src = Ipv4Addr::new(127, 0, 0, 2 + (idx % ctx.src_ips as usize) as u8);
            sock.bind(SocketAddr::new(IpAddr::V4(src), 0))
                .map_err(|e| (Fail::Connect, format!("bind {src}: {e}")))?;
        }
    }
    let stream = sock
        .connect(addr)
        .await
        .map_err(|e| (Fail::Connect, format!("connect {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| (Fail::Other, format!("handshake: {e}")))?;
    let mut conn = Box::pin(conn);
    let topics = &ctx.slots[idx].topics;
    let path = crate::topics::with_query(&ctx.target.path.replace("{user}", uname), topics);
    let mut req = hyper::Request::get(path)
        .header("host", &ctx.target.host)
        .header("accept", "text/event-stream")
        .header("cache-control", "no-cache");
    if !ctx.target.user_header.is_empty() {
        req = req.header(ctx.target.user_header.as_str(), uname);
    }
    if !ctx.target.topics_header.is_empty() && !topics.is_empty() {
        req = req.header(ctx.target.topics_header.as_str(), topics.join(","));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| (Fail::Other, format!("request: {e}")))?;
    let resp = tokio::select! {
        r = sender.send_request(req) => r.map_err(|e| (Fail::Other, format!("request: {e}")))?,
        r = &mut conn => return Err((Fail::Other, format!("connection closed before the response: {r:?}"))),
    };
    match resp.status().as_u16() {
        200 => Ok(Attempt::Open(Opened {
            _sender: sender,
            conn,
            resp,
        })),
        503 if resp.headers().contains_key("retry-after") => {
            let secs = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(1.0);
            Ok(Attempt::Retry(Duration::from_secs_f64(
                secs.clamp(0.05, 30.0),
            )))
        }
        s => {
            // the body is a JSON envelope naming the reason
            let body = tokio::time::timeout(Duration::from_secs(1), async {
                tokio::select! {
                    b = resp.into_body().collect() => b.ok().map(|b| b.to_bytes()),
                    _ = &mut conn => None,
                }
            })
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
            let body = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            Err((Fail::Status, format!("status {s}: {body}")))
        }
    }
}

/// How a stream ended: what its slot does next.
enum Outcome {
    /// Never got connection_established.
    Failed,
    /// Closed by the churn controller.
    Churned,
    /// Ended by the server or the network.
    Ended,
    /// The run is over.
    Stopped,
}

fn fail(ctx: &Ctx, first: bool, kind: Fail, msg: String) -> Outcome {
    let s = &ctx.stats;
    match kind {
        Fail::Connect => &s.fail_connect,
        Fail::Status => &s.fail_status,
        Fail::Timeout => &s.fail_timeout,
        Fail::Other => &s.fail_other,
    }
    .fetch_add(1, Relaxed);
    s.note(msg);
    if first {
        s.initial_failed.fetch_add(1, Relaxed);
        s.initial_settled.fetch_add(1, Relaxed);
    }
    Outcome::Failed
}

/// One stream: connect, wait for connection_established, read until the
/// run stops it, the churn closes it, or the server ends it.
async fn instance(ctx: &Ctx, idx: usize, first: bool, reconnect: bool) -> Outcome {
    let user = (idx % ctx.users) as u32;
    let uname = ctx.uname(user);
    let slot = &ctx.slots[idx];
    let permit = tokio::select! {
        p = ctx.connect_sem.clone().acquire_owned() => p.expect("semaphore"),
        _ = ctx.stop.cancelled() => return Outcome::Stopped,
    };
    let s = &ctx.stats;
    s.attempts.fetch_add(1, Relaxed);
    let attempt_ns = now_ns();
    s.connecting.fetch_add(1, Relaxed);
    let connecting = scopeguard(&s.connecting);
    let deadline = tokio::time::Instant::now() + ctx.connect_timeout;
    let opened = loop {
        let r = tokio::select! {
            r = tokio::time::timeout_at(deadline, open(ctx, idx, &uname)) => r,
            _ = ctx.stop.cancelled() => return Outcome::Stopped,
        };
        match r {
            Err(_) => {
                return fail(
                    ctx,
                    first,
                    Fail::Timeout,
                    "timeout opening the stream".into(),
                )
            }
            Ok(Err((kind, msg))) => return fail(ctx, first, kind, msg),
            Ok(Ok(Attempt::Open(o))) => break o,
            Ok(Ok(Attempt::Retry(after))) => {
                s.retried_503.fetch_add(1, Relaxed);
                let at = tokio::time::Instant::now() + after;
                if at >= deadline {
                    return fail(
                        ctx,
                        first,
                        Fail::Status,
                        "503 past the connect timeout".into(),
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = ctx.stop.cancelled() => return Outcome::Stopped,
                }
            }
        }
    };
    let Opened {
        _sender,
        mut conn,
        resp,
    } = opened;
    let mut body = resp.into_body();
    let mut parser = Sse::default();
    let mut items = Vec::new();
    let mut permit = Some(permit);
    let mut connecting = Some(connecting);
    let mut conn_done = false;
    let mut ready = false;
    let mut rec = Instance {
        user,
        topics: slot.topics.clone(),
        est_ns: 0,
        end_ns: 0,
        recv: Vec::new(),
    };
    let ready_timeout = tokio::time::sleep_until(deadline);
    tokio::pin!(ready_timeout);
    let outcome = loop {
        tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => break Outcome::Stopped,
            _ = slot.reconnect.notified(), if ready => break Outcome::Churned,
            _ = &mut ready_timeout, if !ready => {
                return fail(ctx, first, Fail::Timeout, "no connection_established in time".into());
            }
            r = &mut conn, if !conn_done => {
                conn_done = true;
                if let Err(e) = r {
                    s.note(format!("connection: {}", chain(&e)));
                }
            }
            f = body.frame() => match f {
                Some(Ok(fr)) => {
                    let Ok(data) = fr.into_data() else { continue };
                    parser.feed(&data, &mut items);
                    if items.is_empty() {
                        continue;
                    }
                    let now = now_ns();
                    for it in items.drain(..) {
                        let (name, data) = match it {
                            Item::Comment => {
                                s.heartbeats.fetch_add(1, Relaxed);
                                continue;
                            }
                            Item::Event { name, data } => (name, data),
                        };
                        match name.as_str() {
                            "bench" => match serde_json::from_str::<Mark>(&data) {
                                Ok(m) => {
                                    let lat_us = now.saturating_sub(m.ts_ns) / 1000;
                                    rec.recv.push((m.seq as u32, lat_us.min(u32::MAX as u64) as u32));
                                    s.received.fetch_add(1, Relaxed);
                                    s.last_recv_ns.fetch_max(now, Relaxed);
                                }
                                Err(_) => {
                                    s.bad_data.fetch_add(1, Relaxed);
                                }
                            },
                            "connection_established" if !ready => {
                                ready = true;
                                rec.est_ns = now;
                                s.established.fetch_add(1, Relaxed);
                                s.live.fetch_add(1, Relaxed);
                                s.last_est_ns.fetch_max(now, Relaxed);
                                ctx.user_live[user as usize].fetch_add(1, Relaxed);
                                slot.live.store(true, Relaxed);
                                let took_us = (now - attempt_ns) / 1000;
                                if first {
                                    s.initial_settled.fetch_add(1, Relaxed);
                                    s.connect_us.lock().unwrap().push(took_us);
                                } else {
                                    s.reconnect_us.lock().unwrap().push(took_us);
                                }
                                if reconnect {
                                    s.reconnects_done.fetch_add(1, Relaxed);
                                }
                                permit.take();
                                connecting.take();
                            }
                            "evicted" => {
                                s.evicted.fetch_add(1, Relaxed);
                            }
                            _ => {
                                s.other_events.fetch_add(1, Relaxed);
                            }
                        }
                    }
                }
                Some(Err(e)) => {
                    if ready {
                        s.note(format!("stream body: {}", chain(&e)));
                    }
                    break Outcome::Ended;
                }
                None => break Outcome::Ended,
            },
        }
    };
    if !ready {
        return match outcome {
            Outcome::Stopped => Outcome::Stopped,
            _ => fail(
                ctx,
                first,
                Fail::Other,
                "stream ended before connection_established".into(),
            ),
        };
    }
    slot.live.store(false, Relaxed);
    s.live.fetch_sub(1, Relaxed);
    ctx.user_live[user as usize].fetch_sub(1, Relaxed);
    rec.end_ns = match outcome {
        Outcome::Stopped => u64::MAX,
        _ => now_ns(),
    };
    if let Outcome::Ended = outcome {
        s.ended.fetch_add(1, Relaxed);
        s.note("a live stream was ended by the server or the network".into());
    }
    ctx.instances.lock().unwrap().push(rec);
    outcome
}

/// Decrements a counter when dropped.
struct Guard<'a>(&'a AtomicU64);
impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
fn scopeguard(c: &AtomicU64) -> Guard<'_> {
    Guard(c)
}

/// A stream slot: its first stream, then (churn) the ones that replace it.
pub(crate) async fn slot_task(ctx: Arc<Ctx>, idx: usize) {
    let mut first = true;
    let mut reconnect = false;
    loop {
        let out = instance(&ctx, idx, first, reconnect).await;
        first = false;
        match out {
            Outcome::Stopped => return,
            Outcome::Churned => reconnect = true,
            Outcome::Failed | Outcome::Ended => {
                if !ctx.reopen {
                    return;
                }
                reconnect = true;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = ctx.stop.cancelled() => return,
                }
            }
        }
    }
}
