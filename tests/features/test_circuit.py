"""A planted two-step circuit: head 2 of layer 0 copies the first token's payload to the last position, the MLP
of layer 1 (trained here) maps it to the answer token; nothing else can carry it. The attribution graph finds
both, with the edge between them, and its outputs (networkx, JSON, HTML) hold the same graph."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_model

from lxt_fx.features.circuit import attribution_graph

PAYLOAD = list(range(10, 20))  # first tokens; the answer to payload p is token 30 + (p − 10)


def _batch(gen: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(20, 96, (size, 5), generator=gen)
    ids[:, 0] = torch.randint(10, 20, (size,), generator=gen)
    return ids, ids[:, 0] + 20


@pytest.fixture(scope="module")
def planted():
    """Fillers live in residual dims 16–31, payload tokens in dims 0–7. Layer 0: q = k = 0 (uniform causal
    attention); only head 2 reads (v, kv head 1) and writes (o) dims 0–7; its MLP writes nothing. Layer 1: the
    attention writes nothing; its MLP is trained. The unembedding reads dims 16–31 only, so the payload reaches
    the logits only through head 2 and then the layer-1 MLP."""
    model = make_model("llama", "sdpa", seed=0, layers=2)
    gen = torch.Generator().manual_seed(0)
    layer0, layer1 = model.model.layers
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[:, 16:] = torch.randn(96, 16, generator=gen)
        emb[PAYLOAD, 16:] = 0.0
        emb[PAYLOAD, :8] = torch.randn(len(PAYLOAD), 8, generator=gen)
        att = layer0.self_attn
        att.q_proj.weight.zero_()
        att.k_proj.weight.zero_()
        att.v_proj.weight.zero_()
        att.v_proj.weight[8:16, :8] = 4 * torch.eye(8)
        att.o_proj.weight.zero_()
        att.o_proj.weight[:8, 16:24] = torch.eye(8)
        layer0.mlp.down_proj.weight.zero_()
        layer1.self_attn.o_proj.weight.zero_()
        model.lm_head.weight[:, :16] = 0.0
        model.lm_head.weight[:, 16:] = torch.randn(96, 16, generator=gen)
    for p in model.parameters():
        p.requires_grad_(False)
    trained = list(layer1.mlp.parameters())
    for p in trained:
        p.requires_grad_(True)
    opt = torch.optim.Adam(trained, lr=2e-2)
    model.train()
    for _ in range(200):
        ids, labels = _batch(gen, 64)
        loss = torch.nn.functional.cross_entropy(model(ids).logits[:, -1], labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    ids, labels = _batch(torch.Generator().manual_seed(9), 128)
    with torch.no_grad():
        accuracy = float((model(ids).logits[:, -1].argmax(-1) == labels).float().mean())
    assert accuracy > 0.9, accuracy  # the circuit was learned
    return model


def test_the_graph_finds_the_copying_head_and_the_mapping_mlp_with_the_edge(planted) -> None:
    ids = torch.tensor([[13, 40, 77, 25, 61]])
    g = attribution_graph(planted, ids, target=33, coverage=0.9)
    labels = [n.id for n in g.nodes]
    assert labels[:2] == ["L1.MLP", "L0.H2"] or set(labels[:2]) == {"L1.MLP", "L0.H2"}, labels
    assert not {"L0.H0", "L0.H1", "L0.H3", "L0.MLP"} & set(labels)  # they carry nothing
    edge = next(e for e in g.edges if (e.source, e.target) == ("L0.H2", "L1.MLP"))
    assert edge.share > 0.2 and edge.relevance > 0
    incoming = [e for e in g.edges if e.target == "L1.MLP"]
    assert max(incoming, key=lambda e: abs(e.share)).source == "L0.H2"
    head = next(n for n in g.nodes if n.id == "L0.H2")
    assert head.top_tokens[0][0].endswith("@0")  # what flows through the head comes from the payload token

    nx_graph = g.to_networkx()
    assert nx_graph.has_edge("L0.H2", "L1.MLP") and nx_graph.has_edge("L1.MLP", "output")
    assert nx_graph.edges["L0.H2", "L1.MLP"]["share"] == pytest.approx(edge.share)
    data = json.loads(g.to_json())
    assert {n["id"] for n in data["nodes"]} == set(labels)
    page = g.to_html()
    assert "<svg" in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")
    assert 'data-id="L0.H2"' in page


def test_patching_scores_ride_on_the_nodes(planted) -> None:
    clean = torch.tensor([[13, 40, 77, 25, 61]])
    corrupt = torch.tensor([[17, 40, 77, 25, 61]])
    g = attribution_graph(planted, clean, target=33, corrupt=corrupt, coverage=0.9)
    head = next(n for n in g.nodes if n.id == "L0.H2")
    assert head.patching is not None and head.patching > 0  # setting the payload to 17 lowers token 33's logit
