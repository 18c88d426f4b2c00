"""The stored examples (examples/expected/*.json) as numpy arrays, and the comparison
both Triton client checks (gRPC and HTTP) use."""

import sys

import numpy as np

NP = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "BYTES": np.object_,
}


def array(t):
    """A stored tensor ({"datatype", "shape", "data"}) as a numpy array."""
    if t["datatype"] == "BYTES":
        data = np.array([s.encode("utf-8") for s in t["data"]], dtype=np.object_)
    else:
        data = np.array(t["data"], dtype=NP[t["datatype"]])
    return data.reshape(t["shape"])


def as_bytes(x):
    return x.encode("utf-8") if isinstance(x, str) else bytes(x)


def check(name, want, got):
    """Exits with the difference unless `got` equals `want` (floats within tolerance)."""
    if got is None:
        sys.exit(f"{name}: no output")
    if want.dtype == np.object_:
        ok = want.shape == got.shape and [as_bytes(x) for x in want.flatten()] == [
            as_bytes(x) for x in got.flatten()
        ]
    elif np.issubdtype(want.dtype, np.floating):
        tol = 1e-3 if want.dtype == np.float16 else 1e-4
        ok = want.shape == got.shape and np.allclose(
            want, got.astype(want.dtype), rtol=tol, atol=1e-5
        )
    else:
        ok = want.shape == got.shape and np.array_equal(want, got.astype(want.dtype))
    if not ok:
        sys.exit(
            f"mismatch in {name}: want {want.ravel()[:8]} {want.shape}, "
            f"got {got.ravel()[:8]} {got.shape}"
        )
