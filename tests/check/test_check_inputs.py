"""``check`` and the feature functions take inputs exactly as ``explain`` does: positional pixels and
``images=`` for a ViT, ``audio=`` for Whisper, ``processor=``/``tokenizer=``, ``attention_mask=``, ``target=``,
a composite by name. Each checked score equals the score ``explain`` explains for the same inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import transformers as tf
from conftest import make_model
from helpers import word_tokenizer

import lxt_fx
from lxt_fx.features import heads
from lxt_fx.session import InputError

sys.path.insert(0, str(Path(__file__).parents[1]))
from modalities.tiny import features, model  # noqa: E402


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    cfg = tf.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                       intermediate_size=48, num_labels=3)
    return tf.ViTForImageClassification(cfg).eval()


def _explained(att: lxt_fx.Attribution) -> float:
    return float(att.target_scores.double().sum())


def test_check_takes_pixels_positionally_and_as_images(vit) -> None:
    px = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        own = float(vit(pixel_values=px).logits.max(-1).values.double().sum())  # the model's own argmax logits
    positional = lxt_fx.check(vit, px, zero_bias=False)
    keyword = lxt_fx.check(vit, images=px, zero_bias=False)
    assert positional.score == pytest.approx(own, rel=1e-5)
    assert keyword.score == pytest.approx(own, rel=1e-5)
    assert keyword.score == pytest.approx(_explained(lxt_fx.explain(vit, images=px)), rel=1e-6)


def test_check_takes_text_like_explain() -> None:
    llama = make_model("llama")
    tok = word_tokenizer(["the", "cat", "sat", "blue", "on", "mat"])
    texts = ["the cat", "the mat sat on"]
    given = dict(target=["blue", "sat"], composite="cp_lrp")
    report = lxt_fx.check(llama, texts, processor=tok, zero_bias=False, **given)
    att = lxt_fx.explain(llama, texts, processor=tok, **given)
    assert report.composite == "cp_lrp"
    assert report.score == pytest.approx(_explained(att), rel=1e-5)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    report = lxt_fx.check(llama, ids, attention_mask=mask, zero_bias=False)
    assert report.score == pytest.approx(_explained(lxt_fx.explain(llama, ids, attention_mask=mask)), rel=1e-5)


def test_check_takes_audio_like_explain() -> None:
    whisper = model("whisper")
    feat = features(1)
    report = lxt_fx.check(whisper, audio=feat, zero_bias=False)
    assert report.score == pytest.approx(_explained(lxt_fx.explain(whisper, audio=feat)), rel=1e-5)
    with pytest.raises(InputError, match=r"\[batch, num_mel_bins=8, frames=32\]; got shape \(8, 32\)"):
        lxt_fx.check(whisper, audio=feat[0], zero_bias=False)
    text = torch.tensor([[1, 5, 6]])
    by_decoder = lxt_fx.check(whisper, audio=feat, decoder_inputs=text, zero_bias=False)
    assert by_decoder.score == pytest.approx(_explained(lxt_fx.explain(whisper, text, audio=feat)), rel=1e-5)
    with pytest.raises(InputError, match="once"):
        lxt_fx.check(whisper, text, audio=feat, decoder_inputs=text)


def test_heads_take_the_attention_mask_like_explain() -> None:
    llama = make_model("llama")
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    batch = heads(llama, ids, attention_mask=mask)
    torch.testing.assert_close(batch[1], heads(llama, ids[1:, :3]), atol=1e-6, rtol=1e-4)  # the row alone
    torch.testing.assert_close(batch[0], heads(llama, ids[:1]), atol=1e-6, rtol=1e-4)
