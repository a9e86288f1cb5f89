from django.urls import include, path

from . import views

urlpatterns = [
    path("notifications/", include("sse_notify.urls")),
    path("notify-async/", views.notify_async),
    path("listing-async/", views.listing_async),
    path("logout/", views.logout_view),
]
