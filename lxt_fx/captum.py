"""``LayerAttnLRP``: AttnLRP with Captum's conventions (``pip install lxt-fx[captum]``).

AttnLRP in its Gradient×Input form is a layer Gradient×Activation whose backward runs through the rewritten
graph: the relevance at a layer's output ``a`` for the score ``s`` is ``R = a ⊙ ∂̃s/∂a``, where ``∂̃`` is the
gradient with every LRP rule substituted. ``LayerAttnLRP.attribute`` therefore runs ``forward_func`` inside
``composite.context(model)`` and multiplies the layer's output (or input) by its modified gradient: shape
and meaning as Captum's ``LayerGradientXActivation`` — ``[batch, seq, hidden]`` at the input embeddings,
summed over ``hidden`` it is ``explain``'s relevance per token.

Where ``captum`` is installed the class subclasses ``captum.attr.LayerGradientXActivation`` (so
``captum.attr.LLMGradientAttribution`` accepts it, and Captum's visualizations take its output); without
``captum`` it is a plain class with the same ``attribute`` signature. Inside the rewritten graph the model's
own layers are graph nodes, not module calls: the layer is the input embeddings (or embeddings given as
inputs); latent relevance inside the model comes from ``explain(..., capture=[...])``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .composites.composite import Composite
from .composites.registry import resolve_composite
from .session import check_model, input_embeddings
from .tracing.errors import LXTError

try:  # Captum's layer Gradient×Activation: what AttnLRP's GxI form is, with modified gradients
    from captum.attr import LayerGradientXActivation as _CaptumBase

    HAVE_CAPTUM = True
except ImportError:  # pragma: no cover - depends on the environment
    _CaptumBase = object
    HAVE_CAPTUM = False


class CaptumInputError(LXTError, ValueError):
    """Inputs, targets or a layer ``LayerAttnLRP.attribute`` cannot use, with what to pass instead."""


class LastTokenLogits(nn.Module):
    """The default ``forward_func``: ``model(input_ids | inputs_embeds, attention_mask).logits`` at the last
    real position of each row, ``[batch, vocab]`` (so ``target`` is a token id, as for a classifier)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        key = "inputs_embeds" if inputs.is_floating_point() else "input_ids"
        mask = attention_mask if attention_mask is not None else torch.ones(inputs.shape[:2], dtype=torch.long,
                                                                            device=inputs.device)
        logits = self.model(**{key: inputs}, attention_mask=mask).logits
        last = mask.shape[1] - 1 - mask.flip(1).to(torch.long).argmax(1)
        return logits[torch.arange(logits.shape[0], device=logits.device), last]


class LayerAttnLRP(_CaptumBase):  # type: ignore[misc,valid-type]
    """AttnLRP as a Captum layer attribution method.

    ``model``: the model whose forward is rewritten (the context is entered on it for each call);
    ``layer``: where relevance is read, default the input embeddings; ``forward_func``: Captum's forward
    function, called as ``forward_func(*inputs, *additional_forward_args)``, default the model itself (as
    ``LLMGradientAttribution`` expects; a model output with 3-D ``logits`` gives the logits at the last real
    position, ``[batch, vocab]``, so ``target`` is a token id); ``composite``: default the one registered
    for the model's type."""

    def __init__(self, model: nn.Module, layer: nn.Module | None = None, forward_func: Callable[..., Any] | None = None,
                 composite: Composite | str | None = None) -> None:
        self.model = check_model(model)
        self.composite = resolve_composite(composite, self.model)
        layer = layer if layer is not None else input_embeddings(self.model)
        forward_func = forward_func if forward_func is not None else self.model
        if HAVE_CAPTUM:
            super().__init__(forward_func, layer, multiply_by_inputs=True)
        else:  # pragma: no cover - depends on the environment
            self.forward_func, self.layer = forward_func, layer

    @property
    def multiplies_by_inputs(self) -> bool:
        """Always true: relevance is the layer's activation times its (modified) gradient."""
        return True

    def has_convergence_delta(self) -> bool:
        """No convergence delta is returned (``lxt_fx.check`` reports conservation)."""
        return False

    def attribute(self, inputs: Tensor | tuple[Tensor, ...], target: Any = None,
                  additional_forward_args: Any = None, attribute_to_layer_input: bool = False,
                  **unused: Any) -> Tensor:
        """Relevance at the layer's output (``attribute_to_layer_input=True``: its input) for the output of
        ``forward_func(*inputs, *additional_forward_args)`` selected by ``target``: ``None`` (an output of
        one value per row, or else the argmax of each row), an int (that column), a list / 1-D tensor (one
        column per row) or a tuple (indices into the trailing dimensions). Inputs are ids or, for the
        default layer, embeddings ``[batch, seq, hidden]`` (relevance is then read at them). Shape: the
        layer's output, e.g. ``[batch, seq, hidden]``; summed over the last dimension it is ``explain``'s
        relevance per token."""
        if unused.get("grad_kwargs"):
            raise CaptumInputError("grad_kwargs cannot be used with LayerAttnLRP: the backward is the rewritten "
                                   "graph's own; drop grad_kwargs")
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        if not inputs or not all(isinstance(t, Tensor) for t in inputs):
            raise CaptumInputError("inputs must be a tensor (ids [batch, seq] or embeddings [batch, seq, hidden]) "
                                   "or a tuple of tensors")
        extra = () if additional_forward_args is None else (
            tuple(additional_forward_args) if isinstance(additional_forward_args, (tuple, list))
            else (additional_forward_args,))
        read_inputs = inputs[0].is_floating_point() and self.layer is input_embeddings(self.model)
        captured: list[Tensor] = []
        with torch.enable_grad():
            if read_inputs:  # embeddings given: the embedding layer is never called; read at the inputs
                leaf = inputs[0].detach().requires_grad_(True)
                captured.append(leaf)
                inputs = (leaf, *inputs[1:])
                handle = None
            elif attribute_to_layer_input:
                handle = self.layer.register_forward_pre_hook(_pre_hook(captured))
            else:
                handle = self.layer.register_forward_hook(_hook(captured))
            try:
                with self.composite.context(self.model):
                    if read_inputs and self.forward_func is self.model:  # the model takes embeddings by name
                        output = self.model(None, *extra, inputs_embeds=inputs[0])
                    else:
                        output = self.forward_func(*inputs, *extra)
            finally:
                if handle is not None:
                    handle.remove()
            if not captured:
                raise CaptumInputError(
                    f"the layer {type(self.layer).__name__} never ran as a module: inside the rewritten graph the "
                    "model's layers are graph nodes, not module calls, so LayerAttnLRP reads relevance at the input "
                    "embeddings (layer=None) or at embeddings passed as inputs; for relevance inside the model use "
                    "lxt_fx.explain(..., capture=['model.layers.3', ...])")
            if len(captured) > 1:
                raise CaptumInputError(f"the layer {type(self.layer).__name__} ran {len(captured)} times in one "
                                       "forward (it must run exactly once): pick a layer the forward calls once")
            scores = select(_last_logits(output, inputs[0], extra), target)
            (grad,) = torch.autograd.grad(scores.sum(), captured[0], allow_unused=True)
        activation = captured[0].detach()
        return torch.zeros_like(activation) if grad is None else activation * grad


def _hook(store: list[Tensor]) -> Callable[..., Tensor]:
    def hook(module: nn.Module, args: Any, out: Tensor) -> Tensor:
        if not isinstance(out, Tensor):
            raise CaptumInputError(f"{type(module).__name__} returns {type(out).__name__}, not a tensor: pick a "
                                   "layer whose output is one tensor")
        leaf = out.detach().requires_grad_(True)  # a leaf, also when the weights are frozen
        store.append(leaf)
        return leaf

    return hook


def _pre_hook(store: list[Tensor]) -> Callable[..., tuple[Any, ...]]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        if not args or not isinstance(args[0], Tensor) or not args[0].is_floating_point():
            raise CaptumInputError(f"the input of {type(module).__name__} is not a float tensor (token ids carry "
                                   "no relevance): use attribute_to_layer_input=False or another layer")
        leaf = args[0].detach().requires_grad_(True)
        store.append(leaf)
        return (leaf, *args[1:])

    return hook


def _last_logits(output: Any, inputs: Tensor, extra: tuple[Any, ...]) -> Tensor:
    """A tensor output as it is; a model output's 3-D ``logits`` at the last real position of each row (the
    mask is the first additional forward argument when it is an integer tensor ``[batch, seq]``)."""
    if isinstance(output, Tensor):
        return output
    logits = output.get("logits") if hasattr(output, "get") else getattr(output, "logits", None)
    if not isinstance(logits, Tensor):
        raise CaptumInputError(f"forward_func returned {type(output).__name__} without logits: return a tensor "
                               "[batch, ...] from forward_func")
    if logits.dim() != 3:
        return logits
    mask = extra[0] if extra and isinstance(extra[0], Tensor) and not extra[0].is_floating_point() \
        and tuple(extra[0].shape) == tuple(inputs.shape[:2]) else None
    if mask is None:
        return logits[:, -1]
    last = mask.shape[1] - 1 - mask.flip(1).to(torch.long).argmax(1)
    return logits[torch.arange(logits.shape[0], device=logits.device), last.to(logits.device)]


def select(output: Tensor, target: Any) -> Tensor:
    """One score per row of ``output`` by Captum's ``target`` conventions (see ``LayerAttnLRP.attribute``)."""
    batch = output.shape[0]
    if target is None:
        if output.numel() == batch:
            return output.reshape(batch)
        if output.dim() != 2:
            raise CaptumInputError(f"target=None with an output of shape {tuple(output.shape)}: give a target")
        return output.gather(1, output.detach().argmax(1, keepdim=True))[:, 0]
    if isinstance(target, int) or (isinstance(target, Tensor) and target.numel() == 1):
        return output[..., int(target)].reshape(batch, -1).sum(-1)
    if isinstance(target, tuple):
        return output[(slice(None), *target)].reshape(batch, -1).sum(-1)
    if isinstance(target, (list, Tensor)):
        ids = torch.as_tensor(list(target) if isinstance(target, list) else target, device=output.device)
        if output.dim() != 2 or ids.shape != (batch,):
            raise CaptumInputError(f"a target per row needs an output [batch, classes] and {batch} targets; got "
                                   f"output {tuple(output.shape)} and targets {tuple(ids.shape)}")
        return output.gather(1, ids.to(torch.long)[:, None])[:, 0]
    raise CaptumInputError(f"target {target!r}: give None, an int, a tuple of ints, a list or a 1-D tensor")


__all__: Sequence[str] = ["CaptumInputError", "HAVE_CAPTUM", "LastTokenLogits", "LayerAttnLRP", "select"]
