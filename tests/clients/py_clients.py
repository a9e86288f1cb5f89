"""More SSE clients on sse-notify's stream. Driven by tests/clients.rs.

    python3 tests/clients/py_clients.py CLIENT STREAM_URL USER

CLIENT is one of:
  sseclient        sseclient-py over a streaming `requests` response
  requests-sse     requests-sse's EventSource (reconnects by itself)
  aiohttp          aiohttp-sse-client2's EventSource (reconnects by itself)
  curl-1.0, curl-1.1
                   curl -N -i with --http1.0 / --http1.1; its output parsed
                   here the WHATWG way (curl is the client, this is the
                   reader); the "open" line tells the transfer coding

Identity: ``X-Remote-User: USER``. Prints one JSON line per event the client
yields: {"type": event, "data": data, "id": id, "ms": milliseconds since the
stream opened (its response head received)}, plus
"open" and "closed" lines per connection and "fatal" on anything wrong
(a status other than 200, curl exiting with an error).

Clients without reconnection of their own are reconnected here the way a
browser's EventSource does: after the last `retry` the server sent, with
``Last-Event-ID`` set to the last id seen. Runs until stdin closes.
"""

import json
import os
import subprocess
import sys
import threading
import time


def out(obj):
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def fatal(message):
    out({"type": "fatal", "message": message})
    for p in CHILDREN:
        p.kill()
    os._exit(3)


# The running curl, stopped with us (else its stream would outlive the test).
CHILDREN = []


def watch_stdin():
    sys.stdin.read()  # returns at EOF: the driver wants us gone
    for p in CHILDREN:
        p.kill()
    os._exit(0)


def ms_since(t0):
    return round((time.monotonic() - t0) * 1000.0, 1)


def run_sseclient(url, user):
    import requests
    import sseclient

    last_id = ""
    retry_ms = 3000
    session = requests.Session()
    while True:
        headers = {"X-Remote-User": user, "Accept": "text/event-stream"}
        if last_id:
            headers["Last-Event-ID"] = last_id
        try:
            resp = session.get(url, stream=True, headers=headers, timeout=(10, None))
            t0 = time.monotonic()
            out({"type": "open", "status": resp.status_code,
                 "content_type": resp.headers.get("content-type"),
                 "last_event_id_sent": last_id})
            if resp.status_code != 200:
                fatal(f"status {resp.status_code}")
            for ev in sseclient.SSEClient(resp).events():
                if ev.id:
                    last_id = ev.id
                if ev.retry:
                    retry_ms = int(ev.retry)
                out({"type": ev.event, "data": ev.data, "id": ev.id, "ms": ms_since(t0)})
            out({"type": "closed"})
        except requests.RequestException as e:
            out({"type": "error", "message": repr(e)})
        time.sleep(retry_ms / 1000.0)


def run_requests_sse(url, user):
    from datetime import timedelta

    from requests_sse import EventSource

    state = {"t0": time.monotonic()}

    def on_open():
        state["t0"] = time.monotonic()
        out({"type": "open", "status": 200})

    with EventSource(url, headers={"X-Remote-User": user}, timeout=None,
                     reconnection_time=timedelta(milliseconds=500),
                     max_connect_retry=20, on_open=on_open) as source:
        for ev in source:
            out({"type": ev.type, "data": ev.data, "id": ev.last_event_id,
                 "ms": ms_since(state["t0"])})
    fatal("requests-sse's EventSource ended")


def run_aiohttp(url, user):
    import asyncio
    from datetime import timedelta

    import aiohttp
    from aiohttp_sse_client2 import client as sse_client

    state = {"t0": time.monotonic()}

    def on_open():
        state["t0"] = time.monotonic()
        out({"type": "open", "status": 200})

    async def main():
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with sse_client.EventSource(
                url, session=session, headers={"X-Remote-User": user},
                reconnection_time=timedelta(milliseconds=500), max_connect_retry=20,
                on_open=on_open,
            ) as source:
                async for ev in source:
                    out({"type": ev.type, "data": ev.data, "id": ev.last_event_id,
                         "ms": ms_since(state["t0"])})
        fatal("aiohttp-sse-client2's EventSource ended")

    asyncio.run(main())


def run_curl(url, user, version):
    last_id = ""
    retry_ms = 3000
    while True:
        # -i: the response head on stdout too, so that the stream's opening
        # is when its blank line arrives.
        args = ["curl", "-sS", "-N", "-i", "--fail", version, "-H", f"X-Remote-User: {user}"]
        if last_id:
            args += ["-H", f"Last-Event-ID: {last_id}"]
        proc = subprocess.Popen(args + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        CHILDREN[:] = [proc]
        head = []
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("latin-1").rstrip("\r\n")
            if line == "":
                break
            head.append(line)
        t0 = time.monotonic()
        status = head[0].split(" ")[1] if head and " " in head[0] else "?"
        fields = {h.split(":", 1)[0].lower(): h.split(":", 1)[1].strip() for h in head[1:] if ":" in h}
        out({"type": "open", "status": int(status) if status.isdigit() else status,
             "status_line": head[0] if head else "",
             "transfer_encoding": fields.get("transfer-encoding"),
             "last_event_id_sent": last_id})
        if status != "200":
            fatal(f"curl {version}: response head {head!r}")
        # HTTP/1.1: chunked; HTTP/1.0: delimited by the close.
        wanted = "chunked" if version == "--http1.1" else None
        if fields.get("transfer-encoding") != wanted:
            fatal(f"curl {version}: transfer-encoding {fields.get('transfer-encoding')!r}, "
                  f"expected {wanted!r}: {head!r}")
        # WHATWG event stream interpretation (UTF-8, LF line ends here).
        event, data, have_data = "", [], False
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8").rstrip("\n").rstrip("\r")
            if line == "":
                if have_data:
                    out({"type": event or "message", "data": "\n".join(data),
                         "id": last_id, "ms": ms_since(t0)})
                event, data, have_data = "", [], False
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
                have_data = True
            elif field == "id":
                last_id = value
            elif field == "retry" and value.isdigit():
                retry_ms = int(value)
        code = proc.wait()
        err = proc.stderr.read().decode("utf-8", "replace")
        if code != 0:
            fatal(f"curl {version} exited {code}: {err}")
        out({"type": "closed"})
        time.sleep(retry_ms / 1000.0)


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    client, url, user = sys.argv[1:]
    threading.Thread(target=watch_stdin, daemon=True).start()
    timer = threading.Timer(120, lambda: fatal("py_clients.py: 120 s limit reached"))
    timer.daemon = True
    timer.start()
    runners = {
        "sseclient": lambda: run_sseclient(url, user),
        "requests-sse": lambda: run_requests_sse(url, user),
        "aiohttp": lambda: run_aiohttp(url, user),
        "curl-1.0": lambda: run_curl(url, user, "--http1.0"),
        "curl-1.1": lambda: run_curl(url, user, "--http1.1"),
    }
    if client not in runners:
        print(f"unknown client {client!r}; one of {', '.join(runners)}", file=sys.stderr)
        return 2
    runners[client]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
