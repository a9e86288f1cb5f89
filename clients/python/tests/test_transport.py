"""The hand-written HTTP/1.1 client, tested as a library is: the response
parser fed in every split, then the real daemon read a byte at a time, its
chunked and Content-Length answers, Connection: close, connections it
closed (a restart, SIGKILL), a daemon stopped mid-request, and, from a
scripted peer, the faults a daemon cannot be made to show on cue. No send
is ever made twice: every such test counts what reached the stream or the
peer."""

import asyncio
import json
import os
import tempfile
import time
from unittest import mock

from django.test import SimpleTestCase, override_settings

from sse_notify import SSENotifyError, asend_notification, connection_manager, send_notification
from sse_notify import _transport
from sse_notify._transport import ProtocolError, ResponseReader

from .helpers import ADMIN_URL, Daemon, ScriptedPeer, Stream, carried, require, unique


def setUpModule():
    require("SSE_NOTIFY_URL", "SSE_STREAM_URL", "SSE_NOTIFY_BIN", "SSE_REDIS_URL")


def parse_in_pieces(raw, cuts, method="POST"):
    """Feeds ``raw`` cut at ``cuts``; the Response, or None if incomplete."""
    reader = ResponseReader(method)
    response = None
    last = 0
    for cut in list(cuts) + [len(raw)]:
        piece = raw[last:cut]
        last = cut
        if response is None:
            response = reader.feed(piece)
        elif piece:
            raise AssertionError("the answer was complete before its end")
    return response, reader


ANSWERS = [
    # (raw bytes, method, status, body, keep_alive)
    (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"code\":200}"[:-1],
     "POST", 200, b"{\"code\":200", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;ext=1\r\n:1}\r\n0\r\n\r\n",
     "GET", 200, b"{\"a\":1}", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n",
     "GET", 200, b"0123456789", True),
    (b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
     "POST", 400, b"{}", False),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
     "POST", 201, b"", True),
    (b"HTTP/1.1 204 No Content\r\n\r\n", "DELETE", 204, b"", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD", 200, b"", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nX-Multi: a\r\nX-Multi: b\r\n\r\nabc", "GET", 200, b"abc", True),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", "GET", 200, b"ok", False),
]


class ResponseReaderTest(SimpleTestCase):
    def test_every_answer_in_every_two_and_three_piece_split(self):
        for raw, method, status, body, keep_alive in ANSWERS:
            n = len(raw)
            splits = [[i] for i in range(n + 1)] + [[i, j] for i in range(0, n, 3) for j in range(i, n, 5)]
            for cuts in splits:
                with self.subTest(raw=raw, cuts=cuts):
                    response, _ = parse_in_pieces(raw, cuts, method)
                    self.assertIsNotNone(response)
                    self.assertEqual((response.status, response.body, response.keep_alive),
                                     (status, body, keep_alive))
        response, _ = parse_in_pieces(ANSWERS[7][0], [])
        self.assertEqual(response.headers["x-multi"], "a, b")
        # Bytes beyond the answer: the connection is out of step.
        response = ResponseReader("GET").feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
        self.assertEqual((response.body, response.keep_alive), (b"ok", False))

    def test_an_answer_delimited_by_the_close(self):
        raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"partial\": "
        for cut in range(len(raw)):
            reader = ResponseReader("GET")
            self.assertIsNone(reader.feed(raw[:cut]))
            self.assertIsNone(reader.feed(raw[cut:]))
            response = reader.eof()
            self.assertEqual((response.body, response.keep_alive), (b"{\"partial\": ", False))

    def test_an_answer_cut_short_is_an_error(self):
        for raw in (b"", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", b"HTTP/1.1 200 OK\r\n",
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"):
            with self.subTest(raw=raw):
                reader = ResponseReader("GET")
                self.assertIsNone(reader.feed(raw))
                with self.assertRaises(ProtocolError):
                    reader.eof()

    def test_malformed_answers_are_errors(self):
        for raw in (
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nName : v\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 70000,
        ):
            with self.subTest(raw=raw[:60]):
                with self.assertRaises(ProtocolError):
                    ResponseReader("GET").feed(raw)


def pooled():
    return _transport.sync_pool.idle_count()


class AgainstTheDaemonTest(SimpleTestCase):
    def open(self, username, url=None):
        stream = Stream(username, url)
        self.addCleanup(stream.close)
        return stream

    def setUp(self):
        _transport.sync_pool.clear()
        _transport.async_pool.clear()

    def test_one_connection_serves_call_after_call(self):
        accepted = []
        real = _transport.Endpoint.connect

        def counting(endpoint, timeout):
            accepted.append(1)
            return real(endpoint, timeout)

        with mock.patch.object(_transport.Endpoint, "connect", counting):
            user = unique("keep")
            tab = self.open(user)
            for n in range(20):
                send_notification(user, {"n": n})
            connection_manager.get_all_connections()  # chunked
            with self.assertRaises(SSENotifyError):
                send_notification(user, 1, event="bad event")  # an error answer keeps it too
            self.assertEqual(connection_manager.get_user_connections(user), [tab.connection_id])
        self.assertEqual(len(accepted), 1, "one connection for the whole sequence")
        self.assertEqual(pooled(), 1)
        self.assertEqual([json.loads(tab.next_named("message")["data"])["n"] for _ in range(20)], list(range(20)))

    def test_answers_read_a_byte_at_a_time(self):
        user = unique("bytes")
        tab = self.open(user)
        calls = [
            lambda: send_notification(user, {"text": "ünïcode ✓"}),
            lambda: connection_manager.get_all_connections(),  # chunked, with many users listed
            lambda: connection_manager.get_user_connection_details(user),
            lambda: send_notification(user, 1, event="bad event"),
        ]
        with mock.patch.object(_transport, "RECV_SIZE", 1):
            real = _transport.request
            with mock.patch.object(_transport, "request",
                                   lambda *a, **k: real(*a, **dict(k, recv_size=1))):
                sent = calls[0]()
                listing = calls[1]()
                details = calls[2]()
                with self.assertRaises(SSENotifyError) as cm:
                    calls[3]()
        self.assertEqual(cm.exception.status, 400)
        self.assertIn(user, listing["active_users"])
        self.assertEqual(details[0]["connection_id"], tab.connection_id)
        frame = tab.next_named("message")
        self.assertEqual(
            (carried(frame["id"], sent["message_id"]), json.loads(frame["data"])),
            (sent["message_id"], {"text": "ünïcode ✓"}),
        )
        self.assertEqual(pooled(), 1)

    def test_connection_close_from_the_daemon_is_honoured(self):
        endpoint = _transport.Endpoint(ADMIN_URL)
        data = _transport.build_request("GET", "/notifications/connections/x/", endpoint.host_header, None, "")
        data = data.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        response = _transport.request(endpoint, "GET", "/", data, 5)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers.get("connection"), "close")
        self.assertFalse(response.keep_alive)
        self.assertEqual(pooled(), 0, "a connection the daemon closes is not pooled")
        self.assertEqual(json.loads(response.body)["data"]["connection_count"], 0)


class RestartTest(SimpleTestCase):
    """Daemons of the tests' own, restarted under the pool."""

    def daemon(self, extra=""):
        daemon = Daemon(extra).start()
        self.addCleanup(daemon.close)
        return daemon

    def setUp(self):
        _transport.sync_pool.clear()
        _transport.async_pool.clear()

    def count(self, tab, nonce, marker):
        """How many frames carrying ``nonce`` come before the marker."""
        frames = tab.until(marker)
        return sum(1 for f in frames if f["data"] and nonce in f["data"])

    def check_survives(self, sig):
        daemon = self.daemon()
        user = unique("restart")
        with override_settings(SSE_NOTIFY_URL=daemon.admin_url):
            # Pool connections to the first process, sync and async.
            self.assertEqual(send_notification(user, 1)["connections"], 0)
            self.assertEqual(asyncio.run(asend_notification(user, 1))["connections"], 0)
            self.assertGreaterEqual(_transport.sync_pool.idle_count(), 1)
            self.assertGreaterEqual(_transport.async_pool.idle_count(), 1)
            daemon.stop(sig)
            daemon.start()
            tab = Stream(user, daemon.stream_url)
            self.addCleanup(tab.close)
            nonce = unique("once")
            sent = send_notification(user, {"nonce": nonce})
            self.assertEqual(sent["connections"], 1)
            anonce = unique("async-once")
            asent = asyncio.run(asend_notification(user, {"nonce": anonce}))
            self.assertEqual(asent["connections"], 1)
            send_notification(user, "marker", event="marker")
            frames = tab.until("marker")
        self.assertEqual(sum(1 for f in frames if nonce in (f["data"] or "")), 1, frames)
        self.assertEqual(sum(1 for f in frames if anonce in (f["data"] or "")), 1, frames)

    def test_the_pool_survives_a_restart_without_doubling_a_send(self):
        self.check_survives("TERM")

    def test_the_pool_survives_a_killed_daemon(self):
        self.check_survives("KILL")

    def test_a_request_the_daemon_may_have_acted_on_is_never_retried(self):
        """A daemon frozen (SIGSTOP) with the request in its socket: the call
        times out and is not retried (the scripted peer below counts that a
        closed connection is not retried either); its connection is dropped,
        and once the daemon runs again nothing arrives twice."""
        daemon = self.daemon()
        user = unique("frozen")
        with override_settings(SSE_NOTIFY_URL=daemon.admin_url, SSE_NOTIFY_TIMEOUT=1):
            send_notification(user, 1)  # pooled connections, sync and async
            asyncio.run(asend_notification(user, 1))
            tab = Stream(user, daemon.stream_url)
            self.addCleanup(tab.close)
            daemon.stop("STOP")
            nonces = []
            try:
                for call in (lambda n: send_notification(user, {"nonce": n}),
                             lambda n: asyncio.run(asend_notification(user, {"nonce": n}))):
                    nonces.append(unique("frozen"))
                    with self.assertRaises(SSENotifyError) as cm:
                        call(nonces[-1])
                    self.assertIsNone(cm.exception.status)
                    self.assertIn("timed out", cm.exception.message)
                    self.assertIn("not retried", cm.exception.message)
                self.assertEqual(_transport.sync_pool.idle_count() + _transport.async_pool.idle_count(), 0)
            finally:
                daemon.stop("CONT")
            send_notification(user, "marker", event="marker")
            frames = tab.until("marker")
        for nonce in nonces:
            self.assertLessEqual(sum(1 for f in frames if nonce in (f["data"] or "")), 1, frames)


class ScriptedFaultsTest(SimpleTestCase):
    """Races a real daemon shows only by chance, played by a scripted peer."""

    OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 32\r\n\r\n" \
         b"{\"code\":200,\"data\":{\"ok\":true}}"[:32]

    def setUp(self):
        _transport.sync_pool.clear()
        _transport.async_pool.clear()

    def peer(self, scripts, unix_path=None):
        peer = ScriptedPeer(scripts, unix_path)
        self.addCleanup(peer.close)
        return peer

    def ok_body(self):
        body = b'{"code":200,"data":{"ok":true}}'
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    def test_a_reset_connection_missed_by_the_idle_check_is_retried_only_unsent(self):
        # 1st connection: one answer, then a reset; the idle check is fooled
        # (the race), so the next send's write fails: it never reached the
        # peer whole, and goes again on a fresh connection (2nd).
        peer = self.peer([
            [("read_request",), ("send", self.ok_body()), ("wait", 0.2), ("reset",)],
            [("read_request",), ("send", self.ok_body())],
        ])
        with override_settings(SSE_NOTIFY_URL=peer.url):
            self.assertEqual(send_notification("a", {"n": 1}), {"ok": True})
            time.sleep(0.5)  # the reset has arrived
            with mock.patch.object(_transport, "_closed_or_dirty", lambda sock: False):
                self.assertEqual(send_notification("a", {"n": 2}), {"ok": True})
        bodies = [r.split(b"\r\n\r\n", 1)[1] for r in peer.requests]
        self.assertEqual(bodies.count(b'{"to":"a","data":{"n":2},"event":"message","all_connections":true}'), 1)
        self.assertEqual(len(peer.requests), 2)

    def test_a_close_after_the_whole_request_is_an_error_for_a_send(self):
        # The peer reads the request whole and closes without an answer (a
        # daemon dying mid-request): the send may have happened, so it is
        # not retried.
        for call in (lambda: send_notification("a", 1), lambda: asyncio.run(asend_notification("a", 1))):
            with self.subTest(call=call):
                peer = self.peer([
                    [("read_request",), ("send", self.ok_body()), ("read_request",), ("close",)],
                    [("read_request",), ("send", self.ok_body())],
                ])
                with override_settings(SSE_NOTIFY_URL=peer.url):
                    call()  # pools the connection
                    with mock.patch.object(_transport, "_closed_or_dirty", lambda sock: False):
                        with self.assertRaises(SSENotifyError) as cm:
                            call()
                self.assertIn("not retried", cm.exception.message)
                self.assertEqual(len(peer.requests), 2, "the second request reached the peer once")
                _transport.sync_pool.clear()
                _transport.async_pool.clear()

    def test_a_close_before_an_answer_to_a_get_is_retried(self):
        body = b'{"code":200,"data":{"username":"a","connection_count":0,"connection_ids":[],"connections":[]}}'
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        peer = self.peer([
            [("read_request",), ("send", answer), ("read_request",), ("close",)],
            [("read_request",), ("send", answer)],
        ])
        with override_settings(SSE_NOTIFY_URL=peer.url):
            self.assertFalse(connection_manager.has_active_connections("a"))
            with mock.patch.object(_transport, "_closed_or_dirty", lambda sock: False):
                self.assertFalse(connection_manager.has_active_connections("a"))
        self.assertEqual(len(peer.requests), 3)

    def test_an_answer_in_pieces_and_a_broken_answer(self):
        body = b'{"code":200,"data":{"ok":1}}'
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunked = head + b"5\r\n" + body[:5] + b"\r\n" + b"%x\r\n" % (len(body) - 5) + body[5:] + b"\r\n0\r\n\r\n"
        pieces = [chunked[i:i + 3] for i in range(0, len(chunked), 3)]
        peer = self.peer([
            [("read_request",), ("send",) + tuple(pieces)],
            [("read_request",), ("send", b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"code\""), ("close",)],
            [("read_request",), ("send", b"garbage\r\n\r\n"), ("close",)],
        ])
        with override_settings(SSE_NOTIFY_URL=peer.url):
            self.assertEqual(send_notification("a", 1), {"ok": 1})
            self.assertEqual(_transport.sync_pool.idle_count(), 1)
            _transport.sync_pool.clear()
            for words in ("in the middle of the answer", "not an HTTP/1.x status line"):
                with self.assertRaises(SSENotifyError) as cm:
                    send_notification("a", 1)
                self.assertIsNone(cm.exception.status)
                self.assertIn(words, cm.exception.message)
        self.assertEqual(_transport.sync_pool.idle_count(), 0)

    def test_a_unix_socket_endpoint(self):
        # What goes over a socket file byte for byte, sync and async, and
        # that the connection is kept (the whole suite also runs against
        # the daemon's own Unix-socket listener: tests/django.rs).
        body = b'{"code":200,"data":{"ok":true}}'
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "admin.sock")
            peer = self.peer([[("read_request",), ("send", answer), ("read_request",), ("send", answer)],
                              [("read_request",), ("send", answer)]], unix_path=path)
            for url in ("unix://" + path, "unix:" + path):
                with self.subTest(url=url), override_settings(SSE_NOTIFY_URL=url, SSE_NOTIFY_TOKEN="t"):
                    self.assertEqual(send_notification("a", 1), {"ok": True})
            with override_settings(SSE_NOTIFY_URL="unix://" + path):
                self.assertEqual(asyncio.run(asend_notification("a", 2)), {"ok": True})
            with override_settings(SSE_NOTIFY_URL="unix://" + os.path.join(d, "missing.sock")):
                with self.assertRaises(SSENotifyError) as cm:
                    send_notification("a", 1)
            self.assertIn("missing.sock", cm.exception.message)
        self.assertEqual(len(peer.requests), 3, "two calls on one kept connection, one async")
        head = peer.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
        self.assertEqual(head[0], b"POST /notifications/send/ HTTP/1.1")
        self.assertIn(b"Host: localhost", head)
        self.assertIn(b"Authorization: Bearer t", head)

    def test_a_forked_child_does_not_use_the_parents_connections(self):
        user = unique("fork")
        send_notification(user, 1)
        self.assertEqual(_transport.sync_pool.idle_count(), 1)
        pid = os.fork()
        if pid == 0:  # the child: an empty pool, its own connection
            code = 0 if _transport.sync_pool.idle_count() == 0 else 3
            try:
                send_notification(user, 2)
            except Exception:
                code = 4
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        self.assertEqual(_transport.sync_pool.idle_count(), 1)
        self.assertEqual(send_notification(user, 3)["to"], user)
