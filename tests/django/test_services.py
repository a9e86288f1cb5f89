"""etc/django/services.py and the management commands of
etc/django/management/commands/ against a real sse-notify (stdlib unittest
only; Django is not needed: the commands' logic runs as plain functions).

Needs a running daemon; `cargo test --test django` starts one (and its Redis)
and runs this file with:

    SSE_NOTIFY_URL        its admin listener, e.g. http://127.0.0.1:8091
    SSE_STREAM_URL        its public stream, e.g. http://127.0.0.1:8090/notifications/stream/
    SSE_TOKEN_NODE_URL    admin listener of a second daemon that has api.token set
    SSE_TOKEN_NODE_TOKEN  that token

Streams are opened with urllib and X-Remote-User (header auth from loopback),
as nginx would after its auth_request; every assertion is on what the daemon
really did (frames on the stream, the registry it reports).
"""

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import unittest
import urllib.request
import uuid
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "etc" / "django"))

sys.path.insert(0, str(ROOT / "etc" / "django" / "management" / "commands"))

import cleanup_sse_connections  # noqa: E402
import clear_all_sse_connections  # noqa: E402
import services  # noqa: E402
from services import (  # noqa: E402
    SSENotifyError,
    broadcast_notification,
    connection_manager,
    send_many,
    send_notification,
)

ADMIN_URL = os.environ.get("SSE_NOTIFY_URL", "")
STREAM_URL = os.environ.get("SSE_STREAM_URL", "")
READ_TIMEOUT = 10  # seconds; a frame that does not come fails the test

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def setUpModule():
    if not ADMIN_URL or not STREAM_URL:
        raise RuntimeError(
            "SSE_NOTIFY_URL and SSE_STREAM_URL must name a running sse-notify "
            "(run `cargo test --test django`, which starts one)"
        )


def unique(name):
    return "%s-%s" % (name, uuid.uuid4().hex[:8])


def eventually(predicate, within=5.0):
    deadline = time.monotonic() + within
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


class Stream:
    """One SSE connection, as a browser tab behind nginx holds it."""

    def __init__(self, username):
        # http.client sends header values as latin-1: hand it the UTF-8
        # bytes, which is what nginx passes on from the auth view.
        value = username.encode("utf-8").decode("latin-1")
        req = urllib.request.Request(
            STREAM_URL,
            headers={"X-Remote-User": value, "Accept": "text/event-stream"},
        )
        self.resp = _opener.open(req, timeout=READ_TIMEOUT)
        assert self.resp.status == 200, self.resp.status
        ctype = self.resp.headers["Content-Type"]
        assert ctype.startswith("text/event-stream"), ctype
        # Lines until `event: connection_established`, then its data line.
        while True:
            line = self._line()
            if line == "event: connection_established":
                break
        line = self._line()
        assert line.startswith("data: "), line
        established = json.loads(line[len("data: "):])
        self.connection_id = established["connection_id"]
        self.username = established["username"]
        self.connection_time = established["connection_time"]
        self._line()  # the blank line ending the frame

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
    """Stands in for a Django user object."""

    def __init__(self, username):
        self.username = username

    def get_username(self):
        return self.username

    def __str__(self):
        return "User object, not a username"


class ServicesTest(unittest.TestCase):
    def open(self, username):
        stream = Stream(username)
        self.addCleanup(stream.close)
        return stream

    def assert_counts(self, counts, at_least_connections, at_least_users):
        self.assertIsInstance(counts["connection_count"], int)
        self.assertIsInstance(counts["user_count"], int)
        self.assertGreaterEqual(counts["connection_count"], at_least_connections)
        self.assertGreaterEqual(counts["user_count"], at_least_users)

    def test_settings_come_from_the_environment_without_django(self):
        self.assertEqual(services._setting("SSE_NOTIFY_URL"), ADMIN_URL)
        with mock.patch.dict(os.environ, {}, clear=True):
            self.assertEqual(services._setting("SSE_NOTIFY_URL"), "http://127.0.0.1:8091")
            self.assertEqual(services._setting("SSE_NOTIFY_BASE_PATH"), "/notifications")
            self.assertEqual(services._setting("SSE_NOTIFY_TOKEN"), "")
            self.assertEqual(float(services._setting("SSE_NOTIFY_TIMEOUT")), 5.0)

    def test_settings_come_from_django_when_it_is_configured(self):
        # A stand-in for django.conf (Django itself is not needed here).
        class Settings:
            configured = True
            SSE_NOTIFY_BASE_PATH = "/from-django"
            SSE_NOTIFY_TIMEOUT = 2

        conf = type(sys)("django.conf")
        conf.settings = Settings()
        django = type(sys)("django")
        django.conf = conf
        with mock.patch.dict(sys.modules, {"django": django, "django.conf": conf}):
            self.assertEqual(services._setting("SSE_NOTIFY_BASE_PATH"), "/from-django")
            self.assertEqual(services._setting("SSE_NOTIFY_TIMEOUT"), 2)
            # Not in settings: the environment, then the default.
            self.assertEqual(services._setting("SSE_NOTIFY_URL"), ADMIN_URL)
            with self.assertRaises(SSENotifyError) as cm:
                connection_manager.has_active_connections("alice")
            self.assertEqual(cm.exception.status, 404, "the base path from settings is used")
            Settings.configured = False
            self.assertEqual(services._setting("SSE_NOTIFY_BASE_PATH"), "/notifications")
            self.assertFalse(connection_manager.has_active_connections(unique("nobody")))

    def test_send_notification_arrives_on_the_stream(self):
        alice = unique("alice")
        tab = self.open(alice)
        self.assertEqual(tab.username, alice)

        sent = send_notification(alice, {"text": "hi", "n": 1}, event="new_comment")
        self.assertEqual(sent["to"], alice)
        self.assertEqual(sent["event"], "new_comment")
        self.assertIs(sent["all_connections"], True)
        self.assertEqual(sent["connections"], 1)
        frame = tab.next_named("new_comment")
        self.assertEqual(json.loads(frame["data"]), {"text": "hi", "n": 1})
        self.assertEqual(frame["id"], sent["message_id"])

        # A user object works too (its get_username(), not str()), and the
        # default event is "message".
        sent = send_notification(User(alice), "plain string")
        self.assertEqual(sent["to"], alice)
        self.assertEqual(sent["event"], "message")
        frame = tab.next_named("message")
        self.assertEqual(frame["data"], '"plain string"')
        self.assertEqual(frame["id"], sent["message_id"])

        # Nobody connected: not an error, 0 connections.
        sent = send_notification(unique("nobody"), {"x": 1})
        self.assertEqual(sent["connections"], 0)

    def test_send_many_posts_batches_and_answers_in_order(self):
        erin, finn = unique("erin"), unique("finn")
        erin_tab, finn_tab = self.open(erin), self.open(finn)
        sent = send_many(
            [
                {"user": erin, "data": {"n": 1}},
                {"user": User(finn), "data": {"n": 2}, "event": "news"},
                {"user": erin, "data": {"n": 3}, "all_connections": False},
            ],
            batch_size=2,
        )
        self.assertEqual([s["to"] for s in sent], [erin, finn, erin])
        self.assertEqual([s["connections"] for s in sent], [1, 1, 1])
        self.assertEqual(erin_tab.next_named("message")["id"], sent[0]["message_id"])
        self.assertEqual(finn_tab.next_named("news")["id"], sent[1]["message_id"])
        self.assertEqual(erin_tab.next_named("message")["id"], sent[2]["message_id"])
        with self.assertRaises(SSENotifyError) as caught:
            send_many([{"user": erin, "data": 1}, {"user": erin, "data": 2, "event": "bad event!"}])
        self.assertEqual(caught.exception.status, 400)
        self.assertIn("messages[1].event", str(caught.exception))

    def test_all_connections_false_reaches_only_the_oldest_tab(self):
        bob = unique("bob")
        first = self.open(bob)
        second = self.open(bob)

        only_first = send_notification(bob, {"n": 1}, all_connections=False)
        self.assertIs(only_first["all_connections"], False)
        self.assertEqual(only_first["connections"], 1)
        both = send_notification(bob, {"n": 2})
        self.assertEqual(both["connections"], 2)

        self.assertEqual(first.next_named("message")["id"], only_first["message_id"])
        self.assertEqual(first.next_named("message")["id"], both["message_id"])
        # The second tab's first message is the second send: it never got the first.
        self.assertEqual(second.next_named("message")["id"], both["message_id"])

    def test_broadcast_notification_reaches_every_user(self):
        tabs = [self.open(unique("carol")), self.open(unique("dave"))]
        sent = broadcast_notification({"text": "maintenance at 22:00"})
        self.assertIsNone(sent["to"])
        self.assertEqual(sent["event"], "broadcast")
        self.assertGreaterEqual(sent["connections"], 2)
        for tab in tabs:
            frame = tab.next_named("broadcast")
            self.assertEqual(frame["id"], sent["message_id"])
            self.assertEqual(json.loads(frame["data"]), {"text": "maintenance at 22:00"})

        sent = broadcast_notification([1, 2], event="announcement")
        for tab in tabs:
            self.assertEqual(tab.next_named("announcement")["data"], "[1,2]")

    def test_connection_manager_sees_open_and_closed_streams(self):
        erin = unique("erin")
        self.assertFalse(connection_manager.has_active_connections(erin))
        self.assertEqual(connection_manager.get_user_connections(erin), [])
        self.assertEqual(connection_manager.get_user_connection_details(erin), [])

        first = self.open(erin)
        second = self.open(erin)
        self.assertTrue(connection_manager.has_active_connections(erin))
        self.assertTrue(connection_manager.has_active_connections(User(erin)))
        self.assertEqual(
            connection_manager.get_user_connections(erin),
            [first.connection_id, second.connection_id],
        )
        details = connection_manager.get_user_connection_details(erin)
        self.assertEqual(len(details), 2)
        for detail, tab in zip(details, (first, second)):
            self.assertEqual(
                sorted(detail),
                ["connection_id", "connection_time", "last_heartbeat", "username"],
            )
            self.assertEqual(detail["connection_id"], tab.connection_id)
            self.assertEqual(detail["username"], erin)
            self.assertAlmostEqual(detail["connection_time"], tab.connection_time, places=3)
            self.assertIsInstance(detail["last_heartbeat"], float)
            self.assertGreaterEqual(detail["last_heartbeat"], detail["connection_time"])

        everything = connection_manager.get_all_connections()
        self.assertIn(erin, everything["active_users"])
        self.assertEqual(everything["connection_details"][erin], details)

        first.close()
        self.assertTrue(
            eventually(lambda: connection_manager.get_user_connections(erin) == [second.connection_id]),
            "the closed tab's record is removed, the other one stays",
        )
        second.close()
        self.assertTrue(eventually(lambda: not connection_manager.has_active_connections(erin)))

    def test_connection_pages_list_every_user_once_in_name_order(self):
        prefix = unique("pager")
        names = [prefix + "-c", prefix + "-a", prefix + "-b"]
        tabs = {name: self.open(name) for name in names}
        self.open(prefix + "-a")  # a second tab of the same user
        pages = list(connection_manager.iter_connection_pages(page_size=1))
        self.assertGreaterEqual(len(pages), 3)
        listed = []
        for page in pages:
            self.assertLessEqual(len(page["active_users"]), 1, page)
            self.assertEqual(sorted(page["connection_details"]), page["active_users"], page)
            self.assertIsInstance(page["user_count"], int)
            self.assertGreaterEqual(page["total_connections"], 4)
            listed.extend(page["active_users"])
        self.assertIsNone(pages[-1]["next_cursor"])
        self.assertEqual(listed, sorted(set(listed)), "name order, each user once")
        ours = [u for u in listed if u.startswith(prefix)]
        self.assertEqual(ours, sorted(names))

        by_user = dict(connection_manager.iter_all_connections(page_size=2))
        self.assertEqual(
            [c["connection_id"] for c in by_user[prefix + "-b"]],
            [tabs[prefix + "-b"].connection_id],
        )
        self.assertEqual(len(by_user[prefix + "-a"]), 2)

        with self.assertRaises(SSENotifyError) as caught:
            next(connection_manager.iter_connection_pages(page_size=0))
        self.assertEqual(caught.exception.status, 400)
        self.assertIn("limit", caught.exception.message)

    def test_clear_all_connections_keeps_live_streams(self):
        frank = unique("frank")
        tab = self.open(frank)
        counts = connection_manager.clear_all_connections()
        self.assertEqual(sorted(counts), ["connection_count", "user_count"])
        self.assert_counts(counts, 1, 1)
        # The node registers its live stream again at once; it still receives.
        self.assertTrue(
            eventually(lambda: connection_manager.get_user_connections(frank) == [tab.connection_id])
        )
        sent = send_notification(frank, {"after": "clear"})
        self.assertEqual(sent["connections"], 1)
        self.assertEqual(tab.next_named("message")["id"], sent["message_id"])

    def test_cleanup_stale_connections(self):
        gina = unique("gina")
        tab = self.open(gina)
        # A live, freshly heartbeated stream is not stale.
        counts = connection_manager.cleanup_stale_connections(timeout=300)
        self.assertEqual(sorted(counts), ["connection_count", "connection_ids", "user_count"])
        self.assertNotIn(tab.connection_id, counts["connection_ids"])
        self.assertTrue(connection_manager.has_active_connections(gina))
        counts = connection_manager.cleanup_stale_connections(timeout=None)
        self.assertNotIn(tab.connection_id, counts["connection_ids"])

        # With timeout 0 every record is "stale": its record goes (the test
        # node heartbeats every 60 s, so nothing writes it back meanwhile).
        time.sleep(0.01)
        counts = connection_manager.cleanup_stale_connections(timeout=0)
        self.assertIn(tab.connection_id, counts["connection_ids"])
        self.assert_counts(counts, 1, 1)
        self.assertEqual(counts["connection_count"], len(counts["connection_ids"]))
        self.assertFalse(connection_manager.has_active_connections(gina))
        # A full clear makes the node register its live streams again.
        connection_manager.clear_all_connections()
        self.assertTrue(eventually(lambda: connection_manager.has_active_connections(gina)))

    def test_disconnect_user_closes_the_streams(self):
        hank = unique("hank")
        tabs = [self.open(hank), self.open(hank)]
        counts = connection_manager.disconnect_user(hank)
        self.assertEqual(counts, {"connection_count": 2, "user_count": 1})
        for tab in tabs:
            self.assertTrue(tab.ends(), "a disconnected user's stream is closed")
        self.assertFalse(connection_manager.has_active_connections(hank))

    def test_unicode_and_reserved_characters_in_usernames(self):
        for name in ("zoë.日本+test@example.com", "a/b?c#d%20 e&f=g"):
            with self.subTest(name=name):
                tab = self.open(name)
                self.assertEqual(tab.username, name)
                self.assertTrue(connection_manager.has_active_connections(name))
                self.assertEqual(connection_manager.get_user_connections(name), [tab.connection_id])
                details = connection_manager.get_user_connection_details(User(name))
                self.assertEqual([d["username"] for d in details], [name])
                sent = send_notification(name, {"to": name})
                self.assertEqual(sent["to"], name)
                self.assertEqual(sent["connections"], 1)
                frame = tab.next_named("message")
                self.assertEqual(json.loads(frame["data"]), {"to": name})
                tab.close()
                self.assertTrue(eventually(lambda: not connection_manager.has_active_connections(name)))

    def test_bad_input_raises_with_the_status_and_the_message(self):
        with self.assertRaises(SSENotifyError) as cm:
            send_notification("alice", {"x": 1}, event="bad event!")
        self.assertEqual(cm.exception.status, 400)
        self.assertIn("event", cm.exception.message)
        self.assertIn("400", str(cm.exception))

        with self.assertRaises(SSENotifyError) as cm:
            send_notification("", {"x": 1})
        self.assertEqual(cm.exception.status, 400)

        with self.assertRaises(SSENotifyError) as cm:
            broadcast_notification({"x": 1}, event="")
        self.assertEqual(cm.exception.status, 400)

        with self.assertRaises(ValueError):
            send_notification(None, {"x": 1})

        # A wrong base path: the daemon's 404 envelope.
        with mock.patch.dict(os.environ, {"SSE_NOTIFY_BASE_PATH": "/not-there"}):
            with self.assertRaises(SSENotifyError) as cm:
                connection_manager.has_active_connections("alice")
        self.assertEqual(cm.exception.status, 404)

    def test_unreachable_daemon_raises(self):
        # A port nobody listens on: connection refused.
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        with mock.patch.dict(os.environ, {"SSE_NOTIFY_URL": "http://127.0.0.1:%d" % port}):
            for call in (
                lambda: send_notification("alice", 1),
                lambda: broadcast_notification(1),
                lambda: connection_manager.has_active_connections("alice"),
                lambda: connection_manager.clear_all_connections(),
            ):
                with self.assertRaises(SSENotifyError) as cm:
                    call()
                self.assertIsNone(cm.exception.status)
                self.assertIn("127.0.0.1:%d" % port, cm.exception.message)

    def test_a_daemon_that_does_not_answer_times_out(self):
        # Accepts connections (the kernel's backlog) but never answers.
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        self.addCleanup(silent.close)
        url = "http://127.0.0.1:%d" % silent.getsockname()[1]
        with mock.patch.dict(os.environ, {"SSE_NOTIFY_URL": url, "SSE_NOTIFY_TIMEOUT": "0.5"}):
            started = time.monotonic()
            with self.assertRaises(SSENotifyError) as cm:
                send_notification("alice", {"x": 1})
            elapsed = time.monotonic() - started
        self.assertIsNone(cm.exception.status)
        self.assertLess(elapsed, 3, "the timeout applies")
        self.assertGreaterEqual(elapsed, 0.4)

    def test_api_token(self):
        url = os.environ.get("SSE_TOKEN_NODE_URL")
        token = os.environ.get("SSE_TOKEN_NODE_TOKEN")
        if not url or not token:
            self.skipTest("SSE_TOKEN_NODE_URL / SSE_TOKEN_NODE_TOKEN not set")
        with mock.patch.dict(os.environ, {"SSE_NOTIFY_URL": url, "SSE_NOTIFY_TOKEN": token}):
            self.assertEqual(send_notification("alice", 1)["connections"], 0)
            self.assertFalse(connection_manager.has_active_connections("alice"))
        for wrong in ("", "not-the-token"):
            with mock.patch.dict(os.environ, {"SSE_NOTIFY_URL": url, "SSE_NOTIFY_TOKEN": wrong}):
                with self.assertRaises(SSENotifyError) as cm:
                    send_notification("alice", 1)
                self.assertEqual(cm.exception.status, 401)


REMOVED = re.compile(r"removed (\d+) connections? of (\d+) users?\n\Z")


def run_command(module, *argv):
    """(exit code, stdout, stderr) of a management command's plain run()."""
    out, err = io.StringIO(), io.StringIO()
    code = module.run(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


class ManagementCommandsTest(unittest.TestCase):
    """cleanup_sse_connections and clear_all_sse_connections: the wording and
    exit codes of `sse-notify cleanup` / `sse-notify clear`."""

    def open(self, username):
        stream = Stream(username)
        self.addCleanup(stream.close)
        return stream

    def removed(self, out):
        m = REMOVED.match(out)
        self.assertIsNotNone(m, "not the CLI's wording: %r" % out)
        return int(m.group(1)), int(m.group(2))

    def test_removed_line_is_worded_as_the_cli(self):
        line = cleanup_sse_connections.common.removed_line
        self.assertEqual(line({"connection_count": 1, "user_count": 1}), "removed 1 connection of 1 user")
        self.assertEqual(line({"connection_count": 0, "user_count": 0}), "removed 0 connections of 0 users")
        self.assertEqual(line({"connection_count": 3, "user_count": 2}), "removed 3 connections of 2 users")
        cli = os.environ.get("SSE_NOTIFY_BIN")
        cli_config = os.environ.get("SSE_NOTIFY_CLI_CONFIG")
        if not cli or not cli_config:
            raise RuntimeError("SSE_NOTIFY_BIN and SSE_NOTIFY_CLI_CONFIG must name the binary and a CLI config")
        # The real CLI on the same deployment prints the same form.
        done = subprocess.run(
            [cli, "-c", cli_config, "cleanup", "--timeout", "300"],
            capture_output=True, text=True, timeout=30,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.removed(done.stdout)

    def test_cleanup_command(self):
        ivan = unique("ivan")
        tab = self.open(ivan)
        # Default --timeout 300: a live, freshly heartbeated stream stays.
        code, out, err = run_command(cleanup_sse_connections)
        self.assertEqual((code, err), (0, ""))
        self.removed(out)
        self.assertTrue(connection_manager.has_active_connections(ivan))
        code, out, err = run_command(cleanup_sse_connections, "--timeout", "300")
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(connection_manager.has_active_connections(ivan))

        # --timeout 0: every record is stale (the test node heartbeats every
        # 60 s, so nothing writes it back meanwhile).
        time.sleep(0.01)
        code, out, err = run_command(cleanup_sse_connections, "--timeout", "0")
        self.assertEqual((code, err), (0, ""))
        connections, users = self.removed(out)
        self.assertGreaterEqual(connections, 1)
        self.assertGreaterEqual(users, 1)
        self.assertFalse(connection_manager.has_active_connections(ivan))
        # A full clear makes the node register its live stream again.
        connection_manager.clear_all_connections()
        self.assertTrue(eventually(lambda: connection_manager.get_user_connections(ivan) == [tab.connection_id]))

    def test_cleanup_command_usage_errors_exit_2(self):
        for argv in (["--timeout", "-1"], ["--timeout", "nan"], ["--timeout", "soon"], ["--nope"]):
            with self.subTest(argv=argv):
                with mock.patch("sys.stderr", io.StringIO()):
                    code, out, _ = run_command(cleanup_sse_connections, *argv)
                self.assertEqual(code, 2)
                self.assertEqual(out, "")

    def test_clear_command_refuses_without_force(self):
        judy = unique("judy")
        tab = self.open(judy)
        code, out, err = run_command(clear_all_sse_connections)
        self.assertEqual(code, 2)
        self.assertEqual(out, "")
        self.assertIn("--force", err)
        # Nothing was removed.
        self.assertEqual(connection_manager.get_user_connections(judy), [tab.connection_id])

    def test_clear_command_with_force(self):
        kate = unique("kate")
        tab = self.open(kate)
        code, out, err = run_command(clear_all_sse_connections, "--force")
        self.assertEqual((code, err), (0, ""))
        connections, users = self.removed(out)
        self.assertGreaterEqual(connections, 1)
        self.assertGreaterEqual(users, 1)
        # Live streams stay open and are registered again; they still receive.
        self.assertTrue(eventually(lambda: connection_manager.get_user_connections(kate) == [tab.connection_id]))
        sent = send_notification(kate, {"after": "clear command"})
        self.assertEqual(tab.next_named("message")["id"], sent["message_id"])

    def test_commands_exit_1_when_no_node_answers(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        with mock.patch.dict(os.environ, {"SSE_NOTIFY_URL": "http://127.0.0.1:%d" % port}):
            for module, argv in ((cleanup_sse_connections, []), (clear_all_sse_connections, ["--force"])):
                with self.subTest(command=module.__name__):
                    code, out, err = run_command(module, *argv)
                    self.assertEqual(code, 1)
                    self.assertEqual(out, "")
                    self.assertIn("127.0.0.1:%d" % port, err)

    def test_commands_send_the_token(self):
        url = os.environ["SSE_TOKEN_NODE_URL"]
        token = os.environ["SSE_TOKEN_NODE_TOKEN"]
        with mock.patch.dict(os.environ, {"SSE_NOTIFY_URL": url, "SSE_NOTIFY_TOKEN": token}):
            code, out, err = run_command(cleanup_sse_connections, "--timeout", "300")
            self.assertEqual((code, err), (0, ""))
            self.removed(out)
        with mock.patch.dict(os.environ, {"SSE_NOTIFY_URL": url, "SSE_NOTIFY_TOKEN": "not-the-token"}):
            code, out, err = run_command(cleanup_sse_connections)
            self.assertEqual(code, 1)
            self.assertIn("401", err)

    def test_the_django_wrapper_is_absent_without_django(self):
        try:
            import django  # noqa: F401
        except ImportError:
            self.assertIsNone(cleanup_sse_connections.Command)
            self.assertIsNone(clear_all_sse_connections.Command)
        else:
            self.assertTrue(hasattr(cleanup_sse_connections.Command, "handle"))
            self.assertTrue(hasattr(clear_all_sse_connections.Command, "handle"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
