"""A whole model by hand: AttnLRP written out layer by layer (``tests/lrp_by_hand.py``, no ``lxt_fx`` import),
compared with ``lxt_fx.explain`` on tiny random float64 models.

Tolerance: the models run in float64, but ``explain`` returns float32 relevance (``x ⊙ g`` summed over the
hidden dim in float32), and LLaMA itself computes RMSNorm and the attention softmax in float32, so its
gradient passes float32 there. The float32 sum is bounded by the magnitudes of its terms, so per token the test
asserts ``|explain − hand| ≤ 1e-6 · Σ_h |R_h|`` (hand relevance per hidden unit). Measured: ≤ 1e-7 of that
scale (LLaMA 9.4e-8, GPT-2 8.4e-8), i.e. ≤ 8.3e-7 of the row's largest token relevance. A wrong rule is far
outside: altering one rule of the hand oracle (gate share 1, bilinear without the ½, softmax without its bias
term, RoPE rotated instead of transposed, GQA mean instead of sum, LayerNorm without centring) gave 3.3e-4 …
0.68 of the row's largest relevance, and each made this test fail; ``test_tolerance_separates_rules`` keeps
one such check (plain gradient×input, > 0.6 of Σ|R_h|) in the suite.
"""

from __future__ import annotations

import functools

import lrp_by_hand as hand
import pytest
import torch
from conftest import make_model

from lxt_fx import explain
from lxt_fx.attribution import Attribution

TOL = 1e-6  # of Σ_h |R_h| per token; see the module docstring


def _error(got: torch.Tensor, per_unit: torch.Tensor) -> float:
    """Largest ``|got − Σ_h R_h| / Σ_h |R_h|`` over the tokens (``per_unit``: hand relevance ``[L, H]``)."""
    return float(((got - per_unit.sum(-1)).abs() / per_unit.abs().sum(-1)).max())


# Right-padded batch: the second row is shorter (padding id 0 after it), the third is a single token.
ROWS = [[3, 17, 5, 60, 22, 9, 41], [88, 2, 30, 7], [55]]


def _batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def _llama(layers: int = 2) -> torch.nn.Module:
    """Tiny LLaMA (hidden 32, 4 heads, 2 KV heads, eager), float64, RMSNorm weights randomized."""
    model = make_model("llama", "eager", seed=1, layers=layers).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return model


def _gpt2(zero_biases: bool = False) -> torch.nn.Module:
    """Tiny GPT-2 (hidden 32, 4 heads, 2 layers, eager, tanh-GELU), float64, biases and LayerNorm affine
    randomized (their default init is 0/1); ``zero_biases`` sets every bias and the position table to 0."""
    import transformers as tf

    cfg = tf.GPT2Config(vocab_size=96, n_embd=32, n_head=4, n_layer=2, n_positions=64, bos_token_id=0,
                        eos_token_id=0)
    cfg._attn_implementation = "eager"
    torch.manual_seed(2)
    model = tf.GPT2LMHeadModel(cfg).eval().double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name.endswith("wpe.weight"):
                p.copy_(torch.zeros_like(p) if zero_biases else 0.1 * torch.randn_like(p))
            elif ".ln_" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return model


ORACLES = {"llama": (_llama, hand.llama), "gpt2": (_gpt2, hand.gpt2)}
# LLaMA explains the argmax token of each row, GPT-2 given ids (one per row).
TARGETS = {"llama": None, "gpt2": [7, 50, 93]}


@functools.cache
def _explained(family: str) -> tuple[torch.nn.Module, torch.Tensor, Attribution]:
    """(model, plain logits of the padded batch, ``explain`` of the padded batch), once per family."""
    model = ORACLES[family][0]()
    ids, mask = _batch(ROWS)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.detach()
    return model, logits, explain(model, ids, attention_mask=mask, target=TARGETS[family])


@pytest.mark.parametrize("family", list(ORACLES))
def test_explain_equals_attnlrp_by_hand(family: str) -> None:
    model, logits, att = _explained(family)
    oracle, targets = ORACLES[family][1], TARGETS[family]
    assert att.relevance.dtype == torch.float32
    for i, row in enumerate(ROWS):
        n = len(row)
        target = int(att.target_ids[i])
        assert target == (int(logits[i, n - 1].argmax()) if targets is None else targets[i])
        res = oracle(model, torch.tensor(row), target)
        # the hand forward is the model's forward (also at the real positions of a padded row)
        torch.testing.assert_close(res.logits, logits[i, :n], rtol=0, atol=1e-12)
        got = att.relevance[i].double()
        assert torch.all(got[n:] == 0), "padding must get exactly 0 relevance"
        err = _error(got[:n], res.embedding_relevance)
        assert err <= TOL, f"{family} row {i}: |explain − hand| / Σ|R_h| = {err:.3g} (tolerance {TOL})"
        assert abs(float(att.target_scores[i]) - res.score) <= 1e-6 * max(1.0, abs(res.score))


@pytest.mark.parametrize("family", list(ORACLES))
def test_hand_oracle_conserves_up_to_softmax_leak(family: str) -> None:
    """The oracle checks itself: with zero biases every rule but softmax's is conservative, so
    Σ R_input = score − Σ (Σ R_p − Σ R_x) over all softmaxes, to ε-absorption (1e-12 stabilizer)."""
    build, oracle = ORACLES[family]
    model = build(zero_biases=True) if family == "gpt2" else build()
    for row in ROWS:
        for target in (7, 50):
            res = oracle(model, torch.tensor(row), target)
            total = float(res.embedding_relevance.sum())
            assert abs(total - (res.score - res.leak)) <= 1e-9 * max(1.0, abs(res.score)), (row, target)
            assert len(res.leaks) == model.config.num_hidden_layers
            assert res.leak != 0.0  # the softmax rule is really applied (it leaks on random weights)


@pytest.mark.parametrize("family", list(ORACLES))
def test_tolerance_separates_rules(family: str) -> None:
    """The comparison above can fail: plain gradient×input of the untouched model (no AttnLRP rule) lies far
    outside the tolerance from the hand oracle, on every row."""
    model, _, att = _explained(family)
    oracle = ORACLES[family][1]
    for i, row in enumerate(ROWS[:2]):
        target = int(att.target_ids[i])
        per_unit = oracle(model, torch.tensor(row), target).embedding_relevance
        embeds = model.get_input_embeddings()(torch.tensor([row])).detach().requires_grad_(True)
        logit = model(inputs_embeds=embeds, use_cache=False).logits[0, -1, target]
        (grad,) = torch.autograd.grad(logit, embeds)
        plain = (embeds * grad).sum(-1)[0].detach()
        assert _error(plain, per_unit) > 1e3 * TOL
