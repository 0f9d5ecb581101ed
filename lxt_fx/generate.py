"""Generate, then explain what was generated: greedy decoding with the untouched model, then ONE backward
pass through the rewritten graph for the whole generated span.

The explained scalar is the sum of the generated tokens' logits, each at the position that predicted it:
``Σ_k logits[p - 1 + k, g_k]`` over the ``N`` generated tokens ``g_k`` of a prompt of ``p`` tokens, on the
input ``prompt + g_1 … g_{N-1}``. Per-token maps (``per_token=True``) ride in the same batch: row ``1 + k``
explains ``logits[p - 1 + k, g_k]`` alone on the input cut after that position, so a single backward
gives the span map and every per-token map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .attribution import Attribution
from .composites.composite import Composite
from .explain import InputError, explain
from .render.common import decoded_text, named_tokens
from .targets import Function
from .tracing.modes import in_eval_mode


@dataclass
class Generation:
    """A greedy continuation and its explanation.

    ``attribution``: one row, the whole generated span (``labels[0]`` says so); ``per_token``: one row per
    generated token (or None); ``prompt_length``: tokens of the prompt — generated tokens in the explained
    input start there (renderers underline them with ``mark_from``)."""

    prompt: str
    prompt_ids: list[int]
    generated_ids: list[int]
    text: str
    attribution: Attribution
    per_token: Attribution | None
    labels: list[str]
    per_token_labels: list[str] = field(default_factory=list)

    @property
    def prompt_length(self) -> int:
        return len(self.prompt_ids)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python (JSON-ready) form."""
        out: dict[str, Any] = {"prompt": self.prompt, "prompt_ids": self.prompt_ids,
                               "generated_ids": self.generated_ids, "generated_text": self.text,
                               "span": {**self.attribution.to_dict(), "label": self.labels[0]}}
        if self.per_token is not None:
            out["per_token"] = {**self.per_token.to_dict(), "labels": self.per_token_labels}
        return out


class SpanTarget(Function):
    """Row 0: the sum of the generated tokens' logits at their positions; row ``1 + k`` (``per_token``):
    the logit of generated token ``k`` at its position. Built on :class:`~lxt_fx.targets.Function`."""

    def __init__(self, positions: Tensor, token_ids: Tensor, per_token: bool) -> None:
        self.positions, self.token_ids, self.per_token = positions, token_ids, per_token
        super().__init__(self._score)

    def _score(self, outputs: dict[str, Tensor]) -> Tensor:
        logits = outputs["logits"]
        pos, ids = self.positions.to(logits.device), self.token_ids.to(logits.device)
        span = logits[0, pos, ids].sum()[None]
        if not self.per_token:
            return span
        rows = torch.arange(1, 1 + len(ids), device=logits.device)
        return torch.cat([span, logits[rows, pos, ids]])


def greedy(model: nn.Module, ids: list[int], max_new_tokens: int, eos: int | None = None,
           on_token: Callable[[int], None] | None = None) -> list[int]:
    """Greedy decoding with the model as it is (``model.generate``, no sampling); the new token ids.

    Stops after ``max_new_tokens`` or at ``eos``; ``on_token(id)`` is called for each new token."""
    from transformers.generation.streamers import BaseStreamer

    class _Stream(BaseStreamer):
        def __init__(self) -> None:
            self.first = True

        def put(self, value: Tensor) -> None:
            if self.first:  # the prompt itself
                self.first = False
                return
            if on_token is not None:
                for token in value.flatten().tolist():
                    on_token(int(token))

        def end(self) -> None:
            pass

    device = next(model.parameters()).device
    inputs = torch.tensor([ids], dtype=torch.long, device=device)
    config = getattr(model, "generation_config", None)
    pad = getattr(config, "pad_token_id", None)
    pad = pad if pad is not None else (eos if eos is not None else 0)
    with torch.no_grad():
        out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens,
                             do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=eos,
                             streamer=_Stream())
    new = out[0, len(ids):].tolist()
    if eos is not None and eos in new:
        new = new[: new.index(eos) + 1]
    return new


def encode_prompt(tokenizer: Any, prompt: str, chat: bool = False) -> list[int]:
    """Prompt token ids; ``chat=True`` wraps the prompt as one user turn with the tokenizer's chat template."""
    if not prompt.strip():
        raise InputError("the prompt is empty: give at least one token of text")
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise InputError("this tokenizer has no chat template: drop --chat / chat=True")
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer(prompt)["input_ids"]]


@in_eval_mode
def generate_and_explain(model: nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int, *,
                         per_token: bool = False, chat: bool = False, composite: Composite | str | None = None,
                         on_token: Callable[[int], None] | None = None) -> Generation:
    """Greedily generate up to ``max_new_tokens`` after ``prompt`` with the untouched model, then explain
    the generated span with one backward pass (see the module doc)."""
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens={max_new_tokens}: generate at least one token")
    prompt_ids = encode_prompt(tokenizer, prompt, chat)
    eos = getattr(tokenizer, "eos_token_id", None)
    generated = greedy(model, prompt_ids, max_new_tokens, eos, on_token)
    if not generated:
        raise InputError("the model generated nothing to explain")
    p, n = len(prompt_ids), len(generated)
    sequence = prompt_ids + generated[:-1]  # the last generated token is predicted, never read
    positions = torch.arange(p - 1, p - 1 + n)
    gen = torch.tensor(generated, dtype=torch.long)
    batch = 1 + n if per_token else 1
    ids = torch.tensor([sequence] * batch, dtype=torch.long)
    mask = torch.ones_like(ids)
    for k in range(1, batch):  # row 1 + k ends at the position that predicts token k
        mask[k, int(positions[k - 1]) + 1:] = 0
    att = explain(model, ids, tokenizer=tokenizer, attention_mask=mask, composite=composite,
                  target=SpanTarget(positions, gen, per_token))
    text = decoded_text(tokenizer, generated)  # an id the tokenizer does not know reads ⟨id 41⟩
    pieces = [decoded_text(tokenizer, [g]) for g in generated]
    span = _select(att, [0])
    labels = [f"Σ logits of the {n} generated token(s) {text!r}"]
    per = None
    per_labels: list[str] = []
    if per_token:
        per = _select(att, list(range(1, batch)))
        per.target_ids = gen.clone()
        per.positions = positions.clone()
        per.target_tokens = named_tokens(tokenizer.convert_ids_to_tokens(generated), generated)
        per_labels = [f"generated token {k + 1} of {n}: {piece!r}" for k, piece in enumerate(pieces)]
    return Generation(prompt, prompt_ids, generated, text, span, per, labels, per_labels)


def _select(att: Attribution, index: list[int]) -> Attribution:
    """The rows ``index`` of ``att`` as an Attribution of their own."""
    idx = torch.tensor(index, dtype=torch.long)
    latents = None if att.latents is None else {k: v[idx] for k, v in att.latents.items()}
    return Attribution(att.relevance[idx], [att.tokens[i] for i in index], att.input_ids[idx],
                       att.attention_mask[idx], att.target_ids[idx], att.target_scores[idx], att.positions[idx],
                       att.report, None if att.target_tokens is None else [att.target_tokens[i] for i in index],
                       latents)
