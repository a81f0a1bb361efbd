#!/usr/bin/env python3
"""smoe.Experts (the Python module) against a float64 numpy oracle of SwiGLU experts (experts.md §3)
and its bad-input errors. Needs numpy only; exits 77 (ctest: skipped) without it.

    python3 tests/python/test_module.py BUILD/python     (or with no argument: the installed smoe)
"""
import sys

sys.dont_write_bytecode = True
try:
    import numpy as np
except ImportError:
    print("numpy is not installed: skipped")
    sys.exit(77)
if len(sys.argv) > 1:
    sys.path.insert(0, sys.argv[1])  # the build tree's python/ folder; else the installed smoe
import smoe  # noqa: E402

from harness import check, raises, run_all  # noqa: E402


# ------------------------------------------------------------------------------------ bf16 and oracle
def to_bf16(x):
    """float32 -> bf16 bits (int16), round to nearest even; NaN -> 0x7FC0 (experts.md §9)."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    r[np.isnan(x)] = 0x7FC0
    return r.view(np.int16)


def from_bf16(bits):
    return (bits.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def oracle(gate_up, down, x, idx, w):
    """y[t] = sum_j w[t, j] * W2 (silu(W1 x) * W3 x) in float64; gate rows [0, f), up rows [f, 2f)."""
    gu, dn, x, w = (a.astype(np.float64) for a in (gate_up, down, x, w))
    f = dn.shape[2]
    y = np.zeros((x.shape[0], dn.shape[1]))
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            e = idx[t, j]
            if e < 0:
                continue
            g, u = gu[e, :f] @ x[t], gu[e, f:] @ x[t]
            y[t] += w[t, j] * (dn[e] @ (g / (1.0 + np.exp(-g)) * u))
    return y


def err(y, r):
    """Worst per-token max |y - r| / max |r| (experts.md §9); 0 for an empty batch."""
    if y.size == 0:
        return 0.0
    scale = np.maximum(np.abs(r).max(axis=1), 1e-30)
    return float((np.abs(y - r).max(axis=1) / scale).max())


def problem(rng, E, f, d, T, K, empty_slots=False):
    gate_up = rng.normal(0.0, 0.02 * 4, (E, 2 * f, d)).astype(np.float32)
    down = rng.normal(0.0, 0.02 * 4, (E, d, f)).astype(np.float32)
    x = rng.normal(0.0, 1.0, (T, d)).astype(np.float32)
    idx = np.array([rng.permutation(E)[:K] for _ in range(T)], dtype=np.int64).reshape(T, K)
    w = rng.random((T, K)).astype(np.float32)
    if empty_slots and T > 0:
        idx[rng.random((T, K)) < 0.3] = -1
    return gate_up, down, x, idx, w


SHAPES = [  # E, f, d, T, K: odd sizes, T = 0, every expert per token, more tokens than max_tokens
    (4, 3, 4, 0, 2), (4, 7, 13, 1, 2), (8, 24, 40, 17, 3), (5, 33, 17, 9, 5), (16, 40, 64, 70, 8), (3, 1, 1, 4, 1),
]


# ------------------------------------------------------------------------------------------- results
def test_fp32_matches_the_float64_oracle():
    rng = np.random.default_rng(1)
    for E, f, d, T, K in SHAPES:
        gu, dn, x, idx, w = problem(rng, E, f, d, T, K, empty_slots=True)
        y = smoe.Experts(gu, dn, K, max_tokens=32).forward_routed(x, idx, w)
        check(y.dtype == np.float32 and y.shape == (T, d), "fp32 output dtype/shape %s %s" % (y.dtype, y.shape))
        e = err(y, oracle(gu, dn, x, idx, w))
        check(e <= 2e-5, "fp32 E=%d f=%d d=%d T=%d K=%d: err %.3g > 2e-5" % (E, f, d, T, K, e))


def test_bf16_weights_and_inputs_match_the_oracle_on_the_same_bf16_values():
    rng = np.random.default_rng(2)
    for E, f, d, T, K in SHAPES:
        gu, dn, x, idx, w = problem(rng, E, f, d, T, K)
        gub, dnb, xb, wb = to_bf16(gu), to_bf16(dn), to_bf16(x), to_bf16(w)
        ref = oracle(from_bf16(gub), from_bf16(dnb), from_bf16(xb), idx, from_bf16(wb))
        exact = smoe.Experts(gub, dnb, K, bf16_dot="off")
        check(exact.weight_dtype == "bfloat16" and not exact.uses_bf16_dot, "bf16 weights on the fp32 path")
        y32 = exact.forward_routed(from_bf16(xb), idx, wb)  # fp32 hidden, bf16 routing weights
        check(err(y32, ref) <= 2e-5, "bf16 weights, fp32 out, T=%d: err %.3g > 2e-5" % (T, err(y32, ref)))
        y16 = exact.forward_routed(xb, idx.astype(np.int32), wb)  # bf16 hidden -> bf16 out, rounded once
        check(y16.dtype == np.int16 and y16.shape == (T, d), "bf16 output as int16 bits")
        check(err(from_bf16(y16), ref) <= 5e-3, "bf16 out, T=%d: err %.3g > 5e-3" % (T, err(from_bf16(y16), ref)))
        check(np.array_equal(y16, to_bf16(y32)), "bf16 output = the fp32 result rounded once (RNE)")
        fast = smoe.Experts(gub, dnb, K)  # AVX512-BF16 where the CPU has it: x and h rounded to bf16
        yf = fast.forward_routed(from_bf16(xb), idx, wb)
        check(err(yf, ref) <= 1e-2, "bf16 dot path (%s), T=%d: err %.3g > 1e-2" % (fast.uses_bf16_dot, T, err(yf, ref)))


def test_threads_chunks_and_dtypes_of_the_routing_change_no_bit():
    rng = np.random.default_rng(3)
    gu, dn, x, idx, w = problem(rng, 12, 40, 48, 50, 4, empty_slots=True)
    base = smoe.Experts(gu, dn, 4, num_threads=1, max_tokens=256).forward_routed(x, idx, w)
    other = smoe.Experts(gu, dn, 6, num_threads=2, max_tokens=7)
    check(other.num_threads == 2 and other.top_k == 6, "properties")
    check(np.array_equal(base, other.forward_routed(x, idx.astype(np.int32), w)), "2 threads, chunks of 7, int32 ids")
    other.num_threads = 1
    out = np.full_like(base, 7.0)
    got = other.forward_routed(x, idx, w, out=out)
    check(got is out and np.array_equal(out, base), "out= is written in place and returned")
    alone = np.concatenate([other.forward_routed(x[t:t + 1], idx[t:t + 1], w[t:t + 1]) for t in range(x.shape[0])])
    check(np.array_equal(alone, base), "a row alone = the row in a batch (rule 3)")


def test_nan_in_one_hidden_row_stays_in_that_row():
    rng = np.random.default_rng(4)
    gu, dn, x, idx, w = problem(rng, 6, 16, 32, 9, 2)
    ex = smoe.Experts(gu, dn, 2, num_threads=2)
    clean = ex.forward_routed(x, idx, w)
    x[4, 3] = np.nan
    y = ex.forward_routed(x, idx, w)
    check(np.isnan(y[4]).any(), "the NaN row is NaN")
    rest = np.arange(9) != 4
    check(np.array_equal(y[rest], clean[rest]), "the other rows are unchanged")


def test_properties_describe_the_experts():
    gu, dn, *_ = problem(np.random.default_rng(5), 5, 6, 8, 1, 1)
    ex = smoe.Experts(gu, dn, 3)
    got = (ex.num_experts, ex.intermediate_size, ex.hidden_size, ex.top_k, ex.max_tokens, ex.weight_dtype)
    check(got == (5, 6, 8, 3, 256, "float32"), "properties %s" % (got,))
    check(ex.packed_bytes >= gu.nbytes + dn.nbytes, "packed_bytes %d" % ex.packed_bytes)
    # At least the input, output and slot rows of max_tokens tokens (experts.md §1: fp32 inside).
    check(ex.workspace_bytes >= 4 * 256 * (2 * 8 + 3 * 8), "workspace_bytes %d" % ex.workspace_bytes)


# ---------------------------------------------------------------------------------------- bad input
def test_bad_weights_raise_value_error_naming_the_argument():
    gu, dn, *_ = problem(np.random.default_rng(6), 4, 6, 8, 1, 1)
    raises(lambda: smoe.Experts(gu.astype(np.float64), dn, 2), "gate_up", "float64")
    raises(lambda: smoe.Experts(gu.astype(np.float16), dn, 2), "gate_up", "float16")
    raises(lambda: smoe.Experts(gu, dn.astype(np.int16), 2), "down", "dtype")
    raises(lambda: smoe.Experts(gu[:, :11], dn, 2), "gate_up", "[4, 11, 8]")
    raises(lambda: smoe.Experts(gu, dn[:, :, :5].copy(), 2), "down", "[4, 8, 5]")
    raises(lambda: smoe.Experts(gu[0], dn, 2), "gate_up", "3 dimensions")
    raises(lambda: smoe.Experts(gu[:, :, ::2], dn, 2), "gate_up", "non-contiguous")
    raises(lambda: smoe.Experts(gu.tolist(), dn, 2), "gate_up", "buffer protocol")
    raises(lambda: smoe.Experts(gu, dn, 0), "top_k", "0")
    raises(lambda: smoe.Experts(gu, dn, 5), "top_k", "5")
    raises(lambda: smoe.Experts(gu, dn, 2, num_threads=0), "num_threads", "0")
    raises(lambda: smoe.Experts(gu, dn, 2, max_tokens=0), "max_tokens", "0")
    raises(lambda: smoe.Experts(gu, dn, 2, bf16_dot="fast"), "bf16_dot", "fast")


def test_bad_calls_raise_value_error_naming_the_argument_and_write_nothing():
    gu, dn, x, idx, w = problem(np.random.default_rng(7), 4, 6, 8, 5, 2)
    ex = smoe.Experts(gu, dn, 2)
    out = np.full((5, 8), 3.0, np.float32)

    def call(**kw):
        a = dict(hidden=x, top_k_index=idx, top_k_weights=w, out=out)
        a.update(kw)
        return lambda: ex.forward_routed(a["hidden"], a["top_k_index"], a["top_k_weights"], out=a["out"])

    raises(call(hidden=x.astype(np.float64)), "hidden", "float64")
    raises(call(hidden=x[:, :7].copy()), "hidden", "[5, 7]")
    raises(call(hidden=np.asfortranarray(x)), "hidden", "non-contiguous")
    raises(call(hidden=x[0]), "hidden", "2 dimensions")
    raises(call(top_k_index=idx.astype(np.float32)), "top_k_index", "float32")
    raises(call(top_k_index=idx[:4]), "top_k_index", "[4, 2]")
    three = dict(top_k_index=np.zeros((5, 3), np.int64), top_k_weights=np.ones((5, 3), np.float32))
    raises(call(**three), "top_k_index", "top_k = 2")
    raises(call(top_k_weights=w[:, :1].copy()), "top_k_weights", "[5, 1]")
    raises(call(top_k_weights=w.astype(np.float64)), "top_k_weights", "float64")
    raises(call(out=np.zeros((5, 8), np.int16)), "out", "dtype")
    raises(call(out=np.zeros((4, 8), np.float32)), "out", "[4, 8]")
    raises(call(hidden=out), "out", "overlapping")
    for bad, what in ((4, "4 at token 2, slot 1"), (-2, "-2 at token 2, slot 1"), (2**40, str(2**40))):
        i = idx.copy()
        i[2, 1] = bad
        raises(call(top_k_index=i), "top_k_index", what)
    i = idx.copy()
    i[3, 1] = i[3, 0]
    raises(call(top_k_index=i), "top_k_index", "at most once")
    for bad in (np.nan, np.inf):
        v = w.copy()
        v[1, 0] = bad
        raises(call(top_k_weights=v), "top_k_weights", "token 1, slot 0")
    check(np.all(out == 3.0), "a rejected call wrote nothing into out")
    v = w.copy()
    v[1, 0], i = np.nan, idx.copy()
    i[1, 0] = -1
    y = ex.forward_routed(x, i, v)  # an empty slot's weight is never read
    check(np.isfinite(y).all(), "NaN weight on an empty slot is ignored")


if __name__ == "__main__":
    sys.exit(run_all(globals()))
