"""``manage.py sse_topics [TOPIC] [--json]``: the topics streams follow as
sse-notify lists them (every node), worded as ``sse-notify topics``: a total
line, then one row per topic (TOPIC, CONNECTIONS, USERS); with TOPIC, who
follows it (a count line, then USER, CONNECTION_ID, CONNECTED,
LAST_HEARTBEAT). With ``--json``, the ``data`` object of the admin API's
answer. Exit codes: 0, 1 sse-notify failed or did not answer, 2 a bad topic
name."""

import json
from urllib.parse import urlencode

from ...client import SSENotifyError, call, topic_path
from ._sse_command import SSECommand, plural
from .sse_connections import table

HEADER = ("TOPIC", "CONNECTIONS", "USERS")


def topics_table(topics, header_too):
    rows = [(t["topic"], str(t["connection_count"]), str(t["user_count"])) for t in topics]
    if not rows:
        return []
    widths = [max(len(HEADER[i]), *(len(row[i]) for row in rows)) for i in range(len(HEADER))]
    lines = [HEADER] if header_too else []
    lines.extend(rows)
    return ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]


class Command(SSECommand):
    help = "List the topics open SSE streams follow (sse-notify), or who follows TOPIC."

    def add_arguments(self, parser):
        parser.add_argument("topic", nargs="?", help="only this topic: its users' connections")
        parser.add_argument("--json", action="store_true", help="print the admin API's data object")

    def run(self, topic=None, json=False, **options):
        if topic is not None:
            return self.one_topic(topic, json)
        return self.every_topic(json)

    def one_topic(self, topic, as_json):
        try:
            data = call("GET", topic_path(topic))
        except SSENotifyError as e:
            if e.status == 400:
                raise self.usage("TOPIC: %s" % e.message) from None
            raise
        if as_json:
            yield json.dumps(data, ensure_ascii=False)
            return
        n, users = data["connection_count"], data["user_count"]
        yield "%s: %d connection%s of %d user%s" % (topic, n, plural(n), users, plural(users))
        yield from table(data["connections"], True)

    def every_topic(self, as_json):
        if as_json:
            yield json.dumps(call("GET", "/topics/"), ensure_ascii=False)
            return
        header = True
        cursor = ""
        while True:
            page = call("GET", "/topics/?" + urlencode({"limit": 1000, "cursor": cursor}))
            if cursor == "":
                count = page["topic_count"]
                yield "%d topic%s followed" % (count, plural(count))
            yield from topics_table(page["topics"], header)
            header = header and not page["topics"]
            cursor = page.get("next_cursor")
            if not cursor:
                return
