"""The web page's "Try" inputs checked against Python references (tests/tests/ui.rs).

    photo_reference.py make PHOTO.png TOKENS.npy
        writes a test photo (70x53 pixels, so resizing to image_scorer's 16x12 mixes
        pixels) and text_classifier v2's stored example inputs as a .npy file, and beside
        it as a JSON file (TOKENS.json, a nested array).
    photo_reference.py check PHOTO.png SEEN.json
        SEEN.json is what tests/js/try_check.mjs saw: the tensor the page sent for the
        photo and the answers the page showed. Checks the page's tensor against Pillow's
        resize and the config's scaling (image_scorer's config.yaml), the page's outputs
        against onnxruntime's Python API on that tensor, and the .npy run against the
        stored outputs. Prints one line per check; exits 1 on a mismatch.

Needs numpy, Pillow, onnxruntime and PyYAML (scripts/deps.sh --test).
"""
import json
import os
import sys

import numpy as np
import onnxruntime
import yaml
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SCORER = os.path.join(ROOT, "examples", "models", "image_scorer")


def make(photo, tokens):
    rs = np.random.RandomState(7)
    y, x = np.mgrid[0:53, 0:70]
    image = np.stack([x * 255 // 69, y * 255 // 52, (x + y) * 255 // 121], axis=-1)
    image = np.clip(image + rs.randint(-40, 41, size=image.shape), 0, 255).astype(np.uint8)
    Image.fromarray(image, "RGB").save(photo)
    example = json.load(open(os.path.join(ROOT, "examples", "expected", "text_classifier.v2.json")))
    t = example["inputs"][0]
    array = np.array(t["data"], dtype=np.int64).reshape(t["shape"])
    np.save(tokens, array)
    with open(os.path.splitext(tokens)[0] + ".json", "w") as f:
        json.dump(array.tolist(), f)


def reference_tensor(photo, task):
    layout = task.get("layout", "NCHW")
    channels = task.get("channels", "RGB")
    image = Image.open(photo).convert("RGB").resize((task["width"], task["height"]), Image.BILINEAR)
    pixels = np.asarray(image).astype(np.float64)
    if channels == "BGR":
        pixels = pixels[:, :, ::-1]
    mean = np.array(task.get("mean", [0, 0, 0]), dtype=np.float64)
    std = np.array(task.get("std", [1, 1, 1]), dtype=np.float64)
    values = (pixels * task.get("scale", 1 / 255) - mean) / std
    if layout == "NCHW":
        values = values.transpose(2, 0, 1)
    return values[np.newaxis].astype(np.float32)


def check(photo, seen_path):
    seen = json.load(open(seen_path))
    task = yaml.safe_load(open(os.path.join(SCORER, "config.yaml")))["task"]
    failures = []
    sent = seen["photo"]["request"]["inputs"][0]
    page = np.array(sent["data"], dtype=np.float32).reshape(sent["shape"])
    want = reference_tensor(photo, task)
    if page.shape != want.shape:
        failures.append(f"tensor shape {page.shape}, Pillow's {want.shape}")
    else:
        diff = float(np.max(np.abs(page - want)))
        print(f"photo tensor {list(page.shape)}: max |page - Pillow| {diff:.2g}")
        if diff > 1e-4:
            failures.append(f"the page's tensor differs from Pillow's by {diff}")
    session = onnxruntime.InferenceSession(os.path.join(SCORER, "1", "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    (ort_scores,) = session.run(["scores"], {"image": page})
    shown = seen["photo"]["response"]["outputs"][0]
    got = np.array(shown["data"], dtype=np.float32).reshape(shown["shape"])
    diff = float(np.max(np.abs(got - ort_scores)))
    print(f"photo scores: max |page - onnxruntime| {diff:.2g}")
    if diff > 1e-5:
        failures.append(f"the page's scores differ from onnxruntime's by {diff}")
    labels = open(os.path.join(SCORER, "1", "labels.txt")).read().split()
    top = labels[int(np.argmax(ort_scores[0]))]
    if seen["photo"]["top"] != top:
        failures.append(f"the page shows '{seen['photo']['top']}' on top, onnxruntime '{top}'")
    # The model's answer depends on the layout, the channel order and the scaling: a
    # page that got any of them wrong would not have matched above.
    (right_scores,) = session.run(["scores"], {"image": want})
    for change in [{"layout": "NCHW"}, {"channels": "RGB"}, {"mean": [0, 0, 0], "std": [1, 1, 1]}]:
        wrong = reference_tensor(photo, {**task, **change}).reshape(want.shape)
        (wrong_scores,) = session.run(["scores"], {"image": wrong})
        if np.max(np.abs(wrong_scores - right_scores)) < 0.05:
            failures.append(f"the scores hardly change with {change}: a weak test model")
    example = json.load(open(os.path.join(ROOT, "examples", "expected", "text_classifier.v2.json")))
    stored = example["outputs"][0]
    for kind in ["npy", "json"]:
        shown = seen[kind]["response"]["outputs"][0]
        got = np.array(shown["data"], dtype=np.float64)
        want = np.array(stored["data"], dtype=np.float64)
        diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
        print(f"{kind} file run {shown['shape']}: max |page - stored| {diff:.2g}")
        if shown["shape"] != stored["shape"] or diff > 1e-5:
            failures.append(f"the .{kind} run's outputs {shown['shape']} differ from the stored ones by {diff}")
    if failures:
        print("FAILED: " + "; ".join(failures))
        sys.exit(1)
    print("page inputs OK")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    else:
        check(sys.argv[2], sys.argv[3])
