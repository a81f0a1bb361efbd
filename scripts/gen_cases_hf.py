"""Full-layer cases made by the real Hugging Face `transformers` MoE blocks (see gen_cases.py).

For each case: a small random config of the family's configuration class, the family's sparse-MoE
block class instantiated from it with seeded N(0, std^2) weights, N(0, 1) inputs, and the block's fp32
output. Expert ids / weights come from the block's own router submodule (`block.gate`), sorted per row
by weight descending (ties to the lower id). Every case is also recomputed here in float64 from the
spec (routing.md §2 presets, experts.md §3/§6) and must agree with the module, so a disagreement
between Hugging Face and the spec stops the script instead of landing in the data.
"""
import copy
import json
import os

import numpy as np
import torch
from safetensors.torch import save_file

import gen_cases_ref as ref

from transformers import (DeepseekV2Config, DeepseekV3Config, MixtralConfig, OlmoeConfig,
                          Qwen2MoeConfig)
from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2Moe
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

FAMILIES = {
    "mixtral": dict(config=MixtralConfig, block=MixtralSparseMoeBlock, prefix="block_sparse_moe",
                    names=("w1", "w3", "w2"), f_key="intermediate_size", e_key="num_local_experts"),
    "olmoe": dict(config=OlmoeConfig, block=OlmoeSparseMoeBlock, prefix="mlp",
                  names=("gate_proj", "up_proj", "down_proj"), f_key="intermediate_size",
                  e_key="num_experts"),
    "qwen2_moe": dict(config=Qwen2MoeConfig, block=Qwen2MoeSparseMoeBlock, prefix="mlp",
                      names=("gate_proj", "up_proj", "down_proj"), f_key="moe_intermediate_size",
                      e_key="num_experts"),
    "deepseek_v2": dict(config=DeepseekV2Config, block=DeepseekV2Moe, prefix="mlp",
                        names=("gate_proj", "up_proj", "down_proj"), f_key="moe_intermediate_size",
                        e_key="n_routed_experts"),
    "deepseek_v3": dict(config=DeepseekV3Config, block=DeepseekV3MoE, prefix="mlp",
                        names=("gate_proj", "up_proj", "down_proj"), f_key="moe_intermediate_size",
                        e_key="n_routed_experts"),
}

EXPERT_STD = 0.1  # SwiGLU weights: outputs of order 0.1..1 for d <= 100 (not the tiny 0.02 of real init)


def make_config(family, d, f, E, k, extra):
    fam = FAMILIES[family]
    kw = dict(hidden_size=d, num_experts_per_tok=k, hidden_act="silu", num_hidden_layers=1,
              vocab_size=32, bos_token_id=0, eos_token_id=1, pad_token_id=None,
              num_attention_heads=2, num_key_value_heads=2)
    kw[fam["f_key"]] = f
    kw[fam["e_key"]] = E
    if fam["f_key"] == "moe_intermediate_size":
        kw["intermediate_size"] = 2 * f + 8  # the dense-MLP size: a loader must not use it for experts
    if family.startswith("deepseek"):
        kw["first_k_dense_replace"] = 0  # layer 0 is an MoE layer (V3's default 3 would make it dense)
        # Keys of the published DeepSeek config.json files that the HF classes do not declare; the
        # class keeps them as attributes, so they are part of to_dict() like in a real checkpoint.
        kw["scoring_func"] = "sigmoid" if family == "deepseek_v3" else "softmax"
    if family == "deepseek_v3":
        kw["topk_method"] = "noaux_tc"
    kw.update(extra)
    cfg = fam["config"](**kw)
    cfg._experts_implementation = "eager"
    return cfg


def _rand(rng, shape, std):
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _bf16_round(a):
    return torch.from_numpy(a).to(torch.bfloat16).float().numpy()


def make_weights(family, cfg, rng, bf16):
    """Returns dict of float32 numpy arrays (bf16-rounded when bf16) in a neutral layout."""
    d = cfg.hidden_size
    fam = FAMILIES[family]
    f = getattr(cfg, fam["f_key"])
    E = getattr(cfg, fam["e_key"])
    w = dict(router=_rand(rng, (E, d), 1.0 / np.sqrt(d)),
             w1=_rand(rng, (E, f, d), EXPERT_STD), w3=_rand(rng, (E, f, d), EXPERT_STD),
             w2=_rand(rng, (E, d, f), EXPERT_STD))
    if family == "qwen2_moe":
        fs = cfg.shared_expert_intermediate_size
        w.update(sh1=_rand(rng, (fs, d), EXPERT_STD), sh3=_rand(rng, (fs, d), EXPERT_STD),
                 sh2=_rand(rng, (d, fs), EXPERT_STD), sh_gate=_rand(rng, (1, d), 1.0 / np.sqrt(d)))
    if family.startswith("deepseek"):
        fs = cfg.moe_intermediate_size * cfg.n_shared_experts
        w.update(sh1=_rand(rng, (fs, d), EXPERT_STD), sh3=_rand(rng, (fs, d), EXPERT_STD),
                 sh2=_rand(rng, (d, fs), EXPERT_STD))
    if bf16:
        w = {key: _bf16_round(v) for key, v in w.items()}
    if family == "deepseek_v3":  # F32 in the files; not rounded
        w["bias"] = _rand(rng, (E,), 0.1)
    return w


def build_block(family, cfg, w):
    block = FAMILIES[family]["block"](cfg)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    with torch.no_grad():
        block.gate.weight.copy_(t(w["router"]))
        block.experts.gate_up_proj.copy_(t(np.concatenate([w["w1"], w["w3"]], axis=1)))
        block.experts.down_proj.copy_(t(w["w2"]))
        if family == "qwen2_moe":
            sh = block.shared_expert
            block.shared_expert_gate.weight.copy_(t(w["sh_gate"]))
        elif family.startswith("deepseek"):
            sh = block.shared_experts
        else:
            sh = None
        if sh is not None:
            sh.gate_proj.weight.copy_(t(w["sh1"]))
            sh.up_proj.weight.copy_(t(w["sh3"]))
            sh.down_proj.weight.copy_(t(w["sh2"]))
        if family == "deepseek_v3":
            block.gate.e_score_correction_bias.copy_(t(w["bias"]))
    return block.eval()


def tensor_names(family, w, layer, fused, bf16):
    """On-disk names of a real checkpoint for decoder layer `layer` -> torch tensors."""
    fam = FAMILIES[family]
    p = f"model.layers.{layer}.{fam['prefix']}."
    dt = torch.bfloat16 if bf16 else torch.float32
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dt).contiguous()
    out = {p + "gate.weight": t(w["router"])}
    E = w["w1"].shape[0]
    if fused:
        out[p + "experts.gate_up_proj"] = t(np.concatenate([w["w1"], w["w3"]], axis=1))
        out[p + "experts.down_proj"] = t(w["w2"])
    else:
        n1, n3, n2 = fam["names"]
        for i in range(E):
            out[p + f"experts.{i}.{n1}.weight"] = t(w["w1"][i])
            out[p + f"experts.{i}.{n3}.weight"] = t(w["w3"][i])
            out[p + f"experts.{i}.{n2}.weight"] = t(w["w2"][i])
    if family == "qwen2_moe":
        for n, key in (("gate_proj", "sh1"), ("up_proj", "sh3"), ("down_proj", "sh2")):
            out[p + f"shared_expert.{n}.weight"] = t(w[key])
        out[p + "shared_expert_gate.weight"] = t(w["sh_gate"])
    if family.startswith("deepseek"):
        for n, key in (("gate_proj", "sh1"), ("up_proj", "sh3"), ("down_proj", "sh2")):
            out[p + f"shared_experts.{n}.weight"] = t(w[key])
    if family == "deepseek_v3":
        out[p + "gate.e_score_correction_bias"] = torch.from_numpy(w["bias"]).float().contiguous()
    return out


def spec_route(family, cfg, logits, dt=np.float64):
    """routing.md §2 preset of the family, applied to `logits`, via the spec reference."""
    k = cfg.num_experts_per_tok
    if family == "mixtral":
        return ref.topk(logits, k, norm_topk_prob=True, norm_eps=0.0, dt=dt)
    if family in ("olmoe", "qwen2_moe"):
        return ref.topk(logits, k, norm_topk_prob=cfg.norm_topk_prob, norm_eps=0.0, dt=dt)
    if family == "deepseek_v2":
        groups = cfg.topk_method == "group_limited_greedy"
        return ref.topk(logits, k, routed_scaling_factor=cfg.routed_scaling_factor,
                        n_group=cfg.n_group if groups else 1,
                        topk_group=cfg.topk_group if groups else None, dt=dt)
    if family == "deepseek_v3":
        return ref.topk(logits, k, score_func="sigmoid", norm_topk_prob=cfg.norm_topk_prob,
                        routed_scaling_factor=cfg.routed_scaling_factor, n_group=cfg.n_group,
                        topk_group=cfg.topk_group, expert_bias=cfg._smoe_bias, dt=dt)
    raise ValueError(family)


def _swiglu64(x, w1, w3, w2):
    g = x @ w1.T
    return ((g / (1 + np.exp(-g))) * (x @ w3.T)) @ w2.T


def spec_layer64(family, cfg, w, x):
    """experts.md §1/§3/§6 in float64: routed sum in slot order, then the shared expert."""
    x = x.astype(np.float64)
    W = {key: v.astype(np.float64) for key, v in w.items()}
    ids, wt = spec_route(family, cfg, x @ W["router"].T)
    y = np.zeros_like(x)
    for t in range(x.shape[0]):
        for e, v in zip(ids[t], wt[t]):
            y[t] += v * _swiglu64(x[t:t + 1], W["w1"][e], W["w3"][e], W["w2"][e])[0]
    if "sh1" in W:
        sh = _swiglu64(x, W["sh1"], W["sh3"], W["sh2"])
        if family == "qwen2_moe":
            gl = x @ W["sh_gate"].T
            sh = sh / (1 + np.exp(-gl))
        y += sh
    return y, ids, wt




def robust_ids(route, L):
    """True when ids are unchanged by small perturbations of the logits and by fp32 arithmetic:
    no decision of this case is closer than about 1e-5 relative (routing.md §0 Agreement)."""
    base = route(L, np.float64)[0]
    if not np.array_equal(route(L.astype(np.float32), np.float32)[0], base):
        return False
    return all(np.array_equal(route(ref.perturb(L, i), np.float64)[0], base) for i in range(8))


def sort_rows(ids, w):
    """Per row: weight descending, ties to the lower id."""
    ids = np.asarray(ids)
    w = np.asarray(w)
    out_i = np.empty_like(ids)
    out_w = np.empty_like(w)
    for t in range(ids.shape[0]):
        order = sorted(range(ids.shape[1]), key=lambda j: (-float(w[t, j]), int(ids[t, j])))
        out_i[t] = ids[t, order]
        out_w[t] = w[t, order]
    return out_i, out_w


def row_rel_err(y, r):
    return float(np.max(np.abs(y - r).max(axis=1) / np.maximum(np.abs(r).max(axis=1), 1e-30)))


def make_full_case(out_dir, name, family, d, f, E, k, T, seed, bf16=False, extra=None,
                   fused=False, layer=0, sharded=False):
    """Writes one full-layer case folder; returns a dict describing it for the README."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    extra = dict(extra or {})
    if sharded:
        extra["num_hidden_layers"] = layer + 1
    cfg = make_config(family, d, f, E, k, extra)
    if bf16:
        cfg.dtype = "bfloat16"
    w = make_weights(family, cfg, rng, bf16)
    other_layers = {l: make_weights(family, cfg, rng, bf16) for l in range(layer)}
    cfg._smoe_bias = w.get("bias")
    Wr = w["router"].astype(np.float64)
    route = lambda L, dt: spec_route(family, cfg, L, dt)
    for attempt in range(100):  # inputs whose routing has no near-tie (reproducible: seeded)
        x = rng.standard_normal((T, d)).astype(np.float32)
        if robust_ids(route, x.astype(np.float64) @ Wr.T):
            break
    else:
        raise RuntimeError(f"{name}: no input without near-ties")
    del cfg._smoe_bias

    block = build_block(family, cfg, w)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        y = block(xt.view(1, T, d)).view(T, d).float().numpy()
        _, g_w, g_i = block.gate(xt)
    ids, wts = sort_rows(g_i.numpy(), g_w.float().numpy())

    # Cross-checks against the spec in float64 (script stops on any disagreement).
    cfg._smoe_bias = w.get("bias")
    y64, ids64, w64 = spec_layer64(family, cfg, w, x)
    del cfg._smoe_bias
    assert np.array_equal(ids, ids64), (name, ids, ids64)
    assert np.allclose(wts, w64, rtol=1e-5, atol=1e-7), (name, wts, w64)
    err = row_rel_err(y, y64)
    assert err < 1e-5, (name, err)

    expected = {"hidden_states": torch.from_numpy(y).contiguous(),
                "expert_ids": torch.from_numpy(ids.astype(np.int32)).contiguous(),
                "expert_weights": torch.from_numpy(wts.astype(np.float32)).contiguous()}
    hf_bf16_err = None
    if bf16:
        b16 = copy.deepcopy(block).to(torch.bfloat16)
        if family == "deepseek_v3":  # _keep_in_fp32_modules_strict in HF
            b16.gate.e_score_correction_bias = b16.gate.e_score_correction_bias.float()
        with torch.no_grad():
            yb = b16(xt.to(torch.bfloat16).view(1, T, d)).view(T, d).float().numpy()
        expected["hf_bf16_hidden_states"] = torch.from_numpy(yb).contiguous()
        hf_bf16_err = row_rel_err(yb, y)

    case = os.path.join(out_dir, name)
    os.makedirs(case, exist_ok=True)
    cfg_dict = cfg.to_dict()
    for key in [k_ for k_ in cfg_dict if k_.startswith("_")]:
        del cfg_dict[key]
    with open(os.path.join(case, "config.json"), "w") as fh:
        json.dump(cfg_dict, fh, indent=2, sort_keys=True)
        fh.write("\n")
    tensors = tensor_names(family, w, layer, fused, bf16)
    meta = {"format": "pt"}
    if sharded:
        _write_sharded(case, family, tensors, other_layers, bf16, d, layer)
        with open(os.path.join(case, "case.json"), "w") as fh:
            json.dump({"layer": layer}, fh)
            fh.write("\n")
    else:
        save_file(tensors, os.path.join(case, "weights.safetensors"), metadata=meta)
    save_file({"hidden_states": xt.contiguous()}, os.path.join(case, "input.safetensors"), metadata=meta)
    save_file(expected, os.path.join(case, "expected.safetensors"), metadata=meta)
    return dict(name=name, family=family, cls=FAMILIES[family]["block"].__name__, d=d, f=f, E=E, k=k,
                T=T, bf16=bf16, fused=fused, layer=layer, sharded=sharded, extra=extra,
                spec_err=err, hf_bf16_err=hf_bf16_err)


def _write_sharded(case, family, tensors, other_layers, bf16, d, layer):
    """Two shards + model.safetensors.index.json, like a real checkpoint: shard 1 holds the earlier
    layers, some unrelated tensors and the first half of layer `layer`; shard 2 the rest."""
    dt = torch.bfloat16 if bf16 else torch.float32
    rng = np.random.default_rng(1234)
    s1 = {"model.embed_tokens.weight": torch.from_numpy(_rand(rng, (32, d), 1.0)).to(dt)}
    for l, wl in other_layers.items():
        s1.update(tensor_names(family, wl, l, False, bf16))
        s1[f"model.layers.{l}.post_attention_layernorm.weight"] = torch.ones(d, dtype=dt)
    s2 = {f"model.layers.{layer}.post_attention_layernorm.weight": torch.ones(d, dtype=dt)}
    names = sorted(tensors, key=lambda n: (".experts." in n, n))
    half = len(names) // 2
    for i, n in enumerate(names):
        (s1 if i < half else s2)[n] = tensors[n]
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map, total = {}, 0
    for fname, shard in zip(files, (s1, s2)):
        save_file(shard, os.path.join(case, fname), metadata={"format": "pt"})
        for n, tns in shard.items():
            weight_map[n] = fname
            total += tns.numel() * tns.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(case, "model.safetensors.index.json"), "w") as fh:
        json.dump(index, fh, indent=2)
        fh.write("\n")


# ------------------------------------------------------------------------------------------------
# Families whose block has an expert form of its own (families.md §2.1-§2.6). The reference is the
# HF block alone: its output, and the ids (and where the router returns them, the weights) of its own
# router submodule. There is no float64 re-derivation here, and gen_cases_check.py skips these folders
# (case.json "reference": "hf-module"); the C++ loader tests hold the same layouts to blocks built by hand.

def per_expert(sd, p, gu, dn, names=("gate_proj", "up_proj", "down_proj")):
    """A fused [E, 2f, d] (gate rows first) / [E, d, f] pair as one tensor per expert, as files hold them."""
    out = {}
    E, twof = sd[gu].shape[0], sd[gu].shape[1]
    f = twof // 2
    for e in range(E):
        out[p + f"experts.{e}.{names[0]}.weight"] = sd[gu][e, :f]
        out[p + f"experts.{e}.{names[1]}.weight"] = sd[gu][e, f:]
        out[p + f"experts.{e}.{names[2]}.weight"] = sd[dn][e]
    return out


def _family_defs():
    from transformers import (Cohere2MoeConfig, DbrxConfig, DeepseekV4Config, GptOssConfig, JetMoeConfig,
                              Llama4TextConfig, LongcatFlashConfig, PhimoeConfig)
    from transformers.models.cohere2_moe.modeling_cohere2_moe import Cohere2MoeSparseMoeBlock
    from transformers.models.dbrx.modeling_dbrx import DbrxFFN
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4SparseMoeBlock
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP
    from transformers.models.jetmoe.modeling_jetmoe import JetMoeMoE
    from transformers.models.llama4.modeling_llama4 import Llama4TextMoe
    from transformers.models.longcat_flash.modeling_longcat_flash import LongcatFlashMoE
    from transformers.models.phimoe.modeling_phimoe import PhimoeSparseMoeBlock

    base = dict(num_hidden_layers=1, vocab_size=32, num_attention_heads=2, num_key_value_heads=2,
                bos_token_id=0, eos_token_id=1, pad_token_id=None)
    defs = {}

    def triple(attr):  # a router submodule that returns (logits, weights, ids)
        def route(b, x):
            _, w, i = getattr(b, attr)(x)
            return i, w
        return route

    # GPT-OSS: router bias, softmax over the top-k logits; clamped SwiGLU with biases, interleaved columns.
    def oss_cfg(d, f, E, k, extra):
        return GptOssConfig(**base, hidden_size=d, intermediate_size=f, num_local_experts=E, num_experts_per_tok=k,
                            head_dim=16, **extra)
    def oss_names(b, p):  # the module's own names are the files' (no conversion mapping)
        return {p + "mlp." + n: t for n, t in b.state_dict().items()}
    defs["gpt_oss"] = dict(cfg=oss_cfg, block=lambda c: GptOssMLP(c), route=triple("router"), names=oss_names)

    # Llama 4: sigmoid of the top-k logits on the expert input; shared expert.
    def l4_cfg(d, f, E, k, extra):
        return Llama4TextConfig(**base, hidden_size=d, intermediate_size=f, intermediate_size_mlp=2 * f + 8,
                                num_local_experts=E, num_experts_per_tok=k, head_dim=16, **extra)
    def l4_route(b, x):
        scores, logits = b.router(x)
        i = torch.topk(logits, b.top_k, dim=1).indices
        return i, scores.gather(1, i)
    defs["llama4"] = dict(cfg=l4_cfg, block=lambda c: Llama4TextMoe(c), route=l4_route,
                          names=lambda b, p: {p + "feed_forward." + n: t for n, t in b.state_dict().items()})

    # Cohere2-MoE: per-expert files (std names), shared experts, average.
    def co_cfg(d, f, E, k, extra):
        return Cohere2MoeConfig(**base, hidden_size=d, intermediate_size=f, num_experts=E, num_experts_per_tok=k,
                                head_dim=16, **extra)
    def co_names(b, p):
        sd = b.state_dict()
        out = per_expert(sd, p + "mlp.", "experts.gate_up_proj", "experts.down_proj")
        out[p + "mlp.gate.weight"] = sd["gate.weight"]
        out.update({p + "mlp." + n: t for n, t in sd.items() if n.startswith("shared_experts.")})
        return out
    defs["cohere2_moe"] = dict(cfg=co_cfg, block=lambda c: Cohere2MoeSparseMoeBlock(c), route=triple("gate"), names=co_names)

    # JetMoE: R-TKS, fused input/output_linear, output bias (the files hold the module's names).
    def jet_cfg(d, f, E, k, extra):
        return JetMoeConfig(**base, hidden_size=d, intermediate_size=f, num_local_experts=E, num_experts_per_tok=k,
                            kv_channels=16, **extra)
    def jet_route(b, x):
        logits = b.router.layer(x)
        return torch.topk(logits, b.router.top_k, dim=1).indices, None
    defs["jetmoe"] = dict(cfg=jet_cfg, block=lambda c: JetMoeMoE(c), route=jet_route,
                          names=lambda b, p: {p + "mlp." + n: t for n, t in b.state_dict().items()})

    # DBRX: nested ffn_config, softmax top-k, p-norm, w1/v1/w2 [E·f, d].
    def dbrx_cfg(d, f, E, k, extra):
        ffn = dict(ffn_hidden_size=f, moe_num_experts=E, moe_top_k=k)
        ffn.update(extra)
        return DbrxConfig(d_model=d, n_layers=1, n_heads=2, vocab_size=32, max_seq_len=64, ffn_config=ffn)
    def dbrx_route(b, x):
        w, i = b.route_tokens_to_experts(b.router(x))
        return i, w
    defs["dbrx"] = dict(cfg=dbrx_cfg, block=lambda c: DbrxFFN(c), route=dbrx_route,
                        names=lambda b, p: {p.replace("model.layers.", "transformer.blocks.") + "ffn." + n: t
                                            for n, t in b.state_dict().items()})

    # LongCat-Flash: softmax over E + Z, selection bias, identity experts (ids >= E), per-expert files.
    def lc_cfg(d, f, E, k, extra):
        return LongcatFlashConfig(hidden_size=d, expert_ffn_hidden_size=f, ffn_hidden_size=2 * f + 8, n_routed_experts=E,
                                  moe_topk=k, num_layers=1, vocab_size=32, num_attention_heads=2,
                                  num_key_value_heads=2, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8,
                                  qk_nope_head_dim=8, v_head_dim=8, bos_token_id=0, eos_token_id=1, pad_token_id=None,
                                  **extra)
    def lc_names(b, p):
        sd = b.state_dict()
        E = b.config.n_routed_experts
        f = b.config.expert_ffn_hidden_size
        out = {}
        for e in range(E):
            out[p + f"mlp.experts.{e}.gate_proj.weight"] = sd["experts.gate_up_proj"][e, :f]
            out[p + f"mlp.experts.{e}.up_proj.weight"] = sd["experts.gate_up_proj"][e, f:]
            out[p + f"mlp.experts.{e}.down_proj.weight"] = sd["experts.down_proj"][e]
        out[p + "mlp.router.classifier.weight"] = sd["router.classifier.weight"]
        out[p + "mlp.router.e_score_correction_bias"] = sd["router.e_score_correction_bias"].float()
        return out
    defs["longcat_flash"] = dict(cfg=lc_cfg, block=lambda c: LongcatFlashMoE(c), route=triple("router"), names=lc_names)

    # DeepSeek-V4: sqrt-softplus + bias, clamp; DeepSeek's own file names (layers.{l}.ffn., w1/w3/w2, gate.bias).
    def v4_cfg(d, f, E, k, extra):
        return DeepseekV4Config(**base, hidden_size=d, moe_intermediate_size=f, n_routed_experts=E, num_experts_per_tok=k,
                                mlp_layer_types=["moe"], **extra)
    def v4_names(b, p):
        sd = b.state_dict()
        q = p.replace("model.layers.", "layers.") + "ffn."
        out = per_expert(sd, q, "experts.gate_up_proj", "experts.down_proj", ("w1", "w3", "w2"))
        out[q + "gate.weight"] = sd["gate.weight"]
        out[q + "gate.bias"] = sd["gate.e_score_correction_bias"].float()
        for a, n in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
            out[q + f"shared_experts.{a}.weight"] = sd[f"shared_experts.{n}.weight"]
        return out
    defs["deepseek_v4"] = dict(cfg=v4_cfg, block=lambda c: DeepseekV4SparseMoeBlock(c, 0), route=triple("gate"), names=v4_names)
    # PhiMoE: sparsemixer (two experts), Mixtral's file names (block_sparse_moe.gate, experts.{i}.w1/w3/w2).
    def phi_cfg(d, f, E, k, extra):
        return PhimoeConfig(**base, hidden_size=d, intermediate_size=f, num_local_experts=E, num_experts_per_tok=k, **extra)
    def phi_names(b, p):
        sd = b.state_dict()
        out = per_expert(sd, p + "block_sparse_moe.", "experts.gate_up_proj", "experts.down_proj", ("w1", "w3", "w2"))
        out[p + "block_sparse_moe.gate.weight"] = sd["router.weight"]
        return out
    defs["phimoe"] = dict(cfg=phi_cfg, block=lambda c: PhimoeSparseMoeBlock(c), route=triple("router"), names=phi_names)
    return defs


# name, family, d, f, E, k, T, seed, bf16, config extra
FAMILY_CASES = [
    ("gpt_oss_f32_t7", "gpt_oss", 40, 12, 8, 2, 7, 41, False, {"swiglu_limit": 1.5}),
    ("gpt_oss_bf16_t7", "gpt_oss", 72, 20, 8, 4, 7, 42, True, {}),
    ("llama4_f32_t7", "llama4", 40, 12, 8, 2, 7, 43, False, {}),
    ("cohere2_moe_f32_t7", "cohere2_moe", 40, 12, 8, 2, 7, 44, False, {"num_shared_experts": 2}),
    ("cohere2_moe_sigmoid_f32_t7", "cohere2_moe", 40, 12, 8, 2, 7, 45, False,
     {"expert_selection_fn": "sigmoid", "norm_topk_prob": True}),
    ("jetmoe_f32_t7", "jetmoe", 40, 12, 8, 2, 7, 46, False, {}),
    ("dbrx_f32_t7", "dbrx", 40, 12, 8, 2, 7, 47, False, {"moe_normalize_expert_weights": 2.0}),
    ("longcat_flash_f32_t7", "longcat_flash", 40, 12, 8, 3, 7, 48, False, {"zero_expert_num": 4, "routed_scaling_factor": 6.0}),
    ("deepseek_v4_f32_t7", "deepseek_v4", 40, 12, 8, 2, 7, 49, False, {"swiglu_limit": 1.0}),
    ("phimoe_f32_t7", "phimoe", 40, 12, 8, 2, 7, 50, False, {"router_jitter_noise": 0.05}),
]


def _call(block, x):
    """The block on x [T, d] as a decoder layer calls it ([1, T, d]); its hidden states as [T, d]."""
    out = block(x.view(1, *x.shape))
    return (out[0] if isinstance(out, tuple) else out).reshape(x.shape)


def _robust(route64, x, ids):
    """Ids unchanged by eight relative perturbations of 1e-5 of the input, in float64 (no near-tie)."""
    rng = np.random.default_rng(7)
    for _ in range(8):
        xp = x * (1 + 1e-5 * rng.standard_normal(x.shape))
        if not torch.equal(torch.sort(route64(xp))[0], torch.sort(ids)[0]):
            return False
    return True


def _selection_bias(name):
    """A selection bias: F32 in the files and in HF's modules (_keep_in_fp32_modules_strict), never rounded."""
    return "correction" in name or name.endswith("gate.bias") or name.endswith("expert_bias")


def write_hf_module_case_json(case, cfg_dict):
    """config.json and case.json of a case whose reference is a Hugging Face module."""
    with open(os.path.join(case, "config.json"), "w") as fh:
        json.dump(cfg_dict, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
    with open(os.path.join(case, "case.json"), "w") as fh:
        json.dump({"reference": "hf-module"}, fh)
        fh.write("\n")


def make_family_case(out_dir, defs, name, family, d, f, E, k, T, seed, bf16, extra):
    fam = defs[family]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = fam["cfg"](d, f, E, k, dict(extra))
    cfg._experts_implementation = "eager"
    if bf16:
        cfg.dtype = "bfloat16"
    block = fam["block"](cfg).eval()
    with torch.no_grad():  # N(0, 0.1²) experts and biases, N(0, 1/d) routers (a router's name says so)
        for n, t in list(block.named_parameters()) + list(block.named_buffers()):
            std = 1.0 / np.sqrt(d) if ("router" in n or n.startswith("gate.")) and "bias" not in n else EXPERT_STD
            a = _rand(rng, tuple(t.shape), std)
            t.copy_(torch.from_numpy(_bf16_round(a) if bf16 and not _selection_bias(n) else a))
    b64 = copy.deepcopy(block).double()
    route64 = lambda xx: fam["route"](b64, torch.from_numpy(xx))[0]
    for attempt in range(100):
        x = rng.standard_normal((T, d)).astype(np.float32)
        ids = fam["route"](block, torch.from_numpy(x))[0]
        if torch.equal(torch.sort(ids)[0], torch.sort(route64(x.astype(np.float64)))[0]) and _robust(route64, x.astype(np.float64), ids):
            break
    else:
        raise RuntimeError(f"{name}: no input without near-ties")
    xt = torch.from_numpy(x)
    with torch.no_grad():
        y = _call(block, xt).float().numpy()
        ids, w = fam["route"](block, xt)
    expected = {"hidden_states": torch.from_numpy(y).contiguous()}
    if w is not None and family == "beam":  # r multiplies BeamMoE's summed output; smoe reports it in the weights
        w = w * block.routed_scaling_factor
    if w is not None:
        si, sw = sort_rows(ids.numpy(), w.float().numpy())
        expected["expert_ids"] = torch.from_numpy(si.astype(np.int32)).contiguous()
        # Cohere2-MoE's `average` halves (routed + shared) after the router: smoe folds the 1/2 into the
        # routing weights it reports, so the router's own weights are information only there.
        average = family == "cohere2_moe" and cfg.num_shared_experts > 0 and cfg.shared_expert_combination_strategy == "average"
        expected["hf_expert_weights" if average else "expert_weights"] = torch.from_numpy(sw.astype(np.float32)).contiguous()
    info = {}
    if bf16 and fam["route"] is _hook_route:
        # Information only (hf_*): the same block with its top-k weights rounded to bf16 before the
        # experts, as a bf16 model does for OLMoE/Qwen/Jamba/Granite (families.md §1.3), and the whole block
        # in bf16 (HF's bf16 inference). smoe keeps the weights in fp32: it matches `hidden_states`.
        def round_weights(_m, args, kwargs):
            if len(args) >= 3:
                return (args[0], args[1], args[2].to(torch.bfloat16).float()) + tuple(args[3:]), kwargs
            kwargs = dict(kwargs, top_k_weights=kwargs["top_k_weights"].to(torch.bfloat16).float())
            return args, kwargs
        h = _experts_module(block).register_forward_pre_hook(round_weights, with_kwargs=True)
        with torch.no_grad():
            yr = _call(block, xt).float().numpy()
        h.remove()
        b16 = copy.deepcopy(block).to(torch.bfloat16)
        for n_, t_ in b16.named_buffers():
            if _selection_bias(n_):
                t_.data = t_.data.float()
        with torch.no_grad():
            yb = _call(b16, xt.to(torch.bfloat16)).float().numpy()
        expected["hf_bf16_routing_hidden_states"] = torch.from_numpy(yr).contiguous()
        expected["hf_bf16_hidden_states"] = torch.from_numpy(yb).contiguous()
        info = dict(routing_bf16_err=row_rel_err(yr, y), hf_bf16_err=row_rel_err(yb, y))
    case = os.path.join(out_dir, name)
    os.makedirs(case, exist_ok=True)
    cfg_dict = cfg.to_dict()
    for key in [k_ for k_ in cfg_dict if k_.startswith("_")]:
        del cfg_dict[key]
    # Python's json writes float("inf") as the bare token Infinity (Granite-4's and Nemotron-H's Mamba
    # time_step_limit [0.0, Infinity]), as transformers 4.x config files hold it; smoe reads such configs
    # (io/strict_json.hpp), so the key is kept.
    if isinstance(cfg_dict.get("ffn_config"), dict):
        cfg_dict["ffn_config"] = {k_: v for k_, v in cfg_dict["ffn_config"].items() if not k_.startswith("_")}
    write_hf_module_case_json(case, cfg_dict)
    dt = torch.bfloat16 if bf16 else torch.float32
    tensors = {n: (t.float() if _selection_bias(n) else t.to(dt)).contiguous()
               for n, t in fam["names"](block, "model.layers.0.").items()}
    meta = {"format": "pt"}
    save_file(tensors, os.path.join(case, "weights.safetensors"), metadata=meta)
    save_file({"hidden_states": xt.contiguous()}, os.path.join(case, "input.safetensors"), metadata=meta)
    save_file(expected, os.path.join(case, "expected.safetensors"), metadata=meta)
    cls = type(block).__name__
    if isinstance(block, _LayerShared):
        cls = f"{type(block.block_sparse_moe).__name__} + {type(block.shared_mlp).__name__}"
    return dict(name=name, family=family, cls=cls, d=d, f=f, E=E, k=k, T=T, bf16=bf16, extra=extra, **info)


def family_cases(out_dir):
    defs = _family_defs()
    return [make_family_case(out_dir, defs, *c) for c in FAMILY_CASES]



# ------------------------------------------------------------------------------------------------
# Families that smoe maps onto its plain SwiGLU layers by config alone (families.md §2, "config mapping
# only", and §4's riders). The reference is the family's own HF block, run like the ones above; the
# routing is what the block hands its experts module (ids and weights captured by a forward hook on
# `experts`, so every family's router is read the same way, whatever its call signature). Tensor names
# are the published checkpoints' (families.md §2.8; transformers' conversion_mapping.py read backwards).

# family: E key, f key, on-disk block prefix, experts layout, module name -> file name renames,
#         nested text_config (the decoder under model.language_model.), config extra
SIMPLE = {
    "qwen3_moe": ("num_experts", "moe_intermediate_size", "mlp.", "std", {}, False, {}),
    "qwen3_next": ("num_experts", "moe_intermediate_size", "mlp.", "std", {}, False,
                   {"shared_expert_intermediate_size": 20}),
    "qwen3_5_moe": ("num_experts", "moe_intermediate_size", "mlp.", "fused", {}, True,
                    {"shared_expert_intermediate_size": 20}),
    "qwen4_exp": ("num_experts", "moe_intermediate_size", "mlp.", "fused", {}, True,
                  {"shared_expert_intermediate_size": 20}),
    "qwen3_vl_moe": ("num_experts", "moe_intermediate_size", "mlp.", "fused_t", {}, True, {}),
    "glm4_moe": ("n_routed_experts", "moe_intermediate_size", "mlp.", "std", {}, False,
                 {"n_group": 2, "topk_group": 1, "routed_scaling_factor": 1.5}),
    "glm4_moe_lite": ("n_routed_experts", "moe_intermediate_size", "mlp.", "std", {}, False, {}),
    "glm_moe_dsa": ("n_routed_experts", "moe_intermediate_size", "mlp.", "std", {}, False, {"n_shared_experts": 2}),
    "glm4v_moe": ("n_routed_experts", "moe_intermediate_size", "mlp.", "std", {}, True, {}),
    "deepseek_v32": ("n_routed_experts", "moe_intermediate_size", "mlp.", "std", {}, False,
                     {"n_group": 4, "topk_group": 2}),
    "dots1": ("n_routed_experts", "moe_intermediate_size", "mlp.", "std", {}, False, {"n_shared_experts": 1}),
    "exaone_moe": ("num_experts", "moe_intermediate_size", "mlp.", "std",
                   {"gate.e_score_correction_bias": "e_score_correction_bias"}, False, {}),
    "bailing_hybrid": ("num_experts", "moe_intermediate_size", "mlp.", "std",
                       {"gate.e_score_correction_bias": "gate.expert_bias"}, False, {"n_group": 2, "topk_group": 1}),
    "kimi_linear": ("num_experts", "moe_intermediate_size", "block_sparse_moe.", "w", {}, False, {}),
    "solar_open": ("n_routed_experts", "moe_intermediate_size", "mlp.", "std", {}, False, {}),
    "mimo_v2_flash": ("n_routed_experts", "moe_intermediate_size", "mlp.", "std", {}, False, {}),
    "beam": ("num_experts", "moe_intermediate_size", "mlp.", "std", {}, False,
             {"n_group": 2, "topk_group": 1, "routed_scaling_factor": 2.5}),
    "minimax": ("num_local_experts", "intermediate_size", "block_sparse_moe.", "w", {}, False, {}),
    "minimax_m2": ("num_local_experts", "intermediate_size", "block_sparse_moe.", "w", {}, False, {}),
    "flex_olmo": ("num_experts", "intermediate_size", "mlp.", "std", {}, False, {}),
    "mellum": ("num_experts", "moe_intermediate_size", "mlp.", "std", {}, False, {}),
    "afmoe": ("num_experts", "moe_intermediate_size", "mlp.", "std", {}, False, {"route_scale": 2.0}),
    "lfm2_moe": ("num_experts", "moe_intermediate_size", "feed_forward.", "w", {}, False, {}),
    "jamba": ("num_experts", "intermediate_size", "feed_forward.", "std", {}, False, {}),
    "hunyuan_v1_moe": ("num_experts", "intermediate_size", "mlp.", "std", {}, False, {}),
    "ernie4_5_moe": ("moe_num_experts", "moe_intermediate_size", "mlp.", "std",
                     {"gate.moe_statics.e_score_correction_bias": "moe_statics.e_score_correction_bias"}, False, {}),
    "flint": ("num_experts", "moe_intermediate_size", "mlp.", "std", {}, False, {"shared_expert_intermediate_size": 20}),
    "hy_v3": ("num_experts", "moe_intermediate_size", "mlp.", "std",
              {"gate.weight": "router.gate.weight", "e_score_correction_bias": "expert_bias",
               "shared_experts.": "shared_mlp."}, False, {}),
    "granitemoe": ("num_local_experts", "intermediate_size", "block_sparse_moe.", "granite",
                   {"router.weight": "router.layer.weight"}, False, {}),
    "granitemoeshared": ("num_local_experts", "intermediate_size", "block_sparse_moe.", "granite",
                         {"router.weight": "router.layer.weight"}, False, {"shared_intermediate_size": 20}),
    "granitemoehybrid": ("num_local_experts", "intermediate_size", "block_sparse_moe.", "granite",
                         {"router.weight": "router.layer.weight"}, False,
                         {"shared_intermediate_size": 20, "mamba_n_heads": 8, "mamba_d_head": 10}),
    "granitemoe_swa": ("num_local_experts", "intermediate_size", "block_sparse_moe.", "granite",
                       {"router.weight": "router.layer.weight"}, False, {"shared_intermediate_size": 20}),
    # Nemotron-H: R-V3 over non-gated relu² experts (up, down) and a relu² shared MLP; DeepSeek's files call
    # the decoder `backbone.` and the block `mixer.`. One layer, the MoE one ("E" in hybrid_override_pattern).
    "nemotron_h": ("n_routed_experts", "moe_intermediate_size", "mixer.", "up", {}, False,
                   {"moe_shared_expert_intermediate_size": 20, "n_group": 2, "topk_group": 1,
                    "routed_scaling_factor": 1.5, "layers_block_type": ["moe"]}),
}

# Keys that make decoder layer 0 an MoE layer (the families' dense-layer rules, families.md §2).
_MOE_AT_0 = dict(first_k_dense_replace=0, num_dense_layers=0, moe_layer_start_index=0, expert_layer_period=1,
                 expert_layer_offset=0, decoder_sparse_step=1, mlp_only_layers=[])


class _LayerShared(torch.nn.Module):
    """Granite's decoder layer around its MoE: block(x) + shared_mlp(x) (both read the same input)."""

    def __init__(self, block, shared):
        super().__init__()
        self.block_sparse_moe = block
        self.shared_mlp = shared

    def forward(self, x):
        return self.block_sparse_moe(x) + self.shared_mlp(x)


def _experts_module(b):
    return next(m for n, m in b.named_modules() if n.split(".")[-1] == "experts")


def _hook_route(b, x):
    """(ids, weights) that the block hands its experts module, for x [T, d]."""
    got = {}
    def hook(_m, args, kwargs):
        a = list(args) + [kwargs.get(k_) for k_ in ("top_k_index", "top_k_weights") if k_ in kwargs]
        got["i"], got["w"] = a[1], a[2]
    h = _experts_module(b).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            _call(b, x)
    finally:
        h.remove()
    return got["i"], got["w"]


def _simple_defs():
    import importlib
    import inspect
    from transformers import CONFIG_MAPPING
    defs = {}
    for family, (e_key, f_key, prefix, layout, renames, nested, fam_extra) in SIMPLE.items():
        mod = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        blocks = [c for n, c in inspect.getmembers(mod, inspect.isclass) if c.__module__ == mod.__name__ and "Model" not in n
                  and n.endswith(("SparseMoeBlock", "SparseMoEBlock", "MoE", "Moe"))]
        assert len(blocks) == 1, (family, blocks)
        shared_cls = [c for n, c in inspect.getmembers(mod, inspect.isclass)
                      if c.__module__ == mod.__name__ and n.endswith("MLP") and "Vision" not in n]

        def cfg(d, f, E, k, extra, family=family, e_key=e_key, f_key=f_key, nested=nested, fam_extra=fam_extra):
            kw = dict(hidden_size=d, num_experts_per_tok=k, num_hidden_layers=1, vocab_size=32,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=16, **{e_key: E, f_key: f})
            if f_key == "moe_intermediate_size":
                kw["intermediate_size"] = 2 * f + 8  # the dense MLP's width: never the experts'
            kw.update(fam_extra)
            kw.update(extra)
            if nested:
                c = CONFIG_MAPPING[family](text_config=kw)
                t = c.text_config
            else:
                c = CONFIG_MAPPING[family](**kw, bos_token_id=0, eos_token_id=1, pad_token_id=None)
                t = c
            for key, v in _MOE_AT_0.items():
                if hasattr(t, key) and getattr(t, key) is not None:
                    setattr(t, key, v)
            if getattr(t, "mlp_layer_types", None) is not None:
                t.mlp_layer_types = ["sparse"]
            t._experts_implementation = "eager"
            return c

        def block(c, blk=blocks[0], shared_cls=shared_cls, layout=layout):
            t = getattr(c, "text_config", None) or c
            sig = inspect.signature(blk.__init__).parameters
            b = blk(t, 0) if "layer_idx" in sig else blk(t)
            if layout == "granite" and getattr(t, "shared_intermediate_size", 0):
                b = _LayerShared(b, shared_cls[0](t))
            return b

        def names(b, p, prefix=prefix, layout=layout, renames=renames, nested=nested):
            sd = b.state_dict()
            if nested:
                p = p.replace("model.layers.", "model.language_model.layers.")
            out = {}
            if isinstance(b, _LayerShared):  # the shared MLP is the layer's (families.md §2.8 granite)
                out.update({p + n: t for n, t in sd.items() if n.startswith("shared_mlp.")})
                sd = {n[len("block_sparse_moe."):]: t for n, t in sd.items() if n.startswith("block_sparse_moe.")}
            if layout == "up":  # Nemotron-H's files: backbone.layers.{l}.mixer.experts.{i}.up_proj / down_proj
                p = p.replace("model.", "backbone.")
            q = p + prefix
            gu, dn = sd.get("experts.gate_up_proj"), sd["experts.down_proj"]
            if layout == "up":
                for e in range(dn.shape[0]):
                    out[q + f"experts.{e}.up_proj.weight"] = sd["experts.up_proj"][e]
                    out[q + f"experts.{e}.down_proj.weight"] = dn[e]
            elif layout in ("std", "w"):
                out.update(per_expert(sd, q, "experts.gate_up_proj", "experts.down_proj",
                                      ("w1", "w3", "w2") if layout == "w" else ("gate_proj", "up_proj", "down_proj")))
            elif layout == "fused":
                out[q + "experts.gate_up_proj"], out[q + "experts.down_proj"] = gu, dn
            elif layout == "fused_t":  # Qwen3-VL-MoE's files: [E, d, 2f] and [E, f, d]
                out[q + "experts.gate_up_proj"] = gu.transpose(1, 2).contiguous()
                out[q + "experts.down_proj"] = dn.transpose(1, 2).contiguous()
            else:  # granite: the fused stacks under their file names
                out[q + "input_linear.weight"], out[q + "output_linear.weight"] = gu, dn
            for n, t in sd.items():
                if n.startswith("experts."):
                    continue
                for a, z in renames.items():
                    if n == a or (a.endswith(".") and n.startswith(a)):
                        n = z + n[len(a):]
                        break
                out[q + n] = t
            return out

        defs[family] = dict(cfg=cfg, block=block, route=_hook_route, names=names)
    return defs


# name, family, d, f, E, k, T, seed, bf16, config extra. d is never a multiple of 16.
SIMPLE_CASES = [
    ("qwen3_moe_f32_t7", "qwen3_moe", 40, 12, 8, 2, 7, 61, False, {"norm_topk_prob": True}),
    ("qwen3_moe_bf16_t7", "qwen3_moe", 72, 20, 8, 4, 7, 62, True, {"norm_topk_prob": False}),
    ("qwen3_next_f32_t7", "qwen3_next", 40, 12, 8, 2, 7, 63, False, {}),
    ("qwen3_5_moe_bf16_t7", "qwen3_5_moe", 72, 20, 8, 2, 7, 64, True, {}),
    ("qwen4_exp_f32_t7", "qwen4_exp", 40, 12, 8, 2, 7, 65, False, {}),
    ("qwen3_vl_moe_f32_t7", "qwen3_vl_moe", 40, 12, 8, 2, 7, 66, False, {}),
    ("glm4_moe_f32_t7", "glm4_moe", 40, 12, 8, 2, 7, 67, False, {}),
    ("glm4_moe_bf16_t7", "glm4_moe", 72, 20, 8, 3, 7, 68, True, {}),
    ("glm4_moe_lite_f32_t7", "glm4_moe_lite", 40, 12, 8, 2, 7, 69, False, {}),
    ("glm_moe_dsa_f32_t7", "glm_moe_dsa", 40, 12, 8, 2, 7, 70, False, {}),
    ("glm4v_moe_f32_t7", "glm4v_moe", 40, 12, 8, 2, 7, 71, False, {}),
    ("deepseek_v32_f32_t7", "deepseek_v32", 40, 12, 8, 2, 7, 72, False, {}),
    ("dots1_f32_t7", "dots1", 40, 12, 8, 2, 7, 73, False, {}),
    ("exaone_moe_f32_t7", "exaone_moe", 40, 12, 8, 2, 7, 74, False, {}),
    ("bailing_hybrid_f32_t7", "bailing_hybrid", 40, 12, 8, 2, 7, 75, False, {}),
    ("kimi_linear_f32_t7", "kimi_linear", 40, 12, 8, 2, 7, 76, False, {}),
    ("solar_open_f32_t7", "solar_open", 40, 12, 8, 2, 7, 77, False, {}),
    ("mimo_v2_flash_f32_t7", "mimo_v2_flash", 40, 12, 8, 2, 7, 78, False, {}),
    ("beam_f32_t7", "beam", 40, 12, 8, 2, 7, 79, False, {}),
    ("minimax_f32_t7", "minimax", 40, 12, 8, 2, 7, 80, False, {}),
    ("minimax_m2_f32_t7", "minimax_m2", 40, 12, 8, 2, 7, 81, False, {}),
    ("flex_olmo_f32_t7", "flex_olmo", 40, 12, 8, 2, 7, 82, False, {}),
    ("mellum_f32_t7", "mellum", 40, 12, 8, 2, 7, 83, False, {}),
    ("afmoe_f32_t7", "afmoe", 40, 12, 8, 2, 7, 84, False, {}),
    ("lfm2_moe_f32_t7", "lfm2_moe", 40, 12, 8, 2, 7, 85, False, {}),
    ("jamba_f32_t7", "jamba", 40, 12, 8, 2, 7, 86, False, {}),
    ("jamba_bf16_t7", "jamba", 72, 20, 8, 2, 7, 87, True, {}),
    ("hunyuan_v1_moe_f32_t7", "hunyuan_v1_moe", 40, 12, 8, 2, 7, 88, False, {}),
    ("ernie4_5_moe_f32_t7", "ernie4_5_moe", 40, 12, 8, 2, 7, 89, False, {}),
    ("flint_f32_t7", "flint", 40, 12, 8, 2, 7, 90, False, {}),
    ("hy_v3_f32_t7", "hy_v3", 40, 12, 8, 2, 7, 91, False, {}),
    ("granitemoe_f32_t7", "granitemoe", 40, 12, 8, 2, 7, 92, False, {}),
    ("granitemoe_bf16_t7", "granitemoe", 72, 20, 8, 2, 7, 93, True, {}),
    ("granitemoeshared_f32_t7", "granitemoeshared", 40, 12, 8, 2, 7, 94, False, {}),
    ("granitemoehybrid_f32_t7", "granitemoehybrid", 40, 12, 8, 2, 7, 95, False, {}),
    ("granitemoe_swa_f32_t7", "granitemoe_swa", 40, 12, 8, 2, 7, 96, False, {}),
    ("nemotron_h_f32_t7", "nemotron_h", 40, 12, 8, 2, 7, 98, False, {}),
    ("nemotron_h_bf16_t7", "nemotron_h", 72, 20, 8, 3, 7, 99, True, {}),
]


def simple_cases(out_dir, only=None):
    defs = _simple_defs()
    return [make_family_case(out_dir, defs, *c) for c in SIMPLE_CASES if only is None or c[0] in only]



def make_hash_case(out_dir, name="deepseek_v4_hash_f32_t7", d=40, f=12, E=8, k=2, T=7, seed=97, vocab=32):
    """DeepSeek-V4's hash_moe layer (families.md §2.2): DeepseekV4SparseMoeBlock with its hash router, which
    takes the experts from gate.tid2eid[input_ids] and the weights from the gate's sqrt-softplus scores.
    input.safetensors also holds token_ids I32 [T]; the files use DeepSeek's names (layers.0.ffn.), the
    table as HF's buffer (I64), and a hash gate has no selection bias."""
    from transformers import DeepseekV4Config
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4SparseMoeBlock
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = DeepseekV4Config(num_hidden_layers=1, vocab_size=vocab, num_attention_heads=2, num_key_value_heads=2,
                           bos_token_id=0, eos_token_id=1, pad_token_id=None, hidden_size=d, moe_intermediate_size=f,
                           n_routed_experts=E, num_experts_per_tok=k, mlp_layer_types=["hash_moe"], swiglu_limit=1.0)
    cfg._experts_implementation = "eager"
    block = DeepseekV4SparseMoeBlock(cfg, 0).eval()
    assert block.is_hash
    with torch.no_grad():
        for n, t in block.named_parameters():
            t.copy_(torch.from_numpy(_rand(rng, tuple(t.shape), 1.0 / np.sqrt(d) if n.startswith("gate.") else EXPERT_STD)))
        table = np.stack([rng.permutation(E)[:k] for _ in range(vocab)])
        block.gate.tid2eid.copy_(torch.from_numpy(table))
    x = rng.standard_normal((T, d)).astype(np.float32)
    ids_in = rng.integers(0, vocab, T).astype(np.int64)
    xt, it = torch.from_numpy(x), torch.from_numpy(ids_in)
    with torch.no_grad():
        y = block(xt.view(1, T, d), it.view(1, T)).view(T, d).float().numpy()
        _, w, i = block.gate(xt.view(1, T, d), it.view(1, T))
    si, sw = sort_rows(i.numpy(), w.float().numpy())
    case = os.path.join(out_dir, name)
    os.makedirs(case, exist_ok=True)
    cfg_dict = {k_: v for k_, v in cfg.to_dict().items() if not k_.startswith("_")}
    write_hf_module_case_json(case, cfg_dict)
    sd = block.state_dict()
    q = "layers.0.ffn."
    tensors = per_expert(sd, q, "experts.gate_up_proj", "experts.down_proj", ("w1", "w3", "w2"))
    tensors[q + "gate.weight"] = sd["gate.weight"]
    tensors[q + "gate.tid2eid"] = sd["gate.tid2eid"]
    for a, n in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
        tensors[q + f"shared_experts.{a}.weight"] = sd[f"shared_experts.{n}.weight"]
    meta = {"format": "pt"}
    save_file({n: t.contiguous() for n, t in tensors.items()}, os.path.join(case, "weights.safetensors"), metadata=meta)
    save_file({"hidden_states": xt.contiguous(), "token_ids": torch.from_numpy(ids_in.astype(np.int32))},
              os.path.join(case, "input.safetensors"), metadata=meta)
    save_file({"hidden_states": torch.from_numpy(y).contiguous(),
               "expert_ids": torch.from_numpy(si.astype(np.int32)).contiguous(),
               "expert_weights": torch.from_numpy(sw.astype(np.float32)).contiguous()},
              os.path.join(case, "expected.safetensors"), metadata=meta)
    return dict(name=name, family="deepseek_v4", cls=type(block).__name__, d=d, f=f, E=E, k=k, T=T, bf16=False,
                extra={"mlp_layer_types": ["hash_moe"], "swiglu_limit": 1.0})


if __name__ == "__main__":
    import sys
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/cases"
    only = set(sys.argv[2:]) or None
    hash_case = [make_hash_case(out)] if only is None or "deepseek_v4_hash_f32_t7" in only else []
    for c in (family_cases(out) if only is None else []) + simple_cases(out, only) + hash_case:
        print(c["name"], c["cls"], c.get("routing_bf16_err"), c.get("hf_bf16_err"))
