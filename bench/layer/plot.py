#!/usr/bin/env python3
"""Collects one run_all.sh session (smoe's Google Benchmark JSON, the baselines' JSON lines) into
all.json, summary.md (figures against issue 9's targets) and two charts: roofline.png (roofline
fraction vs T) and speedup.png (speed-up over the best PyTorch figure vs T), one panel per shape.

Roofline fraction (perf.md): max(FLOPs / peak, bytes / bandwidth) / t_min with the peak and the
bandwidth of the thread count, measured by smoe_bench in the same session (bench/layer/limits.hpp);
this CPU has no bf16 or int8 dot product, so every format is judged against the fp32 FMA peak.

    /usr/bin/python3 bench/layer/plot.py bench/layer/results
"""
import glob
import json
import os
import re
import sys

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")
SHAPES = ["mixtral", "olmoe", "qwen2moe", "deepseek-v2-lite"]
NAME = re.compile(r"^BM_layer/(?P<shape>[^/]+)/(?P<fmt>[^/]+)/threads:(?P<threads>\d+)/T:(?P<T>\d+)")


def load():
    recs, limits = [], {}
    for path in sorted(glob.glob(os.path.join(OUT, "smoe_*.json"))):
        with open(path) as f:
            doc = json.load(f)
        for b in doc.get("benchmarks", []):
            m = NAME.match(b.get("name", ""))
            if not m or b.get("run_type") == "aggregate":
                continue
            th = int(m["threads"])
            # Each shape's smoe process measured its own limits: its records and the baselines of the
            # same shape are judged against them (the VM's load changed between shapes).
            limits[f"{m['shape']}/{th}"] = {"peak_gflops": b["peak_gflops"], "dram_gbps": b["dram_gbps"]}
            recs.append({"system": "smoe", "wtype": m["fmt"], "shape": m["shape"], "T": int(m["T"]), "threads": th,
                         "min_ms": b["min_ms"], "median_ms": b["median_ms"], "gbps": b["GB/s"],
                         "gflops": b["GFLOP/s"], "weight_bytes": b["GB/s"] * b["min_ms"] * 1e6,
                         "flops": b["GFLOP/s"] * b["min_ms"] * 1e6, "route_hash": b.get("label", ""),
                         "y_abs_sum": b["y_abs_sum"]})
    for path in sorted(glob.glob(os.path.join(OUT, "eigen_*.jsonl")) + glob.glob(os.path.join(OUT, "torch_*.jsonl"))):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                r = json.loads(line)
                recs.append({"system": r["system"], "wtype": r["wtype"], "shape": r["shape"], "T": r["T"],
                             "threads": r["threads"], "min_ms": r["forward"]["min_ms"],
                             "median_ms": r["forward"]["median_ms"], "gbps": r["gbps"], "gflops": r["gflops"],
                             "weight_bytes": r["weight_bytes"], "flops": r["flops"], "route_hash": r["route_hash"],
                             "y_abs_sum": r["y_abs_sum"]})
    for r in recs:
        lim = limits.get(f"{r['shape']}/{r['threads']}")
        if lim:
            t = r["min_ms"] * 1e-3
            roof = max(r["flops"] / (lim["peak_gflops"] * 1e9), r["weight_bytes"] / (lim["dram_gbps"] * 1e9))
            r["roofline"] = roof / t
            r["flop_frac"] = r["flops"] / t / (lim["peak_gflops"] * 1e9)
        lim2 = limits.get(f"{r['shape']}/2")
        if lim2:
            r["bw_frac2"] = r["gbps"] / lim2["dram_gbps"]
    return recs, limits


def best(recs, **kw):
    sel = [r for r in recs if all(r[k] == v for k, v in kw.items())]
    return min(sel, key=lambda r: r["min_ms"]) if sel else None


def summary(recs, limits):
    lines = ["# smoe layer vs baselines, one session", ""]
    for key in sorted(limits):
        shape, th = key.split("/")
        lines.append(f"- limits measured by the {shape} run, {th} thread(s): fp32 FMA peak "
                     f"{limits[key]['peak_gflops']:.1f} GFLOP/s, DRAM read {limits[key]['dram_gbps']:.1f} GB/s")
    lines += ["", "Targets (issue 9): decode T=1,8 bw_frac2 >= 0.85; T=32,128 roofline >= 0.60; T=512 FLOP/s >= 0.70 "
              "of peak; faster than the best baseline; 2 threads never slower than 1.", "",
              "| shape | fmt | T | smoe 1t ms | smoe 2t ms | best smoe: GB/s, bw_frac2, roofline | target | best baseline ms | speed-up | 2t<=1t | route_hash |",
              "|---|---|---:|---:|---:|---|---|---|---:|---|---|"]
    shapes = [s for s in SHAPES if any(r["shape"] == s for r in recs)]
    for shape in shapes:
        for fmt in ["f32", "bf16", "int8"]:
            Ts = sorted({r["T"] for r in recs if r["system"] == "smoe" and r["shape"] == shape and r["wtype"] == fmt})
            for T in Ts:
                s1 = best(recs, system="smoe", shape=shape, wtype=fmt, T=T, threads=1)
                s2 = best(recs, system="smoe", shape=shape, wtype=fmt, T=T, threads=2)
                sb = min([r for r in (s1, s2) if r], key=lambda r: r["min_ms"])
                base = [r for r in recs if r["system"] != "smoe" and r["shape"] == shape and r["T"] == T and
                        (r["wtype"] == fmt or fmt == "int8")]
                bb = min(base, key=lambda r: r["min_ms"]) if base else None
                if T <= 8:
                    ok, tgt = sb.get("bw_frac2", 0) >= 0.85, f"bw {sb.get('bw_frac2', 0):.2f}"
                elif T <= 128:
                    ok, tgt = sb.get("roofline", 0) >= 0.60, f"roof {sb.get('roofline', 0):.2f}"
                else:
                    ok, tgt = sb.get("flop_frac", 0) >= 0.70, f"peak {sb.get('flop_frac', 0):.2f}"
                hashes = {r["route_hash"] for r in recs if r["shape"] == shape and r["T"] == T}
                base_txt = f"{bb['system']} {bb['wtype']} {bb['threads']}t {bb['min_ms']:.3g}" if bb else "-"
                speed_txt = f"{bb['min_ms'] / sb['min_ms']:.2f}x" if bb else "-"
                mono = "yes" if not (s1 and s2) or s2["min_ms"] <= s1["min_ms"] else "NO"
                hash_txt = "match" if len(hashes) == 1 else "MISMATCH " + " ".join(sorted(hashes))
                ms1 = f"{s1['min_ms']:.3g}" if s1 else "-"
                ms2 = f"{s2['min_ms']:.3g}" if s2 else "-"
                lines.append(f"| {shape} | {fmt} | {T} | {ms1} | {ms2} | {sb['gbps']:.1f}, {sb.get('bw_frac2', 0):.2f}, "
                             f"{sb.get('roofline', 0):.2f} | {tgt} {'met' if ok else 'MISSED'} | {base_txt} | {speed_txt} | "
                             f"{mono} | {hash_txt} |")
    return "\n".join(lines) + "\n"


def charts(recs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shapes = [s for s in SHAPES if any(r["shape"] == s for r in recs)]
    styles = {"f32": "tab:blue", "bf16": "tab:orange", "int8": "tab:green"}
    for kind in ["roofline", "speedup"]:
        fig, axes = plt.subplots(1, len(shapes), figsize=(4.2 * len(shapes), 3.8), squeeze=False)
        for ax, shape in zip(axes[0], shapes):
            for system in (["smoe", "eigen", "torch"] if kind == "roofline" else ["smoe"]):
                for fmt in ["f32", "bf16", "int8"]:
                    for th in ([1, 2] if system == "smoe" else [None]):
                        pts = []
                        for T in sorted({r["T"] for r in recs if r["shape"] == shape}):
                            kw = dict(system=system, shape=shape, wtype=fmt, T=T)
                            if th:
                                kw["threads"] = th
                            r = best(recs, **kw)
                            if not r:
                                continue
                            if kind == "roofline":
                                pts.append((T, r.get("roofline", 0)))
                            else:
                                tb = [x for x in recs if x["system"] == "torch" and x["shape"] == shape and x["T"] == T
                                      and (x["wtype"] == fmt or fmt == "int8")]
                                if tb:
                                    pts.append((T, min(x["min_ms"] for x in tb) / r["min_ms"]))
                        if not pts:
                            continue
                        label = f"{system} {fmt}" + (f" {th}t" if th else "")
                        ls = "-" if system == "smoe" and th == 2 else "--" if system == "smoe" else ":"
                        marker = "o" if system == "smoe" else "s" if system == "torch" else "^"
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], ls, marker=marker, color=styles[fmt],
                                alpha=1.0 if system == "smoe" else 0.6, label=label)
            ax.set_xscale("log", base=2)
            ax.set_title(shape)
            ax.set_xlabel("tokens T")
            ax.grid(True, alpha=0.3)
            if kind == "roofline":
                ax.set_ylabel("fraction of roofline")
                ax.set_ylim(0, max(1.05, ax.get_ylim()[1]))  # > 1: the run's limits were measured low
            else:
                ax.set_ylabel("speed-up over best PyTorch (x)")
                ax.axhline(1.0, color="gray", lw=0.8)
        handles = {}
        for ax in axes[0]:
            for h, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, h)
        fig.legend(list(handles.values()), list(handles.keys()), loc="center right", fontsize=7)
        fig.tight_layout(rect=(0, 0, 0.9, 1))
        fig.savefig(os.path.join(OUT, f"{kind}.png"), dpi=110)
        plt.close(fig)


def main():
    recs, limits = load()
    with open(os.path.join(OUT, "all.json"), "w") as f:
        json.dump({"limits": limits, "records": recs}, f, indent=1)
    text = summary(recs, limits)
    with open(os.path.join(OUT, "summary.md"), "w") as f:
        f.write(text)
    print(text)
    charts(recs)


if __name__ == "__main__":
    main()
