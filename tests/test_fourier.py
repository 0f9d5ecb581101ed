"""Fourier mixing (FNet: ``fft_fftn(x, dim=(1, 2)).real``) is linear in x, so in Gradient×Input form it needs
no rule — but its inside is complex. The relevance path must go through it (not stop at the complex tensor),
and the books must count relevance at a complex tensor as ``Re(x ⊙ conj(grad))``. Checked against the
closed form: ``Re(F_s X F_hᵀ)`` with explicit DFT matrices ``F[j, k] = exp(−2πi jk/n)`` is a real-linear map
``M``, and ε-LRP through a linear map with ε → 0 is ``R_x = x ⊙ Mᵀ (R_y / y)``."""

from __future__ import annotations

import math

import torch
from torch.testing import assert_close

import lxt_fx
from lxt_fx.taps import relevance_of

F64 = torch.float64


class _FNetMix(torch.nn.Module):
    def __init__(self, pre: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Linear(6, 3, bias=False)
        self.pre = torch.nn.Linear(6, 6, bias=False) if pre else torch.nn.Identity()

    def forward(self, inputs_embeds: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.pre(inputs_embeds)  # FNet: the embeddings' dropout feeds the mixing and the residual
        mixed = torch.fft.fftn(h, dim=(1, 2)).real
        return {"logits": self.head(mixed + h)}  # mixing plus a residual, as FNet


def _dft(n: int) -> torch.Tensor:
    j = torch.arange(n, dtype=F64)
    return torch.exp(-2j * math.pi * torch.outer(j, j) / n)


def test_fourier_mixing_is_on_the_relevance_path_and_matches_the_dft_closed_form() -> None:
    model = _FNetMix().double().eval()
    x = torch.randn(1, 5, 6, dtype=F64)
    _, report = lxt_fx.attnlrp.rewrite(model, {"inputs_embeds": x}, strict=True)
    assert not report.unhandled
    leaf = x.clone().requires_grad_(True)
    with lxt_fx.attnlrp.context(model):
        score = model(inputs_embeds=leaf)["logits"][0, -1, 1]
    score.backward()
    got = (leaf * leaf.grad).detach()
    # closed form: y = W (Re(F_s X F_hᵀ) + X); the score is linear in X, so R_x = X ⊙ ∂score/∂X exactly
    w = model.head.weight.detach()[1]
    fs, fh = _dft(5), _dft(6)
    jac = torch.zeros(5, 6, dtype=F64)
    for s in range(5):
        for h in range(6):
            e = torch.zeros(5, 6, dtype=F64)
            e[s, h] = 1.0
            out = (fs @ e.to(fs.dtype) @ fh.T).real + e
            jac[s, h] = out[4] @ w
    assert_close(got[0], x[0] * jac, rtol=1e-10, atol=1e-12)
    assert abs(float(got.sum()) - float(score.detach())) < 1e-10  # bias-free: conserves


def test_complex_relevance_is_gradient_times_input_over_real_and_imaginary_parts() -> None:
    torch.manual_seed(1)
    z = torch.randn(7, dtype=torch.complex128)
    g = torch.randn(7, dtype=torch.complex128)
    assert_close(relevance_of(z, g), z.real * g.real + z.imag * g.imag, rtol=1e-15, atol=0)
    # and it telescopes: for x real, y = fft(x), score = Σ c ⊙ Re(y): Σ R at x == Σ R at y
    x = torch.randn(8, dtype=F64, requires_grad=True)
    y = torch.fft.fft(x)
    y.retain_grad()
    c = torch.randn(8, dtype=F64)
    (c * y.real).sum().backward()
    assert_close(relevance_of(x.detach(), x.grad).sum(), relevance_of(y.detach(), y.grad).sum(), rtol=1e-12,
                 atol=1e-12)


def test_check_books_close_through_the_fourier_mixing() -> None:
    model = _FNetMix(pre=True).eval()
    report = lxt_fx.check(model, {"inputs_embeds": torch.randn(1, 5, 6)}, composite=lxt_fx.attnlrp,
                          target=lxt_fx.targets.Function(lambda out: out["logits"][:, -1, 1]), zero_bias=True)
    assert report.verdict.verified, report.verdict.reason
