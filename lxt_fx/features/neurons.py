"""The most relevant neurons of a place, read from an ``Attribution`` captured there."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..attribution import Attribution
from .places import PlaceError

__all__ = ["Neuron", "neurons", "per_neuron"]


@dataclass(frozen=True)
class Neuron:
    """One neuron (channel) of a place: ``relevance`` Σ ``x ⊙ grad`` over the chosen tokens, ``activation`` the
    activation ``x`` summed over the same tokens (at one position: that position's value)."""

    place: str
    index: int
    relevance: float
    activation: float


def _tokens_mask(att: Attribution, x: Tensor, row: int) -> Tensor:
    """``[seq]`` weights of the real (non-padding) tokens of ``row``."""
    mask = att.attention_mask[row].float()
    if mask.numel() != x.shape[1]:  # e.g. a place after a sequence reduction: every position counts
        mask = torch.ones(x.shape[1])
    return mask


def per_neuron(att: Attribution, place: str, *, row: int = 0, position: int | None = None,
               values: bool = False) -> Tensor:
    """``[channels]`` relevance (or, with ``values``, activation) of every neuron of ``place`` in ``row``:
    ``Σ_t R[row, t, c]`` over the row's real tokens, or ``R[row, position, c]``."""
    x = att.latent_value(place) if values else att.latent(place)
    if x.dim() < 2:
        raise PlaceError(f"latent at {place!r} has shape {tuple(x.shape)}: no channels per token")
    x = x[row]
    if x.dim() == 1:
        return x
    x = x.reshape(x.shape[0], -1, x.shape[-1]).sum(1) if x.dim() > 2 else x
    if position is not None:
        if not -x.shape[0] <= position < x.shape[0]:
            raise PlaceError(f"position {position} outside the {x.shape[0]} positions at {place!r}")
        return x[position]
    return (x * _tokens_mask(att, x.unsqueeze(0), row)[:, None]).sum(0)


def neurons(attribution: Attribution, place: str, k: int = 10, *, row: int = 0, position: int | None = None,
            by: str = "relevance") -> list[Neuron]:
    """The top-``k`` neurons of ``place`` by relevance (largest first; ``by="abs"``: by ``|relevance|``),
    summed over the tokens of ``row`` or at one ``position``, each with its activation.

    ``place`` must have been captured: ``explain(..., capture=[place])``."""
    if by not in ("relevance", "abs"):
        raise PlaceError(f"by={by!r}: use 'relevance' or 'abs'")
    rel = per_neuron(attribution, place, row=row, position=position)
    act = per_neuron(attribution, place, row=row, position=position, values=True)
    order = torch.argsort(rel.abs() if by == "abs" else rel, descending=True)[: max(int(k), 0)]
    return [Neuron(place, int(i), float(rel[i]), float(act[i])) for i in order]
