"""A minimal site using sse-notify: a login, a page whose tabs show the
notifications they get, and a view that notifies. Behind nginx configured
as the repository's etc/nginx/sse-notify.conf (the stream at
/notifications/stream/ goes to sse-notify after auth_request to
/notifications/sse-auth/, everything else to this site).

Development settings, from the environment:

    EXAMPLE_DB                the SQLite file (default db.sqlite3 here)
    EXAMPLE_TRUSTED_ORIGINS   origins allowed to POST (the nginx address), comma-separated
    EXAMPLE_STREAM_URL        the stream URL the page opens (default /notifications/stream/)
    EXAMPLE_TOKEN_MODE        "1": sse-notify runs with auth.mode = "token"; the page
                              fetches tokens from /notifications/sse-token/
    SSE_NOTIFY_*              sse-notify's settings (the package's README)
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("EXAMPLE_SECRET_KEY", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("EXAMPLE_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "sse_notify",
    "example_site",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "example_site.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ]
        },
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("EXAMPLE_DB", str(BASE_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
STATIC_URL = "/static/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

EXAMPLE_STREAM_URL = os.environ.get("EXAMPLE_STREAM_URL", "/notifications/stream/")
EXAMPLE_TOKEN_MODE = os.environ.get("EXAMPLE_TOKEN_MODE") == "1"
