"""What the tests share: streams opened as a browser behind nginx would
(X-Remote-User from loopback), daemons of their own (the real binary), a
scripted HTTP peer for the faults a daemon cannot be made to show on cue,
and polling."""

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid

ADMIN_URL = os.environ.get("SSE_NOTIFY_URL", "")
STREAM_URL = os.environ.get("SSE_STREAM_URL", "")
READ_TIMEOUT = 10  # seconds; a frame that does not come fails the test

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def require(*names):
    """Fails (never skips) when the environment lacks what a test needs."""
    missing = [n for n in names if n not in os.environ]
    if missing:
        raise RuntimeError(
            "%s not set: run `cargo test --test django`, which starts sse-notify and sets them"
            % ", ".join(missing)
        )


def carried(frame_id, message_id):
    """`message_id` when the frame whose id is `frame_id` carries the message
    the API answered with it, else `frame_id`. A frame's id is its message's,
    or on a Redis Cluster with history on the stream's own position
    `{user}.{home}`, of which the API answers the part the message moved:
    `{id}.` for a user's message, `.{id}` for a broadcast or a topic's."""
    if frame_id == message_id or "." not in frame_id:
        return frame_id
    user, home = frame_id.split(".", 1)
    if message_id in (user + ".", "." + home):
        return message_id
    return frame_id


def carried_all(frame_ids, message_ids):
    """The ones of `message_ids` that a stream's frames carried, in the
    order of the frames (see `carried`): a position's two parts can be the
    same text, then the part that moved since the frame before tells."""
    out, before = [], None
    for f in frame_ids:
        if "." not in f:
            out.append(f)
            continue
        user, home = f.split(".", 1)
        as_user, as_home = user + ".", "." + home
        moved_user = before is None or before[0] != user
        moved_home = before is None or before[1] != home
        before = (user, home)
        u, h = as_user in message_ids, as_home in message_ids
        if u and not h or u and moved_user and not moved_home:
            out.append(as_user)
        elif h:
            out.append(as_home if moved_home or not u else f)
        else:
            out.append(f)
    return out


# On a Redis Cluster with history on a user's messages and the broadcasts
# and topics' are in two sequences: each in order, not with each other.
TWO_SEQUENCES = os.environ.get("SSE_REDIS_URL", "").startswith("redis+cluster://")


def unique(name):
    return "%s-%s" % (name, uuid.uuid4().hex[:8])


def eventually(predicate, within=10.0):
    deadline = time.monotonic() + within
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Stream:
    """One SSE connection, as a browser tab behind nginx holds it."""

    def __init__(self, username, stream_url=None, last_event_id=None, topics=()):
        # http.client sends header values as latin-1: hand it the UTF-8
        # bytes, which is what nginx passes on from the auth view.
        value = username.encode("utf-8").decode("latin-1")
        headers = {"X-Remote-User": value, "Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        url = stream_url or STREAM_URL
        if topics:
            # The page asks for its topics; nginx passes the ones the app's
            # auth view allows in X-Remote-Topics (here: exactly those).
            url += "?" + urllib.parse.urlencode({"topics": ",".join(topics)})
            headers["X-Remote-Topics"] = ",".join(topics)
        req = urllib.request.Request(url, headers=headers)
        self.resp = _opener.open(req, timeout=READ_TIMEOUT)
        assert self.resp.status == 200, self.resp.status
        established = json.loads(self.next_named("connection_established")["data"])
        self.connection_id = established["connection_id"]
        self.username = established["username"]
        self.connection_time = established["connection_time"]
        self.topics = established["topics"]

    def _line(self):
        raw = self.resp.readline()
        if not raw:
            raise EOFError("stream ended")
        return raw.decode("utf-8").rstrip("\r\n")

    def next_event(self):
        """The next frame with an event or data: {"id", "event", "data"}."""
        frame = {"id": None, "event": "message", "data": None}
        seen = False
        while True:
            line = self._line()
            if line == "":
                if seen:
                    return frame
                continue
            if line.startswith(":"):
                continue  # heartbeat comment
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field in ("id", "event"):
                frame[field] = value
                seen = True
            elif field == "data":
                frame["data"] = value if frame["data"] is None else frame["data"] + "\n" + value
                seen = True

    def next_named(self, event):
        while True:
            frame = self.next_event()
            if frame["event"] == event:
                return frame

    def until(self, event):
        """Every frame up to and including the next one named ``event``."""
        frames = []
        while True:
            frame = self.next_event()
            frames.append(frame)
            if frame["event"] == event:
                return frames

    def ends(self):
        """True when the server closes the stream (within READ_TIMEOUT)."""
        try:
            while self.resp.readline():
                pass
            return True
        except (socket.timeout, TimeoutError):
            return False
        except OSError:
            return True

    def close(self):
        self.resp.close()


class User:
    """Stands in for a Django user object where no database is needed."""

    def __init__(self, username):
        self.username = username

    def get_username(self):
        return self.username

    def __str__(self):
        return "User object, not a username"


class Daemon:
    """A daemon of the test's own (the real binary) on fixed ports, so that
    it can be stopped and started again where the client's pooled
    connections point. ``extra`` is more TOML."""

    def __init__(self, extra="", admin_listen=None):
        self.bin = os.environ["SSE_NOTIFY_BIN"]
        self.redis_url = os.environ.get("SSE_REDIS_URL", "")
        self.dir = tempfile.TemporaryDirectory(prefix="sse-notify-py-")
        self.public = "127.0.0.1:%d" % free_port()
        self.admin = admin_listen or "127.0.0.1:%d" % free_port()
        self.config = os.path.join(self.dir.name, "sse-notify.toml")
        with open(self.config, "w") as f:
            f.write(
                '[server]\nlisten = "%s"\nadmin_listen = "%s"\nnode_id = "py-%s"\n'
                'shutdown_grace_secs = 3\n\n[redis]\nurl = "%s"\nconnect_timeout_secs = 5\n\n'
                # No startup clear: on a shared Redis it would clear the
                # records of the harness's nodes too.
                "[startup]\nclear = false\n\n[stream]\nheartbeat_secs = 60\n\n%s\n"
                % (self.public, self.admin, uuid.uuid4().hex[:8], self.redis_url, extra)
            )
        self.log = os.path.join(self.dir.name, "log.txt")
        self.proc = None

    @property
    def admin_url(self):
        if self.admin.startswith("unix:"):
            return "unix://" + self.admin[len("unix:"):]
        return "http://" + self.admin

    @property
    def stream_url(self):
        return "http://%s/notifications/stream/" % self.public

    def start(self):
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [self.bin, "serve", "-c", self.config],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env={k: v for k, v in os.environ.items() if k != "SSE_NOTIFY_CONFIG"},
            )
        ok = eventually(lambda: self.healthy() or self.proc.poll() is not None, within=20)
        if not ok or self.proc.poll() is not None:
            raise RuntimeError("sse-notify did not start:\n" + self.log_text())
        return self

    def healthy(self):
        try:
            if self.admin.startswith("unix:"):
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(1)
                s.connect(self.admin[len("unix:"):])
                s.close()
                return True
            with _opener.open("http://%s/healthz" % self.admin, timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self, sig="TERM"):
        subprocess.run(["kill", "-%s" % sig, str(self.proc.pid)], check=True)
        if sig in ("TERM", "KILL", "INT"):
            self.proc.wait(timeout=20)
        elif sig == "STOP":
            # kill(2) returns before every thread has stopped.
            if not eventually(lambda: self._state() == "T", within=10):
                raise RuntimeError("sse-notify did not stop on SIGSTOP")

    def _state(self):
        with open("/proc/%d/stat" % self.proc.pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]

    def log_text(self):
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run(["kill", "-CONT", str(self.proc.pid)])
            self.proc.kill()
            self.proc.wait(timeout=20)
        self.dir.cleanup()


class ScriptedPeer:
    """A TCP server that plays one script per accepted connection: a list
    of ("read_request",), ("send", bytes), ("close",), ("reset",) steps.
    It records every request it read whole, so a test can count what
    reached it."""

    def __init__(self, scripts, unix_path=None):
        self.scripts = list(scripts)
        self.requests = []
        if unix_path:
            self.listener = socket.socket(socket.AF_UNIX)
            self.listener.bind(unix_path)
            self.url = "unix://" + unix_path
        else:
            self.listener = socket.socket()
            self.listener.bind(("127.0.0.1", 0))
            self.url = "http://127.0.0.1:%d" % self.listener.getsockname()[1]
        self.listener.listen(16)
        self.conns = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        for script in self.scripts:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._play, args=(conn, script), daemon=True).start()

    def _play(self, conn, script):
        buf = b""
        try:
            for step in script:
                if step[0] == "read_request":
                    while b"\r\n\r\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    while len(rest) < length:
                        rest += conn.recv(65536)
                    self.requests.append(head + b"\r\n\r\n" + rest[:length])
                    buf = rest[length:]
                elif step[0] == "send":
                    for piece in step[1:]:
                        conn.sendall(piece)
                        time.sleep(0.01)
                elif step[0] == "close":
                    conn.close()
                    return
                elif step[0] == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    conn.close()
                    return
                elif step[0] == "wait":
                    time.sleep(step[1])
        except OSError:
            pass

    def close(self):
        self.listener.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
