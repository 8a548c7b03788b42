"""What the peer benchmarks share: reading posed's weight files and the
fixture crops without extra packages, timing, and the JSON they write."""

import json
import struct
import time

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64,
           "U8": np.uint8, "U32": np.uint32}


def read_safetensors(path):
    """name -> numpy array (bf16 files are not expected here)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=_DTYPES[t["dtype"]]).reshape(t["shape"])
    return out


def fixture_crops(path, batch):
    """The parity fixture's RGB uint8 crops (B, 256, 256, 3), repeated up to
    `batch` rows."""
    crops = read_safetensors(path)["input.crops_rgb_u8"]
    rows = [crops[i % len(crops)] for i in range(batch)]
    return np.ascontiguousarray(np.stack(rows))


def percentiles(ms):
    """p50/p90/p99/max by nearest rank, as posed's harness reports them."""
    s = sorted(ms)
    at = lambda q: s[min(len(s) - 1, max(0, int(np.ceil(q * len(s))) - 1))]
    return {"n": len(s), "p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99),
            "max_ms": s[-1]}


def time_runs(step, warmup, runs):
    """`step` must return only once its results are on the host."""
    for _ in range(warmup):
        step()
    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        step()
        ms.append((time.perf_counter() - t) * 1e3)
    return percentiles(ms)


OUTPUTS = ("pred_keypoints_3d", "pred_vertices", "pred_cam", "betas")


def max_abs(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def write_json(path, peer, device, cases, outputs=None, extra=None):
    report = {"peer": peer, "device": device, "cases": cases}
    report.update(extra or {})
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    if outputs is not None:
        np.savez(path.rsplit(".", 1)[0] + ".outputs.npz", **outputs)
