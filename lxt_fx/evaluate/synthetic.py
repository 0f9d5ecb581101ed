"""A planted-evidence task: key–value retrieval learned by a tiny LLaMA, so the right attribution is known.

A sequence is ``<bos> k₁ v₁ k₂ v₂ … k_P v_P <?> k_q`` with distinct keys; the model must emit ``v_q``, the
value stored after ``k_q``. Training sequences carry ``queries`` such questions one after another
(``… <?> k_a v_a <?> k_b v_b``), each answer supervised; an evaluation sequence is the prefix up to the
first query key, so it has exactly one source of evidence. The evidence is the planted pair — the context tokens ``k_q`` and ``v_q`` —
and an attribution scores a *hit* when its top-ranked context token is one of them (``hit@1``);
``recall@2`` is the share of the two evidence tokens among its two top-ranked context tokens. Only the
``2P`` context tokens are ranked: ``<bos>``, ``<?>`` and the query key are left out, since every method
may rightly rank the query high and it is not hidden evidence. Chance level of both scores: ``1/P``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

PAD, BOS, QUERY = 0, 1, 2


@dataclass(frozen=True)
class KeyValueTask:
    """Vocabulary: ``<pad>``, ``<bos>``, ``<?>``, ``keys`` key tokens, ``values`` value tokens."""

    keys: int = 12
    values: int = 12
    pairs: int = 6

    @property
    def vocab_size(self) -> int:
        return 3 + self.keys + self.values

    @property
    def length(self) -> int:
        return 2 * self.pairs + 3

    def key_id(self, k: Tensor | int) -> Tensor | int:
        return k + 3

    def value_id(self, v: Tensor | int) -> Tensor | int:
        return v + 3 + self.keys

    def token(self, token_id: int) -> str:
        """Readable name of a token id (``k3``, ``v7``, ``<?>``)."""
        if token_id < 3:
            return ("<pad>", "<bos>", "<?>")[token_id]
        if token_id < 3 + self.keys:
            return f"k{token_id - 3}"
        return f"v{token_id - 3 - self.keys}"

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``(input_ids [n, length], target_ids [n], evidence [n, length] bool)``."""
        keys = torch.argsort(torch.rand(n, self.keys, generator=generator), dim=1)[:, : self.pairs]
        values = torch.randint(0, self.values, (n, self.pairs), generator=generator)
        which = torch.randint(0, self.pairs, (n,), generator=generator)
        rows = torch.arange(n)
        ids = torch.empty(n, self.length, dtype=torch.long)
        ids[:, 0] = BOS
        ids[:, 1:-2:2] = self.key_id(keys)
        ids[:, 2:-2:2] = self.value_id(values)
        ids[:, -2] = QUERY
        ids[:, -1] = self.key_id(keys[rows, which])
        targets = self.value_id(values[rows, which])
        evidence = torch.zeros(n, self.length, dtype=torch.bool)
        evidence[rows, 1 + 2 * which] = True
        evidence[rows, 2 + 2 * which] = True
        return ids, targets, evidence

    def training_batch(self, n: int, queries: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(input_ids [n, length − 1 + 3·queries − 1], labels)``: ``queries`` questions per sequence;
        ``labels`` is ``-100`` except after each query key, where it is the answer."""
        keys = torch.argsort(torch.rand(n, self.keys, generator=generator), dim=1)[:, : self.pairs]
        values = torch.randint(0, self.values, (n, self.pairs), generator=generator)
        asked = torch.randint(0, self.pairs, (n, queries), generator=generator)
        rows = torch.arange(n)[:, None]
        context = 1 + 2 * self.pairs
        ids = torch.empty(n, context + 3 * queries, dtype=torch.long)
        ids[:, 0] = BOS
        ids[:, 1:context:2] = self.key_id(keys)
        ids[:, 2:context:2] = self.value_id(values)
        ids[:, context::3] = QUERY
        ids[:, context + 1::3] = self.key_id(keys[rows, asked])
        ids[:, context + 2::3] = self.value_id(values[rows, asked])
        labels = torch.full_like(ids, -100)
        labels[:, context + 1::3] = ids[:, context + 2::3]
        return ids[:, :-1], labels[:, :-1]

    def context(self, n: int) -> Tensor:
        """``[n, length]`` bool: the ``2P`` key/value context tokens (what the evidence is hidden among)."""
        ctx = torch.zeros(n, self.length, dtype=torch.bool)
        ctx[:, 1:-2] = True
        return ctx


def tiny_llama(task: KeyValueTask, layers: int = 2, hidden: int = 128, heads: int = 4, seed: int = 0) -> nn.Module:
    """A randomly initialized LLaMA sized for ``task`` (SDPA attention, untied embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=task.vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=PAD,
                         bos_token_id=BOS, eos_token_id=None, attn_implementation="sdpa")
    return LlamaForCausalLM(config)


@dataclass
class Training:
    """What training did: steps, seconds, final loss, accuracy on fresh held-out sequences."""

    steps: int
    seconds: float
    loss: float
    accuracy: float
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (step, loss, batch accuracy)


def train(model: nn.Module, task: KeyValueTask, *, seconds: float = 150.0, max_steps: int = 4000,
          batch: int = 128, queries: int = 8, lr: float = 3e-3, seed: int = 0, target_accuracy: float = 0.98,
          progress: Callable[[int, float, float], None] | None = None) -> Training:
    """Train on the answer positions of ``queries`` questions per sequence, until ``seconds`` pass, ``max_steps`` are done, or the running
    batch accuracy over 20 steps reaches ``target_accuracy``; the model is left in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 100))
    model.train()
    start = time.perf_counter()
    history: list[tuple[int, float, float]] = []
    recent: list[float] = []
    loss_value, step = float("nan"), 0
    while step < max_steps and time.perf_counter() - start < seconds:
        ids, labels = task.training_batch(batch, queries, generator)
        logits = model(input_ids=ids, use_cache=False).logits
        answer = labels >= 0
        loss = nn.functional.cross_entropy(logits[answer], labels[answer])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        loss_value = float(loss.detach())
        acc = float((logits[answer].argmax(-1) == labels[answer]).float().mean())
        recent = (recent + [acc])[-20:]
        if step % 25 == 0:
            history.append((step, loss_value, acc))
        if progress is not None:
            progress(step, loss_value, time.perf_counter() - start)
        if len(recent) == 20 and sum(recent) / 20 >= target_accuracy:
            break
    model.eval()
    seconds_used = time.perf_counter() - start
    ids, targets, _ = task.sample(1024, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        pred = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1].argmax(-1)
    return Training(step, seconds_used, loss_value, float((pred == targets).float().mean()), history)


def evidence_scores(relevance: Tensor, evidence: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
    """``(hit@1, recall@k)`` per row, ``k`` = the number of evidence tokens of the row.

    Only ``candidates`` tokens are ranked (descending relevance, ties by position); ``hit@1``: the top one
    is evidence; ``recall@k``: the share of evidence tokens among the top ``k``.
    """
    rel = torch.where(candidates, relevance.double(), torch.full_like(relevance, -torch.inf, dtype=torch.float64))
    order = torch.sort(rel, dim=1, descending=True, stable=True).indices
    ranked = evidence.gather(1, order)
    k = evidence.sum(1)
    hit1 = ranked[:, 0].float()
    within = torch.arange(evidence.shape[1])[None, :] < k[:, None]
    recall = (ranked & within).sum(1).float() / k.clamp_min(1).float()
    return hit1, recall
