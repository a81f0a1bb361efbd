#!/usr/bin/env python3
"""Mutation campaign for config.json: runs smoe-run on mutated copies of the cases in tests/data/cases.

Each mutant is a case folder whose tensors are the real case's (symlinked) and whose config.json has one
to three values replaced (huge, negative, float, string, null, wrong type, off by one, doubled), keys
removed or unknown keys added. smoe-run must either succeed or exit with status 1 and a message naming
what is wrong; each run is limited to --timeout seconds. Build smoe-run with ASan + UBSan to catch
memory errors (see the README of issue 14's closing note), then:

    python3 tests/fuzz/mutate_configs.py --smoe-run build/h-io-asan/examples/smoe-run -n 3000 -j 2

prints the counts by outcome and keeps every mutant that is not a plain success or named refusal under
--keep (default /tmp/smoe-mutants). With --corpus DIR it instead writes the regression inputs of the
config.json fuzz target (tests/fuzz/config_corpus: a case name, a newline, config.json) and exits.
Python 3 standard library only; never needed to build or test.
"""
import argparse
import collections
import concurrent.futures
import json
import os
import pathlib
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
CASES = ROOT / "tests" / "data" / "cases"

# Keys smoe reads (cases.md); mutants also touch the others a config holds.
KEYS = ["hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers", "num_local_experts",
        "num_experts", "n_routed_experts", "num_experts_per_tok", "norm_topk_prob", "shared_expert_intermediate_size",
        "n_shared_experts", "decoder_sparse_step", "mlp_only_layers", "first_k_dense_replace", "moe_layer_freq",
        "routed_scaling_factor", "scoring_func", "topk_method", "n_group", "topk_group", "model_type", "hidden_act",
        "router", "top_k", "score_func", "score_after_topk", "capacity", "capacity_factor", "top_p", "max_k", "min_k",
        "num_null_experts", "tol", "max_iterations", "l1_reg_coeff", "target_top_k", "moe_expert_capacity_factor",
        "moe_token_drop_policy", "moe_pad_expert_input_to_capacity", "min_capacity", "moe_router_bias_update_rate",
        "moe_aux_loss_coeff", "moe_z_loss_coeff", "layer", "in_features", "out_features", "rank", "lora_alpha",
        "rank_partition", "module"]

# The regressions: (case, {key: value}); each must be refused by key, fast.
REGRESSIONS = [
    ("mixtral_f32_t7", {"intermediate_size": 2**40}),
    ("mixtral_f32_t7", {"num_local_experts": 2**40}),
    ("qwen2_moe_f32_t1", {"moe_intermediate_size": 2**31}),
    ("qwen2_moe_f32_t1", {"moe_intermediate_size": 33000099}),
    ("deepseek_v3_f32_t1", {"n_routed_experts": 2**31}),
    ("deepseek_v3_f32_t1", {"n_shared_experts": 2**62}),
    ("olmoe_bf16_t1", {"num_experts": 10**12}),
    ("olmoe_bf16_t1", {"num_experts": 1e12}),
    ("mixtral_sharded_layer1", {"num_local_experts": 2**20}),
    ("router_sinkhorn_k2_t64", {"max_iterations": 10**11, "tol": 0}),
    ("router_sinkhorn_k2_t64", {"num_experts": 10**12}),
    ("router_expert_choice_capacity_t64", {"capacity": 2**40}),
    ("router_expert_choice_worked_t4", {"capacity_factor": 1e300}),
    ("router_null_expert_t64", {"num_null_experts": 2**63 - 800}),
    ("router_capacity_pad_t7", {"moe_expert_capacity_factor": 1e30}),
    ("router_capacity_pad_t7", {"min_capacity": 2**62}),
    ("rankwise_lora_t64", {"rank": 2**40}),
]


def hostile(rng, old):
    """A value that a careless reader would trust."""
    choices = [
        lambda: 2 ** rng.randrange(0, 64),
        lambda: 2 ** rng.randrange(20, 64) - rng.randrange(0, 3),
        lambda: -(2 ** rng.randrange(0, 63)),
        lambda: rng.choice([0, -1, 1, 2, 3, 7, 8, 9, 16, 33000099, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**64 - 1]),
        lambda: rng.choice([1e12, 1e300, -1e300, 0.5, 1.5, -0.0, 1e-300, 2.0**63]),
        lambda: rng.choice(["8", "", "softmax", "sigmoid", "nan", "inf", "x" * 300]),
        lambda: rng.choice([None, True, False, [], [8], {}, {"a": 1}, [[[]]]]),
    ]
    if isinstance(old, bool):
        return rng.choice([not old, 0, 1, "true", None])
    if isinstance(old, int):
        choices += [lambda: old + rng.choice([-1, 1]), lambda: old * rng.choice([2, 3, 1000]), lambda: old * 2**rng.randrange(8, 40)]
    if isinstance(old, float):
        choices += [lambda: old * rng.choice([-1, 0, 1e10, 1e300]), lambda: float(int(old) + 1)]
    return rng.choice(choices)()


def mutate(rng, config):
    c = dict(config)
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        present = [k for k in c if k in KEYS] or list(c)
        r = rng.random()
        if r < 0.70 and present:
            k = rng.choice(present)
            c[k] = hostile(rng, c[k])
        elif r < 0.80 and present:
            c.pop(rng.choice(present), None)
        elif r < 0.95:
            k = rng.choice(KEYS)
            c[k] = hostile(rng, c.get(k, 8))
        else:
            c["unknown_key_" + str(rng.randrange(100))] = 1
    return c


def prepare(case, work):
    """A folder with the case's files symlinked, except config.json and the expected outputs."""
    d = pathlib.Path(tempfile.mkdtemp(prefix=case.name + ".", dir=work))
    for f in case.iterdir():
        if f.name not in ("config.json", "expected.safetensors", "case.json"):
            os.symlink(f, d / f.name)
    return d


def layer_of(case):
    p = case / "case.json"
    return json.loads(p.read_text()).get("layer") if p.exists() else None


RSS_TAG = "smoe-mutants-maxrss-kb "

# Outcome classes, worst first.
MEMORY = re.compile(r"AddressSanitizer|LeakSanitizer|runtime error:|UndefinedBehaviorSanitizer")


def classify(rc, err, seconds, timeout):
    if rc is None:
        return "timeout (> %gs)" % timeout
    if MEMORY.search(err):
        return "memory error (sanitizer report)"
    if "bad_alloc" in err:
        return "bare std::bad_alloc"
    if rc == 0:
        return "ran (exit 0)"
    if rc == 1 and "out of memory" in err:
        return "named out-of-memory error"
    if rc == 1 and "smoe-run: error: " in err:
        named = re.search(r"config\.json|\.safetensors|model\.safetensors\.index\.json|not a directory", err)
        return "refused, naming the file/key" if named else "refused, message names no file"
    return "crash or other exit (rc %s)" % rc


def run_one(smoe_run, case, config, work, timeout, env):
    d = prepare(case, work)
    (d / "config.json").write_text(json.dumps(config))
    # GNU time reports the peak resident memory (issue 14: one mutant once took 16.8 GB).
    cmd = (["/usr/bin/time", "-f", RSS_TAG + "%M"] if os.path.exists("/usr/bin/time") else []) + \
        [smoe_run, str(d), str(d / "out.safetensors")]
    if layer_of(case) is not None:
        cmd += ["--layer", str(layer_of(case))]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        rc, err = p.returncode, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, err = None, (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    seconds = time.monotonic() - t0
    rss = [int(l[len(RSS_TAG):]) for l in err.splitlines() if l.startswith(RSS_TAG)]
    err = "\n".join(l for l in err.splitlines() if not l.startswith(RSS_TAG) and not l.startswith("Command exited"))
    outcome = classify(rc, err, seconds, timeout)
    last = [l for l in err.splitlines() if "error" in l or "ERROR" in l][-1:] or err.splitlines()[-1:]
    shutil.rmtree(d, ignore_errors=True)
    return outcome, seconds, (last[0] if last else ""), config, (rss[0] if rss else 0)


def write_corpus(out):
    out.mkdir(parents=True, exist_ok=True)
    for i, (case, changes) in enumerate(REGRESSIONS):
        config = json.loads((CASES / case / "config.json").read_text())
        config.update(changes)
        name = "issue14_%02d_%s_%s" % (i, case, "_".join(changes))
        (out / name).write_text(case + "\n" + json.dumps(config, indent=1) + "\n")
    print("wrote %d inputs to %s" % (len(REGRESSIONS), out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoe-run", default=str(ROOT / "build/h-io-asan/examples/smoe-run"))
    ap.add_argument("-n", type=int, default=3000, help="mutants (default 3000)")
    ap.add_argument("-j", type=int, default=2, help="parallel runs (default 2)")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per run (default 10)")
    ap.add_argument("--keep", default="/tmp/smoe-mutants", help="where mutants of a bad outcome are kept")
    ap.add_argument("--regressions", action="store_true", help="run the issue's regressions first")
    ap.add_argument("--corpus", type=pathlib.Path, help="write the fuzz target's regression inputs here and exit")
    a = ap.parse_args()
    if a.corpus:
        write_corpus(a.corpus)
        return 0
    rng = random.Random(a.seed)
    cases = sorted(p.parent for p in CASES.glob("*/config.json"))
    configs = {c: json.loads((c / "config.json").read_text()) for c in cases}
    jobs = []
    if a.regressions:
        for case, changes in REGRESSIONS:
            jobs.append((CASES / case, {**configs[CASES / case], **changes}))
    for _ in range(a.n):
        case = rng.choice(cases)
        jobs.append((case, mutate(rng, configs[case])))
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:allocator_may_return_null=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    keep = pathlib.Path(a.keep)
    counts, slowest, examples, peak = collections.Counter(), [], {}, (0, "")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="smoe-mutants.") as work, \
            concurrent.futures.ThreadPoolExecutor(a.j) as pool:
        futures = [pool.submit(run_one, a.smoe_run, c, cfg, work, a.timeout, env) for c, cfg in jobs]
        for i, f in enumerate(concurrent.futures.as_completed(futures)):
            outcome, seconds, message, config, rss = f.result()
            peak = max(peak, (rss, message))
            counts[outcome] += 1
            slowest.append((seconds, message))
            examples.setdefault(outcome, message)
            if not outcome.startswith(("ran", "refused, naming")):
                keep.mkdir(parents=True, exist_ok=True)
                (keep / ("%05d.json" % i)).write_text(json.dumps({"outcome": outcome, "message": message, "config": config}))
            if (i + 1) % 500 == 0:
                print("  %d/%d runs" % (i + 1, len(jobs)), file=sys.stderr)
    slowest.sort(reverse=True)
    print("%d runs of %s in %.0f s (timeout %g s per run, seed %d)" % (len(jobs), a.smoe_run, time.monotonic() - t0,
                                                                       a.timeout, a.seed))
    for outcome, n in counts.most_common():
        print("  %6d  %s   e.g. %s" % (n, outcome, examples[outcome][:160]))
    print("  runs over %g s: %d; slowest %.2f s (%s)" % (a.timeout, sum(1 for s, _ in slowest if s > a.timeout),
                                                         slowest[0][0], slowest[0][1][:120]))
    print("  peak resident memory of one run: %.0f MiB (%s)" % (peak[0] / 1024, peak[1][:120]))
    bad = sum(n for o, n in counts.items() if not o.startswith(("ran", "refused, naming")))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
