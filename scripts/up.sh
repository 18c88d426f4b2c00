#!/usr/bin/env bash
# Starts a local localml cluster on this PC: a scheduler on 127.0.0.1:8001 and two
# workers serving examples/models. Installs what is missing (protoc, ONNX Runtime) first.
# Extra arguments go to `localml up` (see `localml up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release -p localml-cli
exec target/release/localml up "$@"
