"""ViT's books close: a tiny random ``ViTForImageClassification`` (hidden 64, 2 layers, 32×32 image, patch 8)
explained with AttnLRP (its default), CP-LRP and the LXT-style vision composite (chosen explicitly), bookkept
by :func:`lxt_fx.check.check`.

Where the relevance goes (zero-bias mode): almost all of the score to the two learned inputs added on the
relevance path — the position embeddings (booked ``embedding``) and the class token concatenated in front
of the patches (booked ``constant``) — and the rest to the pixels; AttnLRP's softmax term besides. What no
cause accounts for must be float rounding (< 1e-4 of the score). The classic γ-rule on signed pixels and
LayerNorm outputs let its denominators cross zero, so that relevance grew to ~1e3 × the score inside the
graph (image 1 below): the vision composite's generalized γ / signed z⁺ keeps Σ|R| near the score."""

from __future__ import annotations

import functools

import pytest
import torch

import lxt_fx
from lxt_fx.check import check

IMAGES = {"vision": (0, 1, 2), "cp_lrp": (0, 1), "attnlrp": (0, 1)}
RUNS = [(name, seed) for name, seeds in IMAGES.items() for seed in seeds]


@functools.cache
def vit() -> torch.nn.Module:
    import transformers as tf

    cfg = tf.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                       image_size=32, patch_size=8, num_labels=5)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return tf.ViTForImageClassification(cfg).eval()


@pytest.fixture(scope="module", autouse=True)
def _free_model():
    yield
    vit.cache_clear()


def image(seed: int, size: int = 32) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def composite(name: str) -> lxt_fx.composites.Composite:
    return getattr(lxt_fx.composites, name)


def embedding_nodes(books) -> tuple[float, float]:
    """(Σ absorbed by the position-embedding add, Σ absorbed by the class-token concat) in the embeddings."""
    named = [leak for leak in books.leaks if leak.segment == "embeddings"]
    pos = sum(leak.absorbed for leak in named if leak.op == "aten.add.Tensor")
    cls = sum(leak.absorbed for leak in named if leak.op == "aten.cat.default")
    causes = {(leak.op, leak.cause) for leak in named if abs(leak.absorbed) > 1e-3 * abs(books.score)}
    assert causes == {("aten.add.Tensor", "embedding"), ("aten.cat.default", "constant")}, causes
    return pos, cls


@pytest.mark.parametrize("name,seed", RUNS)
def test_zero_bias_books_close(name: str, seed: int) -> None:
    report = check(vit(), {"pixel_values": image(seed)}, composite=composite(name))
    books = report.zero_bias
    assert books is not None
    score = abs(books.score)
    verdict = books.verdict()
    assert verdict.verified, verdict.reason
    assert abs(books.unexplained) < 1e-4 * score, books.by_cause()
    assert books.scale < 30 * score  # relevance is not blown up anywhere between the score and the pixels
    causes = books.by_cause()
    pos, cls = embedding_nodes(books)
    assert causes["embedding"] == pytest.approx(pos) and causes["constant"] == pytest.approx(cls)
    assert pos > 0.1 * score and cls != 0.0  # the two learned inputs are where most of the score goes …
    assert abs(causes["other"]) < 1e-5 * score and abs(causes["bias"]) < 1e-5 * score
    if name != "attnlrp":
        assert abs(causes["softmax"]) < 1e-6 * score  # … CP-LRP stops relevance at the attention weights
    # … and the books telescope: score = pixels + embeddings + class token + softmax term, to rounding
    assert abs(books.score - books.input_sum - pos - cls - causes["softmax"]) < 1e-4 * score
    if name == "vision":
        rules = {row.name: row.rule for row in report.rewrite.rewritten}
        assert rules.get("conv2d") == "zplus"  # the patch embedding
        assert {r for n, r in rules.items() if n.startswith("linear")} == {"gamma"}


def test_classic_gamma_blows_up_on_signed_inputs() -> None:
    # the old default (classic W + γW⁺, Conv γ = 0.25) on image 1: every node still conserves (zero bias,
    # ε = 0), but the denominators cross zero and relevance reaches ~1.6e3 × the score at the cuts.
    old = lxt_fx.composites.cp_lrp_gamma(linear_gamma=0.05, conv_gamma=0.25, signed=False)
    books = check(vit(), {"pixel_values": image(1)}, composite=old).zero_bias
    assert books is not None and books.scale > 300 * abs(books.score)
    assert not books.verdict().verified


def test_biases_are_booked_as_bias() -> None:
    # the same model with every bias non-zero: in normal mode the γ/z⁺ rules' bias shares (b + γb^±) / d
    # and the LayerNorm biases are booked as "bias", and the books still close
    model = vit()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            gen = torch.Generator().manual_seed(11)
            for n, p in model.named_parameters():
                if n.endswith("bias"):
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        report = check(model, {"pixel_values": image(0)}, composite=lxt_fx.composites.vision)
    finally:
        model.load_state_dict(state)
    books = report.conservation
    causes = books.by_cause()
    assert abs(causes["bias"]) > 1e-3 * abs(books.score)
    assert books.verdict().verified, books.verdict().reason
    assert abs(books.unexplained) < 1e-4 * abs(books.score)
    assert report.zero_bias is not None and report.zero_bias.verdict().verified


def test_interpolated_position_embeddings_are_booked_as_embedding() -> None:
    # a 48×48 image with interpolate_pos_encoding: the position embeddings go through a bicubic resize
    # before the add; they are still the embedding cause, and the books close
    books = check(vit(), {"pixel_values": image(4, 48), "interpolate_pos_encoding": True},
                  composite=lxt_fx.composites.vision).zero_bias
    assert books is not None and books.verdict().verified, books.verdict().reason
    pos, cls = embedding_nodes(books)
    assert pos == pytest.approx(books.by_cause()["embedding"]) and pos != 0.0
    assert abs(books.unexplained) < 1e-4 * abs(books.score)
