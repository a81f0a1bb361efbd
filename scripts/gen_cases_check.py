"""Re-reads every generated case folder from disk, the way `smoe-run` must (cases.md), and recomputes
its outputs in float64 from the spec: config keys -> router preset (routing.md §2), tensors by their
checkpoint names (per-expert or fused, sharded through the index, layer from case.json), BF16 widened
by `bits << 16` (experts.md §9). Uses its own safetensors parser (not the library that wrote the
files) so that a naming or layout mistake in the writer cannot hide. Run by gen_cases.py at the end;
also usable alone:  python scripts/gen_cases_check.py tests/data/cases
"""
import json
import os
import struct
import sys

import numpy as np

sys.dont_write_bytecode = True  # no __pycache__ in scripts/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_cases_ref as ref  # noqa: E402

_DT = {"F32": np.float32, "I32": np.int32, "U8": np.uint8, "BF16": np.uint16, "F16": np.float16}


def read_safetensors(path):
    with open(path, "rb") as fh:
        data = fh.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    body = data[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        a = np.frombuffer(body[b:e], dtype=_DT[info["dtype"]]).reshape(info["shape"])
        if info["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = (info["dtype"], a)
    return out


def load_weights(case):
    idx = os.path.join(case, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as fh:
            wm = json.load(fh)["weight_map"]
        out = {}
        for f in sorted(set(wm.values())):
            part = read_safetensors(os.path.join(case, f))
            assert all(wm[n] == f for n in part), f
            out.update(part)
        assert set(out) == set(wm)
        return out
    return read_safetensors(os.path.join(case, "weights.safetensors"))


def route_full(cfg, L, bias):
    mt = cfg["model_type"]
    E = cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts")
    k = cfg["num_experts_per_tok"]
    assert L.shape[1] == E
    if mt == "mixtral":
        return ref.topk(L, k, norm_topk_prob=True)
    if mt in ("olmoe", "qwen2_moe"):
        return ref.topk(L, k, norm_topk_prob=cfg["norm_topk_prob"])
    if mt == "deepseek_v2":
        g = cfg["topk_method"] == "group_limited_greedy"
        return ref.topk(L, k, routed_scaling_factor=cfg["routed_scaling_factor"],
                        n_group=cfg["n_group"] if g else 1, topk_group=cfg["topk_group"] if g else None)
    if mt == "deepseek_v3":
        return ref.topk(L, k, score_func="sigmoid", norm_topk_prob=cfg["norm_topk_prob"],
                        routed_scaling_factor=cfg["routed_scaling_factor"], n_group=cfg["n_group"],
                        topk_group=cfg["topk_group"], expert_bias=bias)
    raise ValueError(mt)


def swiglu(x, w1, w3, w2):
    g = x @ w1.T
    return ((g / (1 + np.exp(-g))) * (x @ w3.T)) @ w2.T


def full_layer(case, cfg):
    layer = 0
    if os.path.exists(os.path.join(case, "case.json")):
        with open(os.path.join(case, "case.json")) as fh:
            layer = json.load(fh)["layer"]
    W = {n: a.astype(np.float64) for n, (_, a) in load_weights(case).items()}
    mt = cfg["model_type"]
    p = f"model.layers.{layer}." + ("block_sparse_moe." if mt == "mixtral" else "mlp.")
    names = ("w1", "w3", "w2") if mt == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    x = read_safetensors(os.path.join(case, "input.safetensors"))["hidden_states"][1].astype(np.float64)
    bias = W.get(p + "gate.e_score_correction_bias")
    ids, w = route_full(cfg, x @ W[p + "gate.weight"].T, bias)
    f = cfg["intermediate_size"] if mt in ("mixtral", "olmoe") else cfg["moe_intermediate_size"]
    if p + "experts.gate_up_proj" in W:
        gu, dn = W[p + "experts.gate_up_proj"], W[p + "experts.down_proj"]
        ex = lambda e: (gu[e, :f], gu[e, f:], dn[e])
    else:
        ex = lambda e: tuple(W[p + f"experts.{e}.{n}.weight"] for n in names)
    y = np.zeros_like(x)
    for t in range(x.shape[0]):
        for e, v in zip(ids[t], w[t]):
            y[t] += v * swiglu(x[t:t + 1], *ex(e))[0]
    sh = "shared_expert." if mt == "qwen2_moe" else "shared_experts."
    if p + sh + "gate_proj.weight" in W:
        s = swiglu(x, *(W[p + sh + n + ".weight"] for n in ("gate_proj", "up_proj", "down_proj")))
        if mt == "qwen2_moe":
            s = s / (1 + np.exp(-(x @ W[p + "shared_expert_gate.weight"].T)))
        y += s
    return {"hidden_states": y, "expert_ids": ids, "expert_weights": w}


def lora(case, cfg):
    W = {n: a.astype(np.float64) for n, (_, a) in load_weights(case).items()}
    m = cfg.get("module")
    lp = f"base_model.model.{m}." if m else ""
    bp = f"{m}." if m else "base_layer."
    x = read_safetensors(os.path.join(case, "input.safetensors"))["hidden_states"][1].astype(np.float64)
    y, ids, w = ref.rankwise_lora(x, W[lp + "lora_router.weight"], W[lp + "lora_A.weight"],
                                  W[lp + "lora_B.weight"], cfg["top_k"], cfg["lora_alpha"],
                                  W.get(lp + "lora_biases"), W.get(bp + "weight"), W.get(bp + "bias"))
    return {"hidden_states": y, "expert_ids": ids, "expert_weights": w}


def check_case(case):
    import gen_cases
    with open(os.path.join(case, "config.json")) as fh:
        cfg = json.load(fh)
    if "router" in cfg:
        inp = {n: a for n, (_, a) in read_safetensors(os.path.join(case, "input.safetensors")).items()}
        got = gen_cases.router_outputs(cfg, inp["router_logits"].astype(np.float64), inp.get("expert_bias"),
                                       np.float64)
    elif cfg.get("layer") == "rankwise_lora":
        got = lora(case, cfg)
    else:
        got = full_layer(case, cfg)
    exp = read_safetensors(os.path.join(case, "expected.safetensors"))
    want_dt = {"expert_ids": "I32", "token_ids": "I32", "tokens_per_expert": "I32", "dropped": "U8"}
    names = set(n for n in exp if not n.startswith("hf_"))
    assert names == set(got), (case, sorted(names), sorted(got))
    for n in names:
        dt, a = exp[n]
        assert dt == want_dt.get(n, "F32"), (case, n, dt)
        b = np.asarray(got[n])
        assert a.shape == b.shape, (case, n, a.shape, b.shape)
        if dt != "F32":
            assert np.array_equal(a, b), (case, n)
        else:
            a2 = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)
            b2 = b.reshape(a2.shape)
            err = np.abs(a2 - b2).max(axis=1) / np.maximum(np.abs(b2).max(axis=1), 1e-30)
            assert err.max() <= 1e-5, (case, n, err.max())
    return sorted(names)


def main(root):
    def hf_only(c):  # gen_cases_hf.family_cases: the HF module is the only reference
        path = os.path.join(root, c, "case.json")
        return os.path.exists(path) and json.load(open(path)).get("reference") == "hf-module"
    cases = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not hf_only(d))
    for c in cases:
        check_case(os.path.join(root, c))
    print(f"checked {len(cases)} cases in {root} from disk against the float64 spec references")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/cases")
