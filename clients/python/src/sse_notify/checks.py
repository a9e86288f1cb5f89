"""Django system checks of the SSE_NOTIFY_* settings (``manage.py check``):
what is wrong is said at deploy time, not at the first notification. No
network call: whether the daemon answers is for ``manage.py
sse_connections`` to tell."""

import ipaddress
import os

from django.core import checks

from . import _transport
from .client import DEFAULTS, setting

TAG = "sse_notify"


def _source(name):
    from django.conf import settings

    if hasattr(settings, name):
        return "settings.%s" % name
    if name in os.environ:
        return "the environment variable %s" % name
    return "the default %s" % name


@checks.register(TAG)
def check_settings(app_configs=None, **kwargs):
    errors = []

    url = setting("SSE_NOTIFY_URL")
    endpoint = None
    if not isinstance(url, str):
        errors.append(checks.Error(
            "%s must be a string, not %s." % (_source("SSE_NOTIFY_URL"), type(url).__name__),
            id="sse_notify.E001",
        ))
    else:
        try:
            endpoint = _transport.Endpoint(url)
        except _transport.EndpointError as e:
            errors.append(checks.Error(
                "%s: %s" % (_source("SSE_NOTIFY_URL"), e),
                hint="sse-notify's server.admin_listen, e.g. http://127.0.0.1:8091 "
                     "or unix:///run/sse-notify/admin.sock",
                id="sse_notify.E001",
            ))
    if endpoint is not None and endpoint.path is None and not _local_host(endpoint.host):
        errors.append(checks.Warning(
            "%s names the host %r: sse-notify answers 421 to a Host that is not an IP "
            "address or localhost unless its api.allowed_hosts lists it."
            % (_source("SSE_NOTIFY_URL"), endpoint.host),
            hint="Add it to api.allowed_hosts in sse-notify.toml, or use an IP address.",
            id="sse_notify.W001",
        ))
    if endpoint is not None and endpoint.prefix:
        errors.append(checks.Warning(
            "%s has a path (%r); the daemon's base path belongs in SSE_NOTIFY_BASE_PATH."
            % (_source("SSE_NOTIFY_URL"), endpoint.prefix),
            hint="Write only the scheme, host and port, e.g. http://127.0.0.1:8091",
            id="sse_notify.W002",
        ))

    base_path = setting("SSE_NOTIFY_BASE_PATH")
    if not isinstance(base_path, str) or any(c in base_path for c in "?# \t\r\n"):
        errors.append(checks.Error(
            "%s must be a path such as %r (sse-notify's server.base_path), not %r."
            % (_source("SSE_NOTIFY_BASE_PATH"), DEFAULTS["SSE_NOTIFY_BASE_PATH"], base_path),
            id="sse_notify.E002",
        ))

    token = setting("SSE_NOTIFY_TOKEN")
    if not isinstance(token, str) or any(c in token for c in "\r\n") or token != token.strip():
        errors.append(checks.Error(
            "%s must be a string without surrounding whitespace or line breaks "
            "(sse-notify's api.token)." % _source("SSE_NOTIFY_TOKEN"),
            id="sse_notify.E003",
        ))

    timeout = setting("SSE_NOTIFY_TIMEOUT")
    try:
        ok = float(timeout) > 0 and not isinstance(timeout, bool)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        errors.append(checks.Error(
            "%s must be a positive number of seconds, not %r." % (_source("SSE_NOTIFY_TIMEOUT"), timeout),
            id="sse_notify.E004",
        ))

    from . import tokens

    if setting("SSE_NOTIFY_JWT_SECRET") or setting("SSE_NOTIFY_JWT_SECRET_FILE"):
        for probe, check_id in ((tokens.secret, "sse_notify.E005"), (tokens.ttl, "sse_notify.E006")):
            try:
                probe()
            except tokens.TokenConfigError as e:
                errors.append(checks.Error(str(e), id=check_id))
    return errors


def _local_host(host):
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
