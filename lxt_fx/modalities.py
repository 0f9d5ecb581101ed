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
    return key, audio


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
