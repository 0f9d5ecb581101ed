"""The matplotlib pieces of the PNG renderers (imported only when a PNG is drawn), the figure file, and an
image as an array to overlay."""

from __future__ import annotations

import os
from typing import Any

import torch

from .common import RenderError, rgb


def matplotlib_parts() -> dict[str, Any]:
    """The matplotlib pieces the renderers use; ``ImportError`` naming the package when it is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import LinearSegmentedColormap, Normalize
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("PNG output needs matplotlib: pip install matplotlib (or the lxt-fx[viz] extra)") from exc
    cmap = LinearSegmentedColormap.from_list("lxt", [tuple(c / 255 for c in rgb(v)) for v in (-1.0, 0.0, 1.0)])
    return {"Canvas": FigureCanvasAgg, "ScalarMappable": ScalarMappable, "Normalize": Normalize,
            "Figure": Figure, "Rectangle": Rectangle, "cmap": cmap}


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int) -> None:
    """Write ``fig`` as PNG to exactly ``path`` (no suffix added); a suffix other than ``.png`` is a
    :class:`RenderError`, since the file would not be what its name says."""
    suffix = os.path.splitext(os.fspath(path))[1]
    if suffix and suffix.lower() != ".png":
        raise RenderError(f"{os.fspath(path)!r} ends in {suffix!r}, but this writes a PNG: give a path ending in "
                          "'.png' (or without a suffix, written as given)")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")


def image_array(image: Any) -> Any:
    """``image`` as a float numpy array ``[H, W, 3]`` in [0, 1]: a PIL image, a numpy array or tensor
    ``[H, W, C]`` / ``[C, H, W]`` (uint8 0–255, or floats of any range, which are min–max scaled)."""
    import numpy as np

    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy()
    array = np.asarray(image)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise RenderError(f"image of shape {array.shape}: give [H, W, 3], [3, H, W], [H, W] or a PIL image")
    array = array[..., :3]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    array = array.astype(np.float32)
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)
