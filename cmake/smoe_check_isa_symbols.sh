#!/bin/sh
# smoe_check_isa_symbols.sh "<obj>;<obj>;..."   (ctest test_dispatch.isa_symbols; objects in link order)
#
# A weak definition (an inline function or a template instance) is merged by the linker, which keeps
# the FIRST copy in link order for every caller. When smoe_dispatch_sources compiles the layer once per
# ISA, a copy compiled with AVX flags must never be the one kept for code that runs on a lesser CPU.
# smoe's kernels carry the xsimd Arch in their names, so each ISA has its own; shared helpers are
# compiled into every object that uses them, and the objects are linked lowest ISA first. This check
# fails when a weak symbol's first definition comes from an object of a higher ISA level than some
# object that uses it (defines or references it). Levels: sse2 and the engine's own objects 0,
# fma3_avx2 1, avx512bw 2. (Link order decides: GNU ld, gold and lld keep the first COMDAT copy.)
set -eu
NM=${NM:-nm}
table=$(mktemp)
trap 'rm -f "$table"' EXIT
i=0
checked=0
IFS=';'
for obj in $1; do
    case "$obj" in
        *.avx512bw.cpp.o) level=2 checked=$((checked + 1)) ;;
        *.fma3_avx2.cpp.o) level=1 checked=$((checked + 1)) ;;
        *) level=0 ;;
    esac
    # "symbol type object level"; undefined references have no address column.
    "$NM" "$obj" | awk -v i="$i" -v l="$level" '{ if (NF == 2) print $2, $1, i, l; else print $3, $2, i, l }' >>"$table"
    i=$((i + 1))
done
if [ "$checked" = 0 ]; then
    echo "no per-ISA object (*.avx512bw.cpp.o, *.fma3_avx2.cpp.o) in: $1"
    exit 1
fi
# LayerFactory<Arch, ...>::create is the deliberate way in: baseline code calls it only for an ISA the
# CPU has (smoe::DispatchedLayer checks first), and only its own ISA's object defines it.
awk '
    $1 ~ /LayerFactory/ { next }
    $2 == "W" || $2 == "V" || $2 == "u" { if (!($1 in first) || $3 < first[$1]) { first[$1] = $3; flevel[$1] = $4 } }
    { if (!($1 in low) || $4 < low[$1]) low[$1] = $4 }
    END {
        bad = 0
        for (s in first)
            if (flevel[s] > low[s]) { print "kept copy from ISA level " flevel[s] ", used at level " low[s] ": " s; bad = 1 }
        exit bad
    }' "$table" || exit 1
echo "$checked per-ISA objects: every weak symbol is kept from an object no higher in ISA than its users"
