"""``manage.py cleanup_sse_connections [--timeout SECS]``: removes connection
records not heartbeated for SECS seconds (default 300) through sse-notify's
admin API; prints ``removed N connections of M users`` as ``sse-notify
cleanup`` does. Exit codes: 0 done, 1 sse-notify failed or did not answer,
2 bad arguments. sse-notify sweeps stale records by itself: this is for a
manual run."""

import math

from ...client import connection_manager
from ._sse_command import SSECommand, removed_line


class Command(SSECommand):
    help = "Remove SSE connection records not heartbeated for --timeout seconds (sse-notify)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--timeout",
            type=float,
            default=300.0,
            help="seconds without a heartbeat after which a record is stale (default 300)",
        )

    def run(self, timeout, **options):
        if math.isnan(timeout) or math.isinf(timeout) or timeout < 0:
            raise self.usage("--timeout: must be a non-negative number of seconds")
        yield removed_line(connection_manager.cleanup_stale_connections(timeout=timeout))
