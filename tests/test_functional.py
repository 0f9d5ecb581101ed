"""``lxt_fx.functional`` and ``lxt_fx.modules``: a small transformer-ish block written once with plain torch
ops and once with the drop-in functions. Forward outputs must be equal; the GxI relevance ``x ⊙ x.grad``
must equal the relevance obtained by applying the rules' explicit forms by hand, layer by layer; the
module forms must equal the functional forms.

float64 throughout. The explicit forms of the uniform and attention rules stabilize with ε = 1e-12 where the
GxI forms have ε → 0, so explicit vs GxI is compared at 1e-7 relative to the largest relevance."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.testing import assert_close

from lxt_fx import functional as lf
from lxt_fx import modules as lm
from lxt_fx.rules import Attention, Epsilon, Identity, NormIdentity, SoftmaxDT, Uniform

aten = torch.ops.aten
F64 = torch.float64
B, T, D_IN, D, FF, H, HKV, DH = 2, 5, 6, 8, 12, 4, 2, 4
NORM_EPS, LIN_EPS = 1e-6, 1e-6


def assert_rel(got: Tensor, expected: Tensor, rel: float, what: str = "") -> None:
    """max |got − expected| ≤ rel · max |expected|, both finite."""
    assert torch.isfinite(got).all() and torch.isfinite(expected).all(), what
    err = float((got - expected).abs().max())
    assert err <= rel * float(expected.abs().max()), f"{what}: max error {err:.3g}"


@dataclass
class Params:
    w_in: Tensor
    b_in: Tensor
    w_norm: Tensor
    w_gate: Tensor
    w_up: Tensor
    w_down: Tensor
    wq: Tensor
    wk: Tensor
    wv: Tensor
    wo: Tensor

    @staticmethod
    def random(seed: int = 0) -> Params:
        gen = torch.Generator().manual_seed(seed)

        def rnd(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=gen, dtype=F64) / math.sqrt(shape[-1])

        return Params(rnd(D, D_IN), rnd(D), 1.0 + 0.1 * rnd(D), rnd(FF, D), rnd(FF, D), rnd(D, FF),
                      rnd(H * DH, D), rnd(HKV * DH, D), rnd(HKV * DH, D), rnd(D, H * DH))


def heads(t: Tensor, n: int) -> Tensor:
    return t.view(B, T, n, DH).transpose(1, 2)


def merge(t: Tensor) -> Tensor:
    return t.transpose(1, 2).reshape(B, T, H * DH)


def plain_block(x: Tensor, p: Params) -> Tensor:
    h = F.linear(x, p.w_in, p.b_in)
    n = F.rms_norm(h, (D,), p.w_norm, NORM_EPS)
    act = F.silu(F.linear(n, p.w_gate)) * F.linear(n, p.w_up)
    r = n + F.linear(act, p.w_down)
    q, k, v = heads(F.linear(r, p.wq), H), heads(F.linear(r, p.wk), HKV), heads(F.linear(r, p.wv), HKV)
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return F.linear(merge(a), p.wo)


def lrp_block(x: Tensor, p: Params, keep: dict[str, Tensor] | None = None) -> Tensor:
    """The same block with lxt_fx.functional; ``keep`` collects intermediates (grads retained)."""
    keep = {} if keep is None else keep
    h = keep["h"] = lf.linear_epsilon(x, p.w_in, p.b_in, LIN_EPS)
    n = keep["n"] = lf.rms_norm_identity(h, p.w_norm, NORM_EPS)
    gate = keep["gate"] = lf.linear_epsilon(n, p.w_gate, epsilon=LIN_EPS)
    up = keep["up"] = lf.linear_epsilon(n, p.w_up, epsilon=LIN_EPS)
    act = keep["act"] = lf.mul2(lf.silu(gate), up)
    r = keep["r"] = lf.add2(n, lf.linear_epsilon(act, p.w_down, epsilon=LIN_EPS))
    q = keep["q"] = heads(lf.linear_epsilon(r, p.wq, epsilon=LIN_EPS), H)
    k = keep["k"] = heads(lf.linear_epsilon(r, p.wk, epsilon=LIN_EPS), HKV)
    v = keep["v"] = heads(lf.linear_epsilon(r, p.wv, epsilon=LIN_EPS), HKV)
    a = keep["a"] = lf.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    for t in keep.values():
        if t.requires_grad:
            t.retain_grad()
    return lf.linear_epsilon(merge(a), p.wo, epsilon=LIN_EPS)


class ModuleBlock(nn.Module):
    """The same block with lxt_fx.modules."""

    def __init__(self, p: Params) -> None:
        super().__init__()
        self.inp = lm.LinearEpsilon(D_IN, D, epsilon=LIN_EPS, dtype=F64)
        self.norm = lm.RMSNormIdentity(D, eps=NORM_EPS, dtype=F64)
        self.gate, self.up = (lm.LinearEpsilon(D, FF, bias=False, epsilon=LIN_EPS, dtype=F64) for _ in "ab")
        self.down = lm.LinearEpsilon(FF, D, bias=False, epsilon=LIN_EPS, dtype=F64)
        self.q, self.k, self.v = (lm.LinearEpsilon(D, n * DH, bias=False, epsilon=LIN_EPS, dtype=F64)
                                  for n in (H, HKV, HKV))
        self.o = lm.LinearEpsilon(H * DH, D, bias=False, epsilon=LIN_EPS, dtype=F64)
        self.act, self.mul, self.add, self.attn = lm.SiLUIdentity(), lm.Mul2(), lm.Add2(LIN_EPS), \
            lm.ScaledDotProductAttention()
        with torch.no_grad():
            for lin, w in ((self.inp, p.w_in), (self.gate, p.w_gate), (self.up, p.w_up), (self.down, p.w_down),
                           (self.q, p.wq), (self.k, p.wk), (self.v, p.wv), (self.o, p.wo)):
                lin.weight.copy_(w)
            self.inp.bias.copy_(p.b_in)
            self.norm.weight.copy_(p.w_norm)

    def forward(self, x: Tensor) -> Tensor:
        n = self.norm(self.inp(x))
        r = self.add(n, self.down(self.mul(self.act(self.gate(n)), self.up(n))))
        q, k, v = heads(self.q(r), H), heads(self.k(r), HKV), heads(self.v(r), HKV)
        return self.o(merge(self.attn(q, k, v, is_causal=True, enable_gqa=True)))


def explicit_by_hand(x: Tensor, p: Params, r_out: Tensor) -> dict[str, Tensor]:
    """Relevance of every intermediate from the rules' explicit forms, applied layer by layer backwards."""
    lin = aten.linear.default

    def linear_rel(inp: Tensor, w: Tensor, b: Tensor | None, out: Tensor, rel: Tensor) -> Tensor:
        return Epsilon(LIN_EPS).explicit(lin, (inp, w, b), {}, out, rel, (0,))[0]

    with torch.no_grad():  # the forward, plain ops, every intermediate kept
        h = F.linear(x, p.w_in, p.b_in)
        n = F.rms_norm(h, (D,), p.w_norm, NORM_EPS)
        gate, up = F.linear(n, p.w_gate), F.linear(n, p.w_up)
        sg = F.silu(gate)
        act = sg * up
        m = F.linear(act, p.w_down)
        r = n + m
        qf, kf, vf = F.linear(r, p.wq), F.linear(r, p.wk), F.linear(r, p.wv)
        q, k, v = heads(qf, H), heads(kf, HKV), heads(vf, HKV)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        am = merge(a)
        out = F.linear(am, p.wo)

        rel: dict[str, Tensor] = {}
        r_am = linear_rel(am, p.wo, None, out, r_out)
        rel["a"] = r_am.view(B, T, H, DH).transpose(1, 2)  # reshapes move relevance unchanged
        r_q, r_k, r_v = Attention().explicit(aten.scaled_dot_product_attention.default,
                                             (q, k, v, None, 0.0, True), {"enable_gqa": True}, a, rel["a"],
                                             (0, 1, 2))[:3]
        rel["q"], rel["k"], rel["v"] = r_q, r_k, r_v
        rel["r"] = sum(linear_rel(r, w, None, f, merge_rel)
                       for w, f, merge_rel in ((p.wq, qf, r_q.transpose(1, 2).reshape(B, T, -1)),
                                               (p.wk, kf, r_k.transpose(1, 2).reshape(B, T, -1)),
                                               (p.wv, vf, r_v.transpose(1, 2).reshape(B, T, -1))))
        r_n_skip, r_m = Epsilon(LIN_EPS).explicit(aten.add.Tensor, (n, m), {}, r, rel["r"], (0, 1))
        rel["act"] = linear_rel(act, p.w_down, None, m, r_m)
        r_sg, rel["up"] = Uniform().explicit(aten.mul.Tensor, (sg, up), {}, act, rel["act"], (0, 1))
        rel["gate"] = Identity().explicit(aten.silu.default, (gate,), {}, sg, r_sg, (0,))[0]
        rel["n"] = (r_n_skip + linear_rel(n, p.w_gate, None, gate, rel["gate"])
                    + linear_rel(n, p.w_up, None, up, rel["up"]))
        rel["h"] = NormIdentity().explicit(aten.rms_norm.default, (h, [D], p.w_norm, NORM_EPS), {}, n,
                                           rel["n"], (0,))[0]
        rel["x"] = linear_rel(x, p.w_in, p.b_in, h, rel["h"])
    return rel


@pytest.fixture
def setup() -> tuple[Tensor, Params, Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(B, T, D_IN, generator=gen, dtype=F64), Params.random(), \
        torch.randn(B, T, D, generator=gen, dtype=F64)


def test_forward_equals_plain_block(setup: tuple[Tensor, Params, Tensor]) -> None:
    x, p, _ = setup
    expected = plain_block(x, p)
    assert_close(lrp_block(x.clone().requires_grad_(True), p), expected, rtol=0, atol=0)
    assert_close(lrp_block(x, p), expected, rtol=0, atol=0)  # no grad: the plain ops themselves


def test_gxi_relevance_equals_explicit_rules_layer_by_layer(setup: tuple[Tensor, Params, Tensor]) -> None:
    x, p, g = setup
    leaf = x.clone().requires_grad_(True)
    keep: dict[str, Tensor] = {}
    out = lrp_block(leaf, p, keep)
    out.backward(g)
    r_out = out.detach() * g
    expected = explicit_by_hand(x, p, r_out)
    for name in ("a", "q", "k", "v", "r", "act", "up", "gate", "n", "h"):
        t = keep[name]
        assert_rel(t.detach() * t.grad, expected[name], 1e-7, name)
    assert_rel(x * leaf.grad, expected["x"], 1e-7, "x")
    # The plain block's gradient×input is a different (non-LRP) attribution: the test can tell them apart.
    plain_leaf = x.clone().requires_grad_(True)
    plain_block(plain_leaf, p).backward(g)
    assert float((x * plain_leaf.grad - expected["x"]).abs().max()) > 1e-3 * float(expected["x"].abs().max())


def test_modules_equal_functional(setup: tuple[Tensor, Params, Tensor]) -> None:
    x, p, g = setup
    block = ModuleBlock(p)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_f, out_m = lrp_block(a, p), block(b)
    assert torch.equal(out_f, out_m)
    out_f.backward(g)
    out_m.backward(g)
    assert_close(b.grad, a.grad, rtol=0, atol=0)


def grad_of(fn: Any, *inputs: Tensor, g: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    y = fn(*leaves)
    g = torch.ones_like(y) if g is None else g
    return y.detach(), list(torch.autograd.grad(y, leaves, g))


def test_each_module_equals_its_function() -> None:
    torch.manual_seed(2)
    x = torch.randn(3, 4, 8, dtype=F64)
    y2 = torch.randn(3, 4, 8, dtype=F64)
    lin, rms, ln = nn.Linear(8, 5, dtype=F64), nn.RMSNorm(8, eps=1e-5, dtype=F64), nn.LayerNorm(8, dtype=F64)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    pairs: list[tuple[nn.Module, Any, tuple[Tensor, ...]]] = [
        (lm.LinearEpsilon.from_module(lin, 1e-3), lambda t: lf.linear_epsilon(t, lin.weight, lin.bias, 1e-3), (x,)),
        (lm.RMSNormIdentity.from_module(rms), lambda t: lf.rms_norm_identity(t, rms.weight, 1e-5), (x,)),
        (lm.LayerNormIdentity.from_module(ln), lambda t: lf.layer_norm_identity(t, [8], ln.weight, ln.bias), (x,)),
        (lm.SoftmaxDT(1), lambda t: lf.softmax(t, 1), (x,)),
        (lm.Matmul2(), lambda a, b: lf.matmul(a, b), (x, y2.transpose(-2, -1))),
        (lm.Matmul2(0.1), lambda a, b: lf.matmul(a, b, 0.1), (x, y2.transpose(-2, -1))),
        (lm.Mul2(), lf.mul2, (x, y2)),
        (lm.Add2(0.5), lambda a, b: lf.add2(a, b, 0.5), (x, y2)),
        (lm.ActivationIdentity(torch.sigmoid), lambda t: lf.activation_identity(torch.sigmoid, t), (x,)),
        (lm.SiLUIdentity(), lf.silu, (x,)),
        (lm.GELUIdentity("tanh"), lambda t: lf.gelu(t, "tanh"), (x,)),
        (lm.ReLUIdentity(), lf.relu, (x,)),
        (lm.TanhIdentity(), lf.tanh, (x,)),
        (lm.ScaledDotProductAttention(False), lambda q, k, v: lf.scaled_dot_product_attention(
            q, k, v, through_weights=False), (x, y2, x)),
        (lm.ScaledDotProductAttention(), lf.scaled_dot_product_attention, (x, y2, x)),
    ]
    for module, fn, inputs in pairs:
        ym, gm = grad_of(module, *inputs)
        yf, gf = grad_of(fn, *inputs)
        assert torch.equal(ym, yf), module
        for a, b in zip(gm, gf, strict=True):
            assert torch.equal(a, b), module
    # from_module shares the parameters and keeps the torch module's state-dict layout.
    for new, old in ((lm.LinearEpsilon.from_module(lin), lin), (lm.RMSNormIdentity.from_module(rms), rms),
                     (lm.LayerNormIdentity.from_module(ln), ln)):
        assert new.state_dict().keys() == old.state_dict().keys()
        assert all(new.get_parameter(n) is q for n, q in old.named_parameters())
        assert torch.equal(new(x), old(x))
    stop = lm.Stop()(x.clone().requires_grad_(True))
    assert not stop.requires_grad and torch.equal(stop, x)


def test_functions_forward_exact_and_their_rules() -> None:
    torch.manual_seed(3)
    x, y2 = torch.randn(3, 5, 7, dtype=F64), torch.randn(3, 5, 7, dtype=F64)
    g = torch.randn(3, 5, 7, dtype=F64)
    # Element-wise activations: forward exact, R_x = R_y.
    for fn, ref in ((lf.silu, F.silu), (lf.relu, F.relu), (lf.tanh, torch.tanh), (lf.gelu, F.gelu),
                    (lambda t: lf.gelu(t, "tanh"), lambda t: F.gelu(t, approximate="tanh")),
                    (lambda t: lf.activation_identity(F.silu, t), F.silu),
                    (lambda t: lf.activation_identity(F.leaky_relu, t, 0.1), lambda t: F.leaky_relu(t, 0.1))):
        y, (gx,) = grad_of(fn, x, g=g)
        assert torch.equal(y, ref(x))
        assert_close(x * gx, y * g, rtol=1e-12, atol=1e-14)
    # Python-level functions with a known ATen op get the analytic ratio (no ε): exactly g · σ(x) for SiLU.
    _, (gx,) = grad_of(lambda t: lf.activation_identity(F.silu, t), x, g=g)
    _, (gs,) = grad_of(lf.silu, x, g=g)
    assert torch.equal(gx, gs)
    # softmax over a dim other than -1.
    s, (gx,) = grad_of(lambda t: lf.softmax(t, 1), x, g=g)
    assert torch.equal(s, torch.softmax(x, 1))
    assert_close(x * gx, SoftmaxDT().explicit(aten.softmax.int, (x, 1), {}, s, s * g, (0,))[0])
    # mul2: R_a = R_b = R_y / 2; add2: R_a = a ⊙ R_y / (y + ε sign y).
    y, (ga, gb) = grad_of(lf.mul2, x, y2, g=g)
    assert_close(x * ga, y * g / 2)
    assert_close(y2 * gb, y * g / 2)
    y, (ga, gb) = grad_of(lambda a, b: lf.add2(a, b, 0.3), x, y2, g=g)
    n = y * g / (y + 0.3 * torch.where(y >= 0, 1.0, -1.0).to(F64))
    assert_close(x * ga, x * n)
    assert_close(y2 * gb, y2 * n)
    # matmul with ε: the explicit uniform rule with the same ε.
    bt = y2.transpose(-2, -1)
    g3 = torch.randn(3, 5, 5, dtype=F64)
    y, (ga, gb) = grad_of(lambda a, b: lf.matmul(a, b, 0.2), x, bt, g=g3)
    ex = Uniform(0.2).explicit(aten.matmul.default, (x, bt), {}, y, y * g3, (0, 1))
    assert_close(x * ga, ex[0])
    assert_close(bt * gb, ex[1])
    # layer norm: forward exact, GxI == the rule's explicit form.
    w, b = torch.randn(7, dtype=F64), torch.randn(7, dtype=F64)
    y, (gx,) = grad_of(lambda t: lf.layer_norm_identity(t, [7], w, b, 1e-5), x, g=g)
    assert torch.equal(y, F.layer_norm(x, [7], w, b, 1e-5))
    ex = NormIdentity().explicit(aten.layer_norm.default, (x, [7], w, b, 1e-5), {}, y, y * g, (0,))[0]
    assert_close(x * gx, ex, rtol=1e-6, atol=1e-12)
    # RMSNorm without weight: identity.
    y, (gx,) = grad_of(lambda t: lf.rms_norm_identity(t), x, g=g)
    assert torch.equal(y, F.rms_norm(x, [7]))
    assert_close(x * gx, y * g)
    # stop: no gradient at all.
    leaf = x.clone().requires_grad_(True)
    assert not lf.stop(leaf).requires_grad
