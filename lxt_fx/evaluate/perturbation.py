"""Token flipping: MoRF / LeRF / random perturbation curves, their areas, and ABPC.

Protocol (Achtibat et al. 2024, as restated by the authors in LXT issue #40): order the input tokens of
each row by relevance; flip them in most-relevant-first (MoRF) and least-relevant-first (LeRF) order in
``steps`` equal fractions (step ``k`` flips ``round(k / steps * n)`` of the ``n`` flippable tokens); after
each step evaluate the explained score (the target logit at the explained position, or its probability /
log-probability). A curve has ``steps + 1`` points, from the intact input (fraction 0) to every flippable
token flipped (fraction 1). ``AUC`` is the trapezoidal area over the fraction axis ``[0, 1]`` (in the
score's units, e.g. logits), and ``ABPC = AUC(LeRF) − AUC(MoRF)``: large when the tokens an explanation
ranks first really carry the score and those it ranks last really do not.

"Flipping" a token is either zeroing its input embedding (``perturbation="zero"``, the paper's protocol)
or replacing its id (``"pad"``, ``"unk"``, ``"mask"`` — resolved with the tokenizer — or any int id).
Flippable tokens: real tokens (``attention_mask == 1``) at or before the explained position (tokens
after it cannot change a causal LM's score there); pass ``flippable`` to choose otherwise (e.g. to keep
a sink token intact).

All perturbed inputs of all rows, orders and methods are deduplicated (step 0 and the last step are the
same for every order) and evaluated in batches of ``batch_size`` sequences, never one forward per step.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..tracing.errors import LXTError
from ..tracing.modes import in_eval_mode

Order = Literal["morf", "lerf", "random"]
ScoreKind = Literal["logit", "prob", "logprob"]
ORDERS: tuple[str, ...] = ("morf", "lerf", "random")
SCORES: tuple[str, ...] = ("logit", "prob", "logprob")
# progress callback: called with the number of perturbed sequences just evaluated
Progress = Callable[[int], None]


class EvaluationError(LXTError, ValueError):
    """Inputs a perturbation experiment cannot run on (bad shapes, order, score or perturbation)."""


@dataclass
class Curves:
    """Perturbation curves of one method over a batch.

    ``fractions``: ``[steps + 1]`` nominal flipped fraction per step (0 … 1); ``curves``: order name →
    ``[batch, steps + 1]`` explained score after each step; ``flipped``: order name → ``[batch, steps + 1]``
    number of tokens flipped at each step.
    """

    fractions: Tensor
    curves: dict[str, Tensor]
    flipped: dict[str, Tensor] = field(default_factory=dict)

    def auc(self, order: str) -> Tensor:
        """Trapezoidal area under the ``order`` curve over the fraction axis, per row ``[batch]``."""
        if order not in self.curves:
            raise EvaluationError(f"no {order!r} curve (have {sorted(self.curves)})")
        return auc(self.curves[order], self.fractions)

    def abpc(self) -> Tensor:
        """Area between the perturbation curves, ``AUC(LeRF) − AUC(MoRF)``, per row ``[batch]``."""
        return self.auc("lerf") - self.auc("morf")

    def __len__(self) -> int:
        return next(iter(self.curves.values())).shape[0]

    @staticmethod
    def cat(parts: Sequence[Curves]) -> Curves:
        """Concatenate the rows of several ``Curves`` with the same fractions and orders."""
        if not parts:
            raise EvaluationError("nothing to concatenate")
        first = parts[0]
        curves = {k: torch.cat([p.curves[k] for p in parts]) for k in first.curves}
        flipped = {k: torch.cat([p.flipped[k] for p in parts]) for k in first.flipped}
        return Curves(first.fractions, curves, flipped)


def auc(curve: Tensor, fractions: Tensor) -> Tensor:
    """Trapezoidal area under ``curve`` ``[batch, steps + 1]`` over ``fractions`` ``[steps + 1]``."""
    return torch.trapezoid(curve.double(), fractions.double(), dim=-1).to(curve.dtype)


def mean_se(values: Tensor | Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample SD / √n; SE is ``nan`` for fewer than two values)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return math.nan, math.nan
    se = float(v.std(unbiased=True) / math.sqrt(v.numel())) if v.numel() > 1 else math.nan
    return float(v.mean()), se


def default_flippable(attention_mask: Tensor, positions: Tensor) -> Tensor:
    """Real tokens at or before the explained position (all real tokens where the position is ``-1``)."""
    mask = attention_mask.bool()
    index = torch.arange(mask.shape[1], device=mask.device)[None, :]
    limit = torch.where(positions < 0, torch.full_like(positions, mask.shape[1]), positions)
    return mask & (index <= limit[:, None])


def step_counts(n: Tensor, steps: int) -> Tensor:
    """Tokens flipped at each step: ``round(k / steps * n)`` (half up) for ``k = 0 … steps``; ``[batch, steps+1]``."""
    k = torch.arange(steps + 1, device=n.device)[None, :]
    return (2 * k * n[:, None] + steps) // (2 * steps)


def row_generator(seed: int, row: Tensor) -> torch.Generator:
    """A CPU generator seeded by ``seed`` and the content of ``row``: a row gets the same random numbers
    whatever batch it is in and wherever it sits in it."""
    ids = row.detach().to("cpu", torch.long).flatten()
    mix = (int(seed) * 1_000_003) ^ len(ids)
    for i, v in enumerate(ids.tolist()):
        mix = (mix * 31 + (v + 1) * (i + 7)) % (2**61 - 1)
    return torch.Generator().manual_seed(mix)


def flip_ranks(relevance: Tensor, flippable: Tensor, order: str, seed: int = 0,
               input_ids: Tensor | None = None) -> Tensor:
    """Rank at which each token is flipped in ``order`` (0 = first); non-flippable tokens rank last.

    ``morf``: descending relevance; ``lerf``: ascending; ties keep sequence order (stable sort).
    ``random``: a uniformly random order, seeded per row by ``seed`` and the row's ``input_ids``.
    """
    if order not in ORDERS:
        raise EvaluationError(f"unknown order {order!r}: valid orders are {', '.join(ORDERS)}")
    rel = relevance.detach().double()
    if order == "random":
        rows = input_ids if input_ids is not None else torch.zeros_like(flippable, dtype=torch.long)
        key = torch.stack([torch.rand(rel.shape[1], generator=row_generator(seed, r), dtype=torch.float64)
                           for r in rows.cpu()]).to(rel.device)
    else:
        key = rel if order == "morf" else -rel
    key = torch.where(flippable, torch.nan_to_num(key), torch.full_like(key, -math.inf))
    order_idx = torch.sort(key, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order_idx)
    ranks.scatter_(1, order_idx, torch.arange(rel.shape[1], device=rel.device).expand_as(order_idx).contiguous())
    return ranks


def replacement_id(perturbation: str | int, tokenizer: Any = None) -> int | None:
    """The id a flipped token becomes: ``None`` for ``"zero"`` (zero embedding), else an id."""
    if perturbation == "zero":
        return None
    if isinstance(perturbation, int) and not isinstance(perturbation, bool):
        return perturbation
    if perturbation in ("pad", "unk", "mask"):
        if tokenizer is None:
            raise EvaluationError(f"perturbation {perturbation!r} needs the tokenizer (or pass an int id)")
        token_id = getattr(tokenizer, f"{perturbation}_token_id", None)
        if token_id is None:
            raise EvaluationError(f"the tokenizer has no {perturbation} token: use perturbation='zero' or an "
                                  "int id")
        return int(token_id)
    raise EvaluationError(f"unknown perturbation {perturbation!r}: use 'zero', 'pad', 'unk', 'mask' or an int id")


def takes_kwarg(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` names a keyword argument ``name`` (``**kwargs`` does not count)."""
    params = inspect.signature(type(model).forward).parameters
    return name in params


def model_logits(model: nn.Module, inputs_embeds: Tensor, attention_mask: Tensor, positions: Tensor) -> Tensor:
    """Logits ``[batch, V]`` at each row's ``positions`` (``-1``: a model whose logits are ``[batch, V]``).

    Causal LMs that take ``logits_to_keep`` compute the output head at the needed positions only.
    """
    kwargs: dict[str, Any] = {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask}
    if takes_kwarg(model, "use_cache"):
        kwargs["use_cache"] = False
    keep = None
    if bool((positions >= 0).all()) and takes_kwarg(model, "logits_to_keep"):
        keep = torch.unique(positions)
        kwargs["logits_to_keep"] = keep
    out = model(**kwargs)
    logits = out["logits"] if isinstance(out, Mapping) else getattr(out, "logits", out)
    if logits.dim() == 3:
        rows = torch.arange(logits.shape[0], device=logits.device)
        cols = torch.searchsorted(keep, positions) if keep is not None else positions
        logits = logits[rows, cols]
    return logits


def model_scores(model: nn.Module, inputs_embeds: Tensor, attention_mask: Tensor, target_ids: Tensor,
                 positions: Tensor, score: str = "logit") -> Tensor:
    """The explained score per row ``[batch]`` of one forward (differentiable w.r.t. ``inputs_embeds``):
    the logit, probability or log-probability of ``target_ids`` at ``positions``."""
    if score not in SCORES:
        raise EvaluationError(f"unknown score {score!r}: valid scores are {', '.join(SCORES)}")
    logits = model_logits(model, inputs_embeds, attention_mask, positions).float()
    rows = torch.arange(logits.shape[0], device=logits.device)
    if score == "logit":
        return logits[rows, target_ids]
    logp = torch.log_softmax(logits, -1)[rows, target_ids]
    return logp if score == "logprob" else logp.exp()


@torch.no_grad()
def perturbed_scores(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, target_ids: Tensor,
                     positions: Tensor, flips: Tensor, rows: Tensor, *, perturbation: str | int = "zero",
                     tokenizer: Any = None, score: str = "logit", batch_size: int = 32,
                     progress: Progress | None = None) -> Tensor:
    """Score of each perturbed input: row ``rows[i]`` of the batch with the tokens ``flips[i]`` flipped.

    Identical (row, flip set) pairs are evaluated once; the rest in batches of ``batch_size``.
    """
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be ≥ 1, got {batch_size}")
    token = replacement_id(perturbation, tokenizer)
    embedding = model.get_input_embeddings()
    device = input_ids.device
    key = torch.cat([rows[:, None].to(flips.device), flips.long()], dim=1)
    unique, inverse = torch.unique(key, dim=0, return_inverse=True)
    out = torch.empty(unique.shape[0], dtype=torch.float32)
    for start in range(0, unique.shape[0], batch_size):
        chunk = unique[start:start + batch_size].to(device)
        r, flip = chunk[:, 0], chunk[:, 1:].bool()
        ids = input_ids[r]
        if token is None:
            embeds = embedding(ids) * (~flip)[..., None].to(embedding.weight.dtype)
        else:
            embeds = embedding(ids.masked_fill(flip, token))
        out[start:start + chunk.shape[0]] = model_scores(model, embeds, attention_mask[r], target_ids[r],
                                                         positions[r], score).float().cpu()
        if progress is not None:
            progress(int(chunk.shape[0]))
    return out[inverse.cpu()]


def _check(input_ids: Tensor, attention_mask: Tensor, target_ids: Tensor, positions: Tensor, steps: int) -> None:
    if input_ids.dim() != 2:
        raise EvaluationError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    if attention_mask.shape != input_ids.shape:
        raise EvaluationError(f"attention_mask {tuple(attention_mask.shape)} does not match input_ids "
                              f"{tuple(input_ids.shape)}")
    batch = input_ids.shape[0]
    if target_ids.shape != (batch,) or positions.shape != (batch,):
        raise EvaluationError(f"target_ids and positions need one entry per row ({batch}), got "
                              f"{tuple(target_ids.shape)} and {tuple(positions.shape)}")
    if steps < 1:
        raise EvaluationError(f"steps must be ≥ 1, got {steps}")


@in_eval_mode
def compare(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, target_ids: Tensor, positions: Tensor,
            relevances: Mapping[str, Tensor], *, steps: int = 20, orders: Sequence[str] = ("morf", "lerf"),
            perturbation: str | int = "zero", tokenizer: Any = None, score: str = "logit",
            batch_size: int = 32, flippable: Tensor | None = None, seed: int = 0,
            progress: Progress | None = None) -> dict[str, Curves]:
    """Perturbation curves of several methods' relevances on the same batch, forwards shared.

    ``relevances``: method name → ``[batch, seq]``. Returns method name → :class:`Curves` with one curve
    per order in ``orders``. Every (row, flipped set) is evaluated once across methods and orders.
    """
    _check(input_ids, attention_mask, target_ids, positions, steps)
    for name, rel in relevances.items():
        if rel.shape != input_ids.shape:
            raise EvaluationError(f"relevance of {name!r} has shape {tuple(rel.shape)}, expected "
                                  f"{tuple(input_ids.shape)} (one value per input token)")
    for order in orders:
        if order not in ORDERS:
            raise EvaluationError(f"unknown order {order!r}: valid orders are {', '.join(ORDERS)}")
    batch, seq = input_ids.shape
    can_flip = default_flippable(attention_mask, positions) if flippable is None else flippable.bool()
    can_flip = can_flip.cpu()
    counts = step_counts(can_flip.sum(1), steps)                                   # [batch, steps+1]
    flips, rows, slots = [], [], []
    for name, rel in relevances.items():
        for order in orders:
            ranks = flip_ranks(rel.cpu(), can_flip, order, seed, input_ids.cpu())   # [batch, seq]
            flip = ranks[:, None, :] < counts[:, :, None]                          # [batch, steps+1, seq]
            flips.append(flip.reshape(-1, seq))
            rows.append(torch.arange(batch).repeat_interleave(steps + 1))
            slots.append((name, order))
    scores = perturbed_scores(model, input_ids, attention_mask, target_ids, positions, torch.cat(flips),
                              torch.cat(rows), perturbation=perturbation, tokenizer=tokenizer, score=score,
                              batch_size=batch_size, progress=progress)
    scores = scores.reshape(len(slots), batch, steps + 1)
    fractions = torch.linspace(0.0, 1.0, steps + 1)
    result: dict[str, Curves] = {}
    for (name, order), curve in zip(slots, scores, strict=True):
        entry = result.setdefault(name, Curves(fractions, {}, {}))
        entry.curves[order] = curve
        entry.flipped[order] = counts.clone()
    return result


@in_eval_mode
def perturbation_curves(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, relevance: Tensor,
                        target_ids: Tensor, positions: Tensor, *, steps: int = 20,
                        orders: Sequence[str] = ("morf", "lerf", "random"), perturbation: str | int = "zero",
                        tokenizer: Any = None, score: str = "logit", batch_size: int = 32,
                        flippable: Tensor | None = None, seed: int = 0) -> Curves:
    """MoRF / LeRF / random curves of one relevance ``[batch, seq]``; see the module docstring."""
    return compare(model, input_ids, attention_mask, target_ids, positions, {"relevance": relevance},
                   steps=steps, orders=orders, perturbation=perturbation, tokenizer=tokenizer, score=score,
                   batch_size=batch_size, flippable=flippable, seed=seed)["relevance"]
