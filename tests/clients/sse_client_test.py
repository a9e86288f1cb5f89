"""Python's httpx + httpx-sse on sse-notify's stream. Driven by tests/clients.rs.

    python3 tests/clients/sse_client_test.py STREAM_URL USER

Identity: ``X-Remote-User: USER`` (header auth from loopback). Prints one
JSON line per ServerSentEvent that httpx-sse yields:
{"type": event, "data": data, "id": id, "retry": retry}, plus "open" (status,
content type) and "closed" lines per connection.

httpx-sse does not reconnect by itself; this script does what a browser's
EventSource does: when the stream ends, it waits the last ``retry`` the server
sent and reconnects with ``Last-Event-ID`` set to the last event id it got.
Runs until stdin closes.
"""

import json
import os
import sys
import threading
import time

import httpx
from httpx_sse import connect_sse


def out(obj):
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def watch_stdin():
    sys.stdin.read()  # returns at EOF: the driver wants us gone
    os._exit(0)


def limit():
    out({"type": "fatal", "message": "sse_client_test.py: 120 s limit reached"})
    os._exit(3)


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    url, user = sys.argv[1], sys.argv[2]
    threading.Thread(target=watch_stdin, daemon=True).start()
    timer = threading.Timer(120, limit)
    timer.daemon = True
    timer.start()

    last_id = ""
    retry_ms = 3000
    with httpx.Client(timeout=httpx.Timeout(10.0, read=None)) as client:
        while True:
            headers = {"X-Remote-User": user}
            if last_id:
                headers["Last-Event-ID"] = last_id
            try:
                with connect_sse(client, "GET", url, headers=headers) as source:
                    resp = source.response
                    out({
                        "type": "open",
                        "status": resp.status_code,
                        "content_type": resp.headers.get("content-type"),
                        "last_event_id_sent": last_id,
                    })
                    if resp.status_code != 200:
                        out({"type": "fatal", "message": f"status {resp.status_code}"})
                        return 1
                    for sse in source.iter_sse():
                        if sse.id:
                            last_id = sse.id
                        if sse.retry is not None:
                            retry_ms = sse.retry
                        out({"type": sse.event, "data": sse.data, "id": sse.id, "retry": sse.retry})
                out({"type": "closed"})
            except httpx.HTTPError as e:
                out({"type": "error", "message": repr(e)})
            time.sleep(retry_ms / 1000.0)


if __name__ == "__main__":
    sys.exit(main())
