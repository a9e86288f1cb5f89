"""Views of the tests' site: async ones (ASGI) that notify through the
package's async calls, and a logout."""

import json

from django.contrib.auth import logout
from django.http import JsonResponse

import sse_notify


async def notify_async(request):
    body = json.loads(request.body)
    sent = await sse_notify.asend_notification(
        body["user"], body["data"], event=body.get("event", "message"),
        all_connections=body.get("all_connections", True),
    )
    many = await sse_notify.asend_many([{"user": body["user"], "data": {"many": 1}}])
    broadcast = await sse_notify.abroadcast_notification({"b": 1}, event="async_broadcast")
    return JsonResponse({"sent": sent, "many": many, "broadcast": broadcast})


async def listing_async(request):
    user = request.GET["user"]
    manager = sse_notify.connection_manager
    pages = [page async for page in manager.aiter_connection_pages(page_size=1)]
    by_user = {u: [c["connection_id"] for c in conns] async for u, conns in manager.aiter_all_connections(2)}
    return JsonResponse({
        "active": await manager.ahas_active_connections(user),
        "ids": await manager.aget_user_connections(user),
        "details": await manager.aget_user_connection_details(user),
        "all": await manager.aget_all_connections(),
        "pages": len(pages),
        "by_user": by_user,
    })


def logout_view(request):
    logout(request)
    return JsonResponse({"ok": True})
