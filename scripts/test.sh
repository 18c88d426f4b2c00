#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the integration tests that start real
# scheduler and worker processes with the real ONNX Runtime. Installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# A one-shot CI build gains nothing from incremental compilation's caches (a GB or more).
if [[ -n ${CI:-} ]]; then export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}; fi

# The build, the lints and the tests' temporary files need about 6 GB; say so before the
# linker fails half-way with "No space left on device".
target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p "$target_dir"
free_kb=$(df -Pk "$target_dir" | awk 'NR == 2 { print $4 }')
if [[ $free_kb =~ ^[0-9]+$ ]] && ((free_kb < 6 * 1024 * 1024)); then
  echo "test: warning: only $((free_kb / 1024)) MB free under $target_dir; the build and tests need about 6 GB" >&2
fi
scripts/deps.sh --test

echo "== build"
cargo build -j2 --workspace --bins --tests
echo "== ONNX Runtime"
target/debug/localml runtime install
echo "== format and lints"
cargo fmt --all -- --check
cargo clippy -j2 --workspace --all-targets -- -D warnings
echo "== tests"
LOCALML_REQUIRE_PYTHON_CLIENT=1 cargo test -j2 --workspace
echo "== fuzzing (smoke: each target for 10 s; docs/fuzzing.md)"
scripts/fuzz.sh --seconds 10
