// llama.cpp's MoE block on ggml, as a baseline for bench/layer: the graph of llama.cpp's
// llm_graph_context::build_moe_ffn for a softmax -> top-k -> renormalise SwiGLU block (router mul_mat,
// soft_max, argsort_top_k, get_rows, sum_rows/div, three ggml_mul_mat_id, swiglu_split, mul, the k-way
// add), on ggml's CPU backend with its persistent thread pool. Expert weights go where llama.cpp puts
// them by default: the CPU_REPACK buffer (q4_0 -> q4_0_8x8 interleaved panels on AVX2/AVX-512, q8_0 where
// ggml has a layout for this CPU), the plain CPU buffer otherwise; the record's `repacked` says which.
//
// Data, routing and records as shared/baselines (moe_common.h: the same streams, so route_hash equals
// smoe's and the other baselines'); protocols as bench/layer's (README.md there):
//   hot : one layer, the same input call after call;
//   cold: L copies of the layer in one graph, each on the same input, time per layer = time / L, with L
//         the least count >= 2 whose weights total 4x the LLC and whose other L - 1 layers touch 4x the
//         LLC at T = 1 (the rule of bench/layer/layer_set.hpp's cold protocol).
//
// Build: bench/baselines/build_ggml.sh GGML_SOURCE_DIR (ggml as vendored by llama.cpp; see that script)
// Run:   ggml_moe SHAPE TOKENS THREADS MIN_REPS TYPE PROTOCOL     e.g. ggml_moe olmoe 1,8 2 5 q4_0 cold
//        TYPE: f32 | f16 | bf16 | q8_0 | q4_0 | mxfp4     PROTOCOL: hot | cold
// (mxfp4: ggml's block_mxfp4, as llama.cpp runs gpt-oss: E2M1 codes and an E8M0 scale per 32, dotted with
// q8_0 activations; ggml's own round-to-nearest quantiser, the same bytes a weight as smoe's mxfp4d)
#include "moe_common.h"

#include <ggml-alloc.h>
#include <ggml-backend.h>
#include <ggml-cpu.h>
#include <ggml.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Layer {
    ggml_tensor* router = nullptr;  // [d, E] f32
    ggml_tensor* gate = nullptr;    // [d, f, E]
    ggml_tensor* up = nullptr;      // [d, f, E]
    ggml_tensor* down = nullptr;    // [f, d, E]
};

ggml_type parse_type(std::string const& name) {
    if (name == "f32") return GGML_TYPE_F32;
    if (name == "f16") return GGML_TYPE_F16;
    if (name == "bf16") return GGML_TYPE_BF16;
    if (name == "q8_0") return GGML_TYPE_Q8_0;
    if (name == "q4_0") return GGML_TYPE_Q4_0;
    if (name == "mxfp4") return GGML_TYPE_MXFP4;
    throw std::invalid_argument("ggml_moe: TYPE '" + name + "': expected f32, f16, bf16, q8_0, q4_0 or mxfp4");
}

double llc_bytes() {
    std::ifstream in("/sys/devices/system/cpu/cpu0/cache/index3/size");
    std::string text;
    if (!(in >> text) || text.empty()) return 32.0 * (1 << 20);
    double v = std::atof(text.c_str());
    char const unit = text.back();
    return unit == 'K' ? v * 1024 : unit == 'M' ? v * (1 << 20) : v;
}

// One expert-stacked weight [E][rows][cols] from stream `key` (expert e's rows start at element
// e * rows * cols), converted to `type` with ggml's own quantiser, one expert at a time.
std::vector<char> stacked_bytes(ggml_type type, int64_t E, int64_t rows, int64_t cols, uint64_t key) {
    size_t const per_expert = ggml_row_size(type, cols) * size_t(rows);
    std::vector<char> out(per_expert * size_t(E));
    std::vector<float> src(size_t(rows * cols));
    for (int64_t e = 0; e < E; ++e) {
        moe::fill(src.data(), src.size(), uint64_t(e * rows * cols), key, moe::kWeightSd);
        ggml_quantize_chunk(type, src.data(), out.data() + size_t(e) * per_expert, 0, rows, cols, nullptr);
    }
    return out;
}

// The weights in ggml's layout, one copy; every cold copy is set from these bytes (whole tensors: the
// repack buffer converts a tensor in one set call).
struct Weights {
    std::vector<char> gate, up, down;
    std::vector<float> router;  // [E, d]
};

Weights make_weights(moe::Shape const& s, ggml_type type) {
    Weights w{stacked_bytes(type, s.E, s.f, s.d, moe::kKeyW1), stacked_bytes(type, s.E, s.f, s.d, moe::kKeyW3),
              stacked_bytes(type, s.E, s.d, s.f, moe::kKeyW2), std::vector<float>(size_t(s.E * s.d))};
    moe::fill(w.router.data(), w.router.size(), 0, moe::kKeyRouter, moe::kWeightSd);
    return w;
}

// llama.cpp's build_moe_ffn (softmax gating, norm_w, SwiGLU, no biases): y [d, T].
ggml_tensor* moe_block(ggml_context* ctx, ggml_cgraph* gf, Layer const& l, ggml_tensor* x, moe::Shape const& s,
                       int64_t T, ggml_tensor** selected_out) {
    ggml_tensor* logits = ggml_mul_mat(ctx, l.router, x);  // [E, T]
    ggml_tensor* probs = ggml_soft_max(ctx, logits);
    ggml_tensor* selected = ggml_argsort_top_k(ctx, probs, int(s.k));  // [k, T]
    ggml_tensor* weights = ggml_get_rows(ctx, ggml_reshape_3d(ctx, probs, 1, s.E, T), selected);  // [1, k, T]
    weights = ggml_reshape_2d(ctx, weights, s.k, T);
    ggml_tensor* sum = ggml_clamp(ctx, ggml_sum_rows(ctx, weights), 6.103515625e-5f, INFINITY);
    weights = ggml_reshape_3d(ctx, ggml_div(ctx, weights, sum), 1, s.k, T);
    ggml_build_forward_expand(gf, weights);

    ggml_tensor* cur = ggml_reshape_3d(ctx, x, s.d, 1, T);
    ggml_tensor* up = ggml_mul_mat_id(ctx, l.up, cur, selected);      // [f, k, T]
    ggml_tensor* gate = ggml_mul_mat_id(ctx, l.gate, cur, selected);  // [f, k, T]
    ggml_tensor* h = ggml_swiglu_split(ctx, gate, up);
    ggml_tensor* experts = ggml_mul_mat_id(ctx, l.down, h, selected);  // [d, k, T]
    experts = ggml_mul(ctx, experts, weights);
    ggml_build_forward_expand(gf, experts);

    ggml_tensor* y = ggml_view_2d(ctx, experts, s.d, T, experts->nb[2], 0);
    for (int64_t i = 1; i < s.k; ++i)
        y = ggml_add(ctx, y, ggml_view_2d(ctx, experts, s.d, T, experts->nb[2], size_t(i) * experts->nb[1]));
    if (s.k == 1) y = ggml_cont(ctx, y);
    *selected_out = selected;
    return y;
}

ggml_backend_buffer_type_t repack_buft(ggml_backend_t backend) {
    ggml_backend_dev_t dev = ggml_backend_get_device(backend);
    auto get_extra = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(
        ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(dev), "ggml_backend_dev_get_extra_bufts"));
    if (get_extra == nullptr) return nullptr;
    for (ggml_backend_buffer_type_t* b = get_extra(dev); b != nullptr && *b != nullptr; ++b)
        if (std::strcmp(ggml_backend_buft_name(*b), "CPU_REPACK") == 0) return *b;
    return nullptr;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 7) {
        std::fprintf(stderr, "usage: %s SHAPE TOKENS THREADS MIN_REPS TYPE hot|cold\n", argv[0]);
        return 2;
    }
    moe::Shape const* shape = moe::find_shape(argv[1]);
    if (shape == nullptr) {
        std::fprintf(stderr, "ggml_moe: unknown shape %s\n", argv[1]);
        return 2;
    }
    moe::Shape const& s = *shape;
    std::vector<int64_t> const tokens = moe::parse_list(argv[2]);
    int const threads = std::atoi(argv[3]);
    int const min_reps = std::atoi(argv[4]);
    std::string const type_name = argv[5];
    ggml_type const type = parse_type(type_name);
    bool const cold = std::string(argv[6]) == "cold";
    int64_t const t_max = *std::max_element(tokens.begin(), tokens.end());

    double const expert_bytes = 3.0 * double(ggml_row_size(type, s.d)) * double(s.f);  // bytes per weight included
    double const llc = llc_bytes();
    int copies = 1;
    if (cold) {
        copies = 2;
        while (double(copies) * s.E * expert_bytes < 4 * llc || double(copies - 1) * s.k * expert_bytes < 4 * llc)
            ++copies;
    }

    ggml_backend_t backend = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(backend, threads);

    // Weights: one no-alloc context for the expert tensors (repack buffer), one for the routers (CPU buffer).
    ggml_init_params wparams{ggml_tensor_overhead() * size_t(4 * copies + 8), nullptr, true};
    ggml_context* wctx = ggml_init(wparams);
    ggml_context* rctx = ggml_init(wparams);
    std::vector<Layer> layers(static_cast<size_t>(copies));
    for (Layer& l : layers) {
        l.gate = ggml_new_tensor_3d(wctx, type, s.d, s.f, s.E);
        l.up = ggml_new_tensor_3d(wctx, type, s.d, s.f, s.E);
        l.down = ggml_new_tensor_3d(wctx, type, s.f, s.d, s.E);
        l.router = ggml_new_tensor_2d(rctx, GGML_TYPE_F32, s.d, s.E);
    }
    ggml_backend_buffer_t wbuf = nullptr;
    bool repacked = false;
    if (ggml_backend_buffer_type_t rb = repack_buft(backend)) {
        wbuf = ggml_backend_alloc_ctx_tensors_from_buft(wctx, rb);
        repacked = wbuf != nullptr && layers[0].gate->extra != nullptr && layers[0].down->extra != nullptr;
        if (wbuf != nullptr && !repacked) {
            ggml_backend_buffer_free(wbuf);
            wbuf = nullptr;
            ggml_free(wctx);  // tensors keep their buffer pointers: start again
            wctx = ggml_init(wparams);
            for (Layer& l : layers) {
                l.gate = ggml_new_tensor_3d(wctx, type, s.d, s.f, s.E);
                l.up = ggml_new_tensor_3d(wctx, type, s.d, s.f, s.E);
                l.down = ggml_new_tensor_3d(wctx, type, s.f, s.d, s.E);
            }
        }
    }
    if (wbuf == nullptr) wbuf = ggml_backend_alloc_ctx_tensors_from_buft(wctx, ggml_backend_cpu_buffer_type());
    ggml_backend_buffer_t rbuf = ggml_backend_alloc_ctx_tensors_from_buft(rctx, ggml_backend_cpu_buffer_type());
    if (wbuf == nullptr || rbuf == nullptr) {
        std::fprintf(stderr, "ggml_moe: could not allocate %d copies of the weights\n", copies);
        return 1;
    }
    {
        Weights const w = make_weights(s, type);
        for (Layer& l : layers) {
            ggml_backend_tensor_set(l.gate, w.gate.data(), 0, w.gate.size());
            ggml_backend_tensor_set(l.up, w.up.data(), 0, w.up.size());
            ggml_backend_tensor_set(l.down, w.down.data(), 0, w.down.size());
            ggml_backend_tensor_set(l.router, w.router.data(), 0, w.router.size() * sizeof(float));
        }
    }
    std::vector<float> x_all(size_t(t_max * s.d));
    moe::fill(x_all.data(), x_all.size(), 0, moe::kKeyX, moe::kInputSd);

    for (int64_t T : tokens) {
        ggml_init_params gparams{ggml_tensor_overhead() * size_t(64 * copies + 64) + ggml_graph_overhead_custom(
                                                                                      size_t(64 * copies + 64), false),
                                 nullptr, true};
        ggml_context* gctx = ggml_init(gparams);
        ggml_cgraph* gf = ggml_new_graph_custom(gctx, size_t(64 * copies + 64), false);
        ggml_tensor* x = ggml_new_tensor_2d(gctx, GGML_TYPE_F32, s.d, T);
        ggml_set_input(x);
        ggml_set_output(x);  // else the allocator reuses its memory after its last reader, and the next call reads that
        ggml_tensor* y0 = nullptr;
        ggml_tensor* sel0 = nullptr;
        for (int c = 0; c < copies; ++c) {
            ggml_tensor* sel = nullptr;
            ggml_tensor* y = moe_block(gctx, gf, layers[size_t(c)], x, s, T, &sel);
            ggml_set_output(y);
            ggml_build_forward_expand(gf, y);
            if (c == 0) {
                y0 = y;
                sel0 = sel;
                ggml_set_output(sel);
            }
        }
        ggml_gallocr_t galloc = ggml_gallocr_new(ggml_backend_cpu_buffer_type());
        if (!ggml_gallocr_alloc_graph(galloc, gf)) {
            std::fprintf(stderr, "ggml_moe: graph allocation failed at T=%lld\n", (long long)T);
            return 1;
        }
        ggml_backend_tensor_set(x, x_all.data(), 0, size_t(T * s.d) * sizeof(float));
        if (ggml_backend_graph_compute(backend, gf) != GGML_STATUS_SUCCESS) {
            std::fprintf(stderr, "ggml_moe: graph compute failed at T=%lld\n", (long long)T);
            return 1;
        }
        moe::Stats const st = moe::measure([&] { ggml_backend_graph_compute(backend, gf); }, min_reps);

        // argsort_top_k is a view of the [E, T] argsort: rows nb[1] bytes apart.
        std::vector<int32_t> sorted(ggml_nbytes(sel0) / sizeof(int32_t)), sel(size_t(T * s.k));
        ggml_backend_tensor_get(sel0, sorted.data(), 0, ggml_nbytes(sel0));
        for (int64_t t = 0; t < T; ++t)
            for (int64_t j = 0; j < s.k; ++j) sel[size_t(t * s.k + j)] = sorted[size_t(t) * sel0->nb[1] / 4 + size_t(j)];
        std::vector<float> y(size_t(T * s.d));
        ggml_backend_tensor_get(y0, y.data(), 0, y.size() * sizeof(float));
        double y_abs = 0;
        for (float v : y) y_abs += std::fabs(v);
        // Error against the float64 reference on the fp32 weights before ggml's rounding (tokens 0, T-1).
        double err = 0;
        for (int64_t t : {int64_t(0), T - 1}) {
            auto row = [&](int m, int32_t e, int64_t r, float* out) {
                int64_t const cols = m == 2 ? s.f : s.d, rows = m == 2 ? s.d : s.f;
                uint64_t const key = m == 0 ? moe::kKeyW1 : m == 1 ? moe::kKeyW3 : moe::kKeyW2;
                moe::fill(out, size_t(cols), uint64_t(e * rows * cols + r * cols), key, moe::kWeightSd);
            };
            std::vector<float> wr(size_t(s.E * s.d));
            moe::fill(wr.data(), wr.size(), 0, moe::kKeyRouter, moe::kWeightSd);
            std::vector<double> const ref = moe::reference_token(s, x_all.data() + t * s.d, wr.data(), row);
            err = std::max(err, moe::rel_err(ref, [&](size_t o) { return y[size_t(t * s.d) + o]; }));
        }
        int64_t const distinct = moe::distinct(sel.data(), T * s.k);
        double const bytes = double(distinct) * expert_bytes;
        double const flops = moe::flops(s, T);
        double const sec = st.min_ms / 1e3 / copies;
        moe::Stats per_layer = st;
        per_layer.min_ms /= copies;
        per_layer.median_ms /= copies;
        per_layer.max_ms /= copies;
        std::printf(
            "{\"system\": \"ggml\", \"wtype\": \"%s\", \"protocol\": \"%s\", \"copies\": %d, \"repacked\": %s, "
            "\"shape\": \"%s\", \"T\": %lld, \"d\": %lld, \"f\": %lld, \"E\": %lld, \"k\": %lld, \"threads\": %d, "
            "\"distinct_experts\": %lld, \"route_hash\": \"%s\", \"weight_bytes\": %.0f, \"flops\": %.0f, "
            "\"gflops\": %.2f, \"gbps\": %.2f, \"check_rel_err\": %.3g, \"y_abs_sum\": %.6g, \"forward\": %s}\n",
            type_name.c_str(), cold ? "cold" : "hot", copies, repacked ? "true" : "false", s.name, (long long)T,
            (long long)s.d, (long long)s.f, (long long)s.E, (long long)s.k, threads, (long long)distinct,
            moe::route_hash(sel.data(), T, s.k, s.k).c_str(), bytes, flops, flops / sec / 1e9, bytes / sec / 1e9, err,
            y_abs, moe::json(per_layer).c_str());
        std::fflush(stdout);
        ggml_gallocr_free(galloc);
        ggml_free(gctx);
    }
    ggml_backend_buffer_free(wbuf);
    ggml_backend_buffer_free(rbuf);
    ggml_free(wctx);
    ggml_free(rctx);
    ggml_backend_free(backend);
    return 0;
}
