"""Compatibility module for sites that import
``apps.notifications.services`` (the old Django app's module): the same
names, now from the ``sse-notify`` Python package (``pip install
./clients/python`` from the sse-notify repository), which keeps connections
to the daemon alive, has async twins of every call, and, with "sse_notify"
in INSTALLED_APPS, the management commands.

Copy this file to ``apps/notifications/services.py``; new code imports
``sse_notify`` directly.
"""

from sse_notify import (
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
