#pragma once
// smoe: sparse Mixture-of-Experts layers as compile-time policies. The CPU umbrella header; it never
// pulls CUDA headers.

#include "smoe/balance/capacity.hpp"
#include "smoe/balance/loss_free_bias.hpp"
#include "smoe/balance/none.hpp"
#include "smoe/concepts.hpp"
#include "smoe/config.hpp"
#include "smoe/core/balance_loss.hpp"
#include "smoe/core/error.hpp"
#include "smoe/core/routing.hpp"
#include "smoe/core/stats.hpp"
#include "smoe/core/view.hpp"
#include "smoe/core/workspace.hpp"
#include "smoe/expert/swiglu.hpp"
#include "smoe/layer.hpp"
#include "smoe/route.hpp"
#include "smoe/router/expert_choice.hpp"
#include "smoe/router/null_expert.hpp"
#include "smoe/router/relu.hpp"
#include "smoe/router/sinkhorn.hpp"
#include "smoe/router/top_p.hpp"
#include "smoe/router/topk.hpp"
