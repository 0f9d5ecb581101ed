"""The LaTeX heatmap compiled by a real TeX engine (``make test-latex`` installs Debian's TeX Live; without an
engine the test is skipped): the PDF exists, its fonts are vector fonts (no METAFONT bitmaps), and its first
page, turned into a PNG by ``pdftoppm``, shows the most relevant tokens in full red and full blue."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from lxt_fx.attribution import Attribution
from lxt_fx.render import rgb
from lxt_fx.render.latex import save_pdf
from lxt_fx.rewrite import RewriteReport

ENGINE = shutil.which("xelatex") or shutil.which("pdflatex")
# byte-level BPE pieces with every LaTeX special, Latin-1 and CJK text, a newline and a tab
TOKENS = ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis", "Ġ#", "$", "%", "&", "_", "{", "}", "~", "^", "\\", "Ċ",
          "Ġ<", ">", "|", "ĠZürich", "ĠWarsaw", "Ġ東京", "Ġ…", "\t"]


def _attribution() -> Attribution:
    n = len(TOKENS)
    rel = torch.tensor([[(-1.0) ** i * (i + 1) / n for i in range(n)]])  # the last token: |R| max, at ±1
    rel[0, 3], rel[0, 20] = -1.0, 1.0  # "ĠFrance": full blue, "ĠWarsaw": full red
    return Attribution(rel, [TOKENS], torch.zeros(1, n, dtype=torch.long), torch.ones(1, n, dtype=torch.long),
                       torch.tensor([0]), torch.ones(1), torch.tensor([n - 1]), RewriteReport("attnlrp", "Toy"))


@pytest.mark.skipif(ENGINE is None, reason="no xelatex or pdflatex: `make test-latex` installs Debian's "
                                           "texlive-latex-base, texlive-latex-recommended and poppler-utils")
def test_the_pdf_heatmap_compiles_with_vector_fonts_and_full_colours(tmp_path: Path) -> None:
    pdf = tmp_path / "heat.pdf"
    engine = save_pdf(_attribution(), pdf, title="lxt-fx · 100% & $5 ~ heatmap")
    assert engine in ("xelatex", "pdflatex") and pdf.read_bytes()[:5] == b"%PDF-"
    if shutil.which("pdffonts"):  # poppler-utils: a Type 3 font is a bitmap (METAFONT), blurry when zoomed
        fonts = subprocess.run(["pdffonts", str(pdf)], capture_output=True, text=True, check=True).stdout
        assert "Type 3" not in fonts, fonts
    if not shutil.which("pdftoppm"):
        pytest.skip("pdftoppm (poppler-utils) is needed to look at the page")
    image = pytest.importorskip("matplotlib.image")
    subprocess.run(["pdftoppm", "-png", "-r", "100", "-f", "1", "-l", "1", str(pdf), str(tmp_path / "page")],
                   check=True, capture_output=True, timeout=60)
    (png,) = tmp_path.glob("page*.png")
    pixels = torch.from_numpy((image.imread(png)[..., :3] * 255).round().astype(int))
    for colour in (rgb(1.0), rgb(-1.0)):  # each drawn as a token's box (and at the ends of the legend's bar)
        near = (pixels - torch.tensor(colour)).abs().max(-1).values <= 3
        assert int(near.sum()) > 300, colour
