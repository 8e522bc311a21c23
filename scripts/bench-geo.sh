#!/usr/bin/env bash
# HTTP nearby against Redis GEOSEARCH over the same points, radius and result limit, in one run
# on this machine. Usage: scripts/bench-geo.sh [POINTS] [SECONDS]   (default 1000000 points, 10 s)
#
# The points are spread over a 50 km square around Shanghai (about 400 per km², so a 300 m
# circle holds about 110). redrain answers from its H3 index (resolution 10, k = 2: every point
# within about 285 m is in the disk, a few farther ones too), nearest 100 first; Redis answers
# GEOSEARCH ... BYRADIUS 300 m ASC COUNT 100 WITHCOORD WITHDIST. Both are driven with 64
# connections from 2 client threads (wrk for HTTP, redis-benchmark for Redis), at the same
# fixed point, then redrain again at random points over the square.
set -euo pipefail
cd "$(dirname "$0")/.."
points=${1:-1000000}
seconds=${2:-10}
./scripts/setup.sh redis-server wrk
cargo build --release --bin redrain
work=$(mktemp -d /tmp/redrain-bench-geo.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

echo "== generating $points points and loading them into Redis"
python3 - "$points" "$work" <<'PY'
import random, sys
n, work = int(sys.argv[1]), sys.argv[2]
random.seed(42)
with open(f"{work}/points.csv", "w") as csv, open(f"{work}/geoadd.resp", "w") as resp:
    csv.write("lat,lng,name\n")
    for i in range(n):
        lat = round(random.uniform(31.0, 31.45), 7)
        lng = round(random.uniform(121.2, 121.725), 7)
        name = f"p{i}"
        csv.write(f"{lat},{lng},{name}\n")
        args = ["GEOADD", "drops", repr(lng), repr(lat), name]
        resp.write(f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args))
PY
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --daemonize no \
  --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done
redis-cli -p "$redis_port" --pipe <"$work/geoadd.resp" | tail -1
echo "redis: $(redis-cli -p "$redis_port" zcard drops) points, $(redis-cli -p "$redis_port" info memory | grep used_memory_human)"

cat >"$work/config.toml" <<TOML
[[campaigns]]
id = "bench"
starts_at = "2026-01-01T00:00:00Z"
ends_at = "2036-01-01T00:00:00Z"

[[partners]]
id = "wallet"
kind = "wallet"
url = "http://127.0.0.1:9100/deliver"
rate_per_s = 1000
max_in_flight = 16
timeout_ms = 1000

[[drops]]
id = "bench-drops"
campaign = "bench"
points = "points.csv"
resolution = 10
k = 2
radius_m = 50
starts_at = "2026-01-01T00:00:00Z"
ends_at = "2036-01-01T00:00:00Z"
max_claims_per_user = 5

[[drops.prizes]]
id = "bench-cash"
kind = "cash"
amount_cents = 100
partner = "wallet"
quota = 1000000
rate_per_s = 1000
weight = 1
TOML
echo "== starting redrain"
./target/release/redrain serve --config "$work/config.toml" --data "$work/data" \
  --listen 127.0.0.1:0 --admin-token bench-admin-token-0123 >"$work/redrain.out" 2>"$work/redrain.log" &
pids+=($!)
until grep -q "listening on" "$work/redrain.out" 2>/dev/null; do
  kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/redrain.log"; exit 1; }
  sleep 0.2
done
addr=$(sed -n 's/.*listening on http:\/\///p' "$work/redrain.out")
rss=$(awk '/VmRSS/ {print $2}' "/proc/${pids[-1]}/status")
echo "redrain on $addr, RSS ${rss} kB with the index loaded"

lat=31.2304; lng=121.4737
echo "== one query each at ($lat, $lng)"
ours=$(curl -s "http://$addr/v1/drops/nearby?lat=$lat&lng=$lng&limit=100" | python3 -c 'import json,sys; d=json.load(sys.stdin)["drops"]; print(len(d), "drops, farthest", d[-1]["distance_m"] if d else "-", "m")')
theirs=$(redis-cli -p "$redis_port" GEOSEARCH drops FROMLONLAT $lng $lat BYRADIUS 300 m ASC COUNT 100 WITHDIST | awk 'NR%2==0' | tail -1)
echo "redrain: $ours; redis: $(redis-cli -p "$redis_port" GEOSEARCH drops FROMLONLAT $lng $lat BYRADIUS 300 m ASC COUNT 100 | wc -l) members, farthest $theirs m"

echo "== redrain HTTP nearby, fixed point, ${seconds}s"
wrk -t2 -c64 -d"${seconds}s" --latency "http://$addr/v1/drops/nearby?lat=$lat&lng=$lng&limit=100" | tee "$work/wrk-fixed.txt"
echo "== redis GEOSEARCH, same point and radius"
total=$(python3 -c "print(int(max(1, $seconds) * 25000))")
redis-benchmark -p "$redis_port" -c 64 --threads 2 -n "$total" -q \
  GEOSEARCH drops FROMLONLAT $lng $lat BYRADIUS 300 m ASC COUNT 100 WITHCOORD WITHDIST \
  | tr '\r' '\n' | grep 'requests per second' | tee "$work/redis.txt"
cat >"$work/random.lua" <<'LUA'
math.randomseed(7)
request = function()
  local lat = 31.0 + math.random() * 0.45
  local lng = 121.2 + math.random() * 0.525
  return wrk.format("GET", string.format("/v1/drops/nearby?lat=%.6f&lng=%.6f&limit=100", lat, lng))
end
LUA
echo "== redrain HTTP nearby, random points, ${seconds}s"
wrk -t2 -c64 -d"${seconds}s" --latency -s "$work/random.lua" "http://$addr" | tee "$work/wrk-random.txt"

ours=$(awk '/Requests\/sec/ {print $2}' "$work/wrk-fixed.txt")
theirs=$(grep -o '[0-9.]* requests per second' "$work/redis.txt" | awk '{print $1}' | tail -1)
python3 -c "print(f'== redrain {float(\"$ours\"):,.0f} req/s vs redis {float(\"$theirs\"):,.0f} req/s: ratio {float(\"$ours\")/float(\"$theirs\"):.2f}')"
