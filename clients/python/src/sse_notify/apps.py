"""The Django app: ``INSTALLED_APPS = [..., "sse_notify"]`` brings the
management commands, the system checks, the static JavaScript helper and
the closing of a user's streams at logout."""

from django.apps import AppConfig


class SSENotifyConfig(AppConfig):
    name = "sse_notify"
    verbose_name = "sse-notify"

    def ready(self):
        from django.contrib.auth.signals import user_logged_out

        from . import checks  # noqa: F401 (registers the checks)
        from .signals import disconnect_on_logout

        user_logged_out.connect(disconnect_on_logout, dispatch_uid="sse_notify.disconnect_on_logout")
