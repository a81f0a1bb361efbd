#pragma once
// smoe::store::PackedFile: the routed experts of every MoE layer of a model, already in the panel
// layout and storage format the kernels read (each expert type's own packing: expert::SwiGLU<W>,
// expert::QuantSwiGLU), so loading is mmap + validation and never packs. Written once, one expert at
// a time (PackedWriter: peak memory about one expert), by `smoe-pack` or store::pack_experts.
//
// Layout, version 5, little-endian (every offset from the file's start). Version 2 gave FormatEntry its
// ternary scale and packing fields (format::Ternary records); version 3 records which of the model's
// experts each record is (ExpertEntry::expert, LayerEntry::model_experts), so a rank's file of its own
// experts is recognised by their ids, not by its count; version 4 records FP8 experts' bf16 dot panels
// with their k pairs in 64-byte groups of two (bf16_dot_quant.hpp's byte order for vpermt2b: a version
// 3 file's FP8 panels would read as other weights); version 5 packs int8 dot panels with one zero
// point per matrix without zero tables (int8_dot.hpp) and MXFP4 experts into int8 dot panels when the
// file's flags ask for those and not for bf16 dot ones. Versions 1 to 4 were written only before any
// release (by smoe's own tests and demos): this reader refuses them, naming both versions (repack).
//
//   [0, 128)               FileHeader: magic "SMOEPACK", version, file size, where the table is,
//                          a checksum of the table and one of the header itself
//   [2 MiB, table_offset)  expert records, each at a multiple of 4 KiB (2 MiB from 2 MiB on), so a
//                          record maps onto whole pages and a large one onto huge pages; the bytes are
//                          the expert's packed record exactly as it sits in memory when resident
//   [table_offset, end)    num_layers LayerEntry, then every layer's ExpertEntry in layer order
//
// A LayerEntry says which expert type packed the layer (kind: the record's meaning), the packing
// variant (flags: bf16 k-pair panels, int8 dot panels), d, f, E (the records it holds) and the model's
// expert count; an ExpertEntry says which of the model's experts it is (its global id), where its
// record is, its size, its XXH64 checksum and its formats (QuantSwiGLU: gate/up and down; an act-order
// int4 matrix's column order, its int32 g_idx, ends the record: gate_up's d, then down's f). A layer's
// ids are strictly increasing in [0, model experts): all of them (a whole model's file), or a rank's
// (pack_hf_layers with an expert list). A reader names the model's experts it wants (PackedSource::
// experts) and finds them by id (records_of): another rank's file, or one packed for another expert
// list, fails naming the file, the layer and both id lists.
//
// Validation: open() checks the header (magic, version, its checksum, the file size it records: a
// truncated file fails here), the table (its checksum, which the header's checksum covers in turn; every
// entry's kind, extents, record range and expert id);
// a record's own checksum is checked when the record is first used (ExpertStore: a mapped expert on
// its first use, a cached one on its first read into the cache) or by verify(). Every failure is a
// smoe::io::file_error naming the file, the layer and expert, what differs and what was expected.
// The expert type reading a layer holds the layer's kind, flags, d, f, E and every record's size to
// its own configuration (a mismatch names both).

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "smoe/core/error.hpp"
#include "smoe/core/limits.hpp"
#include "smoe/io/file_error.hpp"
#include "smoe/io/mapped_file.hpp"
#include "smoe/quant/format.hpp"

namespace smoe::inline v0::store {

static_assert(std::endian::native == std::endian::little, "smoe::store: packed expert files are little-endian");

// XXH64 (Yann Collet's xxHash, 64-bit, seed 0): the checksum of every record and of the header and
// table; several GB/s in scalar code, so checking a record costs little next to reading it.
inline std::uint64_t xxh64(std::span<std::byte const> data, std::uint64_t seed = 0) {
    constexpr std::uint64_t P1 = 0x9E3779B185EBCA87ull, P2 = 0xC2B2AE3D27D4EB4Full, P3 = 0x165667B19E3779F9ull,
                            P4 = 0x85EBCA77C2B2AE63ull, P5 = 0x27D4EB2F165667C5ull;
    auto const rd64 = [](std::byte const* p) {
        std::uint64_t v;
        std::memcpy(&v, p, 8);
        return v;
    };
    auto const rd32 = [](std::byte const* p) {
        std::uint32_t v;
        std::memcpy(&v, p, 4);
        return v;
    };
    auto const round = [](std::uint64_t acc, std::uint64_t in) { return std::rotl(acc + in * P2, 31) * P1; };
    auto const merge = [&](std::uint64_t acc, std::uint64_t v) { return (acc ^ round(0, v)) * P1 + P4; };
    std::byte const* p = data.data();
    std::byte const* const end = p + data.size();
    std::uint64_t h;
    if (data.size() >= 32) {
        std::uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
        for (; p + 32 <= end; p += 32) {
            v1 = round(v1, rd64(p));
            v2 = round(v2, rd64(p + 8));
            v3 = round(v3, rd64(p + 16));
            v4 = round(v4, rd64(p + 24));
        }
        h = std::rotl(v1, 1) + std::rotl(v2, 7) + std::rotl(v3, 12) + std::rotl(v4, 18);
        h = merge(merge(merge(merge(h, v1), v2), v3), v4);
    } else {
        h = seed + P5;
    }
    h += static_cast<std::uint64_t>(data.size());
    for (; p + 8 <= end; p += 8) h = std::rotl(h ^ round(0, rd64(p)), 27) * P1 + P4;
    if (p + 4 <= end) {
        h = std::rotl(h ^ (std::uint64_t(rd32(p)) * P1), 23) * P2 + P3;
        p += 4;
    }
    for (; p < end; ++p) h = std::rotl(h ^ (std::uint64_t(std::to_integer<std::uint8_t>(*p)) * P5), 11) * P1;
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

inline constexpr std::uint32_t kPackedVersion = 5;
inline constexpr char kPackedMagic[8] = {'S', 'M', 'O', 'E', 'P', 'A', 'C', 'K'};
inline constexpr std::uint64_t kPackedDataOffset = std::uint64_t(2) << 20;  // huge-page aligned
inline constexpr std::uint64_t kRecordAlignment = 4096;                    // a page
inline constexpr std::uint64_t kHugeRecordAlignment = std::uint64_t(2) << 20;

// `bytes` rounded up to whole pages (a cache slot, an O_DIRECT read).
inline constexpr std::uint64_t whole_pages(std::uint64_t bytes) {
    return (bytes + kRecordAlignment - 1) / kRecordAlignment * kRecordAlignment;
}

// Where a record of `bytes` bytes starts at or after `offset`.
inline std::uint64_t record_offset(std::uint64_t offset, std::uint64_t bytes) {
    std::uint64_t const a = bytes >= kHugeRecordAlignment ? kHugeRecordAlignment : kRecordAlignment;
    return (offset + a - 1) / a * a;
}

// Which expert type packed a layer: what its records mean.
enum class ExpertKind : std::uint32_t { swiglu_f32 = 1, swiglu_bf16 = 2, swiglu_int8 = 3, quant_swiglu = 4 };
inline char const* to_string(ExpertKind k) {
    switch (k) {
        case ExpertKind::swiglu_f32: return "SwiGLU<float>";
        case ExpertKind::swiglu_bf16: return "SwiGLU<bf16>";
        case ExpertKind::swiglu_int8: return "SwiGLU<int8_t>";
        case ExpertKind::quant_swiglu: return "QuantSwiGLU";
        default: return "unknown";
    }
}
// The packing variant, part of the layout: SwiGLU<bf16>'s k-pair panels (AVX512-BF16 path) and
// QuantSwiGLU's int8 dot and bf16 dot panels; non-gated relu² experts' 16 up units per gate/up panel.
enum PackFlags : std::uint32_t { kPackBf16KPairs = 1u, kPackInt8Dot = 2u, kPackBf16DotQuant = 4u, kPackNonGated = 8u };

#pragma pack(push, 1)
struct FileHeader {
    char magic[8];
    std::uint32_t version;
    std::uint32_t header_bytes;  // sizeof(FileHeader)
    std::uint64_t file_bytes;
    std::uint64_t num_layers;
    std::uint64_t num_experts_total;  // ExpertEntry count
    std::uint64_t data_offset;
    std::uint64_t table_offset;
    std::uint64_t table_bytes;
    std::uint64_t table_checksum;
    std::uint64_t header_checksum;  // of these 128 bytes with this field 0
    std::uint8_t reserved[128 - 80];
};
struct LayerEntry {
    std::int64_t layer_index;  // the model's decoder layer
    std::uint32_t kind;        // ExpertKind
    std::uint32_t flags;       // PackFlags
    std::int64_t hidden_size, intermediate_size, num_experts;
    std::uint64_t first_expert;  // index of its expert 0 among the ExpertEntry
    std::int64_t model_experts;  // the model's experts in this layer (the ids' range): num_experts, or more in a rank's file
    std::uint8_t reserved[64 - 56];
};
struct FormatEntry {
    std::uint8_t kind, symmetric, act_order, ternary_scale;
    std::int32_t ternary_packing;
    std::int64_t group, block_rows, block_cols;
};
struct ExpertEntry {
    std::uint64_t offset, bytes, checksum;
    FormatEntry gate_up, down;  // QuantSwiGLU: the formats of W1/W3 and W2; zero for SwiGLU<W>
    std::int64_t expert;        // the model's expert id (global id) of this record
    std::uint8_t reserved[128 - 96];
};
#pragma pack(pop)
static_assert(sizeof(FileHeader) == 128 && sizeof(LayerEntry) == 64 && sizeof(FormatEntry) == 32 && sizeof(ExpertEntry) == 128);

inline FormatEntry encode(quant::Format const& f) {
    return {static_cast<std::uint8_t>(f.kind), std::uint8_t(f.symmetric), std::uint8_t(f.act_order), static_cast<std::uint8_t>(f.ternary_scale),
            static_cast<std::int32_t>(f.packing), f.group, f.block_rows, f.block_cols};
}
inline quant::Format decode(FormatEntry const& e) {
    quant::Format f;
    f.kind = static_cast<quant::Kind>(e.kind);
    f.symmetric = e.symmetric != 0;
    f.act_order = e.act_order != 0;
    f.group = e.group;
    f.block_rows = e.block_rows;
    f.block_cols = e.block_cols;
    f.ternary_scale = static_cast<quant::TernaryScale>(e.ternary_scale);
    f.packing = static_cast<quant::TernaryPacking>(e.ternary_packing);
    return f;
}

// What an expert type says about one layer and one record when it writes them (PackedWriter).
struct LayerInfo {
    ExpertKind kind = ExpertKind::swiglu_f32;
    std::uint32_t flags = 0;
    std::int64_t hidden_size = 0, intermediate_size = 0;
};
struct RecordInfo {
    quant::Format gate_up{}, down{};
};

// A layer of an open file, as validated.
struct PackedLayer {
    std::int64_t layer_index = 0;
    ExpertKind kind{};
    std::uint32_t flags = 0;
    std::int64_t hidden_size = 0, intermediate_size = 0, num_experts = 0;
    std::uint64_t first_expert = 0;
    std::int64_t model_experts = 0;  // the range of its records' ids
};
struct PackedRecord {
    std::uint64_t offset = 0, bytes = 0, checksum = 0;
    quant::Format gate_up{}, down{};
    std::int64_t expert = 0;  // the model's expert id
};

// "0-7, 9, 12-15": a sorted id list for messages.
inline std::string id_ranges(std::span<std::int64_t const> ids) {
    std::string s;
    for (std::size_t i = 0; i < ids.size();) {
        std::size_t j = i;
        while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
        s += (s.empty() ? "" : ", ") + std::to_string(ids[i]) + (j > i ? "-" + std::to_string(ids[j]) : "");
        i = j + 1;
    }
    return s.empty() ? "none" : s;
}

class PackedFile {
public:
    static std::shared_ptr<PackedFile const> open(std::filesystem::path const& path) {
        auto f = std::shared_ptr<PackedFile>(new PackedFile());
        f->path_ = path;
        f->name_ = path.string();
        f->map_ = io::MappedFile::open(path, kHugeRecordAlignment);
        f->parse();
#if SMOE_IO_HAS_MMAP && defined(MADV_HUGEPAGE)
        // The records from data_offset on sit at the same 2 MiB alignment in memory as in the file: a
        // kernel that backs file pages with huge folios (read-only THP for files) maps them with one TLB
        // entry per 2 MiB. Elsewhere the advice fails (EINVAL) and changes nothing.
        if (f->map_.is_mapping() && f->file_bytes() > kPackedDataOffset)
            (void)::madvise(const_cast<std::byte*>(f->map_.bytes().data()) + kPackedDataOffset, f->file_bytes() - kPackedDataOffset, MADV_HUGEPAGE);
#endif
        return f;
    }

    std::filesystem::path const& path() const { return path_; }
    std::string const& name() const { return name_; }
    std::size_t file_bytes() const { return map_.bytes().size(); }
    // Every record's bytes: the experts' size, without the alignment holes file_bytes() counts.
    std::uint64_t record_bytes() const {
        std::uint64_t n = 0;
        for (auto const& r : records_) n += r.bytes;
        return n;
    }
    std::span<PackedLayer const> layers() const { return layers_; }
    // The entry of decoder layer `layer_index`; an error naming the layers the file has when absent.
    PackedLayer const& layer(std::int64_t layer_index) const {
        for (auto const& l : layers_)
            if (l.layer_index == layer_index) return l;
        std::string have;
        for (auto const& l : layers_) have += (have.empty() ? "" : ", ") + std::to_string(l.layer_index);
        io::detail::file_fail(name_, "layer", layer_index, "a layer the file holds (" + (have.empty() ? "none" : have) + ")");
    }
    // Record e of the layer (e: its position in the file, 0..num_experts-1).
    PackedRecord const& record(PackedLayer const& l, std::int64_t e) const { return records_[l.first_expert + static_cast<std::size_t>(e)]; }
    // The model's expert ids of the layer's records, strictly increasing.
    std::span<std::int64_t const> expert_ids(PackedLayer const& l) const {
        return std::span(ids_).subspan(l.first_expert, static_cast<std::size_t>(l.num_experts));
    }
    // The record of the model's expert `id`, or -1 when the layer does not hold it.
    std::int64_t find(PackedLayer const& l, std::int64_t id) const {
        auto const ids = expert_ids(l);
        auto const it = std::lower_bound(ids.begin(), ids.end(), id);
        return it != ids.end() && *it == id ? static_cast<std::int64_t>(it - ids.begin()) : -1;
    }
    // The records of the model's experts `ids` (a reader's experts in its own order; empty: every
    // record). A file without one of them (another rank's, or packed for another expert list) fails
    // naming the layer, the ids the reader expects and the ids the file holds.
    std::vector<std::int64_t> records_of(PackedLayer const& l, std::span<std::int64_t const> ids) const {
        std::vector<std::int64_t> r(ids.empty() ? static_cast<std::size_t>(l.num_experts) : ids.size());
        for (std::size_t i = 0; i < r.size(); ++i) r[i] = ids.empty() ? static_cast<std::int64_t>(i) : find(l, ids[i]);
        if (std::find(r.begin(), r.end(), std::int64_t(-1)) != r.end()) {
            std::vector<std::int64_t> want(ids.begin(), ids.end());
            std::sort(want.begin(), want.end());
            io::detail::file_fail(name_, "layer " + std::to_string(l.layer_index) + " expert ids", id_ranges(expert_ids(l)),
                                  id_ranges(want) + " (the experts the reader holds: a file packed for another rank or expert list?)");
        }
        return r;
    }
    // The record's bytes in the mapping (the OS pages them in on first touch).
    std::span<std::byte const> mapped(PackedRecord const& r) const { return map_.bytes().subspan(r.offset, r.bytes); }

    // Throws a file_error naming the layer and expert when bytes (a copy of the record, or the
    // mapping itself) do not have the record's checksum.
    void check(PackedLayer const& l, std::int64_t e, std::span<std::byte const> bytes) const {
        auto const& r = record(l, e);
        std::uint64_t const h = xxh64(bytes);
        if (h != r.checksum)
            io::detail::file_fail(name_, where(l, e) + " checksum", hex(h), hex(r.checksum) + " (the table's XXH64 of the record: its bytes are corrupted)");
    }
    void verify(PackedLayer const& l, std::int64_t e) const { check(l, e, mapped(record(l, e))); }
    void verify_all() const {
        for (auto const& l : layers_)
            for (std::int64_t e = 0; e < l.num_experts; ++e) verify(l, e);
    }
    // Asks the OS to drop the file's pages from its page cache (posix_fadvise DONTNEED; dirty pages
    // are not dropped), so that a benchmark reads from the disk; returns whether the OS accepted. The
    // pages this process touched through its own mapping are unmapped first (madvise DONTNEED: the
    // mapping stays valid and faults them in again), else the page cache keeps them.
    bool drop_page_cache() const {
#if SMOE_IO_HAS_MMAP
        auto const m = map_.bytes();
        if (map_.is_mapping()) (void)::madvise(const_cast<std::byte*>(m.data()), m.size(), MADV_DONTNEED);
        int const fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) return false;
        bool const ok = ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0;
        ::close(fd);
        return ok;
#else
        return false;
#endif
    }
    // "layer 3 expert 12", and the record's position when a rank's file holds it elsewhere.
    std::string where(PackedLayer const& l, std::int64_t e) const {
        std::int64_t const id = records_.empty() ? e : record(l, e).expert;
        return "layer " + std::to_string(l.layer_index) + " expert " + std::to_string(id) +
               (id != e ? " (record " + std::to_string(e) + " of the layer)" : "");
    }

private:
    PackedFile() = default;

    static std::string hex(std::uint64_t v) {
        char b[24];
        std::snprintf(b, sizeof b, "0x%016llx", static_cast<unsigned long long>(v));
        return b;
    }
    template <class T>
    [[noreturn]] void fail(std::string const& what, T const& v, std::string const& expected) const {
        io::detail::file_fail(name_, what, v, expected);
    }

    void parse() {
        auto const bytes = map_.bytes();
        FileHeader h{};
        if (bytes.size() < sizeof h) fail("size", bytes.size(), "at least the 128-byte header of a packed expert file");
        std::memcpy(&h, bytes.data(), sizeof h);
        if (std::memcmp(h.magic, kPackedMagic, 8) != 0) fail("magic", std::string(h.magic, 8), "'SMOEPACK' (a file written by smoe-pack)");
        if (h.version != kPackedVersion)
            fail("version", h.version,
                 std::to_string(kPackedVersion) + " (the format this smoe reads" +
                     (h.version < kPackedVersion ? ": an older smoe-pack wrote it, before the int8 dot panels' zero tables and MXFP4 (v5), the FP8 "
                                                      "panels' pair groups (v4), the experts' ids (v3) and ternary fields (v2)"
                                                    : "") +
                     "; repack the model with this smoe-pack)");
        FileHeader z = h;
        z.header_checksum = 0;
        std::uint64_t const hc = xxh64(std::as_bytes(std::span(&z, 1)));
        if (hc != h.header_checksum) fail("header checksum", hex(hc), hex(h.header_checksum) + " (the header's bytes are corrupted)");
        if (h.header_bytes != sizeof h) fail("header_bytes", h.header_bytes, std::to_string(sizeof h));
        if (h.file_bytes != bytes.size())
            fail("size", std::to_string(bytes.size()) + " bytes", std::to_string(h.file_bytes) + " bytes, as the header records (a truncated or extended file)");
        if (h.num_layers > std::uint64_t(limits::kMaxLayers)) fail("num_layers", h.num_layers, "at most smoe::limits::kMaxLayers");
        if (h.num_experts_total > std::uint64_t(limits::kMaxLayers) * std::uint64_t(limits::kMaxExperts))
            fail("num_experts_total", h.num_experts_total, "at most kMaxLayers * kMaxExperts");
        std::uint64_t const want_table = h.num_layers * sizeof(LayerEntry) + h.num_experts_total * sizeof(ExpertEntry);
        if (h.data_offset != kPackedDataOffset) fail("data_offset", h.data_offset, std::to_string(kPackedDataOffset));
        if (h.table_bytes != want_table || h.table_offset < h.data_offset || h.table_offset > bytes.size() ||
            bytes.size() - h.table_offset != h.table_bytes)
            fail("table", "[" + std::to_string(h.table_offset) + ", +" + std::to_string(h.table_bytes) + ")",
                 std::to_string(want_table) + " bytes (" + std::to_string(h.num_layers) + " layers, " + std::to_string(h.num_experts_total) +
                     " experts) ending the file at " + std::to_string(bytes.size()));
        auto const table = bytes.subspan(h.table_offset, h.table_bytes);
        std::uint64_t const tc = xxh64(table);
        if (tc != h.table_checksum) fail("table checksum", hex(tc), hex(h.table_checksum) + " (the layer/expert table is corrupted)");
        std::uint64_t next_expert = 0;
        for (std::uint64_t i = 0; i < h.num_layers; ++i) {
            LayerEntry le{};
            std::memcpy(&le, table.data() + i * sizeof le, sizeof le);
            std::string const at = "layer entry " + std::to_string(i);
            if (le.kind < 1 || le.kind > 4) fail(at + " kind", le.kind, "1-4 (SwiGLU<float>, <bf16>, <int8_t>, QuantSwiGLU)");
            auto dim = [&](char const* k, std::int64_t v, std::int64_t hi) {
                if (v < 1 || v > hi) fail(at + " " + k, v, "in [1, " + std::to_string(hi) + "]");
            };
            dim("hidden_size", le.hidden_size, limits::kMaxDimension);
            dim("intermediate_size", le.intermediate_size, limits::kMaxDimension);
            dim("num_experts", le.num_experts, limits::kMaxExperts);
            if (le.first_expert != next_expert) fail(at + " first_expert", le.first_expert, std::to_string(next_expert) + " (layers in order)");
            next_expert += static_cast<std::uint64_t>(le.num_experts);
            if (next_expert > h.num_experts_total) fail(at + " num_experts", le.num_experts, "experts within the table's count");
            if (le.model_experts < le.num_experts || le.model_experts > limits::kMaxExperts)
                fail(at + " model_experts", le.model_experts, "in [num_experts " + std::to_string(le.num_experts) + ", " + std::to_string(limits::kMaxExperts) + "]");
            for (auto const& l : layers_)
                if (l.layer_index == le.layer_index) fail(at + " layer_index", le.layer_index, "each layer once");
            layers_.push_back({le.layer_index, static_cast<ExpertKind>(le.kind), le.flags, le.hidden_size, le.intermediate_size,
                               le.num_experts, le.first_expert, le.model_experts});
        }
        if (next_expert != h.num_experts_total) fail("num_experts_total", h.num_experts_total, std::to_string(next_expert) + " (the layers' sum)");
        std::vector<PackedRecord> records(h.num_experts_total);
        ids_.resize(h.num_experts_total);
        std::uint64_t end = h.data_offset;
        std::size_t li = 0;
        for (std::uint64_t i = 0; i < h.num_experts_total; ++i) {
            while (li + 1 < layers_.size() && i >= layers_[li + 1].first_expert) ++li;
            ExpertEntry x{};
            std::memcpy(&x, table.data() + h.num_layers * sizeof(LayerEntry) + i * sizeof x, sizeof x);
            std::int64_t const e = static_cast<std::int64_t>(i - layers_[li].first_expert);
            std::string const at = where(layers_[li], e);
            // The ids name the model's experts a rank holds: strictly increasing (so unique) and in range.
            std::int64_t const lo = e == 0 ? 0 : ids_[i - 1] + 1;
            if (x.expert < lo || x.expert >= layers_[li].model_experts)
                fail(at + " id", x.expert,
                     "in [" + std::to_string(lo) + ", " + std::to_string(layers_[li].model_experts) +
                         ") (a layer's expert ids strictly increasing, below its model_experts)");
            ids_[i] = x.expert;
            if (x.bytes == 0 || x.offset != record_offset(x.offset, x.bytes) || x.offset < end || x.offset > h.table_offset ||
                h.table_offset - x.offset < x.bytes)
                fail(at + " record", "[" + std::to_string(x.offset) + ", +" + std::to_string(x.bytes) + ")",
                     "an aligned, non-empty range after the previous record (" + std::to_string(end) + ") and before the table (" +
                         std::to_string(h.table_offset) + ")");
            end = x.offset + x.bytes;
            auto fmt = [&](FormatEntry const& e, char const* part) {
                if (e.kind > static_cast<std::uint8_t>(quant::Kind::ternary)) fail(at + " " + part + " format kind", int(e.kind), "a smoe::quant::Kind (0-6)");
                if (e.ternary_scale > static_cast<std::uint8_t>(quant::TernaryScale::group) ||
                    e.ternary_packing < 0 || e.ternary_packing > static_cast<std::int32_t>(quant::TernaryPacking::b3))
                    fail(at + " " + part + " ternary scale/packing", std::to_string(e.ternary_scale) + "/" + std::to_string(e.ternary_packing),
                         "a smoe::quant::TernaryScale (0-2) and TernaryPacking (0-1)");
                quant::Format const f = decode(e);
                std::int64_t const C = std::string_view(part) == "down" ? layers_[li].intermediate_size : layers_[li].hidden_size;
                f.check(name_ + ": " + at + " " + part, 0, C);
                return f;
            };
            records[i] = {x.offset, x.bytes, x.checksum, fmt(x.gate_up, "gate_up"), fmt(x.down, "down"), x.expert};
        }
        records_ = std::move(records);
    }

    std::filesystem::path path_;
    std::string name_;
    io::MappedFile map_;
    std::vector<PackedLayer> layers_;
    std::vector<PackedRecord> records_;
    std::vector<std::int64_t> ids_;  // records_[i].expert, contiguous for find
};

// Writes a packed expert file one record at a time: begin_layer, add (E records, in expert order),
// end_layer, ..., finish. A layer of the whole model: begin_layer(l, info) and add(record, info), the
// ids then 0..E-1. A rank's: begin_layer(l, info, model_experts) and add(record, info, id), the ids
// strictly increasing below model_experts. Nothing but the table is held in memory. The file is written under its
// own name; a writer destroyed before finish() leaves no header, so the file fails to open.
class PackedWriter {
public:
    explicit PackedWriter(std::filesystem::path path) : path_(std::move(path)) {
        f_ = std::fopen(path_.string().c_str(), "wb");
        if (!f_) io::detail::file_fail(path_.string(), "file", "not writable", "a path smoe-pack can create");
    }
    PackedWriter(PackedWriter const&) = delete;
    PackedWriter& operator=(PackedWriter const&) = delete;
    ~PackedWriter() {
        if (f_) std::fclose(f_);
    }

    // model_experts: the model's expert count in this layer (the ids' range); 0: the records added.
    void begin_layer(std::int64_t layer_index, LayerInfo const& info, std::int64_t model_experts = 0) {
        if (open_) smoe::detail::fail("begin_layer", layer_index, "end_layer() of layer " + std::to_string(layers_.back().layer_index) + " first");
        for (auto const& l : layers_)
            if (l.layer_index == layer_index) smoe::detail::fail("begin_layer", layer_index, "each layer once");
        LayerEntry le{};
        le.layer_index = layer_index;
        le.kind = static_cast<std::uint32_t>(info.kind);
        le.flags = info.flags;
        le.hidden_size = info.hidden_size;
        le.intermediate_size = info.intermediate_size;
        le.first_expert = experts_.size();
        if (model_experts < 0 || model_experts > limits::kMaxExperts)
            smoe::detail::fail("model_experts", model_experts, "in [0, " + std::to_string(limits::kMaxExperts) + "] (0: the records added)");
        le.model_experts = model_experts;
        layers_.push_back(le);
        open_ = true;
    }
    // expert: the record's id among the model's experts; -1: the next after the previous record's.
    void add(std::span<std::byte const> record, RecordInfo const& info = {}, std::int64_t expert = -1) {
        if (!open_) smoe::detail::fail("add", "a record", "begin_layer() first");
        if (record.empty()) smoe::detail::fail("record", "0 bytes", "a non-empty record");
        auto& le = layers_.back();
        std::int64_t const next = le.num_experts == 0 ? 0 : experts_.back().expert + 1;
        if (expert < 0) expert = next;
        if (expert < next || (le.model_experts > 0 && expert >= le.model_experts))
            smoe::detail::fail("expert id", expert,
                               "in [" + std::to_string(next) + ", " + (le.model_experts > 0 ? std::to_string(le.model_experts) : "inf") +
                                   ") (layer " + std::to_string(le.layer_index) + "'s ids strictly increasing, below model_experts)");
        ExpertEntry x{};
        x.offset = record_offset(pos_, record.size());
        x.bytes = record.size();
        x.checksum = xxh64(record);
        x.gate_up = encode(info.gate_up);
        x.down = encode(info.down);
        x.expert = expert;
        write_at(x.offset, record);
        pos_ = x.offset + x.bytes;
        records_ += x.bytes;
        experts_.push_back(x);
        ++le.num_experts;
    }
    void end_layer() {
        if (!open_ || layers_.back().num_experts == 0) smoe::detail::fail("end_layer", "a layer without records", "begin_layer() and add() first");
        auto& le = layers_.back();
        if (le.model_experts == 0) le.model_experts = experts_.back().expert + 1;
        if (le.model_experts > limits::kMaxExperts)
            smoe::detail::fail("expert id", experts_.back().expert, "below smoe::limits::kMaxExperts (" + std::to_string(limits::kMaxExperts) + ")");
        open_ = false;
    }
    // Bytes the file holds so far (the records written; finish() adds the table).
    std::uint64_t bytes_written() const { return pos_; }
    // The records' own bytes so far, without the alignment between them (what a store reads or
    // caches: a 2.4 MB record takes 4 MiB of the file's length, the rest a hole the file system skips).
    std::uint64_t record_bytes() const { return records_; }

    // Writes the table and then the header: only a finished file opens.
    void finish() {
        if (open_) end_layer();
        std::vector<std::byte> table(layers_.size() * sizeof(LayerEntry) + experts_.size() * sizeof(ExpertEntry));
        if (!layers_.empty()) std::memcpy(table.data(), layers_.data(), layers_.size() * sizeof(LayerEntry));
        if (!experts_.empty()) std::memcpy(table.data() + layers_.size() * sizeof(LayerEntry), experts_.data(), experts_.size() * sizeof(ExpertEntry));
        FileHeader h{};
        std::memcpy(h.magic, kPackedMagic, 8);
        h.version = kPackedVersion;
        h.header_bytes = sizeof h;
        h.num_layers = layers_.size();
        h.num_experts_total = experts_.size();
        h.data_offset = kPackedDataOffset;
        h.table_offset = (pos_ + 63) / 64 * 64;
        h.table_bytes = table.size();
        h.file_bytes = h.table_offset + h.table_bytes;
        h.table_checksum = xxh64(table);
        h.header_checksum = xxh64(std::as_bytes(std::span(&h, 1)));
        write_at(h.table_offset, table);
        write_at(0, std::as_bytes(std::span(&h, 1)));
        // On disk before it is read back: a page cache of dirty pages cannot be dropped (drop_page_cache).
        bool synced = std::fflush(f_) == 0;
#if SMOE_IO_HAS_MMAP
        synced = synced && ::fsync(::fileno(f_)) == 0;
#endif
        if (!synced || std::fclose(f_) != 0) {
            f_ = nullptr;
            io::detail::file_fail(path_.string(), "file", "write failed", "a finished packed expert file");
        }
        f_ = nullptr;
    }

private:
    void write_at(std::uint64_t off, std::span<std::byte const> b) {
        if (!f_) smoe::detail::fail("PackedWriter", "finished", "a writer before finish()");
        if (std::fseek(f_, static_cast<long>(off), SEEK_SET) != 0 || std::fwrite(b.data(), 1, b.size(), f_) != b.size())
            io::detail::file_fail(path_.string(), "file", "write failed at offset " + std::to_string(off), "room for the packed experts");
    }

    std::filesystem::path path_;
    std::FILE* f_ = nullptr;
    std::uint64_t pos_ = kPackedDataOffset, records_ = 0;
    bool open_ = false;
    std::vector<LayerEntry> layers_;
    std::vector<ExpertEntry> experts_;
};

}  // namespace smoe::inline v0::store
