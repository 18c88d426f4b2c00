#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the integration tests that start real
# scheduler and worker processes with the real ONNX Runtime. Installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
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
