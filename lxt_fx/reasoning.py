"""Answers explained through their reasoning: an answer token's relevance routed back through the generated tokens.

``explain_generation`` gives the relevance of every generated token ``g_k`` over everything before it (row
``k`` of its matrix ``M``, explaining the logit ``s_k``). An answer token ``g_a`` after a chain of thought
puts part of its relevance on the prompt directly and part on the generated tokens it read. Each generated
token ``g_j`` was itself predicted from the tokens before it, and row ``j`` says how: routing passes the
answer's relevance ``r_j`` on ``g_j`` back through that row,

    v ← v − r_j · e_{p+j} + r_j · M[j] / s_j        for j = a − 1, …, 0 (latest first)

starting from ``v = M[a]`` (``p`` prompt tokens; row ``j`` reaches only columns before ``p + j``, so every
generated column is settled once, in that order). At the end ``v`` lies on the prompt: its ``direct`` part
is ``M[a]``'s own prompt columns, the rest is ``routed``. The mass passed on by row ``j`` is
``r_j · ΣM[j] / s_j``: all of ``r_j`` where row ``j``'s own books close (``ΣM[j] = s_j``), and short of it by
exactly what that row's explanation absorbs (biases, the softmax rule's term). The rows' hops are kept
(``passed``: ``r_j`` per generated token).

The cost is :func:`~lxt_fx.generation.explain_generation`'s: one forward and one backward seed per generated
token, against one full explain (forward and backward) per generated token done separately. FlashTrace (arXiv
2602.01914) calls these recursive steps "hops".
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .attribution import Attribution
from .explain import InputError
from .generation import GenerationAttribution


@dataclass
class RoutedAttribution:
    """One answer token's relevance on the prompt: ``direct`` (what it read from the prompt itself) and
    ``routed`` (what reached it through the generated tokens), both ``[prompt]``; ``passed[j]``: the
    relevance that arrived on generated token ``j`` and was passed on through its row; ``books[j]``: that
    row's ``ΣM[j] / s_j`` (1 where its books close); ``answer``: the explained generated token's index."""

    direct: Tensor
    routed: Tensor
    passed: Tensor
    books: Tensor
    answer: int
    generation: GenerationAttribution

    @property
    def total(self) -> Tensor:
        """``direct + routed``: the answer's whole relevance, on the prompt."""
        return self.direct + self.routed

    def expected_mass(self) -> float:
        """What routing must leave on the prompt: the answer row's total less, for every hop, the part of it
        that the row passing it on does not close (``Σ_j passed_j · (1 − books_j)``)."""
        row = self.generation.matrix[self.answer].double()
        return float(row.sum()) - math.fsum((self.passed.double() * (1 - self.books.double())).tolist())

    def to_attribution(self) -> Attribution:
        """Three rows over the prompt tokens — direct, routed, total — as an
        :class:`~lxt_fx.attribution.Attribution`, so every token renderer draws them."""
        gen = self.generation
        p = gen.prompt_length
        values = torch.stack([self.direct, self.routed, self.total]).float()
        ids = torch.tensor([gen.ids[:p]] * 3, dtype=torch.long)
        target = gen.generated_ids[self.answer]
        score = float(gen.scores[self.answer])
        token = gen.tokens[p + self.answer]
        return Attribution(values, [gen.tokens[:p]] * 3, ids, torch.ones_like(ids), torch.tensor([target] * 3),
                           torch.tensor([score] * 3), torch.full((3,), p - 1 + self.answer), gen.report,
                           [token] * 3)

    def labels(self) -> list[str]:
        """What each row of :meth:`to_attribution` shows."""
        token = self.generation.tokens[self.generation.prompt_length + self.answer]
        return [f"{token!r}: direct, from the prompt itself", f"{token!r}: routed through the generated tokens",
                f"{token!r}: direct + routed"]

    def show(self, console: Any = None, **options: Any) -> None:
        """Print the direct, routed and total maps over the prompt (rich); ``options`` as for
        :func:`lxt_fx.render.show`."""
        self.to_attribution().show(console, labels=self.labels(), **options)

    def to_html(self, path: str | os.PathLike[str] | None = None, **options: Any) -> str:
        """The direct, routed and total maps as one HTML page; ``options`` as for :func:`lxt_fx.render.to_html`."""
        return self.to_attribution().to_html(path, labels=self.labels(), **options)


def route(generation: GenerationAttribution, answer: int = -1) -> RoutedAttribution:
    """Route generated token ``answer``'s relevance (default the last) back through the generated tokens
    before it onto the prompt (see the module doc)."""
    n, width = generation.matrix.shape
    if not -n <= answer < n:
        raise InputError(f"answer={answer}: the generation has {n} generated tokens (give 0..{n - 1} or -1)")
    a = answer % n
    p = generation.prompt_length
    m = generation.matrix.double()
    scores = generation.scores.double()
    books = m.sum(-1) / scores
    small = [j for j in range(a) if abs(float(scores[j])) < 1e-6]
    if small:
        raise InputError(f"generated token(s) {small} have an explained logit of ~0: their relevance cannot be "
                         "passed on in proportion to it")
    v = m[a].clone()
    passed = torch.zeros(n, dtype=torch.float64)
    for j in range(a - 1, -1, -1):
        r = v[p + j].clone()
        passed[j] = r
        v[p + j] = 0.0
        v += r * m[j] / scores[j]
    direct = m[a, :p]
    return RoutedAttribution(direct.clone(), v[:p] - direct, passed[:a], books[:a], a, generation)
