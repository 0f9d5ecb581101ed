"""Scores of a relevance map against a ground-truth mask (Arras, Osman & Samek 2022, CLEVR-XAI).

For one row, with ``R`` the relevance map and ``M`` the boolean mask (same shape, flattened):

* relevance mass accuracy ``Σ_{i∈M} max(R_i, 0) / Σ_i max(R_i, 0)`` — the share of positive relevance
  inside the mask (0 when no relevance is positive);
* relevance rank accuracy ``|top_K(R) ∩ M| / K`` with ``K = |M|`` — the share of the ``K`` highest-ranked
  positions that lie in the mask (ties broken by position, so a constant map scores as its first ``K``);
* pointing game ``[argmax_i R_i ∈ M]``.

Several modalities (a caption's tokens and an image's patches) are scored as one map: each row's maps are
flattened and concatenated, so mass and rank compete across modalities as they do in the model.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


class MaskShapeError(ValueError):
    """A relevance map and its ground-truth mask differ in shape."""


def _flat(relevance: Tensor | Mapping[str, Tensor], mask: Tensor | Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    if isinstance(mask, Mapping):
        if not isinstance(relevance, Mapping) or set(relevance) != set(mask):
            have = sorted(relevance) if isinstance(relevance, Mapping) else "one tensor"
            raise MaskShapeError(f"relevance maps {have} do not match the mask's modalities {sorted(mask)}")
        keys = sorted(mask)
        rel = torch.cat([_flat(relevance[k], mask[k])[0] for k in keys], dim=1)
        msk = torch.cat([mask[k].reshape(mask[k].shape[0], -1) for k in keys], dim=1)
        return rel, msk
    if tuple(relevance.shape) != tuple(mask.shape):
        raise MaskShapeError(f"relevance map {tuple(relevance.shape)} and mask {tuple(mask.shape)} differ in "
                             "shape: pass the map with the mask's layout ([n, L] tokens, [n, h, w] patches, …)")
    n = mask.shape[0]
    return relevance.detach().reshape(n, -1).double().cpu(), mask.reshape(n, -1).bool().cpu()


def mass_accuracy(relevance: Tensor | Mapping[str, Tensor], mask: Tensor | Mapping[str, Tensor]) -> Tensor:
    """``[n]``: the share of each row's positive relevance that lies inside the mask."""
    rel, msk = _flat(relevance, mask)
    pos = rel.clamp_min(0)
    total = pos.sum(1)
    return torch.where(total > 0, (pos * msk).sum(1) / total.clamp_min(1e-300), torch.zeros_like(total))


def rank_accuracy(relevance: Tensor | Mapping[str, Tensor], mask: Tensor | Mapping[str, Tensor]) -> Tensor:
    """``[n]``: the share of each row's ``|mask|`` top-ranked positions that lie inside the mask."""
    rel, msk = _flat(relevance, mask)
    order = torch.sort(rel, dim=1, descending=True, stable=True).indices
    ranked = msk.gather(1, order)
    k = msk.sum(1)
    within = torch.arange(msk.shape[1])[None, :] < k[:, None]
    return (ranked & within).sum(1).double() / k.clamp_min(1).double()


def pointing_game(relevance: Tensor | Mapping[str, Tensor], mask: Tensor | Mapping[str, Tensor]) -> Tensor:
    """``[n]``: 1 where the row's most relevant position lies inside the mask, else 0."""
    rel, msk = _flat(relevance, mask)
    return msk.gather(1, rel.argmax(1, keepdim=True)).squeeze(1).double()


def score(relevance: Tensor | Mapping[str, Tensor], mask: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``{"mass": [n], "rank": [n], "pointing": [n]}`` for maps and masks of the same layout."""
    return {"mass": mass_accuracy(relevance, mask), "rank": rank_accuracy(relevance, mask),
            "pointing": pointing_game(relevance, mask)}
