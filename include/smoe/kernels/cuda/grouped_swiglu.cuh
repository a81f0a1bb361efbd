#pragma once
// Grouped SwiGLU expert GEMMs (experts.md §3) over the dispatched rows of every expert, one launch per
// GEMM for all experts:
//
//   GEMM 1 (gated): h[row] = silu(x[token] · W1[e]ᵀ) ⊙ (x[token] · W3[e]ᵀ)   rows gathered from x by
//                   token id (no permuted copy of x), SiLU·mul in the epilogue, h stored in the weight
//                   type at the expert's tile-padded segment;
//   GEMM 2:         slot_out[csr row] = w_row · (h[row] · W2[e]ᵀ), fp32.
//
// Two kernels per GEMM, chosen on the host from T alone (the counts stay on the device):
//   * tile kernel: a block computes one 64 x 64 tile of one expert. The grid is the host bound
//     max_m_tiles(T·K, E) x n-tiles; block y reads its (expert, first row) from the device tile
//     table and exits when y >= the device's tile count, so empty experts cost nothing. bf16 runs
//     on tensor cores (WMMA 16x16x16, fp32 accumulation, two-stage cp.async pipeline) on sm_80+,
//     fp32 (and bf16 before sm_80) on a SIMT 4 x 8 per-thread
//     micro-tile.
//   * small-M kernel (T <= 8, decode): no expert has more than 8 rows, so a GEMV-like kernel is
//     bandwidth-bound: each warp streams weight rows with 16-byte loads and applies each to all the
//     expert's rows; grid y = the non-empty experts (device list), x = output columns.
//
// Row independence (experts.md §1 rule 3): every output element is a fixed-order reduction over K of
// one row, whatever M or the tile the row lands in, so both kernels are batch invariant except that
// a token's row goes through the tile kernel for T > 8 and through the small-M kernel for T <= 8,
// whose sum orders differ (both fp32, within the §9 bounds).

#include <cstdint>
#include <type_traits>

#include <mma.h>

#include "smoe/kernels/cuda/common.cuh"
#include "smoe/kernels/cuda/plan.cuh"

namespace smoe::inline v0::kernels::cuda {

template <class T>
struct SwiGLUProblem {
    T const* x = nullptr;  // [T, d], row stride ldx
    std::int64_t ldx = 0;
    T const* w1 = nullptr;  // gate [E, f, d]
    std::int64_t ld1 = 0, stride1 = 0;
    T const* w3 = nullptr;  // up [E, f, d]
    std::int64_t ld3 = 0, stride3 = 0;
    T const* w2 = nullptr;  // down [E, d, f]
    std::int64_t ld2 = 0, stride2 = 0;
    int d = 0, f = 0;
    std::int32_t const* offsets = nullptr;         // [E+1]
    std::int32_t const* padded_offsets = nullptr;  // [E+1]
    std::int32_t const* token_ids = nullptr;       // [nnz]
    float const* weights = nullptr;                // [nnz]
    std::int32_t const* tile_expert = nullptr;
    std::int32_t const* tile_row0 = nullptr;
    std::int32_t const* active = nullptr;
    std::int32_t const* counters = nullptr;
    T* hidden = nullptr;      // [padded rows, f]
    float* slot_out = nullptr;  // [nnz, d]
    // 16-byte vector loads are legal (base aligned, row stride a multiple of 16 bytes).
    bool vec_x = false, vec_w13 = false, vec_w2 = false, vec_h = false;
};

namespace detail {

// The cores' thread maps (SIMT: 16 x 8 threads of 4 x 8; WMMA: 2 x 2 warps of 32 x 32) and the
// shared row-pointer loop assume these.
static_assert(kTileM == 64 && kTileN == 64 && kTileThreads == 128 && kTileK % 16 == 0);

inline constexpr int kLds = kTileK + 8;  // operand row in shared memory: 80 B (bf16), a multiple of 16
inline constexpr int kLdc = kTileN + 4;  // fp32 epilogue staging row

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

// 16 bytes of T widened to fp32.
__device__ __forceinline__ void load16(float const* p, float* out) {
    float4 const v = *reinterpret_cast<float4 const*>(p);
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
}
__device__ __forceinline__ void load16(__nv_bfloat16 const* p, float* out) {
    uint4 const v = *reinterpret_cast<uint4 const*>(p);
    __nv_bfloat162 const* h = reinterpret_cast<__nv_bfloat162 const*>(&v);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float2 const f = __bfloat1622float2(h[i]);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
    }
}

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
// Ampere+ asynchronous copies (global -> shared without registers), for the two-stage pipeline.
__device__ __forceinline__ void cp_async16(void* smem_dst, void const* gmem_src) {
    unsigned const dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem_src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif

// One kTileK-wide slab of kTileM rows into shared memory; rows whose pointer is null, and columns
// past K, are zero (experts.md §1 rule 4: padded rows are zero inputs). kAsync: full aligned
// 16-byte chunks go by cp.async (complete after cp_async_wait and a barrier); the rest by stores.
template <bool kAsync = false, class T>
__device__ __forceinline__ void load_slab(T* dst, T const* const* rows, int k0, int K, bool vec) {
    constexpr int V = 16 / static_cast<int>(sizeof(T));
    constexpr int kChunksPerRow = kTileK / V;
    for (int c = threadIdx.x; c < kTileM * kChunksPerRow; c += kTileThreads) {
        int const r = c / kChunksPerRow, kc = (c % kChunksPerRow) * V;
        T* out = dst + r * kLds + kc;
        T const* src = rows[r];
        int const k = k0 + kc;
        if (vec && src != nullptr && k + V <= K) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
            if constexpr (kAsync) {
                cp_async16(out, src + k);
                continue;
            }
#endif
            *reinterpret_cast<uint4*>(out) = *reinterpret_cast<uint4 const*>(src + k);
        } else {
#pragma unroll
            for (int v = 0; v < V; ++v) out[v] = (src != nullptr && k + v < K) ? src[k + v] : from_float<T>(0.0f);
        }
    }
}

// SIMT micro-kernel: thread (ty, tx) owns rows ty + 16 i and columns tx + 8 j of the 64 x 64 tile.
template <class T, bool kGated>
struct SimtCore {
    static constexpr int kStages = 1;  // loads and compute alternate, one slab in shared memory
    float acc1[4][8] = {}, acc3[kGated ? 4 : 1][kGated ? 8 : 1] = {};

    __device__ void step(T const* a_s, T const* b1_s, T const* b3_s) {
        int const ty = threadIdx.x / 8, tx = threadIdx.x % 8;
#pragma unroll 4
        for (int k = 0; k < kTileK; ++k) {
            float a[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = to_float(a_s[(ty + 16 * i) * kLds + k]);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                float const b1 = to_float(b1_s[(tx + 8 * j) * kLds + k]);
#pragma unroll
                for (int i = 0; i < 4; ++i) acc1[i][j] = fmaf(a[i], b1, acc1[i][j]);
                if constexpr (kGated) {
                    float const b3 = to_float(b3_s[(tx + 8 * j) * kLds + k]);
#pragma unroll
                    for (int i = 0; i < 4; ++i) acc3[i][j] = fmaf(a[i], b3, acc3[i][j]);
                }
            }
        }
    }

    __device__ void finish(float* c_s) {
        int const ty = threadIdx.x / 8, tx = threadIdx.x % 8;
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                float v = acc1[i][j];
                if constexpr (kGated) v = silu(v) * acc3[i][j];
                c_s[(ty + 16 * i) * kLdc + tx + 8 * j] = v;
            }
    }
};

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
// Tensor-core micro-kernel for bf16: warp w owns the 32 x 32 quarter (w / 2, w % 2) as 2 x 2 WMMA
// fragments with fp32 accumulators. Gate and up share the A fragments. Accumulator fragments of one
// type share their element mapping, so SiLU·mul works element-wise on fragments.
template <bool kGated>
struct WmmaCore {
    static constexpr int kStages = 2;  // cp.async fills the next slab while the tensor cores work
    using Acc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;
    Acc acc1[2][2], acc3[kGated ? 2 : 1][kGated ? 2 : 1];

    __device__ WmmaCore() {
        for (int i = 0; i < 2; ++i)
            for (int j = 0; j < 2; ++j) {
                nvcuda::wmma::fill_fragment(acc1[i][j], 0.0f);
                if constexpr (kGated) nvcuda::wmma::fill_fragment(acc3[i][j], 0.0f);
            }
    }

    __device__ void step(__nv_bfloat16 const* a_s, __nv_bfloat16 const* b1_s, __nv_bfloat16 const* b3_s) {
        namespace wmma = nvcuda::wmma;
        int const warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
#pragma unroll
        for (int kk = 0; kk < kTileK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], a_s + (wm * 32 + i * 16) * kLds + kk, kLds);
            // matrix_b element (k, n) is weight row n, column k: column-major with ldm kLds.
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], b1_s + (wn * 32 + j * 16) * kLds + kk, kLds);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::mma_sync(acc1[i][j], a[i], b[j], acc1[i][j]);
            if constexpr (kGated) {
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], b3_s + (wn * 32 + j * 16) * kLds + kk, kLds);
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int j = 0; j < 2; ++j) wmma::mma_sync(acc3[i][j], a[i], b[j], acc3[i][j]);
            }
        }
    }

    __device__ void finish(float* c_s) {
        namespace wmma = nvcuda::wmma;
        int const warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                if constexpr (kGated)
                    for (int t = 0; t < acc1[i][j].num_elements; ++t)
                        acc1[i][j].x[t] = silu(acc1[i][j].x[t]) * acc3[i][j].x[t];
                wmma::store_matrix_sync(c_s + (wm * 32 + i * 16) * kLdc + wn * 32 + j * 16, acc1[i][j], kLdc,
                                        wmma::mem_row_major);
            }
    }
};
#endif

template <class T, bool kGated>
struct CoreFor {
    using type = SimtCore<T, kGated>;
};
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
template <bool kGated>
struct CoreFor<__nv_bfloat16, kGated> {
    using type = WmmaCore<kGated>;
};
#endif

}  // namespace detail

// One 64 x 64 tile of one expert per block (see the file comment). kGated: GEMM 1, else GEMM 2.
template <class T, bool kGated>
__global__ void __launch_bounds__(kTileThreads) grouped_swiglu_tile_kernel(SwiGLUProblem<T> p) {
    int const slot = blockIdx.y;
    if (slot >= p.counters[kCounterTiles]) return;  // past the device schedule: uniform per block
    int const e = p.tile_expert[slot], r0 = p.tile_row0[slot];
    int const row_begin = p.offsets[e], count = p.offsets[e + 1] - row_begin;
    int const rows = count - r0 < kTileM ? count - r0 : kTileM;
    int const N = kGated ? p.f : p.d, K = kGated ? p.d : p.f;
    int const n0 = blockIdx.x * kTileN;

    // The fp32 epilogue staging reuses the operand slabs (the K loop ends with a barrier): this keeps
    // the fp32 gated kernel under the 48 KB of static shared memory.
    using Core = typename detail::CoreFor<T, kGated>::type;
    constexpr int kStages = Core::kStages;
    constexpr int kStageElems = (kGated ? 3 : 2) * kTileM * detail::kLds;  // A, B1 (, B3) of one slab
    constexpr int kOperandBytes = kStages * kStageElems * static_cast<int>(sizeof(T));
    constexpr int kStagingBytes = kTileM * detail::kLdc * static_cast<int>(sizeof(float));
    __shared__ __align__(32) unsigned char smem[kOperandBytes > kStagingBytes ? kOperandBytes : kStagingBytes];
    // Stage s holds A at +0, B1 at +64 rows, B3 at +128 rows (each 64 x kLds); every offset is a
    // multiple of 32 bytes, as WMMA loads require.
    auto const a_s = [&](int stage) { return reinterpret_cast<T*>(smem) + stage * kStageElems; };
    auto const b1_s = [&](int stage) { return a_s(stage) + kTileM * detail::kLds; };
    auto const b3_s = [&](int stage) { return b1_s(stage) + kTileN * detail::kLds; };  // gated only
    float* const c_s = reinterpret_cast<float*>(smem);
    __shared__ T const* a_rows[kTileM];
    __shared__ T const* b1_rows[kTileN];
    __shared__ T const* b3_rows[kTileN];

    for (int r = threadIdx.x; r < kTileM; r += kTileThreads) {
        T const* a = nullptr;
        if (r < rows) {
            if constexpr (kGated)
                a = p.x + static_cast<std::int64_t>(p.token_ids[row_begin + r0 + r]) * p.ldx;
            else
                a = p.hidden + static_cast<std::int64_t>(p.padded_offsets[e] + r0 + r) * p.f;
        }
        a_rows[r] = a;
        int const n = n0 + r;
        if constexpr (kGated) {
            b1_rows[r] = n < N ? p.w1 + e * p.stride1 + static_cast<std::int64_t>(n) * p.ld1 : nullptr;
            b3_rows[r] = n < N ? p.w3 + e * p.stride3 + static_cast<std::int64_t>(n) * p.ld3 : nullptr;
        } else {
            b1_rows[r] = n < N ? p.w2 + e * p.stride2 + static_cast<std::int64_t>(n) * p.ld2 : nullptr;
        }
    }
    __syncthreads();

    bool const vec_a = kGated ? p.vec_x : p.vec_h;
    bool const vec_b = kGated ? p.vec_w13 : p.vec_w2;
    Core core;
    if constexpr (kStages == 2) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
        // Two-stage pipeline: slab i + 1 is in flight while slab i is multiplied. One commit group
        // per iteration (empty at the end) keeps wait_group<1> meaning "slab i has landed"; the
        // barrier after the step keeps the next load from overwriting a stage still being read.
        auto const load = [&](int slab, int stage) {
            int const k0 = slab * kTileK;
            detail::load_slab<true>(a_s(stage), a_rows, k0, K, vec_a);
            detail::load_slab<true>(b1_s(stage), b1_rows, k0, K, vec_b);
            if constexpr (kGated) detail::load_slab<true>(b3_s(stage), b3_rows, k0, K, vec_b);
        };
        int const slabs = (K + kTileK - 1) / kTileK;
        load(0, 0);
        detail::cp_async_commit();
        for (int i = 0; i < slabs; ++i) {
            if (i + 1 < slabs) load(i + 1, (i + 1) & 1);
            detail::cp_async_commit();
            detail::cp_async_wait<1>();
            __syncthreads();
            core.step(a_s(i & 1), b1_s(i & 1), b3_s(i & 1));
            __syncthreads();
        }
#endif
    } else {
        for (int k0 = 0; k0 < K; k0 += kTileK) {
            detail::load_slab(a_s(0), a_rows, k0, K, vec_a);
            detail::load_slab(b1_s(0), b1_rows, k0, K, vec_b);
            if constexpr (kGated) detail::load_slab(b3_s(0), b3_rows, k0, K, vec_b);
            __syncthreads();
            core.step(a_s(0), b1_s(0), b3_s(0));
            __syncthreads();
        }
    }
    core.finish(c_s);
    __syncthreads();

    for (int i = threadIdx.x; i < kTileM * kTileN; i += kTileThreads) {
        int const r = i / kTileN, c = i % kTileN, n = n0 + c;
        if (r >= rows || n >= N) continue;
        float const v = c_s[r * detail::kLdc + c];
        if constexpr (kGated) {
            p.hidden[static_cast<std::int64_t>(p.padded_offsets[e] + r0 + r) * p.f + n] = from_float<T>(v);
        } else {
            int const row = row_begin + r0 + r;
            p.slot_out[static_cast<std::int64_t>(row) * p.d + n] = v * p.weights[row];
        }
    }
}

inline constexpr int kSmallCols = 2;  // output columns per warp and pass: more loads in flight
inline constexpr int kSmallWarps = kSmallThreads / 32;

// Decode path: block y = the y-th non-empty expert, each warp kSmallCols output columns.
template <class T, bool kGated>
__global__ void __launch_bounds__(kSmallThreads) grouped_swiglu_small_kernel(SwiGLUProblem<T> p) {
    int const slot = blockIdx.y;
    if (slot >= p.counters[kCounterActive]) return;
    int const e = p.active[slot];
    int const row_begin = p.offsets[e], count = p.offsets[e + 1] - row_begin;
    int const rows = count < kSmallM ? count : kSmallM;
    int const N = kGated ? p.f : p.d, K = kGated ? p.d : p.f;
    int const lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int const n0 = (blockIdx.x * kSmallWarps + warp) * kSmallCols;
    if (n0 >= N) return;

    T const* a[kSmallM];
#pragma unroll
    for (int m = 0; m < kSmallM; ++m) {
        a[m] = nullptr;
        if (m < rows)
            a[m] = kGated ? p.x + static_cast<std::int64_t>(p.token_ids[row_begin + m]) * p.ldx
                          : p.hidden + static_cast<std::int64_t>(p.padded_offsets[e] + m) * p.f;
    }
    T const* b1[kSmallCols];
    T const* b3[kSmallCols];
#pragma unroll
    for (int c = 0; c < kSmallCols; ++c) {
        int const n = n0 + c < N ? n0 + c : N - 1;  // a column past N is computed from row N-1, never stored
        b1[c] = kGated ? p.w1 + e * p.stride1 + static_cast<std::int64_t>(n) * p.ld1
                       : p.w2 + e * p.stride2 + static_cast<std::int64_t>(n) * p.ld2;
        b3[c] = kGated ? p.w3 + e * p.stride3 + static_cast<std::int64_t>(n) * p.ld3 : nullptr;
    }

    float acc1[kSmallCols][kSmallM] = {}, acc3[kGated ? kSmallCols : 1][kGated ? kSmallM : 1] = {};
    constexpr int V = 16 / static_cast<int>(sizeof(T));
    bool const vec = (kGated ? p.vec_x && p.vec_w13 : p.vec_h && p.vec_w2) && K % V == 0;
    if (vec) {
#pragma unroll 2
        for (int k = lane * V; k < K; k += 32 * V) {
            float w1v[kSmallCols][V], w3v[kGated ? kSmallCols : 1][V];
#pragma unroll
            for (int c = 0; c < kSmallCols; ++c) {
                detail::load16(b1[c] + k, w1v[c]);
                if constexpr (kGated) detail::load16(b3[c] + k, w3v[c]);
            }
#pragma unroll
            for (int m = 0; m < kSmallM; ++m) {
                if (m >= rows) break;
                float xv[V];
                detail::load16(a[m] + k, xv);
#pragma unroll
                for (int c = 0; c < kSmallCols; ++c)
#pragma unroll
                    for (int v = 0; v < V; ++v) {
                        acc1[c][m] = fmaf(w1v[c][v], xv[v], acc1[c][m]);
                        if constexpr (kGated) acc3[c][m] = fmaf(w3v[c][v], xv[v], acc3[c][m]);
                    }
            }
        }
    } else {
        for (int k = lane; k < K; k += 32) {
#pragma unroll
            for (int m = 0; m < kSmallM; ++m) {
                if (m >= rows) break;
                float const xv = to_float(a[m][k]);
#pragma unroll
                for (int c = 0; c < kSmallCols; ++c) {
                    acc1[c][m] = fmaf(to_float(b1[c][k]), xv, acc1[c][m]);
                    if constexpr (kGated) acc3[c][m] = fmaf(to_float(b3[c][k]), xv, acc3[c][m]);
                }
            }
        }
    }

#pragma unroll
    for (int c = 0; c < kSmallCols; ++c) {
        int const n = n0 + c;
#pragma unroll
        for (int m = 0; m < kSmallM; ++m) {
            if (m >= rows) break;  // rows is uniform over the warp, so every lane reduces together
            float const g = warp_sum(acc1[c][m]);
            float u = 0.0f;
            if constexpr (kGated) u = warp_sum(acc3[c][m]);
            if (lane != 0 || n >= N) continue;
            if constexpr (kGated) {
                p.hidden[static_cast<std::int64_t>(p.padded_offsets[e] + m) * p.f + n] = from_float<T>(detail::silu(g) * u);
            } else {
                int const row = row_begin + m;
                p.slot_out[static_cast<std::int64_t>(row) * p.d + n] = g * p.weights[row];
            }
        }
    }
}

// Both GEMMs for a call of `tokens` tokens with K slots each over E experts.
template <class T>
void launch_grouped_swiglu(SwiGLUProblem<T> const& p, std::int64_t tokens, std::int64_t K, std::int64_t E,
                           cudaStream_t stream) {
    std::int64_t const nnz = tokens * K;
    if (nnz == 0) return;
    if (tokens <= kSmallM) {
        auto const experts = static_cast<unsigned>(nnz < E ? nnz : E);
        constexpr std::int64_t cols = kSmallWarps * kSmallCols;
        grouped_swiglu_small_kernel<T, true><<<dim3(static_cast<unsigned>(ceil_div(p.f, cols)), experts), kSmallThreads, 0, stream>>>(p);
        check_launch("grouped_swiglu_small_kernel<gate/up>");
        grouped_swiglu_small_kernel<T, false><<<dim3(static_cast<unsigned>(ceil_div(p.d, cols)), experts), kSmallThreads, 0, stream>>>(p);
        check_launch("grouped_swiglu_small_kernel<down>");
        return;
    }
    auto const m_tiles = static_cast<unsigned>(max_m_tiles(nnz, E));
    grouped_swiglu_tile_kernel<T, true><<<dim3(static_cast<unsigned>(ceil_div(p.f, kTileN)), m_tiles), kTileThreads, 0, stream>>>(p);
    check_launch("grouped_swiglu_tile_kernel<gate/up>");
    grouped_swiglu_tile_kernel<T, false><<<dim3(static_cast<unsigned>(ceil_div(p.d, kTileN)), m_tiles), kTileThreads, 0, stream>>>(p);
    check_launch("grouped_swiglu_tile_kernel<down>");
}

}  // namespace smoe::inline v0::kernels::cuda
