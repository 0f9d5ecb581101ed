"""Glue between a model call and its rewritten graph: input preparation, the rewrite cache, and the
reversible ``forward`` swap behind ``Composite.context``.

Which inputs carry relevance (:func:`carrying_inputs`): every floating-point tensor input, except those whose
name contains ``mask``, ``position`` or ``cache`` (a float attention mask is a constant), unless the caller
names them in ``relevance_inputs``. ``input_ids`` become ``inputs_embeds`` (looked up in the model's input
embeddings), which then carry. A rewrite whose relevance inputs reach no output is an error
(:class:`NoRelevancePathError`), never a plain gradient.

Calls inside the context (:func:`patched_forward`) either run the rewritten graph, give exactly what the
untouched model gives, or raise :class:`UnsupportedCallError`. The graph has no key/value cache, so a call
with ``past_key_values`` / ``cache`` / ``cache_position``, ``use_cache=True``, or ``return_dict=False`` while
the model would put a cache into the tuple cannot be represented: with gradients disabled (``torch.no_grad``,
``torch.inference_mode`` — e.g. every step of ``model.generate``) the model's own untouched ``forward`` runs,
which is exactly what the user gets outside and no relevance can be asked for; with gradients enabled the
call raises. A non-tensor argument that holds tensors or state (``encoder_outputs=(…,)``) would be baked into
the graph as a constant: the same policy. ``labels`` are graph inputs: the loss is the model's own loss,
computed inside the graph (its ops lie on the relevance path, so ``strict=True`` names the loss's
non-linear ops). Tuple outputs (``hidden_states``) come back as tuples. A call without ``use_cache`` runs the
graph even where the model's config would make a cache: the output's cache field is then ``None``.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, fx, nn

from .checkpoint import MODES, SegmentedGraph, segmented
from .ops import writes_first_argument
from .rewrite import Plan, RewriteReport, UnhandledOpError, apply, plan
from .tracing import CapturedGraph, accepts_kwarg, capture
from .tracing.capture import unflatten_outputs
from .tracing.errors import LXTError
from .tracing.offload import loaded
from .tracing.spliced import graph_inputs, splices_images

if TYPE_CHECKING:
    from .composites.composite import Composite

# Float inputs relevance is usually read at in transformers models (every float input carries by default;
# this tuple only names the usual ones for callers that pick one).
RELEVANCE_INPUTS = ("inputs_embeds", "decoder_inputs_embeds", "pixel_values")
# A float input whose name contains one of these carries no relevance unless ``relevance_inputs`` names it.
# ``bbox``: a layout model's token boxes (LayoutLM, BROS, UDOP) are 2-D page positions, embedded (often as
# sinusoids of the coordinates) and added to the token embeddings like position ids: constants for relevance.
NON_CARRYING_PARTS = ("mask", "position", "cache", "bbox")
# Arguments that read or fill a key/value cache: the rewritten graph has none.
CACHE_ARGUMENTS = ("past_key_values", "cache", "cache_position")
# Keyword arguments the session handles itself (never passed to the captured graph).
_DROPPED = frozenset({"use_cache", "return_dict"})
# input_ids → inputs_embeds: the ids are looked up in the input embeddings, which then carry relevance.
_EMBEDDED = {"input_ids": "inputs_embeds"}


class NotAModuleError(LXTError, TypeError):
    """Something other than a ``torch.nn.Module`` was given as the model."""


class NoInputEmbeddingsError(LXTError):
    """The model has no input embedding layer to read relevance at."""


class DtypeError(LXTError):
    """The model's dtype cannot be explained reliably (float16)."""


class UnsupportedCallError(LXTError):
    """A call inside ``Composite.context`` the rewritten graph cannot represent, made with gradients enabled
    (under ``torch.no_grad()`` such a call runs the model's untouched forward instead)."""

    def __init__(self, model_class: str, argument: str, why: str, todo: str) -> None:
        self.model_class, self.argument = model_class, argument
        super().__init__(f"{model_class}({argument}) cannot run through the rewritten graph: {why}\n"
                         f"  what to do: {todo}")


class ExampleInputsError(LXTError, TypeError):
    """The inputs do not fit the model's ``forward`` signature."""


class RelevanceInputError(LXTError, ValueError):
    """``relevance_inputs`` names an input the call does not have, or one that is not floating point."""


class NoRelevancePathError(LXTError):
    """No input carries relevance to any output: the explanation would be a plain gradient (or nothing)."""


class InputError(LXTError, ValueError):
    """Inputs that cannot be explained (empty text, ids outside the vocabulary, no tokenizer for text,
    ids or an attention mask of the wrong shape)."""


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
    if isinstance(emb, (nn.ModuleList, nn.ModuleDict)):  # MusicGen: one embedding per codebook, summed inside
        raise NoInputEmbeddingsError(
            f"{type(model).__name__}'s get_input_embeddings() is a {type(emb).__name__} (one embedding per "
            "codebook or stream, combined inside the forward), not one module that maps ids to the "
            "embeddings the forward takes: explain it through inputs_embeds inside composite.context(model)")
    return emb


def embed(embedding: nn.Module, ids: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``embedding(ids)``, or :class:`NoInputEmbeddingsError` where it is not a tensor (I-BERT's quantized
    embedding returns the values with their scaling factor)."""
    out = embedding(ids)
    if not isinstance(out, torch.Tensor):
        raise NoInputEmbeddingsError(
            f"{type(model).__name__}'s input embedding ({type(embedding).__name__}) returns a "
            f"{type(out).__name__}, not the embeddings tensor the forward takes as inputs_embeds: relevance "
            "cannot be read there; explain it through inputs_embeds inside composite.context(model)")
    return out


_TODO_EXPLAIN = ("to explain, call the model without it inside the context (a full forward from input_ids or "
                 "inputs_embeds, use_cache=False); to decode, run the step under torch.no_grad() (the untouched "
                 "forward runs), generate outside the context, or use lxt_fx.generate.generate_and_explain")


def _plain_value(value: Any) -> bool:
    """Whether ``value`` can be baked into a graph as a constant: no tensors, no objects with state."""
    if value is None or isinstance(value, (bool, int, float, complex, str, torch.dtype, torch.device, enum.Enum)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_plain_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_value(v) for k, v in value.items())
    return False


def _would_return_cache(model: nn.Module, call: Mapping[str, Any]) -> bool:
    """Whether the untouched model would put a cache into its output for this call."""
    if not accepts_kwarg(model, "use_cache"):
        return False
    use_cache = call.get("use_cache")
    if use_cache is None:
        use_cache = getattr(getattr(model, "config", None), "use_cache", False)
    return bool(use_cache)


def unsupported_argument(model: nn.Module, call: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(argument, why, what to do) for the first argument of ``call`` the rewritten graph cannot represent,
    or None. The graph has no key/value cache and bakes non-tensor arguments in as constants."""
    for name in CACHE_ARGUMENTS:
        if call.get(name) is not None:
            return (f"{name}=…", "the rewritten graph has no key/value cache: a cached step would run on the "
                    "new tokens alone and give different logits", _TODO_EXPLAIN)
    if call.get("use_cache") is True:
        return ("use_cache=True", "the rewritten graph returns no cache", _TODO_EXPLAIN)
    if call.get("return_dict") is False and _would_return_cache(model, call):
        return ("return_dict=False", "the model would put a cache into the tuple and the rewritten graph has "
                "none, so every later element would shift", "pass use_cache=False with return_dict=False, or "
                "use return_dict=True")
    for name, value in call.items():
        if not isinstance(value, Tensor) and not _plain_value(value):
            return (f"{name}=<{type(value).__name__}>", "the graph bakes non-tensor arguments in as constants, "
                    "and this one holds tensors or state", f"pass the tensors of {name} as tensor arguments, "
                    "or call the model outside the context")
    return None


def mask_like(ids: Tensor, attention_mask: Tensor | None, what: str = "input_ids") -> Tensor:
    """``attention_mask`` checked against ``ids`` ``[batch, seq]`` (a ``[seq]`` mask for one row is
    ``[1, seq]``); all ones when None. Anything else is an :class:`InputError`, never a reshape."""
    if attention_mask is None:
        return torch.ones_like(ids)
    mask = attention_mask
    if mask.dim() == 1 and ids.shape[0] == 1:
        mask = mask.unsqueeze(0)
    if tuple(mask.shape) != tuple(ids.shape):
        raise InputError(f"attention_mask of shape {tuple(attention_mask.shape)} does not fit {what} of shape "
                         f"{tuple(ids.shape)}: give one mask entry per token, shape [batch, seq] = "
                         f"{tuple(ids.shape)} (1 for a real token, 0 for padding)")
    return mask


def split_inputs(model: nn.Module, kwargs: Mapping[str, Any], *, checked: bool = False
                 ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensor kwargs for the graph, static kwargs baked into it); ``input_ids`` become ``inputs_embeds``.

    Raises :class:`UnsupportedCallError` for an argument the graph cannot represent
    (:func:`unsupported_argument`; ``checked``: the caller already asked); ``use_cache`` and ``return_dict``
    are the session's to handle."""
    problem = None if checked else unsupported_argument(model, kwargs)
    if problem is not None:
        raise UnsupportedCallError(type(model).__name__, *problem)
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
            mask_like(tensors[what][..., 0] if what.endswith("embeds") else tensors[what], tensors[mask], what)
    if "input_ids" in tensors and "pixel_values" in tensors and splices_images(model):  # LLaVA, Qwen2-VL
        tensors, static = graph_inputs(model, tensors["input_ids"], tensors, static)
    for ids, embeds in _EMBEDDED.items():
        if ids in tensors and embeds not in tensors:
            if _dual_encoder(model):  # CLIP, SigLIP: the text tower reads the ids themselves (pooling, eos)
                continue
            tensors[embeds] = embed(input_embeddings(model), tensors.pop(ids), model)
    return tensors, static


def _dual_encoder(model: nn.Module) -> bool:
    """A model whose forward takes ``input_ids`` and ``pixel_values`` but not ``inputs_embeds`` by name (CLIP,
    SigLIP): it cannot be called with embeddings, so its ids stay ids."""
    params = _signature(type(model).forward).parameters
    return "pixel_values" in params and "input_ids" in params and "inputs_embeds" not in params


def carrying_inputs(tensors: Mapping[str, Tensor], relevance_inputs: Sequence[str] | None = None
                    ) -> tuple[str, ...]:
    """Names of the graph inputs that carry relevance, sorted.

    Default: every floating-point tensor whose name contains none of :data:`NON_CARRYING_PARTS`.
    ``relevance_inputs``: exactly these (``input_ids`` stands for the ``inputs_embeds`` made from it); each must
    be a floating-point tensor input of the call, else :class:`RelevanceInputError`. No carrying input at all:
    :class:`NoRelevancePathError`."""
    if relevance_inputs is not None:
        if isinstance(relevance_inputs, str):
            relevance_inputs = [relevance_inputs]
        names = {_EMBEDDED.get(n, n) if _EMBEDDED.get(n) in tensors else n for n in relevance_inputs}
        unknown = sorted(n for n in names if n not in tensors)
        if unknown:
            raise RelevanceInputError(f"relevance_inputs names {unknown}, but the call's tensor inputs are "
                                      f"{sorted(tensors)}: name some of those")
        not_float = sorted(n for n in names if not tensors[n].is_floating_point())
        if not_float:
            raise RelevanceInputError(f"relevance_inputs {not_float} are not floating point "
                                      f"({[str(tensors[n].dtype) for n in not_float]}): relevance is read as "
                                      "input ⊙ gradient, so name float inputs (inputs_embeds instead of ids)")
        found = tuple(sorted(names))
    else:
        found = tuple(sorted(n for n, t in tensors.items() if t.is_floating_point()
                             and not any(part in n.lower() for part in NON_CARRYING_PARTS)))
    if not found:
        raise NoRelevancePathError(
            f"no floating-point tensor input to read relevance at (inputs: "
            f"{ {n: str(t.dtype) for n, t in tensors.items()} }): pass float inputs (inputs_embeds, or "
            "input_ids to a model with get_input_embeddings()), or name them with relevance_inputs=[...]")
    return found


def bind_call(model: nn.Module, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
              ) -> dict[str, Any]:
    """The keyword form of ``model(*args, **kwargs)``, bound to ``type(model).forward``'s signature
    (a ``**kwargs`` parameter is flattened). Raises :class:`ExampleInputsError` when they do not fit."""
    forward = type(model).forward
    signature = _signature(forward)
    try:
        bound = signature.bind_partial(model, *args, **(kwargs or {}))
    except TypeError as exc:
        raise ExampleInputsError(f"the inputs do not fit {type(model).__name__}.forward{signature}: {exc}; "
                                 "pass them as a dict of keyword arguments or a tuple of positional ones"
                                 ) from exc
    call: dict[str, Any] = {}
    for name, value in list(bound.arguments.items())[1:]:  # the first one is self
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            call.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise ExampleInputsError(f"{type(model).__name__}.forward takes *{name}; the graph needs named "
                                         "inputs: pass them as keyword arguments")
        else:
            call[name] = value
    return call


@functools.lru_cache(maxsize=256)
def _signature(forward: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(forward)


def example_call(model: nn.Module, example_inputs: Mapping[str, Any] | Sequence[Any] | Tensor
                 ) -> dict[str, Any]:
    """``Composite.rewrite``'s example inputs as keyword arguments: a dict as it is, a tensor or a tuple/list
    bound positionally to the forward signature."""
    if isinstance(example_inputs, Mapping):
        return bind_call(model, (), example_inputs)
    if isinstance(example_inputs, Tensor):
        return bind_call(model, (example_inputs,))
    if isinstance(example_inputs, (tuple, list)):
        return bind_call(model, tuple(example_inputs))
    raise ExampleInputsError(f"example_inputs must be a dict of keyword arguments, a tuple of positional ones or "
                             f"one tensor, got {type(example_inputs).__name__}")


def _mutates_first(node: fx.Node) -> bool:
    """Whether the node's op writes its first argument (an in-place ATen overload, possibly rule-wrapped)."""
    return writes_first_argument(node.meta.get("lxt_original_target", node.target))


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
            with loaded(runner.module, self.captured.offloaded):  # weights an accelerate hook keeps off-device
                return runner(tensors)
        with loaded(self.module, self.captured.offloaded):
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
            model = self.captured.module()  # root holding the parameters split_module copies from
            self._segmented[mode] = segmented(self.module, model, mode, self.captured.output_keys)
        return self._segmented[mode]


# Names that ask for the text tokens' relevance of a dual encoder, whose graph reads the ids themselves.
_TEXT_NAMES = frozenset({"input_ids", "inputs_embeds"})


def _reads_text_place(tensors: Mapping[str, Tensor], relevance_inputs: Sequence[str] | None) -> bool:
    """Whether the call keeps integer ``input_ids`` as a graph input (a dual encoder, see
    :func:`split_inputs`) and the token relevance is wanted (by default, or named in ``relevance_inputs``)."""
    ids = tensors.get("input_ids")
    if ids is None or ids.is_floating_point() or "inputs_embeds" in tensors:
        return False
    names = (relevance_inputs,) if isinstance(relevance_inputs, str) else relevance_inputs
    return names is None or bool(_TEXT_NAMES & set(names))


def token_places(gm: fx.GraphModule, ids: str = "tensors_input_ids", depth: int = 6) -> dict[str, str]:
    """The token-embedding lookups of ``gm`` whose indices are the graph input ``ids`` (through views and
    casts): ``{node name: "inputs_embeds"}``, the relevance places of a model that reads token ids itself."""
    found: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or getattr(node.target, "overloadpacket", None) is not torch.ops.aten.embedding:
            continue
        index = node.args[1] if len(node.args) > 1 else None
        for _ in range(depth):
            if not isinstance(index, fx.Node) or index.op != "call_function":
                break
            index = index.args[0] if index.args else None
        if isinstance(index, fx.Node) and index.op == "placeholder" and index.name == ids:
            found[node.name] = "inputs_embeds"
    return found


def rewritten_graph(model: nn.Module, composite: Composite, tensors: Mapping[str, Tensor],
                    static: Mapping[str, Any], strict: bool = False,
                    relevance_inputs: Sequence[str] | None = None) -> Rewritten:
    """The rewritten graph of ``model`` for this call signature under ``composite`` (cached per composite and
    set of relevance inputs, see :func:`carrying_inputs`). Raises :class:`NoRelevancePathError` when those
    inputs reach no output, :class:`UnhandledOpError` with ``strict`` and a non-linear op left without a rule.

    A dual encoder (CLIP, SigLIP) keeps its ``input_ids``: its token relevance is then read at the token
    embedding lookup inside the graph (:func:`token_places`, ``Rewritten.plan.places``), by default and when
    ``relevance_inputs`` names ``input_ids`` or ``inputs_embeds``."""
    text = _reads_text_place(tensors, relevance_inputs)
    rest = relevance_inputs
    if text and relevance_inputs is not None:
        names = (relevance_inputs,) if isinstance(relevance_inputs, str) else relevance_inputs
        rest = [n for n in names if n not in _TEXT_NAMES]
    inputs = () if text and rest is not None and not rest else carrying_inputs(tensors, rest)
    captured = capture(model, tensors, static)
    key = (id(composite), inputs, text)
    hit = captured.rewrites.get(key)
    if hit is None or hit[0] is not composite:
        start = time.perf_counter()
        gm = captured.module()
        report = RewriteReport(composite.name, type(model).__name__, capture_seconds=captured.seconds,
                               capture_note=captured.note)
        places = token_places(gm) if text else {}
        sources = [f"tensors_{name}" for name in inputs]
        prepare = None
        if hasattr(composite, "position_places"):  # PA-LRP: positional tables become relevance places
            def prepare(fresh: fx.GraphModule, _c: Any = composite, _s: Any = (*sources, *places)) -> dict[str, str]:
                return _c.position_places(fresh, _s)

            places.update(prepare(gm))
        decided = plan(gm, composite, sources, places)
        decided.prepare = prepare
        apply(gm, decided, report)
        report.rewrite_seconds = time.perf_counter() - start
        hit = (composite, Rewritten(gm, report, captured, decided))
        captured.rewrites[key] = hit
    result = hit[1]
    if not result.plan.on_path:
        raise NoRelevancePathError(
            f"{type(model).__name__}: the relevance inputs {list(inputs)} reach none of the outputs "
            f"{list(captured.output_keys)}, so no rule would apply and the gradient would be plain: "
            "name the inputs the outputs depend on with relevance_inputs=[...]")
    if strict and result.report.unhandled:
        raise UnhandledOpError(result.report.unhandled, composite.name)
    return result


def rewritten(model: nn.Module, composite: Composite,
              example_inputs: Mapping[str, Any] | Sequence[Any] | Tensor, strict: bool = False,
              relevance_inputs: Sequence[str] | None = None) -> tuple[fx.GraphModule, RewriteReport]:
    """``Composite.rewrite``: the rewritten ``GraphModule`` and its report."""
    check_model(model)
    tensors, static = split_inputs(model, example_call(model, example_inputs))
    result = rewritten_graph(model, composite, tensors, static, strict, relevance_inputs)
    return result.module, result.report


def wrap_output(captured: CapturedGraph, out: dict[str, Tensor]) -> Any:
    """Give the graph's dict of outputs the type the model returns."""
    cls = captured.output_class
    if cls is None or cls is dict:
        return unflatten_outputs(out)
    if issubclass(cls, Tensor):
        return out["output"]
    if cls is tuple:
        return tuple(out.values())
    return cls(**unflatten_outputs(out))


def _as_tuple(out: Any) -> Any:
    """What ``return_dict=False`` gives: the output's non-None values in field order."""
    if hasattr(out, "to_tuple"):
        return out.to_tuple()
    if isinstance(out, dict):
        return tuple(v for v in out.values() if v is not None)
    return out


_MISSING = object()


@dataclass(eq=False)
class _Active:
    """One entered context on a model."""

    composite: Composite
    strict: bool
    checkpoint: str | None
    relevance_inputs: tuple[str, ...] | None
    thread: int


@dataclass(eq=False)
class _Patch:
    """A model's swapped ``forward``: its ``__dict__`` entry before the first context (or its absence) and the
    contexts now entered on it, in order of entry."""

    original: Any
    installed: Callable[..., Any]
    active: list[_Active] = field(default_factory=list)

    def current(self) -> _Active | None:
        """The innermost context entered by this thread, else the latest entered by any thread."""
        active = list(self.active)
        me = threading.get_ident()
        return next((a for a in reversed(active) if a.thread == me), active[-1] if active else None)


_PATCHES: weakref.WeakKeyDictionary[nn.Module, _Patch] = weakref.WeakKeyDictionary()
_PATCH_LOCK = threading.Lock()


def _untouched(model: nn.Module, original: Any) -> Callable[..., Any]:
    """What ``model.forward`` is outside every context."""
    if original is _MISSING:
        return type(model).forward.__get__(model)
    return original


def _install(model: nn.Module) -> _Patch:
    """The model's patch, installing the dispatching ``forward`` on the first context."""
    patch = _PATCHES.get(model)
    if patch is not None:
        return patch
    ref = weakref.ref(model)

    def forward(*args: Any, **kwargs: Any) -> Any:
        me = ref()
        current = _PATCHES.get(me)
        entry = current.current() if current is not None else None
        if entry is None:  # every context left while this call was on its way
            original = current.original if current is not None else _MISSING
            return _untouched(me, original)(*args, **kwargs)
        return _dispatch(me, current, entry, args, kwargs)

    patch = _Patch(model.__dict__.get("forward", _MISSING), forward)
    model.__dict__["forward"] = forward
    _PATCHES[model] = patch
    return patch


def _dispatch(model: nn.Module, patch: _Patch, entry: _Active, args: tuple, kwargs: dict[str, Any]) -> Any:
    """One call inside a context: the rewritten graph, the untouched forward (a call the graph cannot
    represent, with gradients disabled) or :class:`UnsupportedCallError`."""
    call = bind_call(model, args, kwargs)
    problem = unsupported_argument(model, call)
    if problem is not None:
        if not torch.is_grad_enabled():
            return _untouched(model, patch.original)(*args, **kwargs)
        argument, why, todo = problem
        raise UnsupportedCallError(type(model).__name__, argument,
                                   f"{why} (inside {entry.composite.name}.context, gradients enabled)", todo)
    tensors, static = split_inputs(model, call, checked=True)
    result = rewritten_graph(model, entry.composite, tensors, static, entry.strict, entry.relevance_inputs)
    out = wrap_output(result.captured, result(tensors, entry.checkpoint))
    return _as_tuple(out) if call.get("return_dict") is False else out


@contextlib.contextmanager
def patched_forward(model: nn.Module, composite: Composite, strict: bool = False,
                    checkpoint: str | None = None, relevance_inputs: Sequence[str] | None = None
                    ) -> Iterator[nn.Module]:
    """Route ``model(...)`` through the rewritten graph by shadowing ``forward`` on the instance only.

    Contexts on one model stack: each entered context is recorded on the model's patch and a call uses the
    innermost one entered by the calling thread (else the latest one). Each context removes its own record on
    exit, whatever the order (threads, generators closed out of order); the last one out restores the
    instance's own ``__dict__`` entry (or its absence), also after an exception."""
    check_model(model)
    if checkpoint not in MODES:
        raise ValueError(f"checkpoint={checkpoint!r}: use one of {MODES}")
    names = None if relevance_inputs is None else (
        (relevance_inputs,) if isinstance(relevance_inputs, str) else tuple(relevance_inputs))
    entry = _Active(composite, strict, checkpoint, names, threading.get_ident())
    with _PATCH_LOCK:
        patch = _install(model)
        patch.active.append(entry)
    try:
        yield model
    finally:
        with _PATCH_LOCK:
            patch.active = [a for a in patch.active if a is not entry]
            if not patch.active and _PATCHES.get(model) is patch:
                del _PATCHES[model]
                if patch.original is _MISSING:
                    model.__dict__.pop("forward", None)
                else:
                    model.__dict__["forward"] = patch.original
