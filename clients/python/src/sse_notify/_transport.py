"""HTTP/1.1 to sse-notify's admin listener: kept-alive connections in a
small per-process pool, over TCP or a Unix socket, blocking and asyncio.

Hand-written on purpose, after measuring ``send_notification`` from one
thread against the embedded engine on a 2-core box: a kept-alive raw socket
answers in about 60 us, ``http.client`` in 150-280 us (it parses every header
block with ``email.parser``), urllib3 in 280 us, httpx in 500 us; and asyncio
has no HTTP client at all. What the admin API needs is small: one request at
a time per connection, answers delimited by Content-Length, chunked coding
or the close, no redirects, no TLS, no proxies. The parser is sans-I/O, so
the blocking and the asyncio paths share it.

A request is retried on a fresh connection only when it surely did not
reach the daemon whole: a pooled socket found closed before use, or a write
that failed. Once the whole request is written, a lost answer is an error
(the daemon may have acted), except for GET, which changes nothing.
"""

import asyncio
import ipaddress
import os
import select
import socket
import sys
import threading
import time
from urllib.parse import unquote, urlsplit

__all__ = ["Endpoint", "EndpointError", "ProtocolError", "Response", "ResponseReader"]

# Idle connections kept per endpoint and process; more concurrent callers
# open more connections, and the extra ones are closed when given back.
MAX_IDLE = 8
# The daemon closes a connection idle for 120 s; drop ours well before, so a
# request never races that close.
MAX_IDLE_SECS = 60.0
RECV_SIZE = 65536
MAX_HEAD = 65536  # bytes of status line and headers
MAX_CHUNK_LINE = 4096
USER_AGENT = "sse-notify-python"


class EndpointError(ValueError):
    """SSE_NOTIFY_URL is not a URL this client can use."""


class ProtocolError(Exception):
    """The peer's answer is not HTTP/1.1 as this client reads it."""


class Endpoint:
    """Where the admin listener is: ``http://host:port[/prefix]`` or
    ``unix:///path`` (also ``unix:/path``, the daemon's own spelling). The
    transport seam: everything else is the same for both."""

    __slots__ = ("key", "host", "port", "path", "prefix", "host_header", "display")

    def __init__(self, url):
        url = str(url).strip()
        if url.startswith("unix:"):
            rest = url[len("unix:"):]
            if rest.startswith("//"):
                parts = urlsplit(url)
                if parts.netloc not in ("", "localhost"):
                    raise EndpointError("SSE_NOTIFY_URL %r: write unix:///absolute/path" % url)
                rest = parts.path
            path = unquote(rest)
            if not path.startswith("/"):
                raise EndpointError("SSE_NOTIFY_URL %r: the socket path must be absolute" % url)
            # A socket file's path never ends in "/": one written by habit,
            # as after http://host:port/, is dropped.
            path = path.rstrip("/") or "/"
            self.key = ("unix", path)
            self.host, self.port, self.path = None, None, path
            self.prefix = ""
            # The daemon answers any Host over its socket; localhost is
            # what curl --unix-socket writes too.
            self.host_header = "localhost"
            self.display = "unix:" + path
            return
        parts = urlsplit(url)
        if parts.scheme == "https":
            raise EndpointError(
                "SSE_NOTIFY_URL %r: https is not supported; the admin listener speaks plain HTTP "
                "on localhost (or use a Unix socket, unix:///run/sse-notify/admin.sock)" % url
            )
        if parts.scheme != "http" or not parts.hostname:
            raise EndpointError("SSE_NOTIFY_URL %r: expected http://host:port or unix:///path" % url)
        if parts.query or parts.fragment or parts.username or parts.password:
            raise EndpointError("SSE_NOTIFY_URL %r: no query, fragment or credentials allowed" % url)
        try:
            port = parts.port or 80
        except ValueError:
            raise EndpointError("SSE_NOTIFY_URL %r: bad port" % url) from None
        self.host, self.port, self.path = parts.hostname, port, None
        self.key = ("tcp", self.host, port)
        self.prefix = parts.path.rstrip("/")
        self.host_header = parts.netloc.rsplit("@", 1)[-1]
        self.display = "http://" + self.host_header

    def connect(self, timeout):
        """A new blocking socket to the daemon (timeout applies)."""
        if self.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(self.path)
            except BaseException:
                sock.close()
                raise
            return sock
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    async def aconnect(self):
        """A new non-blocking socket to the daemon, for the running loop."""
        loop = asyncio.get_running_loop()
        if self.path is not None:
            families = [(socket.AF_UNIX, self.path)]
        else:
            try:
                ip = ipaddress.ip_address(self.host)
                families = [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (self.host, self.port))]
            except ValueError:
                infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
                families = [(info[0], info[4]) for info in infos]
        error = None
        for family, address in families:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                if family != socket.AF_UNIX:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, address)
                return sock
            except BaseException as e:
                sock.close()
                if not isinstance(e, OSError):
                    raise
                error = e
        raise error or OSError("no address for %s" % self.host)


class Response:
    __slots__ = ("status", "reason", "headers", "body", "keep_alive")

    def __init__(self, status, reason, headers, body, keep_alive):
        self.status = status
        self.reason = reason
        self.headers = headers  # lowercased name -> value (repeated ones joined by ", ")
        self.body = body
        self.keep_alive = keep_alive


# Reader states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE, _DONE = range(8)


class ResponseReader:
    """One HTTP/1.1 response, parsed from whatever pieces the socket gives
    (sans I/O): ``feed(data)`` returns the Response once it is complete, else
    None; ``eof()`` at the end of the stream returns it when the close
    delimits it, else raises ProtocolError. ``received`` tells whether any
    byte of an answer came at all."""

    __slots__ = ("_buf", "_state", "_head_only", "_status", "_reason", "_headers",
                 "_keep_alive", "_left", "_body", "received")

    def __init__(self, method):
        self._buf = bytearray()
        self._state = _HEAD
        self._head_only = method == "HEAD"
        self._body = []
        self._left = 0
        self.received = False

    def feed(self, data):
        if data:
            self.received = True
            self._buf += data
        if self._state == _DONE:
            raise ProtocolError("data after the end of the answer")
        return self._advance()

    def eof(self):
        if self._state == _UNTIL_CLOSE:
            self._body.append(bytes(self._buf))
            self._buf.clear()
            self._state = _DONE
            return self._response(False)
        if not self.received:
            raise ProtocolError("connection closed before any answer")
        raise ProtocolError("connection closed in the middle of the answer")

    def _response(self, keep_alive):
        return Response(self._status, self._reason, self._headers, b"".join(self._body), keep_alive)

    def _advance(self):
        buf = self._buf
        while True:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise ProtocolError("answer head longer than %d bytes" % MAX_HEAD)
                    return None
                head = bytes(buf[:end])
                del buf[:end + 4]
                self._head(head)
            elif state == _LENGTH:
                if len(buf) < self._left:
                    return None
                self._body.append(bytes(buf[:self._left]))
                del buf[:self._left]
                return self._finish()
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_CHUNK_LINE:
                        raise ProtocolError("chunk size line too long")
                    return None
                size = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[:end + 2]
                if not size or size.lstrip(b"0123456789abcdefABCDEF"):
                    raise ProtocolError("bad chunk size %r" % size)
                self._left = int(size, 16)
                self._state = _CHUNK_DATA if self._left else _TRAILER
            elif state == _CHUNK_DATA:
                if not buf:
                    return None
                take = min(self._left, len(buf))
                self._body.append(bytes(buf[:take]))
                del buf[:take]
                self._left -= take
                if self._left:
                    return None
                self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return None
                if buf[:2] != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise ProtocolError("trailer too long")
                    return None
                del buf[:end + 2]
                if end == 0:
                    return self._finish()
            elif state == _UNTIL_CLOSE:
                if buf:
                    self._body.append(bytes(buf))
                    buf.clear()
                return None
            else:
                raise ProtocolError("data after the end of the answer")

    def _finish(self):
        self._state = _DONE
        # Bytes beyond the answer: the connection is out of step, not reusable.
        return self._response(self._keep_alive and not self._buf)

    def _head(self, head):
        status_line = head.split(b"\r\n", 1)[0]
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise ProtocolError("not an HTTP/1.x status line: %r" % status_line[:80])
        code = parts[1]
        if len(code) != 3 or not code.isdigit():
            raise ProtocolError("bad status code %r" % code[:10])
        status = int(code)
        headers = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name[-1] in " \t" or name[0] in " \t":
                raise ProtocolError("bad header line %r" % line[:80])
            key = name.lower()
            value = value.strip(" \t")
            headers[key] = headers[key] + ", " + value if key in headers else value
        if 100 <= status < 200:
            if status == 101:
                raise ProtocolError("unexpected 101 Switching Protocols")
            return  # informational (100 Continue): the real answer follows
        self._status = status
        self._reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
        self._headers = headers
        tokens = [t.strip().lower() for t in headers.get("connection", "").split(",")]
        self._keep_alive = parts[0] == b"HTTP/1.1" and "close" not in tokens
        if self._head_only or status in (204, 304):
            self._state = _LENGTH
            self._left = 0
            return
        te = headers.get("transfer-encoding")
        if te is not None:
            codings = [c.strip().lower() for c in te.split(",")]
            if codings[-1] == "chunked":
                self._state = _CHUNK_SIZE
                if "content-length" in headers:
                    self._keep_alive = False  # RFC 9112 6.3: both is a smuggling sign
            else:
                self._state = _UNTIL_CLOSE
                self._keep_alive = False
            return
        length = headers.get("content-length")
        if length is not None:
            values = {v.strip() for v in length.split(",")}
            if len(values) != 1:
                raise ProtocolError("conflicting Content-Length %r" % length)
            value = values.pop()
            if not value.isdigit():
                raise ProtocolError("bad Content-Length %r" % value)
            self._state = _LENGTH
            self._left = int(value)
            return
        self._state = _UNTIL_CLOSE
        self._keep_alive = False


def build_request(method, target, host, body, token):
    """The request bytes (head and body)."""
    head = "%s %s HTTP/1.1\r\nHost: %s\r\nAccept: application/json\r\nUser-Agent: %s\r\n" % (
        method, target, host, USER_AGENT)
    if token:
        head += "Authorization: Bearer %s\r\n" % token
    if body is None:
        if method in ("POST", "PUT", "PATCH"):
            head += "Content-Length: 0\r\n"
        return (head + "\r\n").encode("latin-1")
    return (head + "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)).encode(
        "latin-1") + body


class TransportError(Exception):
    """No (complete) answer: ``sent`` says whether the daemon may have
    received the whole request."""

    def __init__(self, reason, sent):
        super().__init__(reason)
        self.sent = sent


class _NotSent(Exception):
    """The request did not reach the daemon whole (a write failed)."""


class _NoAnswer(Exception):
    """The whole request was written; the connection closed with no byte of
    an answer."""


if hasattr(select, "poll"):

    def _closed_or_dirty(sock):
        """True when an idle connection has something to read: the daemon's
        close (EOF or a reset) or stray bytes; either way not reusable."""
        p = select.poll()
        p.register(sock, select.POLLIN)
        return bool(p.poll(0))

else:  # pragma: no cover (Windows)

    def _closed_or_dirty(sock):
        return bool(select.select([sock], [], [], 0)[0])


class Pool:
    """Idle connections per endpoint, newest first; thread-safe. Emptied in
    a forked child (its copies of the parent's sockets are closed there and
    never used: two processes on one connection would mix answers)."""

    def __init__(self, max_idle=MAX_IDLE, max_idle_secs=MAX_IDLE_SECS):
        self.max_idle = max_idle
        self.max_idle_secs = max_idle_secs
        self._lock = threading.Lock()
        self._idle = {}
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def take(self, key):
        """An idle connection that looks alive, or None."""
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                sock, since = idle.pop()
            if time.monotonic() - since > self.max_idle_secs or _closed_or_dirty(sock):
                sock.close()
                continue
            return sock

    def give(self, key, sock):
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.max_idle:
                idle.append((sock, time.monotonic()))
                return
        sock.close()

    def idle_count(self, key=None):
        with self._lock:
            if key is not None:
                return len(self._idle.get(key, ()))
            return sum(len(v) for v in self._idle.values())

    def clear(self):
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for sock, _ in conns:
                sock.close()

    def _after_fork(self):
        self._lock = threading.Lock()
        self.clear()


sync_pool = Pool()
async_pool = Pool()


def request(endpoint, method, target, data, timeout, pool=sync_pool, recv_size=RECV_SIZE):
    """Sends ``data`` (the request bytes) and returns the Response. Raises
    TransportError (``sent`` True when the daemon may have acted) or
    ProtocolError."""
    deadline = time.monotonic() + timeout
    retry_after_send = method == "GET"
    # Each retry spends a pooled connection; past the pool's size a fresh
    # one is used, and a fresh connection is never retried.
    for attempt in range(pool.max_idle + 2):
        sock = pool.take(endpoint.key) if attempt <= pool.max_idle else None
        reused = sock is not None
        if sock is None:
            try:
                sock = endpoint.connect(timeout)
            except socket.timeout:
                raise TransportError("timed out connecting", False) from None
            except OSError as e:
                raise TransportError(_os_reason(e), False) from e
        elif sock.gettimeout() != timeout:
            sock.settimeout(timeout)
        try:
            response = _exchange(sock, method, data, deadline, recv_size)
        except _NotSent as e:
            sock.close()
            if reused:
                continue  # a stale pooled socket: the daemon never saw this request
            raise TransportError(str(e), False) from None
        except _NoAnswer as e:
            sock.close()
            if reused and retry_after_send:
                continue
            raise TransportError(str(e), True) from None
        except BaseException:
            sock.close()
            raise
        if response.keep_alive:
            pool.give(endpoint.key, sock)
        else:
            sock.close()
        return response


def _exchange(sock, method, data, deadline, recv_size):
    try:
        sock.sendall(data)
    except socket.timeout:
        raise TransportError("timed out sending the request", True) from None
    except OSError as e:
        # The daemon may have answered before reading the whole body (413)
        # and closed: that answer is the one to report.
        early = _early_answer(sock, method)
        if early is not None:
            return early
        raise _NotSent("connection lost while sending: %s" % _os_reason(e)) from None
    reader = ResponseReader(method)
    while True:
        try:
            chunk = sock.recv(recv_size)
        except socket.timeout:
            raise TransportError("timed out waiting for the answer", True) from None
        except OSError as e:
            if not reader.received:
                raise _NoAnswer("connection lost before an answer: %s" % _os_reason(e)) from None
            raise TransportError("connection lost during the answer: %s" % _os_reason(e), True) from None
        if not chunk:
            if not reader.received:
                raise _NoAnswer("connection closed before an answer")
            return reader.eof()
        response = reader.feed(chunk)
        if response is not None:
            return response
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransportError("timed out waiting for the answer", True)
        sock.settimeout(left)


def _early_answer(sock, method):
    """A complete answer already received on a socket whose write failed,
    or None."""
    reader = ResponseReader(method)
    try:
        sock.setblocking(False)
        while True:
            chunk = sock.recv(RECV_SIZE)
            if not chunk:
                response = reader.eof() if reader.received else None
                break
            response = reader.feed(chunk)
            if response is not None:
                break
    except (OSError, ProtocolError):
        return None
    if response is not None:
        response.keep_alive = False
    return response


if sys.version_info >= (3, 11):
    _timeout = asyncio.timeout
else:  # pragma: no cover

    class _timeout:
        """asyncio.timeout for Python < 3.11: cancels the task at the
        deadline and turns that cancellation into TimeoutError."""

        def __init__(self, delay):
            self._delay = delay

        async def __aenter__(self):
            task = asyncio.current_task()
            loop = asyncio.get_running_loop()
            self._fired = False

            def fire():
                self._fired = True
                task.cancel()

            self._handle = loop.call_later(self._delay, fire)
            return self

        async def __aexit__(self, exc_type, exc, tb):
            self._handle.cancel()
            if self._fired and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
            return False


async def arequest(endpoint, method, target, data, timeout, pool=async_pool, recv_size=RECV_SIZE):
    """``request`` for asyncio (the same rules)."""
    retry_after_send = method == "GET"
    stage = ["connecting"]
    try:
        async with _timeout(timeout):
            for attempt in range(pool.max_idle + 2):
                sock = pool.take(endpoint.key) if attempt <= pool.max_idle else None
                reused = sock is not None
                if sock is None:
                    stage[0] = "connecting"
                    try:
                        sock = await endpoint.aconnect()
                    except OSError as e:
                        raise TransportError(_os_reason(e), False) from e
                try:
                    response = await _aexchange(sock, method, data, recv_size, stage)
                except _NotSent as e:
                    sock.close()
                    if reused:
                        continue
                    raise TransportError(str(e), False) from None
                except _NoAnswer as e:
                    sock.close()
                    if reused and retry_after_send:
                        continue
                    raise TransportError(str(e), True) from None
                except BaseException:
                    # Cancelled or timed out mid-request: the connection's
                    # state is unknown, so it is never reused.
                    sock.close()
                    raise
                if response.keep_alive:
                    pool.give(endpoint.key, sock)
                else:
                    sock.close()
                return response
    except TimeoutError:
        raise TransportError("timed out %s" % stage[0], stage[0] != "connecting") from None


async def _aexchange(sock, method, data, recv_size, stage):
    loop = asyncio.get_running_loop()
    stage[0] = "sending the request"
    try:
        await loop.sock_sendall(sock, data)
    except OSError as e:
        early = _early_answer(sock, method)
        if early is not None:
            return early
        raise _NotSent("connection lost while sending: %s" % _os_reason(e)) from None
    stage[0] = "waiting for the answer"
    reader = ResponseReader(method)
    while True:
        try:
            chunk = await loop.sock_recv(sock, recv_size)
        except OSError as e:
            if not reader.received:
                raise _NoAnswer("connection lost before an answer: %s" % _os_reason(e)) from None
            raise TransportError("connection lost during the answer: %s" % _os_reason(e), True) from None
        if not chunk:
            if not reader.received:
                raise _NoAnswer("connection closed before an answer")
            return reader.eof()
        response = reader.feed(chunk)
        if response is not None:
            return response


def _os_reason(e):
    if isinstance(e, socket.gaierror):
        return "cannot resolve the host: %s" % (e.strerror or e)
    return e.strerror or str(e) or type(e).__name__
