"""``benchmarks/coverage.py`` in its short form: a fixed handful of families end to end (each in a forked
child) — covered *and verified* (the zero-bias books close) —, the table it writes, the timeout path,
``--rerun-unverified``, and the generic config shrink."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "coverage.py"
SHORT = ["llama", "gpt2", "bert", "t5", "vit"]


@pytest.fixture(scope="module")
def coverage():
    spec = importlib.util.spec_from_file_location("coverage_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _rows(table: str) -> dict[str, list[str]]:
    families = table.split("## Families", 1)[1]  # the per-family table (not the by-mapping one)
    return {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in families.splitlines() if line.startswith("| ") and not line.startswith("| model type")}


def test_short_sweep_covers_the_handful(tmp_path: Path) -> None:
    out = tmp_path / "coverage.md"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--only", ",".join(SHORT), "--out", str(out),
                           "--timeout", "240"], env=env, capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    table = out.read_text()
    assert "explained with **zero unhandled ops** (strict coverage passes): **5** of 5 captured = **100.0 %**" \
        in table, table
    assert "**verified** (zero unhandled ops and the zero-bias books close, `lxt_fx.check`): **5** of 5 " \
        "captured = **100.0 %** (goal ≥ 90 %: met)" in table, table
    assert "Captured but not verified" not in table
    rows = _rows(table)
    assert set(rows) == set(SHORT)
    for family, cells in rows.items():
        _, cls, captured, unhandled, forward, finite, verified, share, seconds, note = cells
        assert (captured, unhandled, forward, finite, verified, note) == ("yes", "0", "yes", "yes", "yes", ""), \
            (family, cells)
        assert float(seconds) > 0 and abs(float(share)) < 10
    assert rows["t5"][1] == "T5ForConditionalGeneration" and rows["vit"][1] == "ViTForImageClassification"
    assert out.with_suffix(".jsonl").read_text().count("\n") == len(SHORT)  # progress, one line per family


def test_rerun_unverified_keeps_verified_rows_and_reruns_the_rest(coverage, tmp_path: Path) -> None:
    """A verified row and a not-built row are kept as they are; a captured, unverified row is run again
    (here a family that does not build from the shrunk defaults, so the rerun is quick and visible)."""
    out = tmp_path / "coverage.md"
    kept = coverage.Row("llama", "LlamaForCausalLM", "causal-lm", True, True, {}, True, True, True, "attnlrp",
                        1.5, verified=True, verdict="closes", verdict_reason="closes: …", input_share=0.75)
    stale = coverage.Row("timm_wrapper", "TimmWrapperForImageClassification", "image-classification", True, True,
                         {}, True, True, True, "attnlrp",
                         2.0, verified=False, verdict="loss", verdict_reason="unexplained loss 5.0e-02 of |score|")
    broken = coverage.Row("bamba", error="build: RuntimeError: …")
    out.with_suffix(".jsonl").write_text("".join(json.dumps(coverage.asdict(r)) + "\n" for r in (kept, stale, broken)))
    rows = {r.model_type: r for r in coverage.main(["--only", "llama,timm_wrapper,bamba", "--out", str(out),
                                                    "--rerun-unverified", "--timeout", "120"])}
    assert rows["llama"] == kept and rows["bamba"] == broken  # not run again
    assert not rows["timm_wrapper"].built and rows["timm_wrapper"].error.startswith("build:")  # run again: fresh
    table = out.read_text()
    assert "**verified** (zero unhandled ops and the zero-bias books close, `lxt_fx.check`): **1** of 1" in table
    assert _rows(table)["llama"][6] == "yes"


def test_a_family_past_its_timeout_is_one_row(coverage) -> None:
    row = coverage.run_isolated("gpt2", coverage.families()["gpt2"], timeout=0.2)
    assert "timeout after" in row.error and not row.covered and row.captured is None
    # whether the tiny build finished inside 0.2 s depends on the machine's load: the row says which
    assert row.built == row.error.startswith("built; ")


def test_families_cover_the_mappings(coverage) -> None:
    found = coverage.families()
    assert len(found) > 200
    assert found["llama"][0] == ("LlamaForCausalLM", "causal-lm")
    assert found["t5"][0] == ("T5ForConditionalGeneration", "seq2seq-lm")
    assert found["vit"][0] == ("ViTForImageClassification", "image-classification")
    tasks = {task for heads in found.values() for _, task in heads}
    assert tasks == {"causal-lm", "seq2seq-lm", "masked-lm", "image-classification", "sequence-classification",
                     "token-classification", "question-answering", "image-text-to-text", "zero-shot-image-classification",
                     "audio-classification", "speech-seq2seq"}
    assert found["llava"][0] == ("LlavaForConditionalGeneration", "image-text-to-text")
    assert found["wav2vec2"][0][1] == "audio-classification" and found["clip"][-1][1] == "zero-shot-image-classification"
    assert coverage.home_mapping("whisper", found) == "causal-lm" and coverage.home_mapping("llava", found) == \
        "image-text-to-text"


def test_shrink_is_generic_and_reaches_sub_configs(coverage) -> None:
    from transformers import AutoConfig

    llama = coverage.shrink(AutoConfig.for_model("llama"))
    assert (llama.num_hidden_layers, llama.hidden_size, llama.num_attention_heads, llama.vocab_size) == (2, 64, 4, 256)
    assert llama.bos_token_id < 256 and llama.eos_token_id < 256
    t5 = coverage.shrink(AutoConfig.for_model("t5"))
    assert (t5.num_layers, t5.num_decoder_layers, t5.d_model, t5.d_kv, t5.d_ff) == (2, 2, 64, 16, 128)
    vit = coverage.shrink(AutoConfig.for_model("vit"))
    assert (vit.image_size, vit.patch_size, vit.num_hidden_layers) == (32, 4, 2)
    qwen3 = coverage.shrink(AutoConfig.for_model("qwen3"))
    assert len(qwen3.layer_types) == 2  # per-layer lists follow the layer count
    llava = coverage.shrink(AutoConfig.for_model("llava"))
    assert llava.text_config.hidden_size == 64 and llava.vision_config.hidden_size == 64


# ---- the config-aware shrink: each family below did not build from the generic shrink ------------------------


def _built(coverage, model_type: str):
    model, name, task, call, plain = coverage.build(model_type, coverage.families()[model_type])
    assert torch.isfinite(plain).all()
    return model


def test_shrink_keeps_mla_geometry(coverage) -> None:
    """DeepSeek-V3: q/k head = nope + rope, rotary tables sized by the rope part, no grouped KV."""
    from transformers import AutoConfig

    c = coverage.shrink(AutoConfig.for_model("deepseek_v3"))
    assert c.qk_head_dim == c.qk_nope_head_dim + c.qk_rope_head_dim and c.head_dim == c.qk_rope_head_dim
    assert c.num_key_value_heads == c.num_attention_heads == 4 and c.hidden_size == 64
    model = _built(coverage, "deepseek_v3")
    assert model.model.layers[0].self_attn.q_b_proj.out_features == 4 * c.qk_head_dim


def test_shrink_keeps_ssm_heads(coverage) -> None:
    """Mamba-2 and Bamba: heads × head size = expand × hidden (the generic shrink broke it)."""
    from transformers import AutoConfig

    m = coverage.shrink(AutoConfig.for_model("mamba2"))
    assert m.num_heads * m.head_dim == m.expand * m.hidden_size and m.state_size == coverage.SSM_STATE
    b = coverage.shrink(AutoConfig.for_model("bamba"))
    assert b.mamba_n_heads * b.mamba_d_head == b.mamba_expand * b.hidden_size
    _built(coverage, "mamba2")
    _built(coverage, "bamba")


def test_shrink_keeps_stage_geometry(coverage) -> None:
    """Staged vision configs keep their per-stage widths and heads (depth 1 each); Swin's window tiles every
    stage; ConvNeXt's and Swin's tiny models build."""
    from transformers import AutoConfig

    default = AutoConfig.for_model("swin")
    s = coverage.shrink(AutoConfig.for_model("swin"))
    assert s.num_heads == default.num_heads and s.embed_dim == default.embed_dim and set(s.depths) == {1}
    grid = s.image_size // s.patch_size
    assert all((grid >> i) % s.window_size == 0 for i in range(len(s.depths)))
    c = coverage.shrink(AutoConfig.for_model("convnext"))
    assert c.hidden_sizes == AutoConfig.for_model("convnext").hidden_sizes and c.num_stages == 4
    _built(coverage, "convnext")
    _built(coverage, "swin")


def test_shrink_keeps_one_layer_of_each_kind(coverage) -> None:
    """Per-layer lists keep layer 0 and the first layer unlike it; lists of layer indices follow; a
    heterogeneous config's per-layer overrides follow the kept layers, scaled like the global value."""
    from transformers import AutoConfig

    g = coverage.shrink(AutoConfig.for_model("gemma3_text"))
    assert g.layer_types == ["sliding_attention", "full_attention"]  # the first two were both sliding
    z = coverage.shrink(AutoConfig.for_model("zamba2"))
    assert z.layers_block_type[z.hybrid_layer_ids[0]] == "hybrid" and z.mamba_headdim * z.n_mamba_heads == \
        z.mamba_expand * z.hidden_size
    default = AutoConfig.for_model("gemma4_text")
    g4 = coverage.shrink(AutoConfig.for_model("gemma4_text"))
    assert g4.layer_types == ["sliding_attention", "full_attention"]
    g4.allow_global_per_layer_attribute_access = True
    assert g4.per_layer_config[1].head_dim == 2 * g4.per_layer_config[0].head_dim  # 512 vs 256 by default
    default.allow_global_per_layer_attribute_access = True
    assert default.per_layer_config[5].head_dim == 2 * default.per_layer_config[0].head_dim
    _built(coverage, "gemma4_text")


def test_build_takes_the_sub_config_a_head_is_made_for(coverage) -> None:
    """``Qwen3_5ForCausalLM`` is built from the text part of a ``qwen3_5`` config (it failed on the whole)."""
    model = _built(coverage, "qwen3_5")
    assert type(model.config).__name__ == "Qwen3_5TextConfig"


def test_build_only_census_rows_are_marked_not_run(coverage, tmp_path: Path) -> None:
    """``--build-only`` builds and writes a 'not run' row (captured column 'not run'; counted as built, not as
    captured); the by-mapping table counts it under its home mapping."""
    out = tmp_path / "coverage.md"
    rows = coverage.main(["--only", "gpt2,timm_wrapper", "--build-only", "--out", str(out)])
    gpt2, timm = rows
    assert gpt2.built and gpt2.verdict == coverage.NOT_RUN and gpt2.captured is None and not timm.built
    table = out.read_text()
    assert _rows(table)["gpt2"][2] == "not run" and _rows(table)["timm_wrapper"][2] == "not built"
    assert "| causal-lm | 1 | 1 | 1 | 0 | 0 | 0 | – |" in table and "| image-classification | 1 | 0 | 0 |" in table


def test_shrink_keeps_widths_that_concatenate_or_split(coverage) -> None:
    """Widths derived from the hidden size keep their relation: Reformer's axial position dims sum to it,
    LayoutLMv3's 4 coordinate + 2 shape embeddings concatenate to it, Dots3-Note's rotary part is
    ``partial_rotary_factor`` of ``head_dim``, Dia's cross-attention reads the encoder's width, BLT's local
    models project to the global width, Cohere Compass gets RoPE parameters for each kept layer type."""
    from transformers import AutoConfig

    r = coverage.shrink(AutoConfig.for_model("reformer"))
    assert sum(r.axial_pos_embds_dim) == r.hidden_size == 64 and len(r.axial_pos_embds_dim) == 2
    lv3 = coverage.shrink(AutoConfig.for_model("layoutlmv3"))
    assert 4 * lv3.coordinate_size + 2 * lv3.shape_size == lv3.hidden_size
    d = coverage.shrink(AutoConfig.for_model("dots3_note_text"))
    factor = d.rope_parameters["indexed_attention"]["partial_rotary_factor"]
    assert d.head_dim * factor == d.qk_rope_head_dim == coverage.MLA_ROPE
    dia = coverage.shrink(AutoConfig.for_model("dia"))
    assert dia.decoder_config.cross_hidden_size == dia.encoder_config.hidden_size == 64
    blt = coverage.shrink(AutoConfig.for_model("blt"))
    assert blt.encoder_config.hidden_size_global == blt.decoder_config.hidden_size_global == \
        blt.global_config.hidden_size
    assert blt.global_config.encoder_cross_output_size == blt.encoder_config.hidden_size * blt.cross_attn_k
    cc = coverage.shrink(AutoConfig.for_model("cohere_compass_text"))
    assert set(cc.layer_types) <= set(cc.rope_parameters)
    f = coverage.shrink(AutoConfig.for_model("falcon_h1"))  # its own SSM width: heads × head = d_ssm, small
    assert f.mamba_n_heads * f.mamba_d_head == f.mamba_d_ssm == f.mamba_expand * f.hidden_size
    assert f.mamba_chunk_size == coverage.SSM_CHUNK and f.mamba_d_state == coverage.SSM_STATE


@pytest.mark.parametrize("model_type", ["layoutlmv3", "udop", "lxmert", "musicgen", "xmod", "imagegpt", "ibert"])
def test_families_with_their_own_inputs_build(coverage, model_type: str) -> None:
    """Boxes (integer page coordinates, or normalised for UDOP), region features, one row per codebook, a
    default language, colour-cluster ids for an image classifier, a quantized embedding's vocab."""
    model, name, task, call, plain = coverage.build(model_type, coverage.families()[model_type])
    assert torch.isfinite(plain).all()
    if "bbox" in call:
        box = call["bbox"]
        assert (box[..., 0] <= box[..., 2]).all() and (box[..., 1] <= box[..., 3]).all()
        assert box.is_floating_point() == (model_type == "udop")  # UDOP refuses integer boxes
    if model_type == "musicgen":
        assert call["input_ids"].shape[0] == 2 * model.config.num_codebooks


def test_a_family_that_cannot_run_alone_says_why(coverage) -> None:
    row, _ = coverage.explain_family("gemma4_assistant", coverage.families()["gemma4_assistant"])
    assert not row.built and "not standalone" in row.error and "KV states" in row.error


def test_shrink_clamps_multimodal_token_ids_to_the_text_vocab(coverage) -> None:
    from transformers import AutoConfig

    gemma4 = coverage.shrink(AutoConfig.for_model("gemma4"))  # image/audio/video ids sit at the top level
    vocab = gemma4.text_config.vocab_size
    assert vocab == 256
    ids = {k: v for k, v in vars(gemma4).items() if k.endswith("_token_id") and isinstance(v, int)}
    assert ids and all(v < vocab for v in ids.values()), ids  # embedded by the model: must be in the vocab


def test_a_vanishing_init_is_rescaled_layer_by_layer(coverage) -> None:
    """A conv stack drawn at std 0.02 with norm scales 0.02 (biases zero: what EfficientNet's and PP-LCNet's
    tiny random inits do) outputs ~0: ``degenerate`` says so, and ``unit_variance`` gives each conv/Linear a unit-variance
    output (measured with hooks of our own, on a second forward) and a non-degenerate output."""
    from torch import nn

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(12):
        conv, norm = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        nn.init.normal_(conv.weight, std=0.02)
        nn.init.zeros_(conv.bias)
        nn.init.normal_(norm.weight, std=0.02)
        layers += [conv, norm, nn.SiLU()]
    head = nn.Linear(8 * 4 * 4, 3)
    nn.init.normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    model = nn.Sequential(*layers, nn.Flatten(), head).eval()

    class Call(nn.Module):  # the sweep calls models by keyword
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.net(pixel_values)

    wrapped, call = Call(), {"pixel_values": torch.randn(2, 8, 4, 4)}
    with torch.no_grad():
        assert coverage.degenerate(wrapped(**call))
    out = coverage.unit_variance(wrapped, call)
    assert not coverage.degenerate(out)
    stds = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: stds.append(float(o.std())))
             for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        assert torch.equal(wrapped(**call), out)
    for h in hooks:
        h.remove()
    assert len(stds) == 13 and all(abs(s - 1.0) < 1e-4 for s in stds), stds
    assert not coverage.degenerate(torch.tensor([0.5, -1e-3])) and coverage.degenerate(torch.zeros(3))


def test_a_zero_initialized_layer_is_drawn(coverage) -> None:
    """A router whose weight the init left exactly zero (AFMoE) is drawn at std 0.02; other layers are kept."""
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    nn.init.zeros_(model[1].weight)
    kept = model[0].weight.detach().clone()
    assert coverage.draw_zero_layers(model) == ["1"]
    assert torch.equal(model[0].weight, kept) and model[1].weight.all()
    assert 0.005 < float(model[1].weight.std()) < 0.06


class _Cancelling(torch.nn.Module):
    """``a(x) − b(x)`` with ``b`` within 1e-4 of ``a``: a score ~1e-4 of Σ|R|, as a tiny random-init model's
    cancelling relevance gives (float32's rounding floor then exceeds 1 % of the score); with ``leak`` also
    ``+ d(silu(x))``, ``d`` scaled by ``leak``; with ``cast``, the difference taken in float32 (``.float()``, as norms write it)."""

    def __init__(self, leak: float = 0.0, cast: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(16, 4, bias=False)
        self.b = torch.nn.Linear(16, 4, bias=False)
        self.d = torch.nn.Linear(16, 4, bias=False)
        self.leak, self.cast = leak, cast
        with torch.no_grad():
            self.b.weight.copy_(self.a.weight + 1e-4 * torch.randn(4, 16))
            self.d.weight.mul_(leak)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        x = inputs_embeds
        # with cast, the difference in float32 (what a float64 copy then still computes in float32)
        y = self.a(x).float() - self.b(x).float() if self.cast else self.a(x) - self.b(x)
        return y + self.d(torch.nn.functional.silu(x)) if self.leak else y


def _cancelling_inputs() -> dict[str, torch.Tensor]:
    return {"inputs_embeds": 10 * torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(2))}


def test_float64_recheck_judges_what_float32_cannot(coverage) -> None:
    """A linear model's books close exactly: float32 cannot judge (score ~0), the float64 re-check closes,
    and its float64 relevance is the explicit ``x ⊙ (W_a − W_b)ᵀ e_t`` at the target logit."""
    import lxt_fx

    model, inputs = _Cancelling().eval(), _cancelling_inputs()
    first = lxt_fx.check(model, inputs, zero_bias=True).verdict
    assert first.status == coverage.SCORE_NEAR_ZERO, first.reason
    row = coverage.Row("toy", verdict=first.status, verdict_reason=first.reason)
    coverage.recheck_float64(row, model, inputs, lxt_fx.attnlrp, None)
    assert row.verified and row.verdict == "closes" and row.verdict_dtype == "float64", row.verdict_reason
    assert "float32: score ~0" in row.verdict_reason and "in part" not in row.verdict_reason
    assert all(p.dtype == torch.float32 for p in model.parameters())  # a copy was widened, not the model
    wide = _Cancelling().double().eval()
    x = inputs["inputs_embeds"].double().requires_grad_(True)
    with lxt_fx.attnlrp.context(wide):
        logits = wide(inputs_embeds=x)[:, -1]
        target = logits.argmax(-1)
        logits.gather(1, target[:, None]).sum().backward()
    with torch.no_grad():
        w = (wide.a.weight - wide.b.weight)[target]
        explicit = x[:, -1] * w  # the relevance of a bias-free linear map, exactly
    torch.testing.assert_close((x * x.grad)[:, -1], explicit, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close((x * x.grad)[:, -1].sum(-1), logits.gather(1, target[:, None])[:, 0].detach(),
                               rtol=1e-9, atol=1e-12)


def test_float64_recheck_still_catches_a_leak(coverage) -> None:
    """A SiLU without its identity rule (plain gradient) gains 3 % of the score: float32 cannot see it under
    its floor (score ~0), the float64 re-check does."""
    import lxt_fx
    from lxt_fx.composites import Composite

    model, inputs = _Cancelling(leak=1e-3).eval(), _cancelling_inputs()
    composite = Composite([(p, r) for p, r in lxt_fx.attnlrp.entries if type(r).__name__ != "Identity"],
                          name="no-identity")
    first = lxt_fx.check(model, inputs, composite=composite, zero_bias=True).verdict
    assert first.status == coverage.SCORE_NEAR_ZERO, first.reason
    row = coverage.Row("toy", verdict=first.status, verdict_reason=first.reason)
    coverage.recheck_float64(row, model, inputs, composite, None)
    assert not row.verified and row.verdict == "gain", row.verdict_reason


def test_float64_recheck_gains_nothing_where_the_model_computes_in_float32(coverage) -> None:
    """``x.float()`` inside the forward keeps the relevance path float32 in the float64 copy: the re-check
    keeps float32's floor and cannot judge either."""
    import lxt_fx

    model, inputs = _Cancelling(cast=True).eval(), _cancelling_inputs()
    first = lxt_fx.check(model, inputs, zero_bias=True).verdict
    assert first.status == coverage.SCORE_NEAR_ZERO, first.reason
    row = coverage.Row("toy", verdict=first.status, verdict_reason=first.reason)
    coverage.recheck_float64(row, model, inputs, lxt_fx.attnlrp, None)
    assert not row.verified and row.verdict == coverage.SCORE_NEAR_ZERO, row.verdict_reason
    assert "relevance path in part float32" in row.verdict_reason
