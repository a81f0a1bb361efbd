#!/usr/bin/env python3
"""PyTorch baseline for bench/cuda: the Hugging Face Mixtral-style per-expert loop on the GPU, bf16.

Same shapes, token counts and formulas as smoe_cuda_bench (shared/perf.md): gate in fp32, softmax,
top-k, renormalise, then for every expert with tokens: gather, w1/w3 GEMMs, silu * up, w2 GEMM, scale,
index_add_. Prints one JSON record per (shape, T) with min/median ms, GB/s on the weight bytes of the
experts hit, and TFLOP/s. Timing: CUDA events around each forward, after warm-up, minimum of reps.

    python3 bench/cuda/torch_moe_cuda.py [--shapes mixtral,olmoe,qwen2moe,dsv2-lite] [--tokens 1,8,64,512,4096] [--reps 20]
"""
import argparse
import json

import torch

SHAPES = {"mixtral": (4096, 14336, 8, 2), "olmoe": (2048, 1024, 64, 8), "qwen2moe": (2048, 1408, 60, 4),
          "dsv2-lite": (2048, 1408, 64, 6)}


def moe_forward(x, gate, w1, w3, w2, k):
    logits = x.float() @ gate.t()
    probs = torch.softmax(logits, dim=-1)
    weights, ids = torch.topk(probs, k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    y = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    mask = torch.nn.functional.one_hot(ids, num_classes=gate.shape[0]).permute(2, 1, 0)  # [E, k, T]
    hit = torch.nonzero(mask.sum(dim=(1, 2)) > 0).flatten().tolist()  # a host sync, as in HF's loop
    for e in hit:
        slot, tok = torch.where(mask[e])
        xe = x[tok]
        h = torch.nn.functional.silu(xe @ w1[e].t()) * (xe @ w3[e].t())
        out = (h @ w2[e].t()).float() * weights[tok, slot, None]
        y.index_add_(0, tok, out)
    return y.to(x.dtype), len(hit)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="mixtral,olmoe,qwen2moe,dsv2-lite")
    ap.add_argument("--tokens", default="1,8,64,512,4096")
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    print(json.dumps({"device": torch.cuda.get_device_name(dev), "torch": torch.__version__}))
    for name in a.shapes.split(","):
        d, f, E, k = SHAPES[name]
        w1 = (torch.randn(E, f, d, device=dev) * 0.02).bfloat16()
        w3 = (torch.randn(E, f, d, device=dev) * 0.02).bfloat16()
        w2 = (torch.randn(E, d, f, device=dev) * 0.02).bfloat16()
        gate = torch.randn(E, d, device=dev) * 0.02
        for T in [int(t) for t in a.tokens.split(",")]:
            x = torch.randn(T, d, device=dev).bfloat16()
            for _ in range(3):
                moe_forward(x, gate, w1, w3, w2, k)
            ms = []
            hit = 0
            for _ in range(a.reps):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                _, hit = moe_forward(x, gate, w1, w3, w2, k)
                e.record()
                torch.cuda.synchronize()
                ms.append(s.elapsed_time(e))
            ms.sort()
            t = ms[0] * 1e-3
            nbytes = hit * 3 * d * f * 2
            flops = T * k * 6 * d * f + 2 * T * d * E
            print(json.dumps({"shape": name, "T": T, "dtype": "bf16", "impl": "torch-per-expert-loop",
                              "min_ms": round(ms[0], 4), "median_ms": round(ms[len(ms) // 2], 4), "experts_hit": hit,
                              "gbps": round(nbytes / t / 1e9, 1), "tflops": round(flops / t / 1e12, 2)}), flush=True)
        del w1, w3, w2
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
