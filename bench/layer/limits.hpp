#pragma once
// What the layer benchmarks need beyond bench_machine.hpp's limits (per weight format, 1 and 2
// threads, each peak from the widest instruction the CPU has): the last-level cache and the memory
// left, which size the cold protocol's copies of the layer (bench_layer.cpp).

#include <cstddef>
#include <cstdio>
#include <fstream>
#include <string>

#include "bench_machine.hpp"

namespace smoe_bench {

// Bytes of cpu0's last-level cache (sysfs "32768K"); 32 MiB, this project's machines, when unreadable.
inline double llc_bytes() {
    std::ifstream in("/sys/devices/system/cpu/cpu0/cache/index3/size");
    double v = 0;
    std::string unit;
    if (!(in >> v) || v <= 0) return 32.0 * (1 << 20);
    in >> unit;
    return v * (unit.starts_with("K") ? 1024.0 : unit.starts_with("M") ? 1048576.0 : 1.0);
}

// MemAvailable from /proc/meminfo in bytes; 0 when unreadable.
inline double mem_available_bytes() {
    std::ifstream in("/proc/meminfo");
    std::string key;
    double kib = 0;
    while (in >> key >> kib) {
        if (key == "MemAvailable:") return kib * 1024.0;
        in.ignore(256, '\n');
    }
    return 0;
}

}  // namespace smoe_bench
