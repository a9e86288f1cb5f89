"""Stream tokens for sse-notify's token mode (``auth.mode = "token"``): JWTs
signed with HS256 by the secret the daemon reads from
``auth.token_secret_file``, with the username in ``sub`` and an ``exp``.

Settings (Django settings, else the environment):

    SSE_NOTIFY_JWT_SECRET       the secret itself (trailing whitespace ignored,
                                as the daemon ignores it in its file)
    SSE_NOTIFY_JWT_SECRET_FILE  or the file it is in (the daemon's file)
    SSE_NOTIFY_JWT_TTL          seconds a token lives (default 300)
    SSE_NOTIFY_JWT_ISSUER       ``iss`` (auth.token_issuer), when set
    SSE_NOTIFY_JWT_AUDIENCE     ``aud`` (auth.token_audience), when set
"""

import base64
import hashlib
import hmac
import json
import time

from .client import setting, username

__all__ = ["TokenConfigError", "stream_token"]


class TokenConfigError(Exception):
    """No usable secret (or TTL) is configured."""


def secret():
    """The signing secret, as bytes, without trailing whitespace."""
    value = setting("SSE_NOTIFY_JWT_SECRET")
    path = setting("SSE_NOTIFY_JWT_SECRET_FILE")
    if value and path:
        raise TokenConfigError("set SSE_NOTIFY_JWT_SECRET or SSE_NOTIFY_JWT_SECRET_FILE, not both")
    if path:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise TokenConfigError("SSE_NOTIFY_JWT_SECRET_FILE %s: %s" % (path, e.strerror or e)) from None
    else:
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value or b"")
    raw = raw.rstrip(b" \t\r\n\x0b\x0c")
    if not raw:
        raise TokenConfigError("no stream token secret: set SSE_NOTIFY_JWT_SECRET or SSE_NOTIFY_JWT_SECRET_FILE")
    return raw


def ttl():
    try:
        value = int(setting("SSE_NOTIFY_JWT_TTL"))
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise TokenConfigError("SSE_NOTIFY_JWT_TTL must be a positive number of seconds")
    return value


def _b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def stream_token(user, lifetime=None, now=None, **claims):
    """``(token, exp)``: a token for ``user`` (a user object or a username)
    valid ``lifetime`` seconds (default SSE_NOTIFY_JWT_TTL). Extra
    ``claims`` are added as given."""
    now = int(time.time() if now is None else now)
    exp = now + (ttl() if lifetime is None else int(lifetime))
    payload = {"sub": username(user), "iat": now, "exp": exp}
    if setting("SSE_NOTIFY_JWT_ISSUER"):
        payload["iss"] = setting("SSE_NOTIFY_JWT_ISSUER")
    if setting("SSE_NOTIFY_JWT_AUDIENCE"):
        payload["aud"] = setting("SSE_NOTIFY_JWT_AUDIENCE")
    payload.update(claims)
    signing_input = (
        _b64(b'{"alg":"HS256","typ":"JWT"}')
        + b"."
        + _b64(json.dumps(payload, separators=(",", ":")).encode("utf-8"))
    )
    signature = hmac.new(secret(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + _b64(signature)).decode("ascii"), exp
