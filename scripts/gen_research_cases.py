#!/usr/bin/env python3
"""Case folders for the research layers of research.md §1-§3 and §5.1 (smoe-run's chain_of_experts,
recurrent_router, smear and film configs; keys in the README), from the spec's worked examples, and a MoTE
layer of §7 (ternary routed experts, a dense shared expert) checked against §7.6 first.

Pure Python in float64, no third-party package: the spec's formula weights (§0), each design's math
written again from the spec, and a check that the numbers printed in research.md come out (6
significant digits) before anything is written. Run from the repository root:

    python3 scripts/gen_research_cases.py --out tests/data/cases
"""
import argparse
import json
import math
import os
import struct


def F(v):  # research.md §0
    return ((v % 5) - 2) / 4.0


def formula_expert(e, d, f):
    w1 = [[F(e + 2 * i + 3 * j) for j in range(d)] for i in range(f)]
    w3 = [[F(2 * e + i + 2 * j) for j in range(d)] for i in range(f)]
    w2 = [[F(3 * e + i + j) for i in range(f)] for j in range(d)]
    return w1, w3, w2


def matvec(m, v):
    return [sum(a * b for a, b in zip(row, v)) for row in m]


def swiglu(w, x):
    w1, w3, w2 = w
    g, u = matvec(w1, x), matvec(w3, x)
    return matvec(w2, [a / (1 + math.exp(-a)) * b for a, b in zip(g, u)])


def f32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]


def softmax(l):
    m = max(l)
    e = [math.exp(v - m) for v in l]
    s = sum(e)
    return [v / s for v in e]


def topk(l, k, norm):
    """routing.md §2 softmax top-k on fp32 logits: ids by weight descending, ties to the lower id."""
    p = softmax([f32(v) for v in l])
    ids = sorted(range(len(p)), key=lambda e: (-p[e], e))[:k]
    w = [p[e] for e in ids]
    if norm:
        s = sum(w)
        w = [v / s for v in w]
    return ids, w


def close(got, want, what, rel=2e-6):
    got = got if isinstance(got, list) else [got]
    for a, b in zip(got, want):
        if abs(a - b) > rel * max(abs(b), 1e-3) + 5e-7:
            raise SystemExit(f"{what}: {got} is not the spec's {want}")


def write_safetensors(path, tensors):
    """tensors: name -> (dtype 'F32'|'I32'|'U8', shape, flat values)."""
    header, blobs, off = {}, [], 0
    for name, (dt, shape, vals) in tensors.items():
        b = struct.pack("<%d%s" % (len(vals), {"F32": "f", "I32": "i", "U8": "B"}[dt]), *vals)
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def flat(m):
    return [v for row in m for v in row]


def folder(out, name, config, weights, inputs, expected):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as fh:
        json.dump(config, fh, indent=2)
        fh.write("\n")
    write_safetensors(os.path.join(d, "weights.safetensors"), weights)
    write_safetensors(os.path.join(d, "input.safetensors"), inputs)
    write_safetensors(os.path.join(d, "expected.safetensors"), expected)
    print("wrote", d)


X = [[1, -0.5, 0.25], [-1, 0.5, 2], [0.5, 1, -1]]


def expert_tensors(prefix, experts, names=("gate_proj", "up_proj", "down_proj"), indexed=True):
    t = {}
    for e, w in enumerate(experts):
        p = f"{prefix}{e}." if indexed else prefix
        for n, m in zip(names, (w[0], w[1], w[2])):
            t[p + n + ".weight"] = ("F32", [len(m), len(m[0])], flat(m))
    return t


def chain_case(out):
    d, f, E, k, C = 3, 2, 4, 2, 2
    experts = [formula_expert(e, d, f) for e in range(E)]
    shared = formula_expert(4, d, f)
    G = [[[((3 * e + 2 * j + 5 * t) % 7 - 3) / 4 for j in range(d)] for e in range(E)] for t in range(C)]
    y, ids_all, w_all = [], [[] for _ in range(C)], [[] for _ in range(C)]
    for x in X[:2]:
        s = list(x)
        for t in range(C):
            ids, w = topk(matvec(G[t], s), k, False)
            ids_all[t] += ids
            w_all[t] += w
            nxt = list(s)
            for e, we in zip(ids, w):
                nxt = [a + we * b for a, b in zip(nxt, swiglu(experts[e], s))]
            s = [a + b for a, b in zip(nxt, swiglu(shared, s))]
        y += s
    close(y, [0.91457, -0.601943, 0.447606, -1.2329, 0.693573, 2.30977], "chain y")
    close(w_all[1], [0.510842, 0.177759, 0.557677, 0.372068], "chain pass-2 weights")
    assert ids_all == [[2, 3, 3, 0], [0, 1, 1, 3]]
    weights = {f"model.layers.0.mlp.gate.{t}.weight": ("F32", [E, d], flat(G[t])) for t in range(C)}
    weights.update(expert_tensors("model.layers.0.mlp.experts.", experts))
    weights.update(expert_tensors("model.layers.0.mlp.shared_experts.", [shared], indexed=False))
    expected = {"hidden_states": ("F32", [2, d], y)}
    for t in range(C):
        expected[f"expert_ids.{t}"] = ("I32", [2, k], ids_all[t])
        expected[f"expert_weights.{t}"] = ("F32", [2, k], w_all[t])
    folder(out, "research_chain_worked_t2",
           {"layer": "chain_of_experts", "hidden_size": d, "moe_intermediate_size": f, "num_experts": E, "top_k": k,
            "num_iterations": C, "independent_gates": True, "inner_residual": True, "output": "state",
            "shared_expert_intermediate_size": f},
           weights, {"hidden_states": ("F32", [2, d], flat(X[:2]))}, expected)


def rmoe_case(out):
    d, p, E, k, f = 3, 2, 4, 2, 2
    W = {"ir": [[-0.75, 0], [-0.25, 0.5]], "hr": [[-0.5, 0.25], [0, 0.75]], "iz": [[-0.25, 0.5], [0.25, -0.75]],
         "hz": [[0, 0.75], [0.5, -0.5]], "in": [[0.25, -0.75], [0.75, -0.25]], "hn": [[0.5, -0.5], [-0.75, 0]]}
    B = {"ir": [-0.25, 0.125], "hr": [-0.125, 0.25], "iz": [0, -0.25], "hz": [0.125, -0.125], "in": [0.25, 0], "hn": [-0.25, 0.125]}
    P = [[[-1, 0, 1], [-0.5, 0.5, -1]], [[-0.5, 0.5, -1], [0, 1, -0.5]]]
    Q = [[[-1, -0.5], [0.5, 1], [-0.5, 0], [1, -1]], [[0, 0.5], [-1, -0.5], [0.5, 1], [-0.5, 0]]]
    xs = [X[:2], [[-0.5, 0.5, 0.5], [0.25, -0.75, 0.5]]]
    experts = [formula_expert(e, d, f) for e in range(E)]
    sig = lambda v: 1 / (1 + math.exp(-v))
    h = [[0.0] * p for _ in range(2)]
    expected = {}
    for l in range(2):
        ids_l, w_l, y_l = [], [], []
        for t in range(2):
            u = matvec(P[l], xs[l][t])
            mv = lambda n, v: matvec(W[n], v)
            r = [sig(a + B["ir"][i] + b + B["hr"][i]) for i, (a, b) in enumerate(zip(mv("ir", u), mv("hr", h[t])))]
            z = [sig(a + B["iz"][i] + b + B["hz"][i]) for i, (a, b) in enumerate(zip(mv("iz", u), mv("hz", h[t])))]
            n = [math.tanh(a + B["in"][i] + r[i] * (b + B["hn"][i])) for i, (a, b) in enumerate(zip(mv("in", u), mv("hn", h[t])))]
            h[t] = [(1 - z[i]) * n[i] + z[i] * h[t][i] for i in range(p)]
            ids, w = topk(matvec(Q[l], h[t]), k, True)
            ids_l += ids
            w_l += w
            y = [0.0] * d
            for e, we in zip(ids, w):
                y = [a + we * b for a, b in zip(y, swiglu(experts[e], xs[l][t]))]
            y_l += y
        expected[f"hidden_states.{l}"] = ("F32", [2, d], y_l)
        expected[f"expert_ids.{l}"] = ("I32", [2, k], ids_l)
        expected[f"expert_weights.{l}"] = ("F32", [2, k], w_l)
    close(flat(h), [0.197374, -0.122915, 0.693389, -0.130175], "rmoe h after layer 1")
    close(expected["expert_weights.0"][2], [0.594191, 0.405809, 0.511781, 0.488219], "rmoe layer-0 weights")
    assert expected["expert_ids.0"][2] == [3, 1, 1, 3] and expected["expert_ids.1"][2] == [2, 0, 2, 0]
    expected["router_state"] = ("F32", [2, p], flat(h))
    weights = {}
    for n in W:
        weights["model.rnn_router.weight_" + n] = ("F32", [p, p], flat(W[n]))
        weights["model.rnn_router.bias_" + n] = ("F32", [p], B[n])
    for l in range(2):
        m = f"model.layers.{l}.block_sparse_moe."
        weights[m + "weight1"] = ("F32", [p, d], flat(P[l]))
        weights[m + "weight2"] = ("F32", [E, p], flat(Q[l]))
        weights.update(expert_tensors(m + "experts.", experts, names=("w1", "w3", "w2")))
    folder(out, "research_rmoe_worked_t2",
           {"layer": "recurrent_router", "hidden_size": d, "intermediate_size": f, "num_experts": E, "top_k": k,
            "rnn_hidden_size": p, "cell": "gru", "num_moe_layers": 2},
           weights, {f"hidden_states.{l}": ("F32", [2, d], flat(xs[l])) for l in range(2)}, expected)


def smear_case(out, scope):
    d, f, E = 3, 2, 3
    experts = [formula_expert(e, d, f) for e in range(E)]
    Wr = [[-1, -0.5, 0], [0, 0.5, 1], [1, -1, -0.5]]
    groups = [[0, 1, 2]] if scope == "sequence" else [[0], [1], [2]]
    y, probs = [None] * 3, []
    for g in groups:
        mean = [sum(X[t][j] for t in g) / len(g) for j in range(d)]
        p = softmax(matvec(Wr, mean))
        probs += p
        merged = [[[sum(p[e] * experts[e][m][i][j] for e in range(E)) for j in range(len(experts[0][m][0]))]
                   for i in range(len(experts[0][m]))] for m in range(3)]
        for t in g:
            y[t] = swiglu(merged, X[t])
    y = flat(y)
    if scope == "sequence":
        close(probs, [0.224209, 0.560733, 0.215059], "smear p")
        close(y[:3], [0.00470493, -0.00143, -0.00326023], "smear y0")
    else:
        close(probs[:3], [0.087033, 0.184249, 0.728718], "smear token p0")
        close(y[3:6], [-0.0609174, 0.076848, 0.0197241], "smear token y1")
    weights = {"model.layers.0.mlp.gate.weight": ("F32", [E, d], flat(Wr))}
    weights.update(expert_tensors("model.layers.0.mlp.experts.", experts))
    inputs = {"hidden_states": ("F32", [3, d], flat(X))}
    if scope == "sequence":
        inputs["sequence_offsets"] = ("I32", [2], [0, 3])
    folder(out, f"research_smear_{scope}_worked_t3",
           {"layer": "smear", "hidden_size": d, "intermediate_size": f, "num_experts": E, "scope": scope, "router_input": "mean"},
           weights, inputs, {"hidden_states": ("F32", [3, d], y), "merge_weights": ("F32", [len(groups), E], probs)})


def film_case(out, merged):
    """research.md §5.1: FiLM experts on formula expert 0, per slot or merged (the same y in float64)."""
    d, f, E, k = 3, 2, 3, 2
    w1, w3, w2 = formula_expert(0, d, f)
    gamma = [[0.5, 1], [0.75, 1.25], [1, 1.5]]
    beta = [[-0.25, -0.125], [0.125, 0.25], [-0.125, 0]]
    gate = [[-1, 0, 1], [-0.5, 0.5, -1], [0, 1, -0.5]]
    y, ids_all, w_all = [], [], []
    for x in X[:2]:
        g, u = matvec(w1, x), matvec(w3, x)
        h = [a / (1 + math.exp(-a)) * b for a, b in zip(g, u)]
        ids, w = topk(matvec(gate, x), k, True)
        ids_all += ids
        w_all += w
        per_slot = [0.0] * d
        for e, we in zip(ids, w):
            per_slot = [a + we * b for a, b in zip(per_slot, matvec(w2, [gamma[e][i] * h[i] + beta[e][i] for i in range(f)]))]
        G = [sum(we * gamma[e][i] for e, we in zip(ids, w)) for i in range(f)]
        B = [sum(we * beta[e][i] for e, we in zip(ids, w)) for i in range(f)]
        merged_y = matvec(w2, [G[i] * h[i] + B[i] for i in range(f)])
        assert max(abs(a - b) for a, b in zip(per_slot, merged_y)) < 1e-15
        y += merged_y if merged else per_slot
    close(y, [0.101978, 0.0293892, -0.0431997, 0.150154, 0.0487688, -0.0526159], "film y")
    close(w_all, [0.531209, 0.468791, 0.970688, 0.0293122], "film weights")
    assert ids_all == [2, 0, 0, 2]
    m = "model.layers.0.mlp."
    weights = {m + "gate.weight": ("F32", [E, d], flat(gate)), m + "film_gamma": ("F32", [E, f], flat(gamma)),
               m + "film_beta": ("F32", [E, f], flat(beta))}
    weights.update(expert_tensors(m, [(w1, w3, w2)], indexed=False))
    folder(out, "research_film_merged_worked_t2" if merged else "research_film_worked_t2",
           {"layer": "film", "hidden_size": d, "intermediate_size": f, "num_experts": E, "top_k": k, "merged": merged,
            "norm_topk_prob": True},
           weights, {"hidden_states": ("F32", [2, d], flat(X[:2]))},
           {"hidden_states": ("F32", [2, d], y), "expert_ids": ("I32", [2, k], ids_all), "expert_weights": ("F32", [2, k], w_all)})


def ternary_quantise(W):
    """research.md §7.3 with one scale per row (`channel`): gamma = mean |W| summed in fp64, rounded once to
    fp32; s = max(gamma, 1e-5); t = clamp(rint(W * fl32(1/s)), -1, 1) with the product in fp32 (ties to even)."""
    t, s = [], []
    for row in W:
        si = max(f32(math.fsum(abs(v) for v in row) / len(row)), f32(1e-5))
        inv = f32(1 / si)
        t.append([max(-1, min(1, round(f32(v * inv)))) for v in row])  # round(): ties to even
        s.append(si)
    return t, s


def pack_2b(row):
    """§7.2 `2b`: column 4b + j of byte b in bits 2j..2j+1 as u = t + 1; pad columns t = 0 (u = 1)."""
    u = [v + 1 for v in row] + [1] * (-len(row) % 4)
    return [sum(u[4 * b + j] << (2 * j) for j in range(4)) for b in range(len(u) // 4)]


def pack_b3(row):
    """§7.2 `b3`: five trits per byte, N = sum u_n 3^(4-n), q = ceil(256 N / 243); decoded back with the
    spec's multiply-and-shift rule as a check."""
    u = [v + 1 for v in row] + [1] * (-len(row) % 5)
    out = []
    for b in range(len(u) // 5):
        N = sum(u[5 * b + n] * 3 ** (4 - n) for n in range(5))
        q = (256 * N + 242) // 243
        assert [(((q * 3 ** n) % 256) * 3) >> 8 for n in range(5)] == u[5 * b:5 * b + 5]
        out.append(q)
    return out


def ternary_worked_example():
    """research.md §7.6: the quantiser, both packings and y = s (t x), to the printed digits."""
    W = [[f32(v) for v in r] for r in ([0.30, -0.05, 0.12, -0.40, 0.00], [0.02, 0.25, -0.18, 0.09, -0.33],
                                        [-0.11, 0.07, 0.50, -0.26, 0.14], [0.21, -0.29, 0.03, 0.08, -0.06])]
    x = [1, -2, 0.5, 3, -1]
    tt, st = ternary_quantise([flat(W)])  # `tensor`: the whole matrix is one scale unit
    assert struct.pack("<f", st[0]) == bytes.fromhex("21b0323e"), st
    t = [tt[0][5 * o:5 * o + 5] for o in range(4)]
    assert t == [[1, 0, 1, -1, 0], [0, 1, -1, 1, -1], [-1, 0, 1, -1, 1], [1, -1, 0, 0, 0]], t
    assert [pack_2b(r) for r in t] == [[0x26, 0x55], [0x89, 0x54], [0x24, 0x56], [0x52, 0x55]]
    assert [pack_b3(r) for r in t] == [[0xDC], [0x95], [0x32], [0xB9]]
    close([st[0] * v for v in matvec(t, x)], [-0.26175, 0.26175, -0.78525, 0.5235], "ternary tensor y")
    tc, sc = ternary_quantise(W)
    assert [struct.pack("<f", v).hex() for v in sc] == ["0f2d323e", "0f2d323e", "1a2f5d3e", "4c37093e"], sc
    assert tc == t[:3] + [[1, -1, 0, 1, 0]], tc
    close([s * v for s, v in zip(sc, matvec(tc, x))], [-0.261, 0.261, -0.972, 0.804], "ternary channel y")


def mote_case(out):
    """MoTE (research.md §7): y = f_sh(x) + sum_e w_e f_e(x) as a DeepSeek-V2 layer (softmax, greedy top-k,
    no renormalisation, scaling 1), routed experts ternary (`b3`, one scale per row) and the shared expert
    dense F32 (modules_to_not_convert). The reference runs on W_deq = t * s in float64."""
    import random
    ternary_worked_example()
    d, f, E, k, T = 12, 8, 4, 2, 7
    rng = random.Random(18)
    normal = lambda r, c, sd: [[f32(rng.gauss(0, sd)) for _ in range(c)] for _ in range(r)]
    gate = normal(E, d, 1 / math.sqrt(d))
    shared = [normal(f, d, 0.1), normal(f, d, 0.1), normal(d, f, 0.1)]
    X_ = normal(T, d, 1.0)
    m = "model.layers.0.mlp."
    weights = {m + "gate.weight": ("F32", [E, d], flat(gate))}
    weights.update(expert_tensors(m + "shared_experts.", [shared], indexed=False))
    experts = []
    for e in range(E):
        deq = []
        for n, (R, C) in zip(("gate_proj", "up_proj", "down_proj"), ((f, d), (f, d), (d, f))):
            t, s = ternary_quantise(normal(R, C, 0.1))
            assert all(v in (-1, 0, 1) for v in flat(t)) and {-1, 0, 1} <= set(flat(t))
            packed = [b for r in t for b in pack_b3(r)]
            weights[f"{m}experts.{e}.{n}.weight_ternary"] = ("U8", [R, -(-C // 5)], packed)
            weights[f"{m}experts.{e}.{n}.weight_scale"] = ("F32", [R, 1], s)
            deq.append([[tv * sv for tv in tr] for tr, sv in zip(t, s)])  # exact: a sign times an fp32 scale
        experts.append(deq)
    y, ids_all, w_all = [], [], []
    for x in X_:
        logits = matvec(gate, x)
        p = sorted(softmax([f32(v) for v in logits]), reverse=True)
        assert p[k - 1] - p[k] > 1e-3 * p[k - 1], "a near tie in the routing"  # ids robust to fp32 rounding
        ids, w = topk(logits, k, False)
        ids_all += ids
        w_all += w
        yt = swiglu(shared, x)
        for e, we in zip(ids, w):
            yt = [a + we * b for a, b in zip(yt, swiglu(experts[e], x))]
        y += yt
    config = {"model_type": "deepseek_v2", "hidden_size": d, "intermediate_size": 2 * f + 8, "moe_intermediate_size": f,
              "n_routed_experts": E, "n_shared_experts": 1, "num_experts_per_tok": k, "norm_topk_prob": False,
              "routed_scaling_factor": 1.0, "scoring_func": "softmax", "topk_method": "greedy", "n_group": 1,
              "topk_group": 1, "first_k_dense_replace": 0, "moe_layer_freq": 1, "num_hidden_layers": 1, "hidden_act": "silu",
              "quantization_config": {"quant_method": "smoe-ternary", "packing": "b3", "scale": "channel",
                                      "modules_to_not_convert": ["shared_experts"]}}
    folder(out, "research_mote_b3_channel_t7", config, weights, {"hidden_states": ("F32", [T, d], flat(X_))},
           {"hidden_states": ("F32", [T, d], y), "expert_ids": ("I32", [T, k], ids_all),
            "expert_weights": ("F32", [T, k], w_all)})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    chain_case(a.out)
    rmoe_case(a.out)
    smear_case(a.out, "sequence")
    smear_case(a.out, "token")
    film_case(a.out, False)
    film_case(a.out, True)
    mote_case(a.out)


if __name__ == "__main__":
    main()
