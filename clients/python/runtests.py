"""Runs the package's tests with Django's test runner against a running
sse-notify (``cargo test --test django`` starts one and sets):

    SSE_NOTIFY_URL        its admin listener
    SSE_STREAM_URL        its public stream URL
    SSE_TOKEN_NODE_URL    admin listener of a second daemon with api.token set
    SSE_TOKEN_NODE_TOKEN  that token
    SSE_NOTIFY_BIN        the sse-notify binary (tests that start their own)
    SSE_NOTIFY_CLI_CONFIG a CLI config naming the first daemon
    SSE_REDIS_URL         the Redis of that engine ("" for the embedded one)

    cd clients/python && PYTHONPATH=src python3 runtests.py [tests.test_x ...]
"""

import os
import sys

import django
from django.conf import settings
from django.test.utils import get_runner

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    django.setup()
    runner = get_runner(settings)(verbosity=2)
    failures = runner.run_tests(sys.argv[1:] or ["tests"])
    sys.exit(1 if failures else 0)
