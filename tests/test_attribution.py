"""The views of an ``Attribution``: every row read at the positions where its mask is 1, named errors for
wrong arguments, PNG paths written as given; an attribution without tokens (an image model) and an
encoder-decoder model (the decoder's tokens too)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import make_model

import lxt_fx
from lxt_fx import attribution
from lxt_fx.attribution import Attribution, RowIndexError, ViewArgumentError
from lxt_fx.render.common import RenderError, rows
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


IDS = torch.tensor([[5, 6, 7, 8, 9, 10],
                    [0, 0, 4, 11, 12, 13],     # left-padded
                    [14, 15, 16, 17, 0, 0]])   # right-padded
MASK = torch.tensor([[1, 1, 1, 1, 1, 1],
                     [0, 0, 1, 1, 1, 1],
                     [1, 1, 1, 1, 0, 0]])


@pytest.fixture(scope="module")
def model():
    return make_model("llama", layers=1)


@pytest.fixture(scope="module")
def padded(model):
    return lxt_fx.explain(model, IDS, attention_mask=MASK)


@pytest.mark.parametrize("i", [0, 1, 2])
def test_padded_rows_are_labelled_like_the_row_alone(model, padded, i):
    """Left and right padding: every view of row i equals the row explained alone (its real tokens only)."""
    keep = MASK[i].bool()
    alone = lxt_fx.explain(model, IDS[i][keep][None])
    assert padded.tokens[i] == alone.tokens[0] == [str(t) for t in IDS[i][keep].tolist()]
    got, want = padded.row(i), alone.row(0)
    assert [t for t, _ in got] == [t for t, _ in want]
    torch.testing.assert_close(torch.tensor([v for _, v in got]), torch.tensor([v for _, v in want]),
                               atol=1e-5, rtol=1e-4)
    assert [t for t, _ in padded.top(3, i=i)] == [t for t, _ in alone.top(3)]
    row, ref = padded.to_dict()["rows"][i], alone.to_dict()["rows"][0]
    assert row["tokens"] == ref["tokens"] and row["input_ids"] == ref["input_ids"]
    torch.testing.assert_close(torch.tensor(row["relevance"]), torch.tensor(ref["relevance"]), atol=1e-5, rtol=1e-4)
    view, ref_view = rows(padded)[i], rows(alone)[0]  # what show / to_html / save_png draw
    assert [t.text for t in view.tokens] == [t.text for t in ref_view.tokens]
    torch.testing.assert_close(torch.tensor([t.relevance for t in view.tokens]),
                               torch.tensor([t.relevance for t in ref_view.tokens]), atol=1e-5, rtol=1e-4)


def test_a_mask_with_holes_is_read_where_it_is_one(model):
    """A hole in the mask: the row's views hold the tokens where the mask is 1, with the relevance the same
    holed row gets in a batch of its own."""
    ids = torch.tensor([[20, 21, 22, 23, 24, 25], [30, 31, 32, 33, 34, 35]])
    mask = torch.tensor([[1, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1]])
    att = lxt_fx.explain(model, ids, attention_mask=mask)
    alone = lxt_fx.explain(model, ids[:1], attention_mask=mask[:1])
    keep = mask[0].bool()
    assert att.tokens[0] == ["20", "22", "23", "25"]
    assert [t for t, _ in att.row(0)] == ["20", "22", "23", "25"]
    torch.testing.assert_close(torch.tensor([v for _, v in att.row(0)]), alone.relevance[0][keep],
                               atol=1e-5, rtol=1e-4)
    assert att.to_dict()["rows"][0]["input_ids"] == [20, 22, 23, 25]
    assert [t.text.strip() for t in rows(att)[0].tokens] == ["20", "22", "23", "25"]  # ids drawn apart
    first = att.to_html().split('<div class="row">')[1]  # row 0 as drawn: the hole (21) and the pad (24) left out
    drawn = re.findall(r">\s*(\d+)\s*<", first)  # the ids drawn as token texts
    assert drawn == ["20", "22", "23", "25"]


def test_top_k_is_a_non_negative_int(padded):
    """top(-1) used to drop the last token, top("3") to fail inside sorted(): both are named errors; k larger
    than the row gives the whole row."""
    n = int(MASK[0].sum())
    assert len(padded.top(100, i=0)) == n
    assert sorted(padded.top(n, i=0)) == sorted(padded.row(0))
    for bad in (-1, "3", 2.0, True):
        with pytest.raises(ViewArgumentError, match="non-negative int"):
            padded.top(bad)


def test_rows_out_of_range_are_named(padded):
    for call in (lambda: padded.row(3), lambda: padded.top(i=5), lambda: padded.row(-1), lambda: padded.row("1")):
        with pytest.raises(RowIndexError, match="row"):
            call()
    assert isinstance(RowIndexError("x"), IndexError)


def test_fewer_labels_than_rows_are_named(padded):
    for call in (lambda: padded.show(labels=["a", "b"]), lambda: padded.to_html(labels=["a"]),
                 lambda: padded.to_html(labels="abc")):
        with pytest.raises(RenderError, match="one label per row"):
            call()
    assert "my label" in padded.to_html(labels=["my label", "b", "c"])


def test_save_png_writes_the_name_given(padded, tmp_path):
    pytest.importorskip("matplotlib")
    bare = tmp_path / "heatmap"
    padded.save_png(bare)
    assert bare.exists() and not (tmp_path / "heatmap.png").exists()
    assert bare.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(RenderError, match=r"\.png"):
        padded.save_png(tmp_path / "heatmap.jpg")
    assert not (tmp_path / "heatmap.jpg").exists()
