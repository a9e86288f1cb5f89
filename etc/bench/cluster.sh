#!/usr/bin/env bash
# How the Redis engine's work spreads over a Redis Cluster's primaries
# (README "How far it grows"): for each primary count, a throwaway local
# cluster of that many primaries (no replicas), one sse-notify node on it
# (history off, or on with HISTORY=1), one stream per user and one
# sse-bench sending unicast
# messages to random users of them. Prints one table row per run: sends
# per second and the delivery ratio (from sse-bench); over all primaries,
# Redis CPU, script calls and commands (those the scripts run included)
# per send; each primary's share of the script calls (eval, evalsha,
# fcall and their _ro forms), of all commands (INFO commandstats) and of
# the CPU (INFO cpu, used_cpu_sys + used_cpu_user); and how far the
# furthest primary is from an even share (1/N) on each. Counted from the
# moment the streams are open (CONFIG RESETSTAT on every primary) until
# sse-bench exits.
#
#   etc/bench/cluster.sh [PRIMARY_COUNTS...]      # default: 1 3
#   etc/bench/cluster.sh 1 3 1 3                  # each twice
#
# Environment: SSE_NOTIFY (default target/release/sse-notify), SSE_BENCH
# (default target/release/sse-bench), REDIS_SERVER (default redis-server),
# USERS (300, one stream each), MESSAGES (20000), PUBLISHERS (4), HISTORY
# (0; 1 keeps every message, history.size 100).
# Needs redis-cli (Redis 7) and python3.
# Build first: cargo build --release --bins
set -euo pipefail

cd "$(dirname "$0")/../.."
SSE_NOTIFY=${SSE_NOTIFY:-target/release/sse-notify}
SSE_BENCH=${SSE_BENCH:-target/release/sse-bench}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
USERS=${USERS:-300}
MESSAGES=${MESSAGES:-20000}
PUBLISHERS=${PUBLISHERS:-4}
HISTORY=${HISTORY:-0}
case "$HISTORY" in 0) HISTORY_ON=false ;; *) HISTORY_ON=true ;; esac
COUNTS=("$@")
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(1 3)
for tool in "$SSE_NOTIFY" "$SSE_BENCH"; do
  [ -x "$tool" ] || { echo "cluster.sh: $tool missing (cargo build --release --bins)" >&2; exit 2; }
done
for tool in redis-cli python3; do
  command -v "$tool" >/dev/null || { echo "cluster.sh: needs $tool" >&2; exit 2; }
done
for n in "${COUNTS[@]}"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "cluster.sh: $n is not a primary count" >&2; exit 2; }
done

work=$(mktemp -d)
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() {
  stop_all
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

fail() {
  echo "cluster.sh: $*" >&2
  exit 1
}

# One field of an INFO section of the server on port $1.
info_field() {
  redis-cli -p "$1" INFO "$2" | tr -d '\r' | sed -n "s/^$3://p"
}

# Starts a cluster-enabled redis-server in $work/$2; sets started_port and
# started_bus (not
# printed: in a command substitution its pid would not reach pids). The
# cluster bus gets a free port of its own: the default (port + 10000)
# may be past 65535 or taken.
start_redis() {
  local n=$1 dir=$work/$2 port bus
  for _ in 1 2 3 4 5; do
    port=$(free_port) bus=$(free_port)
    [ "$port" != "$bus" ] || continue
    mkdir -p "$dir"
    "$REDIS_SERVER" --port "$port" --cluster-port "$bus" --bind 127.0.0.1 \
      --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" --dir "$dir" \
      --save '' --appendonly no >"$dir/redis.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 50); do
      if redis-cli -p "$port" ping >/dev/null 2>&1; then
        pids+=("$pid")
        started_port=$port started_bus=$bus
        return 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    # Exited (a port taken since it was probed) or never answered.
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  fail "redis-server for $n primaries did not start; log $dir/redis.log: $(tail -3 "$dir/redis.log")"
}

# Makes the servers on the given ports one cluster, the slots spread
# evenly, and waits until each of them sees all of it ($1: the first
# server's bus port).
form_cluster() {
  local bus0=$1
  shift
  local ports=("$@") n=$#
  if [ "$n" -ge 3 ]; then
    local addrs=()
    for p in "${ports[@]}"; do addrs+=("127.0.0.1:$p"); done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes \
      >"$work/create-$n.log" 2>&1 || fail "cluster create failed: $(tail -5 "$work/create-$n.log")"
  else
    # redis-cli --cluster create refuses fewer than 3 primaries: the slots
    # are given out by hand, in the same even ranges.
    local i start end
    for i in $(seq 0 $((n - 1))); do
      start=$((16384 * i / n)) end=$((16384 * (i + 1) / n - 1))
      redis-cli -p "${ports[$i]}" CLUSTER ADDSLOTSRANGE "$start" "$end" >/dev/null
      [ "$i" -eq 0 ] || redis-cli -p "${ports[$i]}" CLUSTER MEET 127.0.0.1 "${ports[0]}" "$bus0" >/dev/null
    done
  fi
  for _ in $(seq 1 300); do
    local ready=1
    for p in "${ports[@]}"; do
      local info
      info=$(redis-cli -p "$p" CLUSTER INFO | tr -d '\r')
      grep -qx 'cluster_state:ok' <<<"$info" &&
        grep -qx 'cluster_slots_ok:16384' <<<"$info" &&
        grep -qx "cluster_known_nodes:$n" <<<"$info" || ready=0
    done
    [ "$ready" -eq 1 ] && return 0
    sleep 0.1
  done
  fail "the cluster of $n primaries did not reach cluster_state:ok in 30 s"
}

# Waits for the start line of the node (pid $2); prints "public admin".
addrs_of() {
  local log=$1 pid=$2
  for _ in $(seq 1 300); do
    if grep -q "sse-notify serving" "$log" 2>/dev/null; then
      local line
      line=$(grep -m1 "sse-notify serving" "$log")
      echo "$(sed -E 's/.*public_addr=([^ ]+).*/\1/' <<<"$line") $(sed -E 's/.*admin_addr=([^ ]+).*/\1/' <<<"$line")"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "cluster.sh: node did not start; log $log:" >&2
  cat "$log" >&2
  return 1
}

# One line for the primary on port $1: script calls, all calls, CPU seconds.
counters() {
  redis-cli -p "$1" INFO commandstats | tr -d '\r' | python3 -c '
import re, sys
script = total = 0
for line in sys.stdin:
    m = re.match(r"cmdstat_([^:]+):calls=(\d+)", line)
    if m:
        total += int(m.group(2))
        if re.fullmatch(r"(eval|evalsha|fcall)(_ro)?", m.group(1)):
            script += int(m.group(2))
print(script, total, end=" ")
'
  echo "$(info_field "$1" cpu used_cpu_sys) $(info_field "$1" cpu used_cpu_user)" |
    awk '{ printf "%.6f\n", $1 + $2 }'
}

echo "| primaries | sends/s | delivery ratio | Redis CPU per send, all primaries | script calls per send | commands per send | script calls per primary | all commands per primary | CPU per primary | furthest from 1/N: scripts, commands, CPU |"
echo "|---|---|---|---|---|---|---|---|---|---|"
run=0
for n in "${COUNTS[@]}"; do
  run=$((run + 1))
  ports=() buses=()
  for i in $(seq 1 "$n"); do
    start_redis "$n" "run$run-redis$i"
    ports+=("$started_port") buses+=("$started_bus")
  done
  form_cluster "${buses[0]}" "${ports[@]}"
  seeds=$(printf '127.0.0.1:%s,' "${ports[@]}")
  cat >"$work/node-$run.toml" <<EOF
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
node_id = "bench"
[redis]
url = "redis+cluster://${seeds%,}/"
[history]
enabled = $HISTORY_ON
size = 100
[limits]
max_connections_per_user = 32
max_connect_rate = 0
[log]
level = "warn,sse_notify::lifecycle=info"
EOF
  "$SSE_NOTIFY" serve -c "$work/node-$run.toml" >"$work/node-$run.log" 2>&1 &
  pids+=($!)
  addrs=$(addrs_of "$work/node-$run.log" "$!") || exit 1
  read -r pub adm <<<"$addrs"

  bench_err=$work/bench-$run.err
  "$SSE_BENCH" unicast --stream-url "http://$pub/notifications/stream/" \
    --admin-url "http://$adm" --user-prefix "cb${run}u" \
    --conns "$USERS" --messages "$MESSAGES" --publishers "$PUBLISHERS" \
    --settle 3 --drain 2 --seed "$run" \
    >"$work/bench-$run.json" 2>"$bench_err" &
  bench=$!
  pids+=("$bench")
  # The load starts when the streams are open (sse-bench then settles 3 s):
  # what opening them cost Redis is left out.
  until grep -q "settling" "$bench_err" 2>/dev/null; do
    kill -0 "$bench" 2>/dev/null || break
    sleep 0.05
  done
  before=()
  for p in "${ports[@]}"; do
    redis-cli -p "$p" CONFIG RESETSTAT >/dev/null
    before+=("$(counters "$p")")
  done
  wait "$bench" || fail "sse-bench failed (exit $?): $(tail -5 "$bench_err")"
  after=()
  for p in "${ports[@]}"; do after+=("$(counters "$p")"); done

  python3 - "$n" "$work/bench-$run.json" "${before[@]}" "${after[@]}" <<'EOF'
import json, sys
n = int(sys.argv[1])
d = json.load(open(sys.argv[2]))["delivery"]
before = [list(map(float, s.split())) for s in sys.argv[3:3 + n]]
after = [list(map(float, s.split())) for s in sys.argv[3 + n:3 + 2 * n]]
# RESETSTAT zeroes the command counts, not the CPU: only the CPU is a delta.
scripts = [a[0] for a in after]
commands = [a[1] for a in after]
cpu = [a[2] - b[2] for a, b in zip(after, before)]
sends = max(d["sends_ok"], 1)

def shares(xs):
    total = sum(xs)
    return [x / total if total > 0 else 0.0 for x in xs]

def cell(xs):
    return " / ".join(f"{s:.0%}" for s in shares(xs))

def furthest(xs):
    # relative to an even share: 0 % is exactly 1/N each
    return max(abs(s * n - 1) for s in shares(xs))

print(f"| {n} | {d['send_rate']:.0f} | {d['delivery_ratio']:.3f} "
      f"| {sum(cpu) / sends * 1e6:.0f} µs | {sum(scripts) / sends:.2f} | {sum(commands) / sends:.2f} "
      f"| {cell(scripts)} | {cell(commands)} | {cell(cpu)} "
      f"| {furthest(scripts):.0%}, {furthest(commands):.0%}, {furthest(cpu):.0%} |")
EOF
  stop_all
done
