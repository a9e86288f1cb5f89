"""The Django side: the management commands (worded and exiting as the
``sse-notify`` CLI), the system checks, the auth and token views, logout
closing the streams, and the async calls from ASGI views (Django's
AsyncClient runs them through its ASGI handler)."""

import base64
import hashlib
import hmac
import io
import json
import os
import re
import subprocess
import tempfile
import time
from unittest import mock

from django.contrib.auth.models import User as DjangoUser
from django.core import checks
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import AsyncClient, SimpleTestCase, TestCase, override_settings

from sse_notify import SSENotifyError, connection_manager, send_notification

from .helpers import Stream, carried, eventually, free_port, require, unique

REMOVED = re.compile(r"removed (\d+) connections? of (\d+) users?\n\Z")


def setUpModule():
    require("SSE_NOTIFY_URL", "SSE_STREAM_URL", "SSE_TOKEN_NODE_URL", "SSE_TOKEN_NODE_TOKEN",
            "SSE_NOTIFY_BIN", "SSE_NOTIFY_CLI_CONFIG")


def run(name, *args):
    """(stdout, exit code) of ``manage.py name args``; 0 when it succeeds."""
    out = io.StringIO()
    try:
        call_command(name, *args, stdout=out, stderr=io.StringIO())
    except CommandError as e:
        return str(e), e.returncode
    return out.getvalue(), 0


class CommandsTest(SimpleTestCase):
    def open(self, username):
        stream = Stream(username)
        self.addCleanup(stream.close)
        return stream

    def removed(self, out):
        m = REMOVED.match(out)
        self.assertIsNotNone(m, "not the CLI's wording: %r" % out)
        return int(m.group(1)), int(m.group(2))

    def test_cleanup_is_worded_as_the_cli(self):
        # The real CLI on the same deployment prints the same form.
        done = subprocess.run(
            [os.environ["SSE_NOTIFY_BIN"], "-c", os.environ["SSE_NOTIFY_CLI_CONFIG"], "cleanup", "--timeout", "300"],
            capture_output=True, text=True, timeout=30,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.removed(done.stdout)
        ivan = unique("ivan")
        tab = self.open(ivan)
        out, code = run("cleanup_sse_connections")  # --timeout 300: a live stream stays
        self.assertEqual(code, 0)
        self.removed(out)
        self.assertTrue(connection_manager.has_active_connections(ivan))
        time.sleep(0.01)
        out, code = run("cleanup_sse_connections", "--timeout", "0")  # every record is stale
        self.assertEqual(code, 0)
        connections, users = self.removed(out)
        self.assertGreaterEqual((connections, users), (1, 1))
        # (Its live record is written back by its node; a full clear makes
        # sure of it now.)
        connection_manager.clear_all_connections()
        self.assertTrue(eventually(lambda: connection_manager.get_user_connections(ivan) == [tab.connection_id]))

    def test_cleanup_usage_errors_exit_2(self):
        for argv in (["--timeout", "-1"], ["--timeout", "nan"], ["--timeout", "inf"]):
            with self.subTest(argv=argv):
                out, code = run("cleanup_sse_connections", *argv)
                self.assertEqual(code, 2)
                self.assertIn("--timeout", out)
        with self.assertRaises(CommandError):  # argparse: not a number
            call_command("cleanup_sse_connections", "--timeout", "soon", stderr=io.StringIO())

    def test_clear_refuses_without_force_and_clears_with_it(self):
        judy = unique("judy")
        tab = self.open(judy)
        out, code = run("clear_all_sse_connections")
        self.assertEqual(code, 2)
        self.assertIn("--force", out)
        self.assertEqual(connection_manager.get_user_connections(judy), [tab.connection_id])
        out, code = run("clear_all_sse_connections", "--force")
        self.assertEqual(code, 0)
        self.assertGreaterEqual(self.removed(out), (1, 1))
        self.assertTrue(eventually(lambda: connection_manager.get_user_connections(judy) == [tab.connection_id]))
        sent = send_notification(judy, {"after": "clear command"})
        self.assertEqual(carried(tab.next_named("message")["id"], sent["message_id"]), sent["message_id"])

    def test_sse_connections_lists_as_the_cli(self):
        kate = unique("kate")
        first, second = self.open(kate), self.open(kate)
        out, code = run("sse_connections", kate)
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertEqual(lines[0], "%s: 2 connections" % kate)
        self.assertEqual(lines[1].split(), ["USER", "CONNECTION_ID", "CONNECTED", "LAST_HEARTBEAT"])
        self.assertEqual([line.split()[1] for line in lines[2:]], [first.connection_id, second.connection_id])
        self.assertTrue(all(line.split()[0] == kate for line in lines[2:]))
        out, _ = run("sse_connections", kate, "--json")
        data = json.loads(out)
        self.assertEqual(data["connection_ids"], [first.connection_id, second.connection_id])
        self.assertEqual(data["connection_count"], 2)
        # The CLI's --json for the same user is the same object.
        done = subprocess.run(
            [os.environ["SSE_NOTIFY_BIN"], "-c", os.environ["SSE_NOTIFY_CLI_CONFIG"], "connections", kate, "--json"],
            capture_output=True, text=True, timeout=30,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(done.stdout)["connection_ids"], data["connection_ids"])

        out, code = run("sse_connections")
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertRegex(lines[0], r"^\d+ connections? of \d+ users?$")
        self.assertEqual(lines[1].split()[0], "USER")
        self.assertEqual(sum(1 for line in lines if line.startswith(kate + " ")), 2)
        everything = json.loads(run("sse_connections", "--json")[0])
        self.assertIn(kate, everything["active_users"])
        out, _ = run("sse_connections", unique("nobody"))
        self.assertRegex(out, r"^\S+: 0 connections\n$")

    def test_sse_topics_lists_as_the_cli(self):
        doc = unique("doc:")
        lou, mia = unique("lou"), unique("mia")
        tabs = [Stream(lou, topics=[doc]), Stream(lou, topics=[doc, "team:7"]), Stream(mia, topics=[doc])]
        for tab in tabs:
            self.addCleanup(tab.close)
        out, code = run("sse_topics", doc)
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertEqual(lines[0], "%s: 3 connections of 2 users" % doc)
        self.assertEqual(lines[1].split(), ["USER", "CONNECTION_ID", "CONNECTED", "LAST_HEARTBEAT"])
        self.assertEqual([line.split()[1] for line in lines[2:]], [t.connection_id for t in tabs])
        data = json.loads(run("sse_topics", doc, "--json")[0])
        self.assertEqual((data["topic"], data["users"]), (doc, sorted([lou, mia])))
        # The CLI's --json for the same topic is the same object.
        done = subprocess.run(
            [os.environ["SSE_NOTIFY_BIN"], "-c", os.environ["SSE_NOTIFY_CLI_CONFIG"], "topics", doc, "--json"],
            capture_output=True, text=True, timeout=30,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(done.stdout)["users"], data["users"])

        out, code = run("sse_topics")
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertRegex(lines[0], r"^\d+ topics? followed$")
        self.assertEqual(lines[1].split(), ["TOPIC", "CONNECTIONS", "USERS"])
        self.assertIn([doc, "3", "2"], [line.split() for line in lines[2:]])
        everything = json.loads(run("sse_topics", "--json")[0])
        self.assertIn({"topic": doc, "connection_count": 3, "user_count": 2}, everything["topics"])
        out, code = run("sse_topics", unique("doc:"))
        self.assertRegex(out, r"^\S+: 0 connections of 0 users\n$")
        out, code = run("sse_topics", "doc 42")
        self.assertEqual(code, 2, out)
        self.assertIn("topic", out)

    def test_commands_exit_1_when_no_node_answers_and_send_the_token(self):
        with override_settings(SSE_NOTIFY_URL="http://127.0.0.1:%d" % free_port()):
            for argv in (["cleanup_sse_connections"], ["clear_all_sse_connections", "--force"], ["sse_connections"],
                         ["sse_topics"], ["sse_topics", "doc:42"]):
                with self.subTest(argv=argv):
                    out, code = run(*argv)
                    self.assertEqual(code, 1)
                    self.assertIn("127.0.0.1:", out)
        url, token = os.environ["SSE_TOKEN_NODE_URL"], os.environ["SSE_TOKEN_NODE_TOKEN"]
        with override_settings(SSE_NOTIFY_URL=url, SSE_NOTIFY_TOKEN=token):
            self.assertEqual(run("cleanup_sse_connections")[1], 0)
        with override_settings(SSE_NOTIFY_URL=url, SSE_NOTIFY_TOKEN="not-the-token"):
            out, code = run("cleanup_sse_connections")
            self.assertEqual(code, 1)
            self.assertIn("401", out)


class ChecksTest(SimpleTestCase):
    def ids(self, **settings):
        with override_settings(**settings):
            return sorted(m.id for m in checks.run_checks(tags=["sse_notify"]))

    def test_good_settings_pass(self):
        self.assertEqual(self.ids(), [])
        self.assertEqual(self.ids(SSE_NOTIFY_URL="unix:///run/sse-notify/admin.sock"), [])
        self.assertEqual(self.ids(SSE_NOTIFY_URL="unix:/run/sse-notify/admin.sock", SSE_NOTIFY_TIMEOUT="2.5"), [])
        self.assertEqual(self.ids(SSE_NOTIFY_URL="http://[::1]:8091", SSE_NOTIFY_BASE_PATH="/"), [])

    def test_bad_settings_are_reported(self):
        self.assertEqual(self.ids(SSE_NOTIFY_URL="https://127.0.0.1:8091"), ["sse_notify.E001"])
        self.assertEqual(self.ids(SSE_NOTIFY_URL="127.0.0.1:8091"), ["sse_notify.E001"])
        self.assertEqual(self.ids(SSE_NOTIFY_URL=8091), ["sse_notify.E001"])
        self.assertEqual(self.ids(SSE_NOTIFY_URL="unix:admin.sock"), ["sse_notify.E001"])
        self.assertEqual(self.ids(SSE_NOTIFY_URL="http://sse.internal:8091"), ["sse_notify.W001"])
        self.assertEqual(self.ids(SSE_NOTIFY_URL="http://127.0.0.1:8091/notifications"), ["sse_notify.W002"])
        self.assertEqual(self.ids(SSE_NOTIFY_BASE_PATH="/a b"), ["sse_notify.E002"])
        self.assertEqual(self.ids(SSE_NOTIFY_TOKEN="tok\n"), ["sse_notify.E003"])
        self.assertEqual(self.ids(SSE_NOTIFY_TIMEOUT=0), ["sse_notify.E004"])
        self.assertEqual(self.ids(SSE_NOTIFY_TIMEOUT="soon"), ["sse_notify.E004"])
        self.assertEqual(self.ids(SSE_NOTIFY_JWT_SECRET_FILE="/nonexistent/secret"), ["sse_notify.E005"])
        self.assertEqual(self.ids(SSE_NOTIFY_JWT_SECRET="s", SSE_NOTIFY_JWT_TTL=0), ["sse_notify.E006"])
        # From the environment too, named as such.
        with mock.patch.dict(os.environ, {"SSE_NOTIFY_TIMEOUT": "-1"}):
            messages = checks.run_checks(tags=["sse_notify"])
        self.assertEqual([m.id for m in messages], ["sse_notify.E004"])
        self.assertIn("environment variable SSE_NOTIFY_TIMEOUT", messages[0].msg)

    def test_checks_make_no_network_call(self):
        with mock.patch("socket.socket.connect", side_effect=AssertionError("network call")):
            self.assertEqual(self.ids(SSE_NOTIFY_URL="http://127.0.0.1:%d" % free_port()), [])


def decode(token, secret):
    head, payload, signature = token.split(".")
    expected = hmac.new(secret, (head + "." + payload).encode(), hashlib.sha256).digest()
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    assert base64.urlsafe_b64decode(pad(signature)) == expected, "bad signature"
    return json.loads(base64.urlsafe_b64decode(pad(head))), json.loads(base64.urlsafe_b64decode(pad(payload)))


class ViewsTest(TestCase):
    def setUp(self):
        self.user = DjangoUser.objects.create_user(unique("zoë"), password="pw")

    def test_sse_auth_names_the_logged_in_user(self):
        self.assertEqual(self.client.get("/notifications/sse-auth/").status_code, 401)
        self.client.force_login(self.user)
        response = self.client.get("/notifications/sse-auth/")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.headers["X-Remote-User"].encode("latin-1").decode("utf-8"), self.user.username)
        self.assertIn("no-cache", response.headers["Cache-Control"])

    def test_sse_token_is_a_jwt_the_daemon_accepts(self):
        self.assertEqual(self.client.get("/notifications/sse-token/").status_code, 401)
        self.client.force_login(self.user)
        with tempfile.NamedTemporaryFile("wb", suffix=".secret") as f:
            f.write(b"the-shared-secret\n")
            f.flush()
            with override_settings(SSE_NOTIFY_JWT_SECRET_FILE=f.name, SSE_NOTIFY_JWT_TTL=120):
                before = int(time.time())
                answer = self.client.get("/notifications/sse-token/").json()
        header, claims = decode(answer["token"], b"the-shared-secret")
        self.assertEqual(header, {"alg": "HS256", "typ": "JWT"})
        self.assertEqual(claims["sub"], self.user.username)
        self.assertEqual(answer["expires_in"], 120)
        self.assertEqual(claims["exp"], answer["exp"])
        self.assertTrue(before + 120 <= claims["exp"] <= int(time.time()) + 120)
        self.assertNotIn("aud", claims)
        with override_settings(SSE_NOTIFY_JWT_SECRET="s", SSE_NOTIFY_JWT_AUDIENCE="site", SSE_NOTIFY_JWT_ISSUER="me"):
            _, claims = decode(self.client.get("/notifications/sse-token/").json()["token"], b"s")
        self.assertEqual((claims["aud"], claims["iss"]), ("site", "me"))
        # The daemon in token mode takes it: see tests/django_e2e.rs (the
        # browser renews it) and the token node test below.

    def test_logout_closes_the_users_streams(self):
        tabs = [Stream(self.user.username), Stream(self.user.username)]
        for tab in tabs:
            self.addCleanup(tab.close)
        self.client.force_login(self.user)
        self.assertTrue(connection_manager.has_active_connections(self.user))
        self.assertEqual(self.client.post("/logout/").status_code, 200)
        for tab in tabs:
            self.assertTrue(tab.ends(), "logout closes the stream")
        self.assertFalse(connection_manager.has_active_connections(self.user))
        # A daemon that does not answer never fails a logout.
        self.client.force_login(self.user)
        with override_settings(SSE_NOTIFY_URL="http://127.0.0.1:%d" % free_port()):
            with self.assertLogs("sse_notify", "WARNING") as logs:
                self.assertEqual(self.client.post("/logout/").status_code, 200)
        self.assertIn("streams not closed", logs.output[0])
        # And it can be turned off.
        tab = Stream(self.user.username)
        self.addCleanup(tab.close)
        self.client.force_login(self.user)
        with override_settings(SSE_NOTIFY_DISCONNECT_ON_LOGOUT=False):
            self.client.post("/logout/")
        self.assertEqual(connection_manager.get_user_connections(self.user), [tab.connection_id])


class AsgiViewsTest(SimpleTestCase):
    """Async views served by Django's ASGI handler (AsyncClient)."""

    async def test_async_calls_from_an_asgi_view(self):
        from asgiref.sync import sync_to_async

        lena = unique("lena")
        tab = await sync_to_async(Stream)(lena)
        self.addCleanup(tab.close)
        client = AsyncClient()
        response = await client.post(
            "/notify-async/", {"user": lena, "data": {"from": "asgi"}, "event": "asgi_event"},
            content_type="application/json",
        )
        self.assertEqual(response.status_code, 200)
        answer = response.json()
        self.assertEqual(answer["sent"]["connections"], 1)
        frames = await sync_to_async(tab.until)("async_broadcast")
        named = [(f["event"], json.loads(f["data"])) for f in frames]
        self.assertEqual(named, [("asgi_event", {"from": "asgi"}), ("message", {"many": 1}), ("async_broadcast", {"b": 1})])
        self.assertEqual(carried(frames[0]["id"], answer["sent"]["message_id"]), answer["sent"]["message_id"])
        self.assertEqual(carried(frames[2]["id"], answer["broadcast"]["message_id"]), answer["broadcast"]["message_id"])

        response = await client.get("/listing-async/", {"user": lena})
        listing = response.json()
        self.assertTrue(listing["active"])
        self.assertEqual(listing["ids"], [tab.connection_id])
        self.assertEqual(listing["by_user"][lena], [tab.connection_id])
        self.assertIn(lena, listing["all"]["active_users"])

        with override_settings(SSE_NOTIFY_URL="http://127.0.0.1:%d" % free_port()):
            with self.assertRaises(SSENotifyError):
                await client.post("/notify-async/", {"user": lena, "data": 1}, content_type="application/json")
