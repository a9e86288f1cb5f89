"""``manage.py clear_all_sse_connections --force``: removes every connection
record of every node, through sse-notify's admin API (live streams stay open
and their nodes register them again); prints ``removed N connections of M
users`` as ``sse-notify clear --force`` does. Without ``--force`` it refuses
and removes nothing. Exit codes: 0 done, 1 sse-notify failed or did not
answer, 2 bad arguments (no ``--force``).
"""

import sys

try:
    from . import _sse_command as common
except ImportError:  # run outside an app package (the tests)
    import _sse_command as common

HELP = "Remove every SSE connection record of every node (sse-notify); needs --force."


def add_arguments(parser):
    parser.add_argument(
        "--force",
        action="store_true",
        help="really remove every record (required)",
    )


def action(args):
    return common.clear(args.force)


def run(argv=None, stdout=None, stderr=None):
    """The command without Django; returns its exit code."""
    return common.main("clear_all_sse_connections", HELP, add_arguments, action, argv, stdout, stderr)


Command = common.django_command(HELP, add_arguments, action)

if __name__ == "__main__":
    sys.exit(run())
