"""Renderers of an :class:`~lxt_fx.attribution.Attribution`: terminal (rich), HTML, LaTeX/PDF, PNG
(matplotlib), an image overlay for pixel relevance, mixed inputs side by side (:mod:`.mixed`), and the tokens × layers relevance trace.

Every renderer colours a token by its relevance divided by the row's max|R| (clipped to [-1, 1]), on one
diverging palette (blue against the target, white zero, red for it); ``skip_first=True`` leaves the first
(sink) token out of that scale. Pass ``tokenizer=`` to show tokens as the text they decode to.
"""

from .common import RenderError, display_tokens, normalized, rgb, rows, token_text
from .html import to_html
from .latex import LatexError, LatexNotFoundError, latex_escape, save_pdf, to_latex
from .mixed import ModalityMaps, modality_maps, save_mixed_png, show_mixed, to_mixed_html
from .png import save_image_overlay, save_png
from .terminal import show
from .trace import Trace, block_paths, relevance_trace, trace, trace_capture, traces

__all__ = ["LatexError", "LatexNotFoundError", "ModalityMaps", "RenderError", "Trace", "block_paths", "display_tokens",
           "latex_escape", "modality_maps", "normalized", "relevance_trace", "rgb", "rows", "save_image_overlay", "save_mixed_png", "save_pdf",
           "save_png", "show", "show_mixed", "to_html", "to_latex", "to_mixed_html", "token_text", "trace", "trace_capture",
           "traces"]
