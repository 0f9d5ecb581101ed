"""A tiny LLaMA trained here with a planted feature: neuron 7 of its MLP fires on one token class and the
model reads the class from it. ``neurons`` ranks it first; the index's top snippets all hold that class; an
index build killed half-way and resumed equals an uninterrupted one."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

import lxt_fx
from lxt_fx import features

CLASS = list(range(10, 20))  # the token class the planted neuron carries
YES, NO, N = 1, 2, 7
PLACE = "model.layers.0.mlp.down_proj:input"


def _batch(gen: torch.Generator, size: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(20, 96, (size, width), generator=gen)
    hit = torch.rand(size, width, generator=gen) < 0.3
    ids[hit] = torch.randint(10, 20, (int(hit.sum()),), generator=gen)
    return ids, torch.where((ids >= 10) & (ids < 20), YES, NO)


@pytest.fixture(scope="module")
def planted():
    """Embeddings live in residual dims 0–15 and attention writes nothing (both frozen), the unembedding reads
    dims 16–31 only: what predicts the next token must pass through the MLP. Neuron N is planted (frozen): it
    reads embedding dim 0 (+1 on the class, −1 elsewhere) and writes dim 17; the rest is trained."""
    model = make_model("llama", "sdpa", seed=0, layers=1)
    mlp, attn = model.model.layers[0].mlp, model.model.layers[0].self_attn
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, 16:] = 0.0
        emb[:, 0] = -1.0
        emb[CLASS, 0] = 1.0
        attn.o_proj.weight.zero_()
        for w in (mlp.gate_proj.weight, mlp.up_proj.weight):
            w[N] = 0.0
        mlp.gate_proj.weight[N, 0], mlp.up_proj.weight[N, 0] = 2.0, 1.0
        mlp.down_proj.weight[:, N] = 0.0
        mlp.down_proj.weight[17, N] = 0.1
        model.lm_head.weight[:, :16] = 0.0
    masks = {mlp.gate_proj.weight: (N, 0), mlp.up_proj.weight: (N, 0), mlp.down_proj.weight: (N, 1)}
    hooks = []
    for w, (i, dim) in masks.items():
        keep = torch.ones_like(w)
        keep.select(dim, i).zero_()
        hooks.append(w.register_hook(lambda g, k=keep: g * k))
    head_keep = torch.ones_like(model.lm_head.weight)
    head_keep[:, :16] = 0.0
    hooks.append(model.lm_head.weight.register_hook(lambda g: g * head_keep))
    frozen = [model.model.embed_tokens.weight, attn.o_proj.weight]
    for w in frozen:
        w.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(60):  # learn: next token YES after a class token, else NO
        ids, labels = _batch(gen, 32, 10)
        loss = torch.nn.functional.cross_entropy(model(ids).logits.reshape(-1, 96), labels.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for w in frozen:
        w.requires_grad_(True)
    for h in hooks:
        h.remove()
    return model


def _accuracy(model, ids, labels) -> float:
    with torch.no_grad():
        return float((model(ids).logits.argmax(-1) == labels).float().mean())


def test_planted_neuron_ranks_first_and_is_needed(planted) -> None:
    ids, labels = _batch(torch.Generator().manual_seed(5), 64, 10)
    intact = _accuracy(planted, ids, labels)
    knocked = []
    for n in range(48):
        with features.ablate(planted, PLACE, [n]):
            knocked.append(_accuracy(planted, ids, labels))
    assert intact > 0.97
    assert min(range(48), key=lambda n: knocked[n]) == N and knocked[N] < intact - 0.1  # the model needs it
    for last in (12, 17):
        prompt = torch.tensor([[40, 50, 60, last]])
        att = lxt_fx.explain(planted, prompt, target=YES, capture=[PLACE])
        top = features.neurons(att, PLACE, k=3)
        assert top[0].index == N and top[0].relevance > 2 * abs(top[1].relevance)
        assert top[0].activation > 10


def test_index_top_snippets_hold_the_class_and_resume_equals_uninterrupted(planted, tmp_path) -> None:
    gen = torch.Generator().manual_seed(9)
    texts = []
    for i in range(24):
        row = torch.randint(20, 96, (8,), generator=gen).tolist()
        if i % 2:
            row[int(torch.randint(0, 8, (1,), generator=gen))] = 10 + i % 10
        texts.append(row)
    whole = features.build_index(planted, None, PLACE, tmp_path / "whole", texts, length=8, chunk_size=4, top=6,
                                 progress=False)
    for by in ("activation", "relevance"):
        snippets = whole.top(N, by=by)
        assert len(snippets) == 6
        assert all(any(10 <= int(t) < 20 for t in s.tokens) for s in snippets), (by, snippets)
    assert all(10 <= int(s.tokens[s.position]) < 20 for s in whole.top(N, by="activation"))

    class Killed(Exception):
        pass

    def kill_after_two(k: int) -> None:
        if k == 2:
            raise Killed

    with pytest.raises(Killed):
        features.build_index(planted, None, PLACE, tmp_path / "resumed", texts, length=8, chunk_size=4, top=6,
                             progress=False, on_chunk=kill_after_two)
    chunks = sorted(p.name for p in (tmp_path / "resumed" / "chunks").iterdir())
    assert chunks == [f"chunk_{k:05d}.safetensors" for k in range(3)]  # whole chunks only, no temporaries
    first = (tmp_path / "resumed" / "chunks" / "chunk_00000.safetensors").stat().st_mtime_ns
    resumed = features.build_index(planted, None, PLACE, tmp_path / "resumed", texts, length=8, chunk_size=4,
                                   top=6, progress=False)
    assert (tmp_path / "resumed" / "chunks" / "chunk_00000.safetensors").stat().st_mtime_ns == first  # skipped
    for name in ("act_max", "act_pos", "rel_sum", "rel_pos"):
        assert torch.equal(getattr(resumed, name), getattr(whole, name)), name
    assert resumed.tokens == whole.tokens
    with pytest.raises(features.IndexMismatchError, match="length"):
        features.build_index(planted, None, PLACE, tmp_path / "resumed", texts, length=6, chunk_size=4,
                             progress=False)
    card = whole.card(N).to_html(tmp_path / "card.html")
    assert "<script" not in card and card.count('class="fire"') == 12 and f"neuron {N}" in card
    assert "FeatureIndex" in whole._repr_html_()
