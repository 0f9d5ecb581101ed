"""The AttnLRP composite (Achtibat et al., ICML 2024) for any transformer graph."""

from __future__ import annotations

from torch import fx
from torch._ops import ops as _ops

from ..ops import ACTIVATIONS, DECAYS, LINEAR, NORM_SCALES, PRODUCTS, SELECTION, SOFTMAX, packet
from ..rules import (
    Attention,
    GatedUnit,
    Identity,
    IdentityRegion,
    L2Normalize,
    NormIdentity,
    Renormalize,
    SoftmaxDT,
    Stop,
    Uniform,
)
from .composite import Composite
from .patterns import AnyOf, NodeInfo, inverse_l2_norm, l2_normalization
from .routing import renormalizes

aten = _ops.aten

_SCALING = frozenset({aten.mul, aten.mul_, aten.multiply, aten.div, aten.div_})
_PASSING = LINEAR | SELECTION | ACTIVATIONS | NORM_SCALES | DECAYS


def _scaled_operands(node: fx.Node, depth: int = 8) -> list[fx.Node]:
    """The other operands of every product or division that the node's value reaches through at most
    ``depth`` element-wise / linear steps (``+ eps``, ``unsqueeze``, a cast, a sigmoid)."""
    chain, frontier, found = {node}, [node], []
    for _ in range(depth):
        following = []
        for current in frontier:
            for user in current.users:
                if user in chain or user.op != "call_function":
                    continue
                p = packet(user.target)
                if p in _SCALING:
                    found += [a for a in user.all_input_nodes if a not in chain]
                if p in _PASSING:
                    chain.add(user)
                    following.append(user)
        frontier = following
    return found


def scales_another(node: fx.Node, info: NodeInfo, depth: int = 8) -> bool:
    """The node's value, through at most ``depth`` element-wise / linear steps (``+ eps``, ``unsqueeze``,
    a cast, a sigmoid), multiplies or divides *another* relevance-carrying tensor: it is a scale (a norm's
    ``rsqrt``, an SSM decay), not the carrier itself. ``sqrt`` used as an activation does not match."""
    return any(a.name in info.reachable for a in _scaled_operands(node, depth))


# Ops that create a tensor filled with one value: a recurrence's initial state (``zeros_like(k[:, 0])``).
_FILLED = frozenset({aten.zeros, aten.zeros_like, aten.new_zeros, aten.full, aten.full_like, aten.new_full,
                     aten.ones, aten.ones_like, aten.new_ones})


def decays_initial_state(node: fx.Node, info: NodeInfo, depth: int = 8) -> bool:
    """The node's value multiplies a recurrence's *initial state*, a tensor created filled (zeros): the
    first step's decay. RWKV's WKV (Peng et al., 2023), with the running maximum ``m`` for stability,

        wkv_t = (e^{m_{t-1} − m'_t} a_{t−1} + e^{u + k_t − m'_t} v_t) / (e^{m_{t-1} − m'_t} b_{t−1} + e^{u + k_t − m'_t}),
        a_t = e^{m_{t-1} − w − m_t} a_{t−1} + e^{k_t − m_t} v_t,   b_t = … (the same with 1 for v_t),

    is linear in the values ``v`` once the exp-made weights are held constant — the decays and gates are
    data-dependent constants, as MambaLRP (Jafari et al., NeurIPS 2024) holds the selective SSM's ``Ā``
    constant, and relevance flows through the linear state update to ``v`` alone; the denominator ``b`` is
    made of those constants only, so the division is linear too (``Σ_i α_{t,i} v_i`` exactly: it conserves).
    At ``t = 0`` the state ``a_{−1} = b_{−1} = 0`` is a constant, so its decay ``e^{m_{−1} − m'_0}`` scales no
    carrying tensor; this predicate makes it the same constant as every later step's decay."""
    return any(a.op == "call_function" and packet(a.target) in _FILLED and a.name not in info.reachable
               for a in _scaled_operands(node, depth))


# The normalizing scale of a norm, wherever the exporter decomposed it (RMSNorm, T5LayerNorm, gated norms
# of linear-attention layers, L2-normalized queries and keys): identity through the norm (Prop. 3.4).
NORM_SCALE = (AnyOf(*NORM_SCALES), scales_another)
# L2 normalisation ``x / ‖x‖₂`` in any spelling (CLIP's ``(Σx²) ** 0.5``, ``x.norm(dim=-1)``, ``F.normalize``),
# matched from the graph's structure: the norm is a constant (identity, Prop. 3.4), and ``x * (1/‖x‖₂)``
# (``rsqrt`` / ``** -0.5`` / ``reciprocal``) holds its scale constant the same way.
L2_NORMALIZATION = l2_normalization
INVERSE_L2_NORM = inverse_l2_norm


def root_or_reciprocal_power(node: fx.Node, info: NodeInfo) -> bool:
    """``pow(x, e)`` with a constant exponent ``e < 1``, ``e ≠ 0``: a root (``pow(·, 0.5)`` is a ``sqrt``)
    or a reciprocal power (``pow(·, -0.5)`` is an ``rsqrt``, ``pow(·, -1)`` a ``reciprocal``) — what a
    magnitude or norm written with ``torch.pow`` / ``**`` takes of a mean or sum of squares (Gemma-3n and
    Gemma-4 norms: ``x * torch.pow(mean(x²) + eps, -0.5)``; Gemma-3n's magnitude matching:
    ``x * mean(h²) ** 0.5 / sqrt(mean(x²))``). Squares (``e = 2``) and other polynomial powers do not match."""
    exponent = node.args[1] if len(node.args) > 1 else node.kwargs.get("exponent")
    if not isinstance(exponent, (int, float)) or isinstance(exponent, bool):
        return False
    return float(exponent) < 1 and float(exponent) != 0


def polynomial_power(node: fx.Node, info: NodeInfo) -> bool:
    """``pow(x, p)`` with a constant exponent ``p ≥ 1``: ``p`` copies of one factor (``x ** 2``, an attention
    kernel's ``k(s) ** τ``). The uniform product rule (Prop. 3.2) gives each copy ``R/p``, summed back at the
    shared input: ``R_x = R_y``, the identity rule (Eq. 9). Roots and reciprocal powers (``p < 1``) are
    :func:`root_or_reciprocal_power`'s."""
    exponent = node.args[1] if len(node.args) > 1 else node.kwargs.get("exponent")
    if not isinstance(exponent, (int, float)) or isinstance(exponent, bool):
        return False
    return float(exponent) >= 1


def scales_nothing(node: fx.Node, info: NodeInfo, depth: int = 8) -> bool:
    """The node's value is itself a carrier, not only the inside of a norm's scale: some path from it,
    through element-wise / linear steps, reaches an op other than a norm scale (``rsqrt``, ``sqrt``, a root
    or reciprocal power) that scales another carrying tensor. RMSNorm's ``x.pow(2)`` reaches only the
    stopped ``rsqrt`` (or ``pow(·, -0.5)``): it needs no rule; a kernel's ``k(s) ** τ`` that multiplies the
    values is a carrier."""
    chain, frontier = {node}, [node]
    for _ in range(depth):
        following = []
        for current in frontier:
            for user in current.users:
                if user in chain:
                    continue
                if user.op != "call_function":
                    return True                                   # the output itself
                p = packet(user.target)
                root = p is aten.pow and root_or_reciprocal_power(user, info)
                if (p in NORM_SCALES or root) and scales_another(user, info):
                    continue                                      # the inside of a stopped scale
                if p not in _PASSING:
                    return True                                   # a product, a softmax, …: a carrier
                chain.add(user)
                following.append(user)
        frontier = following
    return bool(frontier)


# A norm's or magnitude's scale written as a root or reciprocal power that multiplies (or divides) another
# relevance-carrying tensor: the same identity through the norm as NORM_SCALE (Prop. 3.4).
POWER_NORM_SCALE = (aten.pow, root_or_reciprocal_power, scales_another)
# exp-made multiplicative factors (SSM decays, sink scales): constants, as MambaLRP treats Ā.
DECAY = (AnyOf(*DECAYS), AnyOf(scales_another, decays_initial_state))
# Renormalization of an MoE router's top-k routing weights or of softmax / sigmoid mixing weights (``w / Σw``,
# Sinkhorn–Knopp's row and column steps; matched by graph structure, not by module name:
# lxt_fx.composites.routing): identity, the divisor a constant (see lxt_fx.rules.renormalize for why not the
# plain gradient, which loses the weights' share).
ROUTER_RENORM = (AnyOf(aten.div, aten.div_), renormalizes)
# Activation modules that the exporter decomposed into several ops (GPT-2's NewGELUActivation):
# one identity region each. Single-op activations keep the per-op rule with its analytic ratio.
ACTIVATION_MODULE = "Activation"

attnlrp = Composite([
    (aten.scaled_dot_product_attention, Attention()),        # ¼ q, ¼ k, ½ v; kernel stays fused
    (L2_NORMALIZATION, L2Normalize()),                        # x / ‖x‖₂: the norm a constant (Prop. 3.4)
    (INVERSE_L2_NORM, Stop()),                                # x · (1/‖x‖₂): the same
    (NORM_SCALE, Stop()),                                     # identity through the norm (Prop. 3.4)
    (POWER_NORM_SCALE, Stop()),                               # the same, as pow(·, e < 1, e ≠ 0)
    (AnyOf(aten.layer_norm, aten.rms_norm, aten.group_norm), NormIdentity()),  # fused norms, same rule
    (AnyOf(*SOFTMAX), SoftmaxDT()),                           # deep Taylor (Prop. 3.1); plain gradient
    (ACTIVATION_MODULE, IdentityRegion()),                    # decomposed activations: one region
    (ROUTER_RENORM, Renormalize()),                           # routing / mixing-weight renormalization
    (DECAY, Stop()),                                          # decays and gates made with exp
    (AnyOf(*ACTIVATIONS), Identity()),                        # identity (Eq. 9), analytic ratios
    ((aten.pow, polynomial_power, scales_nothing), Identity()),               # x ** p, p ≥ 1: p equal factors → identity
    (aten.glu, GatedUnit()),                                  # a ⊙ σ(b): uniform ½ each, identity through σ
    (AnyOf(*PRODUCTS), Uniform()),                            # two carrying factors: ½ each (Prop. 3.2/3.3)
], name="attnlrp")
