from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.page, name="page"),
    path("notify/", views.notify, name="notify"),
    path("accounts/", include("django.contrib.auth.urls")),
    # /notifications/sse-auth/ (nginx's auth_request) and sse-token/.
    path("notifications/", include("sse_notify.urls")),
]
