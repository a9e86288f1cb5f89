"""The calls of the package (and their async twins) against the real
daemon: what reaches the streams, what the registry says, the errors, and
where the settings come from."""

import asyncio
import json
import os
import socket
import time
from unittest import mock

from django.test import SimpleTestCase, override_settings

import sse_notify
from sse_notify import (
    SSENotifyError,
    abroadcast_notification,
    asend_many,
    asend_notification,
    asend_to_topic,
    atopic_presence,
    broadcast_notification,
    connection_manager,
    send_many,
    send_notification,
    send_to_topic,
    topic_presence,
)
from sse_notify.client import setting

from .helpers import (
    ADMIN_URL,
    TWO_SEQUENCES,
    Stream,
    User,
    carried,
    carried_all,
    eventually,
    free_port,
    require,
    unique,
)


def setUpModule():
    require("SSE_NOTIFY_URL", "SSE_STREAM_URL", "SSE_TOKEN_NODE_URL", "SSE_TOKEN_NODE_TOKEN")


class StreamsMixin:
    def open(self, username, topics=()):
        stream = Stream(username, topics=topics)
        self.addCleanup(stream.close)
        return stream


class SettingsTest(SimpleTestCase):
    def test_from_the_environment_when_django_settings_lack_them(self):
        self.assertEqual(setting("SSE_NOTIFY_URL"), ADMIN_URL)
        with mock.patch.dict(os.environ, {}, clear=True):
            self.assertEqual(setting("SSE_NOTIFY_URL"), "http://127.0.0.1:8091")
            self.assertEqual(setting("SSE_NOTIFY_BASE_PATH"), "/notifications")
            self.assertEqual(setting("SSE_NOTIFY_TOKEN"), "")
            self.assertEqual(float(setting("SSE_NOTIFY_TIMEOUT")), 5.0)
        with mock.patch.dict(os.environ, {"SSE_NOTIFY_BASE_PATH": "/not-there"}):
            with self.assertRaises(SSENotifyError) as cm:
                connection_manager.has_active_connections("alice")
        self.assertEqual(cm.exception.status, 404, "the base path from the environment is used")

    def test_django_settings_come_first(self):
        with override_settings(SSE_NOTIFY_BASE_PATH="/from-django", SSE_NOTIFY_TIMEOUT=2):
            with mock.patch.dict(os.environ, {"SSE_NOTIFY_BASE_PATH": "/notifications"}):
                self.assertEqual(setting("SSE_NOTIFY_BASE_PATH"), "/from-django")
                self.assertEqual(setting("SSE_NOTIFY_TIMEOUT"), 2)
                with self.assertRaises(SSENotifyError) as cm:
                    connection_manager.has_active_connections("alice")
                self.assertEqual(cm.exception.status, 404, "the base path from settings is used")
        # Settings gone again: the environment's (the daemon's real path).
        self.assertFalse(connection_manager.has_active_connections(unique("nobody")))
        with override_settings(SSE_NOTIFY_URL=ADMIN_URL + "/", SSE_NOTIFY_BASE_PATH="notifications/"):
            self.assertEqual(send_notification(unique("nobody"), 1)["connections"], 0)

    def test_bad_settings_raise_sse_notify_error(self):
        for settings, words in (
            ({"SSE_NOTIFY_URL": "https://127.0.0.1:8091"}, "https"),
            ({"SSE_NOTIFY_URL": "ftp://x"}, "http://host:port"),
            ({"SSE_NOTIFY_URL": "unix:relative.sock"}, "absolute"),
            ({"SSE_NOTIFY_TIMEOUT": "soon"}, "SSE_NOTIFY_TIMEOUT"),
            ({"SSE_NOTIFY_TIMEOUT": 0}, "SSE_NOTIFY_TIMEOUT"),
        ):
            with self.subTest(settings=settings), override_settings(**settings):
                with self.assertRaises(SSENotifyError) as cm:
                    send_notification("alice", 1)
                self.assertIsNone(cm.exception.status)
                self.assertIn(words, cm.exception.message)

    def test_the_compatibility_module_re_exports_the_package(self):
        import importlib.util
        from pathlib import Path

        path = Path(__file__).resolve().parents[3] / "etc" / "django" / "services.py"
        spec = importlib.util.spec_from_file_location("compat_services", path)
        services = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(services)
        for name in sse_notify.__all__:
            self.assertIs(getattr(services, name), getattr(sse_notify, name), name)
        self.assertIn("send_notification", services.__all__)


class SendTest(StreamsMixin, SimpleTestCase):
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
        self.assertEqual(carried(frame["id"], sent["message_id"]), sent["message_id"])

        # A user object works too (its get_username(), not str()), and the
        # default event is "message".
        sent = send_notification(User(alice), "plain string")
        self.assertEqual(sent["to"], alice)
        self.assertEqual(sent["event"], "message")
        frame = tab.next_named("message")
        self.assertEqual(frame["data"], '"plain string"')
        self.assertEqual(carried(frame["id"], sent["message_id"]), sent["message_id"])

        # Django's encoder, as JsonResponse: dates, decimals, lazy strings.
        import datetime
        import decimal

        from django.utils.translation import gettext_lazy

        when = datetime.datetime(2026, 1, 2, 3, 4, 5)
        send_notification(alice, {"at": when, "price": decimal.Decimal("1.50"), "s": gettext_lazy("Yes")})
        self.assertEqual(
            json.loads(tab.next_named("message")["data"]),
            {"at": "2026-01-02T03:04:05", "price": "1.50", "s": "Yes"},
        )

        # Nobody connected: not an error, 0 connections.
        self.assertEqual(send_notification(unique("nobody"), {"x": 1})["connections"], 0)

    def test_all_connections_false_reaches_only_the_oldest_tab(self):
        bob = unique("bob")
        first, second = self.open(bob), self.open(bob)
        only_first = send_notification(bob, {"n": 1}, all_connections=False)
        self.assertIs(only_first["all_connections"], False)
        self.assertEqual(only_first["connections"], 1)
        both = send_notification(bob, {"n": 2})
        self.assertEqual(both["connections"], 2)
        self.assertEqual(carried(first.next_named("message")["id"], only_first["message_id"]), only_first["message_id"])
        self.assertEqual(carried(first.next_named("message")["id"], both["message_id"]), both["message_id"])
        # The second tab's first message is the second send.
        self.assertEqual(carried(second.next_named("message")["id"], both["message_id"]), both["message_id"])

    def test_broadcast_notification_reaches_every_user(self):
        tabs = [self.open(unique("carol")), self.open(unique("dave"))]
        sent = broadcast_notification({"text": "maintenance at 22:00"})
        self.assertIsNone(sent["to"])
        self.assertEqual(sent["event"], "broadcast")
        self.assertGreaterEqual(sent["connections"], 2)
        for tab in tabs:
            frame = tab.next_named("broadcast")
            self.assertEqual(carried(frame["id"], sent["message_id"]), sent["message_id"])
            self.assertEqual(json.loads(frame["data"]), {"text": "maintenance at 22:00"})
        broadcast_notification([1, 2], event="announcement")
        for tab in tabs:
            self.assertEqual(tab.next_named("announcement")["data"], "[1,2]")

    def test_send_many_posts_batches_and_answers_in_order(self):
        erin, finn = unique("erin"), unique("finn")
        erin_tab, finn_tab = self.open(erin), self.open(finn)
        sent = send_many(
            [
                {"user": erin, "data": {"n": 1}},
                {"user": User(finn), "data": {"n": 2}, "event": "news"},
                {"user": erin, "data": {"n": 3}, "all_connections": False},
                {"user": None, "data": {"n": 4}, "event": "to_all"},
            ],
            batch_size=2,
        )
        self.assertEqual([s["to"] for s in sent], [erin, finn, erin, None])
        self.assertEqual([s["connections"] for s in sent[:3]], [1, 1, 1])
        self.assertEqual(carried(erin_tab.next_named("message")["id"], sent[0]["message_id"]), sent[0]["message_id"])
        self.assertEqual(carried(finn_tab.next_named("news")["id"], sent[1]["message_id"]), sent[1]["message_id"])
        self.assertEqual(carried(erin_tab.next_named("message")["id"], sent[2]["message_id"]), sent[2]["message_id"])
        self.assertEqual(carried(finn_tab.next_named("to_all")["id"], sent[3]["message_id"]), sent[3]["message_id"])
        with self.assertRaises(SSENotifyError) as caught:
            send_many([{"user": erin, "data": 1}, {"user": erin, "data": 2, "event": "bad event!"}])
        self.assertEqual(caught.exception.status, 400)
        self.assertIn("messages[1].event", str(caught.exception))
        self.assertEqual(send_many([]), [])

    def test_unicode_and_reserved_characters_in_usernames(self):
        for name in ("zoë.日本+test@example.com", "a/b?c#d%20 e&f=g"):
            with self.subTest(name=name):
                tab = self.open(name)
                self.assertEqual(tab.username, name)
                self.assertTrue(connection_manager.has_active_connections(name))
                self.assertEqual(connection_manager.get_user_connections(name), [tab.connection_id])
                sent = send_notification(name, {"to": name})
                self.assertEqual((sent["to"], sent["connections"]), (name, 1))
                self.assertEqual(json.loads(tab.next_named("message")["data"]), {"to": name})
                tab.close()
                self.assertTrue(eventually(lambda: not connection_manager.has_active_connections(name)))


class RegistryTest(StreamsMixin, SimpleTestCase):
    def test_connection_manager_sees_open_and_closed_streams(self):
        erin = unique("erin")
        self.assertFalse(connection_manager.has_active_connections(erin))
        self.assertEqual(connection_manager.get_user_connections(erin), [])
        self.assertEqual(connection_manager.get_user_connection_details(erin), [])

        first, second = self.open(erin), self.open(erin)
        self.assertTrue(connection_manager.has_active_connections(User(erin)))
        self.assertEqual(
            connection_manager.get_user_connections(erin), [first.connection_id, second.connection_id]
        )
        details = connection_manager.get_user_connection_details(erin)
        for detail, tab in zip(details, (first, second)):
            self.assertEqual(detail["connection_id"], tab.connection_id)
            self.assertEqual(detail["username"], erin)
            self.assertAlmostEqual(detail["connection_time"], tab.connection_time, places=3)
            self.assertGreaterEqual(detail["last_heartbeat"], detail["connection_time"])
        everything = connection_manager.get_all_connections()
        self.assertIn(erin, everything["active_users"])
        self.assertEqual(everything["connection_details"][erin], details)

        first.close()
        self.assertTrue(
            eventually(lambda: connection_manager.get_user_connections(erin) == [second.connection_id]),
            "the closed tab's record is removed, the other one stays",
        )

    def test_connection_pages_list_every_user_once_in_name_order(self):
        prefix = unique("pager")
        names = [prefix + "-c", prefix + "-a", prefix + "-b"]
        tabs = {name: self.open(name) for name in names}
        self.open(prefix + "-a")
        pages = list(connection_manager.iter_connection_pages(page_size=1))
        self.assertGreaterEqual(len(pages), 3)
        listed = [u for page in pages for u in page["active_users"]]
        self.assertIsNone(pages[-1]["next_cursor"])
        self.assertEqual(listed, sorted(set(listed)), "name order, each user once")
        self.assertEqual([u for u in listed if u.startswith(prefix)], sorted(names))
        by_user = dict(connection_manager.iter_all_connections(page_size=2))
        self.assertEqual([c["connection_id"] for c in by_user[prefix + "-b"]], [tabs[prefix + "-b"].connection_id])
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
        self.assertGreaterEqual(counts["connection_count"], 1)
        self.assertTrue(eventually(lambda: connection_manager.get_user_connections(frank) == [tab.connection_id]))
        sent = send_notification(frank, {"after": "clear"})
        self.assertEqual(carried(tab.next_named("message")["id"], sent["message_id"]), sent["message_id"])

    def test_cleanup_stale_connections(self):
        gina = unique("gina")
        tab = self.open(gina)
        counts = connection_manager.cleanup_stale_connections(timeout=300)
        self.assertEqual(sorted(counts), ["connection_count", "connection_ids", "user_count"])
        self.assertNotIn(tab.connection_id, counts["connection_ids"])
        counts = connection_manager.cleanup_stale_connections(timeout=None)
        self.assertNotIn(tab.connection_id, counts["connection_ids"])
        # With timeout 0 every record is "stale": counted as removed (a live
        # one is written back by its node; when is the daemon's business, so
        # a full clear makes sure of it for the tests that follow).
        time.sleep(0.01)
        counts = connection_manager.cleanup_stale_connections(timeout=0)
        self.assertIn(tab.connection_id, counts["connection_ids"])
        self.assertEqual(counts["connection_count"], len(counts["connection_ids"]))
        connection_manager.clear_all_connections()
        self.assertTrue(eventually(lambda: connection_manager.get_user_connections(gina) == [tab.connection_id]))

    def test_disconnect_user_closes_the_streams(self):
        hank = unique("hank")
        tabs = [self.open(hank), self.open(hank)]
        self.assertEqual(connection_manager.disconnect_user(hank), {"connection_count": 2, "user_count": 1})
        for tab in tabs:
            self.assertTrue(tab.ends(), "a disconnected user's stream is closed")
        self.assertFalse(connection_manager.has_active_connections(hank))


class TopicsTest(StreamsMixin, SimpleTestCase):
    def test_send_to_topic_reaches_its_followers_only(self):
        doc = unique("doc:")
        jane, kim = unique("jane"), unique("kim")
        jane_reads = self.open(jane, topics=[doc])
        jane_elsewhere = self.open(jane)
        kim_reads = self.open(kim, topics=["team:7", doc])
        self.assertEqual(kim_reads.topics, sorted(["team:7", doc]))

        sent = send_to_topic(doc, {"comment": 1}, event="new_comment")
        self.assertEqual(sorted(sent), ["connections", "event", "message_id", "topic"])
        self.assertEqual((sent["topic"], sent["event"], sent["connections"]), (doc, "new_comment", 2))
        for tab in (jane_reads, kim_reads):
            frame = tab.next_named("new_comment")
            self.assertEqual(carried(frame["id"], sent["message_id"]), sent["message_id"])
            self.assertEqual(json.loads(frame["data"]), {"comment": 1})
        # The tab that does not follow the topic gets the next message to
        # its user, not the topic's.
        after = send_notification(jane, "after")
        self.assertEqual(carried(jane_elsewhere.next_event()["id"], after["message_id"]), after["message_id"])
        again = send_to_topic(doc, 2)
        self.assertEqual(again["event"], "message")
        self.assertEqual(
            [carried(jane_reads.next_event()["id"], m["message_id"]) for m in (after, again)],
            [after["message_id"], again["message_id"]],
            "a tab that follows the topic gets its user's messages too, in id order",
        )

        nobody = send_to_topic(unique("doc:"), 1)
        self.assertEqual(nobody["connections"], 0, "a topic nobody follows is not an error")

    def test_topic_presence_counts_users_and_connections(self):
        # Every character a topic name may hold, "/" too: one path segment.
        topic = unique("team/7:ops@eu=")
        lee, max_ = unique("lee"), unique("max")
        tabs = [self.open(lee, topics=[topic]), self.open(lee, topics=[topic]), self.open(max_, topics=[topic])]
        self.open(max_)

        presence = topic_presence(topic)
        self.assertEqual(
            sorted(presence), ["connection_count", "connections", "topic", "user_count", "users"]
        )
        self.assertEqual(presence["topic"], topic)
        self.assertEqual((presence["connection_count"], presence["user_count"]), (3, 2))
        self.assertEqual(presence["users"], sorted([lee, max_]))
        self.assertEqual(
            sorted(c["connection_id"] for c in presence["connections"]), sorted(t.connection_id for t in tabs)
        )
        for c in presence["connections"]:
            self.assertEqual(c["topics"], [topic])

        tabs[2].close()
        self.assertTrue(
            eventually(lambda: topic_presence(topic)["users"] == [lee]), "a closed stream leaves the topic"
        )
        for tab in tabs[:2]:
            tab.close()
        self.assertTrue(eventually(lambda: topic_presence(topic)["connection_count"] == 0))
        self.assertEqual(
            topic_presence(topic),
            {"topic": topic, "connection_count": 0, "user_count": 0, "users": [], "connections": []},
            "presence, not existence: a topic nobody follows is zeros",
        )

    def test_send_many_takes_topic_messages(self):
        doc = unique("doc:")
        nell = unique("nell")
        tab = self.open(nell, topics=[doc])
        sent = send_many(
            [{"topic": doc, "data": {"n": 1}}, {"user": nell, "data": {"n": 2}}, {"topic": doc, "data": 3, "event": "x"}]
        )
        self.assertEqual([s.get("topic") for s in sent], [doc, None, doc])
        self.assertEqual([s["connections"] for s in sent], [1, 1, 1])
        ids = [s["message_id"] for s in sent]
        got = carried_all([tab.next_event()["id"] for _ in sent], ids)
        if TWO_SEQUENCES:
            # In order within each sequence only.
            got, ids = sorted(got), sorted(ids)
        self.assertEqual(got, ids)
        # A topic with a user is refused whole, naming the pair.
        with self.assertRaises(SSENotifyError) as cm:
            send_many([{"topic": doc, "data": 4}, {"topic": doc, "user": nell, "data": 5}])
        self.assertEqual(cm.exception.status, 400)
        self.assertIn("messages[1]", cm.exception.message)
        self.assertIn("topic", cm.exception.message)
        self.assertEqual(send_to_topic(doc, "next")["connections"], 1)
        self.assertEqual(tab.next_event()["data"], '"next"', "nothing of the refused batch was sent")

    def test_bad_topics_raise(self):
        for bad in ("", "doc 42", "doc,42", "doc:*", "x" * 129):
            with self.subTest(topic=bad):
                with self.assertRaises(SSENotifyError) as cm:
                    send_to_topic(bad, 1)
                self.assertEqual(cm.exception.status, 400)
                self.assertIn("topic", cm.exception.message)
        with self.assertRaises(SSENotifyError) as cm:
            topic_presence("doc 42")
        self.assertEqual(cm.exception.status, 400)
        for not_a_name in (None, 42, ["doc:1"]):
            with self.subTest(topic=not_a_name):
                with self.assertRaises(ValueError):
                    send_to_topic(not_a_name, 1)
                with self.assertRaises(ValueError):
                    topic_presence(not_a_name)

    def test_async_twins(self):
        doc = unique("doc:")
        otto = unique("otto")
        tab = self.open(otto, topics=[doc])

        async def scenario():
            sent = await asend_to_topic(doc, {"a": 1}, event="async_topic")
            return sent, await atopic_presence(doc)

        sent, presence = asyncio.run(scenario())
        self.assertEqual((sent["topic"], sent["connections"]), (doc, 1))
        self.assertEqual(carried(tab.next_named("async_topic")["id"], sent["message_id"]), sent["message_id"])
        self.assertEqual((presence["users"], presence["connection_count"]), ([otto], 1))


class ErrorsTest(SimpleTestCase):
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
        # Too large for api.max_body_bytes: the daemon's 413, also when it
        # stops reading the body early.
        for size in (70_000, 5_000_000):
            with self.assertRaises(SSENotifyError) as cm:
                send_notification("alice", "x" * size)
            self.assertEqual(cm.exception.status, 413, size)
        # ... and the connections it leaves serve the next call.
        self.assertEqual(send_notification(unique("nobody"), 1)["connections"], 0)

    def test_a_stopped_daemon_raises(self):
        port = free_port()  # nobody listens: connection refused
        with mock.patch.dict(os.environ, {"SSE_NOTIFY_URL": "http://127.0.0.1:%d" % port}):
            for call in (
                lambda: send_notification("alice", 1),
                lambda: broadcast_notification(1),
                lambda: send_many([{"user": "a", "data": 1}]),
                lambda: connection_manager.has_active_connections("alice"),
                lambda: connection_manager.clear_all_connections(),
                lambda: asyncio.run(asend_notification("alice", 1)),
                lambda: asyncio.run(connection_manager.aget_all_connections()),
            ):
                with self.assertRaises(SSENotifyError) as cm:
                    call()
                self.assertIsNone(cm.exception.status)
                self.assertIn("127.0.0.1:%d" % port, cm.exception.message)

    def test_a_daemon_that_does_not_answer_times_out(self):
        silent = socket.socket()  # accepts (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        self.addCleanup(silent.close)
        url = "http://127.0.0.1:%d" % silent.getsockname()[1]
        with mock.patch.dict(os.environ, {"SSE_NOTIFY_URL": url, "SSE_NOTIFY_TIMEOUT": "0.5"}):
            for call in (lambda: send_notification("alice", 1), lambda: asyncio.run(asend_notification("a", 1))):
                started = time.monotonic()
                with self.assertRaises(SSENotifyError) as cm:
                    call()
                elapsed = time.monotonic() - started
                self.assertIsNone(cm.exception.status)
                self.assertIn("timed out", cm.exception.message)
                self.assertLess(elapsed, 5, "the timeout applies")
                self.assertGreaterEqual(elapsed, 0.4)

    def test_api_token(self):
        url, token = os.environ["SSE_TOKEN_NODE_URL"], os.environ["SSE_TOKEN_NODE_TOKEN"]
        with override_settings(SSE_NOTIFY_URL=url, SSE_NOTIFY_TOKEN=token):
            self.assertEqual(send_notification("alice", 1)["connections"], 0)
            self.assertFalse(connection_manager.has_active_connections("alice"))
            self.assertEqual(asyncio.run(asend_notification("alice", 1))["connections"], 0)
        for wrong in ("", "not-the-token"):
            with override_settings(SSE_NOTIFY_URL=url, SSE_NOTIFY_TOKEN=wrong):
                with self.assertRaises(SSENotifyError) as cm:
                    send_notification("alice", 1)
                self.assertEqual(cm.exception.status, 401)


class AsyncCallsTest(StreamsMixin, SimpleTestCase):
    """The async twins, awaited directly (the ASGI views are in
    test_django)."""

    def test_async_twins(self):
        ivy = unique("ivy")
        tab, other = self.open(ivy), self.open(ivy)

        async def scenario():
            sent = await asend_notification(ivy, {"a": 1}, event="async_event", all_connections=False)
            many = await asend_many([{"user": ivy, "data": {"m": i}} for i in range(3)], batch_size=2)
            broadcast = await abroadcast_notification({"b": 1}, event="async_all")
            manager = connection_manager
            listing = {
                "active": await manager.ahas_active_connections(ivy),
                "ids": await manager.aget_user_connections(ivy),
                "details": await manager.aget_user_connection_details(ivy),
                "all": await manager.aget_all_connections(),
                "pages": [p async for p in manager.aiter_connection_pages(page_size=1)],
                "by_user": {u: c async for u, c in manager.aiter_all_connections(page_size=2)},
                "cleanup": await manager.acleanup_stale_connections(timeout=300),
            }
            # Many at once on one loop: each takes its own connection.
            concurrent = await asyncio.gather(*[asend_notification(ivy, {"c": i}) for i in range(10)])
            return sent, many, broadcast, listing, concurrent

        sent, many, broadcast, listing, concurrent = asyncio.run(scenario())
        self.assertEqual((sent["event"], sent["connections"]), ("async_event", 1))
        self.assertEqual(carried(tab.next_named("async_event")["id"], sent["message_id"]), sent["message_id"])
        self.assertEqual([m["connections"] for m in many], [2, 2, 2])
        self.assertEqual(listing["ids"], [tab.connection_id, other.connection_id])
        self.assertTrue(listing["active"])
        self.assertEqual([d["connection_id"] for d in listing["details"]], listing["ids"])
        self.assertIn(ivy, listing["all"]["active_users"])
        self.assertIn(ivy, [u for p in listing["pages"] for u in p["active_users"]])
        self.assertEqual(len(listing["by_user"][ivy]), 2)
        self.assertNotIn(tab.connection_id, listing["cleanup"]["connection_ids"])
        frames = other.until("async_all")
        self.assertEqual([json.loads(f["data"]) for f in frames if f["event"] == "message"],
                         [{"m": 0}, {"m": 1}, {"m": 2}])
        self.assertEqual(carried(frames[-1]["id"], broadcast["message_id"]), broadcast["message_id"])
        self.assertEqual(len({c["message_id"] for c in concurrent}), 10)
        got = sorted(json.loads(other.next_named("message")["data"])["c"] for _ in range(10))
        self.assertEqual(got, list(range(10)))

        async def disconnect():
            return await connection_manager.adisconnect_user(ivy)

        self.assertEqual(asyncio.run(disconnect()), {"connection_count": 2, "user_count": 1})
        self.assertTrue(tab.ends())

        async def clear():
            return await connection_manager.aclear_all_connections()

        self.assertEqual(sorted(asyncio.run(clear())), ["connection_count", "user_count"])
