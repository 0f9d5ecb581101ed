"""Tiny random-weight models of each modality (seeded), and their example inputs."""

from __future__ import annotations

import functools

import torch

PATCH = 4
IMAGE = 16


def _vision(**extra: object) -> dict:
    return dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                image_size=IMAGE, patch_size=PATCH, **extra)


def _text(**extra: object) -> dict:
    return dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=32, **extra)


def _eval(model: torch.nn.Module) -> torch.nn.Module:
    model.config._attn_implementation = "sdpa"
    return model.eval()


@functools.cache
def model(kind: str) -> torch.nn.Module:
    """A tiny random ``kind`` model: clip, siglip, dinov2, whisper."""
    import transformers as tf

    torch.manual_seed(0)
    if kind == "clip":
        cfg = tf.CLIPConfig(text_config=_text(eos_token_id=2), vision_config=_vision(), projection_dim=16)
        return _eval(tf.CLIPModel(cfg))
    if kind == "siglip":
        return _eval(tf.SiglipModel(tf.SiglipConfig(text_config=_text(), vision_config=_vision())))
    if kind == "dinov2":
        return _eval(tf.Dinov2Model(tf.Dinov2Config(**_vision())))
    if kind == "whisper":
        cfg = tf.WhisperConfig(vocab_size=96, d_model=32, encoder_layers=2, decoder_layers=2,
                               encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                               decoder_ffn_dim=48, num_mel_bins=8, max_source_positions=16,
                               max_target_positions=32, decoder_start_token_id=1, pad_token_id=0,
                               eos_token_id=2, bos_token_id=1)
        return _eval(tf.WhisperForConditionalGeneration(cfg))
    raise KeyError(kind)


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    """``pixel_values`` ``[batch, 3, 16, 16]``."""
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def features(batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Whisper ``input_features`` ``[batch, 8 mel bins, 32 frames]``."""
    return torch.randn(batch, 8, 32, generator=torch.Generator().manual_seed(seed))


TEXT_IDS = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 9, 10, 2]])  # CLIP: the pooled token is the eos (2)
