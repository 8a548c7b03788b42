"""WiLoR-mini, the PyTorch reference, on posed's weights and the fixture
crops: eager and torch.compile (CUDA graphs), float32 and bf16 autocast.

The upstream code is not part of posed: pass the path of a WiLoR-mini
checkout (github.com/warmshao/WiLoR-mini). posed's weight file is in the
MLX layout (channels-last convolutions, renamed deconvolution layers); it is
mapped back to WiLoR-mini's module names here, and posed's mano.npz becomes
the MANO pickle smplx reads.

  python wilor_torch.py --wilor-mini DIR --models DIR --crops wilor_io.safetensors \
      --json torch.json [--modes eager,compile] [--dtypes f32,bf16] [--batches 1,2]
"""

import argparse
import os
import pickle
import sys
import tempfile
import types

import numpy as np
import torch

from common import OUTPUTS, fixture_crops, read_safetensors, time_runs, write_json


def shim_timm():
    """WiLoR-mini imports three helpers from timm; without timm installed,
    provide them (drop_path is the identity at inference)."""
    try:
        import timm.models.layers  # noqa: F401
        return
    except ImportError:
        pass
    layers = types.ModuleType("timm.models.layers")
    layers.drop_path = lambda x, drop_prob=0.0, training=False: x
    layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
    layers.trunc_normal_ = lambda t, std=1.0, **_: torch.nn.init.trunc_normal_(t, std=std)
    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    timm.models, models.layers = models, layers
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})


def mano_pickle(npz_path, out_path):
    """posed's mano.npz as the dict smplx's MANO loader expects."""
    m = np.load(npz_path)
    v = m["v_template"].shape[0]
    parents = m["parents"].astype(np.int64)
    data = {
        "v_template": m["v_template"],
        "shapedirs": m["shapedirs"],
        # npz: (P, V*3); smplx keeps (V, 3, P) and flattens it back.
        "posedirs": m["posedirs"].T.reshape(v, 3, -1),
        "J_regressor": m["J_regressor"],
        "weights": m["lbs_weights"],
        "kintree_table": np.stack([parents, np.arange(len(parents))]),
        "f": m["faces"].astype(np.int64),
        "hands_components": np.eye(45, dtype=np.float32),
        "hands_mean": np.zeros(45, dtype=np.float32),
    }
    with open(out_path, "wb") as f:
        pickle.dump(data, f)


# posed (MLX layout) name -> (WiLoR-mini name, axes to permute into PyTorch's layout)
DECONV = {"branch0_conv": "deconv.0.0", "branch0_bn": "deconv.0.1",
          "branch1_conv0": "deconv.1.0", "branch1_bn0": "deconv.1.1",
          "branch1_conv1": "deconv.1.3", "branch1_bn1": "deconv.1.4"}


def torch_name(name):
    if name == "backbone.patch_embed.proj.weight":
        return name, (0, 3, 1, 2)  # OHWI -> OIHW
    if name.startswith("refine_net.deconv.first_conv."):
        leaf = name.rsplit(".", 1)[1]
        return f"refine_net.deconv.first_conv.0.{leaf}", (0, 3, 1, 2) if leaf == "weight" else None
    for ours, theirs in DECONV.items():
        prefix = f"refine_net.deconv.{ours}."
        if name.startswith(prefix):
            leaf = name[len(prefix):]
            # Transposed convolutions: OHWI -> PyTorch's (in, out, kh, kw).
            perm = (3, 0, 1, 2) if leaf == "weight" and "conv" in ours else None
            return f"refine_net.deconv.{theirs}.{leaf}", perm
    return name, None


def load_model(wilor_mini, models):
    shim_timm()
    sys.path.insert(0, wilor_mini)
    from wilor_mini.models.wilor import WiLor

    weights = read_safetensors(os.path.join(models, "wilor_weights.safetensors"))
    tmp = tempfile.mkdtemp()
    pkl = os.path.join(tmp, "MANO_RIGHT.pkl")
    mano_pickle(os.path.join(models, "mano.npz"), pkl)
    # The constructor wants the mean parameters as a file; they are the
    # backbone's init_* buffers, which the weights below set anyway.
    mean = os.path.join(tmp, "mano_mean_params.npz")
    np.savez(mean, cam=weights["backbone.init_cam"][0], pose=weights["backbone.init_hand_pose"][0],
             shape=weights["backbone.init_betas"][0])
    model = WiLor(mano_model_path=pkl, mano_mean_path=mean, focal_length=5000, image_size=256)
    state = model.state_dict()
    loaded = {}
    for name, a in weights.items():
        theirs, perm = torch_name(name)
        if theirs not in state:
            if name in ("IMAGE_MEAN", "IMAGE_STD"):
                continue  # constants in WiLoR-mini's code
            if name.endswith(".bias") and "branch" in name:
                continue  # zero biases the MLX export may carry; PyTorch has none
            raise SystemExit(f"{name} ({theirs}) is not a WiLoR-mini parameter")
        t = torch.from_numpy(np.array(a.transpose(perm) if perm else a))
        if tuple(t.shape) != tuple(state[theirs].shape):
            raise SystemExit(f"{name}: {tuple(t.shape)} != WiLoR-mini {tuple(state[theirs].shape)}")
        loaded[theirs] = t
    missing = [k for k in state if k not in loaded and not k.startswith("mano.")
               and not k.endswith("num_batches_tracked")]
    if missing:
        raise SystemExit(f"weights missing for {missing[:5]} ...")
    model.load_state_dict(loaded, strict=False)
    return model.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wilor-mini", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--crops", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--modes", default="eager,compile")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--batches", default="1,2")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()

    dev = torch.device(args.device)
    model = load_model(args.wilor_mini, args.models).to(dev)
    cases, outputs = [], {}
    for mode in args.modes.split(","):
        for dtype in args.dtypes.split(","):
            net = torch.compile(model, mode="reduce-overhead") if mode == "compile" else model
            for batch in map(int, args.batches.split(",")):
                # WiLoR-mini takes BGR crops and flips them to RGB itself.
                bgr = np.ascontiguousarray(fixture_crops(args.crops, batch)[..., ::-1])

                def step():
                    x = torch.from_numpy(bgr).to(dev).float()
                    with torch.inference_mode(), torch.autocast(
                            dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                        out = net(x)
                    return {k: out[k].float().cpu().numpy() for k in OUTPUTS}

                stats = time_runs(step, args.warmup, args.runs)
                out = step()
                for k in OUTPUTS:
                    outputs[f"{mode}.{dtype}.b{batch}.{k}"] = out[k]
                cases.append({"peer": "WiLoR-mini (PyTorch)", "mode": mode, "dtype": dtype,
                              "batch": batch, "model": stats})
                print(f"torch {mode} {dtype} batch {batch}: p50 {stats['p50_ms']:.2f} "
                      f"p90 {stats['p90_ms']:.2f} p99 {stats['p99_ms']:.2f} ms", flush=True)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    write_json(args.json, "WiLoR-mini (PyTorch)", name, cases, outputs,
               {"torch": torch.__version__})


if __name__ == "__main__":
    main()
