"""Every attribution method on any ground-truth task, through the :class:`~.task.Task` interface.

Each method returns, for a :class:`~.task.Sample` of ``n`` rows, one relevance map per modality shaped like
``sample.mask`` and explains the same scalar per row, :meth:`Task.score` (the label's logit):

* ``attnlrp`` — ``task.explain(model, sample)``: LRP through ``lxt_fx.explain`` with the model's default
  composite (AttnLRP unless the family registers another).
* ``cp_lrp`` — ``task.explain(model, sample, composite=lxt_fx.cp_lrp)``: attention weights held constant.
* ``ixg`` — Input×Gradient on the task's leaves, ``to_map(x ⊙ ∂f/∂x)``.
* ``gradient`` — the signed gradient, ``to_map(∂f/∂x)``.
* ``ig`` — Integrated Gradients (Sundararajan et al. 2017) with Captum's ``IntegratedGradients``: zero
  baseline on every leaf, Gauss–Legendre quadrature with ``ig_steps`` (≥ 32) points, ``to_map`` of the
  attribution.
* ``rollout`` — ``task.rollout(model, sample)`` (attention rollout, Abnar & Zuidema 2020), only for tasks
  with ``has_attention_rollout``.
* ``random`` — uniform noise in [0, 1), seeded by ``seed`` and the row index: the chance level.
* ``attnlrp_pos`` (optional, not in :data:`METHODS`) — AttnLRP read per position–token pair, for tasks
  that define ``explain_positions`` (the text tasks): the relevance of token plus added position
  embedding, which the plain token map leaves to the position table as an absorbed constant.

:func:`deletion_abpc` adds the perturbation score: the positions of ``region | mask`` are removed with
:meth:`Task.ablate` most-relevant-first (MoRF) and least-relevant-first (LeRF) in ``steps`` equal
fractions, and ``ABPC = AUC(LeRF) − AUC(MoRF)`` of the explained score over the removed fraction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ...tracing.errors import LXTError
from .task import Sample, Task

METHODS: tuple[str, ...] = ("attnlrp", "cp_lrp", "ixg", "gradient", "ig", "rollout", "random")
Maps = dict[str, Tensor]


class UnknownGroundTruthMethodError(LXTError, ValueError):
    """A method name that is not one of :data:`METHODS`."""


class MethodNotApplicableError(LXTError, ValueError):
    """A method the task cannot run (attention rollout on a task without attention probabilities)."""


def methods_for(task: Task, extra: bool = False) -> list[str]:
    """The methods that apply to ``task`` (all of :data:`METHODS`, less ``rollout`` where it has none;
    with ``extra`` also ``attnlrp_pos`` where the task defines ``explain_positions``)."""
    names = [m for m in METHODS if m != "rollout" or task.has_attention_rollout]
    return names + (["attnlrp_pos"] if extra and hasattr(task, "explain_positions") else [])


def _detach(maps: Mapping[str, Tensor]) -> Maps:
    return {k: v.detach().float().cpu() for k, v in maps.items()}


def _gradients(model: nn.Module, task: Task, sample: Sample) -> tuple[Maps, Maps]:
    """(leaves, ∂score/∂leaves) with one forward and one backward."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in task.leaves(model, sample).items()}
    with torch.enable_grad():
        scores = task.forward_leaves(model, sample, leaves)
        grads = torch.autograd.grad(scores.sum(), list(leaves.values()), allow_unused=True)
    out = {k: (torch.zeros_like(v) if g is None else g.detach()) for (k, v), g in zip(leaves.items(), grads,
                                                                                          strict=True)}
    return {k: v.detach() for k, v in leaves.items()}, out


def integrated_gradients(model: nn.Module, task: Task, sample: Sample, steps: int = 32,
                         internal_batch_size: int | None = None) -> Maps:
    """Captum's Integrated Gradients on the task's leaves from the all-zero baseline, mapped per modality."""
    if steps < 32:
        raise ValueError(f"Integrated Gradients needs ≥ 32 steps here, got {steps}")
    from captum.attr import IntegratedGradients

    leaves = task.leaves(model, sample)
    names = list(leaves)
    n = len(sample)

    def forward(*xs: Tensor) -> Tensor:
        # Captum stacks the interpolation steps along the batch: [step 0 rows, step 1 rows, …]
        copies = xs[0].shape[0] // n
        rows = sample if copies == 1 else sample.rows(torch.arange(n).repeat(copies))
        return task.forward_leaves(model, rows, dict(zip(names, xs, strict=True)))

    ig = IntegratedGradients(forward)
    inputs = tuple(leaves[k].detach() for k in names)
    with torch.enable_grad():
        attributions = ig.attribute(inputs, baselines=tuple(torch.zeros_like(x) for x in inputs), n_steps=steps,
                                    internal_batch_size=internal_batch_size or n * 8)
    return _detach({k: task.to_map(k, a) for k, a in zip(names, attributions, strict=True)})


def random_maps(task: Task, sample: Sample, seed: int = 0) -> Maps:
    """Uniform noise shaped like each mask, seeded by ``seed`` and the row's index in ``sample``."""
    g = torch.Generator().manual_seed(int(seed) + 7919)
    return {k: torch.rand(tuple(m.shape), generator=g) for k, m in sorted(sample.mask.items())}


def run_method(name: str, model: nn.Module, task: Task, sample: Sample, *, ig_steps: int = 32,
               seed: int = 0) -> Maps:
    """One method's relevance maps (modality → map shaped like ``sample.mask[modality]``)."""
    if name == "attnlrp":
        return _detach(task.explain(model, sample))
    if name == "cp_lrp":
        from ...composites import cp_lrp

        return _detach(task.explain(model, sample, composite=cp_lrp))
    if name in ("ixg", "gradient"):
        leaves, grads = _gradients(model, task, sample)
        return _detach({k: task.to_map(k, grads[k] * leaves[k] if name == "ixg" else grads[k]) for k in leaves})
    if name == "ig":
        return integrated_gradients(model, task, sample, ig_steps)
    if name == "rollout":
        if not task.has_attention_rollout:
            raise MethodNotApplicableError(f"{task.name} has no attention rollout; drop 'rollout' from the methods")
        return _detach(task.rollout(model, sample))
    if name == "random":
        return random_maps(task, sample, seed)
    if name == "attnlrp_pos" and hasattr(task, "explain_positions"):
        return _detach(task.explain_positions(model, sample))
    raise UnknownGroundTruthMethodError(f"unknown method {name!r} for {task.name}; choose from "
                                        f"{', '.join(methods_for(task, extra=True))}")


def run_methods(model: nn.Module, task: Task, sample: Sample, methods: Sequence[str] | None = None, *,
                batch_size: int = 64, ig_steps: int = 32, seed: int = 0,
                progress: Callable[[str, int], Any] | None = None) -> dict[str, Maps]:
    """``{method: {modality: map [n, …]}}`` for every method (default :func:`methods_for`), ``batch_size``
    rows at a time."""
    methods = list(methods) if methods is not None else methods_for(task)
    out: dict[str, Maps] = {}
    for name in methods:
        parts: list[Maps] = []
        for start in range(0, len(sample), batch_size):
            chunk = sample.rows(slice(start, start + batch_size))
            parts.append(run_method(name, model, task, chunk, ig_steps=ig_steps, seed=seed + start))
            if progress is not None:
                progress(name, start + len(chunk))
        out[name] = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return out


# --- deletion (MoRF / LeRF) ---------------------------------------------------------------------------------
def _flat(maps: Mapping[str, Tensor]) -> tuple[Tensor, list[tuple[str, tuple[int, ...]]]]:
    keys = sorted(maps)
    n = maps[keys[0]].shape[0]
    layout = [(k, tuple(maps[k].shape)) for k in keys]
    return torch.cat([maps[k].reshape(n, -1).double() for k in keys], 1), layout


def _unflat(flat: Tensor, layout: list[tuple[str, tuple[int, ...]]]) -> Maps:
    out, at = {}, 0
    for k, shape in layout:
        size = 1
        for s in shape[1:]:
            size *= s
        out[k] = flat[:, at:at + size].reshape(shape)
        at += size
    return out


@torch.no_grad()
def deletion_curves(model: nn.Module, task: Task, sample: Sample, maps: Mapping[str, Tensor], steps: int = 10
                    ) -> dict[str, Tensor]:
    """``{"morf": [n, steps+1], "lerf": [n, steps+1]}``: the explained score as the ``region | mask``
    positions are removed (``task.ablate``) in relevance order, ``round(k/steps · m)`` of a row's ``m`` at step k."""
    rel, layout = _flat({k: maps[k].cpu() for k in sample.mask})
    allowed, _ = _flat({k: (sample.mask[k] | sample.region[k]).cpu() for k in sample.mask})
    allowed = allowed.bool()
    n, width = rel.shape
    m = allowed.sum(1)
    curves = {}
    for order in ("morf", "lerf"):
        key = torch.where(allowed, rel if order == "morf" else -rel, torch.full_like(rel, -torch.inf))
        rank = torch.empty_like(allowed, dtype=torch.long)
        rank.scatter_(1, torch.sort(key, dim=1, descending=True, stable=True).indices,
                      torch.arange(width).expand(n, width).contiguous())
        points = []
        for k in range(steps + 1):
            count = (2 * k * m + steps) // (2 * steps)
            removed = allowed & (rank < count[:, None])
            inputs = task.ablate(sample, _unflat(removed, layout))
            points.append(task.score(model, inputs, sample.target).detach().double().cpu())
        curves[order] = torch.stack(points, 1)
    return curves


def deletion_abpc(model: nn.Module, task: Task, sample: Sample, maps: Mapping[str, Tensor], steps: int = 10
                  ) -> Tensor:
    """``[n]``: ``AUC(LeRF) − AUC(MoRF)`` of :func:`deletion_curves` over the removed fraction ``[0, 1]``."""
    curves = deletion_curves(model, task, sample, maps, steps)
    x = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    return torch.trapezoid(curves["lerf"], x, dim=1) - torch.trapezoid(curves["morf"], x, dim=1)


__all__ = ["METHODS", "MethodNotApplicableError", "UnknownGroundTruthMethodError", "deletion_abpc",
           "deletion_curves", "integrated_gradients", "methods_for", "random_maps", "run_method", "run_methods"]
