"""RWKV's WKV recurrence (the decays held constant, MambaLRP-style): relevance reaches the values through
the linear state update and nothing else, against an explicit float64 reference, and the books close."""

from __future__ import annotations

import torch
from torch import nn
from torch.testing import assert_close

import lxt_fx

F64 = torch.float64


def wkv_stabilized(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """transformers' CPU loop for RWKV-4 (``rwkv_linear_attention_cpu``): the running-maximum form."""
    out = torch.zeros_like(k)
    num, den = torch.zeros_like(k[:, 0]), torch.zeros_like(k[:, 0])
    top = torch.zeros_like(k[:, 0]) - 1e38
    decay = -torch.exp(w)
    for t in range(k.shape[1]):
        kt, vt = k[:, t], v[:, t]
        m = torch.maximum(top, kt + u)
        e1, e2 = torch.exp(top - m), torch.exp(kt + u - m)
        out[:, t] = (e1 * num + e2 * vt) / (e1 * den + e2)
        m2 = torch.maximum(top + decay, kt)
        e1, e2 = torch.exp(top + decay - m2), torch.exp(kt - m2)
        num, den, top = e1 * num + e2 * vt, e1 * den + e2, m2
    return out


def wkv_weights(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The explicit WKV weights ``α[b, t, i, c]``: ``e^{−(t−1−i)·e^w + k_i}`` for ``i < t``, ``e^{u + k_t}`` at
    ``i = t``, 0 after, normalized over ``i`` (no running maximum)."""
    steps = k.shape[1]
    t, i = torch.arange(steps)[:, None], torch.arange(steps)[None, :]
    lag = (t - 1 - i).to(k.dtype)[None, :, :, None]
    logits = torch.where((i < t)[None, :, :, None], -lag * torch.exp(w) + k[:, None], float("-inf"))
    logits = torch.where((i == t)[None, :, :, None], (u + k)[:, None].expand_as(logits), logits)
    return torch.softmax(logits, dim=2)


class TinyWKV(nn.Module):
    """x → key, value (Linear) → WKV → Linear: one RWKV time-mixing core without receptance."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.key, self.value, self.out = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, 3)
        self.time_decay = nn.Parameter(torch.randn(width) * 0.5)
        self.time_first = nn.Parameter(torch.randn(width) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(wkv_stabilized(self.time_decay, self.time_first, self.key(x), self.value(x)))


def test_wkv_loop_matches_its_explicit_weights() -> None:
    torch.manual_seed(0)
    k, v = torch.randn(2, 5, 4, dtype=F64), torch.randn(2, 5, 4, dtype=F64)
    w, u = torch.randn(4, dtype=F64), torch.randn(4, dtype=F64)
    explicit = (wkv_weights(w, u, k) * v[:, None]).sum(2)
    assert_close(wkv_stabilized(w, u, k, v), explicit)


def test_wkv_relevance_flows_through_the_values_with_the_decays_constant() -> None:
    torch.manual_seed(0)
    model = TinyWKV().to(F64)
    x = torch.randn(2, 5, 6, dtype=F64)
    # the reference: the closed-form weights α detached, so the output is linear in the values
    leaf = x.clone().requires_grad_(True)
    alpha = wkv_weights(model.time_decay, model.time_first, model.key(x)).detach()
    wkv = (alpha * model.value(leaf)[:, None]).sum(2)
    score = model.out(wkv)[:, -1, 0].sum()
    expected = leaf * torch.autograd.grad(score, leaf)[0]

    got_leaf = x.clone().requires_grad_(True)
    with lxt_fx.attnlrp.context(model):
        model(got_leaf)[:, -1, 0].sum().backward()
    assert_close(got_leaf * got_leaf.grad, expected, rtol=1e-9, atol=1e-12)


def test_wkv_books_close_with_no_unhandled_op() -> None:
    torch.manual_seed(1)
    model = TinyWKV()
    report = lxt_fx.check(model, {"x": torch.randn(2, 5, 6)})
    assert not report.unhandled
    assert report.zero_bias.verdict().status == "closes", report.zero_bias.verdict().reason


def test_a_tiny_rwkv_has_no_unhandled_op() -> None:
    """RWKV-4 (transformers' CPU WKV loop): every exp and the division are covered (before: the first step's
    ``exp`` and its division were unhandled, the zero initial state being a constant)."""
    import transformers as tf

    config = tf.RwkvConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, attention_hidden_size=32,
                           intermediate_size=48, context_length=16)  # two layers: its init divides by layers − 1
    torch.manual_seed(0)
    model = tf.RwkvForCausalLM(config).eval()
    ids = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(0))
    att = lxt_fx.explain(model, ids, strict=True)
    assert att.report.unhandled == [] and torch.isfinite(att.relevance).all()
