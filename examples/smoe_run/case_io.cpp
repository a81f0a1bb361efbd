#include "case_io.hpp"

namespace smoe_run {

Matrix read_matrix(SafetensorsFile const& f, std::string const& name, ConfigExtent rows, ConfigExtent cols,
                   std::string const& config_file) {
    auto const& t = f.at(name);
    smoe::io::require_extents(t, config_file, {rows, cols});
    Matrix m{smoe::io::read_f32(t), t.shape[0], t.shape[1]};
    smoe::io::require_finite(t, std::span<float const>(m.data));
    return m;
}

std::vector<float> read_vector(SafetensorsFile const& f, std::string const& name, ConfigExtent n,
                               std::string const& config_file) {
    auto const& t = f.at(name);
    smoe::io::require_extents(t, config_file, {n});
    auto v = smoe::io::read_f32(t);
    smoe::io::require_finite(t, std::span<float const>(v));
    return v;
}

void check_known_keys(nlohmann::json const& config, std::string const& file, std::set<std::string> const& allowed, char const* what) {
    for (auto const& [key, value] : config.items())
        if (!allowed.count(key))
            smoe::io::detail::file_fail(file, "key " + smoe::io::detail::quoted(key), value.dump(),
                                        std::string("a key of ") + what + " (cases.md); it is unknown");
}

void add_token_major(SafetensorsWriter& w, smoe::RoutingResult const& r, std::string const& suffix) {
    std::int64_t const T = r.num_tokens, K = r.k;
    std::vector<std::int32_t> ids(static_cast<std::size_t>(T * K));
    std::vector<float> wts(static_cast<std::size_t>(T * K));
    for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t j = 0; j < K; ++j) {
            ids[static_cast<std::size_t>(t * K + j)] = r.expert_ids(t, j);
            wts[static_cast<std::size_t>(t * K + j)] = r.expert_weights(t, j);
        }
    w.add_i32("expert_ids" + suffix, {T, K}, ids);
    w.add_f32("expert_weights" + suffix, {T, K}, wts);
}

}  // namespace smoe_run
