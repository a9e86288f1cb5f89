#!/usr/bin/env bash
# Bus traffic against the number of nodes (README "Past one Redis primary"):
# for each node count, one redis-server and that many sse-notify nodes on
# this machine, each with its own streams (one per user) and one sse-bench
# sending unicast messages to its node's users as fast as its publishers
# allow. Prints one table row per node count: bus messages each node
# received (and how many of them no stream of that node took), Redis
# output (INFO stats total_net_output_bytes) per second and per message,
# and the messages delivered per second in total.
#
#   etc/bench/nodes.sh [NODE_COUNTS...]        # default: 1 2 4 8
#
# Environment: SSE_NOTIFY (default target/release/sse-notify), SSE_BENCH
# (default target/release/sse-bench), REDIS_SERVER (default redis-server),
# CONNS_PER_NODE (50), MESSAGES_PER_NODE (4000), PUBLISHERS (4 per node).
# Build first: cargo build --release --bins
set -euo pipefail

cd "$(dirname "$0")/../.."
SSE_NOTIFY=${SSE_NOTIFY:-target/release/sse-notify}
SSE_BENCH=${SSE_BENCH:-target/release/sse-bench}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
CONNS_PER_NODE=${CONNS_PER_NODE:-50}
MESSAGES_PER_NODE=${MESSAGES_PER_NODE:-4000}
PUBLISHERS=${PUBLISHERS:-4}
COUNTS=("$@")
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(1 2 4 8)
for tool in "$SSE_NOTIFY" "$SSE_BENCH"; do
  [ -x "$tool" ] || { echo "nodes.sh: $tool missing (cargo build --release --bins)" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "nodes.sh: needs jq" >&2; exit 2; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits for a node's start line; prints "public admin".
addrs_of() {
  local log=$1
  for _ in $(seq 1 150); do
    if grep -q "sse-notify serving" "$log" 2>/dev/null; then
      local line
      line=$(grep -m1 "sse-notify serving" "$log")
      echo "$(sed -E 's/.*public_addr=([^ ]+).*/\1/' <<<"$line") $(sed -E 's/.*admin_addr=([^ ]+).*/\1/' <<<"$line")"
      return 0
    fi
    sleep 0.1
  done
  echo "nodes.sh: node did not start; log $log:" >&2
  cat "$log" >&2
  return 1
}

redis_out() {
  redis-cli -p "$1" INFO stats | tr -d '\r' | sed -n 's/^total_net_output_bytes://p'
}

metric() {
  curl -s "http://$1/metrics" | sed -n "s/^$2 //p"
}

echo "| nodes | bus msgs received per node (share of all sends) | of them no local stream | Redis out MB/s | Redis out bytes per send | delivered msg/s |"
echo "|---|---|---|---|---|---|"
for n in "${COUNTS[@]}"; do
  pids=()
  port=$(free_port)
  "$REDIS_SERVER" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    >"$work/redis-$n.log" 2>&1 &
  pids+=($!)
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
  # A registry known whole: on an empty Redis (as after a data loss) the
  # first messages go to every node for the re-registration window.
  redis-cli -p "$port" SET sse:registry_since 1 >/dev/null
  publics=() admins=()
  for i in $(seq 1 "$n"); do
    cat >"$work/node-$n-$i.toml" <<EOF
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
node_id = "bench-$i"
[redis]
url = "redis://127.0.0.1:$port/0"
[startup]
clear = false
[log]
level = "warn,sse_notify::lifecycle=info"
EOF
    "$SSE_NOTIFY" serve -c "$work/node-$n-$i.toml" >"$work/node-$n-$i.log" 2>&1 &
    pids+=($!)
  done
  for i in $(seq 1 "$n"); do
    read -r pub adm < <(addrs_of "$work/node-$n-$i.log")
    publics+=("$pub") admins+=("$adm")
  done
  out_before=$(redis_out "$port")
  t0=$(date +%s.%N)
  bench_pids=()
  for i in $(seq 1 "$n"); do
    "$SSE_BENCH" unicast --stream-url "http://${publics[$((i - 1))]}/notifications/stream/" \
      --admin-url "http://${admins[$((i - 1))]}" --user-prefix "n${i}u" \
      --conns "$CONNS_PER_NODE" --messages "$MESSAGES_PER_NODE" --publishers "$PUBLISHERS" \
      --settle 2 --drain 2 --seed "$i" \
      >"$work/bench-$n-$i.json" 2>"$work/bench-$n-$i.err" &
    bench_pids+=($!)
  done
  for p in "${bench_pids[@]}"; do wait "$p"; done
  t1=$(date +%s.%N)
  out_after=$(redis_out "$port")
  received=0 unmatched=0
  for adm in "${admins[@]}"; do
    r=$(metric "$adm" sse_notify_bus_messages_received_total)
    u=$(metric "$adm" sse_notify_bus_messages_unmatched_total)
    received=$((received + ${r%.*})) unmatched=$((unmatched + ${u%.*}))
  done
  # Every bench sends while the others do; its span is from its first
  # send to its last delivery.
  sends=0 delivered=0 span=0
  for i in $(seq 1 "$n"); do
    f="$work/bench-$n-$i.json"
    s=$(jq '.delivery.sends_ok' "$f") d=$(jq '.delivery.delivered' "$f") r=$(jq '.delivery.delivered_per_sec' "$f")
    sends=$((sends + s)) delivered=$((delivered + d))
    span=$(python3 -c "print(max($span, $d / $r if $r > 0 else 0))")
  done
  python3 - "$n" "$received" "$unmatched" "$sends" "$delivered" "$span" "$out_before" "$out_after" "$t0" "$t1" <<'EOF'
import sys
n, received, unmatched, sends, delivered = map(int, sys.argv[1:6])
span, before, after, t0, t1 = map(float, sys.argv[6:11])
per_node = received / n
out = after - before
print(f"| {n} | {per_node:.0f} ({per_node / max(sends, 1):.0%}) | {unmatched / n:.0f} "
      f"| {out / span / 1e6:.2f} | {out / max(sends, 1):.0f} | {delivered / span:.0f} |")
EOF
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
done
