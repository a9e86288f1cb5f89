#!/usr/bin/env bash
# Installs what `cargo test` needs besides the Rust toolchain, on Debian:
#   bash tests/setup.sh && cargo test
# Idempotent: it installs only what is missing, so a second run changes
# nothing. Installing needs root (apt-get); when something is missing and it
# does not run as root, it names what is missing and exits 1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export DEBIAN_FRONTEND=noninteractive

section() {
    printf '\n==== %s ====\n' "$*"
}

# apt-get install, with one apt-get update first (only when something is missing).
apt_updated=
apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/setup.sh: $* missing; installing it needs root (apt-get): run as root, or install it yourself" >&2
        exit 1
    fi
    echo "installing $* with apt-get"
    if [ -z "$apt_updated" ]; then
        apt-get update
        apt_updated=1
    fi
    apt-get install -y "$@" </dev/null
}

# The tests start their own redis-server on a free port (never the one on 6379).
section "redis-server"
if ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server
fi
redis-server --version

# tests/cluster_harness.rs joins six redis-server into a cluster with
# redis-cli (Debian's redis-tools, which redis-server depends on).
section "redis-cli (tests/cluster_harness.rs)"
if ! command -v redis-cli >/dev/null 2>&1; then
    apt_install redis-tools
fi
redis-cli --version

# tests/fd_limit.rs starts the daemon under a small open-file limit with
# util-linux's prlimit (essential on Debian; installed here if missing).
section "prlimit (tests/fd_limit.rs)"
if ! command -v prlimit >/dev/null 2>&1; then
    apt_install util-linux
fi
prlimit --version

# tests/nginx.rs runs a private nginx (its own prefix, config and free port;
# never the system one) and fails when there is none. Debian's package is
# `nginx` (it has the auth_request module the example config needs).
section "nginx (tests/nginx.rs)"
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    apt_install nginx
fi
"$(command -v nginx || echo /usr/sbin/nginx)" -v

# tests/django.rs and tests/django_e2e.rs run the Python package of
# clients/python (its tests, the example site) under Django, and build its
# wheel offline (no build isolation: setuptools >= 77 builds it alone).
section "python3, Django, setuptools (tests/django.rs, tests/django_e2e.rs)"
if ! command -v python3 >/dev/null 2>&1; then
    apt_install python3
fi
python3 --version
django_py='import django, setuptools, sys
sys.exit(0 if django.__version__ == "5.2.19" and int(setuptools.__version__.split(".")[0]) >= 77 else 1)'
if ! python3 -c "$django_py" >/dev/null 2>&1; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip python3-venv
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/setup.sh: python packages Django and setuptools missing; installing them system-wide needs root" >&2
        exit 1
    fi
    pip_args=(-q --disable-pip-version-check --root-user-action=ignore Django==5.2.19 setuptools==80.9.0)
    # A Debian-managed python3 refuses plain installs (PEP 668).
    timeout 600 python3 -m pip install "${pip_args[@]}" ||
        timeout 600 python3 -m pip install --break-system-packages "${pip_args[@]}"
fi
python3 -c 'import django, setuptools; print("Django", django.__version__, "+ setuptools", setuptools.__version__)'
python3 -m venv --help >/dev/null 2>&1 || apt_install python3-venv

# tests/nginx.rs also watches a stream with `curl -N` through that nginx.
section "curl (tests/nginx.rs)"
if ! command -v curl >/dev/null 2>&1; then
    apt_install curl
fi
curl --version | head -n 1

# tests/systemd.rs verifies the unit with systemd-analyze and fails without
# it. Debian ships it in the `systemd` package; only the tool is used (no
# systemd is started), so installing it in a container is fine.
section "systemd-analyze (tests/systemd.rs)"
if ! command -v systemd-analyze >/dev/null 2>&1; then
    apt_install systemd
fi
systemd-analyze --version | head -n 1

# tests/ops_files.rs runs `promtool check rules` on the Prometheus rules
# in etc/prometheus/ and fails without it. Debian ships promtool in the
# `prometheus` package (only the tool is used; no Prometheus is started).
section "promtool (tests/ops_files.rs)"
if ! command -v promtool >/dev/null 2>&1; then
    apt_install --no-install-recommends prometheus
fi
promtool --version 2>&1 | head -n 1

# tests/browser.rs drives Debian's Chromium (never a browser that a tool
# downloads: playwright-core is only the driver).
section "chromium (tests/browser.rs)"
if [ ! -x /usr/bin/chromium ]; then
    apt_install chromium
fi
/usr/bin/chromium --version 2>/dev/null

# tests/browser.rs and tests/clients.rs run Node scripts with the packages
# pinned in tests/browser/package-lock.json (playwright-core, eventsource).
section "node and npm packages (tests/browser.rs, tests/clients.rs)"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
node --version
npm --version
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
    echo "tests/setup.sh: Node.js >= 20 is required (tests/browser/package.json)" >&2
    exit 1
fi
# npm ci starts from scratch every time: skip it when node_modules already
# holds every package at the version package.json pins.
pinned='
    const fs = require("fs");
    const deps = require("./package.json").dependencies;
    for (const [name, version] of Object.entries(deps)) {
        const file = "node_modules/" + name + "/package.json";
        if (!fs.existsSync(file) || JSON.parse(fs.readFileSync(file)).version !== version) process.exit(1);
    }'
if (cd tests/browser && node -e "$pinned") >/dev/null 2>&1; then
    echo "tests/browser/node_modules: every pinned package present"
else
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 timeout 600 \
        npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi

# tests/clients.rs runs tests/clients/sse_client_test.py (httpx + httpx-sse).
section "python httpx and httpx-sse (tests/clients.rs)"
if ! python3 -c 'import httpx, httpx_sse' >/dev/null 2>&1; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/setup.sh: python packages httpx and httpx-sse missing; installing them system-wide needs root" >&2
        exit 1
    fi
    pip_args=(-q --disable-pip-version-check --root-user-action=ignore httpx==0.28.1 httpx-sse==0.4.3)
    # A Debian-managed python3 refuses plain installs (PEP 668).
    timeout 600 python3 -m pip install "${pip_args[@]}" ||
        timeout 600 python3 -m pip install --break-system-packages "${pip_args[@]}"
fi
python3 -c 'import httpx, httpx_sse; print("httpx", httpx.__version__, "+ httpx-sse")'

# tests/clients.rs runs tests/clients/py_clients.py (sseclient-py over
# requests, requests-sse, aiohttp-sse-client2, and curl, installed above);
# tests/public_http.rs checks a stream's framing with h11; and
# tests/metrics_format.rs parses /metrics with prometheus-client's parsers.
section "python SSE clients, h11, prometheus-client (tests/clients.rs, tests/public_http.rs, tests/metrics_format.rs)"
more_py='import h11, prometheus_client, requests, sseclient, requests_sse, aiohttp, aiohttp_sse_client2'
if ! python3 -c "$more_py" >/dev/null 2>&1; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/setup.sh: python packages for tests/clients.rs missing; installing them system-wide needs root" >&2
        exit 1
    fi
    pip_args=(-q --disable-pip-version-check --root-user-action=ignore
        h11==0.16.0 prometheus-client==0.26.0 requests==2.34.2 sseclient-py==1.9.0
        requests-sse==0.5.3 aiohttp==3.14.5 aiohttp-sse-client2==0.3.0)
    # A Debian-managed python3 refuses plain installs (PEP 668).
    timeout 600 python3 -m pip install "${pip_args[@]}" ||
        timeout 600 python3 -m pip install --break-system-packages "${pip_args[@]}"
fi
python3 -c "$more_py; print('h11', h11.__version__, '+ requests', requests.__version__, '+ aiohttp', aiohttp.__version__)"

section "test environment ready: run cargo test"
