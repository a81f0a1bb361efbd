// expect: W must be a weight format
// The weight formats are float, smoe::bf16 and std::int8_t; any other storage type must say so.
#include <smoe/smoe.hpp>

smoe::expert::SwiGLU<double>* experts = nullptr;
std::int64_t d = experts->hidden_size();
