from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

from sse_notify import send_notification


@login_required
def page(request):
    return render(request, "page.html", {
        "stream_url": settings.EXAMPLE_STREAM_URL,
        "token_mode": settings.EXAMPLE_TOKEN_MODE,
    })


@login_required
@require_POST
def notify(request):
    """Notifies the user's tabs: all of them, or with first=1 only the
    first (oldest) one."""
    sent = send_notification(
        request.user,
        {"text": request.POST.get("text", "hello")},
        event="note",
        all_connections=request.POST.get("first") != "1",
    )
    return JsonResponse(sent)
