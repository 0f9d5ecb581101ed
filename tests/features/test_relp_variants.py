"""``attention_gradient``: RelP without AttnLRP's attention rule changes exactly the paths through a later
attention — a component after the last attention scores as under AttnLRP, one before it does not — and the
composite it starts from is left as it was."""

from __future__ import annotations

import torch
from conftest import VOCAB, make_model

from lxt_fx.composites.attnlrp import attnlrp
from lxt_fx.features import attention_gradient, patching
from lxt_fx.rules import Attention
from lxt_fx.targets import Contrastive


def test_only_paths_through_a_later_attention_change() -> None:
    model = make_model("llama", "sdpa", seed=5, layers=2)
    gen = torch.Generator().manual_seed(2)
    clean = torch.randint(0, VOCAB, (1, 6), generator=gen)
    corrupt = clean.clone()
    corrupt[0, 2] = (clean[0, 2] + 7) % VOCAB
    entries = attnlrp.entries
    variant = attention_gradient(model=model)
    assert attnlrp.entries is entries and any(isinstance(r, Attention) for _, r in entries)
    assert not any(isinstance(r, Attention) for _, r in variant.entries)
    assert len(variant.entries) == len(entries) - sum(isinstance(r, Attention) for _, r in entries) + 1
    _, report = variant.rewrite(model, clean)
    assert not report.unhandled and report.rule_counts().get("gradient") == 2  # the kernel of each layer, decided
    kwargs = {"target": Contrastive(3, 5), "components": ("heads", "mlp")}
    lrp = patching(model, clean, corrupt, methods=("relp",), **kwargs)
    alt = patching(model, clean, corrupt, methods=("relp",), composite=variant, **kwargs)
    last = [i for i, c in enumerate(lrp.components) if c.layer == 1]  # its heads (after the kernel), its MLP
    assert last and torch.allclose(alt.scores["relp"][last], lrp.scores["relp"][last], rtol=1e-5, atol=1e-7)
    first = [i for i, c in enumerate(lrp.components) if c.layer == 0]
    assert not torch.allclose(alt.scores["relp"][first], lrp.scores["relp"][first], rtol=1e-3, atol=1e-5)
