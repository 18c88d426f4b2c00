"""Manages models through localml's scheduler with Triton's unmodified Python gRPC client
(the repository extension): load_model with the model's files, inference on it, the
repository index, unload_model.

Usage: python3 tests/python/tritonclient_repository_check.py HOST:PORT EXPECTED_DIR

LOCALML_KEY must hold an admin key. The model loaded is examples/models/image_classifier
under the name "pushed"; its outputs are checked against examples/expected. Run by the
Rust integration test `catalog::tritonclient_loads_and_unloads_models_through_the_scheduler`.
"""

import json
import os
import sys
import time

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from expected_examples import array, check


def index(client, h):
    models = client.get_model_repository_index(headers=h, as_json=True).get("models", [])
    return {m["name"]: m for m in models}


def main():
    url, expected_dir = sys.argv[1], sys.argv[2]
    h = {"authorization": f"Bearer {os.environ['LOCALML_KEY']}"}
    client = grpcclient.InferenceServerClient(url=url)
    model_file = os.path.join(expected_dir, "..", "models", "image_classifier", "1", "model.onnx")
    with open(model_file, "rb") as f:
        onnx_bytes = f.read()

    assert "pushed" not in index(client, h), index(client, h)
    try:
        client.load_model("nothing_here", headers=h)
        sys.exit("loading an unknown model without files succeeded")
    except InferenceServerException as e:
        assert "NOT_FOUND" in str(e.status()), e

    config = json.dumps({"max_batch_size": 8})
    client.load_model("pushed", headers=h, config=config, files={"file:1/model.onnx": onnx_bytes})
    assert client.is_model_ready("pushed", headers=h), "loaded but not ready"
    entry = index(client, h)["pushed"]
    assert entry["state"] == "READY" and entry["version"] == "1", entry

    ex = json.load(open(os.path.join(expected_dir, "image_classifier.json"), encoding="utf-8"))
    inputs = []
    for t in ex["inputs"]:
        inp = grpcclient.InferInput(t["name"], t["shape"], t["datatype"])
        inp.set_data_from_numpy(array(t))
        inputs.append(inp)
    result = client.infer("pushed", inputs, headers=h)
    for t in ex["outputs"]:
        check(f"pushed/{t['name']}", array(t), result.as_numpy(t["name"]))

    # A second version by its files: the model's deployment moves to it.
    client.load_model("pushed", headers=h, config=config, files={"file:2/model.onnx": onnx_bytes})
    assert client.is_model_ready("pushed", "2", headers=h), "version 2 not ready"
    result = client.infer("pushed", inputs, model_version="2", headers=h)
    check("pushed v2", array(ex["outputs"][0]), result.as_numpy(ex["outputs"][0]["name"]))

    client.unload_model("pushed", headers=h)
    deadline = time.time() + 60
    while index(client, h)["pushed"]["state"] == "READY":
        if time.time() > deadline:
            sys.exit("still READY 60 s after unload_model")
        time.sleep(0.2)
    entry = index(client, h)["pushed"]
    assert entry["state"] == "UNAVAILABLE" and "catalog" in entry["reason"], entry
    print("tritonclient repository: load, infer, index, unload OK")


if __name__ == "__main__":
    main()
