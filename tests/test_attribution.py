"""The views of an ``Attribution`` (``row``, ``top``, ``to_dict``): what they give for an attribution without
tokens (an image model) and for an encoder-decoder model (the decoder's tokens too)."""

from __future__ import annotations

import json

import pytest
import torch

import lxt_fx
from lxt_fx import attribution
from lxt_fx.attribution import Attribution
from lxt_fx.rewrite import RewriteReport


def _image() -> Attribution:
    pixels = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(0))
    cells = pixels.reshape(2, 2, 4, 2, 4).sum((2, 4))
    return Attribution(pixels, [[], []], torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long),
                       torch.tensor([1, 2]), torch.tensor([0.5, 0.25]), torch.tensor([-1, -1]),
                       RewriteReport("vision", "ViTForImageClassification"), image_relevance=cells,
                       pixel_relevance=pixels)


def test_token_views_of_an_image_attribution_say_there_are_no_tokens() -> None:
    att = _image()
    NoTokensError = attribution.NoTokensError  # noqa: N806 - the class under test
    assert not att.has_tokens()
    for view in (lambda: att.top(3), lambda: att.row(1)):
        with pytest.raises(NoTokensError, match="no tokens .*pixel_relevance, image_relevance"):
            view()
    assert issubclass(NoTokensError, lxt_fx.LXTError) and issubclass(NoTokensError, ValueError)
    data = json.loads(json.dumps(att.to_dict()))  # JSON-ready
    assert data["has_tokens"] is False
    for i, row in enumerate(data["rows"]):
        assert row["tokens"] == [] and row["relevance"] == []
        assert row["pixel_relevance"] == att.pixel_relevance[i].tolist()
        assert row["image_relevance"] == att.image_relevance[i].tolist()


def test_t5_to_dict_and_top_include_the_decoder() -> None:
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                      decoder_start_token_id=0, pad_token_id=0)
    model = tf.T5ForConditionalGeneration(cfg).eval()
    att = lxt_fx.explain(model, torch.tensor([[5, 6, 7, 1]]), decoder_inputs=torch.tensor([[0, 9, 11]]))
    enc, dec = att.relevance[0].tolist(), att.decoder_relevance[0].tolist()
    assert len(dec) == 3
    row = att.to_dict()["rows"][0]
    assert row["relevance"] == enc and row["decoder_relevance"] == dec
    assert row["decoder_input_ids"] == [0, 9, 11] and row["decoder_tokens"] == ["0", "9", "11"]
    ranked = att.top(7)
    everything = [(t, v) for t, v in zip(["5", "6", "7", "1"], enc, strict=True)] + \
        [(f"decoder: {t}", v) for t, v in zip(["0", "9", "11"], dec, strict=True)]
    assert ranked == sorted(everything, key=lambda tv: tv[1], reverse=True)  # both inputs, decoder ones labelled
    assert att.decoder_row(0) == everything[4:]
