"""Logging out closes the user's streams (SSE_NOTIFY_DISCONNECT_ON_LOGOUT,
default True): a browser that logged out must not keep receiving the
user's messages. A daemon that does not answer never fails the logout: it
is logged, and the stream's next reconnection is refused by the auth view
anyway."""

import logging

from .client import SSENotifyError, connection_manager, setting

logger = logging.getLogger("sse_notify")


def disconnect_on_logout(sender, request=None, user=None, **kwargs):
    if user is None or not setting("SSE_NOTIFY_DISCONNECT_ON_LOGOUT"):
        return
    try:
        connection_manager.disconnect_user(user)
    except SSENotifyError as e:
        logger.warning("logout of %s: streams not closed: %s", user.get_username(), e)
