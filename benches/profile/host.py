#!/usr/bin/env python3
"""Where the host's time goes, from `posed bench --cpu-profile DIR` stacks.

    posed bench --route hands --hands 1 --cpu-profile DIR ...   # built with
                                                # --features cpu-profile
    benches/profile/host.py DIR/hands-f32+compile-x1.folded [--json out.json]

Each line of a .folded file is one distinct stack, outermost frame first,
frames as `library!function`, then its number of samples. posed asks for
1000 samples per CPU-second, but the kernel delivers them at its timer tick
(about 150-210 per second on the GPU machines), so read shares, or scale
by a stage timed on one CPU thread (the crop) to get milliseconds. Reported:

- samples per thread;
- self time (the innermost frame) by library, and the top functions;
- inclusive time of the pipeline's stages and of the MLX and CUDA calls
  that the GPU kernel profile (kernels.py) points at: launches,
  synchronisation, graph work, allocation, compilation.
"""
import argparse
import json
import sys
from collections import Counter

# Inclusive buckets: a stack counts once per bucket if any of its frames
# contains one of the patterns.
BUCKETS = {
    "stage: detect": ["HandPipeline::detect", "BodyPipeline::detect"],
    "stage: crops (CPU)": ["prepare_crops"],
    "stage: letterbox (CPU)": ["prepare_detector_input", "letterbox"],
    "stage: pose (WiLoR + MANO)": ["HandPipeline::regress"],
    "stage: mano placement": ["HandPipeline::mesh"],
    "stage: decode": ["posed::decode::"],
    "mlx: building the graph (ops called from Rust)": ["mlx_rs::ops", "mlx_rs::array::Array::", "mlx_rs::fast"],
    "mlx: eval": ["mlx::core::eval_impl"],
    "mlx: compiled-graph replay": ["mlx::core::detail::compile_replace", "CompiledFunction", "compile_trace"],
    "mlx: Compiled::eval_gpu (fused kernels)": ["mlx::core::Compiled::eval_gpu"],
    "mlx: allocator": ["CudaAllocator", "BufferCache", "mlx::core::allocator::malloc"],
    "mlx: JIT / NVRTC": ["nvrtc", "JitModule", "jit_module"],
    "cuda: kernel launch": ["cuLaunchKernel", "cudaLaunchKernel"],
    "cuda: graph instantiate / launch": ["cudaGraphInstantiate", "cuGraphInstantiate", "cudaGraphLaunch", "cuGraphLaunch", "CudaGraphExec"],
    "cuda: synchronise / wait": ["StreamSynchronize", "EventSynchronize", "cudaStreamWaitEvent", "CommandEncoder::synchronize", "mlx::core::synchronize", "Event::wait"],
    "cuda: memcpy": ["Memcpy", "memcpy"],
    "cublas / cublasLt": ["cublas"],
    "cudnn": ["cudnn"],
}


def read(path):
    stacks = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            stacks.append((stack.split(";"), int(count)))
    return stacks


def library(frame):
    return frame.split("!", 1)[0]


def summarise(stacks, top):
    total = sum(c for _, c in stacks)
    threads, libs, leaves, inclusive = Counter(), Counter(), Counter(), Counter()
    buckets = Counter()
    for frames, count in stacks:
        threads[frames[0]] += count
        leaf = frames[-1] if len(frames) > 1 else "?"
        libs[library(leaf)] += count
        leaves[leaf] += count
        for name in set(frames[1:]):
            inclusive[name] += count
        for bucket, patterns in BUCKETS.items():
            if any(p in f for f in frames[1:] for p in patterns):
                buckets[bucket] += count
    share = lambda n: round(100.0 * n / total, 1) if total else 0.0
    return {
        "samples": total,
        "threads": {t: [n, share(n)] for t, n in threads.most_common()},
        "self_by_library": {l: [n, share(n)] for l, n in libs.most_common(top)},
        "self_top": [[f, n, share(n)] for f, n in leaves.most_common(top)],
        "inclusive_buckets": {b: [buckets[b], share(buckets[b])] for b in BUCKETS},
        "inclusive_top": [[f, n, share(n)] for f, n in inclusive.most_common(top)],
    }


def print_summary(path, s, width=110):
    print(f"{path}: {s['samples']} samples")
    print("  threads: " + ", ".join(f"{t} {p}%" for t, (_, p) in s["threads"].items()))
    print("  self time by library:")
    for lib, (n, p) in s["self_by_library"].items():
        print(f"    {p:5.1f}%  {lib}")
    print("  inclusive, by what the frame was doing:")
    for b, (n, p) in s["inclusive_buckets"].items():
        if n:
            print(f"    {p:5.1f}%  {b}")
    print("  self time, top functions:")
    for f, n, p in s["self_top"]:
        print(f"    {p:5.1f}%  {f[:width]}")
    print("  inclusive time, top functions:")
    for f, n, p in s["inclusive_top"]:
        print(f"    {p:5.1f}%  {f[:width]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folded", nargs="+")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--json", help="write the summaries here")
    args = ap.parse_args()
    out = {}
    for path in args.folded:
        s = summarise(read(path), args.top)
        print_summary(path, s)
        out[path.rsplit("/", 1)[-1]] = s
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
