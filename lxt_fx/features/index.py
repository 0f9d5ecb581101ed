"""Reference examples per neuron: one pass over an offline corpus, the top snippets by activation and by
relevance for every neuron of a place, stored compactly (safetensors + JSON) and resumable after a kill.

Each snippet (the first ``length`` tokens of a text) is explained once: the explained score is the sum over
its positions of the logit of the model's own next-token prediction, ``Σ_t z_t[argmax_t]``, so
one backward gives every neuron's relevance for the model's own predictions. Per snippet and neuron the index
keeps the largest activation (and its position) and the relevance summed over positions (and the position of
the largest). Chunks of snippets are written whole to a temporary name and then renamed, so a killed build
leaves only complete chunks; a new call with the same settings skips them.

Layout of ``DIR``: ``build.json`` (settings), ``chunks/chunk_NNNNN.safetensors`` (one per chunk, the
snippets' tokens in its metadata), then ``index.safetensors`` (``act_max``, ``act_pos``, ``rel_sum``,
``rel_pos``: ``[snippets, neurons]``) and ``index.json`` (settings, snippets, timing).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..explain import explain
from ..render.common import named_tokens
from ..targets import Function
from ..tracing.errors import LXTError
from ..tracing.modes import in_eval_mode
from .places import INPUT_SUFFIX, PlaceError, module_at

__all__ = ["FeatureIndex", "IndexMismatchError", "Snippet", "build_index"]

FORMAT = 1


class IndexMismatchError(LXTError):
    """``DIR`` holds a partial build with other settings (place, corpus, length, chunk size)."""


@dataclass(frozen=True)
class Snippet:
    """One reference example of a neuron: the snippet's tokens, the firing position and the value there."""

    snippet: int
    tokens: list[str]
    position: int
    value: float


def _own_predictions(mask: Tensor) -> Function:
    """``Σ_t z_t[argmax_t]`` over the real positions of each row: the logits of the model's own next-token
    predictions (as ``explain`` explains the argmax logit by default)."""

    def score(outputs: dict[str, Tensor]) -> Tensor:
        logits = outputs["logits"]
        best = logits.detach().argmax(-1, keepdim=True)
        return (logits.gather(-1, best)[..., 0] * mask.to(logits.device)).sum(-1)

    return Function(score)


def _encode(texts: Sequence[str | Sequence[int]], tokenizer: Any, length: int) -> list[list[int]]:
    rows = []
    for t in texts:
        ids = list(t) if not isinstance(t, str) else list(tokenizer(t)["input_ids"]) if tokenizer is not None \
            else None
        if ids is None:
            raise PlaceError("text snippets need a tokenizer (or give token id lists)")
        rows.append([int(i) for i in ids[:length]])
    return rows


def _tokens(ids: list[int], tokenizer: Any) -> list[str]:
    return named_tokens(tokenizer.convert_ids_to_tokens(ids), ids) if tokenizer is not None else [str(i) for i in ids]


def _chunk_stats(model: nn.Module, rows: list[list[int]], place: str, pad: int) -> dict[str, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    att = explain(model, ids, attention_mask=mask, target=_own_predictions(mask), capture=[place])
    rel, act = att.latent(place), att.latent_value(place)
    if rel.dim() != 3 or rel.shape[1] != width:
        raise PlaceError(f"{place!r} holds {tuple(rel.shape)}, not one vector per token: index a per-token place")
    real = mask.bool()[..., None]
    act_masked = act.masked_fill(~real, float("-inf"))
    act_max, act_pos = act_masked.max(1)
    rel_masked = rel.masked_fill(~real, float("-inf"))
    return {"act_max": act_max.contiguous(), "act_pos": act_pos.to(torch.int32).contiguous(),
            "rel_sum": (rel * real).sum(1).contiguous(), "rel_pos": rel_masked.max(1).indices.to(torch.int32)}


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


@in_eval_mode
def build_index(model: nn.Module, tokenizer: Any, place: str, out: str | os.PathLike[str],
                texts: Sequence[str | Sequence[int]] | None = None, *, length: int = 32, chunk_size: int = 8,
                top: int = 8, progress: bool = True, model_name: str = "",
                on_chunk: Callable[[int], None] | None = None) -> FeatureIndex:
    """Build (or resume) the index of ``place`` over ``texts`` (default: the shipped passages) in ``out``.

    ``on_chunk(k)`` is called after chunk ``k`` is on disk (a progress hook; tests raise from it to simulate a
    kill). A directory holding a partial build with other settings raises :class:`IndexMismatchError`."""
    from safetensors.torch import load_file, save_file

    if texts is None:
        from ..evaluate.data import load_passages

        texts = [p.text for p in load_passages()]
    if any(c in place for c in "*?["):  # an index is of one place: a glob must name exactly one module
        path, _, is_input = module_at(model, place)
        place = path + (INPUT_SUFFIX if is_input else "")
    rows = _encode(texts, tokenizer, length)
    folder = Path(out)
    (folder / "chunks").mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
    settings = {"format": FORMAT, "place": place, "length": length, "chunk_size": chunk_size, "snippets": len(rows),
                "corpus_sha256": digest, "model": model_name or type(model).__name__}
    build = folder / "build.json"
    if build.exists():
        old = json.loads(build.read_text(encoding="utf-8"))
        if old != settings:
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            raise IndexMismatchError(f"{str(folder)!r} holds a build with other settings {diff} (old, new): use "
                                     "another --out folder or delete this one")
    else:
        _write_atomic(build, lambda p: p.write_text(json.dumps(settings, indent=1), encoding="utf-8"))
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    n_chunks = (len(rows) + chunk_size - 1) // chunk_size
    start = time.perf_counter()
    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn(f"indexing {place}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       transient=True)
        bar.start()
        task = bar.add_task("chunks", total=n_chunks)
    try:
        for k in range(n_chunks):
            path = folder / "chunks" / f"chunk_{k:05d}.safetensors"
            if not path.exists():
                part = rows[k * chunk_size:(k + 1) * chunk_size]
                stats = _chunk_stats(model, part, place, pad)
                meta = {"tokens": json.dumps([_tokens(r, tokenizer) for r in part], ensure_ascii=False)}
                _write_atomic(path, lambda p, s=stats, m=meta: save_file(s, str(p), metadata=m))
                if on_chunk is not None:
                    on_chunk(k)
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    parts, tokens = [], []
    from safetensors import safe_open

    for k in range(n_chunks):
        path = folder / "chunks" / f"chunk_{k:05d}.safetensors"
        parts.append(load_file(str(path)))
        with safe_open(str(path), "pt") as f:
            tokens += json.loads(f.metadata()["tokens"])
    tensors = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    meta = dict(settings, top=top, tokens=tokens, seconds=round(time.perf_counter() - start, 2))
    _write_atomic(folder / "index.safetensors", lambda p: save_file(tensors, str(p)))
    _write_atomic(folder / "index.json", lambda p: p.write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8"))
    return FeatureIndex.load(folder)


@dataclass
class FeatureIndex:
    """A built index: per snippet and neuron the largest activation (``act_max``, at ``act_pos``) and the
    summed relevance (``rel_sum``; largest at ``rel_pos``), ``[snippets, neurons]``, and the snippets' tokens."""

    folder: Path
    meta: dict[str, Any]
    act_max: Tensor
    act_pos: Tensor
    rel_sum: Tensor
    rel_pos: Tensor
    tokens: list[list[str]] = field(repr=False, default_factory=list)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> FeatureIndex:
        """Read ``index.safetensors`` and ``index.json`` from ``folder``."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "index.json").exists():
            raise FileNotFoundError(f"{str(folder)!r} holds no finished index (index.json): build it with "
                                    "lxt-fx index-features or build_index(...)")
        meta = json.loads((folder / "index.json").read_text(encoding="utf-8"))
        t = load_file(str(folder / "index.safetensors"))
        return cls(folder, meta, t["act_max"], t["act_pos"], t["rel_sum"], t["rel_pos"], meta.pop("tokens"))

    @property
    def place(self) -> str:
        """The place this index describes."""
        return str(self.meta["place"])

    @property
    def neurons(self) -> int:
        """Number of neurons (channels) at the place."""
        return int(self.act_max.shape[1])

    def _check(self, neuron: int) -> None:
        if not 0 <= neuron < self.neurons:
            raise PlaceError(f"neuron {neuron} outside 0…{self.neurons - 1} of {self.place!r}")

    def top(self, neuron: int, by: str = "activation", k: int | None = None) -> list[Snippet]:
        """The top-``k`` snippets of ``neuron`` by ``"activation"`` (largest activation in the snippet) or by
        ``"relevance"`` (summed relevance for the model's own predictions)."""
        self._check(neuron)
        if by not in ("activation", "relevance"):
            raise PlaceError(f"by={by!r}: use 'activation' or 'relevance'")
        values, pos = (self.act_max, self.act_pos) if by == "activation" else (self.rel_sum, self.rel_pos)
        k = int(self.meta.get("top", 8)) if k is None else k
        order = torch.argsort(values[:, neuron], descending=True)[:k].tolist()
        return [Snippet(i, self.tokens[i], int(pos[i, neuron]), float(values[i, neuron])) for i in order]

    def stats(self, neuron: int) -> dict[str, float]:
        """Mean and largest activation and relevance of ``neuron`` over the snippets."""
        self._check(neuron)
        a, r = self.act_max[:, neuron], self.rel_sum[:, neuron]
        return {"max activation": float(a.max()), "mean max activation": float(a.mean()),
                "mean relevance": float(r.mean()), "max relevance": float(r.max()), "snippets": float(a.numel())}

    def ranked(self, k: int = 10) -> list[tuple[int, float]]:
        """The ``k`` neurons with the largest mean relevance over the snippets."""
        mean = self.rel_sum.mean(0)
        return [(int(i), float(mean[i])) for i in torch.argsort(mean, descending=True)[:k]]

    def card(self, neuron: int, conditional: Any = None) -> Any:
        """The :class:`~lxt_fx.features.card.NeuronCard` of ``neuron`` (with a conditional Attribution)."""
        from .card import NeuronCard

        self._check(neuron)
        return NeuronCard(self, neuron, conditional)

    def _repr_html_(self) -> str:
        from .card import index_html

        return index_html(self)
