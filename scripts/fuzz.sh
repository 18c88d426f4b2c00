#!/usr/bin/env bash
# Fuzzing (issue #11): the cargo-fuzz targets in fuzz/ (tensor, parameters, config, token),
# built and run on the stable toolchain with RUSTC_BOOTSTRAP=1 (cargo fuzz needs nightly
# flags; docs/fuzzing.md). Installs cargo-fuzz when missing.
#
#   scripts/fuzz.sh                      smoke run: every target for 20 s (CI)
#   scripts/fuzz.sh --seconds 60 token   one target for a minute
#   scripts/fuzz.sh --runs 10000000      the long run reported in docs/benchmarks.md
#
# New inputs that add coverage go to fuzz/corpus/TARGET (not committed); the small seeds
# in fuzz/seeds/TARGET are committed. A crash leaves its input in fuzz/artifacts/TARGET
# and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=20
runs=
targets=()
while (($#)); do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    -*) echo "fuzz: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if ((${#targets[@]} == 0)); then targets=(tensor parameters config token); fi

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
cd fuzz
# No sanitizer: the workspace forbids unsafe code, and without ASan an execution is about
# twice as fast; libFuzzer still catches panics, overflows (debug assertions are on),
# timeouts and memory over -rss_limit_mb.
cargo fuzz build -s none
mkdir -p target/logs
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  if [[ -n $runs ]]; then limit=(-runs="$runs"); else limit=(-max_total_time="$seconds"); fi
  log=target/logs/$target.log
  echo "== fuzz $target (${limit[*]}; full output in fuzz/$log)"
  start=$(date +%s)
  status=0
  cargo fuzz run -s none "$target" "corpus/$target" "seeds/$target" -- \
    "${limit[@]}" -rss_limit_mb=2048 -max_len=65536 -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  grep -E "^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb|#[0-9]+ +DONE)" "$log" || true
  echo "fuzz $target: exit $status after $(($(date +%s) - start)) s"
  if ((status != 0)); then
    tail -n 40 "$log" >&2
    echo "fuzz: $target failed; the input that failed is in fuzz/artifacts/$target" >&2
    exit "$status"
  fi
done
