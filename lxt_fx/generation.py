"""``explain_generation``: every generated token explained over everything before it, from ONE forward.

Greedy decoding runs with the untouched model. Then the sequence ``prompt + g_1 … g_{N-1}`` (the last
generated token is predicted, never read) runs once through the rewritten graph, and each generated token
``g_k`` gets its own backward seed: row ``k`` of the matrix is the relevance of every input token for

    s_k = logits[p - 1 + k, g_k]        (p prompt tokens, k = 0 … N - 1)

A causal model's logit at position ``t`` reads only the tokens ``0 … t``, so row ``k`` equals what
``explain`` gives on the prefix cut after position ``p - 1 + k`` (same forward values, same rules), and its
entries from column ``p + k`` on are exactly 0. The N seeds share the forward: they run as batched
vector-Jacobian products (``torch.autograd.grad(..., is_grads_batched=True)``, ``seeds_per_pass`` at a
time), or one backward per seed with ``seeds_per_pass=1``. The modified backward is linear in its seed, so
the sum of the rows is the relevance of ``Σ_k s_k`` (the span map of :func:`~lxt_fx.generate.generate_and_explain`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .attribution import Attribution
from .composites.composite import Composite
from .composites.registry import resolve_composite
from .explain import InputError, check_length, model_device, vocab_size
from .generate import Generation, encode_prompt, greedy
from .render.common import decoded_text, named_tokens
from .rewrite import RewriteReport
from .session import check_model, input_embeddings, rewritten_graph
from .tracing.errors import LXTError
from .tracing.modes import in_eval_mode


@dataclass
class GenerationAttribution:
    """Relevance of every generated token over all tokens before it.

    ``matrix``: float32 ``[new, prompt + new]``; row ``k`` explains the logit of generated token ``k`` at
    the position that predicted it; its entries from column ``prompt_length + k`` on are 0 (tokens the
    prediction could not see, the last generated token is never read). ``ids``/``tokens``: the prompt and
    the generated tokens, ``prompt + new`` of each; ``scores``: the explained logit per row;
    ``report``: the rewrite report of the graph that produced it."""

    matrix: Tensor
    ids: list[int]
    tokens: list[str]
    prompt_length: int
    scores: Tensor
    text: str
    report: RewriteReport

    @property
    def generated_ids(self) -> list[int]:
        """The generated token ids (the last ``new`` of :attr:`ids`)."""
        return self.ids[self.prompt_length:]

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def to_attribution(self, rows: Sequence[int] | None = None) -> Attribution:
        """The rows (``rows``: which, default all) as an :class:`~lxt_fx.attribution.Attribution`: row ``k``
        over the ``prompt + k`` tokens its prediction saw (the mask hides the rest), so every token renderer
        draws it."""
        chosen = torch.tensor(list(range(len(self))) if rows is None else list(rows), dtype=torch.long)
        width = self.matrix.shape[1]
        seen = self.prompt_length + chosen
        mask = (torch.arange(width)[None, :] < seen[:, None]).to(torch.long)
        ids = torch.tensor([self.ids] * len(chosen), dtype=torch.long)
        gen = torch.tensor(self.generated_ids, dtype=torch.long)[chosen]
        return Attribution(self.matrix[chosen] * mask, [self.tokens[: int(s)] for s in seen], ids, mask, gen,
                           self.scores[chosen].clone(), seen - 1, self.report,
                           [self.tokens[self.prompt_length + int(k)] for k in chosen])

    def span(self) -> Attribution:
        """One row: the relevance of the sum of the generated tokens' logits (the sum of the rows)."""
        n, width = self.matrix.shape
        seen = self.prompt_length + n - 1
        mask = (torch.arange(width) < seen).to(torch.long)[None]
        return Attribution(self.matrix.sum(0, keepdim=True) * mask, [self.tokens[:seen]],
                           torch.tensor([self.ids]), mask, torch.tensor([-1]), self.scores.sum()[None],
                           torch.tensor([-1]), self.report)

    def labels(self, tokenizer: Any = None) -> list[str]:
        """One label per row: ``generated token k of N: ' Warsaw'``, each token as the text it decodes to (with
        ``tokenizer`` when given, else byte-level BPE decoded by hand; never the raw ``'ĠWarsaw'``)."""
        from .render.common import display_tokens, named_tokens

        n = len(self)
        pieces = display_tokens(named_tokens(self.tokens, self.ids), self.ids, tokenizer)[self.prompt_length:]
        return [f"generated token {k + 1} of {n}: {piece!r}" for k, piece in enumerate(pieces)]

    def to_generation(self, prompt: str) -> Generation:
        """The span map and the per-token maps as a :class:`~lxt_fx.generate.Generation` (what
        ``generate_and_explain(..., per_token=True)`` returns), for ``prompt``."""
        n = len(self)
        span = self.span()
        span.target_scores = self.scores.sum()[None]
        labels = [f"Σ logits of the {n} generated token(s) {self.text!r}"]
        return Generation(prompt, self.ids[: self.prompt_length], self.generated_ids, self.text, span,
                          self.to_attribution(), labels, self.labels())

    def to_dict(self) -> dict[str, Any]:
        """Plain Python (JSON-ready) form."""
        return {"ids": self.ids, "tokens": self.tokens, "prompt_length": self.prompt_length,
                "generated_text": self.text, "scores": self.scores.tolist(), "matrix": self.matrix.tolist(),
                "composite": self.report.composite, "model": self.report.model_class}

    # ---- renderers (lxt_fx.render.generation) -------------------------------------------------------------

    def show(self, console: Any = None, **options: Any) -> None:
        """Print one heatmap per generated token (rich); see :func:`lxt_fx.render.generation.show_generation`."""
        from .render.generation import show_generation

        show_generation(self, console, **options)

    def to_html(self, path: str | os.PathLike[str] | None = None, **options: Any) -> str:
        """Self-contained HTML page: click a generated token to see its map; see
        :func:`lxt_fx.render.generation.generation_html`."""
        from .render.generation import generation_html

        return generation_html(self, path, **options)

    def save_png(self, path: str | os.PathLike[str], **options: Any) -> None:
        """The matrix as a PNG (generated tokens × context tokens); see
        :func:`lxt_fx.render.generation.save_matrix_png`."""
        from .render.generation import save_matrix_png

        save_matrix_png(self, path, **options)


@in_eval_mode
def explain_generation(model: nn.Module, prompt: str | Sequence[int] | Tensor | Sequence[str | Sequence[int]], *,
                       tokenizer: Any, max_new_tokens: int, chat: bool = False,
                       composite: Composite | str | None = None, seeds_per_pass: int | None = None,
                       stop_at_eos: bool = True, strict: bool = False,
                       on_token: Callable[[int], None] | None = None,
                       target: Any = None) -> GenerationAttribution | list[GenerationAttribution]:
    """Generate greedily with the untouched ``model``, then explain every generated token over all tokens
    before it with one forward through the rewritten graph and batched backward seeds (see the module doc).

    ``prompt``: text (``chat=True`` wraps it as one user turn with the tokenizer's chat template) or token
    ids; ``max_new_tokens``: at most this many tokens (fewer when the model ends at its EOS token and
    ``stop_at_eos``); ``seeds_per_pass``: seeds per batched vector-Jacobian product (memory grows with it:
    each pass holds ``seeds_per_pass`` gradients of every activation); 1 runs one backward per seed; None
    (default): 16 on a GPU, where batched seeds share the weight reads, 1 elsewhere — on a CPU batching
    bought no time for SmolLM2 (78.4 s vs 78.7 s, N = 32) and cost 9× the memory (2781 vs 310 MB);
    ``on_token(id)`` is called for each token as it is generated.

    A list of prompts (texts, or lists of ids) gives a list of results, one per prompt, each as the prompt
    gets alone. ``target`` is not taken (each generated token is the target of its row): a
    :class:`GenerationError` says what to call instead. A model that does not generate text (a masked LM, a
    classifier) is a :class:`GenerationError` too."""
    model = check_model(model)
    if target is not None:
        raise GenerationError("explain_generation explains every generated token (each is the target of its "
                              "row), so it takes no target=: to explain a given continuation call "
                              "lxt_fx.generation.explain_continuation(model, prompt_ids, continuation_ids), and "
                              "for one next token lxt_fx.explain(model, prompt, target=...)")
    _check_generates(model)
    if _several(prompt):
        return [explain_generation(model, one, tokenizer=tokenizer, max_new_tokens=max_new_tokens, chat=chat,
                                   composite=composite, seeds_per_pass=seeds_per_pass, stop_at_eos=stop_at_eos,
                                   strict=strict, on_token=on_token) for one in prompt]
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens={max_new_tokens}: generate at least one token")
    seeds_per_pass = _seeds_per_pass(model, seeds_per_pass)
    if isinstance(prompt, str):
        prompt_ids = encode_prompt(tokenizer, prompt, chat)
    else:
        if chat:
            raise InputError("chat=True needs the prompt as text (the chat template wraps text): pass a str")
        prompt_ids = _ids(prompt)
    vocab = vocab_size(model)
    if any(i < 0 or i >= vocab for i in prompt_ids):
        raise InputError(f"prompt ids outside the vocabulary of {vocab}: was the prompt encoded with this "
                         "model's tokenizer?")
    check_length(model, len(prompt_ids) + max_new_tokens - 1)  # the longest sequence the model reads
    eos = getattr(tokenizer, "eos_token_id", None) if stop_at_eos else None
    generated = greedy(model, prompt_ids, max_new_tokens, eos, on_token)
    if not generated:
        raise InputError("the model generated nothing to explain")
    return explain_continuation(model, prompt_ids, generated, tokenizer=tokenizer, composite=composite,
                                seeds_per_pass=seeds_per_pass, strict=strict)


@in_eval_mode
def explain_continuation(model: nn.Module, prompt_ids: Sequence[int], continuation_ids: Sequence[int], *,
                         tokenizer: Any = None, composite: Composite | str | None = None, seeds_per_pass: int | None = None,
                         strict: bool = False) -> GenerationAttribution:
    """Explain a given continuation token by token (teacher forcing: a reference answer, a sampled or an
    earlier generation): row ``k`` is the relevance of every token before ``continuation_ids[k]`` for the
    logit it got at the position that predicted it. One forward of ``prompt + continuation[:-1]`` through
    the rewritten graph, batched seeds (see the module doc); :func:`explain_generation` is greedy decoding
    followed by this."""
    model = check_model(model)
    seeds_per_pass = _seeds_per_pass(model, seeds_per_pass)
    prompt_ids, generated = _ids(prompt_ids), _ids(continuation_ids, "continuation")
    embedding = input_embeddings(model)
    vocab = vocab_size(model)
    if any(i < 0 or i >= vocab for i in prompt_ids + generated):
        raise InputError(f"token ids outside the vocabulary of {vocab}: was the text encoded with this "
                         "model's tokenizer?")
    check_length(model, len(prompt_ids) + len(generated) - 1)
    composite = resolve_composite(composite, model)
    matrix, scores, report = _rows(model, embedding, composite, prompt_ids, generated, seeds_per_pass, strict)
    ids = prompt_ids + generated
    tokens = named_tokens(tokenizer.convert_ids_to_tokens(ids), ids) if tokenizer is not None else [str(i) for i in ids]
    text = decoded_text(tokenizer, generated) if tokenizer is not None else ""
    return GenerationAttribution(matrix, ids, tokens, len(prompt_ids), scores, text, report)


class GenerationError(LXTError, TypeError):
    """``explain_generation`` asked for something generation cannot give: a model that does not generate text
    (a masked LM, a classifier), or a ``target=``."""


def _check_generates(model: nn.Module) -> None:
    """:class:`GenerationError` unless ``model`` generates text (``can_generate()`` and ``generate``)."""
    can = getattr(model, "can_generate", None)
    if not callable(getattr(model, "generate", None)) or (callable(can) and not can()):
        raise GenerationError(f"{type(model).__name__} does not generate text (it is not a causal or "
                              "sequence-to-sequence LM with generate()): explain one prediction with "
                              "lxt_fx.explain(model, text, tokenizer=tokenizer) instead")


def _several(prompt: Any) -> bool:
    """Whether ``prompt`` is a list of prompts (texts, or lists / rows of ids) rather than one."""
    if isinstance(prompt, Tensor):
        return prompt.dim() == 2 and prompt.shape[0] > 1
    if isinstance(prompt, str) or not isinstance(prompt, Sequence) or not prompt:
        return False
    return all(isinstance(p, (str, Sequence, Tensor)) and not isinstance(p, (bytes, int)) for p in prompt)


def _seeds_per_pass(model: nn.Module, seeds: int | None) -> int:
    """``seeds`` checked; None: 16 on a CUDA device, 1 elsewhere (see :func:`explain_generation`)."""
    if seeds is None:
        return 16 if model_device(model).type == "cuda" else 1
    if seeds < 1:
        raise InputError(f"seeds_per_pass={seeds}: give at least 1 seed per backward pass")
    return seeds


def _ids(ids: Sequence[int] | Tensor, what: str = "prompt") -> list[int]:
    if isinstance(ids, Tensor):
        if ids.is_floating_point() or ids.dim() > 2 or (ids.dim() == 2 and ids.shape[0] != 1):
            raise InputError(f"{what} ids must be one row of integer token ids, got {ids.dtype} of shape "
                             f"{tuple(ids.shape)}: explain one generation at a time")
        ids = ids.reshape(-1).tolist()
    out = [int(i) for i in ids]
    if not out:
        raise InputError(f"the {what} is empty: give at least one token")
    return out


def _rows(model: nn.Module, embedding: nn.Module, composite: Composite, prompt_ids: list[int],
          generated: list[int], seeds_per_pass: int, strict: bool) -> tuple[Tensor, Tensor, RewriteReport]:
    """``(matrix [N, p + N], scores [N], report)``: one forward of ``prompt + generated[:-1]``, N seeds."""
    device = model_device(model)
    p, n = len(prompt_ids), len(generated)
    ids = torch.tensor([prompt_ids + generated[:-1]], dtype=torch.long, device=device)
    with torch.enable_grad():
        embeds = embedding(ids).detach().requires_grad_(True)
        tensors = {"inputs_embeds": embeds, "attention_mask": torch.ones_like(ids)}
        graph = rewritten_graph(model, composite, tensors, {}, strict)
        logits = graph(tensors, None)["logits"]
        positions = torch.arange(p - 1, p - 1 + n, device=device)
        scores = logits[0, positions, torch.tensor(generated, device=device)]
        rows = [_backward(scores, embeds, chunk) for chunk in _seed_chunks(n, seeds_per_pass, scores)]
    matrix = torch.zeros(n, p + n, dtype=torch.float32)
    matrix[:, : p + n - 1] = torch.cat(rows).cpu()
    return matrix, scores.detach().float().cpu(), graph.report


def _seed_chunks(n: int, size: int, scores: Tensor) -> list[Tensor]:
    """One-hot seeds ``[chunk, N]`` for the N scores, ``size`` at a time."""
    eye = torch.eye(n, dtype=scores.dtype, device=scores.device)
    return list(eye.split(size))


def _backward(scores: Tensor, embeds: Tensor, seeds: Tensor) -> Tensor:
    """Relevance ``[chunk, seq]`` (``embeds ⊙ grad`` summed over the hidden dim) for a chunk of seeds.

    A chunk runs as one batched vector-Jacobian product (``vmap`` over the backward); should an op of the
    graph have no batching rule, the chunk runs one backward per seed instead (the same numbers)."""
    x = embeds.detach().float()[0]
    if seeds.shape[0] > 1:
        try:
            (grads,) = torch.autograd.grad(scores, embeds, seeds, retain_graph=True, is_grads_batched=True)
            return (x[None] * grads[:, 0].float()).sum(-1)
        except RuntimeError as exc:  # an op without a vmap rule in the backward: fall back, same result
            if "vmap" not in str(exc).lower() and "batch" not in str(exc).lower():
                raise
    out = []
    for seed in seeds:
        (grad,) = torch.autograd.grad(scores, embeds, seed, retain_graph=True)
        out.append((x * grad[0].float()).sum(-1))
    return torch.stack(out)
