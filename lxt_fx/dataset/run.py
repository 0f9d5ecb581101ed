"""``attribute``: explain every row of a JSONL file, in one process or in each rank of ``torchrun``.

Under ``torchrun --nproc-per-node N`` (``WORLD_SIZE``/``RANK`` set by torch.distributed's launcher) the ranks
join one process group (gloo for a CPU model, NCCL for a model on a GPU; ``$LXT_FX_BACKEND=gloo`` forces gloo) with torch's own env rendezvous. Every
rank reads the data file and the finished shards, so all agree on the rows still to do; rank ``r`` takes rows
``r, r + N, r + 2N, …`` of them, explains them ``batch_size`` at a time and writes a shard every
``shard_size`` rows (whole, then renamed: :mod:`.shards`). After each step the ranks sum how many rows they
finished (one ``all_reduce``; a rank out of work takes part with 0), which drives rank 0's progress bar.
When every rank is done, rank 0 writes ``index.jsonl``. A run killed at any point (one rank or all, as
torchrun stops the others when one dies) and started again with the same arguments does each unfinished
row once and each finished row never again.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..composites.registry import for_model
from ..explain import explain
from ..targets import TargetError, single_token_id
from ..tracing.errors import LXTError
from .rows import DatasetError, Row, read_rows
from .shards import check_manifest, done_rows, remove_partial, write_index, write_shard
from .weights import weights_digest


@dataclass
class Summary:
    """What one call of :func:`attribute` did: rows explained and bad rows recorded by this process, rows done
    by all ranks together in this call, rows found finished already, the shards this process wrote, seconds,
    and the index (rank 0; None on the other ranks)."""

    explained: int
    bad: int
    processed_all: int
    resumed: int
    shards: list[str]
    seconds: float
    index: list[dict[str, Any]] | None


def backend_for(device: torch.device, nccl_available: bool, override: str = "") -> str:
    """The process-group backend for a model on ``device``: ``"nccl"`` for a CUDA model when NCCL is built in
    (and ``override``, ``$LXT_FX_BACKEND``, is not ``"gloo"``), else ``"gloo"`` — a CPU model gets gloo even
    on a machine with GPUs, since its counts are CPU tensors that NCCL cannot reduce."""
    return "nccl" if device.type == "cuda" and nccl_available and override != "gloo" else "gloo"


def count_device(backend: str, device: torch.device) -> torch.device:
    """Where the per-step row count lives for the ``all_reduce`` under ``backend``: the CUDA model's own device
    under NCCL (a group the caller made with NCCL around a CPU model: the current CUDA device), else the CPU."""
    if backend != "nccl":
        return torch.device("cpu")
    return device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())


def _group(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group), for a model on ``device``."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    backend = backend_for(device, dist.is_nccl_available(), os.environ.get("LXT_FX_BACKEND", ""))
    bound = device if backend == "nccl" and device.index is not None else None
    dist.init_process_group(backend=backend, device_id=bound)
    return dist.get_rank(), dist.get_world_size(), True


def _sum(value: int, world: int, device: torch.device) -> int:
    if world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.long, device=count_device(dist.get_backend(), device))
    dist.all_reduce(t)
    return int(t.item())


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _target_id(row: Row, default: int | str | None, tokenizer: Any) -> tuple[int | None, str | None]:
    """The row's target as one token id (None: argmax), or an error for a target that is not one token."""
    target = row.target if row.target is not None else default
    if target is None:
        return None, None
    if isinstance(target, int):
        return target, None
    if target.strip().isdigit() and row.target is None:
        return int(target), None
    try:
        return single_token_id(target, tokenizer), None
    except TargetError as exc:  # several tokens, or a word outside the vocabulary: a bad row, said why
        return None, str(exc).split(":")[0]


def _composite_key(model: nn.Module, composite: Any) -> dict[str, Any]:
    """The composite a run explains with, by name and by a digest of its rules (patterns and parameters)."""
    composite = for_model(model) if composite is None else composite
    if isinstance(composite, str):  # a registered name: its rules are fixed by the lxt-fx version
        return {"composite": composite, "composite_rules": None}
    rules = hashlib.sha256(repr(composite.describe()).encode()).hexdigest()
    return {"composite": composite.name, "composite_rules": rules}


def _version() -> str:
    """The lxt-fx version (of the package this module belongs to, imported before it)."""
    return str(sys.modules[__name__.split(".")[0]].__version__)


def attribute(model: nn.Module, tokenizer: Any, data: str | os.PathLike[str], out: str | os.PathLike[str], *,
              target: int | str | None = None, batch_size: int = 8, shard_size: int = 64,
              max_length: int | None = None, composite: Any = None, progress: bool = True,
              on_shard: Callable[[Path], None] | None = None,
              checkpoint: str | os.PathLike[str] | None = None) -> Summary:
    """Explain every row of the JSONL file ``data`` with AttnLRP and write safetensors shards of relevance and
    ``index.jsonl`` into ``out`` (see the module docstring; one record per row: ``id``, ``position``, ``tokens``,
    ``target`` id, ``target_token``, ``score``, ``shard``, ``offset``, ``length``, or ``error`` for a bad row).

    ``target``: default next token to explain (a token string or id; None: the argmax); a row's own ``target``
    wins. ``max_length``: rows with more tokens are bad rows (default the model's ``max_position_embeddings``).
    A folder from an earlier run is resumed when everything that changes a row's result is the same: the data,
    the composite and its rules, a digest of all the weights (:func:`~lxt_fx.dataset.weights.weights_digest`;
    ``checkpoint``: the local folder the model was just loaded from, to cache it on disk), the target, the
    length limit and the lxt-fx version; anything else is a :class:`DatasetError` naming what differs.
    Returns a :class:`Summary`.
    """
    param = next(model.parameters(), None)
    rank, world, created = _group(param.device if param is not None else torch.device("cpu"))
    try:
        return _attribute(model, tokenizer, Path(data), Path(out), target, batch_size, shard_size, max_length,
                          composite, progress, on_shard, rank, world, checkpoint)
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _attribute(model: nn.Module, tokenizer: Any, data: Path, out: Path, target: Any, batch_size: int,
               shard_size: int, max_length: int | None, composite: Any, progress: bool,
               on_shard: Callable[[Path], None] | None, rank: int, world: int,
               checkpoint: str | os.PathLike[str] | None = None) -> Summary:
    if batch_size < 1 or shard_size < 1:
        raise DatasetError(f"batch_size ({batch_size}) and shard_size ({shard_size}) must be at least 1")
    start = time.perf_counter()
    rows, digest = read_rows(data)
    limit = max_length or getattr(getattr(model, "config", None), "max_position_embeddings", None) or 2 ** 31
    if rank == 0:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatasetError(f"output folder {str(out)!r} cannot be made: {exc.strerror or exc}") from exc
        check_manifest(out, {"data_sha256": digest, "rows": len(rows), "target": target,
                                    "max_length": limit, "model": type(model).__name__,
                                    "weights_sha256": weights_digest(model, checkpoint),
                                    "lxt_fx_version": _version(), **_composite_key(model, composite)})
        remove_partial(out)
    _barrier(world)
    finished = {r["position"] for r in done_rows(out)}
    _barrier(world)  # every rank has read the same finished rows before anyone writes
    todo = [r for r in rows if r.position not in finished]
    mine = todo[rank::world]
    steps = math.ceil(len(todo[0::world]) / batch_size) if todo else 0
    device = next(model.parameters()).device
    records: list[dict[str, Any]] = []
    rel: list[torch.Tensor] = []
    ids: list[torch.Tensor] = []
    written: list[str] = []
    explained = bad = processed_all = 0

    def flush() -> None:
        if records:
            path = write_shard(out, records, rel, ids, rank)
            written.append(path.name)
            records.clear(), rel.clear(), ids.clear()
            if on_shard is not None:
                on_shard(path)

    bar = _progress(progress and rank == 0, len(rows), len(finished))
    with bar:
        task = bar.add_task("explaining", total=len(rows), completed=len(finished))
        for step in range(steps):
            batch = mine[step * batch_size:(step + 1) * batch_size]
            for record, r, i in _explain_batch(model, tokenizer, batch, target, limit, composite):
                records.append(record)
                if "error" in record:
                    bad += 1
                else:
                    explained += 1
                    rel.append(r)
                    ids.append(i)
            if len(records) >= shard_size:
                flush()
            done_now = _sum(len(batch), world, device)
            processed_all += done_now
            bar.update(task, advance=done_now)
        flush()
    _barrier(world)
    index = write_index(out, len(rows)) if rank == 0 else None
    _barrier(world)
    return Summary(explained, bad, processed_all, len(finished), written, time.perf_counter() - start, index)


def _progress(enabled: bool, total: int, done: int) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), disable=not enabled, transient=False)


def _explain_batch(model: nn.Module, tokenizer: Any, batch: list[Row], target: Any, limit: int,
                   composite: Any) -> list[tuple[dict[str, Any], torch.Tensor | None, torch.Tensor | None]]:
    """Index record, relevance and ids of each row of ``batch`` (bad rows: the record with ``error``)."""
    results: dict[int, tuple[dict[str, Any], Any, Any]] = {}
    groups: dict[bool, list[tuple[Row, int | None]]] = {True: [], False: []}
    for row in batch:
        base = {"id": row.id, "position": row.position}
        if row.error is not None:
            results[row.position] = ({**base, "error": row.error}, None, None)
            continue
        n = len(tokenizer(row.text)["input_ids"])
        if n > limit:
            results[row.position] = ({**base, "error": f"too long: {n} tokens, the limit is {limit}"}, None, None)
            continue
        tid, error = _target_id(row, target, tokenizer)
        if error is not None:
            results[row.position] = ({**base, "error": error}, None, None)
            continue
        groups[tid is not None].append((row, tid))
    for explicit, group in groups.items():
        if not group:
            continue
        texts = [row.text for row, _ in group]
        goal = [tid for _, tid in group] if explicit else None
        try:
            att = explain(model, texts, tokenizer=tokenizer, target=goal, composite=composite)
        except LXTError as exc:  # one bad row must not stop the run: retry alone, then record it
            if len(group) == 1:
                row = group[0][0]
                results[row.position] = ({"id": row.id, "position": row.position,
                                          "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}, None, None)
                continue
            for row, tid in group:
                for rec in _explain_batch(model, tokenizer, [Row(row.position, row.id, row.text,
                                                                 tid if explicit else None)], None, limit, composite):
                    results[row.position] = rec
            continue
        for k, (row, _) in enumerate(group):
            n = int(att.attention_mask[k].sum())
            tid = int(att.target_ids[k])
            record = {"id": row.id, "position": row.position, "tokens": list(att.tokens[k]), "target": tid,
                      "target_token": tokenizer.convert_ids_to_tokens([tid])[0] if tid >= 0 else None,
                      "score": float(att.target_scores[k])}
            results[row.position] = (record, att.relevance[k, :n].clone(), att.input_ids[k, :n].clone())
    return [results[row.position] for row in batch]
