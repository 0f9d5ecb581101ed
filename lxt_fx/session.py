"""Glue between a model call and its rewritten graph: input preparation, the rewrite cache, and the
reversible ``forward`` swap behind ``Composite.context``."""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, fx, nn

from .checkpoint import MODES, SegmentedGraph, segmented
from .rewrite import Plan, RewriteReport, UnhandledOpError, apply, plan
from .tracing import CapturedGraph, capture
from .tracing.errors import LXTError

if TYPE_CHECKING:
    from .composites.composite import Composite

# Float inputs relevance is read at, in the order they are looked for.
RELEVANCE_INPUTS = ("inputs_embeds", "decoder_inputs_embeds", "pixel_values")
# Keyword arguments the rewritten graph handles itself.
_DROPPED = frozenset({"use_cache", "return_dict", "past_key_values", "cache_position", "labels"})


class NotAModuleError(LXTError, TypeError):
    """Something other than a ``torch.nn.Module`` was given as the model."""


class NoInputEmbeddingsError(LXTError):
    """The model has no input embedding layer to read relevance at."""


class DtypeError(LXTError):
    """The model's dtype cannot be explained reliably (float16)."""


def check_model(model: Any) -> nn.Module:
    """Validate ``model`` for explanation; returns it."""
    if not isinstance(model, nn.Module):
        raise NotAModuleError(f"expected a torch.nn.Module (e.g. a transformers model), got "
                              f"{type(model).__name__}; load one with AutoModelForCausalLM.from_pretrained(...)")
    param = next(model.parameters(), None)
    if param is not None and param.dtype == torch.float16:
        raise DtypeError(f"{type(model).__name__} is in float16, whose range overflows in relevance "
                         "(LRP sums can exceed 65504): load or convert it with torch_dtype=torch.bfloat16 or "
                         "torch.float32 (model.to(torch.bfloat16))")
    return model


def input_embeddings(model: nn.Module) -> nn.Module:
    """The model's input embedding module, or a named error."""
    getter = getattr(model, "get_input_embeddings", None)
    emb = None
    if getter is not None:
        with contextlib.suppress(NotImplementedError, AttributeError):
            emb = getter()
    if not isinstance(emb, nn.Module):
        raise NoInputEmbeddingsError(
            f"{type(model).__name__} has no input embeddings (get_input_embeddings() gave {emb!r}); relevance "
            "is read at the embedding output: pass a transformers model, or call the model with "
            "inputs_embeds inside composite.context(model)")
    return emb


def split_inputs(model: nn.Module, kwargs: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensor kwargs for the graph, static kwargs baked into it); ``input_ids`` become ``inputs_embeds``."""
    tensors: dict[str, Tensor] = {}
    static: dict[str, Any] = {}
    for name, value in kwargs.items():
        if value is None or name in _DROPPED:
            continue
        if isinstance(value, Tensor):
            tensors[name] = value
        else:
            static[name] = value
    for mask, seq in (("attention_mask", ("input_ids", "inputs_embeds")),
                      ("decoder_attention_mask", ("decoder_input_ids", "decoder_inputs_embeds"))):
        what = next((s for s in seq if s in tensors), None)
        if mask in tensors and what is not None and kwargs.get("past_key_values") is None \
                and tensors[mask].dim() == 2 and tensors[what].dim() >= 2 \
                and tuple(tensors[mask].shape) != tuple(tensors[what].shape[:2]):
            from .explain import mask_like  # raises InputError (explain imports this module)

            mask_like(tensors[what][..., 0] if what.endswith("embeds") else tensors[what], tensors[mask], what)
    for ids, embeds in (("input_ids", "inputs_embeds"), ("decoder_input_ids", "decoder_inputs_embeds")):
        if ids in tensors and embeds not in tensors and ids == "input_ids":
            tensors[embeds] = input_embeddings(model)(tensors.pop(ids))
    return tensors, static


def _mutates_first(node: fx.Node) -> bool:
    """Whether the node's op writes its first argument (an in-place ATen overload, possibly rule-wrapped)."""
    target = node.meta.get("lxt_original_target", node.target)
    schema = getattr(target, "_schema", None)
    if schema is None or not schema.arguments:
        return False
    alias = schema.arguments[0].alias_info
    return alias is not None and alias.is_write


@dataclass
class Rewritten:
    """A rewritten graph with what it came from."""

    module: fx.GraphModule
    report: RewriteReport
    captured: CapturedGraph
    plan: Plan
    _segmented: dict[str | None, SegmentedGraph | None] = field(default_factory=dict)
    _mutated: frozenset[str] | None = None

    def __call__(self, tensors: Mapping[str, Tensor], checkpoint: str | None = None) -> dict[str, Tensor]:
        """Run the graph; ``checkpoint``: None, ``"layer"`` or ``"sqrt"`` (see :mod:`lxt_fx.checkpoint`).

        An input the model changes in place (CTRL scales ``inputs_embeds`` with ``*=``) is cloned first when
        it is a leaf that requires grad, as the explained embeddings are; its gradient is unchanged."""
        mutated = self.mutated_inputs()
        if mutated:
            tensors = {k: v.clone() if k in mutated and v.is_leaf and v.requires_grad else v
                       for k, v in tensors.items()}
        runner = self.segmented(checkpoint)
        if runner is not None:
            return runner(tensors)
        return self.module({k: tensors[k] for k in sorted(tensors)})

    def mutated_inputs(self) -> frozenset[str]:
        """Names of the inputs the graph writes in place."""
        if self._mutated is None:
            self._mutated = frozenset(
                arg.name.removeprefix("tensors_") for node in self.module.graph.nodes
                if node.op == "call_function" and node.args and isinstance(node.args[0], fx.Node)
                and (arg := node.args[0]).op == "placeholder" and _mutates_first(node))
        return self._mutated

    def segmented(self, mode: str | None) -> SegmentedGraph | None:
        """The checkpointed form of this graph for ``mode`` (built once per mode), or None."""
        if mode is None:
            return None
        if mode not in self._segmented:
            model = self.captured.program.module()  # root holding the parameters split_module copies from
            self._segmented[mode] = segmented(self.module, model, mode, self.captured.output_keys)
        return self._segmented[mode]


def rewritten_graph(model: nn.Module, composite: Composite, tensors: Mapping[str, Tensor],
                    static: Mapping[str, Any], strict: bool = False) -> Rewritten:
    """The rewritten graph of ``model`` for this call signature under ``composite`` (cached)."""
    captured = capture(model, tensors, static)
    hit = captured.rewrites.get(id(composite))
    if hit is None or hit[0] is not composite:
        start = time.perf_counter()
        gm = captured.module()
        inputs = [f"tensors_{name}" for name in RELEVANCE_INPUTS if name in tensors]
        report = RewriteReport(composite.name, type(model).__name__, capture_seconds=captured.seconds)
        decided = plan(gm, composite, inputs)
        apply(gm, decided, report)
        report.rewrite_seconds = time.perf_counter() - start
        hit = (composite, Rewritten(gm, report, captured, decided))
        captured.rewrites[id(composite)] = hit
    result = hit[1]
    if strict and result.report.unhandled:
        raise UnhandledOpError(result.report.unhandled, composite.name)
    return result


def rewritten(model: nn.Module, composite: Composite, example_inputs: Mapping[str, Any], strict: bool = False
              ) -> tuple[fx.GraphModule, RewriteReport]:
    """``Composite.rewrite``: the rewritten ``GraphModule`` and its report."""
    check_model(model)
    tensors, static = split_inputs(model, example_inputs)
    result = rewritten_graph(model, composite, tensors, static, strict)
    return result.module, result.report


def wrap_output(captured: CapturedGraph, out: dict[str, Tensor]) -> Any:
    """Give the graph's dict of outputs the type the model returns."""
    cls = captured.output_class
    if cls is None or cls is dict:
        return out
    if issubclass(cls, Tensor):
        return out["output"]
    if cls is tuple:
        return tuple(out.values())
    return cls(**out)


@contextlib.contextmanager
def patched_forward(model: nn.Module, composite: Composite, strict: bool = False,
                    checkpoint: str | None = None) -> Iterator[nn.Module]:
    """Route ``model(...)`` through the rewritten graph by shadowing ``forward`` on the instance only;
    the instance's own ``__dict__`` entry (or its absence) is restored on exit, also after an exception."""
    check_model(model)
    if checkpoint not in MODES:
        raise ValueError(f"checkpoint={checkpoint!r}: use one of {MODES}")
    signature = inspect.signature(type(model).forward)
    missing = object()
    previous = model.__dict__.get("forward", missing)

    def forward(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(model, *args, **kwargs)
        call = {k: v for k, v in bound.arguments.items() if k != "self"}
        for name, param in signature.parameters.items():
            if param.kind is param.VAR_KEYWORD and name in call:
                call.update(call.pop(name))
        tensors, static = split_inputs(model, call)
        result = rewritten_graph(model, composite, tensors, static, strict)
        return wrap_output(result.captured, result(tensors, checkpoint))

    model.__dict__["forward"] = forward
    try:
        yield model
    finally:
        if previous is missing:
            model.__dict__.pop("forward", None)
        else:
            model.__dict__["forward"] = previous
