"""``path("notifications/", include("sse_notify.urls"))`` gives
``/notifications/sse-auth/`` (the URL of the nginx example's
``auth_request``) and ``/notifications/sse-token/`` (token mode)."""

from django.urls import path

from . import views

app_name = "sse_notify"

urlpatterns = [
    path("sse-auth/", views.sse_auth, name="auth"),
    path("sse-token/", views.sse_token, name="token"),
]
