"""Client of the sse-notify admin API: drop-in replacement for the Django
app's ``apps/notifications/services.py``.

The old app kept SSE connections inside Django; sse-notify now holds them and
this module only asks it, over HTTP on localhost, to send messages and to
list, clear or clean up connections. The public names are the old ones::

    from apps.notifications.services import (
        send_notification, broadcast_notification, connection_manager)

    send_notification(request.user, {"text": "hi"}, event="new_comment")
    broadcast_notification({"text": "maintenance at 22:00"}, event="announcement")
    connection_manager.has_active_connections(user)

Standard library only. Every call has a timeout, and every failure (sse-notify
unreachable, timeout, an error answer such as 400 for a bad event name or 503
while its Redis is down) raises ``SSENotifyError``: nothing fails silently.

Settings (Django settings when Django is configured, else environment
variables of the same name, else the default):

    SSE_NOTIFY_URL        admin listener of sse-notify   http://127.0.0.1:8091
    SSE_NOTIFY_BASE_PATH  its server.base_path           /notifications
    SSE_NOTIFY_TOKEN      its api.token (sent as "Authorization: Bearer")  ""
    SSE_NOTIFY_TIMEOUT    seconds per request            5
"""

import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request

__all__ = [
    "SSENotifyError",
    "SSEConnectionManager",
    "broadcast_notification",
    "connection_manager",
    "send_notification",
]

_DEFAULTS = {
    "SSE_NOTIFY_URL": "http://127.0.0.1:8091",
    "SSE_NOTIFY_BASE_PATH": "/notifications",
    "SSE_NOTIFY_TOKEN": "",
    "SSE_NOTIFY_TIMEOUT": 5,
}

# The admin API is on localhost: never route it through an http_proxy from
# the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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


def _setting(name):
    try:
        from django.conf import settings

        if settings.configured and hasattr(settings, name):
            return getattr(settings, name)
    except ImportError:
        pass
    return os.environ.get(name, _DEFAULTS[name])


def _username(user):
    """The username of a Django user object, or the string given."""
    if user is None:
        raise ValueError("user is required (broadcast_notification() sends to everyone)")
    get_username = getattr(user, "get_username", None)
    if callable(get_username):
        return get_username()
    return str(user)


def _user_path(user):
    return "/connections/%s/" % urllib.parse.quote(_username(user), safe="")


def _request(method, path, body=None):
    """One admin API call; returns the ``data`` of the success envelope."""
    base = str(_setting("SSE_NOTIFY_URL")).rstrip("/")
    base_path = "/" + str(_setting("SSE_NOTIFY_BASE_PATH")).strip("/")
    if base_path == "/":
        base_path = ""
    url = base + base_path + path
    token = _setting("SSE_NOTIFY_TOKEN")
    try:
        timeout = float(_setting("SSE_NOTIFY_TIMEOUT"))
    except (TypeError, ValueError):
        raise SSENotifyError(None, "SSE_NOTIFY_TIMEOUT must be a number of seconds")

    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = "Bearer %s" % token
    req = urllib.request.Request(url, data=data, headers=headers, method=method)

    try:
        with _opener.open(req, timeout=timeout) as resp:
            status = resp.status
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raw = e.read() if e.fp is not None else b""
        raise SSENotifyError(e.code, _error_message(raw, e.reason)) from e
    except urllib.error.URLError as e:
        raise SSENotifyError(None, "%s %s: %s" % (method, url, e.reason)) from e
    except (OSError, http.client.HTTPException) as e:  # timeouts, resets
        raise SSENotifyError(None, "%s %s: %s" % (method, url, e or type(e).__name__)) from e

    try:
        envelope = json.loads(raw.decode("utf-8"))
    except ValueError as e:
        raise SSENotifyError(status, "%s %s: answer is not JSON" % (method, url)) from e
    if (
        not isinstance(envelope, dict)
        or not 200 <= envelope.get("code", status) < 300
        or "data" not in envelope
    ):
        raise SSENotifyError(
            envelope.get("code", status) if isinstance(envelope, dict) else status,
            _error_message(raw, "unexpected answer"),
        )
    return envelope["data"]


def _error_message(raw, fallback):
    try:
        message = json.loads(raw.decode("utf-8")).get("message")
    except (ValueError, AttributeError, UnicodeDecodeError):
        message = None
    return message or str(fallback)


def send_notification(user, data, event="message", all_connections=True):
    """Sends ``data`` (anything JSON) to ``user`` (a user object or a username):
    to every connection (tab) of the user, or with ``all_connections=False``
    only to their first (oldest) one.

    Returns sse-notify's answer, e.g. ``{"message_id": "...", "to": "alice",
    "event": "message", "all_connections": True, "connections": 2}``;
    ``connections`` is 0 when the user has no open stream (not an error).
    """
    return _request(
        "POST",
        "/send/",
        {
            "to": _username(user),
            "data": data,
            "event": event,
            "all_connections": bool(all_connections),
        },
    )


def send_many(messages, batch_size=1000):
    """Sends many messages in few requests (a comment thread, a group):
    ``messages`` is an iterable of dicts with the arguments of
    ``send_notification`` (``user``, ``data``, optional ``event`` and
    ``all_connections``); ``user`` None is a broadcast. They are posted
    ``batch_size`` at a time (at most sse-notify's ``api.max_batch``); a bad
    message rejects its whole batch with an SSENotifyError naming
    ``messages[i]`` and the field, and nothing of that batch is sent.

    Returns one answer per message, in order, as ``send_notification``
    does.
    """
    bodies = []
    for m in messages:
        user = m.get("user")
        bodies.append(
            {
                "to": None if user is None else _username(user),
                "data": m["data"],
                "event": m.get("event", "message"),
                "all_connections": bool(m.get("all_connections", True)),
            }
        )
    results = []
    for start in range(0, len(bodies), batch_size):
        answer = _request("POST", "/send/batch/", {"messages": bodies[start:start + batch_size]})
        results.extend(answer["results"])
    return results


def broadcast_notification(data, event="broadcast"):
    """Sends ``data`` to every open connection of every user."""
    return _request("POST", "/send/", {"to": None, "data": data, "event": event})


class SSEConnectionManager:
    """The registry of open streams, as sse-notify keeps it (all nodes)."""

    def has_active_connections(self, user):
        """True when ``user`` has at least one open stream."""
        return self._user(user)["connection_count"] > 0

    def get_user_connections(self, user):
        """The connection ids of ``user``, oldest first."""
        return list(self._user(user)["connection_ids"])

    def get_user_connection_details(self, user):
        """One dict per connection of ``user``, oldest first: ``connection_id``,
        ``username``, ``connection_time``, ``last_heartbeat`` (unix seconds)."""
        return list(self._user(user)["connections"])

    def get_all_connections(self):
        """The whole registry: ``active_users``, ``user_count``,
        ``total_connections``, ``connection_details`` (per user)."""
        return _request("GET", "/connections/")

    def iter_connection_pages(self, page_size=1000):
        """The whole registry a page at a time, users in name order, so that
        memory stays small however many users are connected. Yields the
        ``data`` of each page: ``active_users`` and ``connection_details``
        of up to ``page_size`` users (1 to 10000), each with all its
        connections; ``user_count`` and ``total_connections`` of the whole
        registry; ``next_cursor`` (None on the last page)."""
        cursor = ""
        while True:
            query = urllib.parse.urlencode({"limit": page_size, "cursor": cursor})
            page = _request("GET", "/connections/?" + query)
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

    def disconnect_user(self, user):
        """Closes every stream of ``user`` on every node (e.g. at logout).
        Returns ``{"connection_count": N, "user_count": M}``."""
        return _request("DELETE", _user_path(user))

    def cleanup_stale_connections(self, timeout=300):
        """Removes records not heartbeated for ``timeout`` seconds (None: the
        daemon's sweep.stale_timeout_secs). Returns ``{"connection_count": N,
        "user_count": M, "connection_ids": [...]}``."""
        return _request("POST", "/cleanup/", {} if timeout is None else {"timeout": timeout})

    def clear_all_connections(self):
        """Removes every connection record; the live streams stay open and are
        registered again by their nodes at once. Returns
        ``{"connection_count": N, "user_count": M}``."""
        return _request("POST", "/connections/")

    def _user(self, user):
        return _request("GET", _user_path(user))


connection_manager = SSEConnectionManager()
