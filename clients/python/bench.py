"""Latency and throughput of ``send_notification`` against a real sse-notify:
the package's kept-alive client (blocking and async) beside what it
replaces (urllib, a new connection per call, as the old services.py did)
and the standard library's kept-alive ``http.client``.

    cargo build --release
    python3 clients/python/bench.py --binary target/release/sse-notify

starts the daemon twice (embedded engine, its own free ports): its admin
listener on TCP, then on a Unix socket (``server.admin_listen =
"unix:..."``); or
measures one already running with ``--url http://127.0.0.1:8091``. Each
call sends to a user with no open stream: what is measured is the client and
the admin API's round trip, not delivery. Prints a Markdown table: p50 and
p99 per call, and calls per second, from 1 thread and from 8.
"""

import argparse
import asyncio
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

import sse_notify  # noqa: E402
from sse_notify import _transport  # noqa: E402

BODY = {"to": "bench-user", "data": {"text": "hello"}, "event": "message", "all_connections": True}


def urllib_send(url):
    """The old services.py's request path: urllib, no proxy, a new
    connection per call."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def send():
        req = urllib.request.Request(
            url + "/notifications/send/",
            data=json.dumps(BODY).encode("utf-8"),
            headers={"Accept": "application/json", "Content-Type": "application/json"},
            method="POST",
        )
        with opener.open(req, timeout=5) as resp:
            envelope = json.loads(resp.read().decode("utf-8"))
        assert envelope["code"] == 200, envelope
        return envelope["data"]

    return send


def http_client_send(url):
    """The standard library's kept-alive http.client, one connection per
    thread."""
    host = url.split("://", 1)[1]
    local = threading.local()

    def send():
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(host, timeout=5)
        conn.request(
            "POST",
            "/notifications/send/",
            body=json.dumps(BODY).encode("utf-8"),
            headers={"Accept": "application/json", "Content-Type": "application/json"},
        )
        envelope = json.loads(conn.getresponse().read())
        assert envelope["code"] == 200, envelope
        return envelope["data"]

    return send


def package_send():
    def send():
        return sse_notify.send_notification("bench-user", {"text": "hello"})

    return send


def measure(send, threads, calls):
    """Per-call latencies (seconds, sorted) and calls per second of
    ``threads`` threads making ``calls`` calls each (after a warm-up)."""
    latencies = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def worker():
        for _ in range(min(200, calls)):
            send()
        barrier.wait()
        mine = []
        clock = time.perf_counter
        for _ in range(calls):
            started = clock()
            send()
            mine.append(clock() - started)
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    started = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return latencies, threads * calls / elapsed


def measure_async(tasks, calls):
    """The async twin: ``tasks`` coroutines on one event loop."""
    latencies = []

    async def one():
        clock = time.perf_counter
        for _ in range(calls):
            started = clock()
            await sse_notify.asend_notification("bench-user", {"text": "hello"})
            latencies.append(clock() - started)

    async def main():
        for _ in range(min(200, calls)):
            await sse_notify.asend_notification("bench-user", {"text": "hello"})
        started = time.perf_counter()
        await asyncio.gather(*[one() for _ in range(tasks)])
        return time.perf_counter() - started

    elapsed = asyncio.run(main())
    latencies.sort()
    return latencies, tasks * calls / elapsed


def pct(latencies, p):
    return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1e6


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Daemon:
    def __init__(self, binary, admin_listen):
        self.dir = tempfile.TemporaryDirectory(prefix="sse-notify-bench-")
        config = os.path.join(self.dir.name, "sse-notify.toml")
        with open(config, "w") as f:
            f.write(
                '[server]\nlisten = "127.0.0.1:%d"\nadmin_listen = "%s"\n\n[log]\nlevel = "warn"\n'
                % (free_port(), admin_listen)
            )
        self.log = open(os.path.join(self.dir.name, "log.txt"), "w+")
        self.proc = subprocess.Popen([binary, "serve", "-c", config], stdout=self.log, stderr=self.log)
        if admin_listen.startswith("unix:"):
            self.url = "unix://" + admin_listen[len("unix:"):]
        else:
            self.url = "http://" + admin_listen

    def wait(self):
        url = self.url
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                return "exited %s: %s" % (self.proc.returncode, self.log.read().strip()[-300:])
            try:
                with _override(SSE_NOTIFY_URL=url):
                    sse_notify.connection_manager.has_active_connections("bench-user")
                return None
            except sse_notify.SSENotifyError:
                time.sleep(0.05)
        return "did not answer within 15 s"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=20)
        self.dir.cleanup()


class _override:
    def __init__(self, **env):
        self.env = env

    def __enter__(self):
        self.old = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)

    def __exit__(self, *exc):
        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(label, url, calls, thread_counts, baselines):
    rows = []
    with _override(SSE_NOTIFY_URL=url):
        _transport.sync_pool.clear()
        _transport.async_pool.clear()
        clients = []
        if baselines:
            clients.append(("urllib, new connection per call (the old services.py)", urllib_send(url)))
            clients.append(("http.client, kept alive", http_client_send(url)))
        clients.append(("sse_notify.send_notification", package_send()))
        for name, send in clients:
            for threads in thread_counts:
                latencies, rate = measure(send, threads, calls)
                rows.append((label, name, "%d thread%s" % (threads, "" if threads == 1 else "s"),
                             pct(latencies, 0.5), pct(latencies, 0.99), rate))
        for tasks in thread_counts:
            latencies, rate = measure_async(tasks, calls)
            rows.append((label, "sse_notify.asend_notification", "%d task%s" % (tasks, "" if tasks == 1 else "s"),
                         pct(latencies, 0.5), pct(latencies, 0.99), rate))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", help="sse-notify binary to start (embedded engine, free ports)")
    parser.add_argument("--url", help="admin listener of a running sse-notify instead")
    parser.add_argument("--calls", type=int, default=5000, help="calls per thread (default 5000)")
    parser.add_argument("--threads", default="1,8", help="thread counts (default 1,8)")
    args = parser.parse_args()
    if bool(args.binary) == bool(args.url):
        parser.error("give --binary or --url")
    thread_counts = [int(t) for t in args.threads.split(",")]

    rows = []
    if args.url:
        rows += run("TCP", args.url, args.calls, thread_counts, baselines=args.url.startswith("http:"))
    else:
        daemon = Daemon(args.binary, "127.0.0.1:%d" % free_port())
        why = daemon.wait()
        if why:
            sys.exit("sse-notify: " + why)
        try:
            rows += run("TCP", daemon.url, args.calls, thread_counts, baselines=True)
        finally:
            daemon.stop()
        with tempfile.TemporaryDirectory(prefix="sse-notify-bench-") as sock_dir:
            daemon = Daemon(args.binary, "unix:" + os.path.join(sock_dir, "admin.sock"))
            why = daemon.wait()
            try:
                if why:
                    print("(Unix socket not measured: this sse-notify %s)" % why, file=sys.stderr)
                else:
                    rows += run("Unix socket", daemon.url, args.calls, thread_counts, baselines=False)
            finally:
                daemon.stop()

    print("%s, %d cores, Python %s; %d calls per thread\n" % (
        platform.processor() or platform.machine(), os.cpu_count(), platform.python_version(), args.calls))
    print("| admin listener | client | callers | p50 | p99 | calls/s |")
    print("|---|---|---|---:|---:|---:|")
    for label, name, callers, p50, p99, rate in rows:
        print("| %s | %s | %s | %.0f us | %.0f us | %.0f |" % (label, name, callers, p50, p99, rate))


if __name__ == "__main__":
    main()
