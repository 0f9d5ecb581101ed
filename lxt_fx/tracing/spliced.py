"""Inputs of vision-language models that splice image features into their text (LLaVA-like, Qwen2-VL-like).

Such a model replaces the image placeholder tokens of its text by the vision tower's features
(``masked_scatter``), so one backward from the explained logit reaches the text embeddings and the pixels.
Three facts shape their capture:

* The number of images and their size fix the graph: LLaVA unbinds the image batch into a Python list,
  Qwen2-VL splits its vision attention per image with ``.tolist()``. A capture of such a model is therefore
  specialised to the shapes of its tensor inputs (:func:`shape_keyed`; the capture key holds every shape but
  the text length, which stays a dynamic dimension of the graph), and a call with another image grid
  captures again — never a graph traced for other shapes. Prompts of every length share one capture.
* Qwen2-VL's M-RoPE position ids come from the token ids through data-dependent Python (``get_rope_index``),
  which a graph fed ``inputs_embeds`` cannot run (the model would silently fall back to 1-D positions).
  :func:`graph_inputs` computes them from the ids outside the graph and passes them in as ``position_ids``
  (``[3, batch, seq]``: temporal, height, width).
* Qwen2-VL's image grid ``image_grid_thw`` and the vision attention's segment boundaries ``cu_seqlens``
  are passed as NumPy constants, so the per-image split is plain Python while the graph is traced (as a
  tensor they would be data-dependent). The capture key holds their values.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .errors import LXTError


class SplicedInputError(LXTError, ValueError):
    """Inputs of a vision-language model that do not fit together (image tokens vs. images, a missing grid)."""


def splices_images(model: nn.Module) -> bool:
    """Whether ``model`` splices image features into its text: its config names an ``image_token_id`` and its
    ``forward`` takes both ``pixel_values`` and ``inputs_embeds`` by name (LLaVA, Qwen2-VL, ...)."""
    config = getattr(model, "config", None)
    if getattr(config, "image_token_id", None) is None:
        return False
    params = inspect.signature(type(model).forward).parameters
    return "pixel_values" in params and "inputs_embeds" in params


def shape_keyed(model: nn.Module, tensors: Mapping[str, Tensor]) -> bool:
    """Whether the capture of this call is specialised to the exact shapes of ``tensors``: a model that
    splices image features into its text, called with images."""
    return "pixel_values" in tensors and splices_images(model)


def image_token_id(model: nn.Module) -> int:
    """The id of the image placeholder token (``config.image_token_id``)."""
    return int(model.config.image_token_id)


def _rope_owner(model: nn.Module) -> Any:
    """The submodule with Qwen2-VL's ``get_rope_index`` (the model itself or ``model.model``), else None."""
    for owner in (model, getattr(model, "model", None)):
        if owner is not None and callable(getattr(type(owner), "get_rope_index", None)):
            return owner
    return None


def graph_inputs(model: nn.Module, ids: Tensor, tensors: Mapping[str, Any], static: Mapping[str, Any]
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tensors, static)`` for the graph of a spliced model called with token ``ids`` and images.

    Checks that the text holds as many image tokens as the images give features (a Q-Former model's
    ``num_query_tokens`` per image, a LLaVA-like model's patches; :class:`SplicedInputError` otherwise); a
    forward that requires ``input_ids`` even beside ``inputs_embeds`` (BLIP-2) gets ``input_ids=None``. For an M-RoPE model: adds ``position_ids`` ``[3, batch, seq]``
    from ``get_rope_index`` (unless given) and moves ``image_grid_thw`` into ``static`` as a NumPy array,
    with the vision attention's ``cu_seqlens``.
    """
    tensors, static = dict(tensors), dict(static)
    n_tokens = int((ids == image_token_id(model)).sum())
    owner = _rope_owner(model)
    if owner is None:
        pixels = tensors["pixel_values"]
        per_image = _features_per_image(model, pixels)
        want = None if per_image is None else per_image * pixels.shape[0]
        images = pixels.shape[0]
    else:
        grid = tensors.pop("image_grid_thw", None)
        grid = static.pop("image_grid_thw", None) if grid is None else grid
        if grid is None:
            raise SplicedInputError(f"{type(model).__name__} needs image_grid_thw with pixel_values (the [t, h, w] "
                                    "patch grid of each image): pass the processor's output, or images as a float "
                                    "tensor [batch, C, H, W] to lxt_fx.explain")
        grid_t = torch.as_tensor(np.asarray(grid)).to(torch.long).cpu()
        merge = int(model.config.vision_config.spatial_merge_size)
        want = int((grid_t.prod(-1) // merge**2).sum())
        images = grid_t.shape[0]
        if "position_ids" not in tensors:
            mask = tensors.get("attention_mask")
            types = tensors.get("mm_token_type_ids")
            if types is None:
                types = (ids == image_token_id(model)).to(torch.int32)
            with torch.no_grad():
                positions, _ = owner.get_rope_index(ids, mm_token_type_ids=types, image_grid_thw=grid_t.to(ids.device),
                                                    attention_mask=mask)
            tensors["position_ids"] = positions
        tensors.pop("mm_token_type_ids", None)
        static["image_grid_thw"] = grid_t.numpy()
        seqlens = np.repeat(static["image_grid_thw"][:, 1] * static["image_grid_thw"][:, 2],
                            static["image_grid_thw"][:, 0])
        static["cu_seqlens"] = np.concatenate([[0], np.cumsum(seqlens)]).astype(np.int32)
    rows = (ids == image_token_id(model)).sum(-1).tolist()
    if want is not None and n_tokens == want and len(rows) == images and len(set(rows)) > 1:
        raise SplicedInputError(f"the text rows hold {rows} image tokens: with one image per row each row needs "
                                f"{want // images}, else an image's features would land in another row's text")
    if want is not None and n_tokens != want:
        raise SplicedInputError(f"the text holds {n_tokens} image token(s) (id {image_token_id(model)}) but the "
                                f"images give {want} feature(s): build the text with the model's processor, or "
                                f"put {want} image tokens where the image goes")
    required = inspect.signature(type(model).forward).parameters.get("input_ids")
    if required is not None and required.default is inspect.Parameter.empty:
        # BLIP-2's forward takes input_ids without a default even when given inputs_embeds (it then finds the
        # image tokens by their embedding): the graph is fed embeddings (the ids become inputs_embeds), so the
        # ids are None
        static.setdefault("input_ids", None)
    return tensors, static


def _features_per_image(model: nn.Module, pixels: Tensor) -> int | None:
    """How many features a model splices into its text per image: a Q-Former model's (BLIP-2, InstructBLIP)
    ``num_query_tokens`` query outputs, per frame of a video ``[batch, frames, C, H, W]``
    (InstructBLIP-Video); else a LLaVA-like model's patches (less the CLS token with the ``default`` feature
    strategy); None when the config does not say."""
    config = model.config
    queries = getattr(config, "num_query_tokens", None)
    if isinstance(queries, int):
        return queries * (pixels.shape[1] if pixels.dim() == 5 else 1)
    vision = getattr(config, "vision_config", None)
    patch = getattr(vision, "patch_size", None)
    if not isinstance(patch, int) or pixels.dim() != 4:
        return None
    count = (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)
    if getattr(config, "vision_feature_select_strategy", None) == "full":
        count += 1
    return count
