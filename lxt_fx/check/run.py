"""``lxt_fx.check(model, inputs)``: rewrite as ``explain`` would, then measure coverage, rule opacity,
conservation (also in zero-bias mode) and provenance, all into one :class:`~lxt_fx.check.report.CheckReport`
(see the package :mod:`lxt_fx.check`)."""

from __future__ import annotations

import time
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import modalities
from ..composites.composite import Composite
from ..composites.registry import resolve_composite
from ..explain import last_positions, model_call, model_device, outside_inference_mode, tokenizer_of
from ..ops import op_name
from ..rewrite import recording_places
from ..session import (
    InputError,
    Rewritten,
    carrying_inputs,
    check_model,
    example_call,
    mask_like,
    rewritten_graph,
    split_inputs,
)
from ..taps import (
    fresh_rewritten,
    insert_taps,
    original_call,
    relevance_path,
)
from ..targets import Function, Target, TokenSpec, as_target, natural_target
from ..tracing import accepts_kwarg
from ..tracing.meta import block_index, module_path
from ..tracing.modes import in_eval_mode
from .conservation import (
    Conservation,
    MagnitudeRecorder,
    account,
    causes,
    edge_specs,
    excused_neg_inf,
    segment_labels,
    value_specs,
    zero_biases,
)
from .coverage import CoverageRow, classify
from .opacity import prove
from .provenance import Provenance, locate
from .report import CheckReport, GraphNode


@outside_inference_mode
@in_eval_mode
def check(model: nn.Module, inputs: str | Sequence[str] | Tensor | Mapping[str, Any] | None = None, *,
          composite: Composite | str | None = None, target: Target | TokenSpec = None, tokenizer: Any = None,
          attention_mask: Tensor | None = None, zero_bias: bool = True, processor: Any = None, images: Any = None,
          audio: Any = None, decoder_inputs: str | Sequence[str] | Tensor | None = None) -> CheckReport:
    """Check ``composite`` (default: the one ``explain`` would use) on ``model`` for ``inputs``.

    The inputs are taken exactly as :func:`lxt_fx.explain` takes them (through
    :func:`lxt_fx.explain.model_call`): a str or list of str (with ``tokenizer`` or ``processor``),
    ``input_ids`` ``[batch, seq]`` with ``attention_mask``, pixel values ``[batch, C, H, W]`` positionally or as
    ``images=``, ``audio=``, ``decoder_inputs=`` for an encoder-decoder. Also: a float tensor of input
    embeddings, or the keyword arguments of a model call (``{"inputs_embeds": …}``).
    ``target``, ``composite``: as in :func:`lxt_fx.explain` (default: the argmax next token / class).
    ``zero_bias``: also run the bookkeeping with biases and ε zeroed (in a copy of the graph).
    """
    start = time.perf_counter()
    model = check_model(model)
    tokenizer = tokenizer_of(tokenizer, processor, images is not None or audio is not None)
    model_device(model)  # a model without parameters is a named error here, not a StopIteration later
    tensors, static = _prepare(model, inputs, tokenizer=tokenizer, attention_mask=attention_mask,
                               processor=processor, images=images, audio=audio, decoder_inputs=decoder_inputs)
    relevance_inputs = carrying_inputs(tensors)  # every float input but masks/positions (NoRelevancePathError)
    composite = resolve_composite(composite, model)
    goal = as_target(target)
    graph = rewritten_graph(model, composite, tensors, static, strict=False)

    coverage = classify(graph.module, graph.plan)
    segment = segment_labels(graph.module)
    for row in coverage:
        row.segment = segment.get(row.name, "")
    opacity = prove(graph.module, graph.plan)

    main = _bookkeeping(graph, tensors, relevance_inputs, goal, tokenizer, zero_bias=False)
    zero = None
    if zero_bias:
        zero = _bookkeeping(graph, tensors, relevance_inputs, goal, tokenizer, zero_bias=True,
                            target_ids=main.target_ids).conservation
    return CheckReport(type(model).__name__, composite.name, _describe(goal, main.target_ids, tokenizer),
                       main.conservation.score, coverage, opacity, main.conservation, zero, main.provenance,
                       _graph_nodes(graph, coverage), time.perf_counter() - start, rewrite=graph.report)


# ---- inputs and the explained score ---------------------------------------------------------------------


def _prepare(model: nn.Module, inputs: Any, **given: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    if isinstance(inputs, Mapping):
        for key in ("input_features", "input_values"):
            if isinstance(inputs.get(key), Tensor):
                modalities.check_audio_shape(model, key, inputs[key])
        tensors, static = split_inputs(model, inputs)
    elif isinstance(inputs, Tensor) and inputs.is_floating_point() and not accepts_kwarg(model, "inputs_embeds") \
            and not (inputs.dim() == 4 and modalities.names(model, "pixel_values")):
        tensors, static = split_inputs(model, example_call(model, inputs))  # forward(self, x): bound by position
    elif isinstance(inputs, Tensor) and inputs.is_floating_point() and inputs.dim() == 3:
        tensors, static = {"inputs_embeds": inputs}, {}
        if given["attention_mask"] is not None:
            tensors["attention_mask"] = mask_like(inputs[..., 0], given["attention_mask"], "inputs_embeds")
    else:
        tensors, static = split_inputs(model, model_call(model, inputs, **given))
    return {k: v.detach() for k, v in tensors.items()}, static


def _logits(outputs: Mapping[str, Tensor]) -> Tensor:
    if "logits" in outputs:
        return outputs["logits"]
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    raise InputError(f"the model returns {list(outputs)}, none of them 'logits': check a function of its "
                     "outputs with target=lxt_fx.targets.Function(fn)")


def _score(outputs: Mapping[str, Tensor], goal: Target, tokenizer: Any, mask: Tensor | None,
           target_ids: Tensor | None) -> tuple[Tensor, Tensor]:
    goal = natural_target(goal, dict(outputs))  # no target given: a dual encoder's image–text similarity
    if isinstance(goal, Function):
        scores = goal.fn(dict(outputs)) if mask is None else goal.scores(dict(outputs), mask)
        return scores, torch.full((scores.shape[0],), -1, dtype=torch.long)
    logits = _logits(outputs)
    if logits.dim() == 3:
        positions = last_positions(mask) if mask is not None else torch.full(
            (logits.shape[0],), logits.shape[1] - 1, dtype=torch.long)
        logits = logits[torch.arange(logits.shape[0], device=logits.device), positions.to(logits.device)]
    if target_ids is None:
        target_ids = goal.ids(logits.detach(), tokenizer)
    return goal.score(logits, target_ids, tokenizer), target_ids


def _describe(goal: Target, ids: Tensor, tokenizer: Any) -> str:
    if isinstance(goal, Function) or int(ids[0]) < 0:
        return "a function of the outputs"
    kind = type(goal).__name__.lower()
    first = int(ids[0])
    token = ""
    if tokenizer is not None and first >= 0:
        piece = tokenizer.convert_ids_to_tokens([first])[0]
        token = f"{piece!r} " if piece is not None else ""
    more = f" (+{len(ids) - 1} rows)" if len(ids) > 1 else ""
    return f"{kind} {token}(id {first}){more}"


# ---- one tapped forward and backward --------------------------------------------------------------------


@dataclass
class _Pass:
    conservation: Conservation
    provenance: Provenance
    target_ids: Tensor


def _bookkeeping(graph: Rewritten, tensors: Mapping[str, Tensor], relevance_inputs: Sequence[str], goal: Target,
                 tokenizer: Any, zero_bias: bool, target_ids: Tensor | None = None) -> _Pass:
    plan = graph.plan
    gm = fresh_rewritten(graph)
    path = relevance_path(gm, plan)
    zeroed = zero_biases(gm, path) if zero_bias else []
    cause = causes(gm, plan, path)
    specs = edge_specs(gm, path) + value_specs(gm)
    recorder = MagnitudeRecorder(specs, excused_neg_inf(gm, path))
    insert_taps(gm, specs, recorder)
    # every relevance input is a leaf (an encoder-decoder has two: encoder and decoder embeddings)
    names = list(relevance_inputs)
    mask = tensors.get("decoder_attention_mask", tensors.get("attention_mask"))  # the explained sequence's
    with torch.enable_grad():
        leaves = [tensors[n].detach().requires_grad_(True) for n in names]
        call = {**tensors, **dict(zip(names, leaves, strict=True))}
        with recording_places() as seen:  # a dual encoder's token embeddings, read inside the graph
            outputs = gm({k: call[k] for k in sorted(call)})
        places = [t for values in seen.values() for t in values]
        scores, target_ids = _score(outputs, goal, tokenizer, mask, target_ids)
        if scores.requires_grad:
            torch.autograd.grad(scores.sum(), leaves + places, allow_unused=True)
    score = float(scores.detach().double().sum())
    conservation = account(gm, path, recorder.totals(), specs, score,
                           [f"tensors_{n}" for n in names] + list(plan.places), cause, zero_bias, zeroed,
                           recorder.magnitudes, plan.writes)
    return _Pass(conservation, locate(gm, recorder), target_ids.detach().cpu())


# ---- graph views for the report -------------------------------------------------------------------------


def _graph_nodes(graph: Rewritten, coverage: list[CoverageRow]) -> list[GraphNode]:
    kinds = {r.name: r for r in coverage}
    path = relevance_path(graph.module, graph.plan)
    rows = []
    for node in graph.module.graph.nodes:
        row = kinds.get(node.name)
        target = op_name(original_call(node)[0]) if node.op == "call_function" else str(node.target)
        inputs = [a.name for a in node.all_input_nodes]
        rows.append(GraphNode(node.name, node.op, target, module_path(node), row.rule if row else "",
                              node.name in path, row.kind if row else node.op,
                              block_index(node), tuple(dict.fromkeys(inputs))))
    return rows


class CallablePackage(types.ModuleType):
    """The class of the package ``lxt_fx.check``: the package and, called, the function :func:`check`:
    ``lxt_fx.check(model, inputs)`` as documented, while ``from lxt_fx.check import conservation, coverage,
    ...`` keeps working."""

    __call__ = staticmethod(check)
