"""One markdown report from the peers' JSON: the WiLoR model stage side by
side, each peer's outputs against PyTorch eager float32 on the same crops,
and posed's full route through gRPC.

  python table.py --posed posed.json --torch torch.json --mlx mlx.json \
      --posed-outputs posed-fixture.safetensors --grpc grpc.json > peers.md
"""

import argparse
import json
import os

import numpy as np

from common import max_abs, read_safetensors


def load(path):
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def outputs_of(path):
    npz = path.rsplit(".", 1)[0] + ".outputs.npz"
    return dict(np.load(npz)) if os.path.exists(npz) else {}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--posed")
    ap.add_argument("--torch")
    ap.add_argument("--mlx")
    ap.add_argument("--posed-outputs")
    ap.add_argument("--grpc")
    args = ap.parse_args()

    rows = []
    posed = load(args.posed)
    if posed:
        for c in posed["cases"]:
            mode = "compiled" if c["compiled"] else "eager"
            rows.append(("posed (mlx-rs)", mode, c["pose_dtype"], c["per_frame"], c["stages"]["model"]))
    for report in (load(args.torch), load(args.mlx)):
        for c in (report or {}).get("cases", []):
            rows.append((c["peer"], c["mode"], c["dtype"], c["batch"], c["model"]))
    device = (posed or load(args.torch) or {}).get("device", "?")
    print(f"## WiLoR model stage ({device})\n")
    print("Crops (uint8, host) in, 3-D keypoints, vertices, camera and betas on the host out.\n")
    print("| peer | mode | dtype | hands (batch) | p50 ms | p90 ms | p99 ms | max ms | p99 / p50 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for peer, mode, dtype, batch, s in sorted(rows, key=lambda r: (r[3], r[4]["p50_ms"])):
        print(f"| {peer} | {mode} | {dtype} | {batch} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | "
              f"{s['p99_ms']:.2f} | {s['max_ms']:.2f} | {s['p99_ms'] / s['p50_ms']:.2f} |")

    ref_out = outputs_of(args.torch) if args.torch else {}
    ref = {k.split(".", 3)[3]: v for k, v in ref_out.items() if k.startswith("eager.f32.b2.")}
    if ref:
        print("\n## Outputs against PyTorch eager float32 (the two fixture crops, batch 2)\n")
        print("| peer | mode | dtype | keypoints 3-D max abs (m) | vertices max abs (m) |")
        print("|---|---|---|---|---|")
        others = []
        for name, path in (("WiLoR-mini (PyTorch)", args.torch), ("wilor-mlx (MLX Python)", args.mlx)):
            for k, v in (outputs_of(path) if path else {}).items():
                mode, dtype, batch, key = k.split(".", 3)
                if batch == "b2" and key == "pred_vertices" and (name, mode, dtype) != (
                        "WiLoR-mini (PyTorch)", "eager", "f32"):
                    kp = outputs_of(path)[f"{mode}.{dtype}.{batch}.pred_keypoints_3d"]
                    others.append((name, mode, dtype, max_abs(kp, ref["pred_keypoints_3d"]),
                                   max_abs(v, ref["pred_vertices"])))
        if args.posed_outputs and os.path.exists(args.posed_outputs):
            p = read_safetensors(args.posed_outputs)
            others.append(("posed (mlx-rs)", "eager", "f32",
                           max_abs(p["output.pred_keypoints_3d"], ref["pred_keypoints_3d"]),
                           max_abs(p["output.pred_vertices"], ref["pred_vertices"])))
        for name, mode, dtype, kp, v in others:
            print(f"| {name} | {mode} | {dtype} | {kp:.2e} | {v:.2e} |")

    grpc = load(args.grpc)
    if grpc:
        print(f"\n## posed, full hand route through gRPC ({grpc['daemon_device']})\n")
        print("Push of a 640x480 JPEG to its event at a subscriber, loopback TCP.\n")
        print("| hands | in flight | frames | lost | p50 ms | p90 ms | p99 ms | max ms | frames/s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for c in grpc["cases"]:
            hands = "detector" if c["hand_boxes"] == 0 else f"{c['hand_boxes']} boxes"
            s = c["latency"]
            print(f"| {hands} | {c['in_flight']} | {c['frames']} | {c['lost']} | {s['p50_ms']:.2f} | "
                  f"{s['p90_ms']:.2f} | {s['p99_ms']:.2f} | {s['max_ms']:.2f} | "
                  f"{c['frames_per_s']:.1f} |")


if __name__ == "__main__":
    main()
