"""Capture a model into an fx ``GraphModule`` with ``torch.export`` (non-strict), once per call signature.

The captured program starts from ``inputs_embeds`` (or any float input the caller names), so relevance
can be read at the input; batch and sequence dimensions are dynamic, so one capture serves every length
and batch size. Captures are cached per (model instance, call signature) in a weak map: nothing is stored
on the model and nothing global in torch or transformers changes.

The graph shares the model's ``Parameter`` and buffer objects, so in-place changes of their values
(``weight.mul_``, ``load_state_dict``, ``param.data = …``) are seen by a cached graph as they are. A changed
module tree is not: every use compares the model's :func:`fingerprint` (each submodule's identity and class,
each parameter and buffer object with its name; dtype and device are in the :class:`Signature`) with the one
taken at capture, and a mismatch drops every capture of that model (the next call captures again). Other
attribute changes (a plain float attribute of a module, a config field other than the attention
implementation) are not detected.

Across processes, a capture is read from the disk cache (:mod:`.disk_cache`, ``$LXT_FX_CACHE``) when one
was stored for the same key, and stored there after every export: the graph only, bound to the live
model's parameters on load.
"""

from __future__ import annotations

import functools
import inspect
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from .blocks import Unstampable, find_stacks
from .disk_cache import cache_dir, cache_key
from .disk_cache import load as load_stored
from .disk_cache import store as store_captured
from .errors import CaptureError, LXTError, capture_hint, failing_location
from .guards import InputSpec, spec_of
from .modes import eval_semantics
from .no_grad import reroute_passthrough
from .offload import Placeholders, device_map_key, opened, placeholders
from .quantized import dequantizing
from .spliced import shape_keyed
from .stamp import canonical, shortened, stamp

# Kwargs whose second dimension is the token sequence.
SEQUENCE_INPUTS = frozenset({"input_ids", "inputs_embeds", "attention_mask", "position_ids", "token_type_ids",
                             "decoder_input_ids", "decoder_inputs_embeds", "decoder_attention_mask", "labels"})


# Separates an output's name from an element index when a tuple output (hidden_states) is flattened.
TUPLE_SEP = "."


def unflatten_outputs(out: Mapping[str, Tensor]) -> dict[str, Any]:
    """The graph's flat outputs with ``name.i`` entries regrouped into tuples ``name``, in order."""
    grouped: dict[str, Any] = {}
    for key, value in out.items():
        name, sep, index = key.rpartition(TUPLE_SEP)
        if sep and index.isdigit():
            grouped.setdefault(name, []).append(value)
        else:
            grouped[key] = value
    return {k: tuple(v) if isinstance(v, list) else v for k, v in grouped.items()}


class _Entry(nn.Module):
    """What gets exported: the model called with keyword tensors, returning a dict of its tensor outputs."""

    def __init__(self, model: nn.Module, static: Mapping[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.static = dict(static)
        # export snapshots and restores module attributes, so the output type is kept out of them
        seen: list[type] = []
        self._record = seen.append
        self.output_class = lambda: seen[-1] if seen else None

    def forward(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        if "forward" in self.model.__dict__:  # inside a context: trace the class's own forward
            out = type(self.model).forward(self.model, **tensors, **self.static)
        else:
            out = self.model(**tensors, **self.static)
        self._record(type(out))
        if isinstance(out, Tensor):
            return {"output": out}
        if isinstance(out, tuple) and not hasattr(out, "keys"):
            return {f"output_{i}": o for i, o in enumerate(out) if isinstance(o, Tensor)}
        flat: dict[str, Tensor] = {}
        for k, v in out.items():
            if isinstance(v, Tensor):
                flat[k] = v
            elif isinstance(v, (tuple, list)) and v and all(isinstance(t, Tensor) for t in v):
                # hidden_states, attentions: one output per element, regrouped by unflatten_outputs
                flat.update({f"{k}{TUPLE_SEP}{i}": t for i, t in enumerate(v)})
        return flat


class InputConstraintError(LXTError):
    """The inputs break a constraint the export fixed (a dtype, a fixed size, a size range, two sizes that must be
    equal) even in a capture made for these very inputs."""


@dataclass
class Signature:
    """What a capture depends on besides the weights: tensor kwargs (name, dtype, rank), static kwargs."""

    tensors: tuple[tuple[str, torch.dtype, int], ...]
    static: tuple[tuple[str, str], ...]
    training: bool
    attn_implementation: str | None
    device: str
    dtype: torch.dtype | None = None  # of the first parameter: model.to(dtype) keeps the Parameter objects
    # over several execution devices: where each hooked module runs and each tensor lives (the device moves
    # are in the graph); empty on one device
    devices: str = ""

    def key(self) -> tuple:
        """The hashable tuple a capture is cached under: everything here that changes the graph."""
        return (self.tensors, self.static, self.training, self.attn_implementation, self.device, self.dtype,
                self.devices)


@dataclass
class CapturedGraph:
    """One capture of one model for one call signature: an export (``program``), a graph stamped from the export
    of a short model (``program`` that short export, ``build`` the full graph, see :mod:`.stamp`) or a graph read
    from the disk cache (``program`` None, ``source`` ``"disk"``); ``seconds``: how long the export (with the
    stamping) or the read took. ``route``: ``"stamped"`` or ``"full"`` (a full export, or a graph read from
    disk); ``note``: how it was made, and for a full export why it was not stamped."""

    program: torch.export.ExportedProgram | None
    signature: Signature
    output_class: type | None
    output_keys: tuple[str, ...]
    seconds: float
    rewrites: dict[Any, Any] = field(default_factory=dict)
    source: str = "export"
    build: Callable[[], torch.fx.GraphModule] | None = None
    # meta stand-ins of weights an accelerate hook keeps off the device (see lxt_fx.tracing.offload)
    offloaded: Placeholders = field(default_factory=Placeholders)
    # the input constraints export specialised the graph to (checked on every use, also from disk)
    guards: InputSpec | None = None
    route: str = "full"
    note: str = ""

    def admits(self, tensors: Mapping[str, Tensor]) -> str | None:
        """None when ``tensors`` meet the capture's input constraints, else the first broken one."""
        return None if self.guards is None else self.guards.violation(tensors)

    def module(self) -> torch.fx.GraphModule:
        """A fresh, unrewritten ``GraphModule`` sharing the model's parameters, its nodes named canonically
        (:func:`~.stamp.canonical`): the same graph whether exported in full, stamped or read from disk. A
        no-grad region's output that is one of its inputs itself is read from that input
        (:func:`~.no_grad.reroute_passthrough`)."""
        if self.build is not None:
            gm = self.build()
        else:
            assert self.program is not None
            gm = canonical(self.program.module())
        reroute_passthrough(gm)
        return gm


def fingerprint(model: nn.Module) -> tuple:
    """The module tree of ``model`` as a flat tuple: each submodule's id and class, and each parameter's and
    buffer's name and object id (a depth-first walk over ``_modules``; shared modules appear once per place).

    Equal fingerprints (while the objects are kept alive, as a capture does) mean the same tree of the same
    objects; values changed in place, ``param.data = …`` and ``model.to(…)`` keep it (the dtype and device
    of the parameters are part of the capture's :class:`Signature`). A ``meta`` tensor counts by name, not
    object: accelerate's offload hooks put a new ``meta`` placeholder in place after every forward. Its cost, about 1.7× a bare
    ``for m in model.modules(): pass`` loop, is paid on every capture lookup."""
    parts: list[Any] = []
    extend = parts.extend
    stack: list[Any] = [model]
    pop, push = stack.pop, stack.extend
    while stack:
        mod = pop()
        if mod is None:
            continue
        d = mod.__dict__
        extend((id(mod), type(mod)))
        for store in (d["_parameters"], d["_buffers"]):
            if store:
                extend(store)
                extend(map(_identity, store.values()))
        push(d["_modules"].values())
    return tuple(parts)


def _identity(t: Tensor | None) -> Any:
    return "meta" if t is not None and t.is_meta else id(t)


@dataclass(eq=False)
class _ModelCaptures:
    """A model's captures and the tree they were made from; ``keep`` holds the tree's objects so that the
    ids in ``fingerprint`` cannot be reused by new objects while it is compared."""

    fingerprint: tuple
    keep: list[Any]
    graphs: dict[tuple, CapturedGraph] = field(default_factory=dict)


def _keep_alive(model: nn.Module) -> list[Any]:
    mods = list(model.modules())[1:]  # not the model itself: it keys the weak map
    return mods + [t for m in model.modules() for t in (*m._parameters.values(), *m._buffers.values())]


_CAPTURES: weakref.WeakKeyDictionary[nn.Module, _ModelCaptures] = weakref.WeakKeyDictionary()
_COUNTS: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


def capture_count(model: nn.Module) -> int:
    """How many times ``model`` has been exported by lxt-fx in this process."""
    return _COUNTS.get(model, 0)


def accepts_kwarg(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` takes a keyword argument ``name``."""
    params = inspect.signature(type(model).forward).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def signature_of(model: nn.Module, tensors: Mapping[str, Tensor], static: Mapping[str, Any]) -> Signature:
    config = getattr(model, "config", None)
    param = next(model.parameters(), None)
    # a vision-language model's graph is fixed by its image count and size: key its capture by every shape but
    # the text length (the graph takes any, see text_dims)
    fixed = shape_keyed(model, tensors)
    return Signature(
        tensors=tuple(sorted((k, v.dtype, v.dim(), *((_without_text_length(k, v),) if fixed else ()))
                             for k, v in tensors.items())),
        static=tuple(sorted((k, repr(v)) for k, v in static.items())),
        training=model.training,
        attn_implementation=getattr(config, "_attn_implementation", None),
        device=str(param.device) if param is not None else "cpu",
        dtype=param.dtype if param is not None else None,
        devices=device_map_key(model),
    )


def text_dim(name: str, t: Tensor) -> int | None:
    """The dimension of input ``name`` that is the text length: dim 1 of a sequence input, the last dim of
    M-RoPE ``position_ids`` ``[3, batch, seq]``; None for any other input (pixels, grids)."""
    if name not in SEQUENCE_INPUTS or t.dim() < 2:
        return None
    return 2 if name == "position_ids" and t.dim() == 3 else 1


def _without_text_length(name: str, t: Tensor) -> tuple[int, ...]:
    dim = text_dim(name, t)
    return tuple(-1 if i == dim else s for i, s in enumerate(t.shape))


def _example(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Example inputs with batch ≥ 2 and sequence ≥ 2, so export keeps those dims dynamic."""
    out = {}
    for name, t in tensors.items():
        t = t.detach()
        if t.dim() >= 1 and t.size(0) < 2:
            t = torch.cat([t] * 2, dim=0)
        if name in SEQUENCE_INPUTS and t.dim() >= 2 and t.size(1) < 2:
            t = torch.cat([t] * 2, dim=1)
        out[name] = t
    return out


def _dynamic_shapes(tensors: Mapping[str, Tensor], auto: bool) -> dict[str, dict[int, Any]]:
    batch = torch.export.Dim.AUTO if auto else torch.export.Dim("batch")
    seq = torch.export.Dim.AUTO if auto else torch.export.Dim("seq")
    decoder_seq = torch.export.Dim.AUTO if auto else torch.export.Dim("decoder_seq")
    shapes: dict[str, dict[int, Any]] = {}
    for name, t in tensors.items():
        dims: dict[int, Any] = {0: batch} if t.dim() >= 1 else {}
        if name in SEQUENCE_INPUTS and t.dim() >= 2:
            decoder = name.startswith("decoder_") or (name == "labels" and any(k.startswith("decoder_")
                                                                                for k in tensors))
            dims[1] = decoder_seq if decoder else seq
        shapes[name] = dims
    return shapes


def capture(model: nn.Module, tensors: Mapping[str, Tensor], static: Mapping[str, Any] | None = None,
            *, stamp: bool = True) -> CapturedGraph:
    """:func:`_capture` in eval semantics: a model in training mode is captured as after ``model.eval()``
    (a :class:`~lxt_fx.tracing.modes.TrainingModeWarning` says so), its modes restored afterwards."""
    with eval_semantics(model, "captured"):
        return _capture(model, tensors, static, stamp=stamp)


def _capture(model: nn.Module, tensors: Mapping[str, Tensor], static: Mapping[str, Any] | None = None,
             *, stamp: bool = True) -> CapturedGraph:
    """Return the cached capture of ``model`` for these inputs, exporting it on first use.

    ``tensors``: the tensor keyword arguments (e.g. ``inputs_embeds``, ``attention_mask``);
    ``static``: other keyword arguments baked into the graph (``use_cache=False`` is added when the model
    takes it); ``stamp``: trace each kind of repeated block once (:mod:`.stamp`; False: export every block,
    the graph is the same). Raises :class:`CaptureError` naming the model class and the first failing
    source line.
    """
    static = dict(static or {})
    if accepts_kwarg(model, "use_cache"):
        static.setdefault("use_cache", False)
    sig = signature_of(model, tensors, static)
    tree = fingerprint(model)
    per_model = _CAPTURES.get(model)
    if per_model is None or per_model.fingerprint != tree:  # first capture, or the module tree changed
        per_model = _ModelCaptures(tree, _keep_alive(model))
        _CAPTURES[model] = per_model
    hit = per_model.graphs.get(sig.key())
    if hit is not None and hit.admits(tensors) is None:
        return hit
    # no capture yet, or one whose input constraints these inputs break (export specialised a size): capture
    # for these inputs, from disk when the stored graph admits them, else by a fresh export
    # export and its probe need tensors that track versions; offloaded weights are loaded for the export only,
    # bitsandbytes layers are dequantized in the graph (lxt_fx.tracing.quantized)
    with torch.inference_mode(False), opened(model) as offloaded, dequantizing(model) as quantized:
        # An offloaded model's capture holds meta stand-ins matched by object, a bitsandbytes one holds the
        # quantization scales as graph constants: both stay in this process.
        # A vision-language capture holds NumPy constants the graph codec does not store: it stays too.
        use_disk = (not offloaded and not quantized and cache_dir() is not None
                    and not shape_keyed(model, tensors))
        key = cache_key(model, repr(sig.key())) if use_disk else None
        if key is not None:
            stored = load_stored(_Entry(model, static), key)
            if stored is not None:
                captured = CapturedGraph(None, sig, stored.output_class, stored.output_keys, stored.seconds,
                                         source="disk", build=stored.build, guards=stored.guards,
                                         note=f"read from the disk cache ({stored.path.name})")
                if captured.admits(tensors) is None:
                    per_model.graphs[sig.key()] = captured
                    return captured
        full = ("weights offloaded by accelerate" if offloaded else "quantized layers" if quantized
                else "blocks on several execution devices" if sig.devices
                else False if stamp else "stamping turned off (stamp=False)")
        captured = _export(model, tensors, static, sig, per_model, full)
        if key is not None:
            store_captured(_Entry(model, static), key, captured.module(), captured.output_class,
                             captured.output_keys, captured.guards)
    captured.offloaded = placeholders(captured.program, offloaded, prefix="model.")  # _Entry holds it as .model
    broken = captured.admits(tensors)
    if broken is not None:
        raise InputConstraintError(
            f"{type(model).__name__}: {broken}, even in a capture made for these inputs (the export fixed it from "
            "its example, which repeats a batch or sequence of 1 to 2). Pass inputs of the shape and dtype the "
            "model expects, e.g. a batch of at least 2")
    return captured


def _export_dynamic(entry: _Entry, example: dict[str, Tensor]) -> torch.export.ExportedProgram:
    """Export with dynamic batch and sequence dims (named), else with ``Dim.AUTO`` where export specialises."""
    try:
        return torch.export.export(entry, (example,), dynamic_shapes=(_dynamic_shapes(example, False),),
                                   strict=False)
    except torch._dynamo.exc.UserError as exc:
        if "Constraints violated" not in str(exc) and "specialized" not in str(exc):
            raise
        return torch.export.export(entry, (example,), dynamic_shapes=(_dynamic_shapes(example, True),),
                                   strict=False)


def _export_program(entry: _Entry, example: dict[str, Tensor], fixed: bool) -> torch.export.ExportedProgram:
    """The export of ``entry`` for ``example``: dynamic batch and sequence, or for a vision-language call
    (``fixed``) every size fixed but the text length (every size fixed where export cannot keep that one)."""
    if not fixed:
        return _export_dynamic(entry, example)
    seq = torch.export.Dim("seq")
    shapes = {k: {d: seq} if (d := text_dim(k, v)) is not None else {} for k, v in example.items()}
    try:
        return torch.export.export(entry, (example,), dynamic_shapes=(shapes,), strict=False)
    except torch._dynamo.exc.UserError:
        return torch.export.export(entry, (example,), strict=False)


def _probe(example: Mapping[str, Tensor], fixed: bool, guards: InputSpec) -> dict[str, Tensor]:
    """Inputs cut from the export's example for a quick run of the graph: batch 1 and at most
    :data:`PROBE_TOKENS` tokens where the capture admits that, else batch 1 (all of it for a fixed-shape
    capture). Copies, since a graph may write its inputs in place (CTRL scales inputs_embeds with *=)."""
    if fixed:
        return {k: v.clone() for k, v in example.items()}
    whole = {k: v[:1] for k, v in example.items()}
    short = {k: v[:, :PROBE_TOKENS] if k in SEQUENCE_INPUTS and v.dim() >= 2 else v for k, v in whole.items()}
    chosen = short if guards.violation(short) is None else whole
    return {k: v.clone() for k, v in chosen.items()}


# How many tokens the quick runs of a fresh capture take (output names, the stamped graph's check).
PROBE_TOKENS = 8
# Where the stamped graph and the model itself may differ on the check's inputs (float rounding only).
STAMP_RTOL = 1e-4


def _stamped(model: nn.Module, entry: _Entry, example: dict[str, Tensor], fixed: bool
             ) -> tuple[torch.export.ExportedProgram, fx.GraphModule, str]:
    """(the short export, the stamped full graph, a note) — see :mod:`.stamp`. Raises :class:`Unstampable`
    where the model does not fit, the short export fails, or the stamped graph's outputs differ from the
    model's own on a short probe."""
    stacks = find_stacks(model)
    try:
        with shortened(model, stacks):
            short = _export_program(entry, example, fixed)
    except Exception as exc:  # noqa: BLE001 - any failure of the short capture means: export in full
        raise Unstampable(f"the capture of the first blocks failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from exc
    try:
        gm = stamp(short.module(), stacks, entry, model)
        probe = _probe(example, fixed, spec_of(short))
        with torch.no_grad():
            want = entry({k: v.clone() for k, v in probe.items()})
            got = gm(probe)
    except Unstampable:
        raise
    except Exception as exc:  # noqa: BLE001 - a graph the stamping does not understand: export in full
        raise Unstampable(f"stamping failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
                          ) from exc
    if set(want) != set(got):
        raise Unstampable(f"the stamped graph returns {sorted(got)}, the model {sorted(want)}")
    for k, w in want.items():
        g = got[k]
        if g.shape != w.shape or g.dtype != w.dtype or not torch.allclose(
                g, w, rtol=STAMP_RTOL, atol=STAMP_RTOL * float(w.abs().max()) if w.numel() else 0.0):
            raise Unstampable(f"the stamped graph's {k} differs from the model's own on a probe")
    summary = ", ".join(f"{s.path}: {s.size} blocks from {s.prefix} traced ({len(set(s.kinds))} kind"
                        f"{'s' if len(set(s.kinds)) > 1 else ''})" for s in stacks)
    return short, gm, f"stamped: {summary}"


def _export(model: nn.Module, tensors: Mapping[str, Tensor], static: dict[str, Any], sig: Signature,
            per_model: _ModelCaptures, full: bool | str = False) -> CapturedGraph:
    """Export ``model`` for these inputs: stamped from a short export where it fits (:mod:`.stamp`), else in
    full. ``full``: export in full (a truthy string: the reason, kept in the note)."""
    entry = _Entry(model, static)
    fixed = shape_keyed(model, tensors)  # exported for these exact shapes (see .spliced)
    example = {k: tensors[k].clone() if tensors[k].is_inference() else tensors[k] for k in sorted(tensors)}
    example = {k: v.detach() for k, v in example.items()} if fixed else _example(example)
    start = time.perf_counter()
    built: tuple[torch.export.ExportedProgram, fx.GraphModule, str] | None = None
    note = "full export: " + (full if isinstance(full, str) else "stamping not asked for") if full else ""
    if not full:
        try:
            built = _stamped(model, entry, example, fixed)
        except Unstampable as exc:
            note = f"full export: {exc}"
    try:
        program = built[0] if built is not None else _export_program(entry, example, fixed)
    except CaptureError:
        raise
    except Exception as exc:  # noqa: BLE001 - every export failure becomes one named error
        location = failing_location(exc)
        raise CaptureError(type(model).__name__, location, exc, capture_hint(exc, model, location)) from exc
    build = None
    if built is not None:
        template = built[1]
        note = built[2]
        build = functools.partial(canonical, template)
    seconds = time.perf_counter() - start
    captured = CapturedGraph(program, sig, entry.output_class(), (), seconds, guards=spec_of(program), build=build,
                             route="stamped" if built is not None else "full", note=note)
    with torch.no_grad():
        keys = tuple(captured.module()(_probe(example, fixed, captured.guards)).keys())
    captured.output_keys = keys
    per_model.graphs[sig.key()] = captured
    _COUNTS[model] = _COUNTS.get(model, 0) + 1
    return captured
