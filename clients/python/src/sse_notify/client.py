"""The calls a Django site makes to sse-notify's admin API, blocking and
async (``a``-prefixed twins, for ASGI views), over kept-alive connections.

Every failure (sse-notify unreachable, a timeout, an error answer such as
400 for a bad event name or 503 while its Redis is down) raises
``SSENotifyError``: nothing fails silently. A send is never made twice: a
request is retried on a fresh connection only when the daemon surely did not
get it (a kept-alive connection it had closed).

Settings (Django settings when Django is configured, else environment
variables of the same name, else the default):

    SSE_NOTIFY_URL        admin listener of sse-notify   http://127.0.0.1:8091
                          (or unix:///run/sse-notify/admin.sock)
    SSE_NOTIFY_BASE_PATH  its server.base_path           /notifications
    SSE_NOTIFY_TOKEN      its api.token (sent as "Authorization: Bearer")  ""
    SSE_NOTIFY_TIMEOUT    seconds per request            5
"""

import json
import os
from urllib.parse import quote, urlencode

from . import _transport

__all__ = [
    "SSENotifyError",
    "SSEConnectionManager",
    "abroadcast_notification",
    "asend_many",
    "asend_notification",
    "asend_to_topic",
    "atopic_presence",
    "broadcast_notification",
    "connection_manager",
    "send_many",
    "send_notification",
    "send_to_topic",
    "topic_presence",
]

DEFAULTS = {
    "SSE_NOTIFY_URL": "http://127.0.0.1:8091",
    "SSE_NOTIFY_BASE_PATH": "/notifications",
    "SSE_NOTIFY_TOKEN": "",
    "SSE_NOTIFY_TIMEOUT": 5,
    # Token mode (auth.mode = "token"): what sse_notify.tokens signs with.
    "SSE_NOTIFY_JWT_SECRET": "",
    "SSE_NOTIFY_JWT_SECRET_FILE": "",
    "SSE_NOTIFY_JWT_TTL": 300,
    "SSE_NOTIFY_JWT_ISSUER": "",
    "SSE_NOTIFY_JWT_AUDIENCE": "",
    # Close the user's streams when they log out (user_logged_out).
    "SSE_NOTIFY_DISCONNECT_ON_LOGOUT": True,
}


class SSENotifyError(Exception):
    """A call to sse-notify failed.

    ``status`` is the HTTP status of the answer (e.g. 400, 401, 503), or None
    when there was no answer (connection refused, timeout, not HTTP).
    ``message`` says what went wrong (for an error answer, sse-notify's own
    message, which names the bad field).
    """

    def __init__(self, status, message):
        self.status = status
        self.message = message
        super().__init__(status, message)

    def __str__(self):
        if self.status is None:
            return "sse-notify: %s" % self.message
        return "sse-notify: HTTP %s: %s" % (self.status, self.message)


_MISSING = object()
_django_settings = None


def _settings_object():
    global _django_settings
    if _django_settings is None:
        try:
            from django.conf import settings
        except ImportError:
            settings = False
        _django_settings = settings
    return _django_settings


def setting(name):
    """A setting's value: Django's settings, else the environment, else the
    default."""
    settings = _settings_object()
    if settings is not False and settings.configured:
        value = getattr(settings, name, _MISSING)
        if value is not _MISSING:
            return value
    return os.environ.get(name, DEFAULTS[name])


_endpoints = {}


def _endpoint(url):
    endpoint = _endpoints.get(url)
    if endpoint is None:
        try:
            endpoint = _transport.Endpoint(url)
        except _transport.EndpointError as e:
            raise SSENotifyError(None, str(e)) from None
        if len(_endpoints) > 64:
            _endpoints.clear()
        _endpoints[url] = endpoint
    return endpoint


def _timeout(value):
    try:
        timeout = float(value)
    except (TypeError, ValueError):
        timeout = -1
    if not timeout > 0:
        raise SSENotifyError(None, "SSE_NOTIFY_TIMEOUT must be a positive number of seconds")
    return timeout


_encode = None


def _dumps(body):
    """Compact JSON; with Django, its encoder (dates, decimals, UUIDs, lazy
    strings), as JsonResponse encodes them."""
    global _encode
    if _encode is None:
        try:
            from django.core.serializers.json import DjangoJSONEncoder as encoder
        except ImportError:
            encoder = json.JSONEncoder
        _encode = encoder(separators=(",", ":")).encode
    return _encode(body).encode("utf-8")


_CALL_SETTINGS = ("SSE_NOTIFY_URL", "SSE_NOTIFY_BASE_PATH", "SSE_NOTIFY_TOKEN", "SSE_NOTIFY_TIMEOUT")


def _call_settings():
    """The four settings of a call, read together (one look at Django's
    settings object per call: this runs for every notification)."""
    settings = _settings_object()
    values = []
    if settings is not False and settings.configured:
        for name in _CALL_SETTINGS:
            value = getattr(settings, name, _MISSING)
            values.append(os.environ.get(name, DEFAULTS[name]) if value is _MISSING else value)
    else:
        environ = os.environ
        for name in _CALL_SETTINGS:
            values.append(environ.get(name, DEFAULTS[name]))
    return values


def _prepare(method, path, body):
    url, base_path, token, timeout = _call_settings()
    endpoint = _endpoint(url)
    base_path = "/" + str(base_path).strip("/")
    target = endpoint.prefix + (base_path if base_path != "/" else "") + path
    data = _transport.build_request(
        method,
        target,
        endpoint.host_header,
        None if body is None else _dumps(body),
        token,
    )
    return endpoint, target, data, _timeout(timeout)


def _where(method, endpoint, target):
    if endpoint.path is None:
        return "%s %s%s" % (method, endpoint.display, target)
    return "%s %s on %s" % (method, target, endpoint.display)


def _data(method, endpoint, target, response):
    """The ``data`` of a success envelope, or SSENotifyError."""
    status = response.status
    try:
        envelope = json.loads(response.body.decode("utf-8"))
    except ValueError:
        envelope = None
    if not isinstance(envelope, dict):
        if 200 <= status < 300:
            raise SSENotifyError(status, "%s: answer is not JSON" % _where(method, endpoint, target))
        raise SSENotifyError(status, response.reason or "HTTP %d" % status)
    code = envelope.get("code", status)
    if not (200 <= status < 300 and isinstance(code, int) and 200 <= code < 300) or "data" not in envelope:
        message = envelope.get("message") or response.reason or "unexpected answer"
        raise SSENotifyError(code if isinstance(code, int) else status, str(message))
    return envelope["data"]


def _failed(method, endpoint, target, e):
    if isinstance(e, _transport.TransportError) and e.sent and method != "GET":
        why = "%s (not retried: sse-notify may have acted on it)" % e
    else:
        why = str(e)
    return SSENotifyError(None, "%s: %s" % (_where(method, endpoint, target), why))


def call(method, path, body=None):
    """One admin API call; returns the ``data`` of the success envelope."""
    endpoint, target, data, timeout = _prepare(method, path, body)
    try:
        response = _transport.request(endpoint, method, target, data, timeout)
    except (_transport.TransportError, _transport.ProtocolError) as e:
        raise _failed(method, endpoint, target, e) from e
    return _data(method, endpoint, target, response)


async def acall(method, path, body=None):
    """``call`` for asyncio."""
    endpoint, target, data, timeout = _prepare(method, path, body)
    try:
        response = await _transport.arequest(endpoint, method, target, data, timeout)
    except (_transport.TransportError, _transport.ProtocolError) as e:
        raise _failed(method, endpoint, target, e) from e
    return _data(method, endpoint, target, response)


def username(user):
    """The username of a Django user object, or the string given."""
    if user is None:
        raise ValueError("user is required (broadcast_notification() sends to everyone)")
    get_username = getattr(user, "get_username", None)
    if callable(get_username):
        return get_username()
    return str(user)


def user_path(user):
    return "/connections/%s/" % quote(username(user), safe="")


def _topic(topic):
    """A topic name as given; sse-notify checks its characters. Anything
    but a string is refused here, before any request (sse-notify refuses
    ``{"topic": null}`` too: a missing topic is no broadcast)."""
    if not isinstance(topic, str):
        raise ValueError("topic must be a string such as \"doc:42\" (broadcast_notification() sends to everyone)")
    return topic


def topic_path(topic):
    # Topic names may hold "/", ":", "@" and "=": one path segment, encoded.
    return "/topics/%s/" % quote(_topic(topic), safe="")


# Each call is its request (method, path, body), made once here and used by
# both the blocking function and its async twin.


def _send(user, data, event, all_connections):
    body = {"to": username(user), "data": data, "event": event, "all_connections": bool(all_connections)}
    return "POST", "/send/", body


def _broadcast(data, event):
    return "POST", "/send/", {"to": None, "data": data, "event": event}


def _send_to_topic(topic, data, event):
    return "POST", "/send/", {"topic": _topic(topic), "data": data, "event": event}


def send_notification(user, data, event="message", all_connections=True):
    """Sends ``data`` (anything JSON) to ``user`` (a user object or a username):
    to every connection (tab) of the user, or with ``all_connections=False``
    only to their first (oldest) one.

    Returns sse-notify's answer, e.g. ``{"message_id": "...", "to": "alice",
    "event": "message", "all_connections": True, "connections": 2}``;
    ``connections`` is 0 when the user has no open stream (not an error).
    """
    return call(*_send(user, data, event, all_connections))


async def asend_notification(user, data, event="message", all_connections=True):
    """``send_notification`` for async views."""
    return await acall(*_send(user, data, event, all_connections))


def broadcast_notification(data, event="broadcast"):
    """Sends ``data`` to every open connection of every user."""
    return call(*_broadcast(data, event))


async def abroadcast_notification(data, event="broadcast"):
    """``broadcast_notification`` for async views."""
    return await acall(*_broadcast(data, event))


def send_to_topic(topic, data, event="message"):
    """Sends ``data`` to every stream that follows ``topic`` (e.g.
    ``"doc:42"``), whoever its user, on every node.

    Returns sse-notify's answer, e.g. ``{"message_id": "...", "topic":
    "doc:42", "event": "message", "connections": 3}``; ``connections`` is 0
    when no stream follows the topic (not an error).
    """
    return call(*_send_to_topic(topic, data, event))


async def asend_to_topic(topic, data, event="message"):
    """``send_to_topic`` for async views."""
    return await acall(*_send_to_topic(topic, data, event))


def topic_presence(topic):
    """Who follows ``topic`` now, across every node: ``{"topic",
    "connection_count", "user_count", "users": [usernames, sorted],
    "connections": [connection details]}``. A topic nobody follows gives
    zeros and empty lists."""
    return call("GET", topic_path(topic))


async def atopic_presence(topic):
    """``topic_presence`` for async views."""
    return await acall("GET", topic_path(topic))


def _batches(messages, batch_size):
    if not 1 <= int(batch_size) <= 10000:
        raise ValueError("batch_size must be from 1 to sse-notify's api.max_batch")
    bodies = []
    for m in messages:
        if "topic" in m:
            body = {"topic": _topic(m["topic"]), "data": m["data"], "event": m.get("event", "message")}
            # Passed on as given: sse-notify refuses a topic with a user or
            # all_connections, naming the pair, rather than this client
            # silently dropping one.
            if "user" in m:
                body["to"] = None if m["user"] is None else username(m["user"])
            if "all_connections" in m:
                body["all_connections"] = m["all_connections"]
            bodies.append(body)
            continue
        user = m.get("user")
        bodies.append(
            {
                "to": None if user is None else username(user),
                "data": m["data"],
                "event": m.get("event", "message"),
                "all_connections": bool(m.get("all_connections", True)),
            }
        )
    for start in range(0, len(bodies), batch_size):
        yield "POST", "/send/batch/", {"messages": bodies[start:start + batch_size]}


def send_many(messages, batch_size=1000):
    """Sends many messages in few requests (a comment thread, a group):
    ``messages`` is an iterable of dicts with the arguments of
    ``send_notification`` (``user``, ``data``, optional ``event`` and
    ``all_connections``) or of ``send_to_topic`` (``topic``, ``data``,
    optional ``event``); ``user`` None is a broadcast. They are posted
    ``batch_size`` at a time (at most sse-notify's ``api.max_batch``); a bad
    message rejects its whole batch with an SSENotifyError naming
    ``messages[i]`` and the field, and nothing of that batch is sent
    (earlier batches were).

    Returns one answer per message, in order, as ``send_notification``
    does.
    """
    results = []
    for request in _batches(messages, batch_size):
        results.extend(call(*request)["results"])
    return results


async def asend_many(messages, batch_size=1000):
    """``send_many`` for async views."""
    results = []
    for request in _batches(messages, batch_size):
        results.extend((await acall(*request))["results"])
    return results


def _page(page_size, cursor):
    return "GET", "/connections/?" + urlencode({"limit": page_size, "cursor": cursor or ""})


class SSEConnectionManager:
    """The registry of open streams, as sse-notify keeps it (all nodes).
    Each method has an async twin named with an ``a`` in front."""

    def has_active_connections(self, user):
        """True when ``user`` has at least one open stream."""
        return call("GET", user_path(user))["connection_count"] > 0

    async def ahas_active_connections(self, user):
        return (await acall("GET", user_path(user)))["connection_count"] > 0

    def get_user_connections(self, user):
        """The connection ids of ``user``, oldest first."""
        return list(call("GET", user_path(user))["connection_ids"])

    async def aget_user_connections(self, user):
        return list((await acall("GET", user_path(user)))["connection_ids"])

    def get_user_connection_details(self, user):
        """One dict per connection of ``user``, oldest first: ``connection_id``,
        ``username``, ``connection_time``, ``last_heartbeat`` (unix seconds)."""
        return list(call("GET", user_path(user))["connections"])

    async def aget_user_connection_details(self, user):
        return list((await acall("GET", user_path(user)))["connections"])

    def get_all_connections(self):
        """The whole registry: ``active_users``, ``user_count``,
        ``total_connections``, ``connection_details`` (per user)."""
        return call("GET", "/connections/")

    async def aget_all_connections(self):
        return await acall("GET", "/connections/")

    def iter_connection_pages(self, page_size=1000):
        """The whole registry a page at a time, users in name order, so that
        memory stays small however many users are connected. Yields the
        ``data`` of each page: ``active_users`` and ``connection_details``
        of up to ``page_size`` users (1 to 10000), each with all its
        connections; ``user_count`` and ``total_connections`` of the whole
        registry; ``next_cursor`` (None on the last page)."""
        cursor = ""
        while True:
            page = call(*_page(page_size, cursor))
            yield page
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def aiter_connection_pages(self, page_size=1000):
        cursor = ""
        while True:
            page = await acall(*_page(page_size, cursor))
            yield page
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def iter_all_connections(self, page_size=1000):
        """``(username, [connection details, oldest first])`` for every user,
        in name order, read a page at a time."""
        for page in self.iter_connection_pages(page_size):
            for user in page["active_users"]:
                yield user, page["connection_details"].get(user, [])

    async def aiter_all_connections(self, page_size=1000):
        async for page in self.aiter_connection_pages(page_size):
            for user in page["active_users"]:
                yield user, page["connection_details"].get(user, [])

    def disconnect_user(self, user):
        """Closes every stream of ``user`` on every node (e.g. at logout).
        Returns ``{"connection_count": N, "user_count": M}``."""
        return call("DELETE", user_path(user))

    async def adisconnect_user(self, user):
        return await acall("DELETE", user_path(user))

    def cleanup_stale_connections(self, timeout=300):
        """Removes records not heartbeated for ``timeout`` seconds (None: the
        daemon's sweep.stale_timeout_secs). Returns ``{"connection_count": N,
        "user_count": M, "connection_ids": [...]}``."""
        return call("POST", "/cleanup/", {} if timeout is None else {"timeout": timeout})

    async def acleanup_stale_connections(self, timeout=300):
        return await acall("POST", "/cleanup/", {} if timeout is None else {"timeout": timeout})

    def clear_all_connections(self):
        """Removes every connection record; the live streams stay open and are
        registered again by their nodes at once. Returns
        ``{"connection_count": N, "user_count": M}``."""
        return call("POST", "/connections/")

    async def aclear_all_connections(self):
        return await acall("POST", "/connections/")


connection_manager = SSEConnectionManager()
