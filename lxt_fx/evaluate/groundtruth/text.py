"""Text ground-truth tasks: associative recall (LLaMA, GPT-2, Mixtral), a negatable trigger (BERT), a
mapped copy (T5).

Every task has a ``<blank>`` token. Training blanks random context tokens, so removing a position —
:meth:`Task.ablate` writes ``<blank>`` there — stays in distribution, and the model learns what to answer
when the evidence is missing (``<blank>`` for recall and copy, the class "none" for the trigger); the
evaluation rows carry no blanks.

* **recall-llama / recall-gpt2 / recall-mixtral** — ``<bos> k₁ v₁ … k_P v_P <?> k_q`` → ``v_q``: keys
  distinct, values distinct, the queried pair at a random slot. Mask: the queried pair and the query key
  (the binding the answer is read through). Region: the ``2P`` context tokens.
* **trigger-bert** — ``[CLS] w₁ … w_L``: fillers, one trigger word (class A or B), "not" tokens scattered
  as distractors; a "not" *directly before* the trigger flips its class. Mask: the trigger and, when it is
  negated, its "not". Region: the ``L`` words.
* **copy-t5** — source ``x₁ … x_L``, target ``f(x₁) … f(x_L)`` with ``f`` a planted permutation of the
  symbols; the explained step ``t`` is random per row (decoder input ``<s> f(x₁) … f(x_{t−1})``). Mask: the
  source token ``x_t``. Region: the source tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ...explain import explain, last_positions
from ...targets import Function
from .. import baselines
from . import register
from .task import Sample, Task

PAD, BOS, QUERY, BLANK = 0, 1, 2, 3


class TextTask(Task):
    """Shared machinery of the text tasks: token leaves, ``<blank>`` ablation, the training loop.

    ``inputs`` always hold ``input_ids`` and ``attention_mask``; the explained position of a causal LM is the
    last real token, of a classifier the pooled output, of an encoder–decoder the last real decoder token.
    """

    modalities = ("tokens",)
    has_attention_rollout = True
    kind = "causal"                 # "causal" | "classifier" | "seq2seq"
    train_batch = 64
    lr = 3e-3
    max_steps = 3000
    max_seconds = 240.0
    target_accuracy = 0.995

    # --- subclasses --------------------------------------------------------------------------------------
    def training_batch(self, n: int, generator: torch.Generator) -> tuple[dict[str, Tensor], Tensor]:
        """``(model inputs, labels)`` for one step; labels ``-100`` where not supervised."""
        raise NotImplementedError

    # --- what is explained ---------------------------------------------------------------------------------
    def logits(self, model: nn.Module, inputs: dict[str, Tensor], embeds: dict[str, Tensor] | None = None
               ) -> Tensor:
        """``[n, V]``: the logits the label is read from (the last real position of a causal LM)."""
        kwargs = dict(inputs)
        if embeds is not None:
            for key, value in embeds.items():
                name = "inputs_embeds" if key == "tokens" else "decoder_inputs_embeds"
                kwargs.pop("input_ids" if key == "tokens" else "decoder_input_ids", None)
                kwargs[name] = value
        if self.kind != "classifier":
            kwargs["use_cache"] = False
        out = model(**kwargs).logits
        return self.pick(out, inputs)

    def pick(self, logits: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        if logits.dim() == 2:
            return logits
        mask = inputs["decoder_attention_mask"] if self.kind == "seq2seq" else inputs["attention_mask"]
        rows = torch.arange(logits.shape[0], device=logits.device)
        return logits[rows, last_positions(mask.to(logits.device))]

    def score(self, model: nn.Module, inputs: dict[str, Tensor], target: Tensor) -> Tensor:
        logits = self.logits(model, inputs)
        return logits.gather(1, target[:, None].to(logits.device)).squeeze(1)

    def predict(self, model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
        with torch.no_grad():
            return self.logits(model, inputs).argmax(-1)

    def explain(self, model: nn.Module, sample: Sample, composite: Any = None) -> dict[str, Tensor]:
        inputs = sample.inputs
        target = sample.target

        def picked(outputs: dict[str, Tensor]) -> Tensor:
            logits = self.pick(outputs["logits"], inputs)
            return logits.gather(1, target[:, None].to(logits.device)).squeeze(1)

        kwargs: dict[str, Any] = {}
        if self.kind == "seq2seq":
            kwargs["decoder_inputs"] = inputs["decoder_input_ids"]
        att = explain(model, inputs["input_ids"], attention_mask=inputs["attention_mask"], target=Function(picked),
                      composite=composite, **kwargs)
        maps = {"tokens": att.relevance}
        if self.kind == "seq2seq":
            maps["decoder_tokens"] = att.decoder_relevance * inputs["decoder_attention_mask"].float()
        return maps

    # --- gradient methods ----------------------------------------------------------------------------------
    def leaves(self, model: nn.Module, sample: Sample) -> dict[str, Tensor]:
        out = {"tokens": model.get_input_embeddings()(sample.inputs["input_ids"]).detach()}
        if self.kind == "seq2seq":
            out["decoder_tokens"] = model.get_decoder().get_input_embeddings()(
                sample.inputs["decoder_input_ids"]).detach()
        return out

    def forward_leaves(self, model: nn.Module, sample: Sample, leaves: dict[str, Tensor]) -> Tensor:
        logits = self.logits(model, sample.inputs, leaves)
        return logits.gather(1, sample.target[:, None].to(logits.device)).squeeze(1)

    def to_map(self, modality: str, leaf_relevance: Tensor) -> Tensor:
        return leaf_relevance.sum(-1)

    def rollout(self, model: nn.Module, sample: Sample) -> dict[str, Tensor]:
        inputs = sample.inputs
        if self.kind == "seq2seq":
            raise NotImplementedError(f"{self.name}: no attention rollout for an encoder–decoder")
        positions = (torch.full((len(sample),), -1, dtype=torch.long) if self.kind == "classifier"
                     else last_positions(inputs["attention_mask"]))
        rel = baselines.attention_rollout(model, inputs["input_ids"], inputs["attention_mask"], sample.target,
                                          positions)
        return {"tokens": rel}

    # --- ablation ------------------------------------------------------------------------------------------
    def ablate(self, sample: Sample, mask: dict[str, Tensor]) -> dict[str, Tensor]:
        inputs = dict(sample.inputs)
        inputs["input_ids"] = inputs["input_ids"].masked_fill(mask["tokens"].bool(), BLANK)
        if "decoder_tokens" in mask:
            inputs["decoder_input_ids"] = inputs["decoder_input_ids"].masked_fill(mask["decoder_tokens"].bool(),
                                                                                  BLANK)
        return inputs

    # --- training ------------------------------------------------------------------------------------------
    def train(self, model: nn.Module, *, seed: int = 0, log: Any = print) -> dict[str, float]:
        generator = torch.Generator().manual_seed(seed + 17)
        torch.manual_seed(seed + 23)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=0.01)
        warm = 100
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm))
        model.train()
        start = time.perf_counter()
        recent: list[float] = []
        step = 0
        while step < self.max_steps and time.perf_counter() - start < self.max_seconds:
            inputs, labels = self.training_batch(self.train_batch, generator)
            kwargs = dict(inputs)
            if self.kind != "classifier":
                kwargs["use_cache"] = False
            logits = model(**kwargs).logits
            if logits.dim() == 2:
                keep = labels >= 0
                pred, gold = logits[keep], labels[keep]
            else:
                keep = labels >= 0
                pred, gold = logits[keep], labels[keep]
            loss = nn.functional.cross_entropy(pred, gold)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            recent = (recent + [float((pred.argmax(-1) == gold).float().mean())])[-20:]
            if step % 100 == 0:
                log(f"{self.name}: step {step} loss {float(loss.detach()):.4f} acc {sum(recent) / len(recent):.3f} "
                    f"{time.perf_counter() - start:.0f}s")
            if len(recent) == 20 and sum(recent) / 20 >= self.target_accuracy:
                break
        model.eval()
        seconds = time.perf_counter() - start
        held = self.sample(1024, seed=seed + 1_000_003)
        accuracy = float((self.predict(model, held.inputs) == held.target).float().mean())
        return {"steps": step, "seconds": seconds, "accuracy": accuracy}


# --- associative recall -------------------------------------------------------------------------------------
class Recall(TextTask):
    """``<bos> k₁ v₁ … k_P v_P <?> k_q`` → ``v_q`` (see the module docstring)."""

    family = "llama"
    keys = 16
    values = 16
    pairs = 6
    train_batch = 128
    max_steps = 500

    @property
    def vocab_size(self) -> int:
        return 4 + self.keys + self.values

    @property
    def length(self) -> int:
        return 1 + 2 * self.pairs + 2

    def _context(self, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        keys = torch.argsort(torch.rand(n, self.keys, generator=g), 1)[:, : self.pairs] + 4
        values = torch.argsort(torch.rand(n, self.values, generator=g), 1)[:, : self.pairs] + 4 + self.keys
        return keys, values

    def sample(self, n: int, seed: int) -> Sample:
        g = torch.Generator().manual_seed(seed)
        keys, values = self._context(n, g)
        which = torch.randint(0, self.pairs, (n,), generator=g)
        rows = torch.arange(n)
        ids = torch.empty(n, self.length, dtype=torch.long)
        ids[:, 0] = BOS
        ids[:, 1:-2:2] = keys
        ids[:, 2:-2:2] = values
        ids[:, -2] = QUERY
        ids[:, -1] = keys[rows, which]
        mask = torch.zeros(n, self.length, dtype=torch.bool)
        mask[rows, 1 + 2 * which] = True
        mask[rows, 2 + 2 * which] = True
        mask[:, -1] = True
        region = torch.zeros_like(mask)
        region[:, 1:-2] = True
        return Sample({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, values[rows, which],
                      {"tokens": mask}, {"tokens": region}, {"query_slot": which})

    def training_batch(self, n: int, generator: torch.Generator, queries: int = 8, blank: float = 0.08
                       ) -> tuple[dict[str, Tensor], Tensor]:
        g = generator
        keys, values = self._context(n, g)
        context = 1 + 2 * self.pairs
        ctx = torch.empty(n, context, dtype=torch.long)
        ctx[:, 0] = BOS
        ctx[:, 1::2] = keys
        ctx[:, 2::2] = values
        blanked = (torch.rand(n, context, generator=g) < blank)
        blanked[:, 0] = False
        ctx = ctx.masked_fill(blanked, BLANK)
        # queries: mostly a context key, sometimes a key that is absent, sometimes a blanked query
        slot = torch.randint(0, self.pairs, (n, queries), generator=g)
        asked = keys.gather(1, slot)
        answer = values.gather(1, slot)
        present = ~(blanked[:, 1::2].gather(1, slot) | blanked[:, 2::2].gather(1, slot))
        answer = torch.where(present, answer, torch.full_like(answer, BLANK))
        absent = torch.rand(n, queries, generator=g) < 0.1
        other = torch.randint(0, self.keys, (n, queries), generator=g) + 4
        other_absent = ~(other[:, :, None] == keys[:, None, :]).any(-1)
        use_other = absent & other_absent
        asked = torch.where(use_other, other, asked)
        answer = torch.where(use_other, torch.full_like(answer, BLANK), answer)
        gone = torch.rand(n, queries, generator=g) < 0.04
        asked = torch.where(gone, torch.full_like(asked, BLANK), asked)
        answer = torch.where(gone, torch.full_like(answer, BLANK), answer)
        tail = torch.stack([torch.full_like(asked, QUERY), asked, answer], -1).reshape(n, 3 * queries)
        ids = torch.cat([ctx, tail], 1)
        labels = torch.full_like(ids, -100)
        labels[:, context + 1::3] = ids[:, context + 2::3]
        ids, labels = ids[:, :-1], labels[:, :-1]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, labels

    def config_kwargs(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": None}


class RecallLlama(Recall):
    name = "recall-llama"
    family = "llama"
    description = "associative recall on a 2-layer LLaMA (RoPE)"

    def build(self, seed: int = 0) -> nn.Module:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)
        config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False,
                             attn_implementation="sdpa", **self.config_kwargs())
        return LlamaForCausalLM(config).eval()


class RecallGPT2(Recall):
    name = "recall-gpt2"
    family = "gpt2"
    description = "associative recall on a 2-layer GPT-2 (learned positions)"

    def build(self, seed: int = 0) -> nn.Module:
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(seed)
        config = GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, n_inner=128, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager", **self.config_kwargs())
        return GPT2LMHeadModel(config).eval()


class RecallMixtral(Recall):
    name = "recall-mixtral"
    family = "mixtral"
    description = "associative recall on a 2-layer Mixtral (4 experts, top-2 routing)"

    def build(self, seed: int = 0) -> nn.Module:
        from transformers import MixtralConfig, MixtralForCausalLM

        torch.manual_seed(seed)
        config = MixtralConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=4, num_local_experts=4, num_experts_per_tok=2,
                               max_position_embeddings=64, tie_word_embeddings=False, router_aux_loss_coef=0.0,
                               attn_implementation="sdpa", **self.config_kwargs())
        return MixtralForCausalLM(config).eval()


_FACTORIES: dict[str, Callable[[], Task]] = {"recall-llama": RecallLlama, "recall-gpt2": RecallGPT2,
                                             "recall-mixtral": RecallMixtral}
for _name, _factory in _FACTORIES.items():
    register(_name, _factory)
