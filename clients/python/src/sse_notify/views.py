"""The two views a site routes to (``include("sse_notify.urls")``):

- ``sse_auth``: what nginx's ``auth_request`` asks before it lets a stream
  through (header mode): 200 with ``X-Remote-User: <username>`` for a
  logged-in user, 401 otherwise;
- ``sse_token``: a fresh stream token for the logged-in user (token mode),
  ``{"token": "...", "exp": <unix secs>, "expires_in": <secs>}``, which the JavaScript helper
  fetches before the current one expires.
"""

import time

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache

from . import tokens


@never_cache
def sse_auth(request):
    if not request.user.is_authenticated:
        return HttpResponse(status=401)
    response = HttpResponse(status=200)
    # As UTF-8 bytes: sse-notify reads the header as UTF-8, while a str value
    # would leave Django as Latin-1 or MIME-encoded for a non-ASCII username.
    response["X-Remote-User"] = request.user.get_username().encode("utf-8")
    return response


@never_cache
def sse_token(request):
    if not request.user.is_authenticated:
        return JsonResponse({"message": "not logged in"}, status=401)
    try:
        now = int(time.time())
        token, exp = tokens.stream_token(request.user, now=now)
    except tokens.TokenConfigError as e:
        raise ImproperlyConfigured(str(e)) from None
    # expires_in as well as exp: the page's clock may be off.
    return JsonResponse({"token": token, "exp": exp, "expires_in": exp - now})
