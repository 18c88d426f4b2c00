"""Drives localml's REST listener with Triton's unmodified Python HTTP client.

Usage: python3 tests/python/tritonclient_http_check.py HOST:PORT EXPECTED_DIR

With LOCALML_KEY set, every call carries `headers={"authorization": "Bearer KEY"}`, and a
call without it must be refused (HTTP 401).

For every stored example: readiness, metadata and config, then inference three ways:
JSON tensors both ways, binary inputs with JSON outputs, and binary both ways (Triton's
binary tensor extension), each against the outputs onnxruntime's Python API computed.
Then statistics, and an unknown model's 404. Exits non-zero on any mismatch. Run by the
Rust integration test `rest::tritonclient_http_runs_every_example_with_json_and_binary_data`.
"""

import json
import os
import sys

import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from expected_examples import array, check


def main():
    url, expected_dir = sys.argv[1], sys.argv[2]
    key = os.environ.get("LOCALML_KEY")
    h = {"authorization": f"Bearer {key}"} if key else None
    client = httpclient.InferenceServerClient(url=url)
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    if key:
        try:
            client.get_model_metadata("image_classifier")
            sys.exit("a call without the key was answered")
        except InferenceServerException as e:
            assert str(e.status()) == "401", e.status()
    checked = 0
    for file in sorted(os.listdir(expected_dir)):
        ex = json.load(open(os.path.join(expected_dir, file), encoding="utf-8"))
        model, version = ex["model"], ex["version"]
        assert client.is_model_ready(model, version, headers=h), f"{model} v{version} not ready"
        md = client.get_model_metadata(model, version, headers=h)
        assert md["platform"] == "onnxruntime_onnx", md
        assert [i["name"] for i in md["inputs"]] == [i["name"] for i in ex["inputs"]], md
        cfg = client.get_model_config(model, version, headers=h)
        assert cfg["name"] == model, cfg
        assert [i["name"] for i in cfg["input"]] == [i["name"] for i in ex["inputs"]], cfg
        for binary_in, binary_out in [(False, False), (True, False), (True, True)]:
            inputs = []
            for t in ex["inputs"]:
                inp = httpclient.InferInput(t["name"], t["shape"], t["datatype"])
                inp.set_data_from_numpy(array(t), binary_data=binary_in)
                inputs.append(inp)
            outputs = [
                httpclient.InferRequestedOutput(t["name"], binary_data=binary_out)
                for t in ex["outputs"]
            ]
            result = client.infer(
                # A fresh dict: tritonclient.http adds Inference-Header-Content-Length to
                # the headers it is given, which would then go with the next request.
                model, inputs, model_version=version, outputs=outputs,
                headers=dict(h) if h else None,
                request_id=f"r-{binary_in}-{binary_out}",
            )
            for t in ex["outputs"]:
                how = f"{model} v{version}/{t['name']} (binary in: {binary_in}, out: {binary_out})"
                check(how, array(t), result.as_numpy(t["name"]))
            response = result.get_response()
            assert response["model_name"] == model, response
            assert response["id"] == f"r-{binary_in}-{binary_out}", response
            assert response["parameters"]["localml.worker"], response
        checked += 1

    try:
        client.get_model_metadata("no_such_model", headers=h)
        sys.exit("unknown model did not fail")
    except InferenceServerException as e:
        assert str(e.status()) == "404", e.status()
        assert "no_such_model" in e.message(), e.message()
    stats = client.get_inference_statistics(headers=h)
    counted = {(s["name"], s["version"]): s["inference_count"] for s in stats["model_stats"]}
    assert counted[("image_classifier", "1")] >= 3, counted
    print(f"tritonclient.http: {checked} examples OK (JSON and binary)")


if __name__ == "__main__":
    main()
