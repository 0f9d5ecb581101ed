"""More families, eager and SDPA: T5 (v1.0 ReLU and v1.1 gated-GELU, encoder *and* decoder maps),
Mixtral and Qwen3-MoE, GPT-2, BERT (sequence classification, masked LM, bare ``BertModel`` with a
function target), RoBERTa and ViT (AttnLRP, its default, and the LXT-style vision composite); and families
the generic composite covers through ops of their own: BLOOM (ALiBi via ``baddbmm``), Mamba (exp-made SSM
decays), CTRL (scales ``inputs_embeds`` in place).

For each: the forward inside the context equals the untouched model and leaves it bit-identical;
strict coverage passes; relevance equals the explicit-form reference (:mod:`lxt_fx.reference`) seeded
with the same explained scalar. Then the bad inputs of these families.

Each (family, attention) model is built once per module; the context call, ``explain`` and the reference
all use the same call signature, so each is captured once. Models have one layer (T5: two, so the relative
position bias computed in layer 0 is reused as a constant in layer 1): every rule is per op, and capture
time (seconds per model on 2 cores) dominates this module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
import transformers as tf
from helpers import relative_error

import lxt_fx
from lxt_fx.composites import Composite, for_model
from lxt_fx.composites.attnlrp import polynomial_power
from lxt_fx.reference import explicit_relevance
from lxt_fx.rules import IdentityRegion
from lxt_fx.session import rewritten_graph

V = 96
ATTN = ["eager", "sdpa"]
SEQ, PAD_FROM = 9, 6  # row 1 is right-padded from position 6
IMAGE = 16


def _text(**extra: object) -> dict:
    base = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                max_position_embeddings=64)
    base.update(extra)
    return base


def _t5(gated: bool) -> tf.T5Config:
    extra = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False) if gated else {}
    return tf.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                       num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                       eos_token_id=1, **extra)


# name → (model class, config factory)
CASES: dict[str, tuple[type, Callable[[], object]]] = {
    "t5": (tf.T5ForConditionalGeneration, lambda: _t5(False)),
    "t5-v1.1-gated": (tf.T5ForConditionalGeneration, lambda: _t5(True)),
    "mixtral": (tf.MixtralForCausalLM, lambda: tf.MixtralConfig(**_text(
        num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2))),
    "qwen3-moe": (tf.Qwen3MoeForCausalLM, lambda: tf.Qwen3MoeConfig(**_text(
        num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
        norm_topk_prob=True, decoder_sparse_step=1))),
    "gpt2": (tf.GPT2LMHeadModel, lambda: tf.GPT2Config(vocab_size=V, n_embd=32, n_layer=1, n_head=4,
                                                       n_positions=64, bos_token_id=0, eos_token_id=0)),
    "bert-cls": (tf.BertForSequenceClassification, lambda: tf.BertConfig(**_text(num_labels=3))),
    "bert-mlm": (tf.BertForMaskedLM, lambda: tf.BertConfig(**_text())),
    "bert-model": (tf.BertModel, lambda: tf.BertConfig(**_text())),
    "roberta": (tf.RobertaForSequenceClassification, lambda: tf.RobertaConfig(**_text(num_labels=3, pad_token_id=1))),
    # generic-composite families with ops of their own: ALiBi scores through baddbmm (BLOOM), SSM decays
    # made with exp and a gated RMSNorm-free mixer (Mamba), an in-place scaling of inputs_embeds (CTRL)
    "bloom": (tf.BloomForCausalLM, lambda: tf.BloomConfig(vocab_size=V, hidden_size=32, n_layer=1, n_head=4)),
    "mamba": (tf.MambaForCausalLM, lambda: tf.MambaConfig(vocab_size=V, hidden_size=32, state_size=8,
                                                          num_hidden_layers=1, expand=2, conv_kernel=4)),
    "ctrl": (tf.CTRLLMHeadModel, lambda: tf.CTRLConfig(vocab_size=V, n_embd=32, n_layer=1, n_head=4, dff=48,
                                                      n_positions=64)),
    "vit": (tf.ViTForImageClassification, lambda: tf.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48, image_size=IMAGE,
        patch_size=4, num_labels=5)),
}

# Every family runs eager and SDPA attention; variants that differ from their family only away from the
# attention (T5 v1.1's gated-GELU FF, BERT's MLM head and bare encoder) run one of them each, to keep the
# number of captures (≈ 3 s each on 2 cores) down.
VARIANTS = {"t5-v1.1-gated": ["sdpa"], "bert-mlm": ["eager"], "bert-model": ["sdpa"], "bloom": ["eager"],
            "mamba": ["eager"], "ctrl": ["eager"]}
RUNS = [(case, attn) for case in CASES for attn in VARIANTS.get(case, ATTN)]

# A fixed direction: the bare encoder is explained as ``pooler_output · u`` (a function target).
_U = torch.randn(32, generator=torch.Generator().manual_seed(7))


def pooled_score(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return outputs["pooler_output"] @ _U


@functools.cache
def build(case: str, attn: str) -> torch.nn.Module:
    cls, make = CASES[case]
    config = make()
    config._attn_implementation = attn
    torch.manual_seed(0)
    return cls(config).eval()


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    build.cache_clear()


def text_inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (2, SEQ), generator=g)
    mask = torch.ones_like(ids)
    mask[1, PAD_FROM:] = 0
    return ids, mask


DECODER_IDS = torch.tensor([[0, 5, 9], [0, 7, 4]])  # decoder start token, then two tokens


def pixels(size: int = IMAGE) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))


def graph_tensors(model: torch.nn.Module, case: str) -> dict[str, torch.Tensor]:
    """The tensors ``explain`` feeds the graph (embeddings, masks, pixels) for the case's inputs."""
    if case == "vit":
        return {"pixel_values": pixels()}
    ids, mask = text_inputs()
    tensors = {"inputs_embeds": model.get_input_embeddings()(ids).detach(), "attention_mask": mask}
    if case.startswith("t5"):
        dec = model.get_decoder().get_input_embeddings()(DECODER_IDS).detach()
        tensors.update(decoder_inputs_embeds=dec, decoder_attention_mask=torch.ones_like(DECODER_IDS))
    return tensors


def model_call(model: torch.nn.Module, case: str) -> dict:
    """Keyword arguments of an ordinary model call with the same signature as ``explain``'s graph."""
    tensors = graph_tensors(model, case)
    if case == "vit":
        return tensors
    call = dict(tensors)
    call.pop("inputs_embeds")
    call["input_ids"] = text_inputs()[0]
    return call


def run_explain(model: torch.nn.Module, case: str, composite: Composite | str | None = None) -> lxt_fx.Attribution:
    if case == "vit":
        return lxt_fx.explain(model, pixels(), composite=composite, strict=True)
    ids, mask = text_inputs()
    target = lxt_fx.targets.Function(pooled_score) if case == "bert-model" else None
    decoder = DECODER_IDS if case.startswith("t5") else None
    position = mask.sum(-1) - 1 if case == "bert-mlm" else None  # no [MASK] in random ids: the last token
    return lxt_fx.explain(model, ids, attention_mask=mask, target=target, decoder_inputs=decoder,
                          composite=composite, strict=True, position=position)


def reference(model: torch.nn.Module, case: str, att: lxt_fx.Attribution, composite: Composite,
              dtype: torch.dtype | None = torch.float64) -> dict[str, torch.Tensor]:
    """Explicit-form relevance at each graph input, seeded at the outputs with ``out ⊙ ∂score/∂out`` for the
    scalar ``explain`` explained (the logit at its position and id, or the function target)."""
    tensors = graph_tensors(model, case)
    graph = rewritten_graph(model, composite, tensors, {})
    with torch.no_grad():
        plain = graph.captured.module()({k: v.clone() for k, v in tensors.items()})  # CTRL writes its input
    outs = {k: v.detach().requires_grad_(True) for k, v in plain.items() if v.is_floating_point()}
    if case == "bert-model":
        score = pooled_score(outs)
    else:
        logits, rows = outs["logits"], torch.arange(att.target_ids.shape[0])
        picked = logits[rows, att.positions] if logits.dim() == 3 else logits
        score = picked[rows, att.target_ids]
    keys = list(outs)
    grads = torch.autograd.grad(score.sum(), [outs[k] for k in keys], allow_unused=True)
    seeds = {k: outs[k].detach() * g for k, g in zip(keys, grads, strict=True) if g is not None}
    return explicit_relevance(graph, tensors, seeds, dtype=dtype)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_restored(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert now.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(now[k], v) and now[k].dtype == v.dtype, k  # bit-identical
    assert "forward" not in vars(model)
    assert model.forward.__func__ is type(model).forward


def main_outputs(out) -> dict[str, torch.Tensor]:
    return {k: v for k, v in out.items() if k in ("logits", "last_hidden_state", "pooler_output")}


@pytest.mark.parametrize("case,attn", RUNS)
def test_forward_inside_context_equals_model_and_restores_it(case: str, attn: str) -> None:
    model = build(case, attn)
    call = model_call(model, case)
    before = snapshot(model)
    with torch.no_grad():
        plain = main_outputs(model(**call))
    composite = for_model(model)
    with composite.context(model, strict=True), torch.no_grad():
        inside = main_outputs(model(**call))
    assert plain.keys() == inside.keys() and plain
    for key in plain:
        torch.testing.assert_close(inside[key], plain[key], atol=1e-5, rtol=0)
    assert_restored(model, before)


@pytest.mark.parametrize("case,attn", RUNS)
def test_relevance_equals_explicit_reference(case: str, attn: str) -> None:
    model = build(case, attn)
    before = snapshot(model)
    att = run_explain(model, case)
    assert att.report.unhandled == []
    assert att.report.composite == for_model(model).name
    ref = reference(model, case, att, for_model(model))
    if case == "vit":
        assert att.relevance.shape == (2, IMAGE, IMAGE)
        assert relative_error(att.relevance.double(), ref["pixel_values"].double().sum(1)) < 1e-5
    else:
        ids, mask = text_inputs()
        assert att.relevance.shape == ids.shape and torch.all(att.relevance[1, PAD_FROM:] == 0)
        expected = ref["inputs_embeds"].sum(-1) * mask
        assert relative_error(att.relevance.double(), expected) < 1e-5
    if case.startswith("t5"):  # the second map: relevance of the decoder input tokens
        assert att.decoder_relevance.shape == DECODER_IDS.shape
        assert torch.equal(att.decoder_input_ids, DECODER_IDS)
        assert relative_error(att.decoder_relevance.double(), ref["decoder_inputs_embeds"].sum(-1)) < 1e-5
        assert att.decoder_relevance.abs().sum() > 0 and att.relevance.abs().sum() > 0
        assert att.positions.tolist() == [2, 2]  # the token after the last decoder input is explained
    assert_restored(model, before)


@pytest.mark.parametrize("attn", ATTN)
def test_vit_vision_composite_equals_explicit_reference(attn: str) -> None:
    # the LXT-style vision composite (CP-LRP + γ on Linear + z⁺ on the patch embedding), chosen explicitly:
    # the forward inside its context equals the model and leaves it bit-identical, and its relevance equals
    # the explicit form
    model = build("vit", attn)
    vision = lxt_fx.composites.vision
    call = model_call(model, "vit")
    before = snapshot(model)
    with torch.no_grad():
        plain = main_outputs(model(**call))
    with vision.context(model, strict=True), torch.no_grad():
        inside = main_outputs(model(**call))
    torch.testing.assert_close(inside["logits"], plain["logits"], atol=1e-5, rtol=0)
    att = run_explain(model, "vit", vision)
    assert att.report.unhandled == [] and att.report.composite == vision.name
    assert att.relevance.shape == (2, IMAGE, IMAGE)
    # the γ-rule divides by a sign-split z_γ (x⁺, x⁻ against W↑, W↓) + b_γ, which float32 resolves less
    # finely than y: the reference in the graph's own dtype agrees to rounding, the float64 one to ~1e-4
    ref = reference(model, "vit", att, vision, dtype=None)["pixel_values"].sum(1)
    assert relative_error(att.relevance.double(), ref.double()) < 1e-5
    ref64 = reference(model, "vit", att, vision)["pixel_values"].sum(1)
    assert relative_error(att.relevance.double(), ref64) < 1e-3
    default = run_explain(model, "vit")
    assert relative_error(att.relevance.double(), default.relevance.double()) > 1e-3  # a different map
    assert_restored(model, before)


def test_vit_default_is_attnlrp_and_vision_is_selectable() -> None:
    model = build("vit", "sdpa")
    assert for_model(model) is lxt_fx.attnlrp
    assert run_explain(model, "vit").report.composite == lxt_fx.attnlrp.name
    rules = {r.rule for r in run_explain(model, "vit", "vision").report.rewritten}
    assert {"gamma", "zplus", "attention", "norm_identity"} <= rules
    custom = lxt_fx.composites.cp_lrp_gamma(linear_gamma=0.0, conv_gamma=100.0)
    att = run_explain(model, "vit", custom)
    ref = reference(model, "vit", att, custom, dtype=None)["pixel_values"].sum(1)
    assert relative_error(att.relevance.double(), ref.double()) < 1e-5


def test_moe_rules_present() -> None:
    for case in ("mixtral", "qwen3-moe"):  # the generic AttnLRP (Mixtral's default holds its router constant)
        counts = run_explain(build(case, "sdpa"), case, composite="attnlrp").report.rule_counts()
        assert counts.get("renormalize", 0) == 1, (case, counts)  # top-k renormalization: identity
        assert counts.get("uniform", 0) >= 2 and counts.get("softmax", 0) == 1, (case, counts)  # router


# ---- targets -------------------------------------------------------------------------------------------


def test_gpt2_int_target_is_exactly_that_logit_and_contrastive() -> None:
    model = build("gpt2", "sdpa")
    ids, mask = text_inputs()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    last = logits[torch.arange(2), torch.tensor([SEQ - 1, PAD_FROM - 1])]
    att = lxt_fx.explain(model, ids, attention_mask=mask, target=11)
    assert att.target_ids.tolist() == [11, 11]
    torch.testing.assert_close(att.target_scores, last[:, 11], atol=1e-5, rtol=0)
    con = lxt_fx.explain(model, ids, attention_mask=mask, target=lxt_fx.Contrastive(11))
    torch.testing.assert_close(con.target_scores, last[:, 11] - last.mean(-1), atol=1e-5, rtol=0)


# ---- bad input -----------------------------------------------------------------------------------------


def test_t5_without_decoder_inputs_explains_the_first_output_token() -> None:
    model = build("t5", "eager")
    ids, mask = text_inputs()
    att = lxt_fx.explain(model, ids, attention_mask=mask)
    start = model.config.decoder_start_token_id
    assert att.decoder_input_ids.tolist() == [[start], [start]]
    assert att.positions.tolist() == [0, 0] and att.decoder_relevance.shape == (2, 1)
    with torch.no_grad():
        first = model(input_ids=ids, attention_mask=mask, decoder_input_ids=att.decoder_input_ids).logits[:, 0]
    assert att.target_ids.tolist() == first.argmax(-1).tolist()
    torch.testing.assert_close(att.target_scores, first.max(-1).values, atol=1e-5, rtol=0)


def test_t5_without_start_token_or_decoder_inputs_is_an_input_error() -> None:
    model = build("t5", "eager")
    start, model.config.decoder_start_token_id = model.config.decoder_start_token_id, None
    try:
        with pytest.raises(lxt_fx.InputError, match="decoder_inputs="):
            lxt_fx.explain(model, text_inputs()[0])
    finally:
        model.config.decoder_start_token_id = start


def test_decoder_inputs_on_a_decoder_only_model_is_an_input_error() -> None:
    with pytest.raises(lxt_fx.InputError, match="not an encoder-decoder"):
        lxt_fx.explain(build("gpt2", "sdpa"), text_inputs()[0], decoder_inputs=DECODER_IDS)


def test_image_of_the_wrong_size_is_an_input_error() -> None:
    with pytest.raises(lxt_fx.InputError, match=r"\(24, 24\).*\(16, 16\)"):
        lxt_fx.explain(build("vit", "sdpa"), pixels(24))


def test_bare_encoder_without_function_target_is_an_input_error() -> None:
    with pytest.raises(lxt_fx.InputError, match="Function"):
        lxt_fx.explain(build("bert-model", "sdpa"), text_inputs()[0])


def test_function_target_of_the_wrong_shape_is_an_input_error() -> None:
    bad = lxt_fx.targets.Function(lambda out: out["pooler_output"].sum())
    with pytest.raises(lxt_fx.InputError, match=r"one scalar per row, shape \(2,\)"):
        lxt_fx.explain(build("bert-model", "sdpa"), text_inputs()[0], target=bad)


def test_op_without_a_rule_names_op_module_and_line() -> None:
    # GPT-2's NewGELUActivation reaches the graph as pow/tanh/mul/add; without the identity region and the
    # polynomial-power entry its pow has no rule
    no_region = Composite([(p, r) for p, r in lxt_fx.attnlrp.entries
                           if not isinstance(r, IdentityRegion) and not (isinstance(p, tuple) and polynomial_power in p)],
                          name="attnlrp-without-regions")
    model = build("gpt2", "sdpa")
    with pytest.raises(lxt_fx.UnhandledOpError) as info:
        lxt_fx.explain(model, text_inputs()[0], composite=no_region, strict=True)
    message = str(info.value)
    assert "aten.pow.Tensor_Scalar" in message
    assert "transformer.h.0.mlp.act" in message and "NewGELUActivation" in message
    assert "activations.py:" in message  # the source line of the op
    assert [r.module_path for r in info.value.unhandled] == ["transformer.h.0.mlp.act"]
    # not strict: explained anyway, with the gap in the report
    att = lxt_fx.explain(model, text_inputs()[0], composite=no_region)
    assert len(att.report.unhandled) == 1 and torch.isfinite(att.relevance).all()
