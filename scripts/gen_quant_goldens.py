#!/usr/bin/env python3
"""Reference goldens for smoe's quantised-weight decoders (formats.md §1.2-§1.4, §2, §3; §7).

Each case writes tests/data/quant/<case>.safetensors holding the packed tensors exactly as a checkpoint
stores them (module prefix `m`: `m.weight_packed`, `m.qweight`, ...) and `golden` F32 [R, C]: the weights
dequantised by the reference package named in the file's `__metadata__` (`reference`, `versions`), with
fp32 scales (formats.md §0: goldens use fp32 scales, so the reference's one rounding is smoe's).
tests/test_quant_goldens.cpp decodes the packed tensors with smoe and compares to `golden` bit for bit.

Codes, zero points and scales are random (seeded); the packed words come from the reference packers where
the package has one (compressed-tensors `pack_to_int32`, GPT-QModel `pack_original` and `pack_awq`), and
every golden is also checked here against the formula of its formats.md section in float64 rounded once
to fp32 (the script stops if the reference and the formula disagree).

Regenerate (CPU only; the default torch wheel from PyPI runs without a GPU; the files come out byte-identical):

    python3.11 -m venv /tmp/goldvenv
    /tmp/goldvenv/bin/pip install torch==2.15.0 numpy==2.4.6 safetensors==0.8.0 \\
        compressed-tensors==0.20.1 transformers==5.23.0 gptqmodel==7.7.0
    /tmp/goldvenv/bin/pip install --no-deps --target /tmp/ct0122 compressed-tensors==0.12.2
    /tmp/goldvenv/bin/python scripts/gen_quant_goldens.py [--ct0122 /tmp/ct0122] [--out tests/data/quant]

(torch from PyPI pulls its CUDA libraries, a few GB, unused here; gptqmodel 7.7.0 is an sdist of pure
Python that builds in about a minute. Python 3.11.7 was used.)

compressed-tensors 0.12.2 (imported in a subprocess from --ct0122) is used for the act-order case only:
0.20.1 has no g_idx path (formats.md §8.7), 0.12.2 cannot decompress packed zero points, so that case is
symmetric.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import types
from importlib.metadata import version

import numpy as np
import torch
from safetensors.torch import load_file, save_file

OUT_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "quant")


def versions(*pkgs):
    return ", ".join(f"{p} {version(p)}" for p in ("torch",) + pkgs)


def rand_scales(rng, shape, lo=2.0 ** -9, hi=2.0 ** -4):
    """Random positive fp32 scales (full 24-bit mantissas, so products round)."""
    return torch.from_numpy(rng.uniform(lo, hi, size=shape).astype(np.float32))


ST_DTYPES = {torch.float32: "F32", torch.int32: "I32", torch.int64: "I64", torch.uint8: "U8",
             torch.float8_e4m3fn: "F8_E4M3"}


def save_sorted(tensors, path, metadata):
    """safetensors with the header's keys sorted (safetensors.torch.save_file orders __metadata__ at random,
    so regenerating would change the files' bytes; this writes the same bytes every time)."""
    header, blobs, offset = {"__metadata__": dict(sorted(metadata.items()))}, [], 0
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        b = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[k] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))
    back = load_file(path)  # the official reader agrees
    assert all(torch.equal(back[k].view(torch.uint8), tensors[k].contiguous().view(torch.uint8)) for k in tensors)


def write(out, name, tensors, golden, meta):
    """One golden file; checks the reference against formats.md's formula (`formula`, float64)."""
    formula = meta.pop("_formula")
    f32 = torch.from_numpy(formula.astype(np.float32))
    g = golden.to(torch.float32).contiguous()
    assert g.shape == f32.shape, (name, g.shape, f32.shape)
    if not torch.equal(g.view(torch.int32), f32.view(torch.int32)):
        bad = (g.view(torch.int32) != f32.view(torch.int32)).nonzero()[0].tolist()
        sys.exit(f"{name}: reference {g[tuple(bad)].item()!r} != formula {f32[tuple(bad)].item()!r} at {bad}")
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    tensors["golden"] = g
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in meta.items()}
    path = os.path.join(out, name + ".safetensors")
    save_sorted(tensors, path, meta)
    print(f"{name}: {os.path.getsize(path)} bytes")


# ---------------------------------------------------------------------------------------------- §1.2
def ct_scheme(group, symmetric):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    args = dict(num_bits=4, type="int", symmetric=symmetric)
    args.update(dict(strategy="group", group_size=group) if group > 0 else dict(strategy="channel"))
    return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**args))


def ct_case(out, rng, name, R, C, group, symmetric):
    from compressed_tensors.compressors import PackedQuantizationCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    g = group if group > 0 else C
    G = C // g
    q = torch.from_numpy(rng.integers(-8, 8, size=(R, C)).astype(np.int8))
    s = rand_scales(rng, (R, G))
    sd = {"weight_packed": pack_to_int32(q, 4), "weight_scale": s, "weight_shape": torch.tensor([R, C], dtype=torch.int64)}
    zs = np.zeros((R, G), dtype=np.int64)
    if not symmetric:
        zs = rng.integers(-8, 8, size=(R, G))
        sd["weight_zero_point"] = pack_to_int32(torch.from_numpy(zs.astype(np.int8)), 4, packed_dim=0)
    dec = PackedQuantizationCompressor.decompress(dict(sd), ct_scheme(group, symmetric))["weight"]
    gi = np.arange(C) // g
    formula = (q.numpy().astype(np.float64) - zs[:, gi]) * s.numpy().astype(np.float64)[:, gi]
    write(out, name, {"m." + k: v for k, v in sd.items()}, dec, dict(
        format="compressed-tensors", R=R, C=C, group=group, symmetric=symmetric, act_order=False,
        reference="compressed_tensors.compressors.pack_quantized.helpers.pack_to_int32 (weights; zero points "
                  "packed_dim=0) + compressed_tensors.compressors.PackedQuantizationCompressor.decompress",
        versions=versions("compressed-tensors"), _formula=formula))


CT0122_DECODE = r"""
import sys, torch
from safetensors.torch import load_file, save_file
from compressed_tensors.compressors import PackedQuantizationCompressor
from compressed_tensors.quantization import QuantizationArgs
import compressed_tensors
t = load_file(sys.argv[1])
d = {k[2:]: v for k, v in t.items() if k.startswith("m.")}
args = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=int(sys.argv[3]),
                        actorder="group")
w = PackedQuantizationCompressor(config=None).decompress_weight(d, quantization_args=args)
save_file({"weight": w.contiguous()}, sys.argv[2], metadata={"version": compressed_tensors.__version__})
"""


def ct_actorder_case(out, rng, name, R, C, group, ct0122):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    G = C // group
    q = torch.from_numpy(rng.integers(-8, 8, size=(R, C)).astype(np.int8))
    s = rand_scales(rng, (R, G))
    gidx = rng.permutation(np.arange(C) // group).astype(np.int32)
    sd = {"weight_packed": pack_to_int32(q, 4), "weight_scale": s,
          "weight_shape": torch.tensor([R, C], dtype=torch.int64), "weight_g_idx": torch.from_numpy(gidx)}
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.safetensors"), os.path.join(tmp, "out.safetensors")
        save_file({"m." + k: v.contiguous() for k, v in sd.items()}, src)
        env = dict(os.environ, PYTHONPATH=ct0122 + os.pathsep + os.environ.get("PYTHONPATH", ""))
        subprocess.run([sys.executable, "-c", CT0122_DECODE, src, dst, str(group)], env=env, check=True)
        from safetensors import safe_open

        with safe_open(dst, "pt") as f:
            ver = f.metadata()["version"]
        dec = load_file(dst)["weight"]
    assert ver == "0.12.2", ver
    formula = q.numpy().astype(np.float64) * s.numpy().astype(np.float64)[:, gidx]
    write(out, name, {"m." + k: v for k, v in sd.items()}, dec, dict(
        format="compressed-tensors", R=R, C=C, group=group, symmetric=True, act_order=True,
        reference="compressed_tensors.compressors.pack_quantized.helpers.pack_to_int32 (0.20.1) + "
                  "compressed_tensors PackedQuantizationCompressor.decompress_weight with weight_g_idx (0.12.2)",
        versions=versions("compressed-tensors") + " (packing), compressed-tensors 0.12.2 (decoding)", _formula=formula))


# ---------------------------------------------------------------------------------------------- §1.3
def gptq_case(out, rng, name, R, C, group, sym, desc_act):
    """GPTQ v1 words by GPT-QModel: pack_original (v2 zeros in the module), convert_gptq_v2_to_v1_format_module
    (stores z - 1); golden by gptqmodel.utils.model_dequant.convert_gptq_file in fp32 on the written file."""
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear
    from gptqmodel.utils.model import convert_gptq_v2_to_v1_format_module
    from gptqmodel.utils.model_dequant import convert_gptq_file

    G = C // group
    u = rng.integers(0, 16, size=(R, C))
    # v1 stores z - 1: z = 0 cannot be written (it wraps to nibble 15, which smoe rejects, formats.md §8.2)
    z = np.full((R, G), 8) if sym else rng.integers(1, 16, size=(R, G))
    s = rand_scales(rng, (R, G))
    gidx = (rng.permutation(np.arange(C) // group) if desc_act else np.arange(C) // group).astype(np.int32)
    s64 = s.numpy().astype(np.float64)
    W = torch.from_numpy(((u - z[:, gidx]) * s64[:, gidx]).astype(np.float32))
    lin = torch.nn.Linear(C, R, bias=False)
    lin.weight.data = W
    ql = TorchLinear(bits=4, group_size=group, sym=sym, desc_act=desc_act, in_features=C, out_features=R,
                          bias=False, pack_dtype=torch.int32, register_buffers=True)
    ql.pack_original(lin, scales=s, zeros=torch.from_numpy(z.astype(np.int32)), g_idx=torch.from_numpy(gidx).to(torch.int32))
    convert_gptq_v2_to_v1_format_module(ql, types.SimpleNamespace(bits=4, pack_dtype=torch.int32))
    tensors = {"m.qweight": ql.qweight.to(torch.int32), "m.qzeros": ql.qzeros.to(torch.int32),
               "m.scales": s.t().contiguous(), "m.g_idx": torch.from_numpy(gidx)}
    cfg = {"bits": 4, "group_size": group, "desc_act": desc_act, "sym": sym, "checkpoint_format": "gptq"}
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "m.safetensors")
        save_file({k: v.contiguous() for k, v in tensors.items()}, src)
        dec = convert_gptq_file(src, torch.float32, cfg, "cpu")["m.weight"]
    formula = (u - z[:, gidx]) * s64[:, gidx]
    write(out, name, tensors, dec, dict(
        format="gptq", R=R, C=C, group=group, symmetric=sym, act_order=desc_act, checkpoint_format="gptq",
        reference="gptqmodel.nn_modules.qlinear.torch.TorchLinear.pack_original (PackableQuantLinear) + "
                  "gptqmodel.utils.model.convert_gptq_v2_to_v1_format_module (packing); "
                  "gptqmodel.utils.model_dequant.convert_gptq_file, float32 (decoding)",
        versions=versions("gptqmodel"), _formula=formula))


# ---------------------------------------------------------------------------------------------- §1.4
def awq_case(out, rng, name, R, C, group):
    from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm, pack_awq

    G = C // group
    u = rng.integers(0, 16, size=(C, R))  # AWQ's orientation: [in, out]
    z = rng.integers(0, 16, size=(G, R))
    s = rand_scales(rng, (G, R))
    qweight, qzeros = pack_awq(torch.from_numpy(u.astype(np.int32)), torch.from_numpy(z.astype(np.int32)), 4)
    dec = dequantize_gemm(qweight, qzeros, s, 4, group)  # [C, R]
    gi = np.arange(C) // group
    formula = ((u - z[gi, :]) * s.numpy().astype(np.float64)[gi, :]).T
    write(out, name, {"m.qweight": qweight.to(torch.int32), "m.qzeros": qzeros.to(torch.int32), "m.scales": s},
          dec.t(), dict(
              format="awq", R=R, C=C, group=group, symmetric=False, act_order=False, version="gemm",
              reference="gptqmodel.quantization.awq.utils.packing_utils.pack_awq + dequantize_gemm (fp32 scales; "
                        "golden is its [C, R] output transposed)",
              versions=versions("gptqmodel"), _formula=formula))


# ---------------------------------------------------------------------------------------------- §2
def fp8_codes(rng, R, C):
    b = rng.integers(0, 256, size=(R, C)).astype(np.uint8)
    b[(b & 0x7F) == 0x7F] = 0x7E  # no NaN codes
    return torch.from_numpy(b).view(torch.float8_e4m3fn)


def e4m3_f64(w):
    return w.to(torch.float32).numpy().astype(np.float64)


def fp8_block_case(out, rng, name, R, C, bh, bw):
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

    w = fp8_codes(rng, R, C)
    SR, SC = -(-R // bh), -(-C // bw)
    s = rand_scales(rng, (SR, SC), 2.0 ** -12, 2.0 ** -2)
    dec = _dequantize_fp8_weight(w, s, [bh, bw], torch.float32)
    # Cross-check: compressed-tensors' block strategy (preset FP8_BLOCK's weights, block_structure from config).
    from compressed_tensors.compressors import NaiveQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=8, type="float", strategy="block", symmetric=True, dynamic=False, block_structure=[bh, bw]))
    ct = NaiveQuantizationCompressor.decompress({"weight": w, "weight_scale": s}, scheme)["weight"]
    assert torch.equal(ct.view(torch.int32), dec.view(torch.int32)), "CT FP8_BLOCK != transformers"
    ri, ci = np.arange(R) // bh, np.arange(C) // bw
    formula = e4m3_f64(w) * s.numpy().astype(np.float64)[ri][:, ci]
    write(out, name, {"m.weight": w, "m.weight_scale_inv": s}, dec, dict(
        format="fp8", R=R, C=C, block_rows=bh, block_cols=bw, scale_name="weight_scale_inv",
        reference="transformers.integrations.finegrained_fp8._dequantize_fp8_weight(dtype=float32, block_size "
                  "from the config); equal bit for bit to compressed_tensors NaiveQuantizationCompressor.decompress "
                  "(strategy block)",
        versions=versions("transformers", "compressed-tensors"), _formula=formula))


def fp8_channel_case(out, rng, name, R, C):
    from compressed_tensors.compressors import NaiveQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    w = fp8_codes(rng, R, C)
    s = rand_scales(rng, (R, 1), 2.0 ** -12, 2.0 ** -2)
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=8, type="float", strategy="channel", symmetric=True, dynamic=False))
    dec = NaiveQuantizationCompressor.decompress({"weight": w, "weight_scale": s}, scheme)["weight"]
    formula = e4m3_f64(w) * s.numpy().astype(np.float64)
    write(out, name, {"m.weight": w, "m.weight_scale": s}, dec, dict(
        format="fp8", R=R, C=C, block_rows=1, block_cols=0, scale_name="weight_scale",
        reference="compressed_tensors.compressors.NaiveQuantizationCompressor.decompress (preset FP8_DYNAMIC's "
                  "weights: float 8-bit, strategy channel)",
        versions=versions("compressed-tensors"), _formula=formula))


# ---------------------------------------------------------------------------------------------- §3
def mxfp4_case(out, rng, name, R, C):
    from transformers.integrations.mxfp4 import FP4_VALUES, convert_moe_packed_tensors

    B = C // 32
    blocks = torch.from_numpy(rng.integers(0, 256, size=(1, R, B, 16)).astype(np.uint8))
    # Varied exponents, the extremes included: 0 (2^-127, subnormal results), 1, 127 (x1), 252 (1.5 * 2^127
    # is the largest value; 253 and 254 overflow with some codes and 255 is NaN: rejected, formats.md §5).
    pool = np.array([0, 1, 2, 100, 118, 120, 124, 125, 126, 127, 128, 129, 131, 140, 200, 252])
    scales = torch.from_numpy(rng.choice(pool, size=(1, R, B)).astype(np.uint8))
    scales.view(-1)[:4] = torch.tensor([0, 252, 127, 1], dtype=torch.uint8)
    dec = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)  # [E, C, R]
    # Cross-check: compressed-tensors mxfp4-pack-quantized (weight_packed [R, C/2], weight_scale [R, C/32]).
    from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="float", strategy="group", group_size=32, symmetric=True, dynamic=False,
        scale_dtype=torch.uint8))
    try:
        ct = MXFP4PackedCompressor.decompress(
            {"weight_packed": blocks[0].reshape(R, C // 2), "weight_scale": scales[0],
             "weight_shape": torch.tensor([R, C])}, scheme)["weight"].to(torch.float32)
        ct_note = "equal" if torch.equal(ct.view(torch.int32), dec[0].t().contiguous().view(torch.int32)) else "DIFFERENT"
    except Exception as e:  # the cross-check is informative only
        ct_note = f"not run ({type(e).__name__}: {e})"
    print(f"{name}: compressed-tensors MXFP4PackedCompressor.decompress vs transformers: {ct_note}")
    lut = np.array(FP4_VALUES, dtype=np.float64)
    b = blocks[0].numpy()
    codes = np.stack([b & 15, b >> 4], axis=-1).reshape(R, C)
    formula = lut[codes] * np.ldexp(1.0, scales[0].numpy().astype(np.int64) - 127)[:, np.arange(C) // 32]
    write(out, name, {"m.gate_up_proj_blocks": blocks, "m.gate_up_proj_scales": scales}, dec[0].t(), dict(
        format="mxfp4", R=R, C=C, experts=1,
        reference="transformers.integrations.mxfp4.convert_moe_packed_tensors(dtype=float32) (output [E, C, R], "
                  "golden is expert 0 transposed); compressed-tensors MXFP4PackedCompressor.decompress: " + ct_note,
        versions=versions("transformers", "compressed-tensors"), _formula=formula))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=OUT_DEFAULT)
    ap.add_argument("--ct0122", default="/tmp/ct0122", help="--target dir holding compressed-tensors 0.12.2")
    ap.add_argument("--seed", type=int, default=20250615)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    ct_case(a.out, rng, "ct_sym_g32", R=24, C=96, group=32, symmetric=True)
    ct_case(a.out, rng, "ct_asym_g32", R=20, C=64, group=32, symmetric=False)  # R % 8 != 0: a partial zero word
    ct_case(a.out, rng, "ct_sym_channel_c100", R=16, C=100, group=-1, symmetric=True)  # C % 8 != 0
    ct_case(a.out, rng, "ct_asym_g20_c60", R=12, C=60, group=20, symmetric=False)  # C % 8 != 0, grouped
    ct_actorder_case(a.out, rng, "ct_sym_g32_actorder", R=16, C=96, group=32, ct0122=a.ct0122)
    gptq_case(a.out, rng, "gptq_v1_asym_g32_actorder", R=32, C=128, group=32, sym=False, desc_act=True)
    gptq_case(a.out, rng, "gptq_v1_sym_g32", R=16, C=64, group=32, sym=True, desc_act=False)
    awq_case(a.out, rng, "awq_g32", R=32, C=96, group=32)
    fp8_block_case(a.out, rng, "fp8_block128_r300_c200", R=300, C=200, bh=128, bw=128)
    fp8_channel_case(a.out, rng, "fp8_channel", R=24, C=40)
    mxfp4_case(a.out, rng, "mxfp4", R=6, C=96)


if __name__ == "__main__":
    main()
