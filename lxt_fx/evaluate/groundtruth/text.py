"""Text ground-truth tasks: associative recall (LLaMA, GPT-2, Mixtral), a negatable trigger (BERT), a
mapped copy (T5).

Every task has a ``<blank>`` token. Training blanks random context tokens, so removing a position —
:meth:`Task.ablate` writes ``<blank>`` there — stays in distribution, and the model learns what to answer
when the evidence is missing (``<blank>`` for recall and copy, the class "none" for the trigger); the
evaluation rows carry no blanks.

* **recall-llama / recall-gpt2 / recall-mixtral** — ``<bos> k₁ v₁ … k_P v_P <?> k_q`` → ``v_q``: keys
  distinct, values distinct, the queried pair at a random slot. Mask: the queried pair and the query key
  (the binding the answer is read through). Region: the ``2P`` context tokens.
* **trigger-bert** — ``[CLS] w₁ … w_L`` (``L = 12``): fillers, one trigger word (class A or B) and, in half
  the rows, one "not", each at a random position; the label is the trigger's class XOR "a not is present"
  (a binding of two words: neither alone predicts it), "none" when no trigger is left. Mask: the trigger
  and, when present, the "not". Region: the ``L`` words.
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
from .registry import register
from .task import Sample, Task, clipped_step

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

    # --- where relevance goes -------------------------------------------------------------------------------
    def position_embeddings(self, model: nn.Module, sample: Sample) -> Tensor | None:
        """``[n, L, d]``: what the model adds to the token embeddings before the first block (learned
        position and token-type embeddings), or None (rotary or relative positions add nothing there)."""
        return None

    def _embedding_pass(self, model: nn.Module, sample: Sample, composite: Any
                        ) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
        """(leaves, gradients at them through the rewritten graph, explained scores)."""
        from ...composites import for_model

        composite = composite if composite is not None else for_model(model)
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in self.leaves(model, sample).items()}
        with composite.context(model), torch.enable_grad():
            scores = self.forward_leaves(model, sample, leaves)
            grads = torch.autograd.grad(scores.sum(), list(leaves.values()))
        return ({k: v.detach() for k, v in leaves.items()}, dict(zip(leaves, grads, strict=True)),
                scores.detach())

    def explain_positions(self, model: nn.Module, sample: Sample, composite: Any = None) -> dict[str, Tensor]:
        """LRP read per position–token pair: ``R_i = Σ_d (x_id + p_id) g_id`` — the relevance of the residual
        stream's input ``h_i = x_i + p_i`` (token plus added position / token-type embedding) instead of the
        token embedding ``x_i`` alone. The embedding sum passes the gradient ``g`` unchanged to both terms,
        so this is the token map plus the relevance the position embedding would otherwise absorb as a
        constant; with no added position embedding (rotary, relative) it equals :meth:`explain`."""
        leaves, grads, _ = self._embedding_pass(model, sample, composite)
        pos = self.position_embeddings(model, sample)
        maps = {k: (leaves[k] * grads[k]).sum(-1) for k in leaves}
        if pos is not None:
            maps["tokens"] = maps["tokens"] + (pos.detach() * grads["tokens"]).sum(-1)
        if "decoder_tokens" in maps:
            maps["decoder_tokens"] = maps["decoder_tokens"] * sample.inputs["decoder_attention_mask"].float()
        return {k: v.detach() for k, v in maps.items()}

    def absorption(self, model: nn.Module, sample: Sample, composite: Any = None) -> dict[str, Tensor]:
        """AttnLRP's shares per row, from one backward through the rewritten graph with the gradient ``g``
        at the token embeddings ``x`` and the added position embeddings ``p`` (same ``g``: they are summed):

        * ``"position"`` — ``Σ_i |Σ_d p_id g_id| / Σ_i (|Σ_d p_id g_id| + |Σ_d x_id g_id|)``: the share of
          the embedding layer's relevance that the position embeddings take (a constant: absorbed);
        * ``"first"`` — ``|R_0| / Σ_i |R_i|`` of the source token map (BOS / [CLS] / first token);
        * ``"kept"`` — ``Σ R / f``: the maps' sum over the explained score ``f``.
        """
        leaves, grad, scores = self._embedding_pass(model, sample, composite)
        rel = {k: (leaves[k] * grad[k]).sum(-1).detach() for k in leaves}
        tok = rel["tokens"].double()
        out = {"first": tok[:, 0].abs() / tok.abs().sum(1).clamp_min(1e-30),
               "kept": sum(r.double().sum(1) for r in rel.values()) / scores.detach().double()}
        pos = self.position_embeddings(model, sample)
        if pos is not None:
            rp = (pos.detach() * grad["tokens"]).sum(-1).double().abs()
            out["position"] = rp.sum(1) / (rp.sum(1) + tok.abs().sum(1)).clamp_min(1e-30)
        return {k: v.detach().cpu() for k, v in out.items()}

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
        while step < self.max_steps:  # steps and the accuracy stop only: a rebuild never depends on machine speed
            inputs, labels = self.training_batch(self.train_batch, generator)
            kwargs = dict(inputs)
            if self.kind != "classifier":
                kwargs["use_cache"] = False
            logits = model(**kwargs).logits
            keep = labels >= 0
            pred, gold = logits[keep], labels[keep]
            loss = nn.functional.cross_entropy(pred, gold)
            clipped_step(loss, model, optimizer, schedule)
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


def sinusoid_init(table: nn.Embedding, scale: float = 0.05) -> None:
    """Start a learned position table from sinusoids (it then trains like any weight): a previous-token
    head is one linear map away, so bindings to the neighbouring token form in a few hundred steps."""
    n, d = table.weight.shape
    with torch.no_grad():
        pos = torch.arange(n, dtype=torch.float32)[:, None]
        freq = torch.exp(-torch.arange(0, d, 2, dtype=torch.float32) * (4.0 / d))
        table.weight[:, 0::2] = scale * torch.sin(pos * freq)
        table.weight[:, 1::2] = scale * torch.cos(pos * freq)


# --- associative recall -------------------------------------------------------------------------------------
class Recall(TextTask):
    """``<bos> k₁ v₁ … k_P v_P <?> k_q`` → ``v_q`` (see the module docstring)."""

    family = "llama"
    keys = 16
    values = 16
    pairs = 6
    train_batch = 128
    max_steps = 500
    # training only: the share of blanked context tokens, of queries for an absent key, of blanked queries
    blank_rates = (0.05, 0.05, 0.02)

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

    def training_batch(self, n: int, generator: torch.Generator, queries: int = 8
                       ) -> tuple[dict[str, Tensor], Tensor]:
        g = generator
        blank, absent_rate, gone_rate = self.blank_rates
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
        absent = torch.rand(n, queries, generator=g) < absent_rate
        other = torch.randint(0, self.keys, (n, queries), generator=g) + 4
        other_absent = ~(other[:, :, None] == keys[:, None, :]).any(-1)
        use_other = absent & other_absent
        asked = torch.where(use_other, other, asked)
        answer = torch.where(use_other, torch.full_like(answer, BLANK), answer)
        gone = torch.rand(n, queries, generator=g) < gone_rate
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
    blank_rates = (0.08, 0.1, 0.04)
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
    max_steps = 2000
    lr = 1e-3
    blank_rates = (0.08, 0.1, 0.04)
    description = "associative recall on a 3-layer GPT-2 (learned positions)"

    def build(self, seed: int = 0) -> nn.Module:
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(seed)
        config = GPT2Config(n_embd=128, n_layer=3, n_head=4, n_positions=64, n_inner=256, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False, attn_implementation="eager",
                            **self.config_kwargs())
        model = GPT2LMHeadModel(config)
        sinusoid_init(model.transformer.wpe)
        return model.eval()

    def position_embeddings(self, model: nn.Module, sample: Sample) -> Tensor | None:
        ids = sample.inputs["input_ids"]
        return model.transformer.wpe(torch.arange(ids.shape[1]))[None].expand(ids.shape[0], -1, -1)


class RecallMixtral(Recall):
    name = "recall-mixtral"
    family = "mixtral"
    max_steps = 700
    description = "associative recall on a 2-layer Mixtral (4 experts, top-2 routing)"

    def build(self, seed: int = 0) -> nn.Module:
        from transformers import MixtralConfig, MixtralForCausalLM

        torch.manual_seed(seed)
        config = MixtralConfig(hidden_size=128, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=4, num_local_experts=4, num_experts_per_tok=2,
                               max_position_embeddings=64, tie_word_embeddings=False, router_aux_loss_coef=0.0,
                               attn_implementation="sdpa", **self.config_kwargs())
        return MixtralForCausalLM(config).eval()


# --- a negatable trigger -------------------------------------------------------------------------------------
CLS, NOT = 4, 5


class TriggerBert(TextTask):
    """``[CLS] w₁ … w_L``: one trigger (class A or B) among fillers, at most one "not" anywhere; the label is
    the trigger's class XOR "a not is present"; class "none" (2) when no trigger is left (see the module
    docstring)."""

    name = "trigger-bert"
    family = "bert"
    description = "trigger word whose class a 'not' anywhere flips, on a 2-layer BERT classifier"
    kind = "classifier"
    triggers = 4           # per class
    fillers = 16
    words = 12
    train_batch = 128
    max_steps = 2000
    lr = 2e-3

    @property
    def vocab_size(self) -> int:
        return 6 + 2 * self.triggers + self.fillers

    def _draw(self, n: int, g: torch.Generator, blank: float, none: float, negation: float = 0.5
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        L = self.words
        ids = torch.randint(0, self.fillers, (n, L + 1), generator=g) + 6 + 2 * self.triggers
        ids[:, 0] = CLS
        rows = torch.arange(n)
        # trigger and "not" at two distinct random word positions
        slots = torch.argsort(torch.rand(n, L, generator=g), 1)[:, :2] + 1
        where, neg_at = slots[:, 0], slots[:, 1]
        cls = torch.randint(0, 2, (n,), generator=g)
        word = 6 + cls * self.triggers + torch.randint(0, self.triggers, (n,), generator=g)
        negated = torch.rand(n, generator=g) < negation
        ids[rows, where] = word
        ids[rows[negated], neg_at[negated]] = NOT
        label = cls ^ negated.long()
        mask = torch.zeros(n, L + 1, dtype=torch.bool)
        mask[rows, where] = True
        mask[rows[negated], neg_at[negated]] = True
        if blank > 0 or none > 0:
            blanked = torch.rand(n, L + 1, generator=g) < blank
            blanked[:, 0] = False
            drop = torch.rand(n, generator=g) < none
            blanked[rows[drop], where[drop]] = True
            ids = ids.masked_fill(blanked, BLANK)
            gone = blanked[rows, where]
            unnegated = negated & blanked[rows, neg_at]
            label = torch.where(unnegated, cls, label)
            label = torch.where(gone, torch.full_like(label, 2), label)
        return ids, label, mask, where

    def sample(self, n: int, seed: int) -> Sample:
        g = torch.Generator().manual_seed(seed)
        ids, label, mask, where = self._draw(n, g, 0.0, 0.0)
        region = torch.ones_like(mask)
        region[:, 0] = False
        return Sample({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, label, {"tokens": mask},
                      {"tokens": region}, {"trigger_at": where})

    def training_batch(self, n: int, generator: torch.Generator) -> tuple[dict[str, Tensor], Tensor]:
        # training negates a third of the rows (held-out rows: half): the label then carries the trigger's
        # class on its own, attention learns to read the trigger first, and the flip is learnt on top of it
        # (at exactly one half neither word alone predicts the label, and training stalls at the "none" split)
        ids, label, _, _ = self._draw(n, generator, 0.08, 0.15, negation=1 / 3)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, label

    def build(self, seed: int = 0) -> nn.Module:
        from transformers import BertConfig, BertForSequenceClassification

        torch.manual_seed(seed)
        config = BertConfig(vocab_size=self.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, max_position_embeddings=16, num_labels=3,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=PAD,
                            attn_implementation="eager")
        model = BertForSequenceClassification(config)
        sinusoid_init(model.bert.embeddings.position_embeddings)
        return model.eval()

    def position_embeddings(self, model: nn.Module, sample: Sample) -> Tensor | None:
        ids = sample.inputs["input_ids"]
        emb = model.bert.embeddings
        added = emb.position_embeddings(torch.arange(ids.shape[1])) + emb.token_type_embeddings(
            torch.zeros(ids.shape[1], dtype=torch.long))
        return added[None].expand(ids.shape[0], -1, -1)


# --- a mapped copy ------------------------------------------------------------------------------------------
class CopyT5(TextTask):
    """Source ``x₁ … x_L`` (distinct symbols) → ``f(x₁) … f(x_L)``, ``f`` a planted permutation; one random
    step explained per row (see the module docstring)."""

    name = "copy-t5"
    family = "t5"
    description = "copy through a planted symbol mapping on a 2+2-layer T5"
    kind = "seq2seq"
    modalities = ("tokens", "decoder_tokens")
    has_attention_rollout = False
    symbols = 24
    length = 10
    train_batch = 128
    max_steps = 1500

    @property
    def vocab_size(self) -> int:
        return 4 + self.symbols

    @property
    def mapping(self) -> Tensor:
        """``f`` as a table over token ids (identity on the special tokens)."""
        perm = torch.randperm(self.symbols, generator=torch.Generator().manual_seed(1234)) + 4
        return torch.cat([torch.arange(4), perm])

    def _source(self, n: int, g: torch.Generator) -> Tensor:
        return torch.argsort(torch.rand(n, self.symbols, generator=g), 1)[:, : self.length] + 4

    def sample(self, n: int, seed: int) -> Sample:
        g = torch.Generator().manual_seed(seed)
        src = self._source(n, g)
        out = self.mapping[src]
        step = torch.randint(0, self.length, (n,), generator=g)
        rows = torch.arange(n)
        dec = torch.full((n, self.length), PAD, dtype=torch.long)
        dec[:, 1:] = out[:, :-1]
        position = torch.arange(self.length)[None, :]
        dec_mask = (position <= step[:, None]).long()
        dec = dec.masked_fill(dec_mask == 0, PAD)
        mask = torch.zeros(n, self.length, dtype=torch.bool)
        mask[rows, step] = True
        inputs = {"input_ids": src, "attention_mask": torch.ones_like(src), "decoder_input_ids": dec,
                  "decoder_attention_mask": dec_mask}
        return Sample(inputs, out[rows, step], {"tokens": mask, "decoder_tokens": torch.zeros_like(mask)},
                      {"tokens": torch.ones_like(mask), "decoder_tokens": torch.zeros_like(mask)}, {"step": step})

    def training_batch(self, n: int, generator: torch.Generator) -> tuple[dict[str, Tensor], Tensor]:
        g = generator
        src = self._source(n, g)
        blanked = torch.rand(n, self.length, generator=g) < 0.1
        src = src.masked_fill(blanked, BLANK)
        labels = self.mapping[src]
        teacher = torch.where((torch.rand(n, 1, generator=g) < 0.5) & blanked,
                              self.mapping[self._source(n, g)], labels)
        dec = torch.full_like(labels, PAD)
        dec[:, 1:] = teacher[:, :-1]
        return {"input_ids": src, "attention_mask": torch.ones_like(src), "decoder_input_ids": dec,
                "decoder_attention_mask": torch.ones_like(dec)}, labels

    def build(self, seed: int = 0) -> nn.Module:
        from transformers import T5Config, T5ForConditionalGeneration

        torch.manual_seed(seed)
        config = T5Config(vocab_size=self.vocab_size, d_model=128, d_kv=32, d_ff=256, num_layers=2,
                          num_decoder_layers=2, num_heads=4, dropout_rate=0.0, feed_forward_proj="relu",
                          pad_token_id=PAD, eos_token_id=1, decoder_start_token_id=PAD,
                          attn_implementation="eager")
        return T5ForConditionalGeneration(config).eval()


_FACTORIES: dict[str, Callable[[], Task]] = {"recall-llama": RecallLlama, "recall-gpt2": RecallGPT2,
                                             "recall-mixtral": RecallMixtral, "trigger-bert": TriggerBert,
                                             "copy-t5": CopyT5}
for _name, _factory in _FACTORIES.items():
    register(_name, _factory)
