"""``ablate``: knock out (or scale) neurons of a place in every forward, eager or rewritten, reversibly.

The neurons' channels are scaled where the weights hold them, so the eager model, the rewritten graph and
its tapped copies (which all share the model's parameters) see the same change: a Linear's output channel
``i`` is row ``i`` of its weight and entry ``i`` of its bias; its input channel ``j`` is column ``j`` of the
weight (``y = W x + b``, so scaling column ``j`` is scaling ``x_j``). transformers' ``Conv1D`` (GPT-2) holds
its weight transposed; ``nn.Embedding``'s output channel ``j`` is column ``j``. With ``scale = 0`` the result
is exact; other scales agree with scaling the activation up to float rounding. The old values are copied
back on exit, also after an exception (bit for bit).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from .places import PlaceError, module_at

__all__ = ["ablate"]


def _slices(module: nn.Module, is_input: bool, place: str) -> list[tuple[nn.Parameter, int]]:
    """``(parameter, dim)`` pairs: the dims of the parameters that index the place's channels."""
    kind = type(module).__name__
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if isinstance(module, nn.Linear) or isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return [(weight, 1)] if is_input else [(weight, 0)] + ([(bias, 0)] if bias is not None else [])
    if kind == "Conv1D" and isinstance(weight, nn.Parameter) and weight.dim() == 2:  # GPT-2: y = x W + b
        return [(weight, 0)] if is_input else [(weight, 1)] + ([(bias, 0)] if bias is not None else [])
    if isinstance(module, nn.Embedding) and not is_input:
        return [(weight, 1)]
    raise PlaceError(f"ablate cannot scale the channels of {place!r}: a {kind} holds no weights indexed by them; "
                     "give a Linear / Conv1D / Embedding place, e.g. its last projection ('….mlp.down_proj' for an "
                     "MLP output, '….mlp.down_proj:input' for its neurons, '….o_proj:input' for attention heads)")


def _shared(model: nn.Module, param: nn.Parameter) -> list[str]:
    return [n for n, p in model.named_parameters(remove_duplicate=False) if p is param]


@contextlib.contextmanager
def ablate(model: nn.Module, place: str, neurons: Iterable[int], scale: float = 0.0) -> Iterator[nn.Module]:
    """Within the block, neurons ``neurons`` of ``place`` are multiplied by ``scale`` in any forward of
    ``model`` (eager, inside ``attnlrp.context``, ``explain``); on exit every weight is as it was.

    Raises :class:`~lxt_fx.features.places.PlaceError` for an index outside the place, a place whose module
    holds no weights per channel, or weights tied to another module (scaling them would change both)."""
    _, module, is_input = module_at(model, place)
    slices = _slices(module, is_input, place)
    idx = torch.as_tensor(sorted({int(i) for i in neurons}), dtype=torch.long)
    for param, dim in slices:
        size = param.shape[dim]
        if idx.numel() and (int(idx.min()) < -size or int(idx.max()) >= size):
            raise PlaceError(f"neuron index outside 0…{size - 1} at {place!r}: {idx.tolist()[:8]}")
        names = _shared(model, param)
        if len(names) > 1:
            raise PlaceError(f"ablate on {place!r} would also change {names[1:]}: its weight is tied to them; "
                             "ablate a place whose weights are its own")
    idx = idx.to(slices[0][0].device)
    saved = [(param, dim, param.detach().index_select(dim, idx).clone()) for param, dim in slices]
    try:
        with torch.no_grad():
            for param, dim, old in saved:
                param.index_copy_(dim, idx, old * scale)
        yield model
    finally:
        with torch.no_grad():
            for param, dim, old in saved:
                param.index_copy_(dim, idx, old)
