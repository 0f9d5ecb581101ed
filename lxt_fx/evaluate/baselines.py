"""Attribution methods behind one interface, for perturbation experiments.

Every method is ``method(model, input_ids, attention_mask, target_ids, positions) -> relevance``
(float32 ``[batch, seq]``, 0 on padding) and explains the same scalar per row: the logit of
``target_ids[b]`` at sequence position ``positions[b]`` (``-1``: a model whose logits are ``[batch, V]``).
Get one by name with :func:`get_method` (options such as ``steps`` or ``seed`` bound), or run several
with :func:`attribute_many`, which computes the embedding gradient once for gradient, saliency and I×G.

Methods (token score = reduction over the embedding dimension ``d``):

* ``gradient`` — ``Σ_d ∂f/∂x``: the signed gradient summed over the embedding.
* ``saliency`` — ``‖∂f/∂x‖₂``: the gradient's L2 norm per token (Simonyan et al. 2014), unsigned.
* ``ixg`` — Input×Gradient, ``Σ_d x ⊙ ∂f/∂x``.
* ``ig`` — Integrated Gradients (Sundararajan et al. 2017) from the all-zero embedding (the state a
  token reaches when the perturbation zeroes it), midpoint Riemann sum with ``steps`` points, evaluated in
  batches of ``batch_size`` interpolated sequences. Completeness: ``Σ relevance ≈ f(x) − f(0)``.
* ``rollout`` — attention rollout (Abnar & Zuidema 2020): per layer the attention probabilities averaged
  over heads, ``Â = ½A + ½I`` (the residual), rows renormalized, ``R = Â_L ⋯ Â_1``; relevance of token
  ``j`` is ``R[position, j]``. The probabilities come from the model's own forward with
  ``output_attentions=True``; fused kernels (SDPA, flash) do not return them, so the model's attention
  implementation is switched to ``"eager"`` for that forward (``set_attn_implementation``, or the
  config's ``_attn_implementation``) and switched back afterwards, also after an error — same weights,
  no copy. Non-negative; ignores the target.
* ``random`` — uniform noise, seeded per row by ``seed`` and the row's ids (reproducible, independent of
  batching): the chance level of every metric.
* ``cp_lrp`` — ``lxt_fx.explain(..., composite=lxt_fx.cp_lrp)``: LRP with attention weights held constant.
* ``attnlrp`` — ``lxt_fx.explain`` with the model's composite (AttnLRP by default).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..tracing.errors import LXTError
from ..tracing.modes import in_eval_mode
from .perturbation import model_scores, row_generator, takes_kwarg


class Method(Protocol):
    """``(model, input_ids, attention_mask, target_ids, positions) -> relevance [batch, seq]``."""

    def __call__(self, model: nn.Module, input_ids: Tensor, attention_mask: Tensor, target_ids: Tensor,
                 positions: Tensor) -> Tensor: ...


class UnknownMethodError(LXTError, ValueError):
    """A method name that is not in the registry; the message lists the valid ones."""


def _embed(model: nn.Module, input_ids: Tensor) -> Tensor:
    return model.get_input_embeddings()(input_ids).detach()


def embedding_gradient(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, target_ids: Tensor,
                       positions: Tensor) -> tuple[Tensor, Tensor]:
    """``(embeddings, ∂score/∂embeddings)``, both ``[batch, seq, d]``; one forward and one backward."""
    with torch.enable_grad():
        embeds = _embed(model, input_ids).requires_grad_(True)
        scores = model_scores(model, embeds, attention_mask, target_ids, positions, "logit")
        (grad,) = torch.autograd.grad(scores.sum(), embeds)
    return embeds.detach(), grad


def _masked(relevance: Tensor, attention_mask: Tensor) -> Tensor:
    return (relevance.float() * attention_mask.float()).detach()


def gradient(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, target_ids: Tensor,
             positions: Tensor) -> Tensor:
    """Signed gradient summed over the embedding dimension."""
    _, grad = embedding_gradient(model, input_ids, attention_mask, target_ids, positions)
    return _masked(grad.sum(-1), attention_mask)


def saliency(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, target_ids: Tensor,
             positions: Tensor) -> Tensor:
    """L2 norm of the gradient per token."""
    _, grad = embedding_gradient(model, input_ids, attention_mask, target_ids, positions)
    return _masked(grad.norm(dim=-1), attention_mask)


def input_x_gradient(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, target_ids: Tensor,
                     positions: Tensor) -> Tensor:
    """Input×Gradient summed over the embedding dimension."""
    embeds, grad = embedding_gradient(model, input_ids, attention_mask, target_ids, positions)
    return _masked((embeds * grad).sum(-1), attention_mask)


def integrated_gradients(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, target_ids: Tensor,
                         positions: Tensor, *, steps: int = 32, batch_size: int = 32) -> Tensor:
    """Integrated Gradients from the zero embedding, ``steps`` midpoints, ``batch_size`` sequences a pass."""
    if steps < 1:
        raise ValueError(f"Integrated Gradients needs steps ≥ 1, got {steps}")
    embeds = _embed(model, input_ids)
    batch = embeds.shape[0]
    alphas = (torch.arange(steps, dtype=embeds.dtype, device=embeds.device) + 0.5) / steps
    # every (row, alpha) pair, row-major, cut into passes of batch_size sequences
    rows = torch.arange(batch, device=embeds.device).repeat_interleave(steps)
    alpha = alphas.repeat(batch)
    total = torch.zeros_like(embeds)
    for start in range(0, rows.numel(), max(1, batch_size)):
        r, a = rows[start:start + batch_size], alpha[start:start + batch_size]
        with torch.enable_grad():
            x = (embeds[r] * a[:, None, None]).requires_grad_(True)
            scores = model_scores(model, x, attention_mask[r], target_ids[r], positions[r], "logit")
            (grad,) = torch.autograd.grad(scores.sum(), x)
        total.index_add_(0, r, grad.detach())
    return _masked((embeds * total / steps).sum(-1), attention_mask)


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` with eager attention inside, restoring its attention implementation on exit."""
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    if config is None or previous in (None, "eager"):
        yield model
        return
    setter = getattr(model, "set_attn_implementation", None)
    try:
        if setter is not None:
            setter("eager")
        else:
            config._attn_implementation = "eager"
        yield model
    finally:
        if setter is not None:
            setter(previous)
        else:
            config._attn_implementation = previous


@torch.no_grad()
def attention_rollout(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, target_ids: Tensor,
                      positions: Tensor) -> Tensor:
    """Attention rollout read at each row's explained position (the target is not used)."""
    with eager_attention(model):
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask,
                                  "output_attentions": True}
        if takes_kwarg(model, "use_cache"):
            kwargs["use_cache"] = False
        out = model(**kwargs)
    attentions = getattr(out, "attentions", None)
    if not attentions:
        raise LXTError(f"{type(model).__name__} returned no attention probabilities with "
                       "output_attentions=True: attention rollout needs them")
    seq = input_ids.shape[1]
    eye = torch.eye(seq, dtype=torch.float64, device=input_ids.device)
    rollout = eye.expand(input_ids.shape[0], seq, seq).clone()
    for layer in attentions:
        a = 0.5 * layer.double().mean(1) + 0.5 * eye
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-30)
        rollout = a @ rollout
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    pos = torch.where(positions < 0, torch.zeros_like(positions), positions)  # [CLS]-style models read row 0
    return _masked(rollout[rows, pos], attention_mask)


def random_relevance(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, target_ids: Tensor,
                     positions: Tensor, *, seed: int = 0) -> Tensor:
    """Uniform noise in [0, 1), seeded per row by ``seed`` and the row's ids."""
    rows = [torch.rand(input_ids.shape[1], generator=row_generator(seed + 7919, r)) for r in input_ids.cpu()]
    return _masked(torch.stack(rows).to(input_ids.device), attention_mask)


def _lrp(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, target_ids: Tensor, positions: Tensor,
         composite: Any = None) -> Tensor:
    from ..explain import explain
    from ..targets import Function

    rows = torch.arange(input_ids.shape[0], device=input_ids.device)

    def picked(outputs: dict[str, Tensor]) -> Tensor:
        logits = outputs["logits"]
        return logits[rows, positions, target_ids] if logits.dim() == 3 else logits[rows, target_ids]

    result = explain(model, input_ids, target=Function(picked), composite=composite,
                     attention_mask=attention_mask)
    return _masked(result.relevance.to(input_ids.device), attention_mask)


def attnlrp(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, target_ids: Tensor,
            positions: Tensor) -> Tensor:
    """AttnLRP: ``lxt_fx.explain`` with the model's registered composite (``attnlrp`` by default)."""
    return _lrp(model, input_ids, attention_mask, target_ids, positions)


def cp_lrp(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, target_ids: Tensor,
           positions: Tensor) -> Tensor:
    """CP-LRP: ``lxt_fx.explain(..., composite=lxt_fx.cp_lrp)``."""
    from ..composites import cp_lrp as composite

    return _lrp(model, input_ids, attention_mask, target_ids, positions, composite)


@dataclass(frozen=True)
class Entry:
    """A registered method: its function, the options it accepts, and one line saying what it is."""

    fn: Callable[..., Tensor]
    options: tuple[str, ...]
    description: str


METHODS: dict[str, Entry] = {
    "attnlrp": Entry(attnlrp, (), "AttnLRP (lxt_fx.explain)"),
    "cp_lrp": Entry(cp_lrp, (), "CP-LRP (lxt_fx.explain, composite=cp_lrp)"),
    "ixg": Entry(input_x_gradient, (), "Input×Gradient"),
    "ig": Entry(integrated_gradients, ("steps", "batch_size"), "Integrated Gradients, zero baseline"),
    "gradient": Entry(gradient, (), "gradient summed over the embedding"),
    "saliency": Entry(saliency, (), "L2 norm of the gradient"),
    "rollout": Entry(attention_rollout, (), "attention rollout"),
    "random": Entry(random_relevance, ("seed",), "seeded uniform noise"),
}
ALIASES: dict[str, str] = {"input_x_gradient": "ixg", "inputxgradient": "ixg", "integrated_gradients": "ig",
                           "attention_rollout": "rollout", "cplrp": "cp_lrp", "cp-lrp": "cp_lrp",
                           "lrp": "attnlrp", "grad": "gradient"}
GRADIENT_FAMILY = ("gradient", "saliency", "ixg")


def method_names() -> list[str]:
    """The registered method names (aliases not included)."""
    return list(METHODS)


def canonical(name: str) -> str:
    """The registry name of ``name`` (case-insensitive, aliases resolved) or :class:`UnknownMethodError`."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in METHODS:
        raise UnknownMethodError(f"unknown attribution method {name!r}; valid methods: "
                                 f"{', '.join(METHODS)} (aliases: {', '.join(sorted(ALIASES))})")
    return key


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``"attnlrp,ixg"`` or a list → canonical names, in order, without repeats; errors list valid names."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    names: list[str] = []
    for part in parts:
        if part.strip():
            name = canonical(part)
            if name not in names:
                names.append(name)
    if not names:
        raise UnknownMethodError(f"no method given; valid methods: {', '.join(METHODS)}")
    return names


def get_method(name: str, **options: Any) -> Method:
    """The method called ``name``, with those of ``options`` it accepts bound (others are ignored)."""
    entry = METHODS[canonical(name)]
    bound = {k: v for k, v in options.items() if k in entry.options and v is not None}
    return functools.partial(entry.fn, **bound) if bound else entry.fn


def register(name: str, fn: Callable[..., Tensor], description: str = "", options: Sequence[str] = ()) -> None:
    """Add a method (``fn(model, input_ids, attention_mask, target_ids, positions, **options)``)."""
    METHODS[name.lower()] = Entry(fn, tuple(options), description or name)


@in_eval_mode
def attribute_many(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, target_ids: Tensor,
                   positions: Tensor, methods: Sequence[str], *, options: Mapping[str, Any] | None = None,
                   timings: dict[str, float] | None = None) -> dict[str, Tensor]:
    """Relevance of every method in ``methods`` (name → ``[batch, seq]``).

    Gradient, saliency and I×G share one backward pass. ``options`` go to the methods that take them
    (``steps``/``batch_size`` for IG, ``seed`` for random); ``timings`` (if given) receives seconds per method.
    """
    import time

    options = dict(options or {})
    names = [canonical(m) for m in methods]
    out: dict[str, Tensor] = {}
    family = [n for n in names if n in GRADIENT_FAMILY and METHODS[n].fn in (gradient, saliency, input_x_gradient)]
    if family:
        start = time.perf_counter()
        embeds, grad = embedding_gradient(model, input_ids, attention_mask, target_ids, positions)
        derived = {"gradient": grad.sum(-1), "saliency": grad.norm(dim=-1), "ixg": (embeds * grad).sum(-1)}
        share = (time.perf_counter() - start) / len(family)
        for n in family:
            out[n] = _masked(derived[n], attention_mask)
            if timings is not None:
                timings[n] = timings.get(n, 0.0) + share
    for n in names:
        if n in out:
            continue
        start = time.perf_counter()
        out[n] = get_method(n, **options)(model, input_ids, attention_mask, target_ids, positions).float()
        if timings is not None:
            timings[n] = timings.get(n, 0.0) + time.perf_counter() - start
    return {n: out[n] for n in names}
