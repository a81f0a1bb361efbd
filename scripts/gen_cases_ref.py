"""Plain NumPy references of the router, balancer and rank-wise LoRA math, written from
../shared/spec/routing.md and balance.md (copied nowhere else), and the spec's worked examples as
assertions (check_worked_examples, run by gen_cases.py every time).

Every function takes a `dt` (np.float64 for the expected outputs, np.float32 to detect decisions that
fp32 rounding could flip: gen_cases.py demands that both select the same experts). Results are
token-major: ids int64 [T, K] sorted by weight descending, ties to the lower id, padded with -1 / 0.
"""
import math

import numpy as np


def _order(keys, ids=None):
    """ids sorted by (key descending, id ascending): the spec's tie rule (+0 equals -0)."""
    if ids is None:
        ids = range(len(keys))
    return sorted(ids, key=lambda e: (-float(keys[e]), e))


def softmax(x, dt):
    x = np.asarray(x, dtype=dt)
    z = np.exp(x - x.max())
    return z / z.sum(dtype=dt)


def sigmoid(x, dt):
    x = np.asarray(x, dtype=dt)
    return dt(1) / (dt(1) + np.exp(-x))


def rows_to_arrays(rows, K):
    """rows: per token a list of (id, weight), already in row order. Pads to K with -1 / 0."""
    T = len(rows)
    ids = np.full((T, K), -1, dtype=np.int64)
    w = np.zeros((T, K), dtype=np.float64)
    for t, r in enumerate(rows):
        for j, (e, v) in enumerate(r):
            ids[t, j] = e
            w[t, j] = v
    return ids, w


def _sorted_row(pairs):
    """(id, weight) pairs sorted by weight descending, ties to the lower id."""
    return sorted(pairs, key=lambda p: (-float(p[1]), p[0]))


# ---------------------------------------------------------------------------------------------- topk
def topk(L, top_k, score_func="softmax", norm_topk_prob=False, score_after_topk=False,
         routed_scaling_factor=1.0, n_group=1, topk_group=None, expert_bias=None, norm_eps=1e-20,
         dt=np.float64):
    """routing.md §2."""
    L = np.asarray(L, dtype=dt)
    T, E = L.shape
    if topk_group is None:
        topk_group = n_group
    rows = []
    for t in range(T):
        x = L[t]
        if score_after_topk:
            S = _order(x)[:top_k]
            m = max(x[e] for e in S)
            z = {e: np.exp(x[e] - m) for e in S}
            den = sum(z.values(), dt(0))
            pairs = [(e, z[e] / den * dt(routed_scaling_factor)) for e in S]
            rows.append(_sorted_row(pairs))
            continue
        s = softmax(x, dt) if score_func == "softmax" else sigmoid(x, dt)
        c = s + np.asarray(expert_bias, dtype=dt) if expert_bias is not None else s
        eligible = list(range(E))
        if n_group > 1:
            G = E // n_group
            gs = []
            for g in range(n_group):
                grp = sorted((c[e] for e in range(g * G, (g + 1) * G)), reverse=True)
                gs.append(grp[0] + grp[1] if expert_bias is not None else grp[0])
            keep = _order(gs)[:topk_group]
            eligible = [e for e in range(E) if e // G in keep]
        S = _order(c, eligible)[:top_k]
        w = {e: s[e] for e in S}
        if norm_topk_prob:
            den = sum(w.values(), dt(0)) + dt(norm_eps)
            w = {e: v / den for e, v in w.items()}
        pairs = [(e, w[e] * dt(routed_scaling_factor)) for e in S]
        rows.append(_sorted_row(pairs))
    return rows_to_arrays(rows, top_k)


# ------------------------------------------------------------------------------------- expert choice
def ec_capacity(T, E, capacity=None, capacity_factor=None):
    if capacity is not None:
        return int(capacity)
    return int(math.ceil((T / E) * capacity_factor))  # IEEE double, in this order (routing.md §3)


def expert_choice(L, capacity=None, capacity_factor=None, score_func="softmax", dt=np.float64):
    """routing.md §3. Returns (ids, w) token-major and (token_ids, weights) [E, C]."""
    L = np.asarray(L, dtype=dt)
    T, E = L.shape
    C = ec_capacity(T, E, capacity, capacity_factor)
    Ceff = min(C, T)
    s = np.stack([softmax(L[t], dt) for t in range(T)]) if score_func == "softmax" else sigmoid(L, dt)
    tok = np.full((E, C), -1, dtype=np.int64)
    tw = np.zeros((E, C), dtype=np.float64)
    per_token = [[] for _ in range(T)]
    for e in range(E):
        chosen = sorted(_order(s[:, e])[:Ceff])  # CSR row: increasing token id
        for j, t in enumerate(chosen):
            tok[e, j] = t
            tw[e, j] = s[t, e]
            per_token[t].append((e, s[t, e]))
    rows = [_sorted_row(p) for p in per_token]
    K = max((len(r) for r in rows), default=0)
    ids, w = rows_to_arrays(rows, K)
    return ids, w, tok, tw


# --------------------------------------------------------------------------------------------- top-p
def top_p(L, p=0.4, max_k=None, min_k=1, dt=np.float64):
    """routing.md §4."""
    L = np.asarray(L, dtype=dt)
    T, E = L.shape
    if max_k is None:
        max_k = E
    rows = []
    for t in range(T):
        s = softmax(L[t], dt)
        order = _order(s)
        n = E
        if p < 1:
            acc = dt(0)
            for j, e in enumerate(order):
                acc = dt(acc + s[e])
                if acc > p:
                    n = j + 1
                    break
        n = min(max(n, min_k), max_k)
        rows.append([(e, s[e]) for e in order[:n]])
    K = max((len(r) for r in rows), default=0)
    return rows_to_arrays(rows, K)


# --------------------------------------------------------------------------------------- null expert
def null_expert(L, num_experts, num_null_experts, top_k, dt=np.float64):
    """routing.md §5. L has E + N columns; ids >= E are null experts."""
    L = np.asarray(L, dtype=dt)
    T, W = L.shape
    assert W == num_experts + num_null_experts
    rows = []
    for t in range(T):
        s = softmax(L[t], dt)
        S = _order(s)[:top_k]
        sigma = sum((s[e] for e in S if e < num_experts), dt(0))
        if sigma == 0:
            sigma = dt(1)
        pairs = [(e, s[e] / sigma if e < num_experts else s[e]) for e in S]
        rows.append(_sorted_row(pairs))
    return rows_to_arrays(rows, top_k)


# ---------------------------------------------------------------------------------------------- relu
def relu(L, dt=np.float64):
    """routing.md §6."""
    L = np.asarray(L, dtype=dt)
    rows = [_sorted_row([(e, x[e]) for e in range(len(x)) if x[e] > 0]) for x in L]
    K = max((len(r) for r in rows), default=0)
    return rows_to_arrays(rows, K)


def relu_l1_loss(L, target_top_k, l1_reg_coeff):
    """cases.md: ReMoE's L1 regulariser, the Switch-style loss on relu outputs, c_e = tokens with a
    positive relu output, k = target_top_k, times l1_reg_coeff."""
    L = np.asarray(L, dtype=np.float64)
    T, E = L.shape
    r = np.maximum(L, 0.0)
    c = (L > 0).sum(axis=0)
    return l1_reg_coeff * E / (target_top_k * T * T) * float((r.sum(axis=0) * c).sum())


# ------------------------------------------------------------------------------------------ sinkhorn
def sinkhorn(L, top_k, tol=1e-4, max_iterations=100, dt=np.float64):
    """routing.md §7. Returns ids, w, P, n, converged."""
    L = np.asarray(L, dtype=dt)
    T, E = L.shape
    a = sigmoid(L, dt) if top_k == 1 else np.stack([softmax(L[t], dt) for t in range(T)]) if T else L
    n, err = 0, float("inf")
    if T >= 2 and max_iterations > 0:
        K = np.exp(L - L.max(axis=1, keepdims=True))
        d0 = np.ones(T, dtype=dt)
        d1 = np.ones(E, dtype=dt)
        eps = dt(1e-8)
        while True:
            d0 = (dt(1) / dt(T)) / ((K * d1[None, :]).sum(axis=1) + eps)
            d1_new = (dt(1) / dt(E)) / ((K * d0[:, None]).sum(axis=0) + eps)
            err = float(np.abs(d1_new - d1).sum() / dt(E))
            d1 = d1_new
            n += 1
            if err <= tol or n == max_iterations:
                break
        P = d1[None, :] * K * d0[:, None]
    else:
        P = a
    rows = [_sorted_row([(e, a[t, e]) for e in _order(P[t])[:top_k]]) for t in range(T)]
    ids, w = rows_to_arrays(rows, top_k)
    return ids, w, P, n, err <= tol


# ----------------------------------------------------------------------------------------- balancing
def token_capacity(T, k, E, cf, min_capacity=0):
    """balance.md §3: Megatron's ceil((T*k / E) * cf) in double, then max(C, min_capacity)."""
    return max(int(math.ceil((T * k / E) * cf)), min_capacity)


def capacity_drop(ids, w, E, cf, policy="probs", min_capacity=0):
    """balance.md §3. ids/w token-major [T, k]. Returns dropped uint8 [T, k] and kept counts [E]."""
    T, k = ids.shape
    C = token_capacity(T, k, E, cf, min_capacity)
    dropped = np.zeros((T, k), dtype=np.uint8)
    kept = np.zeros(E, dtype=np.int64)
    for e in range(E):
        slots = [(t, j) for t in range(T) for j in range(k) if ids[t, j] == e]
        if policy == "probs":
            slots.sort(key=lambda s: (-float(w[s]), s[0]))
        elif policy == "position":
            slots.sort(key=lambda s: s[0])
        elif policy == "slot_priority":
            slots.sort(key=lambda s: (s[1], s[0]))
        else:
            raise ValueError(policy)
        for s in slots[C:]:
            dropped[s] = 1
        kept[e] = min(len(slots), C)
    return dropped, kept


def counts(ids, E, dropped=None):
    c = np.zeros(E, dtype=np.int64)
    T, K = ids.shape
    for t in range(T):
        for j in range(K):
            e = ids[t, j]
            if 0 <= e < E and (dropped is None or not dropped[t, j]):
                c[e] += 1
    return c


def updated_bias(bias, kept, rate):
    """balance.md §4: b + u * sign(mean(c) - c), in fp32 as the bias is fp32."""
    mean = kept.sum() / len(kept)
    sign = np.sign(mean - kept.astype(np.float64)).astype(np.float32)
    return (np.asarray(bias, dtype=np.float32) + np.float32(rate) * sign).astype(np.float32)


def aux_loss_megatron(L, top_k, score_func="softmax", coeff=1.0):
    """balance.md §6: coeff * E / (k T^2) * sum_e (sum_t p_te) c_e; p the full softmax (sigmoid
    scores divided by their row sum), c from a plain top-k of p."""
    L = np.asarray(L, dtype=np.float64)
    T, E = L.shape
    if score_func == "softmax":
        p = np.stack([softmax(x, np.float64) for x in L])
    else:
        s = sigmoid(L, np.float64)
        p = s / s.sum(axis=1, keepdims=True)
    c = np.zeros(E)
    for t in range(T):
        for e in _order(p[t])[:top_k]:
            c[e] += 1
    return coeff * E / (top_k * T * T) * float((p.sum(axis=0) * c).sum())


def z_loss(L, coeff=1.0):
    L = np.asarray(L, dtype=np.float64)
    m = L.max(axis=1)
    lse = m + np.log(np.exp(L - m[:, None]).sum(axis=1))
    return coeff * float((lse ** 2).mean())


# ------------------------------------------------------------------------------------ rank-wise LoRA
def rankwise_lora(x, router_w, A, B, top_k, lora_alpha, lora_biases=None, W0=None, b0=None,
                  dt=np.float64):
    """routing.md §8 / experts.md §10. Returns y [T, out], ids, w [T, k]."""
    x = np.asarray(x, dtype=dt)
    r = router_w.shape[0]
    bias = np.zeros(r, dtype=dt) if lora_biases is None else np.asarray(lora_biases, dtype=dt)
    z = x @ np.asarray(router_w, dtype=dt).T
    g = sigmoid(z, dt)
    c = g + bias
    T = x.shape[0]
    out = np.asarray(B).shape[0]
    y = np.zeros((T, out), dtype=dt)
    if W0 is not None:
        y += x @ np.asarray(W0, dtype=dt).T
    if b0 is not None:
        y += np.asarray(b0, dtype=dt)
    scale = dt(lora_alpha) / dt(top_k)
    rows = []
    Ad = np.asarray(A, dtype=dt)
    Bd = np.asarray(B, dtype=dt)
    for t in range(T):
        S = _order(c[t])[:top_k]
        den = sum((c[t, i] for i in S), dt(0))
        assert den > 0
        pairs = [(i, dt(top_k) * c[t, i] / den) for i in S]
        for i, wi in pairs:
            y[t] += scale * wi * (Ad[i] @ x[t]) * Bd[:, i]
        rows.append(_sorted_row(pairs))
    ids, w = rows_to_arrays(rows, top_k)
    return y, ids, w


# ---------------------------------------------------------------------------------- worked examples
def _close(a, b, rel=1e-5, what=""):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    assert np.all(np.abs(a - b) <= rel * np.maximum(np.abs(b), 1e-12) + 1e-7), (what, a, b)


def _ids(a, b, what=""):
    assert np.array_equal(np.asarray(a), np.asarray(b)), (what, a, b)


def check_worked_examples():
    """Every worked example of routing.md and balance.md (6 printed digits: 1e-5 relative)."""
    for dt in (np.float64, np.float32):
        # routing.md §2
        L = [[2.0, 1.0, 1.0, -1.0, 0.5, -0.5], [-3.0, -1.0, -2.0, -0.5, -4.0, -1.5],
             [0.3, -0.2, 1.7, 0.9, 1.2, -2.0]]
        _close(softmax(L[0], dt), [0.478295, 0.175955, 0.175955, 0.0238129, 0.106722, 0.0392608])
        _close(sigmoid(L[2], dt), [0.574443, 0.450166, 0.845535, 0.710949, 0.768525, 0.119203])
        ids, w = topk(L, 2, norm_topk_prob=True, dt=dt)
        _ids(ids, [[0, 1], [3, 1], [2, 4]], "2a")
        _close(w, [[0.731059, 0.268941], [0.622459, 0.377541], [0.622459, 0.377541]], what="2a")
        ids, w = topk(L, 2, dt=dt)
        _ids(ids, [[0, 1], [3, 1], [2, 4]], "2b")
        _close(w, [[0.478295, 0.175955], [0.432934, 0.262588], [0.403755, 0.24489]], what="2b")
        ids, w = topk(L, 2, score_after_topk=True, dt=dt)
        _ids(ids, [[0, 1], [3, 1], [2, 4]], "2c")
        _close(w, [[0.731059, 0.268941], [0.622459, 0.377541], [0.622459, 0.377541]], what="2c")
        ids, w = topk(L, 2, score_func="sigmoid", n_group=3, topk_group=2,
                      expert_bias=[0, 0, 0.1, -0.1, 0, 0.3], norm_topk_prob=True,
                      routed_scaling_factor=2.5, dt=dt)
        _ids(ids, [[0, 1], [3, 5], [2, 4]], "2d")
        _close(w, [[1.36612, 1.13388], [1.68555, 0.814449], [1.30964, 1.19036]], what="2d")
        ids, w = topk(L, 2, n_group=3, topk_group=1, routed_scaling_factor=16, dt=dt)
        _ids(ids, [[0, 1], [3, 2], [2, 3]], "2e")
        _close(w, [[7.65272, 2.81528], [6.92694, 1.54561], [6.46008, 2.9027]], what="2e")

        # routing.md §3
        assert ec_capacity(150, 3, capacity_factor=1.1) == 56
        L = [[2, 0, 0], [1, 1, -1], [1, 1, -1], [-1, 2, 0.5]]
        ids, w, tok, tw = expert_choice(L, capacity_factor=1.5, dt=dt)
        _ids(tok, [[0, 1], [1, 3], [0, 3]], "3")
        _close(tw, [[0.786986, 0.468311], [0.468311, 0.785597], [0.106507, 0.17529]], what="3")
        _ids(ids, [[0, 2], [0, 1], [-1, -1], [1, 2]], "3")
        _close(w, [[0.786986, 0.106507], [0.468311, 0.468311], [0, 0], [0.785597, 0.17529]], what="3")
        ids, w, tok, tw = expert_choice([L[3]], capacity_factor=1.5, dt=dt)
        _ids(ids, [[1, 2, 0]], "3 decode")
        _close(w, [[0.785597, 0.17529, 0.0391126]], what="3 decode")
        _ids(tok, [[0], [0], [0]], "3 decode")

        # routing.md §4
        L = [[3, 0, 0, 0], [0.2, 0.5, -1.0, 0.1], [0, 0, 0, 0]]
        ids, w = top_p(L, 0.4, dt=dt)
        _ids(ids, [[0, -1], [1, 0], [0, 1]], "4")
        _close(w, [[0.870049, 0], [0.379612, 0.281224], [0.25, 0.25]], what="4")
        ids, w = top_p(L, 0.4, max_k=1, dt=dt)
        _ids(ids, [[0], [1], [0]], "4 max_k")
        ids, w = top_p(L, 0.4, min_k=2, dt=dt)
        _ids(ids[0], [0, 1], "4 min_k")
        _close(w[0], [0.870049, 0.0433172], what="4 min_k")

        # routing.md §5
        L = [[2, 1, 0, -1, -1], [1, -1, 0, 1.5, 0], [-1, -2, -1, 1, 1]]
        ids, w = null_expert(L, 3, 2, 2, dt=dt)
        _ids(ids, [[0, 1], [0, 3], [3, 4]], "5")
        _close(w, [[0.731059, 0.268941], [1, 0.468411], [0.430949, 0.430949]], what="5")

        # routing.md §6
        L = [[1.5, -0.5, 0.0, 0.25], [-1.0, -2.0, -0.1, -3.0], [0.5, 0.5, 2.0, -1.0]]
        ids, w = relu(L, dt=dt)
        _ids(ids, [[0, 3, -1], [-1, -1, -1], [2, 0, 1]], "6")
        _close(w, [[1.5, 0.25, 0], [0, 0, 0], [2, 0.5, 0.5]], what="6")

        # routing.md §7
        L = [[2.0, 1.0, 0.0], [1.8, 0.2, 1.0], [1.5, 1.4, -1.0], [1.2, 0.0, 0.9]]
        ids, w, P, n, ok = sinkhorn(L, 1, dt=dt)
        assert n == 6 and ok, n
        _close(P, [[0.109823, 0.0934317, 0.0467418], [0.0868082, 0.040531, 0.122667],
                   [0.0746091, 0.15612, 0.0192601], [0.0620935, 0.0432504, 0.144664]], what="7 P")
        _ids(ids, [[0], [2], [1], [2]], "7")
        _close(w, [[0.880797], [0.731059], [0.802184], [0.710949]], what="7")
        ids, w, P, n, ok = sinkhorn(L, 1, max_iterations=0, dt=dt)
        _ids(ids, [[0], [0], [0], [0]], "7 no balance")
        _close(w, [[0.880797], [0.858149], [0.817575], [0.768525]], what="7 no balance")
        ids, w, P, n, ok = sinkhorn(L, 2, dt=dt)
        _ids(ids, [[0, 1], [0, 2], [0, 1], [0, 2]], "7 k2")
        _close(w, [[0.665241, 0.244728], [0.605611, 0.272118], [0.503291, 0.455396],
                   [0.489713, 0.362788]], what="7 k2")

        # routing.md §8
        Wr = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=float)
        A = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5]])
        B = np.array([[1, 0, 1, -1], [0, 1, 1, 1]], dtype=float)
        x = np.array([[1, 0, -1], [0.5, 2, 0]])
        y, ids, w = rankwise_lora(x, Wr, A, B, 2, 4.0, dt=dt)
        _ids(ids, [[0, 1], [3, 1]], "8")
        _close(w, [[1.18769, 0.812309], [1.02401, 0.975985]], what="8")
        _close(y, [[2.37538, 0], [-2.56004, 6.46398]], what="8 y")
        y, ids, w = rankwise_lora(x, Wr, A, B, 2, 4.0, lora_biases=[0, 0, 0, -0.5], dt=dt)
        _ids(ids[1], [1, 0], "8 bias")
        _close(w[1], [1.17185, 0.828148], what="8 bias")
        _close(y[1], [0.828148, 4.68741], what="8 bias y")

    # balance.md §3
    assert token_capacity(8, 2, 4, 1.25) == 5 and token_capacity(10, 2, 4, 1.25) == 7
    L = [[2, 1, 0, -1], [1.5, 0, 1, -1], [.5, 2, 0, 0], [2.5, 0, .5, 0], [1, 0, 0, 2], [0, .5, 3, 0],
         [3, 0, 0, 1], [1.2, 1, 0, 0]]
    ids, w = topk(L, 2, norm_topk_prob=True)
    assert sorted(map(tuple, ids.tolist())) == sorted([(0, 1), (0, 2), (1, 0), (0, 2), (3, 0),
                                                       (2, 1), (0, 3), (0, 1)])
    _close(w, [[.731059, .268941], [.622459, .377541], [.817574, .182426], [.880797, .119203],
               [.731059, .268941], [.924142, .075858], [.880797, .119203], [.549834, .450166]])
    _ids(counts(ids, 4), [7, 4, 3, 2], "loads")
    expect = {"probs": {(2, 0), (4, 0), (7, 0)}, "position": {(4, 0), (6, 0), (7, 0)},
              "slot_priority": {(2, 0), (4, 0), (7, 0)}}
    for policy, want in expect.items():
        dropped, kept = capacity_drop(ids, w, 4, 1.0, policy)
        got = {(t, int(ids[t, j])) for t, j in zip(*np.nonzero(dropped))}
        assert got == want, (policy, got)
        _ids(kept, [4, 4, 3, 2], policy)
    # balance.md §4
    _close(updated_bias(np.zeros(4), np.array([6, 1, 0, 1]), 1e-3), [-0.001, 0.001, 0.001, 0.001])
    _ids(np.sign(2.0 - np.array([3, 2, 2, 1])), [-1, 0, 0, 1], "sign")
    # balance.md §6
    _close(np.mean([softmax(x, np.float64) for x in L], axis=0),
           [0.44691841, 0.20209210, 0.21159160, 0.13939789], rel=1e-7)
    _close(aux_loss_megatron(L, 2), 1.21259196, rel=1e-8)
    L2 = [[0, 0, 1, 2], [0, 1, 0, 2], [1, 0, 0, 2], [0, 0, 2, 1], [0, 1, 2, 0], [2, 0, 0, 1]]
    _close(aux_loss_megatron(L[:6], 2), 1.16348338, rel=1e-8)
    _close(aux_loss_megatron(L2, 2), 1.15446806, rel=1e-8)
    _close(z_loss(L, 1e-3), 0.00685830, rel=1e-6)

    # research.md §4 (race), every row of the worked example's table.
    L = [[2, -1, 0.5, 1], [1.5, 1.5, 0.5, -2], [-0.5, -1, 0.5, 0]]
    ids, w = race(L, 2)
    _ids(ids, [[0, 3, 2], [0, 1, 2], [-1, -1, -1]], "race identity")
    _close(w[0], [2, 1, 0.5], what="race identity w")
    ids, w = race(L, 2, race_group=1)
    _ids(ids, [[0, 3], [0, 1], [2, 3]], "race group 1")
    ids, w = race(L, 2, "sigmoid")
    _ids(ids, [[0, 3, 2], [0, 1, 2], [-1, -1, -1]], "race sigmoid")
    _close(w[1], [0.817574, 0.817574, 0.622459], rel=1e-5, what="race sigmoid w")
    ids, w = race(L, 2, "softmax")
    _ids(ids, [[0, 3], [0, 1], [2, 3]], "race softmax")
    _close(w[2], [0.455054, 0.276004], rel=1e-5, what="race softmax w")
    ids, w = race(L, 1)
    _ids(ids, [[0, -1], [0, 1], [-1, -1]], "race k 1")

    # research.md §5.2 (MoFME), both indexings.
    mw = {k: np.asarray(v, dtype=np.float64) for k, v in MOFME_WORKED.items()}
    y, ids, w = mofme_block(MOFME_X, mw, 2)
    _ids(ids, [[1, 0], [0, 2]], "mofme ids")
    _close(w.ravel(), [0.556014, 0.443986, 0.700567, 0.299433], rel=1e-5, what="mofme w")
    _close(y.ravel(), [-0.022124, -0.00658586, 0.0103853, 0.0143136, 0.00146356, 0.128094], rel=1e-5, what="mofme y")
    y, _, _ = mofme_block(MOFME_X, mw, 2, expert0_gelu=False)
    _close(y.ravel(), [-0.00988471, 0.00509825, 0.0423986, 0.00286832, -0.00881119, 0.0687617], rel=1e-5, what="mofme y intended")


    # research.md §6 (LLEP), worked examples A and B.
    ids, w = topk([[2, 1, -1, 0], [1, 1.5, 0, -1], [1, -0.5, 0.5, -2]], 2, norm_topk_prob=True)
    c = counts(ids, 4)
    _ids(c, [3, 2, 1, 0], "llep A loads")
    items, native, planned = llep_plan(c, 2, 1.0, 1)
    _ids(items, [(0, 0, 0, 1), (0, 1, 1, 3), (1, 0, 0, 2), (2, 1, 0, 1)], "llep A plan")
    _ids(native, [5, 1], "llep A native")
    _ids(planned, [3, 3], "llep A planned")
    items, _, planned = llep_plan([40, 4, 4, 4, 30, 2, 2, 2], 4)
    _ids(items[:4], [(0, 0, 0, 20), (0, 3, 20, 40), (4, 2, 0, 22), (4, 1, 22, 30)], "llep B plan")
    _ids(planned, [24, 16, 24, 24], "llep B planned")
    _ids(llep_plan([40, 4, 4, 4, 30, 2, 2, 2], 4, 1.0, 1)[2], [22, 22, 22, 22], "llep B alpha 1")


# ---------------------------------------------------------------------------------------------- llep
def llep_plan(c, W, alpha=1.1, m=1024, lam=0.0):
    """research.md §6 (the code's compute_llep_lpt_plan) for loads c with the contiguous placement
    (worker w holds [w·E/W, (w+1)·E/W)): (items (e, w, r0, r1) in plan order, native_load, planned_load)."""
    c = [int(v) for v in c]
    E = len(c)
    native_of = [0] * E
    for w in range(W):
        for e in range(w * E // W, (w + 1) * E // W):
            native_of[e] = w
    native = [0] * W
    for e in range(E):
        native[native_of[e]] += c[e]
    total = sum(c)
    if total == 0:
        return [], native, [0] * W
    mean = total / W
    ratio = max(native) / mean if mean > 0 else 1.0
    items = []
    if not (lam == 0 or ratio >= lam):
        items = [(e, native_of[e], 0, c[e]) for e in range(E) if c[e] > 0]
    else:
        base = total // W
        cap = max(int(math.floor(alpha * base)) if base > 0 else total, 1)
        pending, assigned = list(native), [0] * W
        eff = lambda w: assigned[w] + pending[w]  # noqa: E731

        def add(e, w, r0, r1):
            items.append((e, w, r0, r1))
            assigned[w] += r1 - r0

        def helpers(g):
            return sorted((w for w in range(W) if w != g), key=lambda w: (eff(w), w))

        for e in sorted((e for e in range(E) if c[e] > 0), key=lambda e: (-c[e], e)):
            ce, g = c[e], native_of[e]
            pending[g] -= ce
            avail = cap - eff(g)
            if avail >= ce or W == 1:
                add(e, g, 0, ce)
                continue
            r = 0

            def offer(h):
                nonlocal r
                room = cap - eff(h)
                chunk = min(ce - r, room)
                if room <= 0 or (chunk < m and chunk != ce - r):
                    return False
                add(e, h, r, r + chunk)
                r += chunk
                return True

            if avail > 0:
                add(e, g, 0, avail)
                r = avail
                while r < ce:
                    order = helpers(g)
                    if not any(offer(h) for h in order):
                        add(e, order[0], r, ce)
                        r = ce
            else:
                order = helpers(g)
                for h in order:
                    if r < ce:
                        offer(h)
                if r < ce:
                    add(e, order[0], r, ce)
    planned = [0] * W
    for _, w, r0, r1 in items:
        planned[w] += r1 - r0
    return items, native, planned


# ---------------------------------------------------------------------------------------------- race
def race(L, top_k, score_func="identity", race_group=0, dt=np.float64):
    """research.md §4 (Expert Race): per race group the k·|g| best (token, expert) scores, ordered by
    (score descending, token ascending, expert ascending), with w = s."""
    L = np.asarray(L, dtype=dt)
    T, E = L.shape
    if score_func == "identity":
        S = L
    elif score_func == "sigmoid":
        S = np.stack([sigmoid(x, dt) for x in L]) if T else L
    else:
        S = np.stack([softmax(x, dt) for x in L]) if T else L
    g = race_group if race_group > 0 else max(T, 1)
    rows = [[] for _ in range(T)]
    for t0 in range(0, T, g):
        n = min(g, T - t0)
        cand = sorted(((float(S[t, e]) + 0.0, t, e) for t in range(t0, t0 + n) for e in range(E)),
                      key=lambda c: (-c[0], c[1], c[2]))
        for v, t, e in cand[:top_k * n]:
            rows[t].append((e, S[t, e]))
    rows = [_sorted_row(r) for r in rows]
    K = max((len(r) for r in rows), default=0)
    return rows_to_arrays(rows, K)


# ---------------------------------------------------------------------------------------------- mofme
def gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def mofme_block(x, w, top_k, eps=1e-5, expert0_gelu=True):
    """research.md §5.2 (MoFME as released): LayerNorm, basenet, router on x, top-k then softmax,
    FiLM modules (column 0 = GELU(h) with the released indexing), adaptor. w: the tensors by the
    code's names relative to the layer ("1.0.weight", ...), float64. Returns y [T, d], ids, weights."""
    x = np.asarray(x, dtype=np.float64)
    T, d = x.shape
    E = w["1.0.weight"].shape[0]
    ys, ids, ws = [], [], []
    for t in range(T):
        v = x[t]
        u = (v - v.mean()) / math.sqrt(((v - v.mean()) ** 2).mean() + eps) * w["3.0.weight"] + w["3.0.bias"]
        h = gelu(w["3.1.0.0.weight"] @ u + w["3.1.0.0.bias"]) * (w["3.1.1.0.weight"] @ u + w["3.1.1.0.bias"])
        logit = w["1.0.weight"] @ v + w["1.0.bias"]
        sel = _order(logit)[:top_k]
        z = np.exp(logit[sel] - logit[sel[0]])
        p = z / z.sum()
        m = np.zeros(d)
        for e, pe in zip(sel, p):
            mod = e - 1 if expert0_gelu else e
            if mod < 0:
                g = gelu(h)
            else:
                pre = "3.%d.expert." % (3 + mod)
                g = (w[pre + "0.weight"] @ h + w[pre + "0.bias"]) * h + (w[pre + "1.weight"] @ h + w[pre + "1.bias"])
            m += pe * g
        ys.append(w["2.3.weight"] @ gelu(w["2.0.weight"] @ m + w["2.0.bias"]) + w["2.3.bias"])
        ids.append(sel)
        ws.append(p)
    return np.array(ys).reshape(T, d), np.array(ids, dtype=np.int64).reshape(T, top_k), np.array(ws).reshape(T, top_k)


MOFME_WORKED = {  # research.md §5.2's worked example: d 3, a 4, E 3, LayerNorm weight 1, bias 0
    "1.0.weight": [[-0.5, 0, 0.5], [0.5, 1, -1], [-1, -0.5, 0]], "1.0.bias": [0, 0.1, -0.1],
    "2.0.weight": [[-0.5, -0.25, 0], [-0.25, 0, 0.25], [0, 0.25, 0.5], [0.25, 0.5, -0.5]], "2.0.bias": [0, 0, 0, 0],
    "2.3.weight": [[-0.25, 0.25, -0.5, 0], [0, 0.5, -0.25, 0.25], [0.25, -0.5, 0, 0.5]], "2.3.bias": [0, 0, 0.05],
    "3.0.weight": [1, 1, 1], "3.0.bias": [0, 0, 0],
    "3.1.0.0.weight": [[-0.5, 0, 0.5], [-0.25, 0.25, -0.5], [0, 0.5, -0.25]], "3.1.0.0.bias": [0.125, 0, -0.125],
    "3.1.1.0.weight": [[-0.25, 0, 0.25], [0.25, 0.5, -0.5], [-0.5, -0.25, 0]], "3.1.1.0.bias": [0, 0.25, 0],
    "3.3.expert.0.weight": [[-0.25, -0.125, 0], [-0.125, 0, 0.125], [0, 0.125, 0.25]], "3.3.expert.0.bias": [0.75, 1, 1.25],
    "3.3.expert.1.weight": [[-0.25, 0, 0.25], [-0.125, 0.125, -0.25], [0, 0.25, -0.125]], "3.3.expert.1.bias": [-0.25, 0, 0.25],
    "3.4.expert.0.weight": [[-0.125, 0, 0.125], [0, 0.125, 0.25], [0.125, 0.25, -0.25]], "3.4.expert.0.bias": [1, 1.25, 0.75],
    "3.4.expert.1.weight": [[0, 0.25, -0.125], [0.125, -0.25, 0], [0.25, -0.125, 0.125]], "3.4.expert.1.bias": [-0.125, 0.125, -0.25],
    "3.5.expert.0.weight": [[0, 0.125, 0.25], [0.125, 0.25, -0.25], [0.25, -0.25, -0.125]], "3.5.expert.0.bias": [1.25, 0.75, 1],
    "3.5.expert.1.weight": [[0.25, -0.125, 0.125], [-0.25, 0, 0.25], [-0.125, 0.125, -0.25]], "3.5.expert.1.bias": [0, 0.25, -0.125],
}
MOFME_X = [[1, -0.5, 0.25], [-1, 0.5, 2]]

# ------------------------------------------------------------------------------- rounding robustness
def _bit_hash(L, i):
    """A value in [-1, 1) that depends on the exact bits of each entry (equal values, also +0 and
    -0, give equal results; neighbouring values give unrelated ones)."""
    b = (np.asarray(L, dtype=np.float64) + 0.0).view(np.uint64)  # + 0.0 turns -0 into +0
    with np.errstate(over="ignore"):
        h = b * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E019 * (i + 1) % 2**64)
        h ^= h >> np.uint64(29)
        h = h * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    return (h >> np.uint64(11)).astype(np.float64) / 2.0**53 * 2.0 - 1.0


def perturb(L, i, delta=1e-5):
    """Tie-preserving perturbation of about delta (relative, absolute for |L| < 1); exact zeros stay
    zero, so that decisions taken on the sign (relu) are not flagged."""
    L = np.asarray(L, dtype=np.float64)
    return L + delta * (np.abs(L) + (L != 0)) * _bit_hash(L, i)
