"""Run a perturbation experiment over a dataset: relevance of every method, curves, ABPC with errors.

``run(model, examples, methods)`` processes the examples in chunks of ``chunk_size`` rows (right-padded
to the chunk's longest row, rows of similar length together); per chunk it computes every method's
relevance (:func:`~lxt_fx.evaluate.baselines.attribute_many`) and all methods' MoRF / LeRF curves with
shared, batched forwards (:func:`~lxt_fx.evaluate.perturbation.compare`). Rows keep their input order in
the result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .baselines import attribute_many, parse_methods
from .data import Example
from .perturbation import (
    Curves,
    EvaluationError,
    compare,
    default_flippable,
    mean_se,
    model_logits,
    model_scores,
)

# progress(amount): called with work units done (one unit ≈ one sequence through the model)
Progress = Callable[[int], None]


@dataclass
class Run:
    """Result of :func:`run`: curves per method over all rows, with what was explained."""

    methods: list[str]
    labels: list[str]
    lengths: list[int]
    target_ids: Tensor
    target_scores: Tensor
    curves: dict[str, Curves]
    relevance: dict[str, list[list[float]]]
    attribution_seconds: dict[str, float]
    perturbation_seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    skipped: int = 0

    @property
    def n(self) -> int:
        """The number of evaluated rows (examples)."""
        return len(self.labels)

    def abpc(self, method: str) -> Tensor:
        """Per-row ABPC of ``method``."""
        return self.curves[method].abpc()

    def summary(self) -> dict[str, dict[str, float]]:
        """Per method: n, ABPC / AUC(MoRF) / AUC(LeRF) mean and standard error, seconds per row."""
        out = {}
        for m in self.methods:
            c = self.curves[m]
            abpc, abpc_se = mean_se(c.abpc())
            morf, morf_se = mean_se(c.auc("morf"))
            lerf, lerf_se = mean_se(c.auc("lerf"))
            out[m] = {"n": self.n, "abpc": abpc, "abpc_se": abpc_se, "auc_morf": morf, "auc_morf_se": morf_se,
                      "auc_lerf": lerf, "auc_lerf_se": lerf_se,
                      "seconds_per_row": self.attribution_seconds.get(m, math.nan) / max(self.n, 1)}
        return out

    def paired(self, a: str, b: str) -> dict[str, float]:
        """ABPC(a) − ABPC(b) over the same rows: mean, standard error, and mean / SE."""
        mean, se = mean_se(self.abpc(a) - self.abpc(b))
        return {"mean": mean, "se": se, "z": mean / se if se and se > 0 else math.nan}

    def mean_curves(self) -> dict[str, dict[str, list[float]]]:
        """Per method and order, the curve averaged over rows."""
        return {m: {o: c.mean(0).tolist() for o, c in self.curves[m].curves.items()} for m in self.methods}

    def to_dict(self) -> dict[str, Any]:
        """Plain Python, JSON-ready: settings, summary, mean curves, and per-row results."""
        fractions = next(iter(self.curves.values())).fractions.tolist()
        rows = []
        for i, label in enumerate(self.labels):
            rows.append({"label": label, "length": self.lengths[i], "target_id": int(self.target_ids[i]),
                         "target_score": float(self.target_scores[i]),
                         "abpc": {m: float(self.abpc(m)[i]) for m in self.methods},
                         "relevance": {m: self.relevance[m][i] for m in self.methods}})
        return {"settings": self.settings, "n": self.n, "skipped": self.skipped, "fractions": fractions,
                "summary": self.summary(), "mean_curves": self.mean_curves(),
                "perturbation_seconds": self.perturbation_seconds, "rows": rows}


class _Counter:
    """Counts work units while passing them on to a progress callback."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress, self.count = progress, 0

    def __call__(self, n: int) -> None:
        self.count += n
        if self.progress is not None:
            self.progress(n)


def pad(examples: Sequence[Example], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Right-padded ``(input_ids, attention_mask)`` of the examples."""
    if not examples:
        raise EvaluationError("no examples to pad")
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids, dtype=torch.long)
        mask[i, : len(e.input_ids)] = 1
    return ids, mask


def work_units(examples: Sequence[Example], methods: Sequence[str], steps: int, orders: int = 2,
               ig_steps: int = 32) -> int:
    """Sequences through the model for a run (upper bound; for progress bars)."""
    per_row = 1 + 2 + len(methods) * orders * max(steps - 1, 0)
    for m in methods:
        per_row += {"ig": ig_steps, "random": 0}.get(m, 1)
    return per_row * len(examples)


def run(model: nn.Module, examples: Sequence[Example], methods: str | Sequence[str], *, steps: int = 20,
        orders: Sequence[str] = ("morf", "lerf"), perturbation: str | int = "zero", tokenizer: Any = None,
        score: str = "logit", chunk_size: int = 8, batch_size: int = 32, ig_steps: int = 32, seed: int = 0,
        pad_id: int = 0, options: Mapping[str, Any] | None = None, progress: Progress | None = None,
        skipped: int = 0, keep_first: bool = False, keep_last: bool = False) -> Run:
    """Relevance and MoRF / LeRF curves of every method over ``examples``; see the module docstring.

    Targets: ``example.target_id``, or the model's argmax next token where it is ``None``. The explained
    position is each row's last token. ``options`` reach the methods (``seed`` for random; IG gets
    ``steps=ig_steps`` and ``batch_size``). ``skipped`` is recorded (e.g. multi-token cloze answers).
    ``keep_first``: never flip the first token (an attention sink: zeroing it can break the model whatever
    the explanation says), so the curves measure the ranking of the other tokens only. ``keep_last``:
    never flip the token at the explained position (the current input token of a causal LM).
    """
    if not examples:
        raise EvaluationError("no examples to evaluate (empty data, or every row was skipped)")
    names = parse_methods(methods)
    device = next(model.parameters()).device
    opts = {"seed": seed, "steps": ig_steps, "batch_size": batch_size, **dict(options or {})}
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i].input_ids), i))
    unit = work_units([examples[0]], names, steps, len(orders), ig_steps)
    timings: dict[str, float] = {}
    parts: dict[str, list[tuple[list[int], Curves]]] = {m: [] for m in names}
    relevance: dict[str, dict[int, list[float]]] = {m: {} for m in names}
    targets = torch.zeros(len(examples), dtype=torch.long)
    scores = torch.zeros(len(examples))
    perturb_seconds = 0.0
    for start in range(0, len(order), chunk_size):
        index = order[start:start + chunk_size]
        chunk = [examples[i] for i in index]
        ids, mask = pad(chunk, pad_id)
        ids, mask = ids.to(device), mask.to(device)
        positions = mask.sum(1) - 1
        with torch.no_grad():
            emb = model.get_input_embeddings()(ids)
            given = [e.target_id for e in chunk]
            if any(t is None for t in given):
                argmax = model_logits(model, emb, mask, positions).argmax(-1)
                tgt = torch.tensor([t if t is not None else int(a) for t, a in zip(given, argmax, strict=True)],
                                   device=device)
            else:
                tgt = torch.tensor(given, device=device)
            base = model_scores(model, emb, mask, tgt, positions, score)
        done = len(chunk)
        rel = attribute_many(model, ids, mask, tgt, positions, names, options=opts, timings=timings)
        done += sum({"ig": ig_steps, "random": 0}.get(m, 1) for m in names) * len(chunk)
        if progress is not None:
            progress(done)
        tick = _Counter(progress)
        flippable = default_flippable(mask, positions)
        if keep_first:
            flippable[:, 0] = False
        if keep_last:
            flippable[torch.arange(len(chunk), device=flippable.device), positions] = False
        t0 = time.perf_counter()
        curves = compare(model, ids, mask, tgt, positions, rel, steps=steps, orders=orders,
                         perturbation=perturbation, tokenizer=tokenizer, score=score, batch_size=batch_size,
                         flippable=flippable, seed=seed, progress=tick)
        perturb_seconds += time.perf_counter() - t0
        if progress is not None:
            progress(max(0, unit * len(chunk) - done - tick.count))
        for m in names:
            parts[m].append((index, curves[m]))
            for row, i in enumerate(index):
                relevance[m][i] = rel[m][row, : len(examples[i].input_ids)].tolist()
        targets[index] = tgt.cpu()
        scores[index] = base.float().cpu()
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    merged = {}
    for m in names:
        cat = Curves.cat([c for _, c in parts[m]])
        merged[m] = Curves(cat.fractions, {k: v[inverse] for k, v in cat.curves.items()},
                           {k: v[inverse] for k, v in cat.flipped.items()})
    settings = {"steps": steps, "orders": list(orders), "perturbation": perturbation, "score": score,
                "ig_steps": ig_steps, "seed": seed, "batch_size": batch_size, "chunk_size": chunk_size,
                "keep_first": keep_first, "keep_last": keep_last}
    return Run(names, [e.label for e in examples], [len(e.input_ids) for e in examples], targets, scores,
               merged, {m: [relevance[m][i] for i in range(len(examples))] for m in names}, timings,
               perturb_seconds, settings, skipped)
