"""Attention as a whole (fused ``aten.scaled_dot_product_attention``): the GxI form (¼ ¼ ½ gradient scales
on q, k, v, kernel left fused) == an eager decomposition with the uniform rule applied to both matmuls by
hand == the explicit decomposition == the closed form of the paper; CP-LRP gives q and k no relevance.

float64 throughout except the bf16 test. The GxI form and the eager decomposition compute the same
gradients, so they agree to rounding (1e-12 relative to the largest relevance). The explicit form
stabilizes every division with ε = 1e-12 (the GxI form has ε → 0); near-zero scores amplify that, so
explicit vs GxI is compared at 1e-7 relative to the largest relevance."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lxt_fx.rules import Attention
from lxt_fx.rules.attention import attention_scales
from lxt_fx.rules.uniform import uniform

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default
F64 = torch.float64
Tensor = torch.Tensor


def assert_rel(got: Tensor, expected: Tensor, rel: float, what: str = "", floor: float = 1.0) -> None:
    """max |got − expected| ≤ rel · max(max |expected|, floor), both finite. The inputs are O(1), so a
    floor of 1 keeps exact zeros (one key: softmax has no gradient) from demanding an error below 1e-30."""
    assert torch.isfinite(got).all() and torch.isfinite(expected).all(), what
    scale = max(float(expected.abs().max()), floor)
    err = float((got.to(F64) - expected.to(F64)).abs().max())
    assert err <= rel * scale, f"{what}: max error {err:.3g} > {rel:g} · {scale:.3g}"


def make(b: int, h: int, hkv: int, length: int, s: int, d: int, dtype: torch.dtype = F64,
         seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, length, d, generator=gen).to(dtype),
            torch.randn(b, hkv, s, d, generator=gen).to(dtype),
            torch.randn(b, hkv, s, d, generator=gen).to(dtype))


def make_mask(kind: str, b: int, length: int, s: int, dtype: torch.dtype = F64, seed: int = 1) -> Tensor | None:
    """None, a bool mask (True = attend) or an additive float mask; column 0 is never masked."""
    if kind == "none":
        return None
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(b, 1, length, s, generator=gen) > 0.35
    keep[..., 0] = True
    if kind == "bool":
        return keep
    fill = {"float-inf": float("-inf"), "float-min": torch.finfo(dtype).min}[kind]
    bias = (torch.randn(b, 1, length, s, generator=gen) * 0.5).to(dtype)  # a finite float bias too
    return bias.masked_fill(~keep, fill)


def fused(rule: Attention, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool,
          **kwargs: Any) -> dict[str, Any]:
    """Run the GxI form and the explicit form on one SDPA call with a random output gradient."""
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    fn, extra = rule.gxi(SDPA, (0, 1, 2))
    y = fn(SDPA, *leaves, mask, 0.0, causal, **kwargs, **extra)
    assert torch.equal(y, SDPA(q, k, v, mask, 0.0, causal, **kwargs))  # forward untouched
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y.dtype)
    grads = torch.autograd.grad(y, leaves, g)
    r_y = y.detach() * g
    explicit = rule.explicit(SDPA, (q, k, v, mask, 0.0, causal), kwargs, y.detach(), r_y, (0, 1, 2))
    assert all(r is None for r in explicit[3:])
    return {"y": y.detach(), "g": g, "r_y": r_y, "grads": grads,
            "gxi": [t * gr for t, gr in zip((q, k, v), grads, strict=True)], "explicit": explicit[:3]}


def bias_of(mask: Tensor | None, causal: bool, length: int, s: int, dtype: torch.dtype) -> Tensor:
    """The additive bias SDPA applies: −inf where not attended (causal: top-left aligned)."""
    bias = torch.zeros(length, s, dtype=dtype)
    if causal:
        bias = bias.masked_fill(~torch.ones(length, s, dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        bias = bias.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else bias + mask
    return bias


def repeat_kv(t: Tensor, groups: int) -> Tensor:
    return t.repeat_interleave(groups, dim=-3)


def fold_kv(t: Tensor, groups: int) -> Tensor:
    """Inverse bookkeeping of ``repeat_kv``: sum the relevance of each group of query heads."""
    b, h, s, d = t.shape
    return t.reshape(b, h // groups, groups, s, d).sum(2)


def eager_uniform(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, g: Tensor,
                  scale: float | None = None) -> tuple[Tensor, list[Tensor]]:
    """Attention decomposed into eager ops with the uniform rule applied to both matmuls by hand
    (softmax and the mask need no rule in GxI form). Returns (output, gradients of q, k, v)."""
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ql, kl, vl = leaves
    groups = q.size(-3) // k.size(-3)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    kt = repeat_kv(kl, groups).transpose(-2, -1) * scale  # linear in k: plain gradient
    scores = uniform(aten.matmul.default, ql, kt, scales=(0.5, 0.5))
    z = scores + bias_of(mask, causal, q.size(-2), k.size(-2), q.dtype)
    weights = torch.softmax(z, dim=-1)
    out = uniform(aten.matmul.default, weights, repeat_kv(vl, groups), scales=(0.5, 0.5))
    return out.detach(), list(torch.autograd.grad(out, leaves, g))


def closed_form(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, y: Tensor, r_y: Tensor,
                scale: float | None = None) -> list[Tensor]:
    """The paper's rules written out: A·V uniform (N = R_y / 2y, R_A = (N Vᵀ) ⊙ A, R_V = (Aᵀ N) ⊙ V),
    softmax deep Taylor (R_z = z ⊙ (R_A − A Σ R_A)), the bias add ε-rule (R_scores = scores ⊙ R_z / z) and
    QKᵀ uniform (M = R_scores / 2·scores = R_z / 2z, R_Q = (M K) ⊙ Q, R_K = (Mᵀ Q) ⊙ K, with the scale)."""
    groups = q.size(-3) // k.size(-3)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    kr, vr = repeat_kv(k, groups), repeat_kv(v, groups)
    z = (q @ kr.transpose(-2, -1)) * scale + bias_of(mask, causal, q.size(-2), k.size(-2), q.dtype)
    a = torch.softmax(z, dim=-1)
    n = r_y / (2 * y)
    r_a = (n @ vr.transpose(-2, -1)) * a
    r_v = fold_kv((a.transpose(-2, -1) @ n) * vr, groups)
    attended = a != 0
    z0 = torch.where(attended, z, 1.0)
    r_z = torch.where(attended, z0 * (r_a - a * r_a.sum(-1, keepdim=True)), 0.0)
    m = torch.where(attended, r_z / (2 * z0), 0.0)
    r_q = (m @ kr) * scale * q
    r_k = fold_kv((m.transpose(-2, -1) @ q) * scale * kr, groups)
    return [r_q, r_k, r_v]


CASES = [
    # (name, B, H, Hkv, L, S, D, mask kind, causal, extra kwargs)
    ("plain", 2, 3, 3, 5, 5, 8, "none", False, {}),
    ("causal", 2, 3, 3, 6, 6, 4, "none", True, {}),
    ("causal-cross", 1, 2, 2, 3, 5, 4, "none", True, {}),
    ("bool-mask", 2, 2, 2, 5, 7, 8, "bool", False, {}),
    ("float-mask-min", 2, 2, 2, 5, 5, 8, "float-min", False, {}),
    ("float-mask-inf", 1, 2, 2, 4, 6, 8, "float-inf", False, {}),
    ("gqa", 2, 6, 2, 5, 5, 8, "none", False, {"enable_gqa": True}),
    ("gqa-causal-bool", 1, 4, 1, 5, 5, 4, "bool", True, {"enable_gqa": True}),
    ("scale", 1, 2, 2, 4, 4, 8, "float-min", False, {"scale": 0.7}),
]


def run_case(case: tuple) -> tuple[Tensor, Tensor, Tensor, Tensor | None, bool, dict, dict[str, Any]]:
    _, b, h, hkv, length, s, d, kind, causal, kwargs = case
    q, k, v = make(b, h, hkv, length, s, d)
    mask = make_mask(kind, b, length, s)
    return q, k, v, mask, causal, kwargs, fused(Attention(), q, k, v, mask, causal, **kwargs)


def test_attention_scales() -> None:
    assert attention_scales((0, 1, 2), True) == (0.25, 0.25, 0.5)
    assert attention_scales((0, 1, 2), False) == (0.0, 0.0, 1.0)
    assert attention_scales((0, 1), True) == (0.5, 0.5, 1.0)  # v constant: QKᵀ uniform only
    assert attention_scales((2,), True) == (1.0, 1.0, 1.0)  # weights constant: A·V linear in V
    assert Attention().supports(SDPA)


def test_gxi_equals_eager_decomposition_with_uniform_by_hand() -> None:
    for case in CASES:
        q, k, v, mask, causal, kwargs, res = run_case(case)
        y_eager, grads = eager_uniform(q, k, v, mask, causal, res["g"], kwargs.get("scale"))
        assert_rel(y_eager, res["y"], 1e-12, f"{case[0]} forward")
        for name, got, expected in zip("qkv", res["grads"], grads, strict=True):
            assert_rel(got, expected, 1e-12, f"{case[0]} grad {name}")


def test_gxi_explicit_and_closed_form_agree() -> None:
    for case in CASES:
        q, k, v, mask, causal, kwargs, res = run_case(case)
        closed = closed_form(q, k, v, mask, causal, res["y"], res["r_y"], kwargs.get("scale"))
        for name, gxi, ex, c in zip("qkv", res["gxi"], res["explicit"], closed, strict=True):
            assert_rel(gxi, c, 1e-12, f"{case[0]} GxI vs closed R_{name}")
            assert_rel(ex, c, 1e-7, f"{case[0]} explicit vs closed R_{name}")


def test_masked_positions_carry_nothing() -> None:
    # A key masked for every query gets no relevance from the weights path: R_k = 0 there, no NaN.
    q, k, v = make(1, 2, 2, 4, 6, 8)
    for kind in ("bool", "float-min", "float-inf"):
        keep = torch.ones(1, 1, 4, 6, dtype=torch.bool)
        keep[..., 3] = False
        mask = keep if kind == "bool" else torch.zeros(1, 1, 4, 6, dtype=F64).masked_fill(
            ~keep, float("-inf") if kind == "float-inf" else torch.finfo(F64).min)
        res = fused(Attention(), q, k, v, mask, False)
        for r in (*res["gxi"], *res["explicit"]):
            assert torch.isfinite(r).all()
        for r in (res["gxi"][1], res["explicit"][1], res["gxi"][2], res["explicit"][2]):
            assert (r[..., 3, :] == 0).all()


def test_cp_lrp_gives_q_and_k_nothing() -> None:
    for case in CASES:
        _, b, h, hkv, length, s, d, kind, causal, kwargs = case
        q, k, v = make(b, h, hkv, length, s, d)
        mask = make_mask(kind, b, length, s)
        res = fused(Attention(through_weights=False), q, k, v, mask, causal, **kwargs)
        assert (res["gxi"][0] == 0).all() and (res["gxi"][1] == 0).all()
        assert res["explicit"][0] is None and res["explicit"][1] is None
        # Closed form: A constant, y = A·V linear in V, R_V = V ⊙ Aᵀ(R_y / y), conserving relevance.
        groups = h // hkv
        scale = kwargs.get("scale", 1.0 / math.sqrt(d))
        z = (q @ repeat_kv(k, groups).transpose(-2, -1)) * scale + bias_of(mask, causal, length, s, F64)
        a = torch.softmax(z, dim=-1)
        closed_v = fold_kv((a.transpose(-2, -1) @ (res["r_y"] / res["y"])) * repeat_kv(v, groups), groups)
        assert_rel(res["gxi"][2], closed_v, 1e-12, f"{case[0]} CP-LRP GxI R_v")
        assert_rel(res["explicit"][2], closed_v, 1e-7, f"{case[0]} CP-LRP explicit R_v")
        assert math.isclose(float(res["gxi"][2].sum()), float(res["r_y"].sum()), rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 2), st.integers(1, 2), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5),
       st.integers(1, 6), st.sampled_from(["none", "bool", "float-min", "float-inf"]), st.booleans(),
       st.booleans(), st.integers(0, 2**16))
def test_attention_property(b: int, hkv: int, groups: int, length: int, s: int, d: int, kind: str,
                            causal: bool, cp_lrp: bool, seed: int) -> None:
    h = hkv * groups
    q, k, v = make(b, h, hkv, length, s, d, seed=seed)
    mask = make_mask(kind, b, length, s, seed=seed + 1)
    kwargs = {"enable_gqa": True} if groups > 1 else {}
    res = fused(Attention(through_weights=not cp_lrp), q, k, v, mask, causal, **kwargs)
    if cp_lrp:
        assert (res["gxi"][0] == 0).all() and (res["gxi"][1] == 0).all()
        assert_rel(res["explicit"][2], res["gxi"][2], 1e-7, "CP-LRP R_v")
        return
    y_eager, grads = eager_uniform(q, k, v, mask, causal, res["g"])
    closed = closed_form(q, k, v, mask, causal, res["y"], res["r_y"])
    for name, got, eager, gxi, ex, c in zip("qkv", res["grads"], grads, res["gxi"], res["explicit"], closed,
                                            strict=True):
        assert_rel(got, eager, 1e-11, f"grad {name}")
        assert_rel(gxi, c, 1e-9, f"GxI vs closed R_{name}")
        assert_rel(ex, c, 1e-6, f"explicit vs closed R_{name}")


def test_bf16_within_bound() -> None:
    # Bound: the bf16 kernel rounds scores, weights and output (2^-9 relative each, plus float32
    # accumulation) and the softmax rule cancels (R_A − A ΣR_A), so the error is bounded relative to the
    # largest relevance of each tensor, not element-wise: max |R_bf16 − R_64| ≤ 2^-4 · max |R_64|, with
    # R_64 the float64 GxI relevance of the same bf16 inputs and output gradient (observed: ≤ 0.2 of it).
    for case in CASES:
        _, b, h, hkv, length, s, d, kind, causal, kwargs = case
        q, k, v = make(b, h, hkv, length, s, d, dtype=torch.bfloat16)
        mask = make_mask(kind, b, length, s, dtype=torch.bfloat16)
        low = fused(Attention(), q, k, v, mask, causal, **kwargs)
        mask64 = mask.to(F64) if mask is not None and mask.is_floating_point() else mask
        if kind == "float-min":  # keep the masked entries at the float64 minimum
            mask64 = mask64.masked_fill(mask == torch.finfo(torch.bfloat16).min, torch.finfo(F64).min)
        leaves = [t.to(F64).requires_grad_(True) for t in (q, k, v)]
        fn, extra = Attention().gxi(SDPA, (0, 1, 2))
        y64 = fn(SDPA, *leaves, mask64, 0.0, causal, **kwargs, **extra)
        grads = torch.autograd.grad(y64, leaves, low["g"].to(F64))
        for name, t, gr, got in zip("qkv", leaves, grads, low["gxi"], strict=True):
            assert got.dtype == torch.bfloat16
            assert_rel(got, t.detach() * gr, 2**-4, f"{case[0]} bf16 R_{name}", floor=1e-3)


def test_an_exactly_causal_boolean_mask_runs_the_kernel_causally() -> None:
    from lxt_fx.rules.attention import attention

    torch.manual_seed(11)
    q, k, v = (torch.randn(2, 4, 7, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    causal = torch.ones(7, 7, dtype=torch.bool).tril().expand(2, 1, 7, 7)
    padded = causal.clone()
    padded[1, :, :, 5:] = False
    seen = []

    def spy(*args, **kwargs):
        seen.append((len(args), kwargs.get("is_causal", False)))
        return F.scaled_dot_product_attention(*args, **kwargs)

    scales = (0.25, 0.25, 0.5)
    for mask, expect_causal in ((causal, True), (padded, False)):
        seen.clear()
        out = attention(spy, q, k, v, mask, scale=0.3, scales=scales)
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
        assert seen == [(3, True)] if expect_causal else seen == [(4, False)]
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        g = torch.randn_like(out)
        got = torch.autograd.grad(out, (q, k, v), g)
        want = torch.autograd.grad(ref, (q, k, v), g)
        for a, b, s in zip(got, want, scales, strict=True):
            torch.testing.assert_close(a, b * s, rtol=1e-10, atol=1e-12)
    # the answer is remembered per mask tensor (shared by all layers) but not past an in-place change
    mask = torch.ones(7, 7, dtype=torch.bool).tril()
    for _ in range(2):  # checked, then remembered
        seen.clear()
        attention(spy, q, k, v, mask, scales=scales)
        assert seen == [(3, True)]
    mask[6, 0] = False
    seen.clear()
    attention(spy, q, k, v, mask, scales=scales)
    assert seen == [(4, False)]
