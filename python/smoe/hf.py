"""smoe as a Hugging Face transformers (5.x) experts implementation.

    import smoe.hf
    smoe.hf.register()
    model = AutoModelForCausalLM.from_pretrained(path, experts_implementation="smoe")

transformers keeps its router and calls `experts_forward(self, hidden_states, top_k_index,
top_k_weights)` on every experts module decorated with `use_experts_implementation`
(transformers/integrations/moe.py). The module's weights are packed into an `smoe.Experts` on the
first call and kept on the module; a change of the parameters (new tensors, or in-place updates,
which bump the tensor's version) packs them again.

Supported: SiLU-gated experts (SwiGLU) with the default gate on concatenated `gate_up_proj` halves,
transposed or not, without biases or a post-expert norm, fp32 or bf16 weights, CPU tensors, no
gradient. Anything else raises `UnsupportedExperts` naming the family and the flag: never a silent
wrong answer.
"""
import torch

from ._smoe import Experts

NAME = "smoe"


class UnsupportedExperts(NotImplementedError):
    """The experts module has a feature smoe's experts do not implement."""


_options = {"bf16_dot": "automatic", "max_tokens": 256}


def register(name=NAME, *, bf16_dot="automatic", max_tokens=256):
    """Adds `name` ("smoe") to transformers' ExpertsInterface; returns the name.

    bf16_dot: bf16 experts' dot product, as smoe.Experts takes it ("automatic": AVX512-BF16 where the CPU
    has it, which rounds x and silu(g) * u to bf16 as HF's bf16 chain does; "off": fp32 products, rounded
    once at the end). max_tokens: rows per internal call (bounds smoe's workspace, not the batch).
    """
    from transformers.integrations.moe import ExpertsInterface

    _options.update(bf16_dot=bf16_dot, max_tokens=max_tokens)
    ExpertsInterface.register(name, experts_forward)
    return name


def _family(module):
    return getattr(getattr(module, "config", None), "model_type", None) or type(module).__name__


def _is_silu(act):
    from transformers.activations import SiLUActivation

    return isinstance(act, (SiLUActivation, torch.nn.SiLU)) or act is torch.nn.functional.silu


def unsupported_reason(module):
    """Why smoe cannot run this experts module ("flag=value: what it means"), or None when it can."""
    from transformers.integrations.moe import _default_apply_gate

    if not getattr(module, "has_gate", True):
        return "has_gate=False: experts with an up projection only (no gated activation)"
    if getattr(module, "has_bias", False):
        return "has_bias=True: biases on the expert projections"
    if getattr(module, "has_post_expert_norm", False):
        return "has_post_expert_norm=True: a norm after each expert"
    if not getattr(module, "is_concatenated", True):
        return "is_concatenated=False: interleaved gate/up columns"
    if getattr(type(module), "_apply_gate", _default_apply_gate) is not _default_apply_gate:
        return "_apply_gate: a custom gate (%s.%s), not act(gate) * up" % (type(module).__name__, "_apply_gate")
    if not _is_silu(getattr(module, "act_fn", None)):
        return "act_fn=%s: smoe's gated experts use SiLU" % type(getattr(module, "act_fn", None)).__name__
    if getattr(module, "_is_expert_parallel", False):
        return "_is_expert_parallel=True: expert parallelism"
    for p in ("gate_up_proj", "down_proj"):
        w = getattr(module, p, None)
        if not isinstance(w, torch.Tensor) or w.dim() != 3:
            return "%s: a stacked [num_experts, out, in] weight tensor was expected" % p
        if w.device.type != "cpu":
            return "%s.device=%s: smoe runs on the CPU" % (p, w.device)
        if w.dtype not in (torch.float32, torch.bfloat16):
            return "%s.dtype=%s: smoe takes float32 or bfloat16 weights" % (p, w.dtype)
    return None


def _check(module):
    reason = unsupported_reason(module)
    if reason is not None:
        raise UnsupportedExperts("smoe: experts of family '%s' (%s) are not supported: %s"
                                 % (_family(module), type(module).__name__, reason))


def _stacked(w, transposed):
    """[E, out, in] C-contiguous numpy view of a weight (copied only when transposed or strided)."""
    w = w.detach()
    if transposed:
        w = w.transpose(1, 2)
    w = w.contiguous()
    return w.view(torch.int16).numpy() if w.dtype == torch.bfloat16 else w.numpy()


def experts_of(module, top_k):
    """The module's packed smoe.Experts for at least top_k slots, built on first use and kept."""
    cached = getattr(module, "_smoe_experts", None)
    if cached is None:
        _check(module)  # before reading weights that a refused module may not have
    gu, dn = module.gate_up_proj, module.down_proj
    key = (gu.data_ptr(), dn.data_ptr(), gu._version, dn._version, gu.dtype, tuple(gu.shape), tuple(dn.shape),
           tuple(_options.items()))
    if cached is not None and cached[0] == key and cached[1].top_k >= top_k:
        return cached[1]
    _check(module)
    transposed = bool(getattr(module, "is_transposed", False))
    experts = Experts(_stacked(gu, transposed), _stacked(dn, transposed), top_k, num_threads=torch.get_num_threads(),
                      **_options)
    # Plain attribute, not a buffer or submodule: state_dict, .to() and deepcopy never see it.
    object.__setattr__(module, "_smoe_experts", (key, experts))
    return experts


def _numpy(t):
    t = t.detach().contiguous()
    return t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """The ExpertsInterface entry: out[t] = sum_j w[t, j] * expert_{idx[t, j]}(x[t]), in x's dtype."""
    if hidden_states.device.type != "cpu":
        raise UnsupportedExperts("smoe: experts of family '%s': hidden_states on %s; smoe runs on the CPU"
                                 % (_family(self), hidden_states.device))
    experts = experts_of(self, top_k_index.shape[-1])  # refuses unsupported modules first
    if torch.is_grad_enabled() and (hidden_states.requires_grad or self.gate_up_proj.requires_grad):
        raise UnsupportedExperts("smoe: experts of family '%s': smoe computes no gradients; run under "
                                 "torch.no_grad() or torch.inference_mode() (generate() does)" % _family(self))
    x = hidden_states
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError("smoe: hidden_states.dtype = %s: expected float32 or bfloat16" % x.dtype)
    w = top_k_weights
    if w.dtype not in (torch.float32, torch.bfloat16):
        w = w.float()  # float16 widens exactly; float64 weights round once, as the fp32 math would
    n = torch.get_num_threads()
    if experts.num_threads != n:
        experts.num_threads = n
    x = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.empty_like(x)
    experts.forward_routed(_numpy(x), _numpy(top_k_index.reshape(x.shape[0], -1)),
                           _numpy(w.reshape(x.shape[0], -1)), out=_numpy(out))
    return out.view(hidden_states.shape)
