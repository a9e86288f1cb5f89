"""``manage.py clear_all_sse_connections --force``: removes every connection
record of every node through sse-notify's admin API (live streams stay open
and their nodes register them again); prints ``removed N connections of M
users`` as ``sse-notify clear --force`` does. Without ``--force`` it refuses
and removes nothing (exit 2); 1 when sse-notify failed or did not answer."""

from ...client import connection_manager
from ._sse_command import SSECommand, removed_line

CLEAR_NEEDS_FORCE = "clear removes every connection record of every node; run it with --force"


class Command(SSECommand):
    help = "Remove every SSE connection record of every node (sse-notify); needs --force."

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="really remove every record (required)")

    def run(self, force, **options):
        if not force:
            raise self.usage(CLEAR_NEEDS_FORCE)
        yield removed_line(connection_manager.clear_all_connections())
