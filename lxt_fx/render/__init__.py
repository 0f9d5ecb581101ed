"""Renderers of an :class:`~lxt_fx.attribution.Attribution`: terminal (rich), HTML, PNG (matplotlib).

Every renderer colours a token by its relevance divided by the row's max|R|, on one diverging palette
(blue against the target, white zero, red for it).
"""

from .common import normalized, rgb, token_text
from .html import to_html
from .png import save_png
from .terminal import show

__all__ = ["normalized", "rgb", "save_png", "show", "to_html", "token_text"]
