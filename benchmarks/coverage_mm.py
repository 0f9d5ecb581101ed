"""The vision, audio and multimodal families of the coverage sweep (``benchmarks/coverage.py``): the config
fixes their tiny configs need (:data:`OVERRIDES`, each with its reason) and the inputs their forward needs
beside text ids (:func:`variants`: pixels, flattened patches, Q-Former ids, video frames, spectrograms, robot
state), built from the shrunk config's geometry.

A call with such inputs (anything beside ``input_ids`` / ``attention_mask`` / ``decoder_input_ids``) is
*mixed* (:func:`is_mixed`): ``explain`` takes one input tensor, so the sweep runs ``lxt_fx.check`` on the
call's keyword arguments instead, as it does for the audio and zero-shot tasks.

Families that need a package this environment cannot have are named in :data:`UNAVAILABLE` with the reason.
"""

from __future__ import annotations

from typing import Any

import torch

BATCH, SEQ, FRAMES = 2, 8, 2
QUERY, IMAGE_TOKEN = 4, 4  # query tokens / image embeddings in the text, and the image placeholder id
TEXT_KEYS = frozenset({"input_ids", "attention_mask", "decoder_input_ids"})

_TIMM = ("needs timm, which imports torchvision: the registry's torchvision wheels (0.28.0 pins torch 2.13.0) "
         "are CUDA builds whose _C.so links libtorch_cuda/libc10_cuda, absent from the CPU torch 2.13.0 here, so "
         "`import torchvision` fails (torchvision::nms missing); install a CPU torchvision 0.28 and timm 1.0.31 "
         "to sweep it")
# model type → why it cannot be built here (the row's note)
UNAVAILABLE: dict[str, str] = {
    "dinat": "needs natten (neighbourhood-attention CUDA/C++ kernels); natten 0.21.7 builds from source against "
             "a CUDA toolkit and is not installable here",
    "timm_wrapper": _TIMM,
    "fast_vlm": "vision tower is a TimmWrapperModel: " + _TIMM,
    "gemma3n": "vision tower is a TimmWrapperModel (MobileNetV5): " + _TIMM,
    "perception_lm": "vision tower is a TimmWrapperModel: " + _TIMM,
}


def _set(config: Any, **values: Any) -> None:
    for key, value in values.items():
        setattr(config, key, value)


def _align(c: Any) -> None:
    # ALIGN's image embedding is the EfficientNet's last block width unprojected (``round_filters`` of the last
    # ``out_channels``: 640 in the default), the text side is projected to ``projection_dim``: they must match
    from transformers.models.align.modeling_align import round_filters

    c.projection_dim = round_filters(c.vision_config, c.vision_config.out_channels[-1])


def _qformer(c: Any) -> None:
    # BLIP-2 / InstructBLIP: the Q-Former cross-attends to the vision tower's output, so its
    # ``encoder_hidden_size`` is the vision width (1408 in the default, left unshrunk); fewer query tokens, which
    # replace the text positions holding ``image_token_id`` (None by default; the processor sets it): id 4
    c.qformer_config.encoder_hidden_size = c.vision_config.hidden_size
    c.num_query_tokens = QUERY
    c.image_token_id = c.image_token_index = IMAGE_TOKEN
    if hasattr(c, "video_token_index"):  # InstructBLIP-Video: the placeholder is a video token
        c.video_token_id = c.video_token_index = IMAGE_TOKEN


def _text(c: Any) -> Any:
    return getattr(c, "text_config", c)


def _mrope_hw(c: Any) -> None:
    # ERNIE-4.5-VL interleaves the height and width rotary sections pairwise ([22, 22, 20] of a 64-wide rotary
    # half): h and w must be equal, so scale to [3, 3, 2] of the tiny head's half (8), not Qwen2-VL's 1 : 1.5 : 1.5
    text = _text(c)
    half = (text.hidden_size // text.num_attention_heads) // 2
    hw = 3 * half // 8
    text.rope_parameters["mrope_section"] = [hw, hw, half - 2 * hw]


OVERRIDES: dict[str, tuple] = {
    "align": (_align,),
    "blip-2": (_qformer,),
    "instructblip": (_qformer,),
    "instructblipvideo": (_qformer,),
    # Chameleon maps its VQ image codes to BPE tokens through ``vocabulary_map``, which the default leaves None
    # (the checkpoints ship it): a map with the ``<image>`` token only (no image codes: text-only calls)
    "chameleon": (lambda c: _set(c, vocabulary_map={"<image>": 3}, image_token_id=3),),
    # DeepSeek-OCR-2's decoder picks dense or sparse MLP per layer from ``mlp_layer_types``, None by default:
    # one dense and one MoE layer (the checkpoints start dense)
    "deepseek_ocr2": (lambda c: _set(_text(c), mlp_layer_types=["dense", "sparse"]),),
    "ernie4_5_vl_moe": (_mrope_hw,),
    # Granite-4-Vision builds one window Q-Former per (vision layer, LLM layer) pair of ``deepstack_layer_map``
    # at ``downsample_rate`` (query side / window side), both None by default; its spatial groups target LLM
    # layers 12-21: one pair (last vision layer → LLM layer 0), rate 2/4, the spatial groups on the two layers
    "granite4_vision": (lambda c: _set(c, deepstack_layer_map=[(-1, 0)], downsample_rate="2/4",
                                       spatial_target_layers=[0, 1, 0, 1]),),
    # Step-3.7's mask builder asks for a sliding window even when every layer is full attention
    "step3p7": (lambda c: _set(_text(c), sliding_window=SEQ // 2),),
    # Unlimited-OCR's eager attention multiplies q and k without repeating KV heads: heads = KV heads (10 = 10
    # in the default)
    "unlimited_ocr": (lambda c: _set(_text(c), num_key_value_heads=_text(c).num_attention_heads),),
    # Moonshine-Streaming's decoder reads ``num_key_value_heads`` from the top config, which does not define it
    # (only the encoder sub-config does): multi-head, as the encoder's default
    "moonshine_streaming": (lambda c: _set(c, num_key_value_heads=c.num_attention_heads),),
    # The Qwen-Omni thinkers compute M-RoPE positions from ``vision_start_token_id``, which their thinker config
    # does not set (the full Omni config does: 151652): a small id inside the tiny vocabulary
    "qwen2_5_omni_thinker": (lambda c: _set(c, vision_start_token_id=4),),
    "qwen3_omni_moe_thinker": (lambda c: _set(c, vision_start_token_id=4),),
    # Audio Spectrogram Transformer: a 1024 × 128 spectrogram in 16 × 16 patches at stride 10 is ~1200 tokens;
    # 64 frames × 32 bins at the tiny patch 4 give 3 × 7 = 21
    "audio-spectrogram-transformer": (lambda c: _set(c, max_length=64, num_mel_bins=32),),
    # Kyutai-STT's Mimi codec upsamples with a depthwise transposed conv, ``upsample_groups`` = its width (512 in
    # the default): the width after the shrink
    "kyutai_speech_to_text": (lambda c: _set(c.codec_config, upsample_groups=c.codec_config.hidden_size),),
    # PP-FormulaNet's vision neck projects to ``decoder_hidden_size`` (512 = the text d_model in the default),
    # which the decoder's cross-attention reads as its width: the text width after the shrink
    "pp_formulanet": (lambda c: _set(c.vision_config, decoder_hidden_size=c.text_config.d_model),),
    # Kosmos-2 puts ``latent_query_num`` (64) image embeddings at the masked text positions: 4 of the 8
    "kosmos-2": (lambda c: _set(c, latent_query_num=4),),
}


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _size(config: Any, default: int = 32) -> int:
    size = getattr(config, "image_size", default)
    return size if isinstance(size, int) else size[0]


def _pixels(config: Any, *lead: int) -> torch.Tensor:
    vision = getattr(config, "vision_config", None) or getattr(config, "encoder", None) or config
    size = _size(vision)
    return torch.randn(BATCH, *lead, getattr(vision, "num_channels", 3) or 3, size, size, generator=_gen())


def _ids(vocab: int, n: int = SEQ) -> torch.Tensor:
    return torch.randint(5, max(6, min(vocab, 256)), (BATCH, n), generator=_gen())


def _text_call(model: Any) -> dict[str, Any]:
    vocab = getattr(_text(model.config), "vocab_size", 256) or 256
    ids = _ids(vocab)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _with_queries(model: Any, frames: int = 1) -> dict[str, Any]:
    """Text ids whose first ``num_query_tokens`` (per frame) positions are the image placeholder."""
    call = _text_call(model)
    call["input_ids"][:, :model.config.num_query_tokens * frames] = IMAGE_TOKEN
    return call


def _blip(model: Any) -> dict[str, Any]:
    return {**_with_queries(model), "pixel_values": _pixels(model.config)}


def _instructblip(model: Any, frames: int = 0) -> dict[str, Any]:
    q = _ids(model.config.qformer_config.vocab_size)
    return {**_with_queries(model, max(1, frames)), "pixel_values": _pixels(model.config, *((frames,) if frames else ())),
            "qformer_input_ids": q, "qformer_attention_mask": torch.ones_like(q)}


def _idefics(model: Any) -> dict[str, Any]:
    call = _text_call(model)
    return {**call, "pixel_values": _pixels(model.config, 1),
            "image_attention_mask": torch.ones(BATCH, SEQ, 1, dtype=torch.long)}


def _kosmos(model: Any) -> dict[str, Any]:
    call = _text_call(model)
    mask = torch.zeros(BATCH, SEQ, dtype=torch.long)
    mask[:, 1:1 + model.config.latent_query_num] = 1
    return {**call, "pixel_values": _pixels(model.config), "image_embeds_position_mask": mask}


def _patches(config: Any, extra: int) -> tuple[torch.Tensor, int]:
    """Flattened patches ``[batch, 16, extra + C·P²]`` (a 4 × 4 grid) and the patch width C·P²."""
    vision = getattr(config, "vision_config", config)
    patch = getattr(vision, "patch_size", 4)
    width = (getattr(vision, "num_channels", 3) or 3) * patch * patch
    return torch.randn(BATCH, 16, extra + width, generator=_gen()), width


def _pix2struct(model: Any) -> dict[str, Any]:
    patches, _ = _patches(model.config, 0)
    flat = model.config.vision_config.patch_embed_hidden_size
    rows = torch.arange(16) // 4 + 1
    cols = torch.arange(16) % 4 + 1  # row and column indices (1-based) lead each flattened patch
    coords = torch.stack([rows, cols], -1).float().expand(BATCH, 16, 2)
    patches = torch.cat([coords, torch.randn(BATCH, 16, flat, generator=_gen())], -1)
    start = model.config.decoder_start_token_id or 0
    return {"flattened_patches": patches, "attention_mask": torch.ones(BATCH, 16),
            "decoder_input_ids": torch.tensor([[start, 5, 6]] * BATCH)}


def _siglip2(model: Any) -> dict[str, Any]:
    patches, _ = _patches(model.config, 0)
    call = {"pixel_values": patches, "pixel_attention_mask": torch.ones(BATCH, 16, dtype=torch.long),
            "spatial_shapes": torch.tensor([[4, 4]] * BATCH)}
    if "input_ids" in _params(model):  # the dual encoder (Siglip2Model), not the image classifier
        call = {**_text_call(model), **call}
    return call


def _videoprism(model: Any) -> dict[str, Any]:
    vision = model.config.vision_config
    frames = getattr(vision, "num_frames", FRAMES)
    size = _size(vision)
    video = torch.randn(BATCH, frames, getattr(vision, "num_channels", 3) or 3, size, size, generator=_gen())
    return {**_text_call(model), "pixel_values_videos": video}


def _encoder_decoder_pixels(model: Any) -> dict[str, Any]:
    start = getattr(model.config, "decoder_start_token_id", None)
    start = start if isinstance(start, int) else 0
    return {"pixel_values": _pixels(model.config), "decoder_input_ids": torch.tensor([[start, 5, 6]] * BATCH)}


def _pi0(model: Any) -> dict[str, Any]:
    # PI0 (robot policy): its VLM prefix is one camera image, whose patch features fill the text positions holding
    # the VLM's image token (one per patch), and text; the action expert reads the robot ``state``
    vlm = model.config.vlm_config
    vision = vlm.vision_config
    patches = (_size(vision) // vision.patch_size) ** 2
    ids = torch.cat([torch.full((BATCH, patches), vlm.image_token_id), _ids(vlm.text_config.vocab_size)], 1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": _pixels(vlm, 1),
            "pixel_attention_mask": torch.ones(BATCH, 1, dtype=torch.bool),
            "state": torch.randn(BATCH, model.config.max_state_dim, generator=_gen())}


def _spectrogram(model: Any) -> dict[str, Any]:
    c = model.config
    return {"input_values": torch.randn(BATCH, c.max_length, c.num_mel_bins, generator=_gen())}


def mel(config: Any) -> int:
    """The mel-bin count an audio encoder reads, searched in the config, then its sub-configs (Canary and
    Cohere-ASR keep it in ``encoder_config``): ``feature_projection_input_dim`` first (Wav2Vec2-BERT stacks two
    80-bin frames into its 160-wide projection), else the bins; 80 when none is set."""
    for cfg in (config, *(v for v in vars(config).values() if hasattr(v, "to_dict"))):
        for key in ("feature_projection_input_dim", "num_mel_bins", "feature_size", "input_feat_per_channel"):
            if isinstance(getattr(cfg, key, None), int):
                return getattr(cfg, key)
    return 80


def _features_and_ids(model: Any) -> dict[str, Any]:
    # Voxtral-Realtime adds one audio embedding to each text position: 8 × the text length in mel frames
    return {**_text_call(model), "input_features": torch.randn(BATCH, mel(model.config), 8 * SEQ, generator=_gen())}


def _kyutai(model: Any) -> dict[str, Any]:
    # Kyutai-STT's ids are one text stream and ``num_codebooks`` audio-code streams per step: [batch, seq, 1 + 32]
    ids = torch.randint(5, 64, (BATCH, SEQ, 1 + model.config.num_codebooks), generator=_gen())
    return {"input_ids": ids, "attention_mask": torch.ones(BATCH, SEQ, dtype=torch.long)}


INPUTS: dict[str, Any] = {
    "kyutai_speech_to_text": _kyutai,
    "blip-2": _blip,
    "instructblip": _instructblip,
    "instructblipvideo": lambda m: _instructblip(m, FRAMES),
    "idefics": _idefics,
    "kosmos-2": _kosmos,
    "pix2struct": _pix2struct,
    "siglip2": _siglip2,
    "videoprism": _videoprism,
    "vision-encoder-decoder": _encoder_decoder_pixels,
    "pp_formulanet": _encoder_decoder_pixels,
    "pi0": _pi0,
    "audio-spectrogram-transformer": _spectrogram,
    "voxtral_realtime": _features_and_ids,
}


def variants(model: Any, task: str) -> list[dict[str, Any]]:
    """Calls to try before the generic ones for ``model``'s family (empty: none of its own)."""
    build = INPUTS.get(getattr(model.config, "model_type", ""))
    return [build(model)] if build is not None else []


def fallbacks(model: Any, task: str) -> list[dict[str, Any]]:
    """Calls to try after the generic ones: a speech model that is a decoder-only LM over audio tokens (no
    ``decoder_input_ids``) runs on its text ids alone (the audio features are optional)."""
    if task == "speech-seq2seq" and "decoder_input_ids" not in _params(model) and "input_ids" in _params(model):
        return [_text_call(model)]
    return []


def _params(model: Any) -> Any:
    import inspect

    return inspect.signature(type(model).forward).parameters


def is_mixed(call: dict[str, Any]) -> bool:
    """Does ``call`` feed anything beside text ids (pixels, patches, features, state)?"""
    return any(k not in TEXT_KEYS for k in call)
