#!/usr/bin/env bash
# REST against gRPC through the same scheduler (issue #15): Triton's perf_analyzer drives
# image_classifier over the gRPC port and over the REST listener (binary tensors, as
# perf_analyzer sends them), alternating, at concurrency 1 and 8, and prints each
# protocol's throughput and p50/p99 with the ratios REST/gRPC. Release build; one
# scheduler and one worker on loopback.
#   scripts/bench-rest.sh [ROUNDS]      (default 2 rounds of each)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
cargo build --release -j2 --bins >/dev/null
pa=target/tools/perf_analyzer
[[ -x $pa/bin/perf_analyzer ]] || scripts/deps.sh --test
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
target/release/localml-scheduler --listen 127.0.0.1:0 --cluster-listen 127.0.0.1:0 \
  --rest-listen 127.0.0.1:0 --data-dir "$dir/state" >"$dir/scheduler.out" 2>"$dir/scheduler.err" &
for _ in $(seq 100); do grep -q "listening on" "$dir/scheduler.out" && break; sleep 0.1; done
line=$(head -1 "$dir/scheduler.out")
grpc=$(sed -E 's/.*listening on ([^ ]+) \(clients\).*/\1/' <<<"$line")
cluster=$(sed -E 's/.* and ([^ ]+) \(workers\).*/\1/' <<<"$line")
rest=$(sed -E 's|.*REST http://([^ ]+) .*|\1|' <<<"$line")
token=$(target/release/localml token create --server "$grpc" 2>/dev/null | tail -1)
target/release/localml-worker --name bench --scheduler "$cluster" --token "$token" \
  --listen 127.0.0.1:0 --data-dir "$dir/worker" --models examples/models >/dev/null 2>"$dir/worker.err" &
for _ in $(seq 200); do
  curl -s "http://$rest/v2/models/image_classifier/ready" | grep -q true && break; sleep 0.1
done
measure() { # protocol url concurrency -> "throughput p50 p99"
  LD_LIBRARY_PATH=$pa/lib $pa/bin/perf_analyzer -m image_classifier -u "$2" -i "$1" -b 1 \
    --concurrency-range "$3" --measurement-interval 3000 -r 3 -s 1000 2>&1 \
    | awk '/Throughput:/ {t=$2} /p50 latency:/ {p50=$3} /p99 latency:/ {p99=$3} END {print t, p50, p99}'
}
printf "%-6s %-4s %12s %10s %10s\n" proto conc "infer/s" "p50 us" "p99 us"
for c in 1 8; do
  declare -A sum=()
  for r in $(seq "$rounds"); do
    for proto in grpc http; do
      url=$grpc; [[ $proto == http ]] && url=$rest
      read -r t p50 p99 < <(measure "$proto" "$url" "$c")
      printf "%-6s %-4s %12s %10s %10s\n" "$proto" "$c" "$t" "$p50" "$p99"
      sum[$proto.t]=$(awk -v a="${sum[$proto.t]:-0}" -v b="$t" 'BEGIN {print a + b}')
      sum[$proto.p50]=$(awk -v a="${sum[$proto.p50]:-0}" -v b="$p50" 'BEGIN {print a + b}')
    done
  done
  awk -v c="$c" -v ht="${sum[http.t]}" -v gt="${sum[grpc.t]}" -v hp="${sum[http.p50]}" -v gp="${sum[grpc.p50]}" \
    'BEGIN {printf "concurrency %s: REST/gRPC throughput %.2fx, p50 %.2fx\n", c, ht / gt, hp / gp}'
  unset sum
done
