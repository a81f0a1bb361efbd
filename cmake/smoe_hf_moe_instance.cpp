// The one translation unit that compiles io::HfMoeLayer's twelve layer types for this project's tests and
// tools (the others see SMOE_HF_MOE_EXTERN's extern template): it costs about a minute per unit.
#include "smoe/io/hf_moe.hpp"

template class smoe::io::BasicHfMoeLayer<smoe::io::LocalLayers>;
