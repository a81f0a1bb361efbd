#!/bin/sh
# smoe_check_isa_symbols.sh "<obj>;<obj>;..."   (ctest test_dispatch.isa_symbols; objects in link order)
#
# A function compiled with AVX flags must not be the copy a CPU without AVX ends up calling. Weak
# definitions (inline functions, templates) are merged by the linker, which keeps the FIRST copy in
# link order. smoe's kernels take the xsimd Arch as a template argument, so their names differ per ISA;
# helpers that do not (argument checks, packing at load) are instantiated in every ISA's file, and
# smoe_dispatch_sources puts the baseline ISA's file first, so the kept copy is the baseline one.
# This check fails when an AVX object defines a weak function that uses AVX registers, whose mangled
# name names no xsimd ISA, and that no earlier object without AVX flags defines.
set -eu
NM=${NM:-nm}
OBJDUMP=${OBJDUMP:-objdump}
earlier=$(mktemp)
weak=$(mktemp)
trap 'rm -f "$earlier" "$weak"' EXIT
checked=0
bad=0
IFS=';'
for obj in $1; do
    case "$obj" in
        *.avx512bw.cpp.o | *.fma3_avx2.cpp.o) ;;
        *)
            # Not compiled with AVX flags: its definitions are safe copies for the objects after it.
            "$NM" --defined-only "$obj" | awk '{ print $3 }' >>"$earlier"
            continue
            ;;
    esac
    checked=$((checked + 1))
    avx=$("$OBJDUMP" -d --no-show-raw-insn "$obj" | awk '
        /^[0-9a-f]+ <.*>:$/ { name = $2; sub(/^</, "", name); sub(/>:$/, "", name); next }
        /%[yz]mm[0-9]/ { if (name != "" && !(name in seen)) { seen[name] = 1; print name } }')
    "$NM" --defined-only "$obj" | awk '$2 == "W" || $2 == "u" { print $3 }' >"$weak"
    found=$(printf '%s\n' "$avx" | grep -vE 'avx512|avx2|fma3|sse2|sse4' | grep -Fx -f "$weak" | grep -vFx -f "$earlier" || true)
    if [ -n "$found" ]; then
        echo "$obj: weak functions that use AVX registers, name no ISA, and have no baseline copy earlier in link order:"
        printf '%s\n' "$found" | head -50
        bad=$((bad + 1))
    fi
done
if [ "$checked" = 0 ]; then
    echo "no per-ISA object (*.avx512bw.cpp.o, *.fma3_avx2.cpp.o) in: $1"
    exit 1
fi
[ "$bad" = 0 ] || exit 1
echo "$checked per-ISA objects: every weak AVX function names its ISA or has a baseline copy linked first"
