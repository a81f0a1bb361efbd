#!/usr/bin/env python3
"""Tokens/s of Hugging Face generate() with experts_implementation "eager", "grouped_mm" and "smoe", on the CPU.

    OMP_WAIT_POLICY=PASSIVE VENV/bin/python bench/python/hf_generate.py [--shapes tiny,qwen3] [--threads 1,2]

OMP_WAIT_POLICY=PASSIVE on a shared machine: torch's OpenMP threads otherwise spin at every barrier and
wait milliseconds for a descheduled peer, which swamps every implementation's 2-thread numbers.

(VENV from scripts/hf-venv.sh, which pip-installs smoe.) Random qwen3_moe models in bf16, built once per shape;
the three implementations run the same model and prompt. Per (shape, threads, implementation): one warm-up
generate (smoe packs its weights there), then the median of --reps timed generate() calls of --new tokens
after a --prompt token prompt, greedy, batch 1. tokens/s = new tokens / wall time of the whole call
(prefill included); the prefill alone (one new token) is timed too, and the time spent inside the experts
modules (per new token, prefill included). Prints a markdown table; `load` is the 1-minute load average
after the row (the machine may be shared: compare rows measured under similar load).
"""
import argparse
import os
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM, Qwen3MoeConfig

import smoe.hf

SHAPES = {
    # d, experts, f, top-k, layers, vocab, heads, kv heads
    "tiny": dict(hidden_size=256, num_experts=16, moe_intermediate_size=128, num_experts_per_tok=2,
                 num_hidden_layers=2, vocab_size=1024, num_attention_heads=4, num_key_value_heads=2, head_dim=64),
    # Qwen3-30B-A3B's MoE block with 4 layers; vocabulary 32000 instead of 151936 so that the LM head does not
    # dominate decode (it is the same for every implementation).
    "qwen3": dict(hidden_size=2048, num_experts=128, moe_intermediate_size=768, num_experts_per_tok=8,
                  num_hidden_layers=4, vocab_size=32000, num_attention_heads=32, num_key_value_heads=4, head_dim=128),
}
IMPLS = ("eager", "grouped_mm", "smoe")


def build(shape):
    cfg = Qwen3MoeConfig(intermediate_size=6144, max_position_embeddings=4096, norm_topk_prob=True,
                         tie_word_embeddings=False, initializer_range=0.02, **SHAPES[shape])
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval(), cfg


class ExpertsClock:
    """Wall time spent inside the experts modules (forward hooks; the same cost for every implementation)."""

    def __init__(self, model):
        self.seconds = 0.0
        for m in model.modules():
            if hasattr(m, "has_gate") and hasattr(m, "is_transposed"):
                m.register_forward_pre_hook(self.start)
                m.register_forward_hook(self.stop)

    def start(self, m, a):
        self.t0 = time.perf_counter()

    def stop(self, m, a, o):
        self.seconds += time.perf_counter() - self.t0


def timed_generate(model, prompt, new):
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    dt = time.perf_counter() - t0
    assert out.shape[1] == prompt.shape[1] + new
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="tiny,qwen3")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()
    smoe.hf.register()
    rows = []
    load = os.getloadavg()[0]
    print("torch %s, cpu threads available %d, load average %.2f at start" % (torch.__version__, os.cpu_count(), load),
          file=sys.stderr)
    for shape in a.shapes.split(","):
        model, cfg = build(shape)
        clock = ExpertsClock(model)
        prompt = torch.randint(3, cfg.vocab_size, (1, a.prompt), generator=torch.Generator().manual_seed(1))
        for threads in map(int, a.threads.split(",")):
            torch.set_num_threads(threads)
            for impl in a.impls.split(","):
                model.set_experts_implementation(impl)
                timed_generate(model, prompt, 2)  # warm-up; smoe packs its weights here
                prefill = statistics.median(timed_generate(model, prompt, 1) for _ in range(a.reps))
                clock.seconds = 0.0
                total = statistics.median(timed_generate(model, prompt, a.new) for _ in range(a.reps))
                experts_ms = clock.seconds / a.reps / a.new * 1e3
                row = (shape, threads, impl, a.new / total, prefill * 1e3, experts_ms, os.getloadavg()[0])
                rows.append(row)
                print("%-6s %d threads %-10s %8.2f tokens/s  prefill(%d) %8.1f ms  experts %7.2f ms/token  load %.2f"
                      % (shape, threads, impl, row[3], a.prompt, row[4], row[5], row[6]), file=sys.stderr, flush=True)
        del model
    lines = ["| shape | threads | experts_implementation | tokens/s (%d new) | vs eager | prefill %d tokens (ms) | "
             "in experts (ms per new token) | load |" % (a.new, a.prompt), "|---|---|---|---|---|---|---|---|"]
    for shape, threads, impl, tps, pre, ex, load in rows:
        base = next((r[3] for r in rows if r[:2] == (shape, threads) and r[2] == "eager"), None)
        lines.append("| %s | %d | %s | %.2f | %s | %.1f | %.2f | %.1f |" % (
            shape, threads, impl, tps, "%.2fx" % (tps / base) if base else "-", pre, ex, load))
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
