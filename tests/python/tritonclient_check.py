"""Drives a localml server with Triton's unmodified Python gRPC client.

Usage: python3 tests/python/tritonclient_check.py HOST:PORT EXPECTED_DIR

With LOCALML_KEY set, every call carries `headers={"authorization": "Bearer KEY"}`, as a
client of a scheduler that requires API keys does (docs/security.md); the check then also
makes sure a call without the header is refused with UNAUTHENTICATED. With LOCALML_CA set
(a PEM file, from `localml ca`), the client connects with `ssl=True,
root_certificates=LOCALML_CA`, as a client of a scheduler reachable from the LAN does.

Checks readiness, metadata, config and inference (sync, async, streaming) for every
stored example, against outputs computed by onnxruntime's Python API. Exits non-zero on
any mismatch. Run by the Rust integration test `cli::triton_python_client_works`.
"""

import json
import os
import queue
import sys

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from expected_examples import array, check


def main():
    url, expected_dir = sys.argv[1], sys.argv[2]
    key = os.environ.get("LOCALML_KEY")
    h = {"authorization": f"Bearer {key}"} if key else None
    ca = os.environ.get("LOCALML_CA")
    if ca:
        client = grpcclient.InferenceServerClient(url=url, ssl=True, root_certificates=ca)
    else:
        client = grpcclient.InferenceServerClient(url=url)
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    if key:
        try:
            client.get_model_metadata("image_classifier")
            sys.exit("a call without the key was answered")
        except InferenceServerException as e:
            assert "UNAUTHENTICATED" in str(e.status()), e.status()
    checked = 0
    for file in sorted(os.listdir(expected_dir)):
        ex = json.load(open(os.path.join(expected_dir, file), encoding="utf-8"))
        model, version = ex["model"], ex["version"]
        assert client.is_model_ready(model, version, headers=h), f"{model} v{version} not ready"
        md = client.get_model_metadata(model, version, headers=h, as_json=True)
        assert md["platform"] == "onnxruntime_onnx", md
        assert [i["name"] for i in md["inputs"]] == [i["name"] for i in ex["inputs"]], md
        cfg = client.get_model_config(model, version, headers=h, as_json=True)["config"]
        assert cfg["name"] == model, cfg
        inputs = []
        for t in ex["inputs"]:
            inp = grpcclient.InferInput(t["name"], t["shape"], t["datatype"])
            inp.set_data_from_numpy(array(t))
            inputs.append(inp)
        outputs = [grpcclient.InferRequestedOutput(t["name"]) for t in ex["outputs"]]
        result = client.infer(model, inputs, model_version=version, outputs=outputs, headers=h)
        for t in ex["outputs"]:
            check(f"{model}/{t['name']}", array(t), result.as_numpy(t["name"]))
        checked += 1

        # Async and streaming APIs on the same request.
        done = queue.Queue()
        client.async_infer(model, inputs, lambda result, error: done.put((result, error)), model_version=version, headers=h)
        r, e = done.get(timeout=30)
        assert e is None, e
        check(f"{model} async", array(ex["outputs"][0]), r.as_numpy(ex["outputs"][0]["name"]))
        client.start_stream(callback=lambda result, error: done.put((result, error)), headers=h)
        client.async_stream_infer(model, inputs, model_version=version, request_id="s1")
        r, e = done.get(timeout=30)
        client.stop_stream()
        assert e is None, e
        check(f"{model} stream", array(ex["outputs"][0]), r.as_numpy(ex["outputs"][0]["name"]))

    try:
        client.get_model_metadata("no_such_model", headers=h)
        sys.exit("unknown model did not fail")
    except InferenceServerException as e:
        assert "NOT_FOUND" in str(e.status()), e.status()
    stats = client.get_inference_statistics(headers=h, as_json=True)
    assert "model_stats" in stats, stats
    print(f"tritonclient: {checked} examples OK")


if __name__ == "__main__":
    main()
