#!/usr/bin/env python3
"""Writes the seed corpus of the safetensors fuzz target into corpus/ (committed; CI never runs this).

Valid files cover every dtype smoe reads, empty and scalar tensors, metadata, an unpadded
(unaligned) header and entries out of offset order; invalid ones cover each check of the reader.
Usage: python3 tests/fuzz/make_corpus.py
"""
import json
import pathlib
import struct

OUT = pathlib.Path(__file__).resolve().parent / "corpus"
SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def raw(header_text, data=b"", n=None):
    h = header_text.encode("utf-8") if isinstance(header_text, str) else header_text
    return struct.pack("<Q", len(h) if n is None else n) + h + data


def st(tensors, metadata=None, pad=True):
    """tensors: list of (name, dtype, shape); data bytes count up from 0."""
    header, off = {}, 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape in tensors:
        n = SIZES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    text = json.dumps(header, separators=(",", ":"))
    if pad:
        text += " " * (-len(text) % 8)
    return raw(text, bytes(i & 0xFF for i in range(off)))


def main():
    OUT.mkdir(exist_ok=True)
    files = {
        "valid_f32": st([("w", "F32", [2, 3])]),
        "valid_all_dtypes": st([(f"t.{d}", d, [2]) for d in SIZES], metadata={"format": "pt"}),
        "valid_no_tensor": st([]),
        "valid_empty_and_scalar": st([("e", "F32", [4, 0, 2]), ("s", "BF16", []), ("z", "I32", [0])]),
        "valid_unaligned": st([("a", "U8", [3]), ("b", "F16", [3]), ("c", "F32", [2])], pad=False),
        "valid_out_of_order": raw('{"z":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
                                  '"a":{"dtype":"U8","shape":[3],"data_offsets":[2,5]}}', bytes(5)),
        "valid_index_json": json.dumps({"metadata": {"total_size": 8},
                                        "weight_map": {"a": "model-00001-of-00002.safetensors",
                                                       "b": "model-00002-of-00002.safetensors"}}).encode(),
        "invalid_short": b"\x10\x00\x00",
        "invalid_header_len_zero": raw(""),
        "invalid_header_len_huge": raw('{"w":1}', n=1 << 40),
        "invalid_truncated": st([("w", "F32", [2, 3])])[:-5],
        "invalid_json": raw('{"w":{"dtype":"F32",'),
        "invalid_utf8": raw(b'{"\xc3(":1}'),
        "invalid_nul_after_json": raw(b'{}\x00\x00{"x":1}'),
        "invalid_dtype": raw('{"w":{"dtype":"U16","shape":[2],"data_offsets":[0,4]}}', bytes(4)),
        "invalid_shape_negative": raw('{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}'),
        "invalid_shape_overflow": raw('{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}'),
        "invalid_shape_offsets_mismatch": raw('{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}', bytes(20)),
        "invalid_offsets_beyond": raw('{"w":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}}', bytes(16)),
        "invalid_overlap": raw('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                               '"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', bytes(12)),
        "invalid_gap": raw('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                           '"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}', bytes(12)),
        "invalid_duplicate": raw('{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                                 '"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', bytes(2)),
        "invalid_metadata": raw('{"__metadata__":{"k":1}}'),
        "invalid_deep": raw('{"w":{"shape":[[[[1]]]]}}'),
        "invalid_entry_not_object": raw('{"w":[null,true,1.5,"s"]}'),
        "invalid_extra_field": raw('{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":null}}', bytes(1)),
        "invalid_offsets_float": raw('{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1e0]}}', bytes(1)),
    }
    for name, data in files.items():
        (OUT / name).write_bytes(data)
    print(f"wrote {len(files)} files to {OUT}")


if __name__ == "__main__":
    main()
