"""Manages models through localml's scheduler with Triton's unmodified Python clients
(the repository extension): load_model with the model's files and its config, inference
on it, the repository index, unload_model.

Usage: python3 tests/python/tritonclient_repository_check.py ADDRESS EXPECTED_DIR

ADDRESS is HOST:PORT for the gRPC client (tritonclient.grpc), or http://HOST:PORT for the
HTTP client (tritonclient.http, against the REST listener). LOCALML_KEY must hold an
admin key. The model loaded is examples/models/image_classifier under the name "pushed"
(gRPC) or "pushed_http" (HTTP); its outputs are checked against examples/expected. Run by
the Rust integration test `catalog::tritonclient_loads_and_unloads_models_through_the_scheduler`.
"""

import json
import os
import sys
import time

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from expected_examples import array, check


def index(client, h):
    if isinstance(client, httpclient.InferenceServerClient):
        models = client.get_model_repository_index(headers=h)
    else:
        models = client.get_model_repository_index(headers=h, as_json=True).get("models", [])
    return {m["name"]: m for m in models}


def main():
    url, expected_dir = sys.argv[1], sys.argv[2]
    h = {"authorization": f"Bearer {os.environ['LOCALML_KEY']}"}
    http = url.startswith("http://")
    module = httpclient if http else grpcclient
    client = module.InferenceServerClient(url=url.removeprefix("http://"))
    name = "pushed_http" if http else "pushed"
    model_file = os.path.join(expected_dir, "..", "models", "image_classifier", "1", "model.onnx")
    with open(model_file, "rb") as f:
        onnx_bytes = f.read()

    assert name not in index(client, h), index(client, h)
    try:
        client.load_model("nothing_here", headers=h)
        sys.exit("loading an unknown model without files succeeded")
    except InferenceServerException as e:
        assert "NOT_FOUND" in str(e.status()) or "no model 'nothing_here'" in str(e), e
    # A setting localml cannot honour is refused by name, not dropped.
    try:
        client.load_model(name, headers=h, config=json.dumps({"optimization": {}}),
                          files={"file:1/model.onnx": onnx_bytes})
        sys.exit("a config with a field localml does not have was taken")
    except InferenceServerException as e:
        assert "field 'optimization'" in str(e), e

    # Triton's model config as a client sends it: batch, instances, dynamic batching.
    config = json.dumps({
        "name": name, "platform": "onnxruntime_onnx", "max_batch_size": 8,
        "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
        "dynamic_batching": {"max_queue_delay_microseconds": 100},
    })
    client.load_model(name, headers=h, config=config, files={"file:1/model.onnx": onnx_bytes})
    assert client.is_model_ready(name, headers=h), "loaded but not ready"
    served = client.get_model_config(name, headers=h) if http \
        else client.get_model_config(name, headers=h, as_json=True)["config"]
    groups = served.get("instance_group")
    assert groups and int(groups[0]["count"]) == 2, served
    assert "dynamic_batching" in served, served
    entry = index(client, h)[name]
    assert entry["state"] == "READY" and entry["version"] == "1", entry

    ex = json.load(open(os.path.join(expected_dir, "image_classifier.json"), encoding="utf-8"))
    inputs = []
    for t in ex["inputs"]:
        inp = module.InferInput(t["name"], t["shape"], t["datatype"])
        inp.set_data_from_numpy(array(t))
        inputs.append(inp)
    result = client.infer(name, inputs, headers=h)
    for t in ex["outputs"]:
        check(f"{name}/{t['name']}", array(t), result.as_numpy(t["name"]))

    # A second version by its files: the model's deployment moves to it.
    client.load_model(name, headers=h, config=config, files={"file:2/model.onnx": onnx_bytes})
    assert client.is_model_ready(name, "2", headers=h), "version 2 not ready"
    result = client.infer(name, inputs, model_version="2", headers=h)
    check(f"{name} v2", array(ex["outputs"][0]), result.as_numpy(ex["outputs"][0]["name"]))

    client.unload_model(name, headers=h)
    deadline = time.time() + 60
    while index(client, h)[name]["state"] == "READY":
        if time.time() > deadline:
            sys.exit("still READY 60 s after unload_model")
        time.sleep(0.2)
    entry = index(client, h)[name]
    assert entry["state"] == "UNAVAILABLE" and "catalog" in entry["reason"], entry
    print(f"tritonclient.{'http' if http else 'grpc'} repository: load, infer, index, unload OK")


if __name__ == "__main__":
    main()
