// smoe._smoe: SwiGLU experts (fp32 or bf16 weights) behind MoELayer::forward_routed, for a host that
// routes tokens itself (Hugging Face transformers through smoe/hf.py). One translation unit that
// instantiates two layer types only, so that CI builds it in seconds.
//
// Arrays come in through the buffer protocol (numpy arrays, memoryviews): no numpy or libtorch headers,
// no copy of the caller's tensors. bf16 arrives as int16/uint16 bits (torch: t.view(torch.int16).numpy()).
// The packed weights are built once, in the constructor; forward releases the GIL and runs on a thread
// pool shared by every Experts object with the same num_threads.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "smoe/balance/none.hpp"
#include "smoe/core/bf16.hpp"
#include "smoe/core/error.hpp"
#include "smoe/core/thread_pool.hpp"
#include "smoe/expert/swiglu.hpp"
#include "smoe/layer.hpp"
#include "smoe/router/topk.hpp"

namespace py = pybind11;

namespace {

using smoe::detail::fail;

enum class DType { f32, bf16, i32, i64 };

char const* name_of(DType t) {
    switch (t) {
        case DType::f32: return "float32";
        case DType::bf16: return "bf16 (int16/uint16 bits)";
        case DType::i32: return "int32";
        default: return "int64";
    }
}

// A C-contiguous array seen through the buffer protocol; `info` keeps the exporter's buffer alive.
struct Array {
    py::buffer_info info;
    DType dtype{};
    std::vector<std::int64_t> shape;

    template <class T>
    T const* data() const { return static_cast<T const*>(info.ptr); }
    template <class T>
    T* mutable_data() const { return static_cast<T*>(info.ptr); }
    std::int64_t size() const {
        std::int64_t n = 1;
        for (auto s : shape) n *= s;
        return n;
    }
    char const* begin_byte() const { return static_cast<char const*>(info.ptr); }
    char const* end_byte() const { return begin_byte() + size() * info.itemsize; }
};

std::string shape_text(std::vector<std::int64_t> const& s) {
    std::string t = "[";
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (i) t += ", ";
        t += std::to_string(s[i]);
    }
    return t + "]";
}

// The buffer format's dtype; numpy writes int64 as 'l' on LP64 and 'q' elsewhere, hence the itemsize.
bool classify(py::buffer_info const& b, DType& out, std::string& seen) {
    std::string f = b.format;
    seen = "format '" + f + "' (" + std::to_string(b.itemsize) + " bytes)";
    if (!f.empty() && (f[0] == '<' || f[0] == '=' || f[0] == '@')) f.erase(0, 1);
    if (f.size() != 1) return false;
    char const c = f[0];
    if (c == 'f' && b.itemsize == 4) return out = DType::f32, true;
    if ((c == 'h' || c == 'H') && b.itemsize == 2) return out = DType::bf16, true;
    if ((c == 'i' || c == 'l' || c == 'q') && b.itemsize == 4) return out = DType::i32, true;
    if ((c == 'i' || c == 'l' || c == 'q') && b.itemsize == 8) return out = DType::i64, true;
    seen = c == 'e' ? "float16" : c == 'd' ? "float64" : seen;
    return false;
}

// Views `obj` as a C-contiguous array of one of `accepted` dtypes and `ndim` dimensions, or throws
// smoe::invalid_argument (ValueError in Python) naming the argument.
Array view(py::handle obj, char const* name, std::vector<DType> const& accepted, int ndim, bool writable = false) {
    std::string expected;
    for (std::size_t i = 0; i < accepted.size(); ++i) {
        if (i) expected += " or ";
        expected += name_of(accepted[i]);
    }
    if (!PyObject_CheckBuffer(obj.ptr()))
        fail(name, std::string(py::str(obj.get_type().attr("__name__"))),
             "an array with the buffer protocol (numpy; for a torch tensor pass t.numpy(), bf16 as "
             "t.view(torch.int16).numpy()) of " + expected);
    Array a{py::reinterpret_borrow<py::buffer>(obj).request(writable), {}, {}};
    std::string seen;
    bool const known = classify(a.info, a.dtype, seen);
    bool ok = false;
    for (DType t : accepted) ok = ok || (known && t == a.dtype);
    if (!ok) fail(name, "dtype " + (known ? std::string(name_of(a.dtype)) : seen), expected);
    a.shape.assign(a.info.shape.begin(), a.info.shape.end());
    if (a.info.ndim != ndim)
        fail(name, "shape " + shape_text(a.shape), std::to_string(ndim) + " dimensions");
    std::int64_t stride = a.info.itemsize;
    for (int i = ndim - 1; i >= 0; --i) {
        if (a.shape[i] != 1 && a.info.strides[i] != stride)
            fail(name, "a non-contiguous array of shape " + shape_text(a.shape),
                 "a C-contiguous array (numpy.ascontiguousarray, tensor.contiguous())");
        stride *= a.shape[i];
    }
    return a;
}

void require_shape(Array const& a, char const* name, std::vector<std::int64_t> const& want) {
    bool ok = a.shape.size() == want.size();
    for (std::size_t i = 0; ok && i < want.size(); ++i) ok = want[i] < 0 || a.shape[i] == want[i];
    if (ok) return;
    std::string w = "shape [";
    for (std::size_t i = 0; i < want.size(); ++i) {
        if (i) w += ", ";
        w += want[i] < 0 ? std::string("any") : std::to_string(want[i]);
    }
    fail(name, "shape " + shape_text(a.shape), w + "]");
}

float widen(Array const& a, std::int64_t i) {
    return a.dtype == DType::f32 ? a.data<float>()[i] : smoe::to_float(a.data<smoe::bf16>()[i]);
}

// A pool per thread count, shared by every Experts object; its mutex serialises calls (one
// parallel_for at a time per pool). Never destroyed: joining workers during interpreter teardown
// gains nothing.
struct SharedPool {
    explicit SharedPool(std::int64_t n) : pool(n) {}
    std::mutex mu;
    smoe::DefaultThreadPool pool;
};

SharedPool& shared_pool(std::int64_t num_threads) {
    smoe::detail::require_in_range("num_threads", num_threads, 1, smoe::limits::kMaxThreads,
                                   "smoe::limits::kMaxThreads");
    static std::mutex mu;
    static auto* pools = new std::map<std::int64_t, std::unique_ptr<SharedPool>>();
    std::lock_guard lock(mu);
    auto& p = (*pools)[num_threads];
    if (!p) p = std::make_unique<SharedPool>(num_threads);
    return *p;
}

template <class W>
using Layer = smoe::MoELayer<smoe::router::TopK, smoe::expert::SwiGLU<W>, smoe::balance::None>;

// The layer over fused gate_up [E, 2f, d] and down [E, d, f] of format W; packs them (their only read).
template <class W>
std::unique_ptr<Layer<W>> make_layer(smoe::router::TopKConfig const& router, smoe::expert::SwiGLUConfig const& expert,
                                     std::int64_t max_tokens, smoe::MatrixView<float const> gate, Array const& gu,
                                     Array const& dn) {
    auto const w = smoe::expert::SwiGLUWeights<W>::fused(gu.data<W>(), dn.data<W>(), expert);
    return std::make_unique<Layer<W>>(typename Layer<W>::Config{router, expert, {}, max_tokens},
                                      typename Layer<W>::Weights{gate, {}, w});
}

class Experts {
public:
    Experts(py::handle gate_up, py::handle down, std::int64_t top_k, std::int64_t num_threads, std::int64_t max_tokens,
            std::string const& bf16_dot) {
        Array const gu = view(gate_up, "gate_up", {DType::f32, DType::bf16}, 3);
        Array const dn = view(down, "down", {DType::f32, DType::bf16}, 3);
        if (gu.shape[1] % 2 != 0)
            fail("gate_up", "shape " + shape_text(gu.shape), "[num_experts, 2 * intermediate_size, hidden_size]");
        E_ = gu.shape[0], f_ = gu.shape[1] / 2, d_ = gu.shape[2];
        require_shape(dn, "down", {E_, d_, f_});
        if (dn.dtype != gu.dtype)
            fail("down", std::string("dtype ") + name_of(dn.dtype),
                 std::string("gate_up's dtype, ") + name_of(gu.dtype));
        smoe::detail::require_in_range("max_tokens", max_tokens, 1, smoe::limits::kMaxTokens,
                                       "smoe::limits::kMaxTokens");
        auto const dot = smoe::expert::parse_bf16_dot(bf16_dot);
        if (!dot) fail("bf16_dot", bf16_dot, "automatic, off, on or emulated");
        bf16_ = gu.dtype == DType::bf16;
        k_ = top_k;
        chunk_ = max_tokens;
        gate_.assign(static_cast<std::size_t>(E_ * d_), 0.0f);  // never read by forward_routed; the layer asks for one
        smoe::router::TopKConfig const router{.num_experts = E_, .top_k = top_k};
        smoe::expert::SwiGLUConfig const expert{
            .hidden_size = d_, .intermediate_size = f_, .num_experts = E_, .bf16_dot = *dot};
        smoe::MatrixView<float const> const gate(gate_.data(), E_, d_);
        {
            py::gil_scoped_release release;  // packing reads every weight once: let other threads run
            if (bf16_) lb_ = make_layer<smoe::bf16>(router, expert, max_tokens, gate, gu, dn);
            else lf_ = make_layer<float>(router, expert, max_tokens, gate, gu, dn);
        }
        x32_.resize(static_cast<std::size_t>(chunk_ * d_));
        y32_.resize(static_cast<std::size_t>(chunk_ * d_));
        set_num_threads(num_threads);
    }

    std::int64_t num_experts() const { return E_; }
    std::int64_t hidden_size() const { return d_; }
    std::int64_t intermediate_size() const { return f_; }
    std::int64_t top_k() const { return k_; }
    std::int64_t max_tokens() const { return chunk_; }
    std::int64_t num_threads() const { return pool_->pool.num_threads(); }
    char const* weight_dtype() const { return bf16_ ? "bfloat16" : "float32"; }
    bool uses_bf16_dot() const { return bf16_ && lb_->experts().uses_bf16_dot(); }
    std::size_t packed_bytes() const { return bf16_ ? lb_->experts().packed_bytes() : lf_->experts().packed_bytes(); }
    // The layer's workspace for max_tokens rows plus this object's conversion buffers (the routing
    // buffers grow with the largest call, not counted).
    std::size_t workspace_bytes() const {
        std::size_t const own = (x32_.size() + y32_.size() + gate_.size()) * sizeof(float);
        return (bf16_ ? lb_->workspace_size() : lf_->workspace_size()) + own;
    }

    void set_num_threads(std::int64_t n) {
        SharedPool& p = shared_pool(n);
        std::lock_guard lock(mu_);
        pool_ = &p;
        if (bf16_) lb_->set_thread_pool(p.pool);
        else lf_->set_thread_pool(p.pool);
    }

    // out[t] = Σ_j top_k_weights[t, j] · f_{top_k_index[t, j]}(hidden[t]), in fp32, rounded once to
    // hidden's dtype. Validates everything before computing anything, so a bad call writes nothing.
    py::object forward_routed(py::handle hidden, py::handle top_k_index, py::handle top_k_weights, py::object out) {
        Array const x = view(hidden, "hidden", {DType::f32, DType::bf16}, 2);
        require_shape(x, "hidden", {-1, d_});
        std::int64_t const T = x.shape[0];
        Array const ids = view(top_k_index, "top_k_index", {DType::i64, DType::i32}, 2);
        require_shape(ids, "top_k_index", {T, -1});
        std::int64_t const K = ids.shape[1];
        if (K > k_)
            fail("top_k_index", "shape " + shape_text(ids.shape), "at most top_k = " + std::to_string(k_) + " columns");
        Array const w = view(top_k_weights, "top_k_weights", {DType::f32, DType::bf16}, 2);
        require_shape(w, "top_k_weights", {T, K});
        if (out.is_none()) {
            out = x.dtype == DType::f32 ? py::object(py::array_t<float>({T, d_}))
                                        : py::object(py::array_t<std::int16_t>({T, d_}));
        }
        Array const y = view(out, "out", {x.dtype}, 2, /*writable=*/true);
        require_shape(y, "out", {T, d_});
        for (Array const* in : {&x, &ids, &w})
            if (y.size() > 0 && in->size() > 0 && y.begin_byte() < in->end_byte() && in->begin_byte() < y.end_byte())
                fail("out", "an array overlapping an input", "its own memory");
        {
            py::gil_scoped_release release;
            std::lock_guard lock(mu_);
            std::lock_guard pool_lock(pool_->mu);
            convert_routing(ids, w, T, K);
            run(x, y, T, K);
        }
        return out;
    }

private:
    // ids to int32 and weights to fp32 (ids32_, w32_), checked with the Python argument names; the
    // layer checks again per chunk, where its token numbers would be the chunk's.
    void convert_routing(Array const& ids, Array const& w, std::int64_t T, std::int64_t K) {
        auto const n = static_cast<std::size_t>(T * K);
        if (ids32_.size() < n) ids32_.resize(n), w32_.resize(n);  // grows to the largest call, then never
        for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t j = 0; j < K; ++j) {
                std::int64_t const i = t * K + j;
                std::int64_t const e =
                    ids.dtype == DType::i64 ? ids.data<std::int64_t>()[i] : ids.data<std::int32_t>()[i];
                float const wt = widen(w, i);
                auto at = [&] { return " at token " + std::to_string(t) + ", slot " + std::to_string(j); };
                if (e < -1 || e >= E_)
                    fail("top_k_index", std::to_string(e) + at(),
                         "an expert id in [0, " + std::to_string(E_) + ") or -1 for an empty slot");
                if (e >= 0 && !std::isfinite(wt))
                    fail("top_k_weights", smoe::detail::to_text(wt) + at(), "finite weights");
                for (std::int64_t jj = 0; jj < j && e >= 0; ++jj)
                    if (ids32_[static_cast<std::size_t>(t * K + jj)] == e)
                        fail("top_k_index", std::to_string(e) + at(), "each expert at most once per token");
                ids32_[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(e);
                w32_[static_cast<std::size_t>(i)] = wt;
            }
    }

    // Chunks of max_tokens rows: rows are independent (experts.md §1 rule 3), so chunking changes no bit.
    void run(Array const& x, Array const& y, std::int64_t T, std::int64_t K) {
        for (std::int64_t t0 = 0; t0 < T; t0 += chunk_) {
            std::int64_t const n = std::min(chunk_, T - t0);
            float const* xs = x.dtype == DType::f32 ? x.data<float>() + t0 * d_ : x32_.data();
            if (x.dtype == DType::bf16)
                for (std::int64_t i = 0; i < n * d_; ++i)
                    x32_[static_cast<std::size_t>(i)] = smoe::to_float(x.data<smoe::bf16>()[t0 * d_ + i]);
            float* ys = y.dtype == DType::f32 ? y.mutable_data<float>() + t0 * d_ : y32_.data();
            smoe::MatrixView<float const> const xv(xs, n, d_);
            smoe::MatrixView<std::int32_t const> const iv(ids32_.data() + t0 * K, n, K);
            smoe::MatrixView<float const> const wv(w32_.data() + t0 * K, n, K);
            smoe::MatrixView<float> const yv(ys, n, d_);
            if (bf16_) lb_->forward_routed(xv, iv, wv, yv);
            else lf_->forward_routed(xv, iv, wv, yv);
            if (y.dtype == DType::bf16)
                for (std::int64_t i = 0; i < n * d_; ++i)
                    y.mutable_data<smoe::bf16>()[t0 * d_ + i] = smoe::to_bf16(y32_[static_cast<std::size_t>(i)]);
        }
    }

    std::int64_t E_ = 0, f_ = 0, d_ = 0, k_ = 0, chunk_ = 0;
    bool bf16_ = false;
    std::vector<float> gate_, x32_, y32_, w32_;
    std::vector<std::int32_t> ids32_;
    std::unique_ptr<Layer<float>> lf_;
    std::unique_ptr<Layer<smoe::bf16>> lb_;
    SharedPool* pool_ = nullptr;
    std::mutex mu_;  // the layer's workspace and the scratch above serve one call at a time
};

}  // namespace

PYBIND11_MODULE(_smoe, m) {
    m.doc() = "smoe's SwiGLU experts for hosts that route tokens themselves (see smoe.Experts, smoe.hf)";
    py::class_<Experts>(m, "Experts", R"doc(
SwiGLU experts of one MoE layer: f_e(x) = W2 (silu(W1 x) * W3 x), packed once at construction.

gate_up: [E, 2f, d], gate rows first (Hugging Face `gate_up_proj`); down: [E, d, f] (`down_proj`).
Both float32, or both bf16 as int16/uint16 bits. C-contiguous; read once, not kept.
top_k: the most slots per token forward() will see. num_threads: smoe's pool (shared with every
Experts of the same count). max_tokens: rows per internal call (bounds the workspace; any T works).
bf16_dot: "automatic" (AVX512-BF16 where the CPU has it), "off", "on" or "emulated".)doc")
        .def(py::init<py::handle, py::handle, std::int64_t, std::int64_t, std::int64_t, std::string const&>(),
             py::arg("gate_up"), py::arg("down"), py::arg("top_k"), py::kw_only(), py::arg("num_threads") = 1,
             py::arg("max_tokens") = 256, py::arg("bf16_dot") = "automatic")
        .def("forward_routed", &Experts::forward_routed, py::arg("hidden"), py::arg("top_k_index"),
             py::arg("top_k_weights"), py::kw_only(), py::arg("out") = py::none(), R"doc(
out[t] = sum_j top_k_weights[t, j] * f_{top_k_index[t, j]}(hidden[t]) (fp32 inside, rounded once).

hidden: [T, d] float32 or bf16 bits; top_k_index: [T, K] int64 or int32, K <= top_k, -1 = empty slot;
top_k_weights: [T, K] float32 or bf16 bits. out: optional [T, d] array of hidden's dtype to write into
(must not overlap the inputs); a new numpy array otherwise. Releases the GIL.
Bad input raises ValueError naming the argument; nothing is written then.)doc")
        .def_property("num_threads", &Experts::num_threads, &Experts::set_num_threads)
        .def_property_readonly("num_experts", &Experts::num_experts)
        .def_property_readonly("hidden_size", &Experts::hidden_size)
        .def_property_readonly("intermediate_size", &Experts::intermediate_size)
        .def_property_readonly("top_k", &Experts::top_k)
        .def_property_readonly("max_tokens", &Experts::max_tokens)
        .def_property_readonly("weight_dtype", &Experts::weight_dtype)
        .def_property_readonly("uses_bf16_dot", &Experts::uses_bf16_dot)
        .def_property_readonly("packed_bytes", &Experts::packed_bytes)
        .def_property_readonly("workspace_bytes", &Experts::workspace_bytes);
}
