"""``manage.py cleanup_sse_connections [--timeout SECS]``: removes connection
records not heartbeated for SECS seconds (default 300), through sse-notify's
admin API; prints ``removed N connections of M users`` as
``sse-notify cleanup`` does. Exit codes: 0 done, 1 sse-notify failed or did
not answer, 2 bad arguments.

sse-notify sweeps stale records by itself: this is for a manual run.
"""

import sys

try:
    from . import _sse_command as common
except ImportError:  # run outside an app package (the tests)
    import _sse_command as common

HELP = "Remove SSE connection records not heartbeated for --timeout seconds (sse-notify)."


def add_arguments(parser):
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds without a heartbeat after which a record is stale (default 300)",
    )


def action(args):
    return common.cleanup(args.timeout)


def run(argv=None, stdout=None, stderr=None):
    """The command without Django; returns its exit code."""
    return common.main("cleanup_sse_connections", HELP, add_arguments, action, argv, stdout, stderr)


Command = common.django_command(HELP, add_arguments, action)

if __name__ == "__main__":
    sys.exit(run())
