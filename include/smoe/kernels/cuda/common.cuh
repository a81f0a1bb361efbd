#pragma once
// What every smoe CUDA kernel shares: element conversion (fp32 inside, experts.md §1 rule 1), warp
// reductions, the tie rule as a comparison, and launch-error reporting without a synchronisation.

#include <cstdint>
#include <stdexcept>
#include <string>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace smoe::inline v0::kernels::cuda {

// A CUDA runtime failure (launch configuration, invalid pointer); bad arguments are
// smoe::invalid_argument as on the CPU, raised before anything is launched.
class cuda_error : public std::runtime_error {
public:
    cuda_error(cudaError_t code, char const* where)
        : std::runtime_error(std::string("smoe: CUDA error in ") + where + ": " + cudaGetErrorName(code) + " (" +
                             cudaGetErrorString(code) + ")"),
          code_(code) {}
    cudaError_t code() const noexcept { return code_; }

private:
    cudaError_t code_;
};

// cudaGetLastError only reads the launch status: no synchronisation, so it is legal during graph capture.
inline void check_launch(char const* where) {
    cudaError_t const e = cudaGetLastError();
    if (e != cudaSuccess) throw cuda_error(e, where);
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
// Round to nearest, ties to even (experts.md §9); NaN stays NaN.
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The tie rule of routing.md §0: a higher score wins, an equal score goes to the lower id. -0 == +0.
__device__ __forceinline__ bool ranks_before(float va, int ia, float vb, int ib) {
    return va > vb || (va == vb && ia < ib);
}

// The winner of (value, id) over the warp by the tie rule; every lane gets it. The xor butterfly
// compares the same pairs on every lane, so all lanes agree.
__device__ __forceinline__ void warp_argmax(float& v, int& id) {
    for (int o = 16; o > 0; o >>= 1) {
        float const ov = __shfl_xor_sync(0xffffffffu, v, o);
        int const oi = __shfl_xor_sync(0xffffffffu, id, o);
        if (ranks_before(ov, oi, v, id)) {
            v = ov;
            id = oi;
        }
    }
}

// A token-major row (routing.md §1): the n selections (sw[i], sid[i]) in shared memory written ordered by
// weight descending, ties to the lower id, then -1 / 0 up to `width` columns. Each selection's
// column is the number of selections ranked before it, so no two collide and no sort is needed;
// O(n² / 32) per warp, nothing for the k <= 8 of real models. Call with the whole warp, after a
// __syncwarp that publishes sw and sid.
__device__ __forceinline__ void warp_write_ranked(float const* sw, int const* sid, int n, std::int32_t* ids_row,
                                                  float* w_row, int width) {
    int const lane = threadIdx.x & 31;
    for (int j = lane; j < n; j += 32) {
        float const wj = sw[j];
        int const ij = sid[j];
        int rank = 0;
        for (int i = 0; i < n; ++i) rank += ranks_before(sw[i], sid[i], wj, ij) ? 1 : 0;
        ids_row[rank] = ij;
        w_row[rank] = wj;
    }
    for (int j = n + lane; j < width; j += 32) {
        ids_row[j] = -1;
        w_row[j] = 0.0f;
    }
}

__host__ __device__ constexpr std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

}  // namespace smoe::inline v0::kernels::cuda
