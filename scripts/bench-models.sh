#!/usr/bin/env bash
# Makes a model repository of full-size CNNs (constant weights, real compute) from the
# `onnx` wheel's backend test data, for benchmarks: scripts/bench-models.sh DIR
set -euo pipefail
dir=${1:?usage: scripts/bench-models.sh DIR}
python3 -c 'import onnx' 2>/dev/null || python3 -m pip install --quiet onnx==1.23.2
light=$(python3 -c 'import onnx, os; print(os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light"))')
for model in squeezenet resnet50; do
  mkdir -p "$dir/$model/1"
  cp "$light/light_$model.onnx" "$dir/$model/1/model.onnx"
done
echo "$dir: squeezenet, resnet50"
