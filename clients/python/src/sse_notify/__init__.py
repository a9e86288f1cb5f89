"""sse-notify for Django: the client of the daemon's admin API (blocking and
async), a Django app with management commands, system checks, the auth view
nginx asks, and a JavaScript helper for the page.

    from sse_notify import send_notification, connection_manager

    send_notification(request.user, {"text": "hi"}, event="new_comment")
    await asend_notification(request.user, {"text": "hi"})  # in async views

Importing this package needs no Django; the Django parts are used only when
``"sse_notify"`` is in ``INSTALLED_APPS``.
"""

from .client import (
    SSEConnectionManager,
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

__version__ = "0.1.0"

__all__ = [
    "SSEConnectionManager",
    "SSENotifyError",
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
