"""``manage.py sse_connections [USER] [--json]``: the registry of open
streams as sse-notify lists it (every node), worded as ``sse-notify
connections``: a total line, then one row per connection (USER,
CONNECTION_ID, CONNECTED, LAST_HEARTBEAT); with USER, that user's. With
``--json``, the ``data`` object of the admin API's answer. Exit codes: 0,
1 sse-notify failed or did not answer."""

import json
import time

from ...client import call, connection_manager, user_path
from ._sse_command import SSECommand, plural

HEADER = ("USER", "CONNECTION_ID", "CONNECTED", "LAST_HEARTBEAT")


def table(records, header_too):
    now = time.time()
    rows = [
        (
            r["username"],
            r["connection_id"],
            "%.0fs ago" % max(now - r["connection_time"], 0),
            "%.0fs ago" % max(now - r["last_heartbeat"], 0),
        )
        for r in records
    ]
    if not rows:
        return []
    widths = [max(len(HEADER[i]), *(len(row[i]) for row in rows)) for i in range(len(HEADER))]
    lines = [HEADER] if header_too else []
    lines.extend(rows)
    return ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]


class Command(SSECommand):
    help = "List the open SSE connections (sse-notify), of every user or of USER."

    def add_arguments(self, parser):
        parser.add_argument("user", nargs="?", help="only this user's connections")
        parser.add_argument("--json", action="store_true", help="print the admin API's data object")

    def run(self, user=None, json=False, **options):
        if user is not None:
            return self.one_user(user, json)
        return self.everyone(json)

    def one_user(self, user, as_json):
        data = call("GET", user_path(user))
        if as_json:
            yield json.dumps(data, ensure_ascii=False)
            return
        details = data["connections"]
        yield "%s: %d connection%s" % (user, len(details), plural(len(details)))
        yield from table(details, True)

    def everyone(self, as_json):
        if as_json:
            yield json.dumps(connection_manager.get_all_connections(), ensure_ascii=False)
            return
        header = True
        for page in connection_manager.iter_connection_pages(page_size=1000):
            if header:
                users, total = page["user_count"], page["total_connections"]
                yield "%d connection%s of %d user%s" % (total, plural(total), users, plural(users))
            records = [r for u in page["active_users"] for r in page["connection_details"].get(u, [])]
            yield from table(records, header)
            header = header and not records
