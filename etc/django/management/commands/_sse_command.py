"""What the two management commands share: their output and exit codes,
which are those of the ``sse-notify`` command line (``sse-notify cleanup``,
``sse-notify clear``), and the call through ``services.py``.

Plain functions, so that they run (and are tested) without Django; the
command modules wrap them in a ``BaseCommand`` when Django is importable.
"""

import argparse
import sys

try:
    # Installed as apps/<app>/management/commands/: services.py is
    # apps/<app>/services.py.
    from ...services import SSENotifyError, connection_manager
except ImportError:
    # Outside an app package (the tests): services.py on sys.path.
    from services import SSENotifyError, connection_manager

OK = 0
FAILED = 1  # no node answered, an error answer: as the CLI's runtime errors
USAGE = 2  # bad arguments: as the CLI's usage errors

CLEAR_NEEDS_FORCE = "clear removes every connection record of every node; run it with --force"


class UsageError(Exception):
    """Arguments the command refuses (exit code 2)."""


def removed_line(counts):
    """``removed N connections of M users``, worded as ``sse-notify``
    prints it."""
    connections = counts["connection_count"]
    users = counts["user_count"]
    return "removed %d connection%s of %d user%s" % (
        connections,
        "" if connections == 1 else "s",
        users,
        "" if users == 1 else "s",
    )


def check_timeout(timeout):
    if timeout != timeout or timeout in (float("inf"), float("-inf")) or timeout < 0:
        raise UsageError("--timeout: must be a non-negative number of seconds")
    return timeout


def cleanup(timeout):
    """Removes records not heartbeated for ``timeout`` seconds; returns the
    line to print."""
    return removed_line(connection_manager.cleanup_stale_connections(timeout=check_timeout(timeout)))


def clear(force):
    """Removes every connection record (live streams register again);
    returns the line to print."""
    if not force:
        raise UsageError(CLEAR_NEEDS_FORCE)
    return removed_line(connection_manager.clear_all_connections())


def main(prog, description, add_arguments, action, argv=None, stdout=None, stderr=None):
    """Parses ``argv``, runs ``action(args)`` and prints its line; returns
    the exit code instead of exiting, as the CLI would set it."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad arguments, 0 on --help
        return e.code if isinstance(e.code, int) else USAGE
    try:
        line = action(args)
    except UsageError as e:
        stderr.write("%s: %s\n" % (prog, e))
        return USAGE
    except SSENotifyError as e:
        stderr.write("%s: %s\n" % (prog, e))
        return FAILED
    stdout.write(line + "\n")
    return OK


def django_command(help_text, add_arguments, action):
    """A Django ``BaseCommand`` class running ``action(options)``, or None
    when Django is not installed."""
    try:
        from django.core.management.base import BaseCommand, CommandError
    except ImportError:
        return None

    class Command(BaseCommand):
        help = help_text

        def add_arguments(self, parser):
            add_arguments(parser)

        def handle(self, *args, **options):
            try:
                line = action(argparse.Namespace(**options))
            except UsageError as e:
                raise CommandError(str(e), returncode=USAGE)
            except SSENotifyError as e:
                raise CommandError(str(e), returncode=FAILED)
            self.stdout.write(line)

    return Command
