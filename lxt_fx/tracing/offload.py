"""Models with accelerate's device hooks (``cpu_offload``, ``disk_offload``, ``dispatch_model``).

An offloaded module keeps its weights on the ``meta`` device; its ``AlignDevicesHook`` loads them from a
weights map (a CPU state dict, or memory-mapped files on disk) onto the execution device before its forward
and puts ``meta`` placeholders back after it, replacing the ``Parameter`` objects each time. Capturing that
forward would bake the loaded tensors of one call into the graph as constants. So lxt-fx treats the hooks as
a way to *store* weights, not as model code:

- capture (:func:`opened`): every offloaded tensor is loaded once onto the execution device and every hook's
  ``forward`` wrapper is set aside, so ``torch.export`` sees a plain module on one device; afterwards the
  model's own objects and wrappers are put back exactly (also after an exception);
- the exported program keeps ``meta`` placeholders in place of the loaded tensors (:func:`placeholders`), so a
  cached capture holds no weights;
- each run (:func:`loaded`) swaps the placeholders in the graph's modules for tensors loaded from the
  weights maps, and swaps them back after the forward; the backward keeps what it saved, as it would in
  the model's own forward with the hooks (a linear layer saves its weight for the input gradient).

The math is unchanged: the graph computes the same ops with the same weight values as the hooked model.

Several execution devices (``from_pretrained(..., device_map="auto")`` over GPUs, or GPUs and the CPU): the
hooks' wrappers are replaced, for the export only, by :func:`moving` wrappers that do what the hooks'
``pre_forward``/``post_forward`` do with activations (inputs to the module's execution device, outputs back
to the input's device where the hook says ``io_same_device``). The export records those moves as
``aten._to_copy`` nodes with a ``device``, so the graph moves activations between devices exactly where the
hooks did; every parameter stays on its own device (nothing is gathered), and the backward pass crosses the
devices as autograd runs the moves backwards. ``_to_copy`` is a relevance identity (it does not change
values), so the rules are untouched. Tensor parallelism (one layer's weights split over devices) is not
accelerate's ``device_map`` and is out of scope.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

_MISSING = object()


@dataclass(frozen=True)
class OffloadedTensor:
    """One tensor a hook keeps off the device: where it lives in the model and how to load it."""

    fqn: str
    module: nn.Module
    name: str
    buffer: bool
    weights_map: Any
    key: str
    device: torch.device

    def load(self) -> Tensor:
        """The tensor's value on the execution device (``weights_map[key]`` of its hook)."""
        return self.weights_map[self.key].to(self.device)


def _align_hooks(module: nn.Module) -> list[Any]:
    hook = module.__dict__.get("_hf_hook")
    if hook is None:
        return []
    hooks = list(getattr(hook, "hooks", (hook,)))  # a SequentialHook holds several
    return [h for h in hooks if hasattr(h, "execution_device") and hasattr(h, "offload")]


def is_dispatched(model: nn.Module) -> bool:
    """Whether any submodule of ``model`` carries an accelerate hook."""
    return any("_hf_hook" in m.__dict__ for m in model.modules())


def _local_tensors(module: nn.Module, hook: Any) -> Iterator[tuple[str, nn.Module, str, bool]]:
    """(name relative to the hooked module, owning module, attribute, is buffer) of what the hook offloads."""
    owners = module.named_modules() if getattr(hook, "place_submodules", False) else [("", module)]
    for prefix, owner in owners:
        stores = [(owner._parameters, False)]
        if getattr(hook, "offload_buffers", False):
            stores.append(({k: v for k, v in owner._buffers.items() if k not in owner._non_persistent_buffers_set},
                           True))
        for store, buffer in stores:
            for name, value in store.items():
                if value is not None:
                    yield (f"{prefix}.{name}" if prefix else name), owner, name, buffer


def offloaded_tensors(model: nn.Module) -> list[OffloadedTensor]:
    """Every tensor an accelerate hook of ``model`` keeps off the device (empty for a plain model), each with
    its own hook's execution device."""
    found: list[OffloadedTensor] = []
    for path, module in model.named_modules():
        for hook in _align_hooks(module):
            if not hook.offload:
                continue
            device = torch.device(hook.execution_device)
            for local, owner, name, buffer in _local_tensors(module, hook):
                fqn = f"{path}.{local}" if path else local
                found.append(OffloadedTensor(fqn, owner, name, buffer, hook.weights_map, local, device))
    return found


def execution_devices(model: nn.Module) -> dict[str, torch.device]:
    """The execution device of every hooked submodule of ``model`` by its path ("" for the model itself);
    empty for a model without accelerate hooks. More than one distinct value: the model runs over several
    devices (e.g. ``device_map="auto"``)."""
    found: dict[str, torch.device] = {}
    for path, module in model.named_modules():
        for hook in _align_hooks(module):
            if hook.execution_device is not None:
                found.setdefault(path, torch.device(hook.execution_device))
    return found


def device_map_key(model: nn.Module) -> str:
    """What the capture depends on in the dispatch: every hooked submodule's execution device and every
    resident parameter's and buffer's device, as a stable string (empty for a model on one device)."""
    hooks = execution_devices(model)
    if len({str(d) for d in hooks.values()}) < 2:
        return ""
    tensors = [(n, str(t.device)) for n, t in (*model.named_parameters(), *model.named_buffers())]
    return repr((sorted((k, str(v)) for k, v in hooks.items()), tensors))


def moving(forward: Callable[..., Any], device: torch.device, io_same_device: bool,
           skip_keys: Any = None) -> Callable[..., Any]:
    """``forward`` with the activation moves of an accelerate ``AlignDevicesHook``: tensor arguments (nested in
    tuples, lists, dicts and model outputs, as accelerate's ``send_to_device`` walks them) go to ``device``
    first; with ``io_same_device`` the outputs go back to the device of the first input tensor."""
    from accelerate.utils import find_device, send_to_device  # present wherever a model carries its hooks

    if device.type == "cpu":  # eager torch keeps no CPU index (``cpu:0`` tensors are ``cpu``); fake tensors would
        device = torch.device("cpu")

    def run(*args: Any, **kwargs: Any) -> Any:
        source = find_device([args, kwargs]) if io_same_device else None
        args = send_to_device(args, device)
        kwargs = send_to_device(kwargs, device, skip_keys=skip_keys)
        output = forward(*args, **kwargs)
        return send_to_device(output, source, skip_keys=skip_keys) if source is not None else output

    return run


def execution_device(model: nn.Module) -> torch.device | None:
    """The device the hooks of ``model`` execute on (None when it has none)."""
    for module in model.modules():
        for hook in _align_hooks(module):
            if hook.execution_device is not None:
                return torch.device(hook.execution_device)
    return None


def _set(owner: nn.Module, name: str, buffer: bool, value: Any) -> None:
    (owner._buffers if buffer else owner._parameters)[name] = value


def _as_stored(value: Tensor, like: Tensor | None, buffer: bool) -> Tensor:
    if buffer or not isinstance(like, nn.Parameter):
        return value
    return nn.Parameter(value, requires_grad=like.requires_grad)


@contextlib.contextmanager
def opened(model: nn.Module) -> Iterator[list[OffloadedTensor]]:
    """Inside: every offloaded tensor of ``model`` loaded on the execution device and every hook's ``forward``
    wrapper set aside (the module's own forward runs). On exit the model's own tensor objects and wrappers
    are restored exactly, also after an exception. A model without hooks passes through untouched."""
    if not is_dispatched(model):
        yield []
        return
    tensors = offloaded_tensors(model)
    several = len({str(d) for d in execution_devices(model).values()}) > 1
    saved_tensors = [(t, (t.module._buffers if t.buffer else t.module._parameters)[t.name]) for t in tensors]
    saved_forwards = [(m, m.__dict__.get("forward", _MISSING)) for m in model.modules() if "_hf_hook" in m.__dict__]
    try:
        for t, old in saved_tensors:
            _set(t.module, t.name, t.buffer, _as_stored(t.load(), old, t.buffer))
        for module, _ in saved_forwards:
            own = module.__dict__.get("_old_forward")
            if own is None or getattr(own, "__self__", None) is module \
                    and getattr(own, "__func__", None) is type(module).forward:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = own
            hooks = [h for h in _align_hooks(module) if h.execution_device is not None]
            if several and hooks:  # the hooks' activation moves, recorded by the export as device copies
                module.__dict__["forward"] = moving(module.forward, torch.device(hooks[0].execution_device),
                                                    bool(getattr(hooks[0], "io_same_device", False)),
                                                    getattr(hooks[0], "skip_keys", None))
        yield tensors
    finally:
        for t, old in saved_tensors:
            _set(t.module, t.name, t.buffer, old)
        for module, forward in saved_forwards:
            if forward is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = forward


@dataclass
class Placeholders:
    """The ``meta`` stand-ins a captured program keeps for offloaded tensors, by object id, with their loaders."""

    by_id: dict[int, OffloadedTensor] = field(default_factory=dict)
    keep: list[Tensor] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.by_id)


def placeholders(program: torch.export.ExportedProgram, tensors: list[OffloadedTensor], prefix: str = ""
                 ) -> Placeholders:
    """Replace the loaded values of ``tensors`` in ``program``'s state dict (named ``prefix + fqn`` there) by
    ``meta`` placeholders, so a cached capture holds no weights, and return them with their loaders."""
    result = Placeholders()
    for t in tensors:
        value = program.state_dict.get(prefix + t.fqn)
        if value is None:  # not used by the graph (e.g. a tied weight exported under its other name)
            continue
        meta = torch.empty_like(value, device="meta")
        meta = nn.Parameter(meta, requires_grad=value.requires_grad) if isinstance(value, nn.Parameter) else meta
        program.state_dict[prefix + t.fqn] = meta
        result.by_id[id(meta)] = t
        result.keep.append(meta)
    return result


@contextlib.contextmanager
def loaded(graph: nn.Module, stand_ins: Placeholders) -> Iterator[None]:
    """Inside: every placeholder held by ``graph`` (or any of its submodules) swapped for its tensor loaded on the
    execution device; outside, the placeholders again (also after an exception)."""
    if not stand_ins:
        yield
        return
    swapped: list[tuple[nn.Module, str, bool, Tensor]] = []
    values: dict[int, Tensor] = {}  # one load per placeholder, however many submodules hold it
    try:
        for module in graph.modules():
            for store, buffer in ((module._parameters, False), (module._buffers, True)):
                for name, value in list(store.items()):
                    t = stand_ins.by_id.get(id(value)) if value is not None else None
                    if t is not None:
                        swapped.append((module, name, buffer, value))
                        if id(value) not in values:
                            values[id(value)] = _as_stored(t.load(), value, buffer)
                        _set(module, name, buffer, values[id(value)])
        yield
    finally:
        for module, name, buffer, value in swapped:
            _set(module, name, buffer, value)
