"""``nn.Module`` forms of :mod:`lxt_fx.functional`, for people who edit their own model source.

Each module computes the forward of the torch module it replaces and backpropagates the modified
gradient of its AttnLRP rule, so that ``x ⊙ x.grad`` is the relevance of ``x`` after one backward pass.
The modules that subclass a torch module (``LinearEpsilon``, ``RMSNormIdentity``, ``LayerNormIdentity``)
keep its parameters and state-dict layout; ``from_module`` wraps an existing instance's parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from . import functional as lf

__all__ = ["ActivationIdentity", "Add2", "GELUIdentity", "LayerNormIdentity", "LinearEpsilon", "Matmul2",
           "Mul2", "RMSNormIdentity", "ReLUIdentity", "SiLUIdentity", "ScaledDotProductAttention",
           "SoftmaxDT", "Stop", "TanhIdentity"]


class LinearEpsilon(nn.Linear):
    """``nn.Linear`` with the ε-rule: ``R_x = x ⊙ Wᵀ (R_y / (y + ε·sign(y)))``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, epsilon: float = 1e-6,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.epsilon = epsilon

    @classmethod
    def from_module(cls, module: nn.Linear, epsilon: float = 1e-6) -> LinearEpsilon:
        """A ``LinearEpsilon`` sharing ``module``'s parameters."""
        new = cls(module.in_features, module.out_features, module.bias is not None, epsilon, device="meta")
        new.weight, new.bias = module.weight, module.bias
        return new

    def forward(self, x: Tensor) -> Tensor:
        return lf.linear_epsilon(x, self.weight, self.bias, self.epsilon)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, epsilon={self.epsilon}"


class RMSNormIdentity(nn.RMSNorm):
    """``nn.RMSNorm`` with the identity rule through the normalizing scale: ``R_x = R_y``."""

    @classmethod
    def from_module(cls, module: nn.RMSNorm) -> RMSNormIdentity:
        """An ``RMSNormIdentity`` sharing ``module``'s weight."""
        new = cls(module.normalized_shape, module.eps, module.elementwise_affine, device="meta")
        new.weight = module.weight
        return new

    def forward(self, x: Tensor) -> Tensor:
        return lf.rms_norm_identity(x, self.weight, self.eps, self.normalized_shape)


class LayerNormIdentity(nn.LayerNorm):
    """``nn.LayerNorm`` with the identity rule through ``1/std``: ``R_x = x ⊙ C(r · w · R_y / y)``."""

    @classmethod
    def from_module(cls, module: nn.LayerNorm) -> LayerNormIdentity:
        """A ``LayerNormIdentity`` sharing ``module``'s weight and bias."""
        new = cls(module.normalized_shape, module.eps, module.elementwise_affine, module.bias is not None,
                  device="meta")
        new.weight, new.bias = module.weight, module.bias
        return new

    def forward(self, x: Tensor) -> Tensor:
        return lf.layer_norm_identity(x, self.normalized_shape, self.weight, self.bias, self.eps)


class SoftmaxDT(nn.Softmax):
    """``nn.Softmax`` with the deep-Taylor rule: ``R_x = x ⊙ (R_y − s · Σ_dim R_y)``."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__(dim=dim)

    def forward(self, x: Tensor) -> Tensor:
        return lf.softmax(x, self.dim)


class Matmul2(nn.Module):
    """``a @ b`` of two relevance-carrying tensors, uniform rule: each operand gets half of ``R_y``."""

    def __init__(self, epsilon: float = 0.0) -> None:
        super().__init__()
        self.epsilon = epsilon

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return lf.matmul(a, b, self.epsilon)


class Mul2(nn.Module):
    """``a * b`` of two relevance-carrying tensors, uniform rule: ``R_a = R_b = R_y / 2``."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return lf.mul2(a, b)


class Add2(nn.Module):
    """``a + b`` of two relevance-carrying tensors, ε-rule: ``R_a = a ⊙ R_y / (y + ε·sign(y))``."""

    def __init__(self, epsilon: float = 1e-6) -> None:
        super().__init__()
        self.epsilon = epsilon

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return lf.add2(a, b, self.epsilon)


class ActivationIdentity(nn.Module):
    """Any element-wise activation ``fn`` with the identity rule: ``R_x = R_y``."""

    def __init__(self, fn: Callable[..., Tensor], **kwargs: Any) -> None:
        super().__init__()
        self.fn, self.kwargs = fn, kwargs

    def forward(self, x: Tensor) -> Tensor:
        return lf.activation_identity(self.fn, x, **self.kwargs)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


class SiLUIdentity(nn.Module):
    """``nn.SiLU`` with the identity rule."""

    def forward(self, x: Tensor) -> Tensor:
        return lf.silu(x)


class GELUIdentity(nn.Module):
    """``nn.GELU`` with the identity rule."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return lf.gelu(x, self.approximate)


class ReLUIdentity(nn.Module):
    """``nn.ReLU`` with the identity rule."""

    def forward(self, x: Tensor) -> Tensor:
        return lf.relu(x)


class TanhIdentity(nn.Module):
    """``nn.Tanh`` with the identity rule."""

    def forward(self, x: Tensor) -> Tensor:
        return lf.tanh(x)


class ScaledDotProductAttention(nn.Module):
    """Fused attention with AttnLRP (``through_weights=True``: ¼ ¼ ½ on q, k, v) or CP-LRP (``False``)."""

    def __init__(self, through_weights: bool = True) -> None:
        super().__init__()
        self.through_weights = through_weights

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> Tensor:
        return lf.scaled_dot_product_attention(query, key, value, attn_mask, is_causal, scale, enable_gqa,
                                               self.through_weights)


class Stop(nn.Module):
    """Stop rule: the input passes unchanged, no relevance flows back through it."""

    def forward(self, x: Tensor) -> Tensor:
        return lf.stop(x)
