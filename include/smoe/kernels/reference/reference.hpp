#pragma once
// The scalar oracle every fast kernel is tested against: plain loops, double accumulation, written
// from the spec alone. Never used on a hot path.

#include "smoe/kernels/reference/dispatch.hpp"
#include "smoe/kernels/reference/expert_choice.hpp"
#include "smoe/kernels/reference/moe.hpp"
#include "smoe/kernels/reference/null_expert.hpp"
#include "smoe/kernels/reference/rankwise_lora.hpp"
#include "smoe/kernels/reference/relu.hpp"
#include "smoe/kernels/reference/sinkhorn.hpp"
#include "smoe/kernels/reference/swiglu.hpp"
#include "smoe/kernels/reference/top_p.hpp"
#include "smoe/kernels/reference/topk.hpp"
