"""smoe: sparse Mixture-of-Experts layers on the CPU (the C++ library's SwiGLU experts, from Python).

    import smoe
    experts = smoe.Experts(gate_up, down, top_k=2, num_threads=2)   # numpy arrays; packed once
    out = experts.forward_routed(hidden, top_k_index, top_k_weights)  # routing computed by the host

`smoe.hf.register()` makes it a Hugging Face transformers experts implementation (needs torch).
"""
from ._smoe import Experts

__all__ = ["Experts"]
