"""An oracle outside our code: relevances computed by the ``lxt`` package itself (LXT 2.1, ``lxt.efficient``).

The fixtures ``tests/fixtures/lxt/<family>.safetensors`` were made by ``benchmarks/lxt_oracle/build_fixtures.py``
in a side environment (lxt 2.1, transformers 4.57.6; its docstring says how). Each holds a tiny random model
(2 layers, hidden 32, non-trivial norm weights and biases), its config, two input sets (2×7 unpadded; 3×8
right-padded to 8, 5, 3) and, per attention implementation (eager, SDPA), the plain transformers-4 logits, the
explained target per row and LXT's AttnLRP relevance per token. ``lxt`` is not needed here.

For each family LXT supports (LLaMA, Qwen2, Qwen3, Gemma3, GPT-2, BERT) × attention:
1. the model rebuilt under transformers 5 from the stored config and weights (same state-dict keys: no
   renaming was needed) gives the stored transformers-4 logits at every position to ``LOGIT_ATOL``;
2. ``lxt_fx.explain`` with the family's default composite, on the same ids, mask and target, gives LXT's
   relevance per token to ``REL_RTOL`` of the row's largest |relevance| (and 0 on padding).
The last two tests show the comparison can fail: plain Gradient×Input on the same models, and BERT with one
rule left out (the pooler's tanh given its plain gradient), are far from LXT.

No intended difference to LXT shows on these models, so nothing here is checked against a closed form instead:
LXT's efficient rules put no ε on linear layers (its non-sign-aware ε never enters), its softmax is the plain
gradient (its last-dim-only softmax rule is not used), and its ``f(x)/(x + 1e-10)`` activation ratio differs
from our analytic ratios only in float rounding at these inputs. Measured per family × attention:
``benchmarks/lxt_oracle/README.md``.

The torchvision ViT that LXT also patches is not covered: this environment has no torchvision to rebuild it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
import transformers as tf
from safetensors import safe_open
from safetensors.torch import load_file

import lxt_fx
from lxt_fx.composites import Composite, for_model
from lxt_fx.rules import Gradient

FIXTURES = Path(__file__).parent / "fixtures" / "lxt"
FAMILIES = ["llama", "qwen2", "qwen3", "gemma3", "gpt2", "bert"]
ATTN = ["eager", "sdpa"]
INPUTS = ["full", "padded"]

# Logits of the same weights under transformers 4.57.6 (stored) and 5.x (here): float32 rounding only.
LOGIT_ATOL = 1e-5
# Relevance: |ours − LXT's| ≤ REL_RTOL · max |LXT's relevance| of the row. Both sides are float32 with the same
# rules, differing only in the order of float operations (fused norm vs LXT's decomposed one, our analytic
# activation ratios vs LXT's f(x) / (x + 1e-10)). Measured: at most 1.4e-6 (GPT-2 SDPA, padded).
REL_RTOL = 1e-5


@functools.cache
def fixture(family: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of one family's fixture file."""
    path = FIXTURES / f"{family}.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return meta, load_file(str(path))


@functools.cache
def build(family: str, attn: str) -> torch.nn.Module:
    """The fixture's model under this environment's transformers, with the stored weights (strict load)."""
    meta, tensors = fixture(family)
    settings = json.loads(meta["config"])
    config = tf.AutoConfig.for_model(settings.pop("model_type"), **settings)
    config._attn_implementation = attn
    model = getattr(tf, meta["model_class"])(config).eval()
    weights = {k.removeprefix("weight/"): v for k, v in tensors.items() if k.startswith("weight/")}
    model.load_state_dict(weights, strict=True)
    return model


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    build.cache_clear()
    fixture.cache_clear()


def case(family: str, attn: str, inputs: str) -> dict[str, torch.Tensor]:
    _, tensors = fixture(family)
    prefix = f"case/{attn}/{inputs}/"
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def relative_gap(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max over rows of max |ours − theirs| / max |theirs| in that row."""
    return ((ours - theirs).abs().amax(-1) / theirs.abs().amax(-1)).max().item()


RUNS = [(f, a) for f in FAMILIES for a in ATTN]


def test_fixtures_were_made_by_lxt_on_transformers_4() -> None:
    for family in FAMILIES:
        meta, tensors = fixture(family)
        assert meta["lxt"] == "2.1" and meta["transformers"].startswith("4."), meta
        assert meta["family"] == family
        for attn in ATTN:
            padded = case(family, attn, "padded")
            assert (padded["attention_mask"] == 0).any(), "the padded input set must contain padding"
            assert padded["relevance"].abs().amax() > 0


@pytest.mark.parametrize("family,attn", RUNS)
def test_logits_match_transformers_4(family: str, attn: str) -> None:
    model = build(family, attn)
    for inputs in INPUTS:
        c = case(family, attn, inputs)
        with torch.no_grad():
            logits = model(input_ids=c["input_ids"], attention_mask=c["attention_mask"]).logits
        expected = c["logits"]
        torch.testing.assert_close(logits, expected, atol=LOGIT_ATOL, rtol=0)  # every position, padding too
        # LXT's patched model computed the same forward (its rules change only the backward)
        torch.testing.assert_close(c["lxt_logits"], expected, atol=LOGIT_ATOL, rtol=0)


@pytest.mark.parametrize("family,attn", RUNS)
def test_relevance_matches_lxt(family: str, attn: str) -> None:
    model = build(family, attn)
    for inputs in INPUTS:
        c = case(family, attn, inputs)
        att = lxt_fx.explain(model, c["input_ids"], attention_mask=c["attention_mask"], target=c["targets"],
                             strict=True)
        assert torch.equal(att.target_ids, c["targets"])
        if family != "bert":  # a classifier has no position; LXT's BERT reads the [CLS] state
            assert torch.equal(att.positions, c["positions"])
        ours, theirs = att.relevance, c["relevance"] * c["attention_mask"]
        assert (ours[c["attention_mask"] == 0] == 0).all()
        gap = relative_gap(ours, theirs)
        assert gap <= REL_RTOL, f"{family}/{attn}/{inputs}: relevance differs from LXT by {gap:.2e} of its scale"


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_plain_gradient_times_input_is_far_from_lxt(family: str) -> None:
    """The fixtures discriminate: the untouched model's Gradient×Input misses LXT by far more than REL_RTOL."""
    model = build(family, "sdpa")
    c = case(family, "sdpa", "padded")
    emb = model.get_input_embeddings()(c["input_ids"]).detach().requires_grad_(True)
    logits = model(inputs_embeds=emb, attention_mask=c["attention_mask"]).logits
    rows = torch.arange(logits.shape[0])
    picked = logits[rows, c["positions"]] if logits.dim() == 3 else logits
    (grad,) = torch.autograd.grad(picked[rows, c["targets"]].sum(), emb)
    plain = (emb.detach() * grad).sum(-1) * c["attention_mask"]
    assert relative_gap(plain, c["relevance"] * c["attention_mask"]) > 100 * REL_RTOL


def test_bert_pooler_tanh_as_plain_gradient_is_far_from_lxt() -> None:
    """One rule missing is caught: the pooler's tanh given its plain gradient instead of the identity rule
    (``g ⊙ tanh(x)/x``) misses LXT's BERT relevance by ~50 % of the row scale (measured 0.45 and 0.62)."""
    model = build("bert", "sdpa")
    composite = Composite([(torch.ops.aten.tanh, Gradient())], name="tanh-gradient") | for_model(model)
    for inputs in INPUTS:
        c = case("bert", "sdpa", inputs)
        att = lxt_fx.explain(model, c["input_ids"], attention_mask=c["attention_mask"], target=c["targets"],
                             composite=composite)
        assert relative_gap(att.relevance, c["relevance"] * c["attention_mask"]) > 100 * REL_RTOL
