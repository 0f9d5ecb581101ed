"""Helpers for the evaluation tests: models whose correct attribution is known, a tiny LLaMA, fixtures."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the tests run on a shared 2-core machine, where two threads oversubscribe."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class LinearLM(nn.Module):
    """``logits[b, t, o] = Σ_s mask[b, s] · (w_o · x[b, s])`` at every position ``t``.

    The exact contribution of token ``s`` to output ``o`` is ``w_o · x_s`` (``w ⊙ x`` summed over the
    embedding), and zeroing a token's embedding removes exactly that contribution.
    """

    def __init__(self, vocab: int = 40, dim: int = 6, outputs: int = 3, seed: int = 0,
                 positive: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        weight = torch.randn(vocab, dim, generator=g)
        head = torch.randn(outputs, dim, generator=g)
        if positive:
            weight, head = weight.abs() + 0.05, head.abs() + 0.05
        self.embed.weight.data.copy_(weight)
        self.head = nn.Parameter(head)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def get_output_embeddings(self) -> None:
        return None

    def forward(self, input_ids: Tensor | None = None, inputs_embeds: Tensor | None = None,
                attention_mask: Tensor | None = None) -> dict[str, Tensor]:
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if attention_mask is not None:
            x = x * attention_mask[..., None].to(x.dtype)
        scores = torch.einsum("bld,od->bo", x, self.head)
        return {"logits": scores[:, None, :].expand(-1, x.shape[1], -1)}

    def exact(self, input_ids: Tensor, target_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``w ⊙ x`` summed over the embedding: each token's exact contribution ``[batch, seq]``."""
        x = self.embed(input_ids).detach()
        rel = (x * self.head.detach()[target_ids][:, None, :]).sum(-1)
        return rel if attention_mask is None else rel * attention_mask


class SmoothLM(LinearLM):
    """A smooth non-linear model: ``logits = W₂ tanh(W₁ Σ_s x_s + b)`` at every position."""

    def __init__(self, vocab: int = 40, dim: int = 6, hidden: int = 16, outputs: int = 3, seed: int = 0) -> None:
        super().__init__(vocab, dim, outputs, seed)
        g = torch.Generator().manual_seed(seed + 1)
        self.inner = nn.Parameter(torch.randn(hidden, dim, generator=g))
        self.bias = nn.Parameter(torch.randn(hidden, generator=g))
        self.outer = nn.Parameter(torch.randn(outputs, hidden, generator=g) / 4)

    def forward(self, input_ids: Tensor | None = None, inputs_embeds: Tensor | None = None,
                attention_mask: Tensor | None = None) -> dict[str, Tensor]:
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if attention_mask is not None:
            x = x * attention_mask[..., None].to(x.dtype)
        h = torch.tanh(x.sum(1) @ self.inner.T + self.bias) @ self.outer.T
        return {"logits": h[:, None, :].expand(-1, x.shape[1], -1)}


@pytest.fixture
def linear() -> LinearLM:
    return LinearLM()


@pytest.fixture
def tiny_llama() -> nn.Module:
    """A 2-layer LLaMA, hidden 32, vocab 96, SDPA attention, random weights (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config).eval()


def batch(seed: int = 0, rows: int = 3, length: int = 12, vocab: int = 40, pad_last: int = 0
          ) -> tuple[Tensor, Tensor, Tensor]:
    """``(input_ids, attention_mask, positions)``; the last row right-padded by ``pad_last`` tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    if pad_last:
        mask[-1, length - pad_last:] = 0
        ids[-1, length - pad_last:] = 0
    return ids, mask, mask.sum(1) - 1


WORDS = ("the a cat dog sat on mat big small red blue ran saw it and was in house garden tree bird sang "
         "today yesterday paris france capital of is city river long").split()


def word_tokenizer():
    """A whitespace word-level fast tokenizer built offline: ``[PAD]`` 0, ``[UNK]`` 1, then :data:`WORDS`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def write_jsonl(path, rows) -> str:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)
