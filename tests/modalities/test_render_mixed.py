"""Side-by-side rendering of mixed inputs: one shared scale, every token / patch / frame drawn."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console

from lxt_fx.attribution import Attribution
from lxt_fx.render import RenderError, modality_maps, to_mixed_html
from lxt_fx.rewrite import RewriteReport


def _mixed() -> Attribution:
    att = Attribution(torch.tensor([[0.5, -1.0, 0.25]]), [["a", "<b>", "c"]], torch.tensor([[1, 2, 3]]),
                      torch.ones(1, 3, dtype=torch.long), torch.tensor([4]), torch.tensor([2.0]),
                      torch.tensor([2]), RewriteReport("attnlrp", "Toy"), ["d"])
    att.image_relevance = torch.tensor([[[2.0, 0.0], [-0.5, 1.0]]])
    att.audio_relevance = torch.tensor([[0.1, -4.0, 0.3]])
    return att


def test_one_scale_over_all_modalities() -> None:
    maps = modality_maps(_mixed())
    assert maps.scale == 4.0  # the largest |R| of any modality (an audio frame here)
    assert [v for _, v in maps.tokens] == [0.125, -0.25, 0.0625]
    torch.testing.assert_close(maps.patches, torch.tensor([[0.5, 0.0], [-0.125, 0.25]]))
    torch.testing.assert_close(maps.frames, torch.tensor([0.025, -1.0, 0.075]))
    assert maps.totals == pytest.approx({"text": -0.25, "image": 2.5, "audio": -3.6})


def test_html_has_every_token_patch_and_frame(tmp_path) -> None:
    text = to_mixed_html(_mixed(), tmp_path / "m.html")
    assert text.count('class="tok"') == 3 and "&lt;b&gt;" in text
    assert text.count("<td") == 4 + 3
    assert (tmp_path / "m.html").read_text(encoding="utf-8") == text


def test_terminal_and_png(tmp_path) -> None:
    console = Console(record=True, width=100)
    _mixed().show_mixed(console)
    out = console.export_text()
    assert "2×2 patches" in out and "3 frames" in out and "<b>" in out
    pytest.importorskip("matplotlib")
    _mixed().save_mixed_png(tmp_path / "m.png", image=torch.rand(3, 8, 8))
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_token_only_attribution_is_a_named_error() -> None:
    att = _mixed()
    att.image_relevance = att.audio_relevance = None
    with pytest.raises(RenderError, match="images=... or audio="):
        modality_maps(att)


def test_png_title_is_never_cut(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    import numpy as np
    from PIL import Image

    for keep in (("image",), ("image", "audio"), ("text", "image", "audio")):
        one = _mixed()
        one.target_tokens = ["▁supercalifragilisticexpialidocious-and-then-some"]  # a long title
        if "audio" not in keep:
            one.audio_relevance = None
        if "text" not in keep:
            one.attention_mask = torch.zeros_like(one.attention_mask)
        path = tmp_path / f"{len(keep)}.png"
        one.save_mixed_png(path)
        picture = np.asarray(Image.open(path).convert("L"))
        # no ink in the outermost columns: nothing (the title included) runs off the left or right edge
        assert picture[:, :2].min() > 250 and picture[:, -2:].min() > 250, keep
