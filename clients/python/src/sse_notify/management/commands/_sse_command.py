"""What the management commands share: the wording and exit codes of the
``sse-notify`` command line (``sse-notify cleanup``, ``clear``,
``connections``, ``topics``), so a sysadmin reads the same thing from
either."""

from django.core.management.base import BaseCommand, CommandError

from ...client import SSENotifyError

FAILED = 1  # no node answered, an error answer: as the CLI's runtime errors
USAGE = 2  # bad arguments: as the CLI's usage errors


def plural(n):
    return "" if n == 1 else "s"


def removed_line(counts):
    """``removed N connections of M users``, worded as ``sse-notify`` prints
    it."""
    connections = counts["connection_count"]
    users = counts["user_count"]
    return "removed %d connection%s of %d user%s" % (connections, plural(connections), users, plural(users))


class SSECommand(BaseCommand):
    """A command whose ``run(**options)`` returns the lines to print; a
    failure of sse-notify exits 1, a usage error 2."""

    def handle(self, *args, **options):
        try:
            for line in self.run(**options):
                self.stdout.write(line)
        except SSENotifyError as e:
            raise CommandError(str(e), returncode=FAILED)

    def usage(self, message):
        return CommandError(message, returncode=USAGE)

    def run(self, **options):
        raise NotImplementedError
