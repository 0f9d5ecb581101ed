"""Patching: which components carry a behaviour, from a clean and a corrupted input and a metric ``m``.

**Activation patching** (the ground truth) sets one component's activation in a run to its value in the other
run and reads the metric: one forward per component, several components per forward as rows of one batch.

* ``direction="noise"`` (default): the clean run with component ``c`` set to its corrupted value,
  ``AP(c) = m(clean) − m(clean; a_c ← a_c(corrupt))``;
* ``direction="denoise"``: the corrupted run with ``c`` set to its clean value,
  ``AP(c) = m(corrupt; a_c ← a_c(clean)) − m(corrupt)``.

Both are positive where the component carries the clean behaviour.

**Attribution patching** (AtP; Nanda 2023, Kramár et al. 2024, arXiv 2403.00745) and **relevance patching**
(RelP; Rezaei Jafari, Eberle, Khakzar, Nanda 2025, arXiv 2508.21258) are the first-order estimate of ``AP``
from one forward on each input and one backward on the run that is patched (clean for ``noise``, corrupted
for ``denoise``)::

    AtP(c)  = Σ_{i ∈ c} (a_clean − a_corrupt)_i · ∂m/∂a_i
    RelP(c) = Σ_{i ∈ c} (a_clean − a_corrupt)_i · ∂̃m/∂a_i

where ``∂̃`` is the LRP backward (AttnLRP's rules, or the given composite): the modified gradient at the
component's output, whose product with the activation is the LRP relevance there, ``R_i = a_i · ∂̃m/∂a_i``
(RelP replaces "the local gradients in attribution patching with propagation coefficients derived from LRP").
The RelP paper's code takes the coefficients on the corrupted run and compares with denoising patching
(``direction="denoise"``); ``noise`` takes them on the clean run. A sum over ``i ∈ c`` runs over the
component's channels and positions.

Inputs of different length need ``position_map`` (clean position → corrupted position, or None where a clean
position has no counterpart); without it, :class:`LengthMismatchError`.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from ..composites.registry import resolve_composite
from ..explain import model_call, model_device
from ..session import Rewritten, check_model, embed, input_embeddings, rewritten_graph
from ..taps import fresh_rewritten
from ..targets import Function, Target, as_target
from ..tracing.modes import in_eval_mode
from .components import Component, find_components
from .places import PlaceError

__all__ = ["DIRECTIONS", "LengthMismatchError", "Patching", "activation_patching", "patching"]

DIRECTIONS = ("noise", "denoise")


class LengthMismatchError(PlaceError):
    """Clean and corrupted inputs of different length without a ``position_map`` saying which positions
    correspond (or a map that does not fit them)."""


class Probe(nn.Module):
    """Identity in value unless ``patch`` is set: ``(mask, source)`` replaces the masked entries of the
    ``[rows, seq, channels]`` view of the tensor with ``source``. With ``keep``, holds the returned tensor
    (``last``, for a gradient) and its value."""

    def __init__(self) -> None:
        super().__init__()
        self.keep = False
        self.last: Tensor | None = None
        self.value: Tensor | None = None
        self.patch: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Any) -> Any:
        if not isinstance(x, Tensor):
            return x
        if self.patch is not None:
            mask, source = self.patch
            view = x.reshape(mask.shape[0], -1, x.shape[-1])
            x = torch.where(mask, source.to(x.dtype), view).reshape(x.shape)
        if self.keep:
            if x.requires_grad:
                x = x.view_as(x)
                self.last = x
            self.value = x.detach()
        return x


_PROBED: weakref.WeakKeyDictionary[fx.GraphModule, dict[tuple, tuple[fx.GraphModule, dict[str, Probe]]]] = (
    weakref.WeakKeyDictionary())


def probed_graph(graph: Rewritten, nodes: Sequence[str], lrp: bool) -> tuple[fx.GraphModule, dict[str, Probe]]:
    """A copy of ``graph``'s module — rewritten (``lrp``) or as captured (plain gradient) — with a
    :class:`Probe` after each of ``nodes`` that every user of the node reads (built once per set of nodes)."""
    key = (lrp, tuple(sorted(set(nodes))))
    per = _PROBED.setdefault(graph.module, {})
    if key not in per:
        gm = fresh_rewritten(graph) if lrp else graph.captured.module()
        by_name = {n.name: n for n in gm.graph.nodes}
        first_op = next(n for n in gm.graph.nodes if n.op != "placeholder")
        probes: dict[str, Probe] = {}
        for i, name in enumerate(key[1]):
            node = by_name[name]
            probe = probes[name] = Probe()
            gm.add_submodule(f"lxt_probe_{i}", probe)
            where = gm.graph.inserting_before(first_op) if node.op == "placeholder" else \
                gm.graph.inserting_after(node)
            with where:
                new = gm.graph.call_module(f"lxt_probe_{i}", (node,))
            node.replace_all_uses_with(new, delete_user_cb=lambda user, n=new: user is not n)
        gm.graph.lint()
        gm.recompile()
        per[key] = (gm, probes)
    return per[key]


@dataclass
class Patching:
    """Scores per component (``scores[method]``, ``[components]``; methods ``"relp"``, ``"atp"``,
    ``"activation"``), the metric on the clean and the corrupted run, the direction and the wall time of each
    method in seconds."""

    components: list[Component]
    scores: dict[str, Tensor]
    clean: float
    corrupt: float
    direction: str
    seconds: dict[str, float] = field(default_factory=dict)

    def top(self, k: int = 10, by: str = "relp") -> list[tuple[Component, float]]:
        """The ``k`` components with the largest ``|score|`` by method ``by``."""
        if by not in self.scores:
            raise PlaceError(f"no {by!r} scores here; there are {sorted(self.scores)}")
        s = self.scores[by]
        order = torch.argsort(s.abs(), descending=True)[:k]
        return [(self.components[i], float(s[i])) for i in order]

    def merged(self, other: Patching) -> Patching:
        """This result with ``other``'s scores and times added (the same components and direction)."""
        if other.components != self.components or other.direction != self.direction:
            raise PlaceError("merge patching results of the same components and direction only")
        return Patching(self.components, {**self.scores, **other.scores}, self.clean, self.corrupt,
                        self.direction, {**self.seconds, **other.seconds})


@dataclass
class _Pair:
    """Both inputs, encoded and embedded, with the aligned positions."""

    graph: Rewritten
    embeds: dict[str, Tensor]  # "clean" / "corrupt" → [1, seq, hidden]
    masks: dict[str, Tensor]
    aligned: list[tuple[int, int]]  # (clean position, corrupt position)
    goal: Target
    tokenizer: Any


def _aligned(clean: int, corrupt: int, position_map: Sequence[int | None] | None) -> list[tuple[int, int]]:
    if position_map is None:
        if clean != corrupt:
            raise LengthMismatchError(
                f"the clean input has {clean} tokens and the corrupted one {corrupt}: patching sets activations "
                "position by position, so give position_map=[corrupted position or None for each clean position] "
                "(or make both inputs the same length)")
        return [(t, t) for t in range(clean)]
    if len(position_map) != clean:
        raise LengthMismatchError(f"position_map has {len(position_map)} entries for {clean} clean positions: give "
                                  "one (corrupted position or None) per clean position")
    pairs = [(t, int(u)) for t, u in enumerate(position_map) if u is not None]
    bad = [u for _, u in pairs if not 0 <= u < corrupt]
    if bad or len({u for _, u in pairs}) != len(pairs):
        raise LengthMismatchError(f"position_map must name distinct corrupted positions in 0…{corrupt - 1}; got "
                                  f"{list(position_map)}")
    return pairs


def _prepare(model: nn.Module, clean: Any, corrupt: Any, tokenizer: Any, target: Any, composite: Any,
             position_map: Sequence[int | None] | None) -> _Pair:
    composite = resolve_composite(composite, model)
    device = model_device(model)
    embedding = input_embeddings(model)
    embeds, masks = {}, {}
    for name, inputs in (("clean", clean), ("corrupt", corrupt)):
        call = model_call(model, inputs, tokenizer=tokenizer)
        if set(call) != {"input_ids", "attention_mask"} or call["input_ids"].shape[0] != 1:
            raise PlaceError(f"patching takes one text or one row of input_ids for each of clean and corrupt; the "
                             f"{name} input gave {sorted(call)} of {call['input_ids'].shape[0]} rows")
        with torch.no_grad():
            embeds[name] = embed(embedding, call["input_ids"].to(device), model).detach()
        masks[name] = call["attention_mask"].to(device)
    aligned = _aligned(embeds["clean"].shape[1], embeds["corrupt"].shape[1], position_map)
    with torch.enable_grad():
        graph = rewritten_graph(model, composite, {"inputs_embeds": embeds["clean"].requires_grad_(True),
                                                   "attention_mask": masks["clean"]}, {})
    embeds["clean"] = embeds["clean"].detach()
    return _Pair(graph, embeds, masks, aligned, as_target(target), tokenizer)


def _run(gm: fx.GraphModule, embeds: Tensor, mask: Tensor) -> dict[str, Tensor]:
    tensors = {"inputs_embeds": embeds, "attention_mask": mask}
    return gm({k: tensors[k] for k in sorted(tensors)})


def _score(outputs: dict[str, Tensor], goal: Target, mask: Tensor, ids: Tensor | None, tokenizer: Any
           ) -> tuple[Tensor, Tensor | None]:
    """The metric per row and the target ids (resolved on the first call, then held fixed)."""
    if isinstance(goal, Function):
        return goal.fn(outputs), None
    logits = outputs["logits"]
    if logits.dim() == 3:  # the last real token; every row of a batch is one input repeated
        last = int(mask[0].nonzero().max())
        logits = logits[:, last]
    if ids is None:
        ids = goal.ids(logits[:1].detach(), tokenizer)
    return goal.score(logits, ids.expand(logits.shape[0]), tokenizer), ids


def _components(pair: _Pair, model: nn.Module, components: Sequence[str] | Sequence[Component],
                layers: Sequence[int] | None) -> list[Component]:
    if components and all(isinstance(c, Component) for c in components):
        return list(components)
    names = [components] if isinstance(components, str) else list(components)
    return find_components(pair.graph, model, names, pair.embeds["clean"].shape[1], layers,
                           positions=[t for t, _ in pair.aligned])


def _runs(direction: str) -> tuple[str, str]:
    if direction not in DIRECTIONS:
        raise PlaceError(f"direction={direction!r}: use 'noise' (patch corrupted values into the clean run) or "
                         "'denoise' (clean values into the corrupted run)")
    return ("clean", "corrupt") if direction == "noise" else ("corrupt", "clean")


def _in_base(pair: _Pair, base: str, value: Tensor, of: str) -> tuple[Tensor, Tensor]:
    """``value`` (``[1, seq_of, C]`` of run ``of``) moved to the base run's positions, with a ``[seq_base]``
    mask of the positions that have a counterpart."""
    length = pair.embeds[base].shape[1]
    out = torch.zeros(length, value.shape[-1], dtype=value.dtype, device=value.device)
    have = torch.zeros(length, dtype=torch.bool, device=value.device)
    src = value.reshape(-1, value.shape[-1])
    for t, u in pair.aligned:
        b, o = (t, u) if base == "clean" else (u, t)
        out[b] = src[o if of != base else b]
        have[b] = True
    return out, have


def _base_position(pair: _Pair, base: str, position: int) -> int:
    return position if base == "clean" else dict(pair.aligned)[position]


def _sum_component(c: Component, per: Tensor, pair: _Pair, base: str) -> Tensor:
    """Σ over the component's channels and positions of ``per`` (``[seq_base, C]``)."""
    part = per[:, c.start:c.stop] if c.start is not None else per
    if c.position is not None:
        part = part[_base_position(pair, base, c.position)]
    return part.sum(dtype=torch.float64)


def _estimate(pair: _Pair, comps: list[Component], direction: str, lrp: bool) -> tuple[Tensor, float, float]:
    """AtP (``lrp=False``) or RelP scores, and the metric on the clean and the corrupted run."""
    base, other = _runs(direction)
    nodes = sorted({c.node for c in comps})
    gm, probes = probed_graph(pair.graph, nodes, lrp)
    for p in probes.values():
        p.keep = True
    try:
        ids = None
        if base == "corrupt":  # the metric's ids come from the clean run
            with torch.no_grad():
                out = _run(gm, pair.embeds["clean"], pair.masks["clean"])
                clean_score, ids = _score(out, pair.goal, pair.masks["clean"], None, pair.tokenizer)
            other_values = {n: probes[n].value for n in nodes}
        with torch.enable_grad():
            leaf = pair.embeds[base].clone().requires_grad_(True)
            out = _run(gm, leaf, pair.masks[base])
            score, ids = _score(out, pair.goal, pair.masks[base], ids, pair.tokenizer)
            held = [probes[n].last for n in nodes]
            missing = [n for n, h in zip(nodes, held, strict=True) if h is None]
            if missing:
                raise PlaceError(f"nodes {missing} carry no gradient from the input: nothing flows through them")
            grads = torch.autograd.grad(score.sum(), held, allow_unused=True)
        base_values = {n: probes[n].value for n in nodes}
        if base == "clean":
            clean_score = score.detach()
            with torch.no_grad():
                out = _run(gm, pair.embeds["corrupt"], pair.masks["corrupt"])
                corrupt_score, _ = _score(out, pair.goal, pair.masks["corrupt"], ids, pair.tokenizer)
            other_values = {n: probes[n].value for n in nodes}
        else:
            corrupt_score = score.detach()
    finally:
        for p in probes.values():
            p.keep, p.last, p.value = False, None, None
    per_node = {}
    for n, g in zip(nodes, grads, strict=True):
        a_base = base_values[n].reshape(-1, base_values[n].shape[-1]).double()
        a_other, have = _in_base(pair, base, other_values[n].double(), other)
        diff = (a_base - a_other) if base == "clean" else (a_other - a_base)  # a_clean − a_corrupt
        g = torch.zeros_like(a_base) if g is None else g.reshape(a_base.shape).double()
        per_node[n] = diff * g * have[:, None]
    scores = torch.stack([_sum_component(c, per_node[c.node], pair, base) for c in comps]).float()
    return scores, float(clean_score[0]), float(corrupt_score[0])


@in_eval_mode
def patching(model: nn.Module, clean: Any, corrupt: Any, *, tokenizer: Any = None, target: Any = None,
             components: Sequence[str] | Sequence[Component] = ("heads", "mlp"), layers: Sequence[int] | None = None,
             direction: str = "noise", methods: Sequence[str] = ("relp", "atp"), composite: Any = None,
             position_map: Sequence[int | None] | None = None) -> Patching:
    """RelP and/or AtP scores of every component (see the module docstring for the formulas):
    ``RelP(c) = Σ_{i∈c} (a_clean − a_corrupt)_i · ∂̃m/∂a_i`` with ``∂̃`` the LRP backward of ``composite``
    (default the model's, AttnLRP), ``AtP`` the same with the plain gradient, each from one forward on each input
    and one backward on the patched run (clean for ``direction="noise"``, corrupted for ``"denoise"``).

    ``clean`` / ``corrupt``: one text (with ``tokenizer``) or one row of input ids each. ``target``: the metric,
    as in :func:`lxt_fx.explain` (``Contrastive(token, rival)`` for a logit difference; the default, the
    clean run's argmax logit, is held fixed for the corrupted run). ``components``: kinds ``"heads"``,
    ``"mlp"``, ``"neurons"``, ``"resid"`` (per position) or place names (one component per channel; ``:input``
    places too), or a list of :class:`Component`; ``layers`` keeps those blocks only. ``position_map``:
    clean position → corrupted position (None: no counterpart), needed when the lengths differ."""
    model = check_model(model)
    pair = _prepare(model, clean, corrupt, tokenizer, target, composite, position_map)
    comps = _components(pair, model, components, layers)
    scores, seconds = {}, {}
    clean_score = corrupt_score = float("nan")
    for method in methods:
        if method not in ("relp", "atp"):
            raise PlaceError(f"method {method!r}: use 'relp' or 'atp' (activation_patching for the ground truth)")
        start = time.perf_counter()
        scores[method], clean_score, corrupt_score = _estimate(pair, comps, direction, lrp=method == "relp")
        seconds[method] = time.perf_counter() - start
    return Patching(comps, scores, clean_score, corrupt_score, direction, seconds)


@in_eval_mode
def activation_patching(model: nn.Module, clean: Any, corrupt: Any, *, tokenizer: Any = None, target: Any = None,
                        components: Sequence[str] | Sequence[Component] = ("heads", "mlp"),
                        layers: Sequence[int] | None = None, direction: str = "noise", batch_size: int = 32,
                        position_map: Sequence[int | None] | None = None, composite: Any = None) -> Patching:
    """The ground truth: for every component, the metric change when its activation is set to its value in
    the other run (``direction="noise"``: ``m(clean) − m(clean; a_c ← a_c(corrupt))``; ``"denoise"``:
    ``m(corrupt; a_c ← a_c(clean)) − m(corrupt)``), through the model's plain (unrewritten) graph, one
    forward per component with ``batch_size`` components per forward as rows of one batch. Arguments as for
    :func:`patching`; the scores are in ``scores["activation"]``."""
    model = check_model(model)
    start = time.perf_counter()
    pair = _prepare(model, clean, corrupt, tokenizer, target, composite, position_map)
    comps = _components(pair, model, components, layers)
    base, other = _runs(direction)
    nodes = sorted({c.node for c in comps})
    gm, probes = probed_graph(pair.graph, nodes, lrp=False)
    batch_size = max(int(batch_size), 1)
    results = []
    try:
        with torch.no_grad():
            for p in probes.values():
                p.keep = True
            out = _run(gm, pair.embeds["clean"], pair.masks["clean"])
            clean_score, ids = _score(out, pair.goal, pair.masks["clean"], None, pair.tokenizer)
            clean_values = {n: probes[n].value for n in nodes}
            out = _run(gm, pair.embeds["corrupt"], pair.masks["corrupt"])
            corrupt_score, _ = _score(out, pair.goal, pair.masks["corrupt"], ids, pair.tokenizer)
            corrupt_values = {n: probes[n].value for n in nodes}
            for p in probes.values():
                p.keep, p.value = False, None
            sources = {n: _in_base(pair, base, (corrupt_values if other == "corrupt" else clean_values)[n], other)
                       for n in nodes}
            length = pair.embeds[base].shape[1]
            for lo in range(0, len(comps), batch_size):
                chunk = comps[lo:lo + batch_size]
                rows = len(chunk)
                for n, probe in probes.items():
                    source, have = sources[n]
                    mask = torch.zeros(rows, length, source.shape[-1], dtype=torch.bool, device=source.device)
                    for r, c in enumerate(chunk):
                        if c.node != n:
                            continue
                        where = have.clone()
                        if c.position is not None:
                            where = torch.zeros_like(have)
                            where[_base_position(pair, base, c.position)] = True
                        channels = slice(c.start, c.stop) if c.start is not None else slice(None)
                        mask[r, :, channels] = where[:, None]
                    probe.patch = (mask, source.unsqueeze(0)) if bool(mask.any()) else None
                embeds = pair.embeds[base].expand(rows, -1, -1)
                out = _run(gm, embeds, pair.masks[base].expand(rows, -1))
                results.append(_score(out, pair.goal, pair.masks[base].expand(rows, -1), ids, pair.tokenizer)[0])
    finally:
        for p in probes.values():
            p.keep, p.last, p.value, p.patch = False, None, None, None
    patched = torch.cat(results).double()
    ref = (clean_score if base == "clean" else corrupt_score).double()
    effect = (ref - patched) if direction == "noise" else (patched - ref)
    return Patching(comps, {"activation": effect.float()}, float(clean_score[0]), float(corrupt_score[0]),
                    direction, {"activation": time.perf_counter() - start})
