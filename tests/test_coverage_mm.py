"""``benchmarks/coverage_mm.py``: the vision / audio / multimodal families of the coverage sweep build from their
shrunk configs with the inputs their forward needs, keep the geometry their config ties together, and a family
that cannot be built here says why."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def coverage():
    spec = importlib.util.spec_from_file_location("coverage_sweep_mm", ROOT / "benchmarks" / "coverage.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _build(coverage, model_type: str):
    model, name, task, call, plain = coverage.build(model_type, coverage.families()[model_type])
    assert torch.isfinite(plain).all()
    return model, name, call, plain


def test_blip2_query_tokens_fill_the_image_placeholders(coverage) -> None:
    """BLIP-2: the Q-Former cross-attends to the vision width, and its query outputs replace exactly the text
    positions holding the image token; the first head (conditional generation, not retrieval) builds."""
    model, name, call, plain = _build(coverage, "blip-2")
    c = model.config
    assert name == "Blip2ForConditionalGeneration"
    assert c.qformer_config.encoder_hidden_size == c.vision_config.hidden_size
    placeholders = (call["input_ids"] == c.image_token_id).sum(-1)
    assert placeholders.tolist() == [c.num_query_tokens] * call["input_ids"].shape[0]
    assert plain.shape[:2] == call["input_ids"].shape  # logits for every text position
    assert coverage.mm.is_mixed(call) and not coverage.mm.is_mixed({"input_ids": call["input_ids"]})


def test_flattened_patches_match_the_patch_width(coverage) -> None:
    """Pix2Struct's patches lead with (row, column) and carry C·P² values; SigLIP-2's carry C·P² and a grid."""
    model, _, call, _ = _build(coverage, "pix2struct")
    patches = call["flattened_patches"]
    assert patches.shape[-1] == 2 + model.config.vision_config.patch_embed_hidden_size
    assert patches[0, :, :2].tolist()[5] == [2.0, 2.0]  # patch 5 of a 4 × 4 grid: row 2, column 2 (1-based)
    model, name, call, _ = _build(coverage, "siglip2")
    v = model.config.vision_config
    assert call["pixel_values"].shape[-1] == v.num_channels * v.patch_size ** 2
    assert (call["spatial_shapes"].prod(-1) == call["pixel_attention_mask"].sum(-1)).all()


def test_align_projection_matches_the_image_width(coverage) -> None:
    """ALIGN compares the projected text embedding with the EfficientNet's unprojected pooled output: the
    similarity is [batch, batch] only when the two widths agree."""
    model, _, call, _ = _build(coverage, "align")
    with torch.no_grad():
        out = model(**call)
    assert out.image_embeds.shape[-1] == out.text_embeds.shape[-1] == model.config.projection_dim
    assert out.logits_per_image.shape == (2, 2)


def test_audio_features_are_sized_by_the_encoder(coverage) -> None:
    """The mel count is found where the encoder reads it: Canary's sub-config (128), Wav2Vec2-BERT's stacked
    projection input (2 × 80 = 160); the AST spectrogram is time × bins."""
    from transformers import AutoConfig

    assert coverage.mm.mel(AutoConfig.for_model("canary")) == AutoConfig.for_model("canary").encoder_config.num_mel_bins
    w2v = AutoConfig.for_model("wav2vec2-bert")
    assert coverage.mm.mel(w2v) == w2v.feature_projection_input_dim == 160
    assert coverage.mm.mel(AutoConfig.for_model("whisper")) == 80
    model, name, call, _ = _build(coverage, "audio-spectrogram-transformer")
    assert call["input_values"].shape[1:] == (model.config.max_length, model.config.num_mel_bins)
    _, _, call, _ = _build(coverage, "wav2vec2-bert")
    assert call["input_features"].shape[-1] == w2v.feature_projection_input_dim


def test_unavailable_families_name_what_is_missing(coverage) -> None:
    with pytest.raises(RuntimeError, match="natten"):
        coverage.build("dinat", coverage.families()["dinat"])
    with pytest.raises(RuntimeError, match="timm.*torchvision"):
        coverage.build("timm_wrapper", coverage.families()["timm_wrapper"])
