"""Strict HTTP/1.1 check of a captured stream response. Driven by
tests/public_http.rs.

    python3 tests/clients/h11_check.py CAPTURE

CAPTURE holds every byte the server sent on one connection (a GET of the
stream). They are fed to h11 as the client's connection (after the client
sent its GET), in pieces of varied sizes; any framing violation raises
(exit status 1, the error on stderr). Prints one JSON object: status,
headers, the body's chunks as text (a chunk is what arrived between two chunk
boundaries), and whether the message ended properly (EndOfMessage).
"""

import json
import sys

import h11


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1], "rb") as f:
        raw = f.read()
    conn = h11.Connection(our_role=h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/notifications/stream/",
                          headers=[("Host", "sse.test"), ("X-Remote-User", "strict")]))
    conn.send(h11.EndOfMessage())

    status = None
    headers = {}
    chunks = []
    current = b""
    ended = False
    sizes = [1, 7, 100, 3, 4096, 13]
    pos = 0
    i = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            if pos >= len(raw):
                conn.receive_data(b"")
            else:
                n = sizes[i % len(sizes)]
                i += 1
                conn.receive_data(raw[pos:pos + n])
                pos = min(pos + n, len(raw))
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode().lower(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.InformationalResponse):
            raise SystemExit(f"unexpected informational response {event}")
        elif isinstance(event, h11.Data):
            current += event.data
            if event.chunk_end:
                chunks.append(current.decode("utf-8"))
                current = b""
        elif isinstance(event, h11.EndOfMessage):
            ended = True
            if current:
                chunks.append(current.decode("utf-8"))
                current = b""
        elif isinstance(event, h11.ConnectionClosed):
            break
        else:
            raise SystemExit(f"unexpected event {event!r}")
        if ended and conn.their_state is h11.MUST_CLOSE:
            # Connection: close after the message: the rest must be nothing.
            left = len(raw) - pos + len(conn.trailing_data[0])
            if left:
                raise SystemExit(f"{left} bytes after the end of the message")
            break
    if current:
        raise SystemExit("the body ended inside a chunk")
    print(json.dumps({
        "status": status,
        "headers": headers,
        "chunks": chunks,
        "ended": ended,
        "bytes": len(raw),
    }, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
