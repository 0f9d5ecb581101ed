"""``explain``: one forward through the rewritten graph, one backward, relevance per input token."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .attribution import Attribution
from .composites.composite import Composite
from .composites.registry import for_model
from .session import check_model, input_embeddings, rewritten_graph
from .targets import Function, Target, TokenSpec, as_target
from .tracing.errors import LXTError


class InputError(LXTError, ValueError):
    """Inputs that cannot be explained (empty text, ids outside the vocabulary, no tokenizer for text)."""


def encode(inputs: str | Sequence[str] | Tensor, tokenizer: Any, attention_mask: Tensor | None,
           vocab_size: int) -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)``, right-padded, validated against the vocabulary."""
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, Tensor):
        ids = inputs if inputs.dim() == 2 else inputs.reshape(1, -1)
        if ids.is_floating_point():
            raise InputError("input_ids must be integer token ids, got a float tensor (pass token ids)")
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask.reshape(ids.shape)
    elif isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, str) for t in inputs):
        if tokenizer is None:
            raise InputError("text inputs need a tokenizer: explain(model, text, tokenizer=tokenizer)")
        empty = [i for i, t in enumerate(inputs) if not t.strip()]
        if empty:
            raise InputError(f"input text {empty} is empty: give at least one token of text")
        rows = [tokenizer(t)["input_ids"] for t in inputs]
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    else:
        raise InputError(f"inputs must be a str, a list of str or input_ids [batch, seq]; got {type(inputs).__name__}")
    if ids.numel() == 0 or (mask.sum(-1) == 0).any():
        raise InputError("an input row has no tokens: give at least one token per row")
    if (ids < 0).any() or (ids >= vocab_size).any():
        bad = ids[(ids < 0) | (ids >= vocab_size)].unique().tolist()
        raise InputError(f"token id(s) {bad} outside the vocabulary of {vocab_size}: was the input encoded with "
                         "this model's tokenizer?")
    return ids, mask.to(torch.long)


def last_positions(mask: Tensor) -> Tensor:
    """Index of the last real token of each row."""
    width = mask.shape[1]
    return width - 1 - mask.flip(1).to(torch.long).argmax(1)


def explain(model: nn.Module, inputs: str | Sequence[str] | Tensor, *, tokenizer: Any = None,
            target: Target | TokenSpec = None, composite: Composite | None = None,
            attention_mask: Tensor | None = None, strict: bool = False, checkpoint: str | None = None
            ) -> Attribution:
    """Explain one scalar per row of ``model``'s output with one backward pass through the rewritten graph.

    ``inputs``: a str, a list of str (right-padded batch) or ``input_ids`` ``[batch, seq]``.
    ``target``: ``None`` (argmax next token at the last real position of a causal LM, argmax class of a
    classifier), an int id or one per row, a str that is one token, or a :class:`~lxt_fx.targets.Target`
    (``LogProb``, ``Contrastive``, ``Function``). ``composite``: default the one registered for the model's
    type, else ``attnlrp``. A padded batch gives each row the relevance it gets alone. ``checkpoint``:
    None, ``"layer"`` or ``"sqrt"`` — gradient checkpointing inside the graph (same relevance, less memory).
    """
    model = check_model(model)
    embedding = input_embeddings(model)
    vocab = getattr(embedding, "num_embeddings", None) or model.config.vocab_size
    ids, mask = encode(inputs, tokenizer, attention_mask, vocab)
    composite = composite if composite is not None else for_model(model)
    goal = as_target(target)
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)

    with torch.enable_grad():
        embeds = embedding(ids).detach().requires_grad_(True)
        tensors = {"inputs_embeds": embeds, "attention_mask": mask}
        graph = rewritten_graph(model, composite, tensors, {}, strict)
        outputs = graph(tensors, checkpoint)
        positions = torch.full((ids.shape[0],), -1, dtype=torch.long, device=device)
        if isinstance(goal, Function):
            scores = goal.fn(outputs)
            target_ids = torch.full_like(positions, -1)
        else:
            logits = outputs.get("logits")
            if logits is None:
                raise InputError(f"{type(model).__name__} returns no logits ({list(outputs)}): explain a "
                                 "function of its outputs with target=lxt_fx.targets.Function(fn)")
            if logits.dim() == 3:
                positions = last_positions(mask)
                logits = logits[torch.arange(ids.shape[0], device=device), positions]
            target_ids = goal.ids(logits.detach(), tokenizer)
            scores = goal.score(logits, target_ids, tokenizer)
        (grad,) = torch.autograd.grad(scores.sum(), embeds)
    relevance = (embeds.detach().float() * grad.float()).sum(-1) * mask.float()
    tokens = [_tokens(row[: int(m.sum())], tokenizer) for row, m in zip(ids, mask, strict=True)]
    target_tokens = None
    if tokenizer is not None and (target_ids >= 0).all():
        target_tokens = tokenizer.convert_ids_to_tokens(target_ids.tolist())
    return Attribution(relevance.cpu(), tokens, ids.cpu(), mask.cpu(), target_ids.cpu(),
                       scores.detach().float().cpu(), positions.cpu(), graph.report, target_tokens)


def _tokens(ids: Tensor, tokenizer: Any) -> list[str]:
    if tokenizer is None:
        return [str(i) for i in ids.tolist()]
    return tokenizer.convert_ids_to_tokens(ids.tolist())
