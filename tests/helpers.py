"""Test helpers: the explicit-form reference for one explanation, and a tiny offline tokenizer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

import lxt_fx
from lxt_fx.reference import explicit_relevance
from lxt_fx.rules import Rule
from lxt_fx.session import rewritten_graph


def reference_relevance(model, ids: Tensor, mask: Tensor, attribution, composite=None) -> Tensor:
    """Token relevance from the explicit-form rules for the same rows, positions and targets."""
    composite = composite or lxt_fx.attnlrp
    emb = model.get_input_embeddings()(ids).detach()
    tensors = {"inputs_embeds": emb, "attention_mask": mask}
    graph = rewritten_graph(model, composite, tensors, {})
    with torch.no_grad():
        logits = model(inputs_embeds=emb, attention_mask=mask, use_cache=False).logits
    seed = torch.zeros_like(logits)
    for b in range(ids.shape[0]):
        p, t = int(attribution.positions[b]), int(attribution.target_ids[b])
        seed[b, p, t] = logits[b, p, t]
    return explicit_relevance(graph, tensors, {"logits": seed})["inputs_embeds"].sum(-1)


def relative_error(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def word_tokenizer(words: list[str]):
    """A word-level fast tokenizer built offline (no hub): one id per word, ``[UNK]``, ``[PAD]``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def gxi_and_explicit(rule: Rule, op: Any, args: Sequence[Any], carrying: Sequence[int],
                     kwargs: dict[str, Any] | None = None) -> tuple[Tensor, Tensor, dict, list]:
    """(y, R_y, GxI relevance per carrying index, explicit relevances) of one rule on one op, for a random
    output gradient g with ``R_y = y ⊙ g`` and GxI relevance ``x ⊙ grad``."""
    kwargs = kwargs or {}
    leaves = [a.detach().clone().requires_grad_(True) if i in carrying else a for i, a in enumerate(args)]
    fn, extra = rule.gxi(op, carrying)
    y = fn(op, *leaves, **kwargs, **extra)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [leaves[i] for i in carrying], g)
    r_y = y.detach() * g
    gxi = {i: args[i] * gr for i, gr in zip(carrying, grads, strict=True)}
    return y.detach(), r_y, gxi, rule.explicit(op, args, kwargs, y.detach(), r_y, carrying)


def graph_gxi(model: torch.nn.Module, x: Tensor, composite: Any = None, index: tuple[int, ...] = (0, -1, 0)
              ) -> tuple[Tensor, Tensor, Any]:
    """(input relevance x ⊙ grad, explained score, rewritten graph) of the rewritten graph's ``output[index]``
    for ``inputs_embeds = x`` (``composite``: default ``lxt_fx.attnlrp``)."""
    graph = rewritten_graph(model, composite or lxt_fx.attnlrp, {"inputs_embeds": x}, {})
    leaf = x.clone().requires_grad_(True)
    score = graph({"inputs_embeds": leaf})["output"][index]
    (grad,) = torch.autograd.grad(score, leaf)
    return (leaf * grad).detach(), score.detach(), graph


class ToyMoE(nn.Module):
    """One MoE layer with linear experts and a linear head, no biases: ``head(Σ_j ŵ_j W_j x)``; ``router(dim,
    experts, k)`` returns ``(ŵ, index)`` for an input. The weights are drawn from ``seed``, the router's first."""

    def __init__(self, router: Callable[[int, int, int], nn.Module], dim: int = 8, experts: int = 4, k: int = 2,
                 seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.router = router(dim, experts, k)
        self.experts = nn.Parameter(torch.randn(experts, dim, dim) / dim**0.5)
        self.head = nn.Linear(dim, 3, bias=False)

    def forward(self, inputs_embeds: Tensor) -> Tensor:
        weights, index = self.router(inputs_embeds)
        chosen = self.experts[index]  # [..., k, dim, dim]
        outs = torch.einsum("...kij,...j->...ki", chosen, inputs_embeds)  # constant weights: linear
        return self.head((weights.unsqueeze(-1) * outs).sum(-2))
