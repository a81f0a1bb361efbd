// expect: computes fp32 weights only
// Weight formats other than fp32 are storage traits still to come; asking for one must say so.
#include <smoe/smoe.hpp>

smoe::expert::SwiGLU<double>* experts = nullptr;
std::int64_t d = experts->hidden_size();
