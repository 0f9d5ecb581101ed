"""Baselines: one interface, known answers on linear models, IG completeness, the registry's errors."""

from __future__ import annotations

import evalhelpers
import pytest
import torch
from evalhelpers import LinearLM, SmoothLM, batch

import lxt_fx
from lxt_fx.evaluate import baselines as B
from lxt_fx.evaluate.perturbation import model_scores

# IG completeness tolerance: |Σ_tokens IG − (f(x) − f(0))| ≤ IG_TOL · max(1, |f(x) − f(0)|)
IG_TOL = 1e-3

linear, one_thread, tiny_llama = evalhelpers.linear, evalhelpers.one_thread, evalhelpers.tiny_llama  # shared fixtures


def test_every_method_has_the_same_interface_and_masks_padding(tiny_llama) -> None:
    ids, mask, pos = batch(rows=3, length=9, vocab=96, pad_last=3)
    target = torch.tensor([4, 17, 60])
    rel = B.attribute_many(tiny_llama, ids, mask, target, pos, B.method_names(), options={"steps": 4})
    assert list(rel) == B.method_names()
    for name, r in rel.items():
        assert r.shape == (3, 9) and r.dtype == torch.float32, name
        assert torch.isfinite(r).all(), name
        assert (r[2, 6:] == 0).all(), name
    assert tiny_llama.config._attn_implementation == "sdpa"               # rollout switched it back


def test_shared_gradient_equals_each_method_alone(tiny_llama) -> None:
    ids, mask, pos = batch(rows=2, length=7, vocab=96)
    target = torch.tensor([1, 2])
    together = B.attribute_many(tiny_llama, ids, mask, target, pos, ["gradient", "saliency", "ixg"])
    for name in together:
        alone = B.get_method(name)(tiny_llama, ids, mask, target, pos)
        assert torch.allclose(together[name], alone, atol=1e-6), name


def test_ixg_and_ig_are_exact_on_a_linear_model(linear: LinearLM) -> None:
    ids, mask, pos = batch(rows=3, length=8, pad_last=2)
    target = torch.tensor([0, 2, 1])
    exact = linear.exact(ids, target, mask)
    assert torch.allclose(B.input_x_gradient(linear, ids, mask, target, pos), exact, atol=1e-5)
    assert torch.allclose(B.integrated_gradients(linear, ids, mask, target, pos, steps=3), exact, atol=1e-5)
    grad = B.gradient(linear, ids, mask, target, pos)
    assert torch.allclose(grad[0, 0], linear.head[0].sum().detach(), atol=1e-5)


@pytest.mark.parametrize("steps", [64, 128])
def test_ig_completeness_on_a_smooth_model(steps: int) -> None:
    model = SmoothLM()
    ids, mask, pos = batch(rows=4, length=6)
    target = torch.tensor([0, 1, 2, 0])
    ig = B.integrated_gradients(model, ids, mask, target, pos, steps=steps, batch_size=7)
    emb = model.get_input_embeddings()(ids).detach()
    with torch.no_grad():
        delta = model_scores(model, emb, mask, target, pos) - model_scores(model, emb * 0, mask, target, pos)
    assert ((ig.sum(1) - delta).abs() <= IG_TOL * delta.abs().clamp_min(1)).all()


def test_ig_completeness_on_llama_with_a_smooth_norm() -> None:
    """A zero baseline on an RMSNorm model with eps 1e-6 puts a near-step on the path (the norm is
    scale-invariant until α·rms(x) ≈ √eps, α ≈ 1e-4), which a uniform Riemann sum cannot resolve;
    with eps = 1e-2 the path is smooth and completeness holds to IG_TOL."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                         rms_norm_eps=1e-2, attn_implementation="sdpa")).eval()
    ids, mask, pos = batch(rows=3, length=8, vocab=96, pad_last=2)
    target = torch.tensor([1, 2, 3])
    ig = B.integrated_gradients(model, ids, mask, target, pos, steps=32)
    emb = model.get_input_embeddings()(ids).detach()
    with torch.no_grad():
        delta = model_scores(model, emb, mask, target, pos) - model_scores(model, emb * 0, mask, target, pos)
    assert ((ig.sum(1) - delta).abs() <= IG_TOL * delta.abs().clamp_min(1)).all()


def test_lrp_methods_match_explain_and_read_the_given_position(tiny_llama) -> None:
    ids, mask, pos = batch(rows=2, length=8, vocab=96, pad_last=2)
    target = torch.tensor([3, 8])
    ref = lxt_fx.explain(tiny_llama, ids, attention_mask=mask, target=target).relevance
    assert torch.allclose(B.attnlrp(tiny_llama, ids, mask, target, pos), ref, atol=1e-6)
    ref_cp = lxt_fx.explain(tiny_llama, ids, attention_mask=mask, target=target, composite=lxt_fx.cp_lrp)
    assert torch.allclose(B.cp_lrp(tiny_llama, ids, mask, target, pos), ref_cp.relevance, atol=1e-6)
    early = torch.tensor([2, 3])                                            # explain an earlier position
    rel = B.attnlrp(tiny_llama, ids, mask, target, early)
    assert (rel[0, 3:] == 0).all() and (rel[1, 4:] == 0).all()              # causal: later tokens irrelevant


def test_rollout_rows_are_a_distribution_and_the_model_is_restored(tiny_llama) -> None:
    ids, mask, pos = batch(rows=2, length=6, vocab=96)
    rel = B.attention_rollout(tiny_llama, ids, mask, torch.tensor([0, 0]), pos)
    assert torch.allclose(rel.sum(1), torch.ones(2), atol=1e-5) and (rel >= 0).all()
    assert tiny_llama.config._attn_implementation == "sdpa"
    with pytest.raises(ZeroDivisionError), B.eager_attention(tiny_llama):
        assert tiny_llama.config._attn_implementation == "eager"
        raise ZeroDivisionError
    assert tiny_llama.config._attn_implementation == "sdpa"


def test_random_is_seeded_and_reproducible(tiny_llama) -> None:
    ids, mask, pos = batch(rows=3, length=6, vocab=96)
    target = torch.zeros(3, dtype=torch.long)
    a = B.get_method("random", seed=5)(tiny_llama, ids, mask, target, pos)
    b = B.get_method("random", seed=5)(tiny_llama, ids, mask, target, pos)
    c = B.get_method("random", seed=6)(tiny_llama, ids, mask, target, pos)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(B.random_relevance(tiny_llama, ids[1:], mask[1:], target[1:], pos[1:], seed=5), a[1:])


def test_unknown_method_error_lists_the_valid_names() -> None:
    with pytest.raises(B.UnknownMethodError) as info:
        B.get_method("shap")
    message = str(info.value)
    for name in B.method_names():
        assert name in message
    with pytest.raises(B.UnknownMethodError, match="attnlrp"):
        B.parse_methods("attnlrp,lime")
    with pytest.raises(B.UnknownMethodError, match="no method"):
        B.parse_methods(" , ")
    assert B.parse_methods("AttnLRP, integrated_gradients,ig,ixg") == ["attnlrp", "ig", "ixg"]
    assert isinstance(B.UnknownMethodError("x"), lxt_fx.LXTError)
