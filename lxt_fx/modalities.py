"""Mixed inputs (text with images or audio): preparing the inputs and summing relevance per patch / frame.

The explanation itself is :func:`lxt_fx.explain` with ``images=`` / ``audio=`` (``explain_mixed``).

Every input modality is a leaf of the same backward: token embeddings (``inputs_embeds``, or the decoder's
``decoder_inputs_embeds`` of a speech model), ``pixel_values`` and ``input_features`` / ``input_values``.
Relevance at each is input ⊙ gradient; it is then summed to one value per token, per image patch and per
audio frame:

* ``image_relevance[b, i, j] = Σ_{c, y ∈ patch i, x ∈ patch j} pixels[b, c, y, x] · ∂s/∂pixels[b, c, y, x]``
  (a ``[batch, H/p, W/p]`` grid for patch size ``p``; ``pixel_relevance`` keeps ``[batch, H, W]``);
* ``audio_relevance[b, t] = Σ_mel features[b, mel, t] · ∂s/∂features[b, mel, t]`` (``[batch, frames]``; raw
  waveforms ``input_values`` ``[batch, samples]`` as they are).

Summing preserves conservation: the maps add up to the relevance that reached each input.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .session import InputError


def patch_size(model: nn.Module) -> int:
    """The vision patch size of ``model`` (``config.patch_size`` or ``config.vision_config.patch_size``);
    1 (per-pixel grid) when the config names none."""
    config = getattr(model, "config", None)
    for holder in (config, getattr(config, "vision_config", None)):
        size = getattr(holder, "patch_size", None)
        if isinstance(size, int):
            return size
        if isinstance(size, (tuple, list)) and size:
            return int(size[0])
    return 1


def patch_grid(pixel_relevance: Tensor, patch: int) -> Tensor:
    """``[batch, H, W]`` pixel relevance summed over ``patch × patch`` blocks: ``[batch, H/p, W/p]``."""
    batch, height, width = pixel_relevance.shape
    if height % patch or width % patch:
        raise InputError(f"an image of {height}×{width} pixels does not split into {patch}×{patch} patches: "
                         "resize it with the model's image processor")
    return pixel_relevance.reshape(batch, height // patch, patch, width // patch, patch).sum((2, 4))


def pixels(images: Any, processor: Any) -> Tensor:
    """``pixel_values`` ``[batch, C, H, W]``: a float tensor as it is, else ``processor``'s image processor output."""
    if isinstance(images, Tensor):
        if not images.is_floating_point() or images.dim() != 4:
            raise InputError(f"images must be pixel_values, a float tensor [batch, channels, H, W]; got "
                             f"{images.dtype} of shape {tuple(images.shape)} (use the model's image processor)")
        return images
    processor = getattr(processor, "image_processor", processor)
    if processor is None:
        raise InputError("images that are not pixel_values need processor=... (the model's image processor)")
    return processor(images=images, return_tensors="pt")["pixel_values"]


def audio_input(model: nn.Module, audio: Any, processor: Any) -> tuple[str, Tensor]:
    """``(argument name, features)``: ``input_features`` (Whisper) or ``input_values`` (waveform models),
    from a float tensor as it is or from ``processor``'s feature extractor."""
    key = "input_features" if names(model, "input_features") else "input_values"
    if not isinstance(audio, Tensor):
        extractor = getattr(processor, "feature_extractor", processor)
        if extractor is None:
            raise InputError("audio that is not a tensor of features needs processor=... (the model's "
                             "feature extractor)")
        audio = extractor(audio, return_tensors="pt")[key]
    if not audio.is_floating_point():
        raise InputError(f"audio must be float features ({key}), got {audio.dtype}")
    check_audio_shape(model, key, audio)
    return key, audio


def _feature_frames(model: nn.Module) -> int | None:
    """The number of frames a Whisper-like encoder takes: ``max_source_positions`` times the strides of its
    two input convolutions (what the encoder itself requires); None when the model has no such encoder."""
    config = getattr(model, "config", None)
    positions = getattr(config, "max_source_positions", None)
    encoder = model.get_encoder() if hasattr(model, "get_encoder") else None
    convs = [getattr(encoder, name, None) for name in ("conv1", "conv2")]
    if not isinstance(positions, int) or not all(isinstance(c, nn.Conv1d) for c in convs):
        return None
    return positions * convs[0].stride[0] * convs[1].stride[0]


def check_audio_shape(model: nn.Module, key: str, audio: Tensor) -> None:
    """:class:`InputError` naming the expected shape when ``audio`` cannot be ``model``'s ``key`` input:
    ``input_features`` ``[batch, num_mel_bins, frames]`` (frames fixed for a Whisper-like encoder),
    ``input_values`` ``[batch, samples]``. Checked before the capture, so the message has the real sizes."""
    name = type(model).__name__
    shape = tuple(audio.shape)
    if key == "input_values":
        if audio.dim() != 2:
            hint = "add the batch dimension: audio.unsqueeze(0)" if audio.dim() == 1 else \
                "give one waveform per row"
            raise InputError(f"audio for {name} must be a waveform batch input_values [batch, samples]; got shape "
                             f"{shape}: {hint}")
        return
    bins = getattr(getattr(model, "config", None), "num_mel_bins", None)
    frames = _feature_frames(model)
    want = f"[batch, num_mel_bins{'' if bins is None else f'={bins}'}, frames{'' if frames is None else f'={frames}'}]"
    problem = None
    if audio.dim() == 1:
        problem = "a 1-D tensor (a raw waveform?): turn it into log-mel features with the model's processor " \
                  "(processor=... and the waveform as audio=..., or processor.feature_extractor(...))"
    elif audio.dim() == 2:
        problem = "no batch dimension: add it with audio.unsqueeze(0)"
    elif audio.dim() != 3:
        problem = "give one [num_mel_bins, frames] feature map per row"
    elif bins is not None and shape[1] != bins:
        problem = f"{shape[1]} mel bins, not {bins}: use the model's own feature extractor"
    elif frames is not None and shape[2] != frames:
        problem = f"{shape[2]} frames, not {frames}: pad or cut the audio to {frames} frames (the feature " \
                  "extractor pads to that length)"
    if problem is not None:
        raise InputError(f"audio for {name} must be input_features {want}; got shape {shape}: {problem}")


def names(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` names the parameter ``name`` itself (a ``**kwargs`` catch-all does not count:
    CLIP forwards it to towers that do not take ``inputs_embeds``)."""
    return name in inspect.signature(type(model).forward).parameters


def vocab_size(model: nn.Module, embedding: nn.Module | None) -> int:
    """The vocabulary size token ids are checked against (the embedding's, or the (text) config's)."""
    size = getattr(embedding, "num_embeddings", None)
    config = getattr(model, "config", None)
    for holder in (config, getattr(config, "text_config", None)):
        size = size or getattr(holder, "vocab_size", None)
    if not size:
        raise InputError(f"{type(model).__name__}: no vocabulary size found (config.vocab_size or "
                         "config.text_config.vocab_size) to check the token ids against")
    return int(size)


def input_relevance(leaf: Tensor, grad: Tensor | None) -> Tensor:
    """``leaf ⊙ grad`` in float32 (zeros when the input got no gradient)."""
    if grad is None:
        return torch.zeros_like(leaf, dtype=torch.float32)
    return leaf.detach().float() * grad.float()


def check_batches(tensors: dict[str, Tensor], ids: Tensor | None) -> None:
    """:class:`InputError` unless every input (and the text) has the same batch size."""
    sizes = {k: v.shape[0] for k, v in tensors.items()}
    if ids is not None:
        sizes["text"] = ids.shape[0]
    if len(set(sizes.values())) > 1:
        raise InputError(f"the inputs disagree on the batch size: {sizes}; give one text per image / audio clip "
                         "(repeat a text for several images)")


def merged_patches(model: nn.Module) -> tuple[int, int, int, int] | None:
    """``(patch, merge, temporal, channels)`` of a Qwen2-VL-like vision tower that takes flattened patches
    (``vision_config.spatial_merge_size`` and ``temporal_patch_size``), else None."""
    vision = getattr(getattr(model, "config", None), "vision_config", None)
    merge = getattr(vision, "spatial_merge_size", None)
    temporal = getattr(vision, "temporal_patch_size", None)
    if not isinstance(merge, int) or not isinstance(temporal, int):
        return None
    return int(vision.patch_size), merge, temporal, int(getattr(vision, "in_channels", 3))


def flatten_patches(pixels: Tensor, patch: int, merge: int, temporal: int) -> tuple[Tensor, Tensor]:
    """Images ``[batch, C, H, W]`` as Qwen2-VL's flattened patches and their grids, the order its image
    processor makes: each image repeated ``temporal`` times in time, cut into ``p × p`` patches, rows ordered by
    ``merge × merge`` block (block row, block column, row in block, column in block), each row ``[C, T, p, p]``
    flattened. Returns ``(pixel_values [batch·h·w, C·T·p·p], image_grid_thw [batch, 3] = (1, h, w))``."""
    batch, channels, height, width = pixels.shape
    unit = patch * merge
    if height % unit or width % unit:
        raise InputError(f"an image of {height}×{width} pixels does not split into {merge}×{merge} blocks of "
                         f"{patch}×{patch} patches: resize it to multiples of {unit} (or use the model's processor)")
    h, w = height // patch, width // patch
    x = pixels.unsqueeze(1).expand(batch, temporal, channels, height, width)
    x = x.reshape(batch, temporal, channels, h // merge, merge, patch, w // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # b, block row, block col, row in block, col in block, C, T, p, p
    flat = x.reshape(batch * h * w, channels * temporal * patch * patch)
    grid = torch.tensor([[1, h, w]] * batch, dtype=torch.long)
    return flat, grid


def unflatten_patches(values: Tensor, grid: Tensor, patch: int, merge: int, temporal: int, channels: int
                      ) -> tuple[Tensor, Tensor]:
    """Relevance of flattened patches ``[Σ t·h·w, C·T·p·p]`` back on each image: ``(pixel map [images, h·p,
    w·p], patch grid [images, h, w])``, summed over channels, time and (for the grid) the pixels of a patch;
    the inverse of :func:`flatten_patches`'s order. Every image must have the same grid."""
    grid = torch.as_tensor(grid).to(torch.long).cpu()
    if grid.numel() == 0 or (grid != grid[0]).any():
        raise InputError(f"the images have different patch grids {grid.tolist()}: explain them one size at a time "
                         "(resize them to one size)")
    t, h, w = (int(v) for v in grid[0])
    images = grid.shape[0]
    x = values.reshape(images, t, h // merge, w // merge, merge, merge, channels, temporal, patch, patch)
    x = x.sum((6, 7))  # over channels and time: images, t, block row, block col, row in, col in, p, p
    pixel = x.permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(images, t, h * patch, w * patch).sum(1)
    cells = x.sum((6, 7)).permute(0, 1, 2, 4, 3, 5).reshape(images, t, h, w).sum(1)
    return pixel, cells


def spliced_pixels(model: nn.Module, images: Any, processor: Any) -> tuple[Tensor, Tensor | None]:
    """``(pixel_values, image_grid_thw or None)`` for a vision-language model: a float tensor ``[batch, C, H, W]``
    (one image per text row; flattened into patches for a Qwen2-VL-like tower, :func:`flatten_patches`), a
    processor's output (a mapping with ``pixel_values`` and, for Qwen2-VL, ``image_grid_thw``), or images for
    ``processor``'s image processor."""
    merged = merged_patches(model)
    if not isinstance(images, (Tensor, Mapping)):
        source = getattr(processor, "image_processor", processor)
        if source is None:
            raise InputError("images that are not pixel_values need processor=... (the model's image processor)")
        images = source(images=images, return_tensors="pt")
    if isinstance(images, Mapping):
        if "pixel_values" not in images:
            raise InputError(f"the image inputs hold no pixel_values (keys {sorted(images)}): pass the image "
                             "processor's output or a float tensor [batch, C, H, W]")
        grid = images.get("image_grid_thw")
        if merged is not None and grid is None:
            raise InputError(f"{type(model).__name__} takes flattened patches with image_grid_thw; the image inputs "
                             "hold no image_grid_thw: pass the image processor's whole output")
        return images["pixel_values"], grid
    if merged is None:
        return pixels(images, None), None
    if not images.is_floating_point() or images.dim() != 4:
        raise InputError(f"images must be a float tensor [batch, channels, H, W] or the image processor's output; "
                         f"got {images.dtype} of shape {tuple(images.shape)}")
    patch, merge, temporal, _ = merged
    return flatten_patches(images, patch, merge, temporal)
