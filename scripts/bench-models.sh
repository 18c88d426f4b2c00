#!/usr/bin/env bash
# Makes a model repository for benchmarks: scripts/bench-models.sh DIR
#  - squeezenet, resnet50: full-size CNNs (constant weights, real compute) from the `onnx`
#    wheel's backend test data;
#  - dense, dense_batched: four 1024x1024 fully connected layers (16 MB of weights), a
#    model whose batch-1 run is memory-bound on a CPU, so batching pays; the same file,
#    without and with dynamic batching (config.yaml);
#  - image_classifier, image_classifier_batched: the small example model, likewise.
set -euo pipefail
dir=${1:?usage: scripts/bench-models.sh DIR}
python3 -c 'import onnx, numpy' 2>/dev/null || python3 -m pip install --quiet onnx==1.23.2 numpy
light=$(python3 -c 'import onnx, os; print(os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light"))')
for model in squeezenet resnet50; do
  mkdir -p "$dir/$model/1"
  cp "$light/light_$model.onnx" "$dir/$model/1/model.onnx"
done
python3 - "$dir" <<'PY'
import os, sys
import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

out = sys.argv[1]
rs = np.random.RandomState(7)
nodes, inits, x = [], [], "x"
for i in range(4):
    w = (rs.randn(1024, 1024) / 32).astype(np.float32)
    b = (rs.randn(1024) / 32).astype(np.float32)
    inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
    nodes += [
        helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
        helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
    ]
    y = "y" if i == 3 else f"r{i}"
    nodes.append(helper.make_node("Relu", [f"a{i}"], [y]))
    x = y
graph = helper.make_graph(
    nodes, "dense",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1024])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1024])],
    inits,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8
configs = {
    "dense": "max_batch_size: 32\ninstances: 1\n",
    "dense_batched": "max_batch_size: 32\ninstances: 1\n"
    "dynamic_batching:\n  max_queue_delay_microseconds: 2000\n",
}
for name, config in configs.items():
    os.makedirs(os.path.join(out, name, "1"), exist_ok=True)
    save(model, os.path.join(out, name, "1", "model.onnx"))
    with open(os.path.join(out, name, "config.yaml"), "w") as f:
        f.write(config)
PY
# The small example classifier, without and with dynamic batching.
examples="$(dirname "$0")/../examples/models"
for name in image_classifier image_classifier_batched; do
  mkdir -p "$dir/$name/1"
  cp "$examples/image_classifier/1/model.onnx" "$dir/$name/1/model.onnx"
  printf 'max_batch_size: 32\ninstances: 1\n' > "$dir/$name/config.yaml"
done
printf 'dynamic_batching:\n  max_queue_delay_microseconds: 2000\n' >> "$dir/image_classifier_batched/config.yaml"
echo "$dir: squeezenet, resnet50, dense, dense_batched, image_classifier, image_classifier_batched"
