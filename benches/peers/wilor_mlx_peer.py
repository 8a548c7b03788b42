"""wilor-mlx (MLX Python, github.com/lyonsno/wilor-mlx, on PyPI) on posed's
weights and the fixture crops. posed's files are already in its layout.

  python wilor_mlx_peer.py --models DIR --crops wilor_io.safetensors --json mlx.json \
      [--batches 1,2]
"""

import argparse
import os

import mlx.core as mx
import numpy as np
from wilor_mlx import WiLoR

from common import OUTPUTS, fixture_crops, time_runs, write_json


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True)
    ap.add_argument("--crops", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--batches", default="1,2")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--runs", type=int, default=100)
    args = ap.parse_args()

    model = WiLoR.from_pretrained(
        weights_path=os.path.join(args.models, "wilor_weights.safetensors"),
        mano_path=os.path.join(args.models, "mano.npz"))
    cases, outputs = [], {}
    for batch in map(int, args.batches.split(",")):
        crops = fixture_crops(args.crops, batch)

        def step():
            out = model(mx.array(crops))
            return {k: np.array(out[k]) for k in OUTPUTS}

        stats = time_runs(step, args.warmup, args.runs)
        out = step()
        for k in OUTPUTS:
            outputs[f"eager.f32.b{batch}.{k}"] = out[k]
        cases.append({"peer": "wilor-mlx (MLX Python)", "mode": "eager", "dtype": "f32",
                      "batch": batch, "model": stats})
        print(f"wilor-mlx batch {batch}: p50 {stats['p50_ms']:.2f} p90 {stats['p90_ms']:.2f} "
              f"p99 {stats['p99_ms']:.2f} ms", flush=True)
    write_json(args.json, "wilor-mlx (MLX Python)", str(mx.default_device()), cases, outputs,
               {"mlx": mx.__version__})


if __name__ == "__main__":
    main()
