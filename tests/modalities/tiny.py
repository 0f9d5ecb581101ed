"""Tiny random-weight models of each modality (seeded), and their example inputs."""

from __future__ import annotations

import functools

import torch

PATCH = 4
IMAGE = 16
IMAGE_TOKEN = 95  # the VLMs' image placeholder token
QUERIES = 4  # BLIP-2 / InstructBLIP: query outputs per image, each in place of one image token


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
    """A tiny random ``kind`` model: clip, siglip, dinov2, whisper, llava, qwen2_vl, blip2, instructblip."""
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
    if kind == "llava":  # CLIP vision tower + LLaMA text, 16 image tokens (4×4 patches, CLS dropped)
        vision = dict(model_type="clip_vision_model", projection_dim=16, **_vision())
        text = {**_text(), "model_type": "llama", "num_key_value_heads": 2, "max_position_embeddings": 64}
        cfg = tf.LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN,
                             vision_feature_layer=-1, vision_feature_select_strategy="default")
        return _eval(tf.LlavaForConditionalGeneration(cfg))
    if kind == "qwen2_vl":  # 4×4 patches of 4 px merged 2×2: 4 image tokens; M-RoPE sections (2, 1, 1)
        vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=PATCH,
                      spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
        text = dict({**_text(), "max_position_embeddings": 64}, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                    rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0})
        cfg = tf.Qwen2VLConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, video_token_id=94,
                               vision_start_token_id=93, vision_end_token_id=92, bos_token_id=1, eos_token_id=2,
                               pad_token_id=0)
        return _eval(tf.Qwen2VLForConditionalGeneration(cfg))
    if kind in ("blip2", "instructblip"):  # a Q-Former's QUERIES outputs replace the image tokens (LLaMA text)
        qformer = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=48, encoder_hidden_size=32)
        text = {**_text(), "model_type": "llama", "num_key_value_heads": 2, "max_position_embeddings": 64}
        config, cls = ((tf.Blip2Config, tf.Blip2ForConditionalGeneration) if kind == "blip2" else
                       (tf.InstructBlipConfig, tf.InstructBlipForConditionalGeneration))
        cfg = config(vision_config=_vision(), qformer_config=qformer, text_config=text, num_query_tokens=QUERIES,
                     image_token_id=IMAGE_TOKEN)
        return _eval(cls(cfg))
    raise KeyError(kind)


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    """``pixel_values`` ``[batch, 3, 16, 16]``."""
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def features(batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Whisper ``input_features`` ``[batch, 8 mel bins, 32 frames]``."""
    return torch.randn(batch, 8, 32, generator=torch.Generator().manual_seed(seed))


TEXT_IDS = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 9, 10, 2]])  # CLIP: the pooled token is the eos (2)


def vlm_ids(kind: str, batch: int = 1) -> torch.Tensor:
    """Text rows with the image tokens of one 16×16 image each (LLaVA: 16, Qwen2-VL: 4 between its vision
    start/end tokens, BLIP-2 / InstructBLIP: one per query), text before and after."""
    if kind == "llava":
        rows = [[1, 5 + b] + [IMAGE_TOKEN] * 16 + [6, 7, 8 + b] for b in range(batch)]
    elif kind in ("blip2", "instructblip"):
        rows = [[1, 5 + b] + [IMAGE_TOKEN] * QUERIES + [6, 7, 8 + b] for b in range(batch)]
    else:
        rows = [[1, 5 + b, 93] + [IMAGE_TOKEN] * 4 + [92, 6, 7, 8 + b] for b in range(batch)]
    return torch.tensor(rows)


def patch_sums(pixel: torch.Tensor) -> torch.Tensor:
    """Pixel relevance [b, c, H, W] summed over channels and PATCH×PATCH blocks, by explicit loops."""
    b, _, h, w = pixel.shape
    out = torch.zeros(b, h // PATCH, w // PATCH, dtype=pixel.dtype)
    for i in range(h // PATCH):
        for j in range(w // PATCH):
            out[:, i, j] = pixel[:, :, i * PATCH:(i + 1) * PATCH, j * PATCH:(j + 1) * PATCH].sum((1, 2, 3))
    return out
