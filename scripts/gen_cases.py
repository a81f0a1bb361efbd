#!/usr/bin/env python3
"""Regenerates the reference case folders of tests/data/cases (format: ../shared/spec/cases.md).

    /work/venv-cases/bin/python scripts/gen_cases.py --out tests/data/cases

(any venv with scripts/requirements-cases.txt installed). Deterministic: fixed seeds, CPU only.
- Full layers: the real Hugging Face MoE blocks (gen_cases_hf.py), fp32 and bf16 weights.
- Router-only and rank-wise LoRA cases: float64 NumPy references written from routing.md and
  balance.md (gen_cases_ref.py), which first reproduce every worked example of those files.
Writes tests/data/cases/README.md describing every case. Needs no network.
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np
from safetensors.numpy import save_file

sys.dont_write_bytecode = True  # no __pycache__ in scripts/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_cases_ref as ref  # noqa: E402

ROUTER_TOL = "ids / counts / masks exact; floats max relative error <= 1e-5"


# --------------------------------------------------------------------------------- router-only cases
def router_outputs(cfg, L, bias, dt):
    """Every output cases.md defines for this router-only config, from the spec references."""
    r = cfg["router"]
    E = cfg["num_experts"]
    out = {}
    if r == "topk":
        kw = {key: cfg[key] for key in ("score_func", "norm_topk_prob", "score_after_topk",
                                        "routed_scaling_factor", "n_group", "topk_group") if key in cfg}
        ids, w = ref.topk(L, cfg["top_k"], expert_bias=bias, dt=dt, **kw)
    elif r == "expert_choice":
        ids, w, tok, tw = ref.expert_choice(L, cfg.get("capacity"), cfg.get("capacity_factor"),
                                            cfg.get("score_func", "softmax"), dt=dt)
        out["token_ids"], out["weights"] = tok, tw
    elif r == "top_p":
        ids, w = ref.top_p(L, cfg.get("top_p", 0.4), cfg.get("max_k"), cfg.get("min_k", 1), dt=dt)
    elif r == "null_expert":
        ids, w = ref.null_expert(L, E, cfg["num_null_experts"], cfg["top_k"], dt=dt)
    elif r == "relu":
        ids, w = ref.relu(L, dt=dt)
    elif r == "sinkhorn":
        ids, w, _, _, _ = ref.sinkhorn(L, cfg["top_k"], cfg.get("tol", 1e-4),
                                       cfg.get("max_iterations", 100), dt=dt)
    elif r == "race":
        ids, w = ref.race(L, cfg["top_k"], cfg.get("score_func", "identity"), cfg.get("race_group", 0), dt=dt)
    else:
        raise ValueError(r)
    out["expert_ids"], out["expert_weights"] = ids, w
    dropped = None
    if "moe_expert_capacity_factor" in cfg:
        dropped, kept = ref.capacity_drop(ids, w, E, cfg["moe_expert_capacity_factor"],
                                          cfg.get("moe_token_drop_policy", "probs"),
                                          cfg.get("min_capacity", 0))
        out["dropped"] = dropped
    out["tokens_per_expert"] = ref.counts(ids, E, dropped)
    if "llep_num_workers" in cfg:  # research.md §6: where rows are computed; the routing is None's
        _, native, planned = ref.llep_plan(out["tokens_per_expert"], cfg["llep_num_workers"],
                                           cfg.get("llep_max_tokens_factor", 1.1), cfg.get("llep_min_tokens_per_gemm", 1024),
                                           cfg.get("llep_adaptive_ratio", 0.0))
        out["llep_native_load"], out["llep_planned_load"] = np.array(native), np.array(planned)
    if "moe_router_bias_update_rate" in cfg:
        out["updated_bias"] = ref.updated_bias(bias, out["tokens_per_expert"],
                                               cfg["moe_router_bias_update_rate"])
    if "moe_aux_loss_coeff" in cfg:
        out["aux_loss"] = np.array([ref.aux_loss_megatron(L, cfg["top_k"], cfg.get("score_func", "softmax"),
                                                          cfg["moe_aux_loss_coeff"])])
    if "l1_reg_coeff" in cfg:
        out["aux_loss"] = np.array([ref.relu_l1_loss(L, cfg["target_top_k"], cfg["l1_reg_coeff"])])
    if "moe_z_loss_coeff" in cfg:
        out["z_loss"] = np.array([ref.z_loss(L, cfg["moe_z_loss_coeff"])])
    return out


INT_OUTPUTS = ("expert_ids", "token_ids", "dropped", "tokens_per_expert", "llep_native_load", "llep_planned_load")




def check_robust(name, cfg, L, bias):
    """Every integer output (selection, order, drops) must be the same in fp32 arithmetic and under
    1e-5 relative perturbations: no decision of the case depends on rounding (routing.md §0)."""
    base = router_outputs(cfg, L.astype(np.float64), bias, np.float64)
    variants = [router_outputs(cfg, L.astype(np.float32), bias, np.float32)]
    variants += [router_outputs(cfg, ref.perturb(L.astype(np.float64), i), bias, np.float64) for i in range(8)]
    for v in variants:
        for key in INT_OUTPUTS:
            if key in base and not np.array_equal(base[key], v[key]):
                raise AssertionError(f"{name}: {key} is decided by rounding; change the data")
    return base


def write_router_case(out_dir, name, cfg, L, bias=None):
    L = np.asarray(L, dtype=np.float32)  # the stored logits; the reference reads these values
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float32)
    out = check_robust(name, cfg, L, bias)
    case = os.path.join(out_dir, name)
    os.makedirs(case, exist_ok=True)
    with open(os.path.join(case, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)
        fh.write("\n")
    inp = {"router_logits": L}
    if bias is not None:
        inp["expert_bias"] = bias
    save_file(inp, os.path.join(case, "input.safetensors"))
    exp = {}
    for key, v in out.items():
        if key in ("expert_ids", "token_ids", "tokens_per_expert", "llep_native_load", "llep_planned_load"):
            exp[key] = np.ascontiguousarray(v, dtype=np.int32)
        elif key == "dropped":
            exp[key] = np.ascontiguousarray(v, dtype=np.uint8)
        else:
            exp[key] = np.ascontiguousarray(v, dtype=np.float32)
    save_file(exp, os.path.join(case, "expected.safetensors"))
    return exp


def q_logits(rng, T, E, std=1.5, step=0.25):
    """Logits on a 0.25 grid: many exact ties, no near-ties."""
    return np.round(rng.standard_normal((T, E)) * std / step) * step


WORKED_2 = [[2.0, 1.0, 1.0, -1.0, 0.5, -0.5], [-3.0, -1.0, -2.0, -0.5, -4.0, -1.5],
            [0.3, -0.2, 1.7, 0.9, 1.2, -2.0]]
WORKED_BALANCE = [[2, 1, 0, -1], [1.5, 0, 1, -1], [.5, 2, 0, 0], [2.5, 0, .5, 0], [1, 0, 0, 2],
                  [0, .5, 3, 0], [3, 0, 0, 1], [1.2, 1, 0, 0]]


def router_cases(out_dir):
    """(name, what it exercises) for the README; writes every router-only case."""
    made = []

    def add(name, what, cfg, L, bias=None):
        exp = write_router_case(out_dir, name, cfg, L, bias)
        made.append(dict(name=name, what=what, cfg=cfg, T=np.asarray(L).shape[0],
                         width=np.asarray(L).shape[1], outputs=exp))

    rng = np.random.default_rng(101)
    # topk, softmax + renormalise (Mixtral-like), edge rows, aux and z losses.
    L = rng.standard_normal((64, 8)) * 1.5
    L[0] = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]          # all equal: ids 0, 1
    L[1] = [-3.0, -1.0, -2.0, -0.5, -4.0, -1.5, -1.0, -6.0]   # all negative, tie at -1.0 (1 beats 6)
    L[2] = [0.5, -30.0, 2.0, 2.0, -30.0, 0.0, -0.0, 1.0]      # tie for first; very negative entries
    L[3] = [40.0, 39.5, -40.0, 0.0, 0.0, 0.0, 0.0, 0.0]       # large spread
    add("router_topk_softmax_norm_t64",
        "topk, softmax, norm_topk_prob (Mixtral rule); rows: all equal, all negative with a tie, "
        "tie for first place, logits of -30, spread 80; aux_loss (coeff 1e-2) and z_loss (1e-3)",
        {"router": "topk", "num_experts": 8, "top_k": 2, "score_func": "softmax",
         "norm_topk_prob": True, "moe_aux_loss_coeff": 0.01, "moe_z_loss_coeff": 0.001}, L)

    L = np.concatenate([WORKED_2, rng.standard_normal((4, 6))])
    add("router_topk_softmax_t7",
        "topk, softmax without renormalisation (OLMoE / Qwen2-MoE rule); rows 0-2 are routing.md §2 "
        "worked example (b)",
        {"router": "topk", "num_experts": 6, "top_k": 2, "score_func": "softmax", "norm_topk_prob": False}, L)

    L = q_logits(rng, 7, 4)
    L[0] = [0.5, 0.5, 0.5, 0.5]
    add("router_topk_k_equals_e_t7", "topk with k = E = 4 (every expert, ordered by weight; ties by id), "
        "quantised logits with exact ties",
        {"router": "topk", "num_experts": 4, "top_k": 4, "norm_topk_prob": True}, L)

    L = rng.standard_normal((64, 16)) * 2.0
    L[0, :] = 0.0
    add("router_topk_score_after_topk_t64",
        "topk with score_after_topk (Megatron's default: softmax over the k selected logits), "
        "routed_scaling_factor 2; row 0 all zero",
        {"router": "topk", "num_experts": 16, "top_k": 4, "score_after_topk": True,
         "routed_scaling_factor": 2.0}, L)

    L = rng.standard_normal((64, 16)) * 2.0
    L[0] = 0.0
    bias = np.round(rng.standard_normal(16) * 0.1, 3)
    add("router_topk_sigmoid_groups_bias_t64",
        "topk DeepSeek-V3 style: sigmoid, expert_bias (selection only), n_group 4 / topk_group 2 "
        "(group score = top-2 sum), norm_topk_prob, routed_scaling_factor 2.5; bias update "
        "(moe_router_bias_update_rate 1e-3 -> updated_bias) and aux_loss (sigmoid scores / row sum)",
        {"router": "topk", "num_experts": 16, "top_k": 4, "score_func": "sigmoid", "norm_topk_prob": True,
         "routed_scaling_factor": 2.5, "n_group": 4, "topk_group": 2,
         "moe_router_bias_update_rate": 0.001, "moe_aux_loss_coeff": 1.0}, L, bias)

    L = np.concatenate([WORKED_2, rng.standard_normal((4, 6))])
    add("router_topk_groups_t7",
        "topk DeepSeek-V2 style: softmax, n_group 3 / topk_group 1 (group score = max), "
        "routed_scaling_factor 16; rows 0-2 are routing.md §2 worked example (e)",
        {"router": "topk", "num_experts": 6, "top_k": 2, "n_group": 3, "topk_group": 1,
         "routed_scaling_factor": 16.0}, L)

    L = np.concatenate([WORKED_2, rng.standard_normal((4, 6))])
    add("router_topk_sigmoid_worked_t7",
        "topk sigmoid + expert_bias + groups; rows 0-2 are routing.md §2 worked example (d) "
        "(expert_bias [0, 0, 0.1, -0.1, 0, 0.3])",
        {"router": "topk", "num_experts": 6, "top_k": 2, "score_func": "sigmoid", "norm_topk_prob": True,
         "routed_scaling_factor": 2.5, "n_group": 3, "topk_group": 2}, L,
        [0, 0, 0.1, -0.1, 0, 0.3])

    # Capacity balancer: skewed logits so that experts overflow.
    Lc = rng.standard_normal((64, 8)) + np.array([0.6, 0.4, 0.2, 0, 0, -0.2, -0.4, -0.6])
    # Make the two slots at the capacity boundary of the busiest expert an exact tie under `probs`
    # (identical tokens): the lower token is kept.
    ids, w = ref.topk(Lc.astype(np.float32).astype(np.float64), 2, norm_topk_prob=True)
    e0 = int(np.argmax(ref.counts(ids, 8)))
    C = ref.token_capacity(64, 2, 8, 1.0)
    slots = sorted(((t, j) for t in range(64) for j in range(2) if ids[t, j] == e0),
                   key=lambda s: (-w[s], s[0]))
    ta, tb = sorted((slots[C - 1][0], slots[C][0]))
    Lc[tb] = Lc[ta]
    for policy in ("probs", "position", "slot_priority"):
        add(f"router_capacity_{policy}_t64",
            f"topk softmax+norm k=2 E=8 with capacity factor 1.0 (C = 16), drop policy `{policy}`; "
            f"tokens {ta} and {tb} identical and tied at expert {e0}'s capacity boundary under probs "
            f"(token {ta} kept); -> dropped, tokens_per_expert (kept)",
            {"router": "topk", "num_experts": 8, "top_k": 2, "norm_topk_prob": True,
             "moe_expert_capacity_factor": 1.0, "moe_token_drop_policy": policy}, Lc)
    add("router_capacity_worked_t8",
        "balance.md §3 worked example (T 8, E 4, k 2, cf 1, C 4), drop policy slot_priority",
        {"router": "topk", "num_experts": 4, "top_k": 2, "norm_topk_prob": True,
         "moe_expert_capacity_factor": 1.0, "moe_token_drop_policy": "slot_priority"}, WORKED_BALANCE)
    L = q_logits(rng, 7, 4) + np.array([1.0, 0.5, 0, 0])
    add("router_capacity_pad_t7",
        "capacity factor 0.5 with min_capacity 3 (C = max(ceil(3.5 * 0.5), 3) = 3), policy probs, "
        "moe_pad_expert_input_to_capacity (padding changes no output)",
        {"router": "topk", "num_experts": 4, "top_k": 2, "norm_topk_prob": True,
         "moe_expert_capacity_factor": 0.5, "min_capacity": 3, "moe_token_drop_policy": "probs",
         "moe_pad_expert_input_to_capacity": True}, L)

    # Expert choice.
    L = rng.standard_normal((64, 8)) * 1.5
    L[9] = L[8]  # token tie: the lower token id wins
    add("router_expert_choice_capacity_t64",
        "expert_choice, capacity 10, softmax; tokens 8 and 9 identical; z_loss (coeff 1e-3)",
        {"router": "expert_choice", "num_experts": 8, "capacity": 10, "moe_z_loss_coeff": 0.001}, L)
    L = q_logits(rng, 7, 4, std=1.0, step=0.5)
    L[2] = L[1]
    add("router_expert_choice_cf_sigmoid_t7",
        "expert_choice, capacity_factor 1.5 (C = ceil(7/4 * 1.5) = 3), sigmoid scores, quantised "
        "logits with token ties",
        {"router": "expert_choice", "num_experts": 4, "capacity_factor": 1.5, "score_func": "sigmoid"}, L)
    add("router_expert_choice_t1",
        "expert_choice at T = 1 with capacity 3 > T: every expert takes the token (dense), "
        "token_ids / weights padded with -1 / 0 to C = 3",
        {"router": "expert_choice", "num_experts": 4, "capacity": 3}, [[-1.0, 2.0, 0.5, 0.0]])
    add("router_expert_choice_worked_t4", "routing.md §3 worked example (capacity_factor 1.5, C = 2)",
        {"router": "expert_choice", "num_experts": 3, "capacity_factor": 1.5},
        [[2, 0, 0], [1, 1, -1], [1, 1, -1], [-1, 2, 0.5]])

    # Top-p.
    L = rng.standard_normal((64, 8)) * 1.5
    L[0] = 0.0   # uniform: prefix 0.5 equals p and does not stop the scan -> 5 experts
    L[1] = [4.0, 0, 0, 0, 0, 0, 0, 0]
    add("router_top_p_t64", "top_p 0.5 (variable k, K = batch max); row 0 uniform (a prefix sum equal "
        "to p does not stop), row 1 one dominant expert",
        {"router": "top_p", "num_experts": 8, "top_p": 0.5}, L)
    L = q_logits(rng, 7, 8, std=1.0)
    add("router_top_p_minmax_t7", "top_p 0.7 with min_k 2 and max_k 4, quantised logits with ties",
        {"router": "top_p", "num_experts": 8, "top_p": 0.7, "min_k": 2, "max_k": 4}, L)
    add("router_top_p_worked_t3", "routing.md §4 worked example (top_p 0.4)",
        {"router": "top_p", "num_experts": 4, "top_p": 0.4},
        [[3, 0, 0, 0], [0.2, 0.5, -1.0, 0.1], [0, 0, 0, 0]])

    # Null experts.
    L = rng.standard_normal((64, 12)) * 1.5
    L[0, 8:] += 6.0  # nulls only: no CSR entry, zero routed output
    L[1] = 0.0       # all equal: true experts win the ties
    add("router_null_expert_t64", "null_expert E = 8, N = 4, k = 3 (logits [T, 12]); row 0 selects null "
        "experts only, row 1 uniform (true experts win ties)",
        {"router": "null_expert", "num_experts": 8, "num_null_experts": 4, "top_k": 3}, L)
    add("router_null_expert_worked_t3", "routing.md §5 worked example (E 3, N 2, k 2)",
        {"router": "null_expert", "num_experts": 3, "num_null_experts": 2, "top_k": 2},
        [[2, 1, 0, -1, -1], [1, -1, 0, 1.5, 0], [-1, -2, -1, 1, 1]])

    # ReLU.
    L = q_logits(rng, 64, 8, std=1.0) - 0.5
    L[0] = -1.0               # empty row
    L[1] = [0.0, -0.0, 0.5, 0.5, 0.25, -1, -1, -1]  # zeros are not selected; tie 2/3
    add("router_relu_t64", "relu (ReMoE): variable k, quantised logits; an empty row, exact zeros and "
        "-0.0 (not selected), ties among positive values",
        {"router": "relu", "num_experts": 8}, L)
    L = rng.standard_normal((7, 8)) - 0.3
    add("router_relu_l1_t7", "relu with ReMoE's training keys l1_reg_coeff 1e-2, target_top_k 2 -> "
        "aux_loss (L1 regulariser); target_top_k does not cap k",
        {"router": "relu", "num_experts": 8, "l1_reg_coeff": 0.01, "target_top_k": 2}, L)
    add("router_relu_worked_t3", "routing.md §6 worked example",
        {"router": "relu", "num_experts": 4},
        [[1.5, -0.5, 0.0, 0.25], [-1.0, -2.0, -0.1, -3.0], [0.5, 0.5, 2.0, -1.0]])

    # Sinkhorn.
    L = rng.standard_normal((64, 8))
    add("router_sinkhorn_k1_t64", "sinkhorn k = 1 (sigmoid weights), tol 1e-4, max_iterations 100",
        {"router": "sinkhorn", "num_experts": 8, "top_k": 1, "tol": 0.0001, "max_iterations": 100}, L)
    L = rng.standard_normal((64, 8))
    add("router_sinkhorn_k2_t64", "sinkhorn k = 2 (softmax weights), default tol / max_iterations",
        {"router": "sinkhorn", "num_experts": 8, "top_k": 2}, L)
    L = rng.standard_normal((7, 4))
    add("router_sinkhorn_eval_t7", "sinkhorn with max_iterations 0 (Megatron evaluation: top-k of the "
        "activation)", {"router": "sinkhorn", "num_experts": 4, "top_k": 2, "max_iterations": 0}, L)
    add("router_sinkhorn_t1", "sinkhorn at T = 1 (balancing skipped)",
        {"router": "sinkhorn", "num_experts": 4, "top_k": 2}, [[0.3, -1.0, 1.2, 0.9]])
    add("router_sinkhorn_worked_t4", "routing.md §7 worked example, k = 1 (6 iterations)",
        {"router": "sinkhorn", "num_experts": 3, "top_k": 1, "tol": 0.0001},
        [[2.0, 1.0, 0.0], [1.8, 0.2, 1.0], [1.5, 1.4, -1.0], [1.2, 0.0, 0.9]])

    # Expert Race (research.md §4).
    add("router_race_worked_t3", "race, identity scores, the whole call races (research.md §4 worked example: "
        "t2 loses the three-way tie at 0.5 and gets no expert)",
        {"router": "race", "num_experts": 4, "top_k": 2},
        [[2.0, -1.0, 0.5, 1.0], [1.5, 1.5, 0.5, -2.0], [-0.5, -1.0, 0.5, 0.0]])
    L = q_logits(rng, 40, 8)
    add("router_race_sigmoid_g8_t40", "race, sigmoid scores, race_group 8 (five groups of 8 tokens), "
        "quantised logits with exact ties",
        {"router": "race", "num_experts": 8, "top_k": 2, "score_func": "sigmoid", "race_group": 8}, L)

    # LLEP (research.md §6): the balancer keys; outputs are None's plus the native and planned loads.
    add("router_llep_worked_t3", "topk softmax+norm k=2 with llep_num_workers 2, factor 1, min tokens 1 "
        "(research.md §6 worked example A: native loads [5, 1], planned [3, 3])",
        {"router": "topk", "num_experts": 4, "top_k": 2, "norm_topk_prob": True, "llep_num_workers": 2,
         "llep_max_tokens_factor": 1.0, "llep_min_tokens_per_gemm": 1},
        [[2, 1, -1, 0], [1, 1.5, 0, -1], [1, -0.5, 0.5, -2]])
    L = rng.standard_normal((64, 8)) * 1.5 + np.array([3.0, 2.0, 0, 0, 0, 0, 0, 0])
    add("router_llep_skewed_t64", "topk softmax k=2, experts 0 and 1 (worker 0) favoured; llep_num_workers 4 "
        "with the code's defaults (factor 1.1, min tokens 1024) and llep_adaptive_ratio 1.3 (the README's)",
        {"router": "topk", "num_experts": 8, "top_k": 2, "norm_topk_prob": True, "llep_num_workers": 4,
         "llep_adaptive_ratio": 1.3}, L)
    return made


# --------------------------------------------------------------------------------------------- MoFME
def mofme_cases(out_dir):
    """research.md §5.2 (layer::FilmBlock) from the float64 reference: the worked example and a random
    block (d 8, a 32, E 4, k 2, T 9). Returns (name, what) for the README."""
    made = []

    def write(name, what, cfg, w, x):
        y, ids, wt = ref.mofme_block(x, w, cfg["top_k"], cfg.get("layer_norm_eps", 1e-5), cfg.get("expert0_gelu", True))
        case = os.path.join(out_dir, name)
        os.makedirs(case, exist_ok=True)
        with open(os.path.join(case, "config.json"), "w") as fh:
            json.dump(cfg, fh, indent=2)
            fh.write("\n")
        save_file({"0." + k: np.ascontiguousarray(v, dtype=np.float32) for k, v in w.items()}, os.path.join(case, "weights.safetensors"))
        save_file({"hidden_states": np.asarray(x, dtype=np.float32)}, os.path.join(case, "input.safetensors"))
        E = cfg["num_experts"]
        counts = np.bincount(ids.ravel(), minlength=E).astype(np.int32)
        save_file({"hidden_states": y.astype(np.float32), "expert_ids": ids.astype(np.int32),
                   "expert_weights": wt.astype(np.float32), "tokens_per_expert": counts}, os.path.join(case, "expected.safetensors"))
        made.append(dict(name=name, what=what))

    w = {k: np.asarray(v, dtype=np.float32).astype(np.float64) for k, v in ref.MOFME_WORKED.items()}
    write("mofme_worked_t2", "MoFME block as released (research.md §5.2 worked example, expert0_gelu)",
          {"layer": "mofme", "hidden_size": 3, "adaptor_size": 4, "num_experts": 3, "top_k": 2}, w, ref.MOFME_X)
    rng = np.random.default_rng(52)
    d, a, E = 8, 32, 4
    shapes = {"1.0": (E, d), "2.0": (a, d), "2.3": (d, a), "3.1.0.0": (d, d), "3.1.1.0": (d, d)}
    w = {}
    for k, (r, c) in shapes.items():
        w[k + ".weight"] = rng.standard_normal((r, c)) * 0.3
        w[k + ".bias"] = rng.standard_normal(r) * 0.1
    w["3.0.weight"] = 1.0 + rng.standard_normal(d) * 0.2
    w["3.0.bias"] = rng.standard_normal(d) * 0.1
    for e in range(E):
        for j, sd in ((0, 0.2), (1, 0.2)):
            w["3.%d.expert.%d.weight" % (3 + e, j)] = rng.standard_normal((d, d)) * sd
            w["3.%d.expert.%d.bias" % (3 + e, j)] = rng.standard_normal(d) * (0.5 if j == 0 else 0.1)
    w = {k: np.asarray(v, dtype=np.float32).astype(np.float64) for k, v in w.items()}
    x = np.asarray(rng.standard_normal((9, d)), dtype=np.float32).astype(np.float64)
    write("mofme_intended_t9", "MoFME block, expert0_gelu false (column e -> module e), random d 8, a 32, E 4, k 2",
          {"layer": "mofme", "hidden_size": d, "adaptor_size": a, "num_experts": E, "top_k": 2, "expert0_gelu": False}, w, x)
    return made


# ------------------------------------------------------------------------------------ rank-wise LoRA
def lora_case(out_dir, name, seed, T, d_in, d_out, r, k, alpha, module=None, base_bias=True,
              rank_partition=None):
    rng = np.random.default_rng(seed)
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
    Wr = f32(rng.standard_normal((r, d_in)) / np.sqrt(d_in))
    A = f32(rng.standard_normal((r, d_in)) / np.sqrt(d_in))
    B = f32(rng.standard_normal((d_out, r)) * 0.5)
    lb = f32(np.round(rng.standard_normal(r) * 0.1, 3))
    W0 = f32(rng.standard_normal((d_out, d_in)) / np.sqrt(d_in))
    b0 = f32(rng.standard_normal(d_out) * 0.1) if base_bias else None

    def route(z, dt):
        c = ref.sigmoid(z, dt) + lb.astype(dt)
        return np.array([ref._order(row)[:k] for row in c]), None

    for _ in range(100):
        x = f32(rng.standard_normal((T, d_in)))
        z = x.astype(np.float64) @ Wr.astype(np.float64).T
        base = route(z, np.float64)[0]
        ok = np.array_equal(route(z.astype(np.float32), np.float32)[0], base)
        ok = ok and all(np.array_equal(route(ref.perturb(z, i), np.float64)[0], base) for i in range(8))
        # Row order is by weight, proportional to c: check the weights are not near-tied either.
        y, ids, w = ref.rankwise_lora(x, Wr, A, B, k, alpha, lb, W0, b0)
        y32, ids32, _ = ref.rankwise_lora(x, Wr, A, B, k, alpha, lb, W0, b0, dt=np.float32)
        if ok and np.array_equal(ids, ids32):
            break
    else:
        raise RuntimeError(name)
    cfg = {"layer": "rankwise_lora", "in_features": d_in, "out_features": d_out, "rank": r,
           "top_k": k, "lora_alpha": alpha}
    if rank_partition is not None:
        cfg["rank_partition"] = rank_partition
    if module:
        cfg["module"] = module
        p = f"base_model.model.{module}."
        wts = {p + "lora_A.weight": A, p + "lora_B.weight": B, p + "lora_router.weight": Wr,
               p + "lora_biases": lb, module + ".weight": W0}
        if b0 is not None:
            wts[module + ".bias"] = b0
    else:
        wts = {"lora_A.weight": A, "lora_B.weight": B, "lora_router.weight": Wr, "lora_biases": lb,
               "base_layer.weight": W0}
        if b0 is not None:
            wts["base_layer.bias"] = b0
    case = os.path.join(out_dir, name)
    os.makedirs(case, exist_ok=True)
    with open(os.path.join(case, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)
        fh.write("\n")
    save_file(wts, os.path.join(case, "weights.safetensors"))
    save_file({"hidden_states": x}, os.path.join(case, "input.safetensors"))
    save_file({"hidden_states": f32(y), "expert_ids": np.ascontiguousarray(ids, dtype=np.int32),
               "expert_weights": f32(w)}, os.path.join(case, "expected.safetensors"))
    return dict(name=name, cfg=cfg, T=T, tensors=sorted(wts))


# ------------------------------------------------------------------------------------- full layers
FULL_CASES = [
    # name, family, d, f, E, k, T, seed, bf16, extra config, options
    ("mixtral_f32_t7", "mixtral", 72, 40, 8, 2, 7, 11, False, {}, {}),
    ("mixtral_bf16_t64", "mixtral", 100, 56, 8, 2, 64, 12, True, {}, {}),
    ("olmoe_f32_t64_fused", "olmoe", 40, 24, 16, 4, 64, 13, False, {"norm_topk_prob": False},
     {"fused": True}),
    ("olmoe_bf16_t1", "olmoe", 72, 48, 8, 2, 1, 14, True, {"norm_topk_prob": True}, {}),
    ("qwen2_moe_f32_t1", "qwen2_moe", 40, 36, 8, 3, 1, 15, False,
     {"shared_expert_intermediate_size": 60, "norm_topk_prob": False}, {}),
    ("qwen2_moe_bf16_t7", "qwen2_moe", 72, 32, 12, 4, 7, 16, True,
     {"shared_expert_intermediate_size": 96, "norm_topk_prob": True}, {}),
    ("deepseek_v2_f32_t64", "deepseek_v2", 72, 28, 8, 3, 64, 17, False,
     {"n_shared_experts": 2, "topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 2,
      "routed_scaling_factor": 4.0, "norm_topk_prob": False}, {}),
    ("deepseek_v2_bf16_t7", "deepseek_v2", 72, 24, 8, 2, 7, 18, True,
     {"n_shared_experts": 1, "topk_method": "greedy", "n_group": 1, "topk_group": 1,
      "routed_scaling_factor": 1.0, "norm_topk_prob": False}, {}),
    ("deepseek_v3_f32_t7", "deepseek_v3", 40, 24, 16, 4, 7, 19, False,
     {"n_shared_experts": 1, "n_group": 4, "topk_group": 2, "norm_topk_prob": True,
      "routed_scaling_factor": 2.5}, {}),
    ("deepseek_v3_bf16_t64", "deepseek_v3", 72, 28, 16, 3, 64, 20, True,
     {"n_shared_experts": 2, "n_group": 8, "topk_group": 3, "norm_topk_prob": False,
      "routed_scaling_factor": 1.5}, {}),
    ("deepseek_v3_f32_t1", "deepseek_v3", 40, 24, 8, 2, 1, 21, False,
     {"n_shared_experts": 1, "n_group": 2, "topk_group": 1, "norm_topk_prob": True,
      "routed_scaling_factor": 2.5}, {}),
    ("mixtral_sharded_layer1", "mixtral", 40, 24, 4, 2, 7, 22, False, {},
     {"layer": 1, "sharded": True}),
]


def full_cases(out_dir):
    import gen_cases_hf as hf
    made = []
    for name, fam, d, f, E, k, T, seed, bf16, extra, opts in FULL_CASES:
        made.append(hf.make_full_case(out_dir, name, fam, d, f, E, k, T, seed, bf16=bf16, extra=extra,
                                      **opts))
    return made


# ---------------------------------------------------------------------------------------- README
def _versions():
    import safetensors
    import torch
    import transformers
    return dict(python=sys.version.split()[0], torch=torch.__version__,
                transformers=transformers.__version__, safetensors=safetensors.__version__,
                numpy=np.__version__)


def write_readme(out_dir, full, routers, loras, mofmes=(), families=()):
    v = _versions()
    L = []
    w = L.append
    w("# Reference cases for `smoe-run`")
    w("")
    w("Generated by `scripts/gen_cases.py` (do not edit by hand). Regenerate with")
    w("")
    w("    python3 -m venv /work/venv-cases")
    w("    /work/venv-cases/bin/pip install -r scripts/requirements-cases.txt")
    w("    /work/venv-cases/bin/python scripts/gen_cases.py --out tests/data/cases")
    w("")
    w(f"Made with Python {v['python']}, torch {v['torch']} (CPU), transformers {v['transformers']}, "
      f"safetensors {v['safetensors']}, numpy {v['numpy']}. Output is deterministic (fixed seeds, CPU); "
      "another torch build may change the last bits of `hidden_states`, never the ids (every case is "
      "checked to have no routing decision closer than about 1e-5 relative, see below).")
    w("")
    w("## Folder format")
    w("")
    w("As `../shared/spec/cases.md`: `config.json`, `weights.safetensors` (full layers and rank-wise LoRA), "
      "`input.safetensors`, plus `expected.safetensors` with the outputs under the names and dtypes of "
      "cases.md \"Outputs\". One exception: `mixtral_sharded_layer1/` (below).")
    w("")
    w("How the C++ test compares (per case): run `smoe-run CASE_DIR OUT_FILE` (with `--layer N` when "
      "the folder has a `case.json` `{\"layer\": N}`), then for every tensor of `expected.safetensors` "
      "whose name does not start with `hf_`: the output must have it with the same dtype and shape; "
      "integer tensors (`expert_ids`, `token_ids`, `dropped`, `tokens_per_expert`) exactly; float "
      "tensors with `err = max_i |y_i - r_i| / max_i |r_i|` per row (per tensor for `aux_loss`, "
      "`z_loss`, `updated_bias`) at most the case's tolerance. Tensors named `hf_*` are information "
      "only (smoe does not produce them).")
    w("")
    w("`expert_ids` / `expert_weights`: each row sorted by weight descending, ties to the lower id, "
      "padded with -1 / 0 to K (variable-k routers: the batch's largest count).")
    w("")
    w("## Full layers (Hugging Face modules)")
    w("")
    w("Each case: a config of the family's configuration class (`config.json` = `config.to_dict()`, "
      "private keys dropped, with `model_type`), the family's sparse-MoE block class instantiated from "
      "it, weights drawn N(0, 0.1²) for experts and shared experts and N(0, 1/d) for the router (and "
      "Qwen2-MoE's `shared_expert_gate`), DeepSeek-V3 `e_score_correction_bias` N(0, 0.1²), inputs "
      "`hidden_states` F32 N(0, 1). `expected.hidden_states` is the module's output in fp32 "
      "(`experts_implementation = \"eager\"`); `expert_ids` / `expert_weights` are the module's own "
      "router (`block.gate(x)`) output sorted per row. The script also recomputes every case from the "
      "spec in float64 (routing.md §2 presets, experts.md §3/§6) and stops unless ids are equal, "
      "weights agree to 1e-5 and `hidden_states` to 1e-5 (column `spec err` = the largest per-row "
      "relative difference found).")
    w("")
    w("Finally `scripts/gen_cases_check.py` re-reads every folder from disk as `smoe-run` must (its own "
      "safetensors parser, BF16 widened by `bits << 16`, names / fused layout / shards / `case.json`, "
      "routing from the config keys alone as routing.md §2 maps them) and recomputes all outputs in "
      "float64 from the spec: everything agrees to 1e-5 relative, integers exactly. It is a Python "
      "model of what `smoe-run` does with these folders.")
    w("")
    w("bf16 cases: the weights are stored as BF16; `expected` is the module run in fp32 on the "
      "bf16-rounded weights (inputs stay F32), so ids are comparable exactly and the numbers are what "
      "smoe's fp32 computation on bf16 weights must give. `hf_bf16_hidden_states` is the same module "
      "converted with `.to(torch.bfloat16)` and run on bf16-rounded inputs (HF's bf16 inference; "
      "DeepSeek-V3's bias kept F32 as HF's `_keep_in_fp32_modules_strict`); its ids may differ, so "
      "it is information only (column `hf bf16 vs fp32` = largest per-row relative difference; a "
      "value near 1 means the bf16 run picked another expert for some token).")
    w("")
    w("Tensor names are those of decoder layer 0 of a real checkpoint, one tensor per expert "
      "(Mixtral `block_sparse_moe.experts.{i}.w1/w3/w2` = gate/up/down; the others "
      "`mlp.experts.{i}.gate_proj/up_proj/down_proj`), except `olmoe_f32_t64_fused`, which uses HF's "
      "fused in-memory names `model.layers.0.mlp.experts.gate_up_proj` [E, 2f, d] (gate rows first) "
      "and `model.layers.0.mlp.experts.down_proj` [E, d, f]. Shared experts: Qwen2-MoE "
      "`mlp.shared_expert.{gate,up,down}_proj.weight` + `mlp.shared_expert_gate.weight` [1, d]; "
      "DeepSeek `mlp.shared_experts.*` with width `moe_intermediate_size * n_shared_experts`; "
      "DeepSeek-V3 `mlp.gate.e_score_correction_bias` F32 [E]. Configs with `moe_intermediate_size` "
      "set `intermediate_size` = 2f + 8 (the dense-MLP width, which must not be used for experts); "
      "DeepSeek configs set `first_k_dense_replace` 0 and carry `scoring_func` (and V3 "
      "`topk_method` `noaux_tc`) as published DeepSeek configs do.")
    w("")
    w("Tolerance: fp32 weights max relative error <= 1e-4, bf16 weights <= 2e-2 (issue 6; the data "
      "allow 1e-4 for bf16 too, since `expected` is fp32 math on the bf16 values); ids exact.")
    w("")
    w("| case | class | d | f | E | k | T | weights | config specifics | spec err | hf bf16 vs fp32 |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in full:
        ex = [f"{k_}={v_}" for k_, v_ in c["extra"].items() if k_ != "num_hidden_layers"]
        if c["fused"]:
            ex.append("fused names")
        if c["sharded"]:
            ex.append(f"layer {c['layer']}, 2 shards + index")
        ex = ", ".join(ex)
        hb = f"{c['hf_bf16_err']:.1e}" if c["hf_bf16_err"] is not None else "-"
        w(f"| `{c['name']}` | `{c['cls']}` | {c['d']} | {c['f']} | {c['E']} | {c['k']} | {c['T']} | "
          f"{'BF16' if c['bf16'] else 'F32'} | {ex or '-'} | {c['spec_err']:.1e} | {hb} |")
    w("")
    w("`mixtral_sharded_layer1/` holds a two-layer checkpoint instead of `weights.safetensors`: "
      "`model-00001-of-00002.safetensors` (`model.embed_tokens.weight`, all of layer 0's MoE block "
      "with other random weights, `model.layers.0.post_attention_layernorm.weight`, and the first half "
      "of layer 1's tensors in name order with non-expert tensors first), `model-00002-of-00002.safetensors` "
      "(the rest of layer 1, `model.layers.1.post_attention_layernorm.weight`), "
      "`model.safetensors.index.json` (`metadata.total_size`, `weight_map` name -> file), "
      "`config.json` with `num_hidden_layers` 2, and `case.json` `{\"layer\": 1}`: run it with "
      "`--layer 1`; `expected` is layer 1's block. The unrelated tensors must be ignored.")
    w("")
    w("## Families with expert forms of their own (Hugging Face modules only)")
    w("")
    w("Made by `gen_cases_hf.family_cases` (families.md §2.1-§2.6): the family's MoE block class of "
      "transformers, every parameter and buffer drawn N(0, 0.1²) (routers N(0, 1/d)), inputs N(0, 1) "
      "chosen so that eight 1e-5 relative perturbations leave the ids unchanged in float64. `expected` "
      "holds the block's fp32 output and, where the router submodule returns them, its ids and weights "
      "(JetMoE's gating returns them sorted by expert: `hidden_states` only; Cohere2-MoE with `average` keeps them "
      "as `hf_expert_weights`, since smoe reports them halved: the average's 1/2 is its routed scaling). No float64 re-derivation: "
      "`case.json` says `\"reference\": \"hf-module\"` and `gen_cases_check.py` skips these folders. "
      "Tensor names are the files' (families.md §2.8): GPT-OSS, Llama 4 (`feed_forward.`), JetMoE and DBRX "
      "(`transformer.blocks.0.ffn.`) as the module holds them; Cohere2-MoE and LongCat-Flash one tensor per "
      "expert; DeepSeek-V4 DeepSeek's own `layers.0.ffn.experts.{i}.w1/w3/w2`, `gate.bias`, "
      "`shared_experts.w1/w3/w2`; PhiMoE Mixtral's `block_sparse_moe.gate.weight`, `experts.{i}.w1/w3/w2`.")
    w("")
    w("| case | class | d | f | E | k | T | weights | config specifics |")
    w("|---|---|---|---|---|---|---|---|---|")
    for c in families:
        ex = ", ".join(f"{k_}={v_}" for k_, v_ in c["extra"].items()) or "-"
        w(f"| `{c['name']}` | `{c['cls']}` | {c['d']} | {c['f']} | {c['E']} | {c['k']} | {c['T']} | "
          f"{'BF16' if c['bf16'] else 'F32'} | {ex} |")
    w("")
    w("## Router-only cases (spec references)")
    w("")
    w("`input.safetensors`: `router_logits` F32 [T, E] ([T, E+N] for null_expert), `expert_bias` F32 [E] "
      "where the config uses a bias. `expected` comes from `scripts/gen_cases_ref.py`, float64 NumPy "
      "written from routing.md and balance.md, run on the stored F32 logits and rounded to F32 once; "
      "before writing anything the script asserts every worked example of routing.md §2-§8 and "
      "balance.md §3, §4, §6 (in float64 and float32). Each case's integer outputs (ids, order, drops, "
      "counts) are required to be identical in float32 arithmetic and under eight tie-preserving 1e-5 "
      "relative perturbations of the logits, so they are decided by the spec's tie rule or by a clear "
      "margin, never by rounding.")
    w("")
    w("Outputs: `expert_ids`, `expert_weights` in every case; `tokens_per_expert` I32 [E] in every "
      "case (balance.md §6: statistics are always collected; it is `kept[e]`: slots of real experts "
      "after dropping; null slots excluded; expert choice: tokens per expert); expert choice also "
      "`token_ids` / `weights` [E, C] (C the configured capacity, -1 / 0 padding when T < C); "
      "`dropped` U8 [T, k] (slot j = column j of `expert_ids`) with `moe_expert_capacity_factor`; "
      "`updated_bias` with `moe_router_bias_update_rate`; `aux_loss` F32 [1] with "
      "`moe_aux_loss_coeff` (Megatron per-layer value x coeff, p = full softmax or sigmoid / row sum, "
      "c = plain top-k of p) or with ReLU's `l1_reg_coeff` (ReMoE L1 term, the same Megatron formula on the relu "
      "outputs: `l1_reg_coeff * E / (target_top_k * T^2) * sum_e (sum_t relu(x)_te) * c_e`, c_e = tokens "
      "with relu(x)_te > 0); "
      "`z_loss` F32 [1] with `moe_z_loss_coeff`.")
    w("")
    w(f"Tolerance: {ROUTER_TOL} (the references are float64; smoe's fp32 routing is within about 1e-6).")
    w("")
    w("| case | router | E | T | config keys | outputs | exercises |")
    w("|---|---|---|---|---|---|---|")
    for c in routers:
        keys = ", ".join(f"{k_}={json.dumps(v_)}" for k_, v_ in c["cfg"].items() if k_ not in ("router", "num_experts"))
        outs = ", ".join(f"{n} {list(t.shape)}" for n, t in c["outputs"].items())
        w(f"| `{c['name']}` | {c['cfg']['router']} | {c['cfg']['num_experts']} | {c['T']} | {keys} | "
          f"{outs} | {c['what']} |")
    w("")
    w("Not included on purpose: a -inf or NaN logit. routing.md §0 makes any non-finite logit an "
      "error (`smoe::invalid_argument`), so it is not a case with expected outputs; "
      "`router_topk_softmax_norm_t64` has logits of -30 instead (exp underflows in no dtype used).")
    w("")
    w("## Rank-wise LoRA (spec reference)")
    w("")
    w("Float64 reference of routing.md §8 / experts.md §10 (also checked on the §8 worked example), "
      "base layer included; inputs `hidden_states` F32, outputs `hidden_states` F32 [T, out], "
      "`expert_ids` / `expert_weights` [T, k] (rank ids and gates w_i = k c_i / sum c). "
      f"Tolerance: hidden_states max relative error <= 1e-4, {ROUTER_TOL}.")
    w("")
    w("| case | config | T | tensors |")
    w("|---|---|---|---|")
    for c in loras:
        w(f"| `{c['name']}` | `{json.dumps(c['cfg'])}` | {c['T']} | {', '.join('`' + t + '`' for t in c['tensors'])} |")
    w("")
    w("## MoFME blocks (spec reference)")
    w("")
    w("Float64 reference of research.md §5.2 (`layer::FilmBlock`, checked on its worked example in both "
      "indexings); tensors under the released code's names for decoder layer 0 (`0.1.0.weight`, ...); "
      "inputs `hidden_states` F32, outputs `hidden_states` F32 [T, d] (the block's branch, before the "
      f"residual), `expert_ids` / `expert_weights` [T, k], `tokens_per_expert`. Tolerance: hidden_states "
      f"max relative error <= 1e-4, {ROUTER_TOL}.")
    w("")
    w("| case | what |")
    w("|---|---|")
    for c in mofmes:
        w(f"| `{c['name']}` | {c['what']} |")
    w("")
    w("## Where Hugging Face and the spec differ (found while making these cases)")
    w("")
    w(f"Checked in transformers {v['transformers']}; none of these changes a number in these cases.")
    w("")
    w("- DeepSeek-V3 (`DeepseekV3TopkRouter`): fills experts of excluded groups with -inf before the "
      "top-k, not with 0.0 as routing.md §10.2 says of HF; this agrees with the spec's choice. "
      "DeepSeek-V2 (`DeepseekV2TopkRouter`, `group_limited_greedy`) still fills them with 0.0 (only "
      "visible when fewer than k eligible scores are positive, which softmax scores never are unless "
      "they underflow). V3 renormalises (+1e-20) and then scales, as the spec; V2 ignores "
      "`norm_topk_prob` and always scales, as the spec says.")
    w("- `DeepseekV3Config` has no `scoring_func` / `topk_method` keys (the model is always sigmoid / "
      "noaux_tc); the files carry them as real DeepSeek-V3 configs do.")
    w("- All five families load experts into fused `gate_up_proj` [E, 2f, d] (gate rows first) / "
      "`down_proj` [E, d, f] parameters, as experts.md §12 says.")
    w("- Mixtral, OLMoE and Qwen2-MoE renormalise without an epsilon; OLMoE / Qwen2-MoE cast the "
      "routing weights to the logits' dtype (bf16 in a bf16 run) before use, Mixtral keeps fp32.")
    w("- `torch.topk` is used for selection (tie order unspecified); the data avoid ties in full layers.")
    w("")
    with open(os.path.join(out_dir, "README.md"), "w") as fh:
        fh.write("\n".join(L))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/data/cases")
    ap.add_argument("--skip-hf", action="store_true", help="router and LoRA cases only (no transformers)")
    args = ap.parse_args()
    ref.check_worked_examples()
    out = args.out
    if not args.skip_hf and os.path.isdir(out):
        shutil.rmtree(out)  # the folder is entirely generated
    os.makedirs(out, exist_ok=True)
    routers = router_cases(out)
    loras = [lora_case(out, "rankwise_lora_peft_t7", 31, 7, 72, 40, 16, 4, 8.0,
                       module="model.layers.0.self_attn.q_proj"),
             lora_case(out, "rankwise_lora_t64", 32, 64, 40, 100, 8, 2, 16.0, base_bias=False,
                       rank_partition=1)]
    mofmes = mofme_cases(out)
    if args.skip_hf:
        return
    full = full_cases(out)
    import gen_cases_hf as hf
    families = hf.family_cases(out)
    write_readme(out, full, routers, loras, mofmes, families)
    print(f"wrote {len(full)} full-layer, {len(families)} family, {len(routers)} router-only and {len(loras)} LoRA cases to {out}")
    import gen_cases_check
    gen_cases_check.main(out)


if __name__ == "__main__":
    main()
