#!/usr/bin/env bash
# The Debian package, end to end on this machine (run as root by .ci/run):
# build it with `cargo deb`, install it with dpkg, check its files, owners and
# modes, run the installed daemon as user sse-notify with the installed config
# and open a stream; upgrade from an older version over an edited config;
# remove, then purge, checking what each leaves. The package is purged on
# exit, failed or not. A second run puts the admin listener on a Unix socket
# in /run/sse-notify (as the unit's RuntimeDirectory= makes it) and checks
# the socket's owner and mode, who may connect, and its removal at stop.
#
# The daemon is started by hand (not by systemd): the check must hold in a
# container, where the maintainer scripts skip starting the unit.
#
# The shipped config's redis.url = "" selects the embedded engine: the
# daemon runs on the installed config as it is. A shipped config that names a
# Redis server instead gets a private redis-server on a free port for the run
# (on a copy of the installed config naming it): never the Redis on 6379,
# which may be somebody's.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

pkg=sse-notify
conf_dir=/etc/sse-notify
conf=$conf_dir/sse-notify.toml
unit=/lib/systemd/system/sse-notify.service
# The shipped config's server.listen and server.admin_listen.
public_addr=127.0.0.1:8090
admin_addr=127.0.0.1:8091
# The socket a sysadmin configures with server.admin_listen = "unix:...".
run_dir=/run/sse-notify
admin_sock=$run_dir/admin.sock
# Below any real version, so installing the current package is an upgrade.
old_version=0~previous-1

step() {
    printf '\n-- deb-test: %s\n' "$*"
}

fail() {
    printf '\ndeb-test: FAILED: %s\n' "$*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || fail "must run as root: it installs and purges a package"
for tool in dpkg dpkg-deb dpkg-query dpkg-statoverride setpriv curl getent md5sum; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
cargo deb --version >/dev/null 2>&1 || fail "cargo-deb is not installed (cargo install cargo-deb --locked)"

# The purge at the end must not take away somebody's real installation.
if dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qv '^not-installed$'; then
    fail "package $pkg is already installed here; this test purges it, so it refuses to run"
fi
if getent passwd sse-notify >/dev/null || getent group sse-notify >/dev/null; then
    fail "user or group sse-notify already exists; the purge would delete it"
fi
[ ! -e "$conf_dir" ] || fail "$conf_dir already exists; the purge would delete it"
[ ! -e "$run_dir" ] || fail "$run_dir already exists (a running sse-notify?); this test creates and removes it"

port_in_use() {
    (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null
}
for addr in "$public_addr" "$admin_addr"; do
    if port_in_use "$addr"; then
        fail "$addr is in use: the installed daemon listens there (the shipped config); stop what holds it"
    fi
done

work=$(mktemp -d /tmp/sse-notify-deb-test.XXXXXX)
# The daemon runs as sse-notify and must reach the config copy in here.
chmod 0711 "$work"
daemon_pid=
curl_pid=
redis_pid=

cleanup() {
    local rc=$?
    set +e
    for pid in "$curl_pid" "$daemon_pid" "$redis_pid"; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            wait "$pid" 2>/dev/null
        fi
    done
    rm -rf "$run_dir"
    if dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qv '^not-installed$'; then
        echo "deb-test: purging $pkg"
        dpkg -P "$pkg" >/dev/null
    fi
    if [ "$rc" != 0 ]; then
        for log in daemon.log redis.log; do
            if [ -s "$work/$log" ]; then
                echo "deb-test: last lines of $log:" >&2
                tail -n 30 "$work/$log" >&2
            fi
        done
        echo "deb-test: failed (exit $rc); machine cleaned" >&2
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT

# ---------------------------------------------------------------- build
step "build: cargo build --release, then cargo deb --no-build (two versions)"
start=$SECONDS
cargo build --release --locked --bins
echo "release build took $((SECONDS - start)) s"
cargo deb --no-build --output "$work/current.deb"
# Only its version and config matter: plain strip and light compression
# save a minute over the release package's dbgsym split.
cargo deb --no-build --deb-version "$old_version" --strip --no-dbgsym --fast \
    --output "$work/old-same.deb"
current_version=$(dpkg-deb -f "$work/current.deb" Version)
[ "$(dpkg-deb -f "$work/old-same.deb" Version)" = "$old_version" ] ||
    fail "old package has version $(dpkg-deb -f "$work/old-same.deb" Version), not $old_version"
dpkg --compare-versions "$old_version" lt "$current_version" ||
    fail "$old_version does not sort before $current_version"

# A previous version whose shipped config differs from the current one: the
# case where dpkg must choose between a sysadmin's edit and the new file.
dpkg-deb -R "$work/old-same.deb" "$work/old-tree"
echo "# shipped by $old_version" >>"$work/old-tree$conf"
if [ -f "$work/old-tree/DEBIAN/md5sums" ]; then
    (cd "$work/old-tree" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z |
        xargs -0 md5sum >DEBIAN/md5sums)
fi
dpkg-deb --root-owner-group -b "$work/old-tree" "$work/old-changed.deb" >/dev/null

step "package contents (dpkg -c $work/current.deb)"
dpkg -c "$work/current.deb"
echo
dpkg-deb -f "$work/current.deb"

# ---------------------------------------------------------------- checks
expect_stat() { # PATH OWNER:GROUP MODE
    [ -e "$1" ] || fail "$1 is missing"
    local got
    got=$(stat -c '%U:%G %a' "$1")
    [ "$got" = "$2 $3" ] || fail "$1 is $got, expected $2 $3"
}

check_installed() {
    expect_stat /usr/bin/sse-notify root:root 755
    expect_stat /usr/bin/sse-bench root:root 755
    expect_stat "$unit" root:root 644
    expect_stat "$conf_dir" root:sse-notify 750
    expect_stat "$conf" root:sse-notify 640
    expect_stat /usr/share/doc/sse-notify/examples/nginx/sse-notify.conf root:root 644
    expect_stat /usr/share/doc/sse-notify/examples/django/services.py root:root 644
    grep -qx 'ExecStart=/usr/bin/sse-notify serve -c /etc/sse-notify/sse-notify.toml' "$unit" ||
        fail "$unit does not start /usr/bin/sse-notify with $conf: $(grep '^ExecStart=' "$unit")"
    grep -qx 'User=sse-notify' "$unit" || fail "$unit does not run as User=sse-notify"
    grep -qx 'RuntimeDirectory=sse-notify' "$unit" ||
        fail "$unit has no RuntimeDirectory=sse-notify (the admin socket's directory $run_dir)"
    dpkg-query --control-show "$pkg" conffiles | grep -qx "$conf" ||
        fail "$conf is not a conffile: $(dpkg-query --control-show "$pkg" conffiles)"

    local entry
    entry=$(getent passwd sse-notify) || fail "user sse-notify does not exist"
    local uid home shell
    IFS=: read -r _ _ uid _ _ home shell <<<"$entry"
    [ "$uid" -lt 1000 ] || fail "sse-notify is not a system user (uid $uid)"
    [ "$shell" = /usr/sbin/nologin ] || fail "sse-notify has shell $shell, expected /usr/sbin/nologin"
    [ "$home" = /nonexistent ] || fail "sse-notify has home $home, expected /nonexistent"
    id -nG sse-notify | tr ' ' '\n' | grep -qx sse-notify || fail "sse-notify is not in group sse-notify"

    # Readable by the service, not by everybody (api.token, Redis password).
    setpriv --reuid sse-notify --regid sse-notify --init-groups cat "$conf" >/dev/null ||
        fail "user sse-notify cannot read $conf"
    if setpriv --reuid nobody --regid nogroup --clear-groups cat "$conf" >/dev/null 2>&1; then
        fail "user nobody can read $conf"
    fi

    # Enabled even without a running systemd, so a booted machine starts it.
    [ -L /etc/systemd/system/multi-user.target.wants/sse-notify.service ] ||
        fail "the unit is not enabled (no multi-user.target.wants link)"
}

print_installed_files() {
    echo "installed files (owner:group mode path):"
    dpkg -L "$pkg" | while read -r path; do
        stat -c '  %A %U:%G %04a %n' "$path" || fail "$path is listed by dpkg but missing"
    done
}

# ---------------------------------------------------------------- install
step "install: dpkg -i current ($current_version)"
dpkg -i "$work/current.deb" </dev/null
check_installed
print_installed_files

step "sse-notify check-config -c $conf (as user sse-notify)"
setpriv --reuid sse-notify --regid sse-notify --init-groups \
    /usr/bin/sse-notify check-config -c "$conf" >"$work/check-config.out" ||
    fail "check-config rejected the installed config: $(cat "$work/check-config.out")"
head -n 5 "$work/check-config.out"

# ---------------------------------------------------------------- run
run_conf=$conf
shipped_url=$(grep -m 1 '^url = ' "$conf" || true)
[ -n "$shipped_url" ] || fail "$conf has no redis.url line (url = ...)"
if [ "$shipped_url" = 'url = ""' ]; then
    echo "redis.url is empty: the daemon runs on the embedded engine with $conf as installed"
else
    step "private redis-server (the shipped config has $shipped_url)"
    for tool in redis-server redis-cli python3; do
        command -v "$tool" >/dev/null || fail "$tool is not installed (the shipped config needs Redis)"
    done
    redis_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    [ "$redis_port" != 6379 ] || fail "picked port 6379"
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$work" >"$work/redis.log" 2>&1 &
    redis_pid=$!
    deadline=$((SECONDS + 10))
    until redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG; do
        kill -0 "$redis_pid" 2>/dev/null || fail "redis-server exited: $(cat "$work/redis.log")"
        [ "$SECONDS" -lt "$deadline" ] || fail "redis-server on port $redis_port never answered PING"
        sleep 0.1
    done
    install -d -m 0750 -o root -g sse-notify "$work/conf"
    run_conf=$work/conf/sse-notify.toml
    sed "s|^url = .*|url = \"redis://127.0.0.1:$redis_port/0\"|" "$conf" >"$run_conf"
    chown root:sse-notify "$run_conf"
    chmod 0640 "$run_conf"
    [ "$(diff "$conf" "$run_conf" | grep -c '^[<>]')" = 2 ] ||
        fail "the config copy differs from $conf in more than redis.url"
    echo "daemon config: copy of $conf with redis.url = redis://127.0.0.1:$redis_port/0"
fi

step "start /usr/bin/sse-notify serve as user sse-notify"
for addr in "$public_addr" "$admin_addr"; do
    if port_in_use "$addr"; then
        fail "$addr is in use (taken since the start of this test): the installed daemon listens there"
    fi
done
setpriv --reuid sse-notify --regid sse-notify --init-groups \
    /usr/bin/sse-notify serve -c "$run_conf" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
deadline=$((SECONDS + 40))
until curl -fsS -o /dev/null "http://$admin_addr/healthz" 2>/dev/null; do
    kill -0 "$daemon_pid" 2>/dev/null || fail "the daemon exited: $(cat "$work/daemon.log")"
    [ "$SECONDS" -lt "$deadline" ] ||
        fail "http://$admin_addr/healthz never answered 200: $(tail -n 20 "$work/daemon.log")"
    sleep 0.1
done
daemon_user=$(ps -o user= -p "$daemon_pid" || true)
[ "$daemon_user" = sse-notify ] ||
    fail "the daemon (pid $daemon_pid) runs as '${daemon_user:-nobody: it exited}', not sse-notify"
echo "healthz: $(curl -fsS "http://$admin_addr/healthz")"

step "open a stream as alice on http://$public_addr/notifications/stream/"
curl -sN -H 'X-Remote-User: alice' "http://$public_addr/notifications/stream/" \
    >"$work/stream.out" 2>&1 &
curl_pid=$!
deadline=$((SECONDS + 10))
until grep -qx 'event: connection_established' "$work/stream.out"; do
    kill -0 "$curl_pid" 2>/dev/null || fail "curl ended before connection_established: $(cat "$work/stream.out")"
    [ "$SECONDS" -lt "$deadline" ] ||
        fail "no connection_established within 10 s: $(cat "$work/stream.out")"
    sleep 0.1
done
head -n 6 "$work/stream.out"
kill "$curl_pid"
wait "$curl_pid" 2>/dev/null || true
curl_pid=

step "stop the daemon (SIGTERM)"
kill -TERM "$daemon_pid"
deadline=$((SECONDS + 20))
while kill -0 "$daemon_pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || fail "the daemon did not exit within 20 s of SIGTERM"
    sleep 0.1
done
status=0
wait "$daemon_pid" || status=$?
daemon_pid=
[ "$status" = 0 ] || fail "the daemon exited $status after SIGTERM: $(tail -n 20 "$work/daemon.log")"
echo "exited 0"

# ---------------------------------------------------------------- admin socket
step "admin listener on a Unix socket: $admin_sock"
# What RuntimeDirectory=sse-notify (RuntimeDirectoryMode=0755) makes before
# the unit starts; the daemon is started by hand here.
install -d -m 0755 -o sse-notify -g sse-notify "$run_dir"
install -d -m 0750 -o root -g sse-notify "$work/sock-conf"
sock_conf=$work/sock-conf/sse-notify.toml
sed "s|^admin_listen = .*|admin_listen = \"unix:$admin_sock\"|" "$run_conf" >"$sock_conf"
chown root:sse-notify "$sock_conf"
chmod 0640 "$sock_conf"
grep -qx "admin_listen = \"unix:$admin_sock\"" "$sock_conf" ||
    fail "the config copy has no admin_listen line to point at the socket"
setpriv --reuid sse-notify --regid sse-notify --init-groups \
    /usr/bin/sse-notify serve -c "$sock_conf" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
deadline=$((SECONDS + 40))
until curl -fsS -o /dev/null --unix-socket "$admin_sock" http://localhost/healthz 2>/dev/null; do
    kill -0 "$daemon_pid" 2>/dev/null || fail "the daemon exited: $(cat "$work/daemon.log")"
    [ "$SECONDS" -lt "$deadline" ] ||
        fail "$admin_sock never answered /healthz: $(tail -n 20 "$work/daemon.log")"
    sleep 0.1
done
[ -S "$admin_sock" ] || fail "$admin_sock is not a socket"
expect_stat "$admin_sock" sse-notify:sse-notify 660
health=$(curl -fsS --unix-socket "$admin_sock" http://localhost/healthz)
echo "healthz: $health"
case "$health" in
*"\"admin_listen\":\"unix:$admin_sock\""*) ;;
*) fail "/healthz does not name the socket: $health" ;;
esac
# Who may connect is who may write to the file: the group yes, others no.
setpriv --reuid sse-notify --regid sse-notify --init-groups \
    /usr/bin/sse-notify send '{"deb":"test"}' -c "$sock_conf" >"$work/send.out" ||
    fail "the CLI as sse-notify could not send over $admin_sock: $(cat "$work/send.out")"
echo "send as sse-notify: $(cat "$work/send.out")"
if setpriv --reuid nobody --regid nogroup --clear-groups \
    curl -fsS -o /dev/null --unix-socket "$admin_sock" http://localhost/healthz 2>/dev/null; then
    fail "user nobody can connect to $admin_sock"
fi
kill -TERM "$daemon_pid"
deadline=$((SECONDS + 20))
while kill -0 "$daemon_pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || fail "the daemon did not exit within 20 s of SIGTERM"
    sleep 0.1
done
status=0
wait "$daemon_pid" || status=$?
daemon_pid=
[ "$status" = 0 ] || fail "the daemon exited $status after SIGTERM: $(tail -n 20 "$work/daemon.log")"
[ ! -e "$admin_sock" ] || fail "SIGTERM left $admin_sock behind"
rm -rf "$run_dir"
echo "socket sse-notify:sse-notify 660, nobody refused, removed at stop"

if [ -n "$redis_pid" ]; then
    kill "$redis_pid"
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=
fi

# ---------------------------------------------------------------- purge a fresh install
step "purge the fresh install"
dpkg -P "$pkg" </dev/null

check_gone() {
    [ ! -e "$conf_dir" ] || fail "$conf_dir is left after purge: $(ls -la "$conf_dir")"
    ! getent passwd sse-notify >/dev/null || fail "user sse-notify is left after purge"
    ! getent group sse-notify >/dev/null || fail "group sse-notify is left after purge"
    [ ! -e /usr/bin/sse-notify ] || fail "/usr/bin/sse-notify is left after purge"
    [ ! -e "$unit" ] || fail "$unit is left after purge"
    ! dpkg-statoverride --list | grep -q sse-notify ||
        fail "stat overrides are left after purge: $(dpkg-statoverride --list | grep sse-notify)"
    local left
    left=$(find /etc/systemd /var/lib/systemd/deb-systemd-helper-enabled \
        /var/lib/systemd/deb-systemd-helper-masked -name '*sse-notify*' 2>/dev/null || true)
    [ -z "$left" ] || fail "systemd links or state left after purge: $left"
    dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qv '^not-installed$' &&
        fail "dpkg still knows $pkg after purge"
    return 0
}
check_gone
echo "nothing left"

# ---------------------------------------------------------------- upgrades
edit_conf() {
    echo "# edited by the sysadmin ($1)" >>"$conf"
}

expect_edit_kept() { # MARK
    grep -qx "# edited by the sysadmin ($1)" "$conf" || fail "the upgrade lost the edit of $conf: $(tail -n 3 "$conf")"
    expect_stat "$conf" root:sse-notify 640
    [ "$(dpkg-query -W -f='${Version}' "$pkg")" = "$current_version" ] ||
        fail "installed version is $(dpkg-query -W -f='${Version}' "$pkg"), not $current_version"
}

step "upgrade from $old_version (same shipped config) over an edited config: plain dpkg -i"
dpkg -i "$work/old-same.deb" </dev/null
edit_conf same
# The shipped config did not change, so dpkg keeps the edit without asking.
dpkg -i "$work/current.deb" </dev/null
expect_edit_kept same
[ ! -e "$conf.dpkg-dist" ] || fail "$conf.dpkg-dist appeared though the shipped config did not change"
check_installed
echo "edit kept, no prompt"

step "back to $old_version with a different shipped config, edit, upgrade with --force-confold"
dpkg --force-confdef --force-confold -i "$work/old-changed.deb" </dev/null
edit_conf changed
# The shipped config changed and so did the installed one: dpkg would ask;
# --force-confold (what unattended upgrades pass) keeps the sysadmin's.
dpkg --force-confdef --force-confold -i "$work/current.deb" </dev/null
expect_edit_kept changed
[ -e "$conf.dpkg-dist" ] || fail "no $conf.dpkg-dist: dpkg did not see the shipped config change"
cmp -s "$conf.dpkg-dist" etc/sse-notify.toml || fail "$conf.dpkg-dist is not the current shipped config"
check_installed
echo "edit kept; the new shipped config is $conf.dpkg-dist"

# ---------------------------------------------------------------- remove, purge
step "dpkg -r: the config and the user stay, the binaries go"
dpkg -r "$pkg" </dev/null
[ ! -e /usr/bin/sse-notify ] || fail "/usr/bin/sse-notify is left after remove"
[ ! -e /usr/bin/sse-bench ] || fail "/usr/bin/sse-bench is left after remove"
[ ! -e "$unit" ] || fail "$unit is left after remove"
grep -qx "# edited by the sysadmin (changed)" "$conf" || fail "remove lost $conf or its edit"
expect_stat "$conf" root:sse-notify 640
getent passwd sse-notify >/dev/null || fail "remove deleted user sse-notify"
[ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg")" = config-files ] ||
    fail "after remove dpkg says $(dpkg-query -W -f='${db:Status-Status}' "$pkg"), expected config-files"
echo "config kept: $(stat -c '%U:%G %a %n' "$conf")"

step "dpkg -P: the config and the user go"
dpkg -P "$pkg" </dev/null
check_gone
echo "nothing left"

step "all package checks passed"
